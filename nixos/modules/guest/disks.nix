# The guest's extra disks, named by the serial the controller gives them
# (`<serial>` in the domain XML). udev's 60-persistent-storage rules, part of every NixOS
# system, link a disk with a serial under /dev/disk/by-id; the name depends on the bus.
# Test suites take their devices from here (nixboot.guest.disks.*.path), so that the
# order in which the kernel probes the disks does not matter.
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
  cfg = config.nixboot.guest;

  # What udev names a QEMU disk with this serial (ID_SERIAL as udev composes it).
  byId = bus: serial: "/dev/disk/by-id/" + {
    virtio = "virtio-${serial}";
    scsi = "scsi-0QEMU_QEMU_HARDDISK_${serial}";
    nvme = "nvme-QEMU_NVMe_Ctrl_${serial}";
  }.${bus};

  serials = map (d: d.serial) cfg.disks;
in
{
  options.nixboot.guest = {
    disks = mkOption {
      default = [ ];
      example = lib.literalExpression ''[ { serial = "test"; } { serial = "scratch"; } ]'';
      description = ''
        The guest's extra disks, in the order test suites use them (fstests: the first is
        TEST_DEV, the second SCRATCH_DEV). Each is found by the serial the controller gives
        it (`nixboot.controller.guests.<name>.disks`), never by /dev/vdX.
      '';
      type = types.listOf (types.submodule ({ config, ... }: {
        options = {
          serial = mkOption {
            type = types.strMatching "[A-Za-z0-9_.-]+";
            example = "test";
            description = "The disk's serial (virtio-blk keeps at most 20 characters).";
          };
          bus = mkOption {
            type = types.enum [ "virtio" "scsi" "nvme" ];
            default = "virtio";
            description = "The bus the controller attaches the disk to (decides the by-id name).";
          };
          path = mkOption {
            type = types.str;
            default = byId config.bus config.serial;
            defaultText = lib.literalExpression ''"/dev/disk/by-id/virtio-''${serial}" (by bus)'';
            description = "The device path suites use.";
          };
        };
      }));
    };

    diskPaths = mkOption {
      type = types.listOf types.str;
      readOnly = true;
      default = map (d: d.path) cfg.disks;
      defaultText = lib.literalExpression "map (d: d.path) config.nixboot.guest.disks";
      description = "The paths of {option}`nixboot.guest.disks`, in order.";
    };
  };

  config = lib.mkIf (cfg.disks != [ ]) {
    assertions = [
      {
        assertion = lib.length (lib.unique serials) == lib.length serials;
        message = "nixboot.guest.disks: two disks share a serial (${lib.concatStringsSep ", " serials}); /dev/disk/by-id would name only one of them.";
      }
      {
        assertion = lib.all (d: d.bus != "virtio" || lib.stringLength d.serial <= 20) cfg.disks;
        message = "nixboot.guest.disks: a virtio disk's serial is longer than 20 characters (virtio-blk truncates it, so its /dev/disk/by-id name would differ).";
      }
    ];
  };
}
