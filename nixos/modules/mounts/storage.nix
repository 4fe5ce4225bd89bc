# Extra block storage for a machine (e.g. scratch and test disks for fstests/blktests on
# /dev/vdb, /dev/vdc): mounted at boot with nofail, optionally formatted on first use.
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
  cfg = config.nixboot.mounts.storage;
in
{
  imports = [ ../core.nix ];

  options.nixboot.mounts.storage = mkOption {
    default = { };
    example = lib.literalExpression ''{ scratch = { device = "/dev/vdb"; autoFormat = true; }; }'';
    description = "Block devices to mount, by name.";
    type = types.attrsOf (types.submodule ({ name, ... }: {
      options = {
        device = mkOption {
          type = types.str;
          example = "/dev/disk/by-label/scratch";
          description = "The block device.";
        };
        mountPoint = mkOption {
          type = types.str;
          default = "/mnt/${name}";
          description = "Where it is mounted.";
        };
        fsType = mkOption {
          type = types.str;
          default = "ext4";
          description = "Filesystem type.";
        };
        options = mkOption {
          type = types.listOf types.str;
          default = [ "nofail" ];
          description = "Mount options.";
        };
        autoFormat = mkOption {
          type = types.bool;
          default = false;
          description = "Create the filesystem when the device has none (fileSystems.<path>.autoFormat).";
        };
      };
    }));
  };

  config = lib.mkIf (cfg != { }) {
    fileSystems = lib.mapAttrs' (_: s: lib.nameValuePair s.mountPoint {
      inherit (s) device fsType options autoFormat;
    }) cfg;
  };
}
