# Baremetal: the imageless closure with its fileSystems and boot overridden for real disks
# and a real kernel. The same configuration that runs as an imageless guest gets
# `nixboot.baremetal.enable = true` (plus the machine's hardware-configuration.nix); it is
# installed/activated on the machine with `switch-to-configuration` (see
# docs/modes/baremetal.md). Boot loader entries use nixboot's initrd (core.nix) with
# `root=LABEL=...` etc. derived from fileSystems."/".
#
# Two RAM-only outputs boot the same system without any disk, its whole store packed into
# the initrd by `mkinitrd --embed-store`:
#   system.build.nixbootNetboot  bzImage + initrd + netboot.ipxe
#   system.build.nixbootKexec    a tarball whose kexec/run boots it from any running Linux,
#                                keeping ssh host keys, authorized keys and static addresses
{ config, lib, pkgs, extendModules, ... }:
let
  inherit (lib) mkOption mkEnableOption mkIf mkMerge types;

  cfg = config.nixboot.baremetal;
  ram = cfg.ramRoot;
  root = config.fileSystems."/";
  kernelFile = config.system.boot.loader.kernelFile;

  # `root=` for the init, from the root filesystem's device.
  rootParam =
    let
      d = root.device or "";
      byPrefix = p: lib.hasPrefix p d;
      tail = p: lib.removePrefix p d;
    in
    if root.label or null != null then "LABEL=${root.label}"
    else if byPrefix "/dev/disk/by-label/" then "LABEL=${tail "/dev/disk/by-label/"}"
    else if byPrefix "/dev/disk/by-uuid/" then "UUID=${tail "/dev/disk/by-uuid/"}"
    else if byPrefix "/dev/disk/by-partuuid/" then "PARTUUID=${tail "/dev/disk/by-partuuid/"}"
    else d;

  # ---- the RAM-only variant, shared by netboot and kexec ----
  ramSystem = extendModules { modules = [{ nixboot.baremetal.ramRoot = true; }]; };
  ramConfig = ramSystem.config;
  ramToplevel = ramConfig.system.build.toplevel;
  ramCmdline = "init=${ramToplevel}/init ${toString ramConfig.boot.kernelParams}";

  # Our initrd with the RAM system's whole closure inside (`embedded_store` in its
  # configuration: the init copies the store into the tmpfs root and mounts no share). A Nix
  # build cannot ask the Nix database for the closure, so it is handed over as a closureInfo
  # in NIXBOOT_CLOSURE_INFO, whose `store-paths` mkinitrd packs.
  embeddedArgs = [
    "--closure" "${ramToplevel}"
    "--embed-store"
    "-o" "${placeholder "out"}/initrd"
    "--init" "${config.nixboot.packages.init}/bin/init"
    "--compress" ramConfig.nixboot.initrd.compress
  ] ++ lib.optionals (ramConfig.nixboot.initrd.modulesDir != null)
    ([ "--kernel-modules" "${ramConfig.nixboot.initrd.modulesDir}" ]
     ++ lib.concatMap (m: [ "--module" m ]) (lib.unique ramConfig.nixboot.initrd.kernelModules))
  ++ ramConfig.nixboot.initrd.extraArgs;

  embeddedInitrd = pkgs.runCommand "nixboot-initrd-embedded-store"
    {
      nativeBuildInputs = [ config.nixboot.packages.mkinitrd ];
      NIXBOOT_CLOSURE_INFO = pkgs.closureInfo { rootPaths = [ ramToplevel ]; };
      cmdline = ramCmdline;
    } ''
    mkdir -p $out
    mkinitrd ${lib.escapeShellArgs embeddedArgs}
    printf '%s' "$cmdline" > $out/cmdline
  '';

  kernelImage = "${config.system.build.kernel}/${kernelFile}";

  netboot = pkgs.runCommand "nixboot-netboot-${config.system.name}" { } ''
    mkdir -p $out
    ln -s ${kernelImage} $out/${kernelFile}
    ln -s ${embeddedInitrd}/initrd $out/initrd
    cp ${embeddedInitrd}/cmdline $out/cmdline
    {
      echo '#!ipxe'
      echo '# nixboot netboot: RAM-only NixOS, its store inside the initrd.'
      echo '# ''${cmdline} lets a chainloading script add kernel parameters.'
      echo "kernel ${kernelFile} initrd=initrd $(cat $out/cmdline) \''${cmdline}"
      echo 'initrd initrd'
      echo 'boot'
    } > $out/netboot.ipxe
  '';

  kexecTools = pkgs.pkgsStatic.kexec-tools;
  cpio = pkgs.pkgsStatic.cpio;
  tarballName = "nixboot-kexec-${pkgs.stdenv.hostPlatform.system}.tar.gz";

  kexec = pkgs.runCommand "nixboot-kexec-${config.system.name}" { } ''
    mkdir -p kexec $out
    cp ${kernelImage} kexec/bzImage
    cp ${embeddedInitrd}/initrd kexec/initrd
    cp ${embeddedInitrd}/cmdline kexec/cmdline
    cp ${kexecTools}/bin/kexec kexec/kexec
    cp ${cpio}/bin/cpio kexec/cpio
    cp ${./kexec-run.sh} kexec/run
    chmod 0755 kexec/run kexec/kexec kexec/cpio
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1 -czf $out/${tarballName} kexec
  '';
in
{
  imports = [ ../backends/imageless.nix ];

  options.nixboot.baremetal = {
    enable = mkEnableOption ''
      baremetal: the imageless system on real disks with a real kernel, activated with
      switch-to-configuration (also enables the imageless backend, whose virtual hardware
      it replaces)'';

    root = {
      device = mkOption {
        type = types.str;
        default = "/dev/disk/by-label/nixos";
        description = ''
          Device of the root filesystem, used when the configuration defines no
          fileSystems."/" itself (a hardware-configuration.nix usually does). The init's
          `root=` is derived from fileSystems."/" (`/dev/disk/by-label/X` becomes `LABEL=X`,
          by-uuid `UUID=`, by-partuuid `PARTUUID=`).
        '';
      };
      fsType = mkOption {
        type = types.str;
        default = "ext4";
        description = "Filesystem type of that root filesystem.";
      };
    };

    diskModules = mkOption {
      type = types.listOf types.str;
      default = [ "ahci" "nvme" "sd_mod" "virtio_pci" "virtio_blk" "virtio_scsi" ];
      description = ''
        Storage drivers the init loads to find the root disk (it has no udev), besides
        boot.initrd.kernelModules and the root filesystem's module.
      '';
    };

    carry.enable = mkOption {
      type = types.bool;
      default = true;
      description = ''
        In the RAM-only variant (netboot, kexec): restore what the kexec run script carried
        over (ssh host keys, root's authorized keys, static addresses and default routes)
        from /run/nixboot/carry before sshd and the network start.
      '';
    };

    ramRoot = mkOption {
      type = types.bool;
      default = false;
      internal = true;
      description = "Set in the RAM-only variant built for netboot and kexec: tmpfs root, store from the initrd, no disks.";
    };

    netboot = mkOption {
      type = types.package;
      readOnly = true;
      default = netboot;
      defaultText = "system.build.nixbootNetboot";
      description = "bzImage, initrd (store embedded) and netboot.ipxe of the RAM-only variant.";
    };

    kexec = mkOption {
      type = types.package;
      readOnly = true;
      default = kexec;
      defaultText = "system.build.nixbootKexec";
      description = "`\${kexec}/${tarballName}`: the kexec tarball of the RAM-only variant.";
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      nixboot.internal.physical = true;
      nixboot.internal.backends = [ "baremetal" ];
      nixboot.backends.imageless.enable = lib.mkDefault true;
      nixboot.initrd.enable = true;
      nixboot.consoles = lib.mkDefault [ "tty0" "ttyS0,115200" ];
      # Real disks keep their store: nix works again.
      nix.enable = lib.mkOverride 900 true;

      system.build.nixbootEmbeddedInitrd = embeddedInitrd;
      system.build.nixbootNetboot = netboot;
      system.build.nixbootKexec = kexec;
      # The RAM-only variant itself (an evaluated configuration), for inspection and tests.
      system.build.nixbootRamSystem = ramSystem;

      assertions = [
        {
          assertion = config.boot.kernel.enable;
          message = "nixboot: baremetal needs a real kernel: boot.kernel.enable must be true.";
        }
        {
          assertion = ram || (root.fsType or null) != "tmpfs";
          message = "nixboot: baremetal boots from a real disk: fileSystems.\"/\" must not be a tmpfs (use the netboot or kexec output for a RAM-only system).";
        }
      ];
    }

    (mkIf (!ram) {
      fileSystems."/" = lib.mkDefault {
        device = cfg.root.device;
        fsType = cfg.root.fsType;
      };
      boot.kernelParams = [ "root=${rootParam}" "rootfstype=${root.fsType}" "nixboot.modules=none" ];
      nixboot.initrd.kernelModules = config.boot.initrd.kernelModules ++ cfg.diskModules ++ [ root.fsType ];
    })

    (mkIf ram {
      # Like nixpkgs' netboot: nothing from the disks, and no boot loader to install.
      fileSystems = lib.mkOverride 10 {
        "/" = { device = "tmpfs"; fsType = "tmpfs"; options = [ "mode=0755" ]; };
      };
      swapDevices = lib.mkOverride 10 [ ];
      boot.loader.grub.enable = lib.mkOverride 10 false;
      boot.loader.systemd-boot.enable = lib.mkOverride 10 false;
      boot.kernelParams = [ "root=tmpfs" "nixboot.modules=none" ];
      nixboot.initrd.kernelModules = config.boot.initrd.kernelModules;
      services.openssh.enable = lib.mkDefault true;

      systemd.services.nixboot-carry = mkIf cfg.carry.enable {
        description = "nixboot: restore ssh keys and addresses carried over by kexec";
        wantedBy = [ "multi-user.target" ];
        before = [ "sshd.service" "network-pre.target" ];
        wants = [ "network-pre.target" ];
        unitConfig.ConditionPathExists = "/run/nixboot/carry";
        path = [ pkgs.iproute2 pkgs.jq pkgs.coreutils ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
        };
        script = builtins.readFile ./carry-restore.sh;
      };
    })
  ]);
}
