//! The project's init and mkinitrd, booted for real: an imageless guest (tmpfs root, the
//! store and the kernel modules over virtiofs) whose "system" is the probe.

mod common;

use common::{assert_booted, context};
use nixboot_launcher::bootspec::{self, KernelCmdline};
use nixboot_launcher::console::{self, Status};
use nixboot_launcher::qemu::{self, Outcome};
use nixboot_launcher::Share;
use qemu_tests::artifacts::{self, fake_store_name, Env};
use std::path::PathBuf;
use std::time::Duration;

/// What Debian's 6.1 cloud kernel needs for virtiofs, in load order.
const MODULES: [&str; 7] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "fuse",
    "virtiofs",
];
/// Generous: TCG on a loaded 2-core CI machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// A store holding `<hash>-probe-system/init` (the probe) and an initrd built for it.
struct Fixture {
    _tmp: tempfile::TempDir,
    store: PathBuf,
    initrd: PathBuf,
    /// The guest path of the probe.
    init: String,
    env: Env,
}

fn fixture(test: &str) -> Option<Fixture> {
    let env = artifacts::require_prerequisites(test)?;
    let bins = artifacts::static_binaries().expect("building the static init and probe");
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let system = store.join(fake_store_name(test, "probe-system"));
    std::fs::create_dir_all(&system).unwrap();
    std::fs::copy(&bins.probe, system.join("init")).unwrap();

    let initrd = tmp.path().join("initrd.zst");
    let report = mkinitrd::build(&mkinitrd::BuildOptions {
        closure: Some(system.clone()),
        output: initrd.clone(),
        kernel_modules: Some(env.modules.clone()),
        modules: vec!["virtio_pci".into(), "virtiofs".into()],
        init: Some(bins.init.clone()),
        compression: mkinitrd::Compression::Zstd,
        ..Default::default()
    })
    .expect("mkinitrd");
    // mkinitrd resolves the dependencies itself (any valid order will do).
    let mut packed = report.modules.clone();
    packed.sort();
    let mut expected: Vec<String> = loadable(&env).into_iter().map(String::from).collect();
    expected.sort();
    assert_eq!(packed, expected, "{report:?}");

    let init = bootspec::guest_store_path(&system.join("init"), &store).unwrap();
    Some(Fixture {
        _tmp: tmp,
        store,
        initrd,
        init,
        env,
    })
}

/// [`MODULES`] less those built into the kernel (Debian 13's 6.12 builds virtio, virtio_pci,
/// fuse and virtiofs in): neither packed nor loaded.
fn loadable(env: &Env) -> Vec<&'static str> {
    let builtin = std::fs::read_to_string(env.modules.join("modules.builtin")).unwrap_or_default();
    let builtin: Vec<String> = builtin
        .lines()
        .filter_map(|l| l.rsplit('/').next()?.strip_suffix(".ko"))
        .map(|m| m.replace('-', "_"))
        .collect();
    MODULES
        .into_iter()
        .filter(|m| !builtin.iter().any(|b| b == m))
        .collect()
}

fn boot(f: &Fixture, share_store: bool, append: Option<&str>) -> Outcome {
    let cmdline = KernelCmdline {
        init: Some(f.init.clone()),
        append: append.map(str::to_string),
        init_args: vec!["alpha".into(), "beta".into()],
        ..Default::default()
    }
    .render();
    let mut cfg = f.env.vm(&f.initrd, cmdline);
    cfg.timeout = Some(BOOT_TIMEOUT);
    cfg.quiet = true;
    if share_store {
        cfg.shares
            .push(Share::new("store", &f.store).unwrap().readonly());
    }
    cfg.shares.push(
        Share::new(
            "modules",
            bootspec::modules_share_dir(&f.env.modules).unwrap(),
        )
        .unwrap()
        .readonly(),
    );
    qemu::run(&cfg).expect("launcher")
}

fn assert_module_lines(o: &Outcome, env: &Env, ctx: &str) {
    for m in loadable(env) {
        assert!(
            console::init_lines(&o.console).any(|l| l.contains("load") && console::has_word(l, m)),
            "the init did not report loading {m}{ctx}"
        );
    }
}

#[test]
fn imageless_boot_hands_the_probe_a_clean_system() {
    let test = "imageless_boot_hands_the_probe_a_clean_system";
    let Some(f) = fixture(test) else { return };
    let o = boot(&f, true, None);
    let ctx = context(&o);
    eprintln!(
        "{test}: accel {}; QEMU ran {:?}; kernel start -> probe result {:?}",
        o.accel.accel,
        o.elapsed,
        o.kernel_to_probe()
    );

    // Clean power-off, no warnings, status=ok at exec, the probe as PID 1 with no errors.
    let p = assert_booted(&o);
    let s = o.status.as_ref().expect("no nixboot-status line");
    assert_eq!(s.get("init"), Some(f.init.as_str()), "{s}");
    assert_module_lines(&o, &f.env, &ctx);

    assert_eq!(
        p["argv"],
        serde_json::json!([f.init, "alpha", "beta"]),
        "{p}"
    );
    let cmdline = p["cmdline"].as_str().expect("cmdline");
    assert!(cmdline.contains(&format!("init={}", f.init)), "{p}");
    assert_eq!(p["root_fstype"], "tmpfs", "{p}");
    assert_eq!(p["store_fstype"], "virtiofs", "{p}");
    assert_eq!(p["store_readonly"], true, "{p}");
    assert_eq!(p["modules_fstype"], "virtiofs", "{p}");
    assert_eq!(p["modules_readonly"], true, "{p}");
    assert_eq!(
        p["special_mounts"],
        serde_json::json!({"/proc": "proc", "/sys": "sysfs", "/dev": "devtmpfs", "/run": "tmpfs"}),
        "{p}"
    );
    // The init must give the initramfs's RAM back: at most the mount point it moved
    // the new root from may remain (empty).
    assert_eq!(p["initramfs_checked"], true, "{p}");
    let left = p["initramfs_leftovers"].as_array().expect("leftovers");
    assert!(left.iter().all(|n| n == "sysroot"), "{p}");
    assert_eq!(p["errors"], serde_json::json!([]), "{p}");
}

#[test]
fn imageless_boot_without_store_fails_cleanly() {
    let test = "imageless_boot_without_store_fails_cleanly";
    let Some(f) = fixture(test) else { return };
    let o = boot(&f, false, Some("rd.timeout=3"));
    let ctx = context(&o);
    eprintln!("{test}: accel {}; QEMU ran {:?}", o.accel.accel, o.elapsed);

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
    assert!(
        o.elapsed < Duration::from_secs(60),
        "took {:?}{ctx}",
        o.elapsed
    );
    assert!(o.probe.is_none(), "the probe ran without a store?{ctx}");
    assert_module_lines(&o, &f.env, &ctx);
}
