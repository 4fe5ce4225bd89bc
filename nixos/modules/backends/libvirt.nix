# Libvirt guest: a qcow2 disk image (nixpkgs' make-disk-image) with an MBR, one ext4
# partition labelled `nixos` (/dev/vda1) and grub. Grub boots the toplevel's kernel with
# nixboot's initrd (the toplevel's `initrd`, see core.nix) and `init=<toplevel>/init
# root=/dev/vda1 rootfstype=ext4`.
#
# NixOS-on-NixOS: the image, built into the host's store, is the read-only backing file of
# one qcow2 overlay per VM (the controller profile creates them). With `firstBoot.enable`
# each VM specialises itself once: a configuration directory attached as a disk is copied
# to /etc/nixos, `nixos-rebuild boot` builds it, and the VM reboots into it (`switch` would
# stop the service running it).
{ config, lib, pkgs, modulesPath, ... }:
let
  inherit (lib) mkOption mkEnableOption mkIf mkMerge types;

  cfg = config.nixboot.backends.libvirt;
  fb = cfg.firstBoot;
  stamp = "/var/lib/nixboot/first-boot.done";
in
{
  imports = [ ../core.nix ];

  options.nixboot.backends.libvirt = {
    enable = mkEnableOption "the libvirt backend: a qcow2 image with an ext4 root and grub, booted through nixboot's initrd";

    rootDevice = mkOption {
      type = types.str;
      default = "/dev/vda1";
      example = "LABEL=nixos";
      description = "The init's `root=`: the block device of the root filesystem (`/dev/...`, `LABEL=`, `UUID=` or `PARTUUID=`).";
    };

    label = mkOption {
      type = types.str;
      default = "nixos";
      description = "Label of the ext4 root filesystem; fileSystems.\"/\" mounts `/dev/disk/by-label/<label>`.";
    };

    diskSize = mkOption {
      type = types.either (types.enum [ "auto" ]) types.ints.positive;
      default = "auto";
      description = "Size of the image in MiB, or `auto` (contents plus {option}`nixboot.backends.libvirt.additionalSpace`). Overlays can be grown later with `qemu-img resize`.";
    };

    additionalSpace = mkOption {
      type = types.str;
      default = "2G";
      description = "Free space added to an `auto`-sized image (make-disk-image's additionalSpace).";
    };

    format = mkOption {
      type = types.enum [ "qcow2" "qcow2-compressed" "raw" ];
      default = "qcow2";
      description = "Format of the image (`system.build.nixbootImage`).";
    };

    grubDevice = mkOption {
      type = types.str;
      default = "/dev/vda";
      description = "Disk grub is installed on (boot.loader.grub.device).";
    };

    image = mkOption {
      type = types.package;
      readOnly = true;
      description = "The disk image: `\${image}/nixos.qcow2` (also `system.build.nixbootImage`).";
    };

    firstBoot = {
      enable = mkEnableOption ''
        first-boot specialisation: on its first boot the VM copies the configuration
        attached as a disk to /etc/nixos, runs `nixos-rebuild boot` and reboots into it'';

      device = mkOption {
        type = types.str;
        default = "/dev/disk/by-id/virtio-nixos-config";
        description = ''
          The attached configuration disk. The controller attaches the guest's `configDir`
          as a read-only FAT disk (libvirt `<disk type='dir'>`) with serial `nixos-config`;
          its first partition (`-part1`) is tried before the whole disk.
        '';
      };

      flake = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/etc/nixos#guest";
        description = ''
          Flake reference for `nixos-rebuild boot --flake`; null uses `/etc/nixos` as a flake
          when it holds a flake.nix (the attribute is the host name), else
          /etc/nixos/configuration.nix.
        '';
      };

      timeout = mkOption {
        type = types.ints.positive;
        default = 60;
        description = "Seconds to wait for the configuration disk.";
      };
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      nixboot.initrd.enable = true;
      nixboot.internal.backends = [ "libvirt" ];
      nixboot.backends.libvirt.image = config.system.build.nixbootImage;

      fileSystems."/" = {
        device = "/dev/disk/by-label/${cfg.label}";
        fsType = "ext4";
      };

      boot.loader.grub = {
        enable = lib.mkDefault true;
        device = lib.mkDefault cfg.grubDevice;
      };

      # Block root: no virtiofs store, no modules share (the modules are in the store).
      boot.kernelParams = [ "root=${cfg.rootDevice}" "rootfstype=ext4" "nixboot.modules=none" ];
      nixboot.initrd.kernelModules = [ "virtio_pci" "virtio_blk" "ext4" ];

      services.qemuGuest.enable = lib.mkDefault true;
      networking.useDHCP = lib.mkDefault true;

      system.build.nixbootImage = import (modulesPath + "/../lib/make-disk-image.nix") {
        inherit lib config pkgs;
        inherit (cfg) diskSize additionalSpace format label;
        name = "nixboot-${config.system.name}-image";
        partitionTableType = "legacy";
        fsType = "ext4";
      };

      assertions = [{
        assertion = config.boot.kernel.enable;
        message = "nixboot: the libvirt backend boots the kernel of the image with grub: boot.kernel.enable must be true.";
      }];
    }

    (mkIf fb.enable {
      systemd.services.nixboot-first-boot = {
        description = "nixboot: specialise this VM from its attached configuration, then reboot";
        wantedBy = [ "multi-user.target" ];
        after = [ "network-online.target" "local-fs.target" ];
        wants = [ "network-online.target" ];
        unitConfig.ConditionPathExists = "!${stamp}";
        path = [ config.system.build.nixos-rebuild config.nix.package pkgs.util-linux pkgs.coreutils pkgs.git ];
        environment.NIX_PATH = lib.concatStringsSep ":" config.nix.nixPath;
        serviceConfig = {
          Type = "oneshot";
          TimeoutStartSec = "infinity";
        };
        script = ''
          set -euo pipefail
          dev=""
          for _ in $(seq ${toString fb.timeout}); do
            for d in ${lib.escapeShellArg fb.device}-part1 ${lib.escapeShellArg fb.device}; do
              if [ -b "$d" ]; then dev=$d; break 2; fi
            done
            sleep 1
          done
          if [ -z "$dev" ]; then
            echo "nixboot-first-boot: no configuration disk at ${fb.device}; keeping this generation" >&2
            mkdir -p "$(dirname ${stamp})" && touch ${stamp}
            exit 0
          fi
          mnt=$(mktemp -d)
          mount -o ro "$dev" "$mnt"
          mkdir -p /etc/nixos
          cp -rT --no-preserve=mode "$mnt" /etc/nixos
          umount "$mnt"
          ${if fb.flake != null then ''
            nixos-rebuild boot --flake ${lib.escapeShellArg fb.flake}
          '' else ''
            if [ -e /etc/nixos/flake.nix ]; then
              nixos-rebuild boot --flake /etc/nixos
            else
              nixos-rebuild boot
            fi
          ''}
          mkdir -p "$(dirname ${stamp})" && touch ${stamp}
          systemctl --no-block reboot
        '';
      };

      assertions = [{
        assertion = config.nix.enable;
        message = "nixboot: nixboot.backends.libvirt.firstBoot runs nixos-rebuild: nix.enable must be true.";
      }];
    })
  ]);
}
