//! Shared by the mkinitrd boot tests (compression.rs, mkinitrd_contents.rs,
//! embedded_store.rs): a store holding the probe as a system's init, initrds built by the
//! mkinitrd library, boots with at most two QEMUs at a time.
#![allow(dead_code)] // each test crate uses a different subset

use nixboot_launcher::bootspec::{self, KernelCmdline};
use nixboot_launcher::console::{self, Status};
use nixboot_launcher::qemu::{self, Outcome};
use nixboot_launcher::Share;
use qemu_tests::artifacts::{self, fake_store_name, Env, StaticBinaries};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// What Debian's 6.1 cloud kernel needs for virtiofs.
pub const MODULES: [&str; 7] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "fuse",
    "virtiofs",
];
/// Generous: TCG on a loaded 2-core machine.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// At most this many QEMUs of one test process at once, whatever --test-threads says.
const MAX_VMS: usize = 2;

static RUNNING: Mutex<usize> = Mutex::new(0);
static FREED: Condvar = Condvar::new();

/// A slot for one VM, given back when dropped.
pub struct Slot;

impl Slot {
    pub fn take() -> Slot {
        let mut n = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= MAX_VMS {
            n = FREED.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut n = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        FREED.notify_one();
    }
}

/// A store with `<hash>-probe-system/init` (the probe).
pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub store: PathBuf,
    pub system: PathBuf,
    /// The guest path of the probe.
    pub init: String,
    pub env: Env,
    pub bins: &'static StaticBinaries,
}

pub fn fixture(test: &str) -> Option<Fixture> {
    let env = artifacts::require_prerequisites(test)?;
    let bins = artifacts::static_binaries().expect("building the static init and probe");
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let system = store.join(fake_store_name(test, "probe-system"));
    std::fs::create_dir_all(&system).unwrap();
    std::fs::copy(&bins.probe, system.join("init")).unwrap();
    let init = bootspec::guest_store_path(&system.join("init"), &store).unwrap();
    Some(Fixture {
        tmp,
        store,
        system,
        init,
        env,
        bins,
    })
}

impl Fixture {
    /// Build options for the imageless set with the project's init.
    pub fn options(&self, name: &str) -> mkinitrd::BuildOptions {
        mkinitrd::BuildOptions {
            closure: Some(self.system.clone()),
            output: self.tmp.path().join(name),
            kernel_modules: Some(self.env.modules.clone()),
            modules: vec!["virtio_pci".into(), "virtiofs".into()],
            init: Some(self.bins.init.clone()),
            ..Default::default()
        }
    }

    /// Builds and checks the packed modules; returns the initrd's path and report.
    pub fn build(&self, opts: &mkinitrd::BuildOptions) -> (PathBuf, mkinitrd::BuildReport) {
        let report = mkinitrd::build(opts).expect("mkinitrd");
        if opts.kernel_modules.is_some() {
            let mut packed = report.modules.clone();
            packed.sort();
            let mut expected = MODULES.map(String::from).to_vec();
            expected.sort();
            assert_eq!(packed, expected, "{report:?}");
        }
        (opts.output.clone(), report)
    }

    /// The usual command line: the probe as init=, two arguments after `--`.
    pub fn cmdline(&self, append: Option<&str>) -> String {
        KernelCmdline {
            init: Some(self.init.clone()),
            append: append.map(str::to_string),
            init_args: vec!["alpha".into(), "beta".into()],
            ..Default::default()
        }
        .render()
    }

    /// Boots (waiting for a VM slot) with the store and modules shared, or nothing shared.
    pub fn boot(&self, initrd: &Path, cmdline: String, share: bool) -> Outcome {
        let mut cfg = self.env.vm(initrd, cmdline);
        cfg.timeout = Some(BOOT_TIMEOUT);
        cfg.quiet = true;
        if share {
            cfg.shares
                .push(Share::new("store", &self.store).unwrap().readonly());
            cfg.shares.push(
                Share::new(
                    "modules",
                    bootspec::modules_share_dir(&self.env.modules).unwrap(),
                )
                .unwrap()
                .readonly(),
            );
        }
        let _slot = Slot::take();
        qemu::run(&cfg).expect("launcher")
    }
}

/// For [`assert_probe_ok`]: the store is a virtiofs share.
pub fn virtiofs(v: &serde_json::Value) -> bool {
    v == "virtiofs"
}

pub fn context(o: &Outcome) -> String {
    format!(
        "\n--- console tail ---\n{}\n--- qemu stderr ---\n{}",
        o.console_tail(60),
        o.qemu_stderr
    )
}

/// The init reached the probe, which found a clean system on a tmpfs root whose store is
/// what `store_ok` accepts (the probe's `store_fstype`: a string, or null when /nix/store is
/// not a mount point).
pub fn assert_probe_ok(f: &Fixture, o: &Outcome, store_ok: impl Fn(&serde_json::Value) -> bool) {
    let ctx = context(o);
    assert!(!o.timed_out, "timed out{ctx}");
    assert!(!o.panicked, "kernel panic{ctx}");
    assert!(o.qemu_clean_exit(), "QEMU exit {}{ctx}", o.qemu_exit);
    assert!(o.powered_off, "the guest did not power off{ctx}");
    let s = o.status.as_ref().expect("no nixboot-status line");
    assert_eq!(s.status(), Status::Ok, "{s}{ctx}");
    assert_eq!(s.get("init"), Some(f.init.as_str()), "{s}");
    let p = o.probe.as_ref().expect("no probe result");
    assert_eq!(p["pid"], 1, "{p}");
    assert_eq!(
        p["argv"],
        serde_json::json!([f.init, "alpha", "beta"]),
        "{p}"
    );
    assert_eq!(p["root_fstype"], "tmpfs", "{p}");
    assert!(
        store_ok(&p["store_fstype"]),
        "unexpected store_fstype: {p}{ctx}"
    );
    assert_eq!(p["initramfs_checked"], true, "{p}");
    let left = p["initramfs_leftovers"].as_array().expect("leftovers");
    assert!(left.iter().all(|n| n == "sysroot"), "{p}");
    assert_eq!(p["errors"], serde_json::json!([]), "{p}");
}

/// The init said it loaded every module of the imageless set.
pub fn assert_modules_loaded(o: &Outcome) {
    let ctx = context(o);
    for m in MODULES {
        assert!(
            nixboot_protocol::console::log_lines(&o.console)
                .any(|l| l.contains("load") && console::has_word(l, m)),
            "the init did not report loading {m}{ctx}"
        );
    }
}
