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
#
# Around the guests: `nixboot-network` defines, autostarts and starts the controller's NAT
# network (or guests join a host bridge); with libvirt < 11, `nixboot-virtiofsd-<guest>-<tag>`
# serves each read-only share (the store above all) with `virtiofsd --readonly` as an
# unprivileged user, since that libvirt cannot make virtiofs read-only
# (controller/virtiofsd.nix); the guest's unit creates its extra disks with qemu-img.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption mkEnableOption mkIf types literalExpression;

  profile = config.nixboot.profiles.controller;
  cfg = config.nixboot.controller;
  libvirtPkg = config.virtualisation.libvirtd.package;
  qemuPkg = config.virtualisation.libvirtd.qemu.package;
  # NixOS's libvirtd runs QEMU as user and group qemu-libvirtd (runAsRoot = false).
  qemuGroup = "qemu-libvirtd";

  isSystem = x: builtins.isAttrs x && x ? config && x.config ? system;

  vfs = import ../controller/virtiofsd.nix { inherit lib; };
  disksLib = import ../controller/disks.nix { inherit lib; };
  libvirtVersion = libvirtPkg.version;
  nativeReadOnly = vfs.nativeReadOnly libvirtVersion;
  virtiofsdBin = "${pkgs.virtiofsd}/bin/virtiofsd";

  # A stable locally administered MAC per guest (QEMU's 52:54:00 prefix), so that a
  # redefinition keeps the guest's DHCP lease.
  defaultMac = name:
    let h = builtins.hashString "sha256" "nixboot-mac-${name}"; b = i: builtins.substring (2 * i) 2 h;
    in "52:54:00:${b 0}:${b 1}:${b 2}";

  # What domain.nix needs from a guest's NixOS configuration (no IFD: store paths as strings).
  bootOf = guest:
    let
      sys = guest.system.config;
      nb = sys.nixboot;
      direct = guest.mode == "imageless" || guest.directBoot;
    in
    {
      kernel =
        if guest.kernel != null then guest.kernel
        else if sys.boot.kernel.enable then "${sys.system.build.kernel}/${sys.system.boot.loader.kernelFile}"
        else nb.kernel.externalImage;
      initrd = "${sys.system.build.nixbootInitrd}/${sys.system.boot.loader.initrdFile}";
      cmdline = if direct
        then lib.concatStringsSep " " ([ "init=${sys.system.build.toplevel}/init" ] ++ sys.boot.kernelParams ++ guest.extraKernelParams)
        else null;
      backing = if guest.mode == "libvirt" then "${sys.system.build.nixbootImage}/nixos.qcow2" else null;
      storeTag = nb.backends.imageless.storeTag or "store";
      modulesTag = nb.backends.imageless.modulesTag or "modules";
      modulesDir = guest.modulesDir;
      virtiofsd = virtiofsdBin;
    };

  renderXml = name: guest: domainType: import ../controller/domain.nix {
    inherit lib name libvirtVersion;
    guest = guest // { inherit domainType; };
    controller = {
      inherit (cfg) imageDir virtiofsdSocketDir;
      interface = if cfg.networking.mode == "bridge"
        then { type = "bridge"; source = cfg.networking.bridge; }
        else { type = "network"; source = cfg.network; };
    };
    boot = bootOf guest;
  };

  # The read-only virtiofs shares served by the controller's own virtiofsd (libvirt < 11):
  # [ { guest; tag; source; socket; } ].
  externalShares = name: guest:
    let
      b = bootOf guest;
      all = vfs.filesystems {
        imageless = guest.mode == "imageless"; inherit (b) storeTag modulesTag modulesDir; inherit (guest) shares;
      };
    in
    lib.optionals (!nativeReadOnly && guest.system != null) (lib.mapAttrsToList (tag: s: {
      inherit tag; inherit (s) source; guest = name;
      socket = vfs.socket { socketDir = cfg.virtiofsdSocketDir; guest = name; inherit tag; };
    }) (lib.filterAttrs (_: s: s.readOnly) all));

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
        type = types.enum [ "auto" "kvm" "qemu" ];
        default = "auto";
        description = ''
          Libvirt domain type: `kvm`, `qemu` (TCG), or `auto`: the guest's unit boots the
          guest's kernel under KVM for a few seconds and uses `kvm` only if it printed its
          first console line (`/dev/kvm` can exist on hosts where KVM crashes or hangs).
        '';
      };

      directBoot = mkOption {
        type = types.bool;
        default = false;
        description = ''
          libvirt mode: boot the system's kernel, nixboot initrd and command line directly
          (as imageless guests do) instead of grub on the disk; the disk still holds the root.
        '';
      };

      mac = mkOption {
        type = types.strMatching "([0-9a-f]{2}:){5}[0-9a-f]{2}";
        default = defaultMac name;
        defaultText = literalExpression "52:54:00 followed by three bytes of a hash of the guest's name";
        description = "MAC address of the guest's virtio NIC (lower case). Must be unique among the guests.";
      };

      consoleLog = mkOption {
        type = types.nullOr types.str;
        default = "/var/log/libvirt/qemu/${name}-console.log";
        defaultText = literalExpression ''"/var/log/libvirt/qemu/''${name}-console.log"'';
        description = "File the serial console is copied to (by virtlogd; `virsh console` still works). null: no copy.";
      };

      disks = mkOption {
        default = { };
        example = literalExpression ''{ scratch0 = { size = "20G"; }; scratch1 = { size = "20G"; logicalBlockSize = 4096; physicalBlockSize = 4096; }; }'';
        description = ''
          Extra virtio disks, by name: qcow2 files `<imageDir>/<guest>-<name>.qcow2` that the
          guest's unit creates when missing. Each has a serial, so the guest finds it as
          /dev/disk/by-id/virtio-<serial>.
        '';
        type = types.attrsOf (types.submodule ({ name, ... }: {
          options = {
            size = mkOption {
              type = types.strMatching "[0-9]+[KMGT]?";
              default = "10G";
              description = "Virtual size (qemu-img syntax: 10G, 512M); the file grows as the guest writes.";
            };
            serial = mkOption {
              type = types.strMatching "[A-Za-z0-9_.-]{1,20}";
              default = name;
              defaultText = literalExpression "the disk's name";
              description = "Serial number (at most 20 characters, virtio's limit): /dev/disk/by-id/virtio-<serial> in the guest.";
            };
            logicalBlockSize = mkOption {
              type = types.enum [ 512 4096 ];
              default = 512;
              description = "Logical sector size the guest sees.";
            };
            physicalBlockSize = mkOption {
              type = types.enum [ 512 4096 ];
              default = 512;
              description = "Physical sector size the guest sees (at least the logical one).";
            };
          };
        }));
      };

      autostart = mkOption {
        type = types.bool;
        default = true;
        description = "Start the guest when the controller boots (the unit is wanted by multi-user.target).";
      };

      xml = mkOption {
        type = types.str;
        readOnly = true;
        description = "The rendered libvirt domain XML (with domainType `auto`: the KVM variant).";
        default = renderXml name config (if config.domainType == "auto" then "kvm" else config.domainType);
        defaultText = "rendered from the other options";
      };

      xmlTcg = mkOption {
        type = types.str;
        readOnly = true;
        internal = true;
        description = "With domainType `auto`: the XML used when KVM does not work (type `qemu`).";
        default = renderXml name config "qemu";
        defaultText = "rendered from the other options";
      };
    };
  };

  # A few seconds of the guest's kernel under KVM: `kvm` only if it printed its first
  # console line (the launcher's trial boot, in shell).
  kvmProbe = kernel: ''
    kvm_works() {
      [ -w /dev/kvm ] || return 1
      timeout 8 qemu-system-x86_64 -accel kvm -cpu host -m 256 -display none -nodefaults \
        -no-reboot -serial stdio -kernel ${lib.escapeShellArg kernel} -append 'console=ttyS0 panic=-1' \
        </dev/null 2>/dev/null | grep -q -m1 'Linux version'
    }
  '';

  guestUnit = name: guest:
    let
      xmlFile = pkgs.writeText "nixboot-guest-${name}.xml" guest.xml;
      tcgFile = pkgs.writeText "nixboot-guest-${name}-tcg.xml" guest.xmlTcg;
      b = bootOf guest;
      overlay = "${cfg.imageDir}/${name}.qcow2";
      virsh = "virsh --connect ${lib.escapeShellArg cfg.uri}";
      q = lib.escapeShellArg;
      sources = lib.mapAttrsToList (tag: s: { inherit tag; inherit (s) source; }) guest.shares
        ++ lib.optional (guest.modulesDir != null) { tag = b.modulesTag; source = guest.modulesDir; };
      vfsUnits = map (s: "nixboot-virtiofsd-${name}-${s.tag}.service") (externalShares name guest);
      netUnits = lib.optional (cfg.networking.mode == "nat") "nixboot-network.service";
    in
    {
      description = "nixboot guest ${name} (${guest.mode}), run by libvirt";
      wantedBy = lib.optional guest.autostart "multi-user.target";
      requires = [ "libvirtd.service" ] ++ vfsUnits ++ netUnits;
      after = [ "libvirtd.service" "network.target" ] ++ vfsUnits ++ netUnits;
      path = [ libvirtPkg qemuPkg pkgs.coreutils pkgs.gnugrep ];
      restartTriggers = [ xmlFile ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        TimeoutStopSec = 150;
      };
      script = ''
        set -euo pipefail
        # Bad input stops here, before anything is defined.
        ${lib.concatMapStrings (s: ''
          [ -d ${q s.source} ] || { echo "nixboot guest ${name}: share ${s.tag}: host directory ${s.source} does not exist" >&2; exit 1; }
        '') sources}
        install -d -m 0711 ${q cfg.imageDir}
        ${lib.optionalString (guest.mode == "libvirt") ''
          # Per-VM overlay; the image in the store is its read-only backing file.
          [ -e ${q overlay} ] || ${lib.escapeShellArgs (disksLib.overlayArgs { qemuImg = "qemu-img"; file = overlay; inherit (b) backing; })}
        ''}
        ${lib.concatStrings (lib.mapAttrsToList (dname: d:
          let file = disksLib.file { inherit (cfg) imageDir; guest = name; disk = dname; }; in ''
          [ -e ${q file} ] || ${lib.escapeShellArgs (disksLib.createArgs { qemuImg = "qemu-img"; inherit file; inherit (d) size; })}
        '') guest.disks)}
        xml=${xmlFile}
        ${lib.optionalString (guest.domainType == "auto") ''
          ${kvmProbe b.kernel}
          if ! kvm_works; then
            echo "nixboot guest ${name}: KVM does not work here (a trial boot printed nothing): domain type qemu (TCG)" >&2
            xml=${tcgFile}
          fi
        ''}
        ${virsh} define "$xml"
        if [ "$(${virsh} domstate ${q name})" != running ]; then
          ${virsh} start ${q name}
        fi
      '';
      preStop = ''
        state=$(${virsh} domstate ${q name} 2>/dev/null || true)
        if [ "$state" = running ]; then
          ${virsh} shutdown ${q name} || true
          for _ in $(seq 120); do
            [ "$(${virsh} domstate ${q name} 2>/dev/null || true)" = running ] || exit 0
            sleep 1
          done
          ${virsh} destroy ${q name} || true
        fi
      '';
    };

  # One virtiofsd --readonly per read-only share (libvirt < 11), unprivileged.
  virtiofsdUnit = s: lib.nameValuePair "nixboot-virtiofsd-${s.guest}-${s.tag}" {
    description = "virtiofsd --readonly for nixboot guest ${s.guest}, share ${s.tag} (${s.source})";
    before = [ "nixboot-guest-${s.guest}.service" ];
    unitConfig.ConditionPathIsDirectory = s.source;
    serviceConfig = {
      # No --socket-group: an unprivileged user may only give files to its own groups. The
      # socket takes QEMU's group from the setgid socket directory (tmpfiles rule below).
      ExecStart = lib.escapeShellArgs (vfs.args {
        virtiofsd = virtiofsdBin; inherit (s) socket source;
      });
      User = "nixboot-virtiofsd";
      Group = "nixboot-virtiofsd";
      # The socket must be connectable by QEMU's group (connect needs write): rwx for the group.
      UMask = "0007";
      Restart = "always";
      RestartSec = 1;
      NoNewPrivileges = true;
      ProtectSystem = "strict";
      ReadWritePaths = [ cfg.virtiofsdSocketDir ];
      PrivateTmp = true;
      ProtectHome = "read-only";
    };
  };

  networkUnit =
    let
      n = cfg.networking;
      netXml = pkgs.writeText "nixboot-network-${cfg.network}.xml" (import ../controller/network.nix {
        inherit lib; name = cfg.network; inherit (n) bridge address prefixLength dhcpStart dhcpEnd;
      });
      virsh = "virsh --connect ${lib.escapeShellArg cfg.uri}";
      q = lib.escapeShellArg cfg.network;
    in
    {
      description = "libvirt network ${cfg.network} of the nixboot guests (NAT)";
      wantedBy = [ "multi-user.target" ];
      requires = [ "libvirtd.service" ];
      after = [ "libvirtd.service" ];
      path = [ libvirtPkg pkgs.coreutils pkgs.gnugrep ];
      restartTriggers = [ netXml ];
      serviceConfig = { Type = "oneshot"; RemainAfterExit = true; };
      script = ''
        set -euo pipefail
        ${virsh} net-define ${netXml}
        ${virsh} net-autostart ${q}
        ${virsh} net-info ${q} | grep -q '^Active:.*yes' || ${virsh} net-start ${q}
      '';
    };

  allExternalShares = lib.concatLists (lib.mapAttrsToList externalShares cfg.guests);

  # One assertion per value that more than one owner claims.
  uniqueAssertion = what: claims:
    let byValue = lib.groupBy (c: c.value) claims; in
    lib.mapAttrsToList (value: cs: {
      assertion = builtins.length cs < 2;
      message = "nixboot.controller.guests: ${lib.concatMapStringsSep " and " (c: c.owner) cs} have the same ${what} ${value}: give each its own.";
    }) byValue;

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
        assertion = lib.all (d: d.physicalBlockSize >= d.logicalBlockSize) (lib.attrValues guest.disks);
        message = "nixboot.controller.guests.${name}.disks: a physical sector size smaller than the logical one.";
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
      default = "nixboot";
      description = ''
        Libvirt network the guests' virtio NIC joins (networking.mode `nat`). The profile
        defines, autostarts and starts it (unit nixboot-network) unless
        networking.defineNetwork is off (then it must exist, e.g. libvirt's `default`).
      '';
    };

    networking = {
      mode = mkOption {
        type = types.enum [ "nat" "bridge" ];
        default = "nat";
        description = ''
          `nat`: guests join the libvirt NAT network `network` (addresses from its DHCP).
          `bridge`: guests join the host bridge `bridge` (the LAN's DHCP), as the
          NixOS-on-NixOS seed does; the bridge is the host's own networking configuration.
        '';
      };
      defineNetwork = mkOption {
        type = types.bool;
        default = true;
        description = "nat: define, autostart and start `network` from the options below.";
      };
      bridge = mkOption {
        type = types.str;
        default = "virbr-nixboot";
        description = "nat: the bridge libvirt creates for the network. bridge: the host bridge the guests join.";
      };
      address = mkOption {
        type = types.str;
        default = "192.168.87.1";
        description = "nat: the host's address on the network (the guests' gateway and DNS).";
      };
      prefixLength = mkOption {
        type = types.ints.between 8 30;
        default = 24;
        description = "nat: prefix length of the network.";
      };
      dhcpStart = mkOption {
        type = types.str;
        default = "192.168.87.100";
        description = "nat: first address DHCP hands out.";
      };
      dhcpEnd = mkOption {
        type = types.str;
        default = "192.168.87.254";
        description = "nat: last address DHCP hands out.";
      };
    };

    virtiofsdSocketDir = mkOption {
      type = types.str;
      default = "/run/nixboot-virtiofsd";
      description = "Where the controller's own virtiofsd (read-only shares with libvirt < 11) put their sockets.";
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
      }] ++ lib.concatLists (lib.mapAttrsToList guestAssertions cfg.guests)
      ++ uniqueAssertion "MAC address" (lib.mapAttrsToList (n: g: { owner = n; value = g.mac; }) cfg.guests)
      ++ uniqueAssertion "disk serial" (lib.concatLists (lib.mapAttrsToList (n: g:
        lib.mapAttrsToList (d: disk: { owner = "${n}.disks.${d}"; value = disk.serial; }) g.disks) cfg.guests));

      systemd.services = lib.mapAttrs' (name: guest:
        lib.nameValuePair "nixboot-guest-${name}" (mkIf (guest.system != null) (guestUnit name guest)))
        cfg.guests
        // lib.listToAttrs (map virtiofsdUnit allExternalShares)
        // lib.optionalAttrs (cfg.networking.mode == "nat" && cfg.networking.defineNetwork) {
          nixboot-network = networkUnit;
        };

      users.users = lib.mkIf (allExternalShares != [ ]) {
        nixboot-virtiofsd = {
          isSystemUser = true;
          group = "nixboot-virtiofsd";
          description = "virtiofsd --readonly of the nixboot guests' read-only shares";
        };
      };
      users.groups = lib.mkIf (allExternalShares != [ ]) { nixboot-virtiofsd = { }; };
      systemd.tmpfiles.rules = lib.optional (allExternalShares != [ ])
        "d ${cfg.virtiofsdSocketDir} 2750 nixboot-virtiofsd ${qemuGroup} - -";
    })
  ];
}
