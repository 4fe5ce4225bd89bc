# A test guest as kdevops drives it: reachable over SSH with a host key that survives
# reboots of a tmpfs root (guest/ssh.nix), extra disks named by their serial so that
# /dev/disk/by-id finds them (guest/disks.nix), and the loop module loaded.
{ config, lib, ... }:
let
  inherit (lib) mkOption mkEnableOption mkIf mkDefault types;
  cfg = config.nixboot.guest;
in
{
  imports = [ ../core.nix ../mounts/shares.nix ./ssh.nix ./disks.nix ];

  options.nixboot.guest = {
    enable = mkEnableOption "a kdevops-style test guest: sshd for the controller and the loop module";

    kernelModules = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "loop" "null_blk" ];
      description = ''
        Kernel modules loaded at boot by systemd-modules-load, also with an external kernel
        (`boot.kernel.enable = false`, modules from the host), where NixOS itself writes no
        modules-load.d file.
      '';
    };
  };

  config = lib.mkMerge [
    (mkIf cfg.enable {
      nixboot.guest.kernelModules = [ "loop" ];
      nixboot.guest.ssh.enable = mkDefault true;
    })
    (mkIf (cfg.kernelModules != [ ]) {
      environment.etc."modules-load.d/nixboot-guest.conf".text =
        lib.concatMapStrings (m: "${m}\n") (lib.unique cfg.kernelModules);
    })
  ];
}
