# A libvirt guest image. Everything but the nixboot lines is ordinary NixOS configuration.
{ lib, ... }:
{
  nixboot.backends.libvirt.enable = true;

  # NixOS-on-NixOS: on its first boot each VM copies the configuration attached as a disk
  # (the controller's guests.<name>.configDir), runs `nixos-rebuild boot` and reboots into it.
  nixboot.backends.libvirt.firstBoot.enable = true;

  # Extra disks for tests (e.g. a scratch disk attached as /dev/vdc):
  # nixboot.mounts.storage.scratch = { device = "/dev/vdc"; autoFormat = true; };

  # A login user with your ssh key:
  # nixboot.user = { enable = true; authorizedKeys = [ "ssh-ed25519 AAAA... me@host" ]; };

  networking.hostName = "libvirt-guest";
  services.openssh.enable = true;
  # A throwaway test machine: root logs in on the serial console without a password.
  services.getty.autologinUser = lib.mkDefault "root";

  system.stateVersion = "24.05";
}
