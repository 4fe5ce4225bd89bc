# What every nixboot mode shares: the packages, our initrd (built by mkinitrd) replacing
# NixOS's, the bootspec wiring, the kernel command line of the init, and the assertions that
# reject contradictory configurations. Imported by every other nixboot module; importing it
# alone changes nothing (a backend sets `nixboot.initrd.enable`).
#
# How boot.json carries our initrd: bootspec v1 (nixos/modules/system/activation/bootspec.nix)
# writes `initrd = "${config.system.build.initialRamdisk}/${config.system.boot.loader.initrdFile}"`
# whenever `boot.initrd.enable` is true. We replace `system.build.initialRamdisk` with our
# derivation (lib.mkForce), so the standard `org.nixos.bootspec.v1.initrd` key, the
# toplevel's `initrd` link and every boot loader entry (grub, systemd-boot) name OUR initrd.
# The extension `org.nixboot.v1` repeats it with nixboot's own facts (mode, virtiofs tags,
# whether the kernel is external) for launchers that want them.
#
# The two older closure flavours boot: scripted stage 1 (toplevel/init is the stage-2
# script, exec'd by the init) and `boot.initrd.systemd.enable` (toplevel/init is systemd;
# the init runs toplevel/prepare-root first). NixOS's own initrd is never built.
#
# With an external kernel (`boot.kernel.enable = false`) nixpkgs' bootspec writer would still
# put `${boot.kernelPackages.kernel}/bzImage` into boot.json (and so a NixOS kernel into the
# build); we then replace the writer (`boot.bootspec.writer`) with one that writes the same
# v1 document with `kernel = nixboot.kernel.externalImage`. That writer, like nixpkgs', starts
# from `boot.bootspec.extensions`, so every extension (`org.nixos.nixos-init.v1`, ...) is kept.
#
# The third flavour, nixos-init (nixpkgs 26.05, `system.nixos-init.enable`): no prepare-root;
# the init does what nixos-init's initrd-init does, reading boot.json's
# `org.nixos.nixos-init.v1`, and mounts /etc as the read-only overlay of the erofs metadata
# image over `etc_basedir` (docs/nixos-handoff.md). So with `system.etc.overlay.enable` the
# initrd carries loop, erofs and overlay, and the assertions below refuse what the init
# cannot do: an etc overlay without nixos-init (NixOS's initrd mounts that /etc with mount
# units we replace, and prepare-root then skips /etc), a mutable etc overlay, and nixos-init
# without those three modules in the initrd. The options are looked up in `options` first:
# nixpkgs 24.05 has `system.etc.overlay` but no `system.nixos-init`.
{ config, lib, pkgs, options, ... }:
let
  inherit (lib) mkOption mkEnableOption mkIf mkMerge types literalExpression;

  cfg = config.nixboot;
  kernelEnabled = config.boot.kernel.enable;
  kernel = config.boot.kernelPackages.kernel;

  # Options that only some nixpkgs versions declare: false where they do not exist.
  optionSet = path: lib.hasAttrByPath path options && lib.attrByPath path false config;
  etcOverlay = optionSet [ "system" "etc" "overlay" "enable" ];
  etcOverlayMutable = etcOverlay && optionSet [ "system" "etc" "overlay" "mutable" ];
  nixosInit = optionSet [ "system" "nixos-init" "enable" ];
  # What mounting the /etc overlay needs, loaded by the init before the switch.
  etcOverlayModules = [ "loop" "erofs" "overlay" ];
  etcModulesMissing = lib.filter (m: !lib.elem m cfg.initrd.kernelModules) etcOverlayModules;
  etcModulesCarried = cfg.initrd.modulesDir != null && etcModulesMissing == [ ];
  etcModulesWhyNot =
    if cfg.initrd.modulesDir == null then
      "the initrd carries no modules (nixboot.initrd.modulesDir is null: an external kernel). "
      + "Set nixboot.initrd.modulesDir to that kernel's lib/modules/<version>; mkinitrd "
      + "accepts the ones it has built in"
    else "nixboot.initrd.kernelModules lacks ${lib.concatStringsSep ", " etcModulesMissing}";

  # `pkgs.nixboot` when the flake's overlay is applied, else the same expressions.
  nixbootPkgs = pkgs.nixboot or (import ../packages { inherit pkgs; });

  modulesDir = cfg.initrd.modulesDir;

  mkinitrdArgs =
    [ "-o" "${placeholder "out"}/${config.system.boot.loader.initrdFile}"
      "--init" "${cfg.packages.init}/bin/init"
      "--compress" cfg.initrd.compress ]
    ++ lib.optionals (modulesDir != null)
      ([ "--kernel-modules" "${modulesDir}" ]
       ++ lib.concatMap (m: [ "--module" m ]) (lib.unique cfg.initrd.kernelModules))
    ++ cfg.initrd.extraArgs;

  # Built WITHOUT --closure: the toplevel's boot.json names this initrd, so the initrd must
  # not depend on the toplevel. The next init comes from `init=` on the kernel command line.
  initrd = pkgs.runCommand "nixboot-initrd${lib.optionalString kernelEnabled "-${kernel.modDirVersion}"}"
    {
      nativeBuildInputs = [ cfg.packages.mkinitrd ];
      passthru = {
        inherit (cfg.initrd) kernelModules compress;
        modulesDir = if modulesDir == null then null else "${modulesDir}";
        file = config.system.boot.loader.initrdFile;
      };
    } ''
    mkdir -p $out
    mkinitrd ${lib.escapeShellArgs mkinitrdArgs}
  '';

  initrdPath = "${initrd}/${config.system.boot.loader.initrdFile}";

  backend = if cfg.internal.backends == [ ] then null else builtins.head cfg.internal.backends;

  # The extension document (also used by the external-kernel writer below).
  extension = {
    inherit backend;
    initrd = initrdPath;
    kernelParams = config.boot.kernelParams;
    externalKernel = !kernelEnabled;
    virtiofs = cfg.internal.virtiofs;
  } // lib.optionalAttrs etcOverlay {
    # Not in org.nixos.nixos-init.v1, which only names the image and the base directory.
    etcOverlay.mutable = etcOverlayMutable;
  };

  # --- bootspec writer for an external kernel (same document shape as nixpkgs' v1) ---
  externalBootJson = pkgs.writeText "boot.json" (builtins.toJSON (config.boot.bootspec.extensions // {
    "org.nixos.bootspec.v1" = {
      system = pkgs.stdenv.hostPlatform.system;
      kernel = cfg.kernel.externalImage;
      kernelParams = config.boot.kernelParams;
      label = "${config.system.nixos.distroName} ${config.system.nixos.codeName} ${config.system.nixos.label} (external kernel)";
      initrd = initrdPath;
    };
  }));
  externalWriter =
    let
      jq = "${pkgs.buildPackages.jq}/bin/jq";
      children = lib.mapAttrs (_: c: c.configuration.system.build.toplevel) config.specialisation;
      slurp = lib.concatStringsSep " " (lib.mapAttrsToList
        (n: t: lib.escapeShellArgs [ "--slurpfile" n "${t}/${config.boot.bootspec.filename}" ]) children);
    in
    lib.escapeShellArgs [
      jq "--sort-keys"
      ''."org.nixos.bootspec.v1".toplevel = $toplevel | ."org.nixos.bootspec.v1".init = $init''
      "--arg" "toplevel" "${placeholder "out"}"
      "--arg" "init" "${placeholder "out"}/init"
    ] + " < ${externalBootJson} | "
    + lib.escapeShellArgs [ jq "--sort-keys" ''."org.nixos.specialisation.v1" = ($ARGS.named | map_values(. | first))'' ]
    + " ${slurp} > ${placeholder "out"}/${config.boot.bootspec.filename}";
in
{
  options.nixboot = {
    packages = {
      init = mkOption {
        type = types.package;
        default = nixbootPkgs.init;
        defaultText = literalExpression "pkgs.nixboot.init";
        description = "The init (PID 1 of the initramfs): a static executable at `bin/init`.";
      };
      mkinitrd = mkOption {
        type = types.package;
        default = nixbootPkgs.mkinitrd;
        defaultText = literalExpression "pkgs.nixboot.mkinitrd";
        description = "The initramfs packer, run at build time to make {option}`nixboot.initrd.package`.";
      };
      launcher = mkOption {
        type = types.package;
        default = nixbootPkgs.nixboot-qemu;
        defaultText = literalExpression "pkgs.nixboot.nixboot-qemu";
        description = "The QEMU launcher `nixboot-qemu` (installed by the controller profile).";
      };
    };

    consoles = mkOption {
      type = types.listOf types.str;
      default = [ "ttyS0,115200" ];
      example = [ "tty0" "ttyS0,115200" ];
      description = ''
        Kernel consoles, added to the kernel command line as `console=` parameters of every
        nixboot mode. The last one becomes /dev/console, where the init reports its progress
        and its `nixboot-status:` line.
      '';
    };

    kernel.externalImage = mkOption {
      type = types.str;
      default = "/run/nixboot/external-kernel";
      example = "/home/me/linux/arch/x86/boot/bzImage";
      description = ''
        Only used when the kernel is external (`boot.kernel.enable = false`): the path of the
        kernel image as the machine that boots the guest sees it. Written to boot.json's
        `org.nixos.bootspec.v1.kernel` (bootspec requires a kernel), which is all a
        launcher needs when it is given no `--kernel`. The default names no real file on
        purpose: the launcher then needs `--kernel`.
      '';
    };

    initrd = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Whether nixboot's initrd replaces NixOS's (`system.build.initialRamdisk`, hence
          bootspec's `initrd` and the boot loader entries). Set by the backends; there is no
          reason to set it by hand.
        '';
      };

      kernelModules = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "virtio_pci" "virtiofs" ];
        description = ''
          Kernel modules mkinitrd packs and the init loads, by name; mkinitrd adds their
          dependencies in load order. The backends add what their root and store need;
          with `system.etc.overlay.enable`, loop, erofs and overlay are added (the init
          mounts /etc). Ignored when {option}`nixboot.initrd.modulesDir` is null.
        '';
      };

      modulesDir = mkOption {
        type = types.nullOr types.path;
        default = if kernelEnabled then "${config.system.modulesTree}/lib/modules/${kernel.modDirVersion}" else null;
        defaultText = literalExpression ''
          if config.boot.kernel.enable
          then "''${config.system.modulesTree}/lib/modules/''${config.boot.kernelPackages.kernel.modDirVersion}"
          else null'';
        example = literalExpression "./linux-build/modules/lib/modules/6.9.0";
        description = ''
          One kernel's `lib/modules/<version>` directory, handed to `mkinitrd --kernel-modules`.
          With an external kernel it defaults to null: the initrd then carries no modules (the
          kernel must have virtio-pci, virtiofs and the root filesystem built in) and the
          modules reach the running system over the `modules` virtiofs tag. Set it (a path
          literal, which Nix copies into the store, or a store path) to pack modules of an
          external kernel anyway.
        '';
      };

      compress = mkOption {
        type = types.enum [ "zstd" "gzip" "xz" "lz4" "none" ];
        default = "zstd";
        description = "Compression of the initramfs (`mkinitrd --compress`).";
      };

      timeout = mkOption {
        type = types.nullOr types.ints.positive;
        default = null;
        example = 30;
        description = "Seconds the init waits for the root, store and module devices (`rd.timeout=`); null keeps the init's default.";
      };

      emergency = mkOption {
        type = types.nullOr (types.enum [ "poweroff" "reboot" "halt" "shell" ]);
        default = null;
        description = "What the init does when the boot fails (`rd.emergency=`); null keeps the init's default.";
      };

      extraArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Extra arguments for mkinitrd.";
      };

      package = mkOption {
        type = types.package;
        readOnly = true;
        default = initrd;
        defaultText = literalExpression "the initrd built by mkinitrd";
        description = ''
          The initrd mkinitrd builds for this system: `''${package}/initrd`. Also
          `system.build.nixbootInitrd` and, when {option}`nixboot.initrd.enable`,
          `system.build.initialRamdisk`.
        '';
      };
    };

    internal = {
      backends = mkOption {
        type = types.listOf types.str;
        default = [ ];
        internal = true;
        description = "Names of the enabled modes that own how this machine boots; at most one.";
      };
      physical = mkOption {
        type = types.bool;
        default = false;
        internal = true;
        description = "True when the machine boots from real disks (baremetal): the imageless backend then leaves fileSystems and root= to it.";
      };
      virtiofs = mkOption {
        type = types.attrsOf types.str;
        default = { };
        internal = true;
        description = "virtiofs tags the host must provide, mapped to what they share (recorded in boot.json's org.nixboot.v1).";
      };
    };
  };

  config = mkMerge [
    {
      system.build.nixbootInitrd = initrd;
    }

    (mkIf cfg.initrd.enable {
      system.build.initialRamdisk = lib.mkForce initrd;

      boot.bootspec.extensions."org.nixboot.v1" = extension;
      boot.bootspec.writer = mkIf (!kernelEnabled) (lib.mkForce externalWriter);

      # mkinitrd accepts modules the kernel has built in (modules.builtin).
      nixboot.initrd.kernelModules = mkIf etcOverlay etcOverlayModules;

      boot.kernelParams =
        map (c: "console=${c}") cfg.consoles
        ++ lib.optional (cfg.initrd.timeout != null) "rd.timeout=${toString cfg.initrd.timeout}"
        ++ lib.optional (cfg.initrd.emergency != null) "rd.emergency=${cfg.initrd.emergency}";

      assertions = [
        {
          assertion = config.boot.initrd.enable;
          message = "nixboot: boot.initrd.enable must stay true: bootspec lists an initrd (ours) only then.";
        }
        {
          assertion = config.boot.initrd.secrets == { };
          message = "nixboot: boot.initrd.secrets is not supported: nixboot's init does not read /.initrd-secrets.";
        }
        {
          assertion = kernelEnabled || config.boot.bootspec.enable;
          message = "nixboot: an external kernel needs boot.json (boot.bootspec.enable).";
        }
        {
          assertion = etcOverlay -> nixosInit;
          message = ''
            nixboot: system.etc.overlay.enable needs system.nixos-init.enable (nixpkgs 26.05 or
            later) with nixboot's initrd. Without nixos-init, NixOS mounts the /etc overlay with
            mount units of its own systemd initrd, which nixboot's initrd replaces, and
            prepare-root skips /etc (IN_NIXOS_SYSTEMD_STAGE1): the system would start with an
            empty /etc. With nixos-init, nixboot's init mounts /etc from boot.json's
            org.nixos.nixos-init.v1 (etc_metadata_image, etc_basedir).'';
        }
        {
          assertion = nixosInit -> !etcOverlayMutable;
          message = ''
            nixboot: with system.nixos-init.enable, set system.etc.overlay.mutable = false.
            nixboot's init mounts /etc as the read-only overlay of the metadata image over
            etc_basedir; a mutable /etc needs the writable upper layer (/.rw-etc) that
            NixOS's own initrd prepares (rw-etc.service, clear-etc-opaque), which it does not.'';
        }
        {
          assertion = nixosInit -> etcModulesCarried;
          message = ''
            nixboot: system.nixos-init.enable needs loop, erofs and overlay in nixboot's initrd
            (the init mounts /etc before the switch), but ${etcModulesWhyNot}.'';
        }
      ];
    })

    {
      assertions = [{
        assertion = builtins.length cfg.internal.backends <= 1;
        message = "nixboot: more than one backend is enabled (${lib.concatStringsSep ", " cfg.internal.backends}); a machine boots one way: pick one.";
      }];
    }
  ];
}
