# An imageless guest. Everything but the first line is ordinary NixOS configuration.
{ lib, ... }:
{
  nixboot.backends.imageless.enable = true;

  # An external kernel (your own build) instead of NixOS's: no kernel in the closure, its
  # modules come from the host over the `modules` virtiofs tag (launcher: --kernel, --modules).
  # boot.kernel.enable = false;
  # nixboot.kernel.externalImage = "/home/me/linux/arch/x86/boot/bzImage";

  # A login user with your ssh key:
  # nixboot.user = { enable = true; authorizedKeys = [ "ssh-ed25519 AAAA... me@host" ]; };

  # Host directories shared over virtiofs (launcher/controller side: the same tag):
  # nixboot.mounts.shares.src = { mountPoint = "/src"; readOnly = true; };

  networking.hostName = "imageless";
  # A throwaway test machine: root logs in on the serial console without a password.
  services.getty.autologinUser = lib.mkDefault "root";

  system.stateVersion = "24.05";
}
