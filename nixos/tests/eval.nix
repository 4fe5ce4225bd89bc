# The properties each nixboot mode must have, checked by evaluation only (nothing is built).
# Used by nixos/tests/eval (offline, Nix 2.8, NIXPKGS) and by the flake's `checks`.
#
# Every mode evaluates to { facts = [ "what was checked", ... ]; xml = { guest = "..."; }; }
# once all its checks hold, and throws "nixboot eval: FAILED <mode>: <check>" otherwise.
#
#   examples     the flake's nixosConfigurations.example-* (nixos/examples)
#   nixosSystem  the function that made them (for the configurations that must be rejected)
#   modules      the flake's nixosModules
#   flake        the flake's outputs, for the `flake` mode (null: no such mode)
#   readDrvs     also read instantiated .drv files (boot.json's text, mkinitrd's arguments);
#                needs an impure evaluation that writes derivations (nix-instantiate
#                --read-write-mode), so the flake's pure `checks` turn it off.
{ lib, examples, nixosSystem, modules, flake ? null, readDrvs ? true }:
let
  inherit (lib) hasPrefix hasSuffix elem all any filter;

  # Substring test on strings that may carry store-path context (regexes may not), by
  # search rather than a whole-string match (std::regex recurses per character).
  hasInfix = needle: hay:
    let plain = builtins.unsafeDiscardStringContext; in
    builtins.length (builtins.split (lib.escapeRegex (plain needle)) (plain hay)) > 1;

  checker = mode: cond: what:
    if cond then what else throw "nixboot eval: FAILED ${mode}: ${what}";

  strict = facts: builtins.deepSeq facts facts;

  # An instantiated derivation's text (ATerm).
  drvText = drv: builtins.readFile drv.drvPath;

  # boot.json as written by the bootspec writer: the `text` of the boot.json derivation the
  # writer reads (before the toplevel and init are injected at build time).
  bootJson = config:
    let
      ctx = builtins.attrNames (builtins.getContext config.boot.bootspec.writer);
      drv = lib.findFirst (p: hasSuffix "-boot.json.drv" p) (throw "nixboot eval: no boot.json derivation in the bootspec writer") ctx;
      aterm = builtins.readFile drv;
      afterText = builtins.elemAt (builtins.split ''\("text","'' aterm) 2;
      escaped = builtins.head (builtins.split ''"\)'' afterText);
      text = builtins.replaceStrings [ ''\\'' ''\"'' ''\n'' ''\t'' ] [ ''\'' ''"'' "\n" "\t" ] escaped;
    in
    { inherit text; doc = builtins.fromJSON text; };

  # The bootspec facts every backend shares: our initrd is bootspec's initrd.
  initrdFacts = check: config:
    let
      initrd = config.system.build.nixbootInitrd;
      ours = "${initrd}/${config.system.boot.loader.initrdFile}";
    in
    [
      (check (config.system.build.initialRamdisk.drvPath == initrd.drvPath)
        "system.build.initialRamdisk is nixboot's initrd (${initrd.name})")
      (check (config.boot.bootspec.extensions."org.nixboot.v1".initrd == ours)
        "bootspec extension org.nixboot.v1.initrd is ours")
    ] ++ lib.optionals readDrvs (
      let
        bj = bootJson config;
        v1 = bj.doc."org.nixos.bootspec.v1";
        itext = drvText initrd;
        top = config.system.build.toplevel;
      in
      [
        (check (v1.initrd == ours) "boot.json org.nixos.bootspec.v1.initrd = ${ours}")
        (check (v1.kernelParams == config.boot.kernelParams) "boot.json kernelParams = boot.kernelParams")
        (check (bj.doc."org.nixboot.v1".initrd == ours) "boot.json org.nixboot.v1.initrd = the same")
        (check (hasInfix "mkinitrd '-o'" itext && hasInfix "'--init' '${config.nixboot.packages.init}/bin/init'" itext)
          "the initrd is made by mkinitrd with the static init")
        (check (!hasInfix "--closure" itext && !hasInfix (builtins.baseNameOf top.drvPath) itext)
          "the initrd does not depend on the toplevel (no --closure)")
      ]);

  toplevelFact = check: config:
    let drv = config.system.build.toplevel.drvPath; in
    check (hasSuffix ".drv" drv) "toplevel instantiates: ${drv}";

  params = config: config.boot.kernelParams;

  # ------------------------------------------------------------------ imageless
  imageless =
    let
      check = checker "imageless";
      c = examples.example-imageless.config;
      x = examples.example-imageless-external-kernel.config;
      s = (nixosSystem {
        modules = [
          modules.default
          ../templates/imageless/configuration.nix
          { nixpkgs.hostPlatform = "x86_64-linux"; boot.initrd.systemd.enable = true; }
        ];
      }).config;
      kver = c.boot.kernelPackages.kernel.modDirVersion;
    in
    {
      facts = strict ([
        (check (c.fileSystems."/".fsType == "tmpfs") "fileSystems./ is a tmpfs")
        (check (c.fileSystems."/nix/store".fsType == "virtiofs" && c.fileSystems."/nix/store".device == "store")
          "fileSystems./nix/store is virtiofs tag store")
        (check (all (p: elem p (params c)) [ "root=tmpfs" "nixboot.store=store" "nixboot.modules=none" "console=ttyS0,115200" ])
          "kernelParams: root=tmpfs nixboot.store=store nixboot.modules=none")
        (check (c.fileSystems."/src".fsType == "virtiofs" && elem "ro" c.fileSystems."/src".options)
          "mounts.shares: /src is virtiofs, read-only")
        (check (c.users.users.nixboot.isNormalUser) "user: nixboot exists")
        (let u = c.systemd.services.nixboot-exec; in check
          (elem "multi-user.target" u.wantedBy && elem "multi-user.target" u.after
            && u.unitConfig.ConditionKernelCommandLine == "nixboot.exec"
            && hasInfix "exec-agent.sh" u.serviceConfig.ExecStart)
          "--exec agent: nixboot-exec.service after multi-user.target, only with nixboot.exec=, runs exec-agent.sh")
        (check (any (p: lib.getName p == "util-linux") c.systemd.services.nixboot-exec.path)
          "--shell: the agent has util-linux (script) for the pseudo-terminal")
      ] ++ lib.optionals readDrvs [
        (check (hasInfix "nixboot-exec-agent" (drvText c.system.build.toplevel))
          "--exec agent: the toplevel carries the nixboot-exec-agent marker the init looks for")
      ] ++ initrdFacts check c
      ++ lib.optionals readDrvs [
        (check (hasInfix "'--kernel-modules' '${c.system.modulesTree}/lib/modules/${kver}'" (drvText c.system.build.nixbootInitrd)
          && hasInfix "'--module' 'virtiofs'" (drvText c.system.build.nixbootInitrd))
          "the initrd takes virtiofs and its dependencies from NixOS's kernel ${kver}")
      ] ++ [
        (toplevelFact check c)
        # external kernel
        (check (!x.boot.kernel.enable) "external kernel: boot.kernel.enable = false")
        (check (x.fileSystems."/lib/modules".fsType == "virtiofs" && x.fileSystems."/lib/modules".device == "modules")
          "external kernel: fileSystems./lib/modules is virtiofs tag modules")
        (check (elem "nixboot.modules=modules" (params x)) "external kernel: kernelParams nixboot.modules=modules")
        (check (x.nixboot.initrd.modulesDir == null) "external kernel: the initrd packs no modules")
      ] ++ initrdFacts check x
      ++ [
        # The other closure flavour: systemd in stage 1, so toplevel/init is systemd and
        # stage 2 is toplevel/prepare-root (the init runs it before the switch).
        (check (s.boot.initrd.systemd.enable && s.system.build.initialRamdisk.drvPath == s.system.build.nixbootInitrd.drvPath)
          "systemd-stage-1 flavour: nixboot's initrd still replaces NixOS's")
      ] ++ lib.optionals readDrvs [
        (check (hasInfix "$out/prepare-root" (drvText s.system.build.toplevel)) "systemd-stage-1 flavour: the toplevel has prepare-root")
      ] ++ lib.optionals readDrvs (
        let bj = bootJson x; in [
          (check (bj.doc."org.nixos.bootspec.v1".kernel == x.nixboot.kernel.externalImage)
            "external kernel: boot.json kernel = ${x.nixboot.kernel.externalImage}")
          (check (!hasInfix "-linux-" bj.text && bj.doc."org.nixboot.v1".externalKernel)
            "external kernel: no NixOS kernel in boot.json")
          (check (!hasInfix "--kernel-modules" (drvText x.system.build.nixbootInitrd))
            "external kernel: mkinitrd gets no --kernel-modules")
        ]) ++ [
        (toplevelFact check x)
      ]);
      # For the runner: the external-kernel toplevel's build graph must hold no Linux kernel.
      noKernel = [ x.system.build.toplevel.drvPath ];
    };

  # ------------------------------------------------------------------ libvirt
  libvirt =
    let
      check = checker "libvirt";
      c = examples.example-libvirt.config;
      image = c.system.build.nixbootImage;
      fb = c.systemd.services.nixboot-first-boot;
    in
    {
      facts = strict ([
        (check (c.fileSystems."/".fsType == "ext4" && c.fileSystems."/".device == "/dev/disk/by-label/nixos")
          "fileSystems./ is ext4 /dev/disk/by-label/nixos")
        (check (c.boot.loader.grub.enable && c.boot.loader.grub.device == "/dev/vda") "grub on /dev/vda")
        (check (all (p: elem p (params c)) [ "root=/dev/vda1" "rootfstype=ext4" "nixboot.modules=none" ])
          "kernelParams: root=/dev/vda1 rootfstype=ext4")
        (check (!(c.fileSystems ? "/nix/store")) "no virtiofs store")
      ] ++ initrdFacts check c ++ lib.optionals readDrvs [
        (check (hasInfix "'--module' 'virtio_blk'" (drvText c.system.build.nixbootInitrd)) "the initrd loads virtio_blk")
        (check (hasInfix "qcow2" (drvText image)) "image: make-disk-image, format qcow2")
      ] ++ [
        (check (hasSuffix ".drv" image.drvPath) "image instantiates: ${image.drvPath}")
        (check (fb.unitConfig.ConditionPathExists == "!/var/lib/nixboot/first-boot.done"
          && hasInfix "nixos-rebuild boot" fb.script && hasInfix "systemctl --no-block reboot" fb.script)
          "first boot: nixos-rebuild boot from the attached configuration, then reboot, once")
        (check (c.fileSystems."/mnt/scratch".autoFormat) "mounts.storage: /mnt/scratch, formatted on first use")
        (toplevelFact check c)
      ]);
    };

  # ------------------------------------------------------------------ baremetal
  baremetal =
    let
      check = checker "baremetal";
      c = examples.example-baremetal.config;
      ram = c.system.build.nixbootRamSystem.config;
      netboot = c.system.build.nixbootNetboot;
      kexec = c.system.build.nixbootKexec;
    in
    {
      facts = strict ([
        (check (c.fileSystems."/".fsType == "ext4" && c.fileSystems."/".device == "/dev/disk/by-label/nixos")
          "fileSystems./ from the hardware configuration (ext4 by label)")
        (check (!(c.fileSystems ? "/nix/store") && !(c.fileSystems ? "/lib/modules")) "no virtiofs store or modules")
        (check (c.boot.kernel.enable) "a real kernel")
        (check (all (p: elem p (params c)) [ "root=LABEL=nixos" "rootfstype=ext4" ] && !elem "root=tmpfs" (params c))
          "kernelParams: root=LABEL=nixos rootfstype=ext4")
        (check (c.system.switch.enable && c.boot.loader.systemd-boot.enable) "activation: switch-to-configuration with the machine's boot loader")
        (check (c.nixboot.backends.imageless.enable) "the imageless configuration underneath")
      ] ++ initrdFacts check c ++ [
        (check (ram.fileSystems."/".fsType == "tmpfs" && builtins.attrNames ram.fileSystems == [ "/" ])
          "RAM variant: tmpfs root and no disks")
        (check (elem "root=tmpfs" (params ram) && ram.systemd.services ? nixboot-carry)
          "RAM variant: root=tmpfs, carried ssh keys and addresses restored")
        (check (hasSuffix ".drv" netboot.drvPath && hasSuffix ".drv" kexec.drvPath) "netboot and kexec instantiate")
      ] ++ lib.optionals readDrvs (
        let
          nt = drvText netboot;
          kt = drvText kexec;
          embedded = c.system.build.nixbootEmbeddedInitrd;
          et = drvText embedded;
        in
        [
          (check (hasInfix "'--embed-store'" et && hasInfix "'--closure' '${ram.system.build.toplevel}'" et
            && hasInfix "NIXBOOT_CLOSURE_INFO" et)
            "embedded-store initrd: mkinitrd --closure <RAM toplevel> --embed-store")
          (check (hasInfix "#!ipxe" nt && hasInfix "netboot.ipxe" nt && hasInfix embedded.outPath nt)
            "netboot: kernel + that initrd + iPXE script")
          (check (hasInfix embedded.outPath kt && hasInfix "kexec-run.sh" kt && hasInfix "tar " kt)
            "kexec: tarball with that initrd, static kexec and the run script")
        ]) ++ [
        (toplevelFact check c)
      ]);
    };

  # ------------------------------------------------------------------ controller
  controller =
    let
      check = checker "controller";
      c = examples.example-controller.config;
      g = c.nixboot.controller.guests;
      gi = examples.example-imageless.config;
      gl = examples.example-libvirt.config;
      names = map lib.getName c.environment.systemPackages;
      unit = c.systemd.services."nixboot-guest-imageless";
    in
    {
      facts = strict ([
        (check (c.virtualisation.libvirtd.enable && !c.virtualisation.libvirtd.qemu.runAsRoot) "libvirtd, QEMU not as root")
        (check (all (n: any (hasPrefix n) names) [ "ansible" "qemu" "virtiofsd" "libvirt" "gcc" "gnumake" "flex" "bison" "bc" "pahole" "nixboot-qemu" ])
          "packages: kernel build tools, ansible, qemu, virtiofsd, libvirt, nixboot-qemu")
        (check (hasInfix "<kernel>${gi.system.build.kernel}/${gi.system.boot.loader.kernelFile}</kernel>" g.imageless.xml
          && hasInfix "<initrd>${gi.system.build.nixbootInitrd}/initrd</initrd>" g.imageless.xml)
          "imageless guest XML: kernel and nixboot's initrd")
        (check (hasInfix "init=${gi.system.build.toplevel}/init" g.imageless.xml && hasInfix "root=tmpfs" g.imageless.xml)
          "imageless guest XML: cmdline init=<toplevel>/init root=tmpfs")
        (check (hasInfix "<source type='memfd'/>" g.imageless.xml && hasInfix "<target dir='store'/>" g.imageless.xml
          && hasInfix "<target dir='src'/>" g.imageless.xml)
          "imageless guest XML: memfd backing, virtiofs store and src")
        (check (hasInfix "<source file='${gl.system.build.nixbootImage}/nixos.qcow2'/>" g.web1.xml
          && hasInfix "<source file='/var/lib/libvirt/images/web1.qcow2'/>" g.web1.xml
          && hasInfix "<serial>nixos-config</serial>" g.web1.xml)
          "libvirt guest XML: overlay over the image in the store, configuration disk")
        (check (hasInfix "define" unit.script && hasInfix "start" unit.script && elem "multi-user.target" unit.wantedBy
          && elem "libvirtd.service" unit.requires)
          "systemd units define and start the guests through libvirt")
        (check (hasInfix "'qemu-img' 'create' '-q' '-f' 'qcow2' '-F' 'qcow2' '-b' '${gl.system.build.nixbootImage}/nixos.qcow2' '/var/lib/libvirt/images/web1.qcow2'"
          c.systemd.services."nixboot-guest-web1".script)
          "libvirt guest: per-VM overlay created by its unit")
      ] ++ (
        # nixpkgs 24.05 has libvirt 10.0: no read-only virtiofs, so the controller's own
        # virtiofsd --readonly serves the store and attaches by socket.
        let
          v = c.virtualisation.libvirtd.package.version;
          store = c.systemd.services."nixboot-virtiofsd-imageless-store";
          src = c.systemd.services."nixboot-virtiofsd-imageless-src";
          net = c.systemd.services.nixboot-network;
          web1 = c.systemd.services."nixboot-guest-web1";
        in
        [
          (check (lib.versionOlder v "11" && hasInfix "<source socket='/run/nixboot-virtiofsd/imageless-store.sock'/>" g.imageless.xml
            && hasInfix "<source socket='/run/nixboot-virtiofsd/imageless-src.sock'/>" g.imageless.xml && !hasInfix "<readonly/>\n    </filesystem>" g.imageless.xml
            && !hasInfix "<source dir='/nix/store'/>" g.imageless.xml)
            "libvirt ${v} (< 11, no read-only virtiofs): store and read-only shares attached by the controller's virtiofsd sockets, no <readonly/>")
          (check (hasInfix "--readonly" store.serviceConfig.ExecStart && hasInfix "--shared-dir=/nix/store" store.serviceConfig.ExecStart
            && elem "d /run/nixboot-virtiofsd 2750 nixboot-virtiofsd qemu-libvirtd - -" c.systemd.tmpfiles.rules
            && store.serviceConfig.UMask == "0007" && store.serviceConfig.User == "nixboot-virtiofsd"
            && hasInfix "--shared-dir=/home/nixboot/src" src.serviceConfig.ExecStart
            && elem "nixboot-virtiofsd-imageless-store.service" unit.requires && c.users.users.nixboot-virtiofsd.isSystemUser)
            "nixboot-virtiofsd-imageless-{store,src}: virtiofsd --readonly as user nixboot-virtiofsd, sockets in a setgid dir of QEMU's group, required by the guest's unit")
          (check (!(c.systemd.services ? "nixboot-virtiofsd-web1-store")) "libvirt-mode guest: no virtiofsd (its store is its disk)")
          (check (elem "multi-user.target" net.wantedBy && hasInfix "net-define" net.script && hasInfix "net-autostart 'nixboot'" net.script
            && hasInfix "net-start 'nixboot'" net.script && elem "nixboot-network.service" unit.requires
            && hasInfix "<source network='nixboot'/>" g.web1.xml)
            "network: nixboot-network defines, autostarts and starts the NAT network nixboot; guests require it and join it")
          (check (hasInfix "<mac address='${g.imageless.mac}'/>" g.imageless.xml && g.imageless.mac != g.web1.mac)
            "each guest has its own stable MAC (${g.imageless.mac}, ${g.web1.mac})")
          (check (hasInfix "<serial>scratch0</serial>" g.imageless.xml && hasInfix "logical_block_size='4096' physical_block_size='4096'" g.imageless.xml
            && hasInfix "<source file='/var/lib/libvirt/images/imageless-scratch1.qcow2'/>" g.imageless.xml
            && hasInfix "'qemu-img' 'create' '-q' '-f' 'qcow2' '/var/lib/libvirt/images/imageless-scratch1.qcow2' '20G'" unit.script)
            "extra disks: qcow2 under /var/lib/libvirt/images created by the unit, serial (by-id virtio-<serial>), 512/4096 sectors")
          (check (hasInfix "kvm_works" unit.script && hasInfix "<domain type='qemu'>" g.imageless.xmlTcg && hasInfix "<domain type='kvm'>" g.imageless.xml)
            "domainType auto: the unit's trial boot under KVM picks the kvm or the qemu (TCG) XML")
          (let
            # The generator alone, as a libvirt >= 11 host and a bridged controller would call it.
            render = version: interface: import ../modules/controller/domain.nix {
              inherit lib; name = "g"; libvirtVersion = version;
              guest = { mode = "imageless"; memory = 512; vcpus = 1; domainType = "qemu"; mac = "52:54:00:00:00:09";
                        consoleLog = null; shares = { }; disks = { }; configDir = null; };
              controller = { imageDir = "/img"; virtiofsdSocketDir = "/run/v"; inherit interface; };
              boot = { kernel = "/k"; initrd = "/i"; cmdline = "init=/x"; backing = null; storeTag = "store";
                       modulesTag = "modules"; modulesDir = null; virtiofsd = "/bin/virtiofsd"; };
            };
            v11 = render "11.0.0" { type = "network"; source = "nixboot"; };
            bridged = render "10.0.0" { type = "bridge"; source = "br0"; };
          in
          check (hasInfix "<source dir='/nix/store'/>" v11 && hasInfix "<readonly/>" v11 && !hasInfix "socket=" v11
            && hasInfix "<source socket='/run/v/g-store.sock'/>" bridged
            && hasInfix "<interface type='bridge'>" bridged && hasInfix "<source bridge='br0'/>" bridged)
            "libvirt >= 11: libvirt's own virtiofsd with <readonly/>; networking.mode bridge: <interface type='bridge'> on the host bridge")
          (let beforeDefine = builtins.head (builtins.split "virsh" unit.script); in
          check (hasInfix "[ -d '/home/nixboot/src' ] || { echo" beforeDefine && hasInfix "/home/nixboot/src does not exist" beforeDefine)
            "a share whose host directory is missing stops the unit before virsh define")
        ]) ++ [
        (toplevelFact check c)
      ]);
      xml = lib.mapAttrs (_: guest: builtins.unsafeDiscardStringContext guest.xml) g;
    };

  # ------------------------------------------------------------------ generations
  # Boot counting (nixos/modules/generations): the baremetal example with it enabled.
  generations =
    let
      check = checker "generations";
      sys = examples.example-baremetal.extendModules {
        modules = [{ nixboot.bootCounting.enable = true; nixboot.kexecTool.enable = true; }];
      };
      c = sys.config;
      health = c.systemd.units."nixboot-boot-health.target".text;
      bless = c.systemd.units."nixboot-bless-boot.service".text;
      hook = c.boot.loader.systemd-boot.extraInstallCommands;
      base = { nixpkgs.hostPlatform = "x86_64-linux"; system.stateVersion = "24.05"; };
      failed = mods:
        let s = nixosSystem { modules = [ modules.default base ] ++ mods; };
        in map (a: a.message) (filter (a: !a.assertion) s.config.assertions);
    in
    {
      facts = strict ([
        (check (c.nixboot.bootCounting.tries == 3 && c.boot.loader.systemd-boot.enable) "tries defaults to 3, with systemd-boot")
        (check (hasInfix "nixboot-boot-counting-install" hook) "systemd-boot's installer runs the boot counting hook")
        (check (hasInfix "Requires=multi-user.target" health && hasInfix "After=multi-user.target" health
          && elem "multi-user.target" c.systemd.targets.nixboot-boot-health.wantedBy)
          "nixboot-boot-health.target requires and follows the health checks (multi-user.target)")
        (check (hasInfix "After=nixboot-boot-health.target" bless && hasInfix "Requires=nixboot-boot-health.target" bless
          && hasInfix "RequiresMountsFor=/boot" bless && hasInfix "LoaderBootCountPath" c.systemd.services.nixboot-bless-boot.script)
          "nixboot-bless-boot.service blesses the LoaderBootCountPath entry once healthy, ESP mounted")
        (check (any (p: lib.getName p == "nixboot-kexec") c.environment.systemPackages) "nixboot-kexec in the system path")
        (check (any (hasInfix "nixboot.bootCounting needs systemd-boot")
          (failed [{ nixboot.bootCounting.enable = true; boot.loader.grub.enable = false; fileSystems."/" = { device = "/dev/vda1"; fsType = "ext4"; }; }]))
          "rejected: boot counting without systemd-boot")
        (check (!(examples.example-baremetal.config.systemd.units ? "nixboot-bless-boot.service")) "off by default")
      ] ++ lib.optionals readDrvs (
        let ht = builtins.readFile (lib.findFirst (d: hasSuffix "nixboot-boot-counting-install.drv" d)
          (throw "nixboot eval: no install hook derivation")
          (builtins.attrNames (builtins.getContext hook)));
        in [
          (check (hasInfix "TRIES=3" ht && hasInfix ''$entries/$id+$TRIES.conf'' ht && hasInfix "ESP='/boot'" ht)
            "install hook: new entries renamed nixos-generation-N+3.conf on the ESP /boot")
          (check (hasInfix "default nixos-generation-*" ht) "install hook: loader.conf default is the newest entry with tries left")
        ]));
    };

  # ------------------------------------------------------------------ assertions
  assertions =
    let
      check = checker "assertions";
      base = { nixpkgs.hostPlatform = "x86_64-linux"; system.stateVersion = "24.05"; };
      failed = mods:
        let sys = nixosSystem { modules = [ modules.default base ] ++ mods; };
        in map (a: a.message) (filter (a: !a.assertion) sys.config.assertions);
      rejects = what: needle: mods:
        check (any (hasInfix needle) (failed mods)) "rejected: ${what}";
      disk = { fileSystems."/" = { device = "/dev/vda1"; fsType = "ext4"; }; boot.loader.grub.device = "/dev/vda"; };
    in
    {
      facts = strict [
        (rejects "two backends at once" "more than one backend"
          [{ nixboot.backends.imageless.enable = true; nixboot.backends.libvirt.enable = true; }])
        (rejects "imageless without a virtiofs store" "needs /nix/store from the host over virtiofs"
          [{ nixboot.backends.imageless = { enable = true; storeTag = null; }; }])
        (rejects "a guest without a system" "has no system"
          [ disk { nixboot.profiles.controller.enable = true; nixboot.controller.guests.lonely = { }; } ])
        (rejects "a guest whose system lacks its mode's backend" "does not enable nixboot.backends.libvirt"
          [ disk { nixboot.profiles.controller.enable = true;
                   nixboot.controller.guests.wrong = { mode = "libvirt"; system = examples.example-imageless; }; } ])
        (rejects "two guests with one MAC address" "have the same MAC address 52:54:00:00:00:01"
          [ disk { nixboot.profiles.controller.enable = true;
                   nixboot.controller.guests = {
                     a = { system = examples.example-imageless; mac = "52:54:00:00:00:01"; };
                     b = { system = examples.example-imageless; mac = "52:54:00:00:00:01"; };
                   }; } ])
        (rejects "two guests' disks with one serial" "have the same disk serial data"
          [ disk { nixboot.profiles.controller.enable = true;
                   nixboot.controller.guests = {
                     a = { system = examples.example-imageless; disks.data = { }; };
                     b = { system = examples.example-imageless; disks.other.serial = "data"; };
                   }; } ])
        (rejects "a disk whose physical sectors are smaller than its logical ones" "physical sector size smaller"
          [ disk { nixboot.profiles.controller.enable = true;
                   nixboot.controller.guests.a = { system = examples.example-imageless;
                     disks.d = { logicalBlockSize = 4096; physicalBlockSize = 512; }; }; } ])
        (rejects "initrd secrets (the init does not read them)" "boot.initrd.secrets is not supported"
          [{ nixboot.backends.imageless.enable = true; boot.initrd.secrets."/etc/key" = ./eval.nix; }])
        (rejects "baremetal without a real kernel" "baremetal needs a real kernel"
          [ disk { nixboot.baremetal.enable = true; boot.kernel.enable = false; } ])
        (check (failed [{ nixboot.backends.imageless.enable = true; }] == [ ]) "a plain imageless machine passes every assertion")
      ];
    };
  # ------------------------------------------------------------------ nixos-init
  # The third closure flavour (nixpkgs 26.05 `system.nixos-init.enable`; docs/nixos-handoff.md)
  # and the etc overlay. nixpkgs 24.05 has `system.etc.overlay` but no nixos-init: on such a
  # tree `nixosInitStub` below stands in for nixos/modules/system/boot/nixos-init.nix.
  # It is a STUB, used by this test only: the option (no implementation) and the boot.json
  # extension that 26.05 writes for every toplevel. On a tree that has nixos-init, the real
  # module is used and the stub is left out.
  nixosInit =
    let
      check = checker "nixosinit";
      base = { nixpkgs.hostPlatform = "x86_64-linux"; system.stateVersion = "24.05"; };
      imageless = [ modules.default base ../templates/imageless/configuration.nix ];
      treeHasNixosInit = lib.hasAttrByPath [ "system" "nixos-init" "enable" ]
        (nixosSystem { modules = [ base ]; }).options;
      nixosInitStub = { config, lib, pkgs, ... }: {
        options.system.nixos-init.enable = lib.mkEnableOption "STUB of nixpkgs 26.05's nixos-init (nixboot's eval test only)";
        config.boot.bootspec.extensions."org.nixos.nixos-init.v1" = {
          firmware = "${config.hardware.firmware}/lib/firmware";
          modprobe_binary = "${pkgs.kmod}/bin/modprobe";
          nix_store_mount_opts = [ "ro" "nosuid" "nodev" ];
          sh_binary = config.environment.binsh;
        } // lib.optionalAttrs config.system.etc.overlay.enable {
          etc_metadata_image = config.system.build.etcMetadataImage;
          etc_basedir = config.system.build.etcBasedir;
        };
      };
      sys = extra: nixosSystem { modules = imageless ++ lib.optional (!treeHasNixosInit) nixosInitStub ++ extra; };
      failed = c: map (a: a.message) (filter (a: !a.assertion) c.assertions);
      # What nixos-init requires of a system (its own assertions in 26.05), immutable /etc.
      nixosInitSystem = {
        boot.initrd.systemd.enable = true;
        system.etc.overlay = { enable = true; mutable = false; };
        systemd.sysusers.enable = true;
        users.mutableUsers = false;
        # Immutable users and no password: NixOS asks to confirm the lock-out.
        users.allowNoPasswordLogin = true;
        system.nixos-init.enable = true;
      };
      external = { boot.kernel.enable = false; nixboot.kernel.externalImage = "/boot/bzImage"; };
      # Any other extension must survive our writer as well.
      otherExtension = { boot.bootspec.extensions."org.example.nixboot-test.v1" = { list = [ 1 "two" { three = true; } ]; nothing = null; }; };
      good = (sys [ nixosInitSystem ]).config;
      ext = (sys [ external otherExtension ]).config;
      rejects = what: needle: mods:
        check (any (hasInfix needle) (failed (sys mods).config)) "rejected: ${what}";
      plain = examples.example-imageless.config;
      ours = m: hasInfix "'--module' '${m}'";
    in
    {
      facts = strict ([
        (check good.system.nixos-init.enable (if treeHasNixosInit
          then "system.nixos-init.enable = true (this nixpkgs declares it: the real module)"
          else "system.nixos-init.enable = true (this nixpkgs lacks it: the test's STUB declaration and extension)"))
        (check (failed good == [ ]) "nixos-init + immutable etc overlay + sysusers on nixboot's imageless initrd passes every assertion")
        (check (all (m: elem m good.nixboot.initrd.kernelModules) [ "loop" "erofs" "overlay" ])
          "etc overlay: nixboot.initrd.kernelModules has loop, erofs, overlay")
        (check (!any (m: elem m plain.nixboot.initrd.kernelModules) [ "loop" "erofs" ])
          "no etc overlay: the initrd carries no loop, erofs")
        (check ((good.boot.bootspec.extensions."org.nixboot.v1".etcOverlay.mutable or null) == false
          && !(plain.boot.bootspec.extensions."org.nixboot.v1" ? etcOverlay))
          "org.nixboot.v1.etcOverlay.mutable = false with the overlay, absent without")
        (rejects "an etc overlay without nixos-init (flavour b: /etc would stay empty)" "needs system.nixos-init.enable"
          [ nixosInitSystem { system.nixos-init.enable = lib.mkForce false; } ])
        (rejects "nixos-init with a mutable /etc (the init mounts it read-only)" "system.etc.overlay.mutable = false"
          [ nixosInitSystem { system.etc.overlay.mutable = lib.mkForce true; users.mutableUsers = lib.mkForce true; } ])
        (rejects "nixos-init with an external kernel and no modules in the initrd" "the initrd carries no modules"
          [ nixosInitSystem external ])
        (rejects "nixos-init with overlay missing from nixboot.initrd.kernelModules" "lacks overlay"
          [ nixosInitSystem { nixboot.initrd.kernelModules = lib.mkForce [ "virtio_pci" "virtiofs" "loop" "erofs" ]; } ])
      ] ++ lib.optionals readDrvs (
        let
          it = drvText good.system.build.nixbootInitrd;
          pt = drvText plain.system.build.nixbootInitrd;
          bj = bootJson good;
          xj = bootJson ext;
          init = bj.doc."org.nixos.nixos-init.v1" or { };
          plainJson = v: builtins.fromJSON (builtins.unsafeDiscardStringContext (builtins.toJSON v));
        in
        [
          (check (all (m: ours m it) [ "loop" "erofs" "overlay" ]) "etc overlay: mkinitrd --module loop, erofs, overlay")
          (check (!ours "erofs" pt && !ours "loop" pt) "no etc overlay: mkinitrd gets no --module loop, erofs")
          (check ((init.etc_metadata_image or null) == "${good.system.build.etcMetadataImage}"
            && (init.etc_basedir or null) == "${good.system.build.etcBasedir}")
            "boot.json org.nixos.nixos-init.v1 names the etc metadata image and basedir")
          (check ((bj.doc."org.nixboot.v1".etcOverlay.mutable or null) == false) "boot.json org.nixboot.v1.etcOverlay.mutable = false")
          (check (!ext.boot.kernel.enable && (xj.doc."org.nixos.bootspec.v1".kernel or null) == "/boot/bzImage")
            "external kernel: boot.json is nixboot's writer's (kernel = /boot/bzImage)")
          (check (all (k: (xj.doc.${k} or null) == plainJson ext.boot.bootspec.extensions.${k})
            [ "org.nixos.nixos-init.v1" "org.example.nixboot-test.v1" "org.nixboot.v1" ])
            "external-kernel writer keeps every extension (${lib.concatStringsSep ", " (lib.filter (k: k != "org.nixos.bootspec.v1") (builtins.attrNames xj.doc))})")
          (check (lib.sort (a: b: a < b) (builtins.attrNames bj.doc)
            == lib.sort (a: b: a < b) ([ "org.nixos.bootspec.v1" ] ++ builtins.attrNames good.boot.bootspec.extensions))
            "nixpkgs' writer (NixOS kernel): boot.json holds exactly v1 and every extension")
        ]) ++ [
        (toplevelFact check good)
      ]);
    };

  # ------------------------------------------------------------------ verified
  # A verified disk (nixos/modules/verified.nix): a minimal machine with it enabled.
  verified =
    let
      check = checker "verified";
      base = { nixpkgs.hostPlatform = "x86_64-linux"; system.stateVersion = "24.05"; networking.hostName = "vdisk"; };
      keys = { keyFile = "/etc/secureboot/db.key"; certFile = "/etc/secureboot/db.crt"; };
      mk = mods: nixosSystem { modules = [ modules.default base ] ++ mods; };
      c = (mk [{ nixboot.verified = { enable = true; signing = keys; }; }]).config;
      disk = c.system.build.nixbootVerifiedDisk;
      install = c.system.build.nixbootVerifiedInstall;
      toplevel = c.system.build.toplevel;
      failed = mods: map (a: a.message) (filter (a: !a.assertion) (mk mods).config.assertions);
    in
    {
      facts = strict ([
        (check (modules ? verified) "nixosModules.verified")
        (check (c.fileSystems."/nix/store".device == "/dev/mapper/nixboot-store" && c.fileSystems."/nix/store".fsType == "erofs"
          && elem "ro" c.fileSystems."/nix/store".options)
          "fileSystems./nix/store: the verity device the init sets up, erofs, read-only")
        (check (elem "root=tmpfs" (params c) && !any (hasPrefix "nixboot.store=") (params c))
          "kernelParams: root=tmpfs, no virtiofs store")
        (check (hasSuffix ".drv" disk.drvPath && hasSuffix ".drv" install.drvPath) "the disk and the install command instantiate")
        (check (lib.elem "--closure" disk.args && lib.elem "${toplevel}" disk.args
          && lib.elem "${c.system.build.kernel}/${c.system.boot.loader.kernelFile}" disk.args
          && lib.elem "${disk.closure}/store-paths" disk.args && lib.elem "vdisk" disk.args
          && lib.elem "${c.systemd.package}/lib/systemd/boot/efi/linuxx64.efi.stub" disk.args
          && lib.elem "${c.nixboot.initrd.modulesDir}" disk.args)
          "disk: the script gets the toplevel, its closureInfo's store-paths, the kernel, nixpkgs' systemd-stub, the kernel's modules, --disk-id <hostName>")
        (check (!any (hasPrefix "nixboot.verity.") (params c)) "no root hash at evaluation: the script adds the verity parameters at build time (no IFD)")
        (check (any (hasInfix "outside the Nix store") (failed [{ nixboot.verified = { enable = true;
          signing = { keyFile = "${builtins.storeDir}/x-db.key"; certFile = "/etc/db.crt"; }; }; }]))
          "rejected: a signing key in the store")
        (check (any (hasInfix "both or neither") (failed [{ nixboot.verified = { enable = true; signing.keyFile = "/etc/db.key"; }; }]))
          "rejected: a key without its certificate")
      ] ++ lib.optionals readDrvs (
        let dt = drvText disk; it = drvText install; in
        [
          (check (hasInfix "make-verified-disk.sh" dt && hasInfix toplevel.outPath dt && hasInfix disk.closure.outPath dt
            && hasInfix "${c.system.build.kernel}" dt)
            "disk builder: runs make-verified-disk.sh on the toplevel, closure and kernel")
          (check (!hasInfix "db.key" dt && !hasInfix "--key" dt) "disk builder: no key (unsigned in the store)")
          (check (hasInfix "'--key' '/etc/secureboot/db.key' '--cert' '/etc/secureboot/db.crt'" it && hasInfix "make-verified-disk.sh" it
            && hasInfix "osslsigncode" it && hasInfix "sbsigntool" it)
            "install command: the same script with --key/--cert read at run time, osslsigncode and sbverify on its PATH")
        ]));
    };

  # ------------------------------------------------------------------ flake outputs
  flakeOutputs =
    let
      check = checker "flake";
      p = flake.packages.x86_64-linux;
      host = p.init.stdenv.hostPlatform;
      m = flake.nixosModules;
    in
    {
      facts = strict [
        (check (host.isStatic && host.isMusl && hasSuffix ".drv" p.init.drvPath) "packages.init: static, musl (${p.init.name})")
        (check (p.mkinitrd.NIXBOOT_DEFAULT_INIT == "${p.init}/bin/init" && hasSuffix ".drv" p.mkinitrd.drvPath)
          "packages.mkinitrd: NIXBOOT_DEFAULT_INIT = the init")
        (check (hasSuffix ".drv" p.nixboot-qemu.drvPath) "packages.nixboot-qemu instantiates")
        (check (all (n: lib.hasAttrByPath n m) [ [ "backends" "imageless" ] [ "backends" "libvirt" ] [ "baremetal" ] [ "generations" ] [ "verified" ]
          [ "profiles" "controller" ] [ "user" ] [ "mounts" "shares" ] [ "mounts" "storage" ] [ "default" ] ])
          "nixosModules: backends.{imageless,libvirt} baremetal generations verified profiles.controller user mounts.{shares,storage} default")
        (check (all (n: lib.hasAttrByPath n m) ([ [ "guest" ] [ "controller" "guestState" ] [ "testSuites" "default" ] ]
          ++ map (p: [ "profiles" p ]) [ "devel" "build-tools" "monitoring" ]
          ++ map (s: [ "testSuites" s ]) [ "fstests" "blktests" "ltp" "selftests" "mmtests" "pynfs" "sysbench" "gitr" ]))
          "nixosModules: guest, controller.guestState, profiles.{devel,build-tools,monitoring}, testSuites.{default,fstests,...,gitr}")
        (check (all (t: builtins.pathExists (flake.templates.${t}.path + "/flake.nix")) [ "imageless" "libvirt" ])
          "templates: imageless, libvirt")
        (let
          outputs = t:
            let out = (import (flake.templates.${t}.path + "/flake.nix")).outputs {
              self = out;
              nixpkgs = { lib = { inherit nixosSystem; }; };
              nixboot = flake;
            };
            in out;
          imageless = outputs "imageless";
          libvirt = outputs "libvirt";
        in
        check (hasSuffix ".drv" imageless.packages.x86_64-linux.default.drvPath
          && imageless.nixosConfigurations.guest.config.nixboot.backends.imageless.enable
          && libvirt.nixosConfigurations.guest.config.nixboot.backends.libvirt.firstBoot.enable
          && hasSuffix "-image" libvirt.packages.x86_64-linux.default.name)
          "template flakes evaluate with this flake as input (imageless toplevel instantiates, libvirt image)")
        (check (all (n: flake.checks.x86_64-linux ? ${n}) [ "imageless" "libvirt" "baremetal" "controller" "controller-xml" ])
          "checks: one per mode, controller-xml")
        (check (builtins.isFunction flake.overlays.default) "overlays.default")
        (let o = examples.example-imageless.options.nixboot.packages; in
        check (o.init.highestPrio == 1000 && o.mkinitrd.highestPrio == 1000
          && examples.example-imageless.config.nixboot.packages.init.drvPath == p.init.drvPath)
          "nixosModules bring this flake's packages as nixboot.packages defaults")
        (let
          sys = nixosSystem { modules = [ modules.default { nixpkgs.hostPlatform = "x86_64-linux"; system.stateVersion = "24.05"; } ]; };
          doc = sys.pkgs.nixosOptionsDoc { options = { inherit (sys.options) nixboot; }; };
          rendered = lib.mapAttrs (_: o: removeAttrs o [ "declarations" ]) doc.optionsNix;
        in
        check (builtins.stringLength (builtins.toJSON rendered) > 0 && rendered ? "nixboot.controller.guests.<name>.system")
          "option documentation of nixboot.* renders (${toString (builtins.length (builtins.attrNames rendered))} options)")
      ];
    };
  # ------------------------------------------------------------------ kdevops
  kdevops = import ./eval-kdevops.nix { inherit lib nixosSystem modules hasInfix checker strict toplevelFact; };
in
{
  inherit imageless libvirt baremetal controller assertions kdevops generations verified;
  nixosinit = nixosInit;
} // lib.optionalAttrs (flake != null) { flake = flakeOutputs; }
