//! The imageless set from the real Debian 6.1 cloud kernel (`NIXBOOT_MODULES`).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use common::*;
use mkinitrd::{cpio, BuildOptions, Compression};
use nixboot_protocol::InitrdConfig;

/// The musl init when `cargo static` has run, else the static busybox, else a tiny ELF.
fn init_binary(tmp: &std::path::Path) -> PathBuf {
    let musl = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/x86_64-unknown-linux-musl/release/init");
    for candidate in [musl, PathBuf::from("/bin/busybox")] {
        if fs::read(&candidate).is_ok_and(|b| mkinitrd::elf::check_static(&b).is_ok()) {
            return candidate;
        }
    }
    static_init(tmp)
}

#[test]
fn imageless_set_from_the_real_kernel() {
    let Some(modules_dir) = real_modules_dir() else {
        return;
    };
    let kver = modules_dir
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let tmp = tempfile::tempdir().unwrap();
    let opts = BuildOptions {
        closure: Some(closure(tmp.path(), "5eed-nixos-system-imageless")),
        output: tmp.path().join("initrd"),
        kernel_modules: Some(modules_dir.clone()),
        modules: Vec::new(),
        init: Some(init_binary(tmp.path())),
        compression: Compression::Zstd,
        ..BuildOptions::default()
    };
    let report = mkinitrd::build(&opts).unwrap();
    eprintln!(
        "imageless initrd with {}: {} bytes in {} ms",
        opts.init.as_ref().unwrap().display(),
        report.size,
        report.elapsed.as_millis()
    );
    assert_eq!(report.kernel_version.as_deref(), Some(kver.as_str()));
    let mut set = report.modules.clone();
    set.sort();
    assert_eq!(
        set,
        [
            "fuse",
            "virtio",
            "virtio_pci",
            "virtio_pci_legacy_dev",
            "virtio_pci_modern_dev",
            "virtio_ring",
            "virtiofs"
        ]
    );

    let entries = cpio::read_archive(&fs::read(&opts.output).unwrap()).unwrap();
    let by_name: BTreeMap<&str, &cpio::Entry> =
        entries.iter().map(|e| (e.name.as_str(), e)).collect();
    let config = InitrdConfig::parse(&by_name["etc/nixboot/initrd.json"].data).unwrap();
    // Dependencies (each module's .modinfo, read with kmod's parser's rules) come first.
    let position: BTreeMap<&str, usize> = config
        .modules
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name.as_str(), i))
        .collect();
    for (i, m) in config.modules.iter().enumerate() {
        let packed = by_name[&m.path[1..]];
        let source = modules_dir.join(
            m.path
                .strip_prefix(&format!("/lib/modules/{kver}/"))
                .unwrap(),
        );
        assert_eq!(packed.data, fs::read(&source).unwrap(), "{}", m.path);
        let info = mkinitrd::kmod::modinfo::from_bytes(&packed.data).unwrap();
        for dep in &info.depends {
            assert!(
                position[dep.as_str()] < i,
                "{dep} after its user {}",
                m.name
            );
        }
    }
    assert_eq!(&report.modules[5..], ["fuse", "virtiofs"]);
}
