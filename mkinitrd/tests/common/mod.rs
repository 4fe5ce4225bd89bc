//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test crate uses a different subset

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A closure directory named like a store path, with an executable `init` script.
pub fn closure(parent: &Path, name: &str) -> PathBuf {
    let dir = parent.join(name);
    fs::create_dir_all(&dir).unwrap();
    let init = dir.join("init");
    fs::write(
        &init,
        "#!/bin/sh\nexec /run/current-system/systemd/lib/systemd/systemd\n",
    )
    .unwrap();
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A tiny static executable written to `parent/static-init`.
pub fn static_init(parent: &Path) -> PathBuf {
    let path = parent.join("static-init");
    fs::write(&path, mkinitrd::testutil::static_elf()).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A fake `lib/modules/<kver>` tree with the imageless set and their real dependencies.
pub fn fake_modules(parent: &Path, kver: &str) -> PathBuf {
    let root = parent.join("lib/modules").join(kver);
    let vermagic = format!("vermagic={kver} SMP preempt mod_unload modversions ");
    let modules: &[(&str, &[&str])] = &[
        ("kernel/drivers/virtio/virtio_ring.ko", &["depends="]),
        ("kernel/drivers/virtio/virtio.ko", &["depends=virtio_ring"]),
        (
            "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
            &["depends="],
        ),
        (
            "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
            &["depends="],
        ),
        (
            "kernel/drivers/virtio/virtio_pci.ko",
            &["depends=virtio_ring,virtio_pci_modern_dev,virtio_pci_legacy_dev,virtio"],
        ),
        ("kernel/fs/fuse/fuse.ko", &["depends=", "alias=fs-fuse"]),
        (
            "kernel/fs/fuse/virtiofs.ko",
            &["depends=fuse,virtio,virtio_ring", "alias=fs-virtiofs"],
        ),
        ("kernel/fs/ext4/ext4.ko", &["depends=", "alias=fs-ext4"]),
    ];
    for (rel, fields) in modules {
        let mut all = fields.to_vec();
        all.push(&vermagic);
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, mkinitrd::testutil::fake_module(&all)).unwrap();
    }
    root
}

/// The real modules directory from `NIXBOOT_MODULES`, or None after a loud SKIP
/// (a panic when `NIXBOOT_REQUIRE_QEMU=1`).
pub fn real_modules_dir() -> Option<PathBuf> {
    match std::env::var_os("NIXBOOT_MODULES").map(PathBuf::from) {
        Some(d) if d.is_dir() => Some(d),
        _ => {
            skip("NIXBOOT_MODULES is not set to a kernel modules directory (run `.ci/setup`)");
            None
        }
    }
}

/// Reports a missing prerequisite: SKIP on stderr, or a panic in CI.
pub fn skip(reason: &str) {
    if std::env::var("NIXBOOT_REQUIRE_QEMU").as_deref() == Ok("1") {
        panic!("required prerequisite missing: {reason}");
    }
    eprintln!("SKIP: {reason}");
    record_skip(reason);
}

/// Adds `test: reason` to the test runner's skip list (NIXBOOT_SKIP_LEDGER, printed at the
/// end by tests/run.sh; the format of qemu_tests::artifacts::record_skip). libtest names
/// each test's thread after the test.
pub fn record_skip(reason: &str) {
    use std::io::Write;
    let Some(ledger) = std::env::var_os("NIXBOOT_SKIP_LEDGER").filter(|v| !v.is_empty()) else {
        return;
    };
    let test = std::thread::current()
        .name()
        .unwrap_or("mkinitrd test")
        .to_string();
    let line = format!("{test}: {reason}\n");
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(ledger)
        .and_then(|mut f| f.write_all(line.as_bytes()));
}

/// Whether a host tool runs at all; SKIPs when not.
pub fn have(tool: &str, arg: &str) -> bool {
    let ok = Command::new(tool)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip(&format!("{tool} is not installed"));
    }
    ok
}

/// The mkinitrd binary, without the environment variables it reads.
pub fn mkinitrd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mkinitrd"));
    c.env_remove("SOURCE_DATE_EPOCH")
        .env_remove("NIXBOOT_CLOSURE_INFO");
    c
}

/// Runs a command and returns (success, stdout, stderr).
pub fn run(c: &mut Command) -> (bool, String, String) {
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every file name in a directory, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
