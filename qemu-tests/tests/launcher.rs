//! Checks the launcher and the probe on their own, without the project's init and
//! mkinitrd: a hand-made initrd whose /init is a busybox script that loads the virtio
//! modules, mounts the store over virtiofs and `switch_root`s into the probe.
//!
//! If this passes and the imageless tests fail, the fault is in init or mkinitrd.
//!
//! Guest kernels: 6.1 only (the launcher and the probe, host side).

mod common;

use common::{assert_special_mounts, context, loadable_modules, modules_share};
use nixboot_launcher::bootspec::{self, KernelCmdline};
use nixboot_launcher::console::{self, Status};
use nixboot_launcher::Share;
use nixboot_protocol::console::log_lines;
use nixboot_protocol::probe::ProbeReport;
use qemu_tests::artifacts::{self, fake_store_name};
use std::path::Path;

/// Speaks the init's console protocol, so the launcher's parsing is exercised too.
const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /bin /sbin
/bin/busybox --install -s /bin
export PATH=/bin
fail() { echo "nixboot-status: status=failed step=$1 error=\"$2\" action=poweroff"; poweroff -f; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in MODULES; do
  insmod /mods/$m.ko || fail modules "insmod $m"
  echo "nixboot: [  0.000000] modules: loaded $m"
done
for w in $(cat /proc/cmdline); do case "$w" in init=*) INIT="${w#init=}";; esac; done
mount -t tmpfs -o mode=0755 tmpfs /sysroot
mkdir -p /sysroot/nix/store /sysroot/lib/modules /sysroot/proc /sysroot/sys /sysroot/dev /sysroot/run
i=0
until mount -t virtiofs -o ro store /sysroot/nix/store 2>/dev/null; do
  i=$((i+1)); [ $i -gt 100 ] && fail mount-store "virtiofs tag \\\"store\\\" did not appear"
  usleep 100000
done
mount -t virtiofs -o ro modules /sysroot/lib/modules || fail mount-modules "no modules share"
mount -t tmpfs -o mode=0755 tmpfs /sysroot/run
for d in proc sys dev; do mount --move /$d /sysroot/$d; done
echo "nixboot-status: status=ok step=exec init=$INIT initrd_ms=0"
SWITCH
"#;

/// busybox's switch_root: deletes the initramfs contents, then moves and chroots.
const SWITCH_DELETING: &str = r#"exec switch_root /sysroot "$INIT" "$@""#;
/// The same without deleting anything, so the probe has leftovers to find.
const SWITCH_KEEPING: &str = r#"cd /sysroot && mount --move . / && exec chroot . "$INIT" "$@""#;

/// A minimal newc writer: enough for a handful of files, dirs and a device node.
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn new() -> Self {
        Cpio {
            out: Vec::new(),
            ino: 1,
        }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.ino += 1;
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() & 3 != 0 {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

fn busybox_initrd(modules_dir: &Path, switch: &str) -> Vec<u8> {
    let mut c = Cpio::new();
    for d in ["bin", "dev", "proc", "sys", "sysroot", "mods"] {
        c.entry(d, 0o040755, (0, 0), &[]);
    }
    c.entry("dev/console", 0o020600, (5, 1), &[]);
    let busybox = std::fs::read("/bin/busybox").expect("read /bin/busybox");
    c.entry("bin/busybox", 0o100755, (0, 0), &busybox);
    let script = INIT_SCRIPT
        .replace("SWITCH", switch)
        .replace("MODULES", &loadable_modules().join(" "));
    c.entry("init", 0o100755, (0, 0), script.as_bytes());
    for m in loadable_modules() {
        let path = find_module(modules_dir, m).unwrap_or_else(|| panic!("module {m} not found"));
        let data = std::fs::read(&path).unwrap();
        c.entry(&format!("mods/{m}.ko"), 0o100644, (0, 0), &data);
    }
    c.finish()
}

fn find_module(dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(found) = find_module(&p, name) {
                return Some(found);
            }
        } else if p.file_name().and_then(|n| n.to_str()) == Some(&format!("{name}.ko")) {
            return Some(p);
        }
    }
    None
}

/// Boots the busybox initrd into the probe and checks everything but the leftovers;
/// returns the probe's report.
fn boot_busybox(test: &str, switch: &str) -> Option<ProbeReport> {
    let env = artifacts::require_prerequisites(test)?;
    if !Path::new("/bin/busybox").is_file() {
        // Part of .ci/setup (busybox-static), so CI always has it.
        assert!(
            std::env::var(artifacts::REQUIRE_ENV).is_err(),
            "/bin/busybox is missing"
        );
        artifacts::skip(test, "no /bin/busybox");
        return None;
    }
    let probe = artifacts::static_probe().expect("building the static probe");

    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let system = store.join(fake_store_name(test, "probe-system"));
    std::fs::create_dir_all(&system).unwrap();
    std::fs::copy(probe, system.join("init")).unwrap();
    let initrd = tmp.path().join("initrd.cpio");
    std::fs::write(&initrd, busybox_initrd(&env.modules, switch)).unwrap();

    let init = bootspec::guest_store_path(&system.join("init"), &store).unwrap();
    let cmdline = KernelCmdline {
        init: Some(init.clone()),
        init_args: vec!["alpha".into(), "beta".into()],
        ..Default::default()
    }
    .render();
    let mut cfg = env.vm(&initrd, cmdline);
    cfg.shares = vec![
        Share::new("store", &store).unwrap().readonly(),
        modules_share(&env),
    ];
    let o = common::run(test, cfg);
    let ctx = context(&o);

    assert!(!o.timed_out, "timed out{ctx}");
    assert!(!o.panicked, "kernel panic{ctx}");
    assert!(o.qemu_clean_exit(), "QEMU exit {}{ctx}", o.qemu_exit);
    assert!(o.powered_off, "the guest did not power off{ctx}");
    assert!(o.warnings.is_empty(), "{:?}{ctx}", o.warnings);
    let s = o.status.as_ref().expect("status line");
    assert_eq!(s.status(), Status::Ok, "{s}{ctx}");
    assert_eq!(s.get("init"), Some(init.as_str()));
    for m in loadable_modules() {
        assert!(
            log_lines(&o.console).any(|l| console::has_word(l, m)),
            "no line about module {m}{ctx}"
        );
    }

    let p = common::probe(&o).expect("probe result");
    assert_eq!(p.pid, Some(1), "{p}");
    assert_eq!(p.argv, [init.as_str(), "alpha", "beta"], "{p}");
    assert!(p
        .cmdline
        .as_deref()
        .unwrap()
        .contains(&format!("init={init}")));
    assert_eq!(p.root_fstype.as_deref(), Some("tmpfs"), "{p}");
    assert_eq!(p.store_fstype.as_deref(), Some("virtiofs"), "{p}");
    assert_eq!(p.store_readonly, Some(true), "{p}");
    assert_eq!(p.modules_fstype.as_deref(), Some("virtiofs"), "{p}");
    assert_eq!(p.modules_readonly, Some(true), "{p}");
    assert_special_mounts(&p);
    assert!(p.initramfs_checked, "{p}");
    assert!(p.errors.is_empty(), "{p}");
    Some(p)
}

fn leftovers(p: &ProbeReport) -> Vec<&str> {
    p.initramfs_leftovers
        .as_ref()
        .unwrap()
        .iter()
        .map(String::as_str)
        .collect()
}

#[test]
fn busybox_switch_root_boots_the_probe() {
    let Some(p) = boot_busybox("busybox_switch_root_boots_the_probe", SWITCH_DELETING) else {
        return;
    };
    // switch_root deleted every file; what remains are directories it left empty.
    let left = leftovers(&p);
    assert!(left.contains(&"sysroot"), "{p}");
    assert!(left.iter().all(|n| !n.contains('/')), "{p}");
    assert!(!left.contains(&"init"), "{p}");
}

#[test]
fn probe_sees_an_initramfs_left_behind() {
    let Some(p) = boot_busybox("probe_sees_an_initramfs_left_behind", SWITCH_KEEPING) else {
        return;
    };
    let left = leftovers(&p);
    // The listing is breadth first and bounded (busybox's applet links fill it).
    for f in ["init", "bin", "bin/busybox", "mods", "sysroot"] {
        assert!(left.contains(&f), "{f} not reported: {p}");
    }
}
