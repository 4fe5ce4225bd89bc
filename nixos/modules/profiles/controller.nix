# Controller: the host that builds kernels and runs the test guests. Kernel build tools,
# Ansible, QEMU, virtiofsd and libvirt (QEMU not as root), plus declarative guests:
#
#   nixboot.controller.guests.<name> = { mode; system; memory; vcpus; shares; ... };
#
# Each guest is rendered as libvirt domain XML (controller/domain.nix) and a systemd unit
# `nixboot-guest-<name>` defines and starts it through libvirt (`virsh define`, `virsh
# start`) and shuts it down when stopped. Libvirt is the engine: nixboot has no VM
# supervisor of its own. When the XML changes, switching the controller's configuration
# restarts the unit: the guest is shut down, redefined and started again.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption mkEnableOption mkIf types literalExpression;

  profile = config.nixboot.profiles.controller;
  cfg = config.nixboot.controller;
  libvirtPkg = config.virtualisation.libvirtd.package;
  qemuPkg = config.virtualisation.libvirtd.qemu.package;

  isSystem = x: builtins.isAttrs x && x ? config && x.config ? system;

  guestModule = { name, config, ... }: {
    options = {
      mode = mkOption {
        type = types.enum [ "imageless" "libvirt" ];
        default = "imageless";
        description = ''
          `imageless`: kernel + nixboot initrd + command line, /nix/store over virtiofs
          (the system must enable nixboot.backends.imageless). `libvirt`: a per-VM qcow2
          overlay over the system's image (the system must enable nixboot.backends.libvirt).
        '';
      };

      system = mkOption {
        type = types.nullOr (types.addCheck types.raw isSystem // { description = "evaluated NixOS configuration"; });
        default = null;
        example = literalExpression "nixpkgs.lib.nixosSystem { modules = [ nixboot.nixosModules.default ./guest.nix ]; }";
        description = "The guest's evaluated NixOS configuration (what `nixpkgs.lib.nixosSystem` returns).";
      };

      memory = mkOption {
        type = types.ints.positive;
        default = 2048;
        description = "Memory in MiB (also the size of the shared memfd backing).";
      };

      vcpus = mkOption {
        type = types.ints.positive;
        default = 2;
        description = "Virtual CPUs.";
      };

      shares = mkOption {
        default = { };
        example = literalExpression ''{ src = { source = "/home/me/linux"; readOnly = true; }; }'';
        description = "Host directories shared over virtiofs, by tag (mount them in the guest with nixboot.mounts.shares).";
        type = types.attrsOf (types.submodule {
          options = {
            source = mkOption {
              type = types.str;
              description = "Host directory.";
            };
            readOnly = mkOption {
              type = types.bool;
              default = false;
              description = "Share read-only.";
            };
          };
        });
      };

      kernel = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = ''
          imageless: host path of the kernel image. null uses the system's kernel, or, for an
          external kernel, the system's nixboot.kernel.externalImage.
        '';
      };

      modulesDir = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/home/me/linux-build/modules/lib/modules";
        description = "imageless with an external kernel: host directory holding `<version>/` of its modules, shared as the system's modules tag.";
      };

      extraKernelParams = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "imageless: appended to the system's kernel parameters.";
      };

      configDir = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/etc/nixboot/guests/web1";
        description = ''
          libvirt: host directory with the guest's own configuration (flake.nix or
          configuration.nix), attached read-only as a FAT disk with serial `nixos-config`
          for nixboot.backends.libvirt.firstBoot.
        '';
      };

      domainType = mkOption {
        type = types.enum [ "kvm" "qemu" ];
        default = "kvm";
        description = "Libvirt domain type: `kvm`, or `qemu` (TCG) on hosts without working KVM.";
      };

      autostart = mkOption {
        type = types.bool;
        default = true;
        description = "Start the guest when the controller boots (the unit is wanted by multi-user.target).";
      };

      xml = mkOption {
        type = types.str;
        readOnly = true;
        description = "The rendered libvirt domain XML.";
        default = import ../controller/domain.nix {
          inherit lib name;
          guest = config;
          controller = cfg;
          virtiofsd = pkgs.virtiofsd;
        };
        defaultText = "rendered from the other options";
      };
    };
  };

  guestUnit = name: guest:
    let
      xmlFile = pkgs.writeText "nixboot-guest-${name}.xml" guest.xml;
      sys = guest.system.config;
      overlay = "${cfg.imageDir}/${name}.qcow2";
      virsh = "virsh --connect ${lib.escapeShellArg cfg.uri}";
    in
    {
      description = "nixboot guest ${name} (${guest.mode}), run by libvirt";
      wantedBy = lib.optional guest.autostart "multi-user.target";
      requires = [ "libvirtd.service" ];
      after = [ "libvirtd.service" "network.target" ];
      path = [ libvirtPkg qemuPkg pkgs.coreutils ];
      restartTriggers = [ xmlFile ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        TimeoutStopSec = 150;
      };
      script = ''
        set -euo pipefail
        ${lib.optionalString (guest.mode == "libvirt") ''
          # Per-VM overlay; the image in the store is its read-only backing file.
          install -d -m 0711 ${lib.escapeShellArg cfg.imageDir}
          if [ ! -e ${lib.escapeShellArg overlay} ]; then
            qemu-img create -f qcow2 -F qcow2 \
              -b ${sys.system.build.nixbootImage}/nixos.qcow2 ${lib.escapeShellArg overlay}
          fi
        ''}
        ${virsh} define ${xmlFile}
        if [ "$(${virsh} domstate ${lib.escapeShellArg name})" != running ]; then
          ${virsh} start ${lib.escapeShellArg name}
        fi
      '';
      preStop = ''
        state=$(${virsh} domstate ${lib.escapeShellArg name} 2>/dev/null || true)
        if [ "$state" = running ]; then
          ${virsh} shutdown ${lib.escapeShellArg name} || true
          for _ in $(seq 120); do
            [ "$(${virsh} domstate ${lib.escapeShellArg name} 2>/dev/null || true)" = running ] || exit 0
            sleep 1
          done
          ${virsh} destroy ${lib.escapeShellArg name} || true
        fi
      '';
    };

  guestAssertions = name: guest:
    let
      sys = if guest.system == null then null else guest.system.config;
      nb = if sys == null then { } else sys.nixboot or { };
      backendOn = b: nb.backends.${b}.enable or false;
    in
    [
      {
        assertion = guest.system != null;
        message = "nixboot.controller.guests.${name} has no system: set it to the guest's NixOS configuration (nixpkgs.lib.nixosSystem { ... }).";
      }
    ] ++ lib.optionals (sys != null) [
      {
        assertion = backendOn guest.mode;
        message = "nixboot.controller.guests.${name}: mode is ${guest.mode} but its system does not enable nixboot.backends.${guest.mode}.";
      }
      {
        assertion = guest.mode != "imageless" || sys.boot.kernel.enable || guest.modulesDir != null || (nb.initrd.modulesDir or null) != null;
        message = "nixboot.controller.guests.${name}: the system has an external kernel: set modulesDir (the host's modules, shared as the modules tag).";
      }
      {
        assertion = lib.all (t: !builtins.elem t [ (nb.backends.imageless.storeTag or "store") (nb.backends.imageless.modulesTag or "modules") ]) (lib.attrNames guest.shares);
        message = "nixboot.controller.guests.${name}: the share tags store and modules belong to the imageless backend.";
      }
    ];
in
{
  imports = [ ../core.nix ];

  options.nixboot.profiles.controller = {
    enable = mkEnableOption "the controller profile: kernel build tools, Ansible, QEMU, virtiofsd, libvirt and nixboot's declarative guests";

    users = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Users allowed to manage the guests (added to the libvirtd and kvm groups).";
    };

    kernelBuildTools = mkOption {
      type = types.bool;
      default = true;
      description = "Install what building a Linux kernel needs (compiler, make, flex, bison, bc, elfutils, openssl, pahole, ...).";
    };
  };

  options.nixboot.controller = {
    uri = mkOption {
      type = types.str;
      default = "qemu:///system";
      description = "Libvirt connection the guests are defined on.";
    };

    imageDir = mkOption {
      type = types.str;
      default = "/var/lib/libvirt/images";
      description = "Directory of the per-VM qcow2 overlays of libvirt-mode guests.";
    };

    network = mkOption {
      type = types.str;
      default = "default";
      description = "Libvirt network the guests' virtio NIC joins (use a bridged network for a LAN).";
    };

    guests = mkOption {
      type = types.attrsOf (types.submodule guestModule);
      default = { };
      description = "Declarative guests, each a libvirt domain with a systemd unit nixboot-guest-<name>.";
    };
  };

  config = lib.mkMerge [
    (mkIf profile.enable {
      virtualisation.libvirtd = {
        enable = true;
        qemu = {
          package = lib.mkDefault pkgs.qemu_kvm;
          # QEMU runs as the unprivileged qemu-libvirtd user.
          runAsRoot = false;
          vhostUserPackages = [ pkgs.virtiofsd ];
        };
        # The nixboot-guest-* units start the declared guests.
        onBoot = lib.mkDefault "ignore";
        onShutdown = lib.mkDefault "shutdown";
      };

      users.users = lib.genAttrs profile.users (_: { extraGroups = [ "libvirtd" "kvm" ]; });

      environment.systemPackages = with pkgs; [
        ansible
        qemu_kvm
        virtiofsd
        libvirt
        config.nixboot.packages.launcher
        config.nixboot.packages.mkinitrd
      ] ++ lib.optionals profile.kernelBuildTools [
        gnumake gcc binutils bc bison flex perl python3 pahole
        elfutils.dev openssl.dev ncurses.dev zlib.dev pkg-config
        kmod cpio zstd xz lz4 gzip rsync git
      ];
    })

    (mkIf (cfg.guests != { }) {
      assertions = [{
        assertion = profile.enable;
        message = "nixboot.controller.guests needs nixboot.profiles.controller.enable (libvirt runs them).";
      }] ++ lib.concatLists (lib.mapAttrsToList guestAssertions cfg.guests);

      systemd.services = lib.mapAttrs' (name: guest:
        lib.nameValuePair "nixboot-guest-${name}" (mkIf (guest.system != null) (guestUnit name guest)))
        cfg.guests;
    })
  ];
}
