//! The project's init and mkinitrd, booted for real: an imageless guest (tmpfs root, the
//! store and the kernel modules over virtiofs) whose "system" is the probe.
//!
//! Guest kernels: every (tests/run.sh boots it again on 6.12).

mod common;

use common::fixture::{fixture, Fixture, Shares};
use common::{assert_booted, assert_initramfs_freed, assert_modules_loaded};
use common::{assert_special_mounts, context, FAILURE_BOUND};
use nixboot_launcher::console::Status;
use nixboot_launcher::qemu::Outcome;

/// The fixture's zstd initrd (the default users get), booted.
fn boot(f: &Fixture, shares: Shares, append: Option<&str>) -> Outcome {
    let opts = mkinitrd::BuildOptions {
        compression: mkinitrd::Compression::Zstd,
        ..f.options("initrd.zst")
    };
    let (initrd, _) = f.build(&opts);
    f.boot(&initrd, f.cmdline(append), shares)
}

#[test]
fn imageless_boot_hands_the_probe_a_clean_system() {
    let test = "imageless_boot_hands_the_probe_a_clean_system";
    let Some(f) = fixture(test) else { return };
    let o = boot(&f, Shares::All, None);

    // Clean power-off, no warnings, status=ok at exec, the probe as PID 1 with no errors.
    let p = assert_booted(&o);
    let s = o.status.as_ref().expect("no nixboot-status line");
    assert_eq!(s.get("init"), Some(f.init.as_str()), "{s}");
    assert_modules_loaded(&o);

    assert_eq!(p.argv, [f.init.as_str(), "alpha", "beta"], "{p}");
    let cmdline = p.cmdline.as_deref().expect("cmdline");
    assert!(cmdline.contains(&format!("init={}", f.init)), "{p}");
    assert_eq!(p.root_fstype.as_deref(), Some("tmpfs"), "{p}");
    assert_eq!(p.store_fstype.as_deref(), Some("virtiofs"), "{p}");
    assert_eq!(p.store_readonly, Some(true), "{p}");
    assert_eq!(p.modules_fstype.as_deref(), Some("virtiofs"), "{p}");
    assert_eq!(p.modules_readonly, Some(true), "{p}");
    assert_special_mounts(&p);
    // The init must give the initramfs's RAM back: at most the mount point it moved
    // the new root from may remain (empty).
    assert_initramfs_freed(&p);
    assert!(p.errors.is_empty(), "{p}");
}

#[test]
fn imageless_boot_without_store_fails_cleanly() {
    let test = "imageless_boot_without_store_fails_cleanly";
    let Some(f) = fixture(test) else { return };
    let o = boot(&f, Shares::ModulesOnly, Some("rd.timeout=3"));
    let ctx = context(&o);

    assert!(!o.timed_out, "timed out{ctx}");
    assert!(!o.panicked, "kernel panic{ctx}");
    let s = o.status.as_ref().expect("no nixboot-status line");
    assert_eq!(s.status(), Status::Failed, "{s}{ctx}");
    let step = s.step().unwrap_or("");
    assert!(
        step.contains("store"),
        "step {step:?} does not name the store{ctx}"
    );
    assert!(s.error().is_some_and(|e| !e.is_empty()), "{s}");
    // The failure policy powers off: QEMU must exit by itself, long before our timeout.
    assert!(o.qemu_clean_exit(), "QEMU exit {}{ctx}", o.qemu_exit);
    assert!(o.powered_off, "the guest did not power off{ctx}");
    assert!(o.elapsed < FAILURE_BOUND, "took {:?}{ctx}", o.elapsed);
    assert!(o.probe.is_none(), "the probe ran without a store?{ctx}");
    assert_modules_loaded(&o);
}
