//! `mkinitrd --embed-store`: the closure's store paths travel inside the initrd, so the
//! machine boots with no virtiofs share and no disk at all (the netboot / kexec case). The
//! QEMU guest here has no vhost-user-fs device and no block device; the probe, a store path
//! of the closure, must still run as PID 1 on a tmpfs root, with no virtiofs mounted.
//!
//! Guest kernels: every (tests/run.sh boots it again on 6.12).

mod common;

use common::fixture::*;
use common::{context, probe};
use std::fs;

#[test]
fn embedded_store_boots_without_any_share() {
    let test = "embedded_store_boots_without_any_share";
    let Some(f) = fixture(test) else { return };
    // A second store path the system refers to, as a real closure has (its libraries).
    let data = f
        .store
        .join(qemu_tests::artifacts::fake_store_name(test, "data"));
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("payload"), "embedded").unwrap();
    std::os::unix::fs::symlink(
        format!("/nix/store/{}", data.file_name().unwrap().to_str().unwrap()),
        f.system.join("data"),
    )
    .unwrap();
    // closureInfo's store-paths, as a Nix build would pass it.
    let list = f.tmp.path().join("store-paths");
    fs::write(
        &list,
        format!(
            "/nix/store/{}\n/nix/store/{}\n",
            f.system.file_name().unwrap().to_str().unwrap(),
            data.file_name().unwrap().to_str().unwrap()
        ),
    )
    .unwrap();
    let opts = mkinitrd::BuildOptions {
        // No modules: nothing to mount, no virtio devices to drive.
        kernel_modules: None,
        modules: Vec::new(),
        embed_store: Some(mkinitrd::EmbedStore {
            store_paths: Some(list),
            store_dir: Some(f.store.clone()),
        }),
        ..f.options("initrd")
    };
    let (initrd, report) = f.build(&opts);
    assert_eq!(report.store_paths, 2);
    assert!(
        report.kernel_cmdline.contains(&format!("init={}", f.init)),
        "{}",
        report.kernel_cmdline
    );
    let entries = mkinitrd::cpio::read_archive(&fs::read(&initrd).unwrap()).unwrap();
    let config = entries
        .iter()
        .find(|e| e.name == "etc/nixboot/initrd.json")
        .unwrap();
    let config = nixboot_protocol::InitrdConfig::parse(&config.data).unwrap();
    assert_eq!(config.embedded_store.as_deref(), Some("/nix/store"));
    assert!(
        entries.iter().any(|e| e.path() == f.init),
        "{} not packed",
        f.init
    );

    // No share at all: only what the initrd carries, and nothing on the command line
    // about it (the configuration says it all). rd.timeout bounds the wait of an init that
    // would still look for a share.
    let o = f.boot(&initrd, f.cmdline(Some("rd.timeout=10")), Shares::None);
    let ctx = context(&o);
    eprintln!(
        "{test}: {} bytes; QEMU ran {:?}; kernel start -> probe {:?}",
        report.size,
        o.elapsed,
        o.kernel_to_probe()
    );
    assert!(
        !o.console.contains("virtiofs"),
        "something mentioned virtiofs{ctx}"
    );
    // /nix/store is part of the tmpfs root (null: not a mount point) or a tmpfs of its own;
    // never virtiofs.
    assert_probe_ok(&f, &o, |t| t.is_none() || t == Some("tmpfs"));
    let p = probe(&o).unwrap();
    assert_eq!(p.modules_fstype, None, "{p}");
    eprintln!("{test}: probe {p}");
}
