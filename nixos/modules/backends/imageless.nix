# Imageless guest: no disk image at all. The root is a tmpfs, /nix/store is the host's store
# over virtiofs (tag `store`), and with an external kernel /lib/modules comes from the host
# too (tag `modules`). Boot: kernel + nixboot's initrd + `init=<toplevel>/init root=tmpfs ...`,
# all read from result/boot.json (see docs/modes/imageless.md).
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption mkEnableOption mkIf mkMerge types;

  cfg = config.nixboot.backends.imageless;
  physical = config.nixboot.internal.physical;
  kernelEnabled = config.boot.kernel.enable;
  modulesShared = !kernelEnabled && cfg.modulesTag != null;
in
{
  imports = [ ../core.nix ];

  options.nixboot.backends.imageless = {
    enable = mkEnableOption "the imageless backend: tmpfs root, /nix/store over virtiofs, nixboot's initrd";

    storeTag = mkOption {
      type = types.nullOr types.str;
      default = "store";
      description = ''
        virtiofs tag of the host's /nix/store, mounted read-only on /nix/store (by the init,
        `nixboot.store=`, and in fileSystems). null declares no store, which the
        imageless backend rejects: the system would have nothing to run.
      '';
    };

    modulesTag = mkOption {
      type = types.nullOr types.str;
      default = "modules";
      description = ''
        With an external kernel (`boot.kernel.enable = false`): virtiofs tag of the host
        directory that holds the kernel's modules as `<version>/...` (a `lib/modules`
        directory), mounted read-only on /lib/modules, where kmod looks last. Unused with
        NixOS's own kernel, whose modules are in the store (`nixboot.modules=none`).
      '';
    };

    tmpfsSize = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "50%";
      description = "Size limit of the tmpfs root (`nixboot.tmpfs_size=` and the `size=` mount option); null keeps the kernel's default (half of RAM).";
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      nixboot.initrd.enable = true;
      nixboot.internal.backends = mkIf (!physical) [ "imageless" ];
      # The host's store is shared read-only: the guest cannot add store paths.
      nix.enable = lib.mkDefault false;
    }

    # The virtual hardware. Under nixboot.baremetal (real disks) all of this is left out.
    (mkIf (!physical) {
      nixboot.internal.virtiofs =
        lib.optionalAttrs (cfg.storeTag != null) { ${cfg.storeTag} = "/nix/store"; }
        // lib.optionalAttrs modulesShared { ${cfg.modulesTag} = "lib/modules of the external kernel"; };

      # mkImageMediaOverride: a hardware-configuration.nix imported by the same machine must
      # not turn the guest back into a disk-based one.
      fileSystems."/" = lib.mkImageMediaOverride {
        device = "tmpfs";
        fsType = "tmpfs";
        options = [ "mode=0755" ] ++ lib.optional (cfg.tmpfsSize != null) "size=${cfg.tmpfsSize}";
      };
      fileSystems."/nix/store" = mkIf (cfg.storeTag != null) (lib.mkImageMediaOverride {
        device = cfg.storeTag;
        fsType = "virtiofs";
        options = [ "ro" ];
      });
      fileSystems."/lib/modules" = mkIf modulesShared (lib.mkImageMediaOverride {
        device = cfg.modulesTag;
        fsType = "virtiofs";
        options = [ "ro" ];
      });

      boot.kernelParams =
        [ "root=tmpfs" ]
        ++ lib.optional (cfg.storeTag != null) "nixboot.store=${cfg.storeTag}"
        ++ [ "nixboot.modules=${if modulesShared then cfg.modulesTag else "none"}" ]
        ++ lib.optional (cfg.tmpfsSize != null) "nixboot.tmpfs_size=${cfg.tmpfsSize}";

      # What the init needs to reach the store (mkinitrd adds virtio_ring, virtio, fuse, ...).
      nixboot.initrd.kernelModules = [ "virtio_pci" "virtiofs" ];

      # Command mode (`nixboot-qemu --exec CMD`, docs/contracts-internal.md): after
      # multi-user.target the agent runs `nixboot.exec=`'s command and powers off. The
      # marker beside `init` tells nixboot's init to leave the command to this agent
      # (closures without it are served by the init itself). virtio_console, which carries
      # the output, is loaded by udev from its modalias. util-linux's `script` gives
      # `nixboot-qemu --shell` its pseudo-terminal.
      system.extraSystemBuilderCmds = ''
        touch $out/nixboot-exec-agent
      '';
      systemd.services.nixboot-exec = {
        description = "nixboot: run the command of nixboot-qemu --exec";
        wantedBy = [ "multi-user.target" ];
        after = [ "multi-user.target" ];
        unitConfig.ConditionKernelCommandLine = "nixboot.exec";
        path = [ pkgs.bash pkgs.coreutils pkgs.util-linux config.systemd.package ];
        serviceConfig = {
          Type = "oneshot";
          ExecStart = "${pkgs.bash}/bin/bash ${../../exec-agent.sh}";
          StandardError = "journal+console";
        };
      };

      # No boot loader: the kernel and initrd are handed to QEMU/libvirt directly. (Weaker
      # than mkDefault, so that a second backend yields an assertion, not a conflict.)
      boot.loader.grub.enable = lib.mkOverride 1400 false;

      assertions = [{
        assertion = (config.fileSystems."/nix/store".fsType or null) == "virtiofs";
        message = ''
          nixboot: the imageless backend needs /nix/store from the host over virtiofs
          (nixboot.backends.imageless.storeTag is null or fileSystems."/nix/store" was
          overridden); without it the tmpfs root has no system to run.'';
      }];
    })
  ]);
}
