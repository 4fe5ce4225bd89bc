# Mode `kdevops` of nixos/tests/eval: guests as kdevops drives them (nixboot.guest: ssh
# keys from the controller, extra disks by serial, loop), the opt-in profiles and test
# suites (nixboot.testSuites.*), the controller's per-guest state (ssh keys, results
# share) and the bad input they reject. Helpers come from eval.nix.
{ lib, nixosSystem, modules, hasInfix, checker, strict, toplevelFact }:
let
  inherit (lib) elem all any filter;
  check = checker "kdevops";
  q = lib.escapeShellArg;
  qs = lib.escapeShellArgs;
  base = { nixpkgs.hostPlatform = "x86_64-linux"; system.stateVersion = "24.05"; };
  imageless = [ modules.default base ../templates/imageless/configuration.nix ];
  key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKdevopsKdevopsKdevopsKdevopsKdevopsKdevops kdevops@controller";

  disks = [ { serial = "kd-test"; } { serial = "kd-scratch"; } { serial = "kd-extra"; bus = "scsi"; } ];
  paths = [ "/dev/disk/by-id/virtio-kd-test" "/dev/disk/by-id/virtio-kd-scratch" "/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_kd-extra" ];

  guestModule = {
    nixboot.guest = { enable = true; inherit disks; };
    nixboot.profiles = { devel.enable = true; build-tools.enable = true; monitoring.enable = true; };
    nixboot.testSuites = {
      resultsShare = "results";
      fstests.enable = true;
      blktests = { enable = true; directory = "/src/blktests"; };
      ltp = { enable = true; directory = "/opt/ltp"; };
      selftests = { enable = true; directory = "/src/kselftest"; collections = [ "net" ]; };
      mmtests = { enable = true; directory = "/src/mmtests"; config = "config-workload-stream-single"; };
      pynfs = { enable = true; directory = "/src/pynfs"; };
      sysbench.enable = true;
      gitr = { enable = true; directory = "/src/git"; device = lib.last paths; };
    };
  };
  guestSystem = nixosSystem { modules = imageless ++ [ guestModule ]; };
  g = guestSystem.config;
  # The same guest on an external kernel: NixOS then writes no modules-load.d of its own.
  x = (nixosSystem { modules = imageless ++ [ guestModule {
    boot.kernel.enable = false;
    nixboot.kernel.externalImage = "/home/me/linux/arch/x86/boot/bzImage";
  } ]; }).config;

  unit = name: g.systemd.services."nixboot-testsuite-${name}";
  script = name: (unit name).script;
  names = map lib.getName g.environment.systemPackages;
  escDev = p: "${lib.replaceStrings [ "-" "/" ] [ "\\x2d" "-" ] (lib.removePrefix "/" p)}.device";

  controllerSystem = nixosSystem {
    modules = [ modules.default base {
      nixboot.profiles.controller.enable = true;
      nixboot.controller.guests.kd = {
        system = guestSystem;
        domainType = "qemu";
        ssh = { enable = true; authorizedKeys.root = [ key ]; };
        results.enable = true;
      };
      fileSystems."/" = { device = "/dev/vda1"; fsType = "ext4"; };
      boot.loader.grub.device = "/dev/vda";
    } ];
  };
  c = controllerSystem.config;
  kd = c.nixboot.controller.guests.kd;

  # ---- bad input
  failed = mods:
    let sys = nixosSystem { modules = imageless ++ mods; };
    in map (a: a.message) (filter (a: !a.assertion) sys.config.assertions);
  rejects = what: needle: mods: check (any (hasInfix needle) (failed mods)) "rejected: ${what}";
  oneDisk = { nixboot.guest.disks = [ { serial = "only"; } ]; };
in
{
  facts = strict ([
    # guest: disks, loop, ssh
    (check (g.nixboot.guest.diskPaths == paths) "guest disks by serial: ${lib.concatStringsSep " " paths}")
    (check (all (m: hasInfix "${m}\n" g.environment.etc."modules-load.d/nixboot-guest.conf".text) [ "loop" "null_blk" ]
      && hasInfix "loop\n" x.environment.etc."modules-load.d/nixboot-guest.conf".text
      && !(x.environment.etc ? "modules-load.d/nixos.conf"))
      "loop (and null_blk for blktests) in modules-load.d/nixboot-guest.conf, also with an external kernel where NixOS writes none")
    (check (g.services.openssh.enable && g.services.openssh.hostKeys == [{ path = "/etc/ssh/ssh_host_ed25519_key"; type = "ed25519"; }]
      && elem "/etc/ssh/nixboot_authorized_keys.d/%u" g.services.openssh.authorizedKeysFiles)
      "ssh: sshd with one ed25519 host key, authorized keys also from /etc/ssh/nixboot_authorized_keys.d/%u")
    (let
      fs = g.fileSystems."/run/nixboot/controller-ssh";
      u = g.systemd.services.nixboot-ssh-keys;
    in
    check (fs.fsType == "virtiofs" && fs.device == "nixboot-ssh" && elem "ro" fs.options
      && elem "sshd.service" u.before && elem "sshd.service" u.wantedBy
      && u.unitConfig.ConditionPathExists == "/run/nixboot/controller-ssh/ssh_host_ed25519_key"
      && hasInfix "install -m 0600 -o root -g root \"$src/ssh_host_ed25519_key\" /etc/ssh/ssh_host_ed25519_key.tmp" u.script)
      "ssh: the controller's share nixboot-ssh (ro) at /run/nixboot/controller-ssh; nixboot-ssh-keys installs its host key 0600 before sshd")
    # fstests
    (let t = g.environment.etc."xfstests/local.config".text; in
    check (all (l: hasInfix l t) [ "export FSTYP=xfs\n" "export TEST_DEV=${builtins.elemAt paths 0}\n"
      "export SCRATCH_DEV=${builtins.elemAt paths 1}\n" "export TEST_DIR=/mnt/test\n" "export SCRATCH_MNT=/mnt/scratch\n" ])
      "fstests: /etc/xfstests/local.config: FSTYP=xfs TEST_DEV=<first disk> SCRATCH_DEV=<second disk> TEST_DIR SCRATCH_MNT")
    (let s = script "fstests"; in
    check (hasInfix "export HOST_OPTIONS=/etc/xfstests/local.config" s
      && hasInfix "for f in ${q "${g.nixboot.testSuites.fstests.package}/lib/xfstests"}/*" s
      && hasInfix "./check ${qs [ "-g" "quick" ]}" s
      && hasInfix "mkfs.xfs -f  ${q (builtins.elemAt paths 0)}" s
      && g.nixboot.testSuites.fstests.package.pname == "xfstests")
      "fstests: nixboot-testsuite-fstests runs ./check -g quick from pkgs.xfstests' tree with that config, formats TEST_DEV when it is not xfs")
    (let u = unit "fstests"; in
    check (u.serviceConfig.Type == "oneshot" && u.wantedBy == [ ]
      && all (d: elem d u.requires && elem d u.after) [ (escDev (builtins.elemAt paths 0)) (escDev (builtins.elemAt paths 1)) ]
      && u.unitConfig.RequiresMountsFor == [ "/var/lib/nixboot/results" ])
      "fstests: the unit is a oneshot started on demand, requires ${escDev (builtins.elemAt paths 0)} and the scratch disk, and the results mount")
    (check (g.fileSystems."/var/lib/nixboot/results".device == "results" && g.fileSystems."/var/lib/nixboot/results".fsType == "virtiofs"
      && hasInfix "echo \"$status\" > \"$run/exit-status\"" (script "fstests")
      && hasInfix "mv -fT /var/lib/nixboot/results/fstests/latest.tmp /var/lib/nixboot/results/fstests/latest" (script "fstests"))
      "results: the host's share results on /var/lib/nixboot/results; each run writes log, exit-status and moves fstests/latest")
    (check (g.users.users.fsgqa.group == "fsgqa" && g.users.users."123456-fsgqa".uid == 123456 && g.users.groups ? fsgqa2)
      "fstests: users fsgqa, fsgqa2, 123456-fsgqa (uid 123456)")
    (check (all (n: elem n names) [ "nixboot-testsuite-fstests" "nixboot-testsuite-gitr" "xfstests" "sysbench" ])
      "commands nixboot-testsuite-<suite> and the packages xfstests, sysbench in systemPackages")
    # blktests ... gitr
    (check (hasInfix "TEST_DEVS=(${qs paths})" g.environment.etc."blktests/config".text
      && hasInfix "for f in ${q "/src/blktests"}/*" (script "blktests")
      && hasInfix "./check -c /etc/blktests/config -o \"$run/results\"" (script "blktests")
      && all (p: elem (escDev p) (unit "blktests").requires) paths)
      "blktests: TEST_DEVS = every extra disk in /etc/blktests/config; ./check -c that config from the given tree")
    (check (hasInfix "\"$tree/runltp\" -p -q -f syscalls" (script "ltp") && hasInfix "for f in ${q "/opt/ltp"}/*" (script "ltp"))
      "ltp: runltp -f syscalls from the given install")
    (check (hasInfix "./run_kselftest.sh -c ${q "net"}" (script "selftests")) "selftests: run_kselftest.sh -c net")
    (check (hasInfix "./run-mmtests.sh --no-monitor --config configs/${q "config-workload-stream-single"} ${q "nixboot"}" (script "mmtests"))
      "mmtests: run-mmtests.sh --config configs/<config>")
    (check (hasInfix "cd \"$tree/nfs4.1\" && python3 ./testserver.py --json=\"$run/pynfs-4.1.json\" --maketree --uid=0 --gid=0" (script "pynfs") && hasInfix "${q "127.0.0.1:/export/pynfs"} ${qs [ "all" ]}" (script "pynfs")
      && g.services.nfs.server.enable && hasInfix "/export/pynfs 127.0.0.1(rw" g.services.nfs.server.exports
      && elem "nfs-server.service" (unit "pynfs").after)
      "pynfs: testserver.py 4.0 and 4.1 against the guest's own NFS server and export")
    (check (hasInfix "${g.nixboot.testSuites.sysbench.package}/bin/sysbench \"$t\"" (script "sysbench")
      && hasInfix (qs [ "cpu" "memory" "threads" "mutex" ]) (script "sysbench")
      && g.nixboot.testSuites.sysbench.package.pname == "sysbench")
      "sysbench: pkgs.sysbench's cpu, memory, threads, mutex")
    (check (hasInfix "mkfs.xfs -f  ${q (lib.last paths)}" (script "gitr") && hasInfix "make -C /mnt/gitr/git/t -k" (script "gitr")
      && elem (escDev (lib.last paths)) (unit "gitr").requires)
      "gitr: git's tests on xfs on the SCSI disk (by-id), copied from the given tree")
    # profiles
    (check (all (n: elem n names) [ "fio" "bpftrace" "nvme-cli" "trace-cmd" "autoconf" "automake" "libtool" "sysstat" ])
      "profiles: devel (fio, bpftrace, nvme-cli, trace-cmd ...), build-tools (autotools ...), monitoring (sysstat)")
    (let m = g.systemd.services."nixboot-monitor-sysstat@".serviceConfig; in
    check (hasInfix "/bin/sar -o /var/lib/nixboot/results/monitoring/%i/sa -A 5" m.ExecStart && hasInfix "sadf -j" m.ExecStopPost)
      "monitoring: nixboot-monitor-sysstat@<run> records sar into the results directory, JSON on stop")
    (toplevelFact check g)
    # controller side
    (check (kd.shares.nixboot-ssh == { source = "/var/lib/nixboot/guests/kd/ssh"; readOnly = true; }
      && kd.shares.results == { source = "/var/lib/nixboot/guests/kd/results"; readOnly = false; }
      && kd.ssh.tag == g.nixboot.guest.ssh.controllerShare.tag && kd.results.tag == g.nixboot.testSuites.resultsShare)
      "controller: guest kd shares its ssh directory (ro) and results directory (rw) under the tags the guest mounts")
    # (How a share's source appears depends on who runs its virtiofsd: libvirt, <source dir>,
    # or the controller, <source socket>; the tags are the same.)
    (check (hasInfix "<target dir='nixboot-ssh'/>" kd.xml && hasInfix "<target dir='results'/>" kd.xml)
      "controller: the domain XML carries both shares (tags nixboot-ssh, results)")
    (let u = c.systemd.services.nixboot-guest-state-kd; p = u.script; in
    check (elem "nixboot-guest-kd.service" u.requiredBy && elem "nixboot-guest-kd.service" u.before
      && elem "nixboot-virtiofsd-kd-nixboot-ssh.service" u.before && hasInfix "ssh-keygen -q -t ed25519 -N \"\" -C ${q "nixboot-guest-kd"}" p && hasInfix "if [ ! -s \"$dir/ssh_host_ed25519_key\" ]" p
      && hasInfix "\"$dir/authorized_keys.d.tmp\"/${q "root"}" p && hasInfix "/var/lib/nixboot/guests/kd/known_hosts" p)
      "controller: nixboot-guest-state-kd, before kd's unit (and a virtiofsd unit of the share), makes its host key once, writes authorized_keys.d/root, known_hosts")
    (let
      s = c.systemd.services.nixboot-guest-state-kd.script;
      # A controller serving read-only shares with its own unprivileged virtiofsd has this unit.
      external = c.systemd.services ? "nixboot-virtiofsd-kd-nixboot-ssh";
      group = if external then "nixboot-virtiofsd" else "root";
    in
    check (hasInfix "chgrp ${group} \"$dir/ssh_host_ed25519_key\"" s && hasInfix "chmod 0640 \"$dir/ssh_host_ed25519_key\"" s)
      "controller: the host key is 0640, group ${group} (${if external then "the controller's virtiofsd serves the read-only share" else "libvirt's virtiofsd serves it as root"})")
    (check (hasInfix "Host kd\n  HostKeyAlias nixboot-guest-kd\n  UserKnownHostsFile /var/lib/nixboot/guests/kd/known_hosts" c.programs.ssh.extraConfig
      && c.virtualisation.libvirtd.nss.enableGuest)
      "controller: `ssh kd` checks the guest's stable key (HostKeyAlias), libvirt_guest NSS resolves kd")
    (toplevelFact check c)
    # bad input
    (rejects "fstests with one extra disk" "nixboot.testSuites.fstests needs two disks (TEST_DEV and SCRATCH_DEV) but the guest names 1"
      [ oneDisk { nixboot.testSuites.fstests.enable = true; } ])
    (rejects "fstests with no extra disk" "but the guest names 0 in nixboot.guest.disks" [{ nixboot.testSuites.fstests.enable = true; }])
    (rejects "fstests with TEST_DEV = SCRATCH_DEV" "testDev and scratchDev are the same device"
      [ oneDisk { nixboot.testSuites.fstests = { enable = true; scratchDev = "/dev/disk/by-id/virtio-only"; }; } ])
    (rejects "blktests with neither package nor directory" "nixpkgs 24.05 has no blktests package"
      [{ nixboot.testSuites.blktests.enable = true; }])
    (rejects "mmtests without a configuration" "nixboot.testSuites.mmtests: set config" [{ nixboot.testSuites.mmtests = { enable = true; directory = "/src/mmtests"; }; }])
    (rejects "gitr without a disk" "nixboot.testSuites.gitr needs a disk" [{ nixboot.testSuites.gitr = { enable = true; directory = "/src/git"; }; }])
    (rejects "two disks with one serial" "two disks share a serial" [{ nixboot.guest.disks = [ { serial = "a"; } { serial = "a"; bus = "scsi"; } ]; }])
    (rejects "a virtio serial over 20 characters" "longer than 20 characters" [{ nixboot.guest.disks = [ { serial = "abcdefghijklmnopqrstu"; } ]; }])
    (check (failed [ guestModule ] == [ ]) "the full guest (every suite, profile, disks, ssh) passes every assertion")
  ]);
  xml = { kd = builtins.unsafeDiscardStringContext kd.xml; };
}
