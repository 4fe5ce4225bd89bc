//! The written initramfs: layout per docs/contracts-internal.md, read back by GNU cpio,
//! reproducibility.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;
use mkinitrd::cpio::{self, Entry};
use mkinitrd::{BuildOptions, Compression};
use nixboot_protocol::InitrdConfig;

const KVER: &str = "6.1.0-99-test";

fn options(tmp: &Path, compression: Compression) -> BuildOptions {
    BuildOptions {
        closure: Some(closure(tmp, "0a1b2c3d-nixos-system-test")),
        output: tmp.join("initrd.img"),
        kernel_modules: Some(fake_modules(tmp, KVER)),
        modules: Vec::new(),
        init: Some(static_init(tmp)),
        compression,
        ..BuildOptions::default()
    }
}

fn find<'a>(entries: &'a [Entry], name: &str) -> &'a Entry {
    entries
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("{name} missing from the archive"))
}

#[test]
fn layout_matches_the_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(tmp.path(), Compression::Zstd);
    let report = mkinitrd::build(&opts).unwrap();
    let bytes = fs::read(&opts.output).unwrap();
    assert_eq!(report.size, bytes.len() as u64);
    assert_eq!(&bytes[..4], &[0x28, 0xb5, 0x2f, 0xfd], "not zstd");
    let entries = cpio::read_archive(&bytes).unwrap();

    for d in [
        "dev",
        "proc",
        "sys",
        "run",
        "sysroot",
        "etc",
        "etc/nixboot",
        "lib",
        "lib/modules",
    ] {
        let e = find(&entries, d);
        assert_eq!(e.mode, cpio::S_IFDIR | 0o755, "{d}");
    }
    let console = find(&entries, "dev/console");
    assert_eq!(console.mode, cpio::S_IFCHR | 0o600);
    assert_eq!((console.rdev_major, console.rdev_minor), (5, 1));
    let init = find(&entries, "init");
    assert_eq!(init.mode, cpio::S_IFREG | 0o755);
    assert_eq!(init.data, mkinitrd::testutil::static_elf());

    let config = InitrdConfig::parse(&find(&entries, "etc/nixboot/initrd.json").data).unwrap();
    assert_eq!(config.kernel_version.as_deref(), Some(KVER));
    assert_eq!(
        config.default_init.as_deref(),
        Some("/nix/store/0a1b2c3d-nixos-system-test/init")
    );
    let names: Vec<&str> = config.modules.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, report.modules);
    // The default imageless set, dependencies first; ext4 was not asked for.
    let set: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(
        set,
        BTreeSet::from([
            "virtio_ring",
            "virtio",
            "virtio_pci_modern_dev",
            "virtio_pci_legacy_dev",
            "virtio_pci",
            "fuse",
            "virtiofs"
        ])
    );
    let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert!(pos("virtio_ring") < pos("virtio") && pos("virtio") < pos("virtio_pci"));
    assert!(pos("fuse") < pos("virtiofs") && pos("virtio") < pos("virtiofs"));
    // Every listed module is packed, uncompressed, byte-identical to its source.
    let src = opts.kernel_modules.as_ref().unwrap();
    for m in &config.modules {
        assert!(
            m.path.starts_with(&format!("/lib/modules/{KVER}/kernel/")),
            "{}",
            m.path
        );
        assert!(m.params.is_empty());
        let e = find(&entries, &m.path[1..]);
        assert_eq!(e.mode, cpio::S_IFREG | 0o644);
        let rel = m
            .path
            .strip_prefix(&format!("/lib/modules/{KVER}/"))
            .unwrap();
        assert_eq!(e.data, fs::read(src.join(rel)).unwrap(), "{}", m.path);
    }
    assert_eq!(
        report.kernel_cmdline,
        "root=tmpfs console=ttyS0,115200 init=/nix/store/0a1b2c3d-nixos-system-test/init"
    );
}

#[test]
fn header_fields_and_order_follow_the_kernel_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(tmp.path(), Compression::None);
    mkinitrd::build(&opts).unwrap();
    let bytes = fs::read(&opts.output).unwrap();
    assert_eq!(&bytes[..6], b"070701");
    assert_eq!(bytes.len() % 4, 0);
    let segments = cpio::read_segments(&bytes).unwrap();
    assert_eq!(segments.len(), 1);
    assert!(segments[0].terminated);
    let entries = &segments[0].entries;
    assert!(mkinitrd::inspect::check_rules(&segments).is_empty());
    let mut seen = BTreeSet::new();
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.ino as usize, i + 1, "inode numbers are sequential from 1");
        assert_eq!(
            (e.uid, e.gid, e.dev_major, e.dev_minor),
            (0, 0, 0, 0),
            "{}",
            e.name
        );
        assert_eq!(
            e.mtime, 0,
            "no SOURCE_DATE_EPOCH in this process? {}",
            e.name
        );
        assert_eq!(e.nlink, if e.is_dir() { 2 } else { 1 }, "{}", e.name);
        if let Some((parent, _)) = e.name.rsplit_once('/') {
            assert!(seen.contains(parent), "{} before its parent", e.name);
        }
        seen.insert(e.name.clone());
    }
    let names: Vec<&String> = entries.iter().map(|e| &e.name).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "entries are sorted");
}

#[test]
fn gnu_cpio_lists_and_extracts_the_same() {
    if !have("cpio", "--version") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(tmp.path(), Compression::None);
    mkinitrd::build(&opts).unwrap();
    let bytes = fs::read(&opts.output).unwrap();
    let ours = cpio::read_archive(&bytes).unwrap();

    let out = Command::new("cpio")
        .args(["-it", "--quiet", "-F"])
        .arg(&opts.output)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let expected: Vec<String> = ours.iter().map(|e| e.name.clone()).collect();
    assert_eq!(listed, expected);

    // Extract (without device nodes: mknod may be refused in containers) and compare.
    let dest = tmp.path().join("extract");
    fs::create_dir(&dest).unwrap();
    let out = Command::new("cpio")
        .args(["-idm", "--quiet", "--no-absolute-filenames", "-F"])
        .arg(&opts.output)
        .arg("--nonmatching")
        .arg("dev/console")
        .current_dir(&dest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for e in &ours {
        let path = dest.join(&e.name);
        if e.name == "dev/console" {
            continue;
        }
        let meta = fs::symlink_metadata(&path).unwrap_or_else(|err| panic!("{}: {err}", e.name));
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            e.mode & 0o7777,
            "{}",
            e.name
        );
        if e.file_type() == cpio::S_IFREG {
            assert_eq!(fs::read(&path).unwrap(), e.data, "{}", e.name);
            // -m restores mtimes: ours are pinned to 0.
            assert_eq!(meta.mtime(), 0, "{}", e.name);
        } else {
            assert!(meta.is_dir(), "{}", e.name);
        }
    }
    assert_eq!(
        fs::read(dest.join("init")).unwrap(),
        fs::read(opts.init.as_ref().unwrap()).unwrap()
    );
}

#[test]
fn same_inputs_give_identical_bytes_via_library() {
    let tmp = tempfile::tempdir().unwrap();
    for compression in [Compression::Zstd, Compression::None] {
        let opts = options(tmp.path(), compression);
        let a = mkinitrd::build_image(&opts, 0).unwrap().bytes;
        let b = mkinitrd::build_image(&opts, 0).unwrap().bytes;
        assert_eq!(a, b, "{compression}");
        let later = mkinitrd::build_image(&opts, 1_700_000_000).unwrap().bytes;
        assert_ne!(a, later, "mtime must be in the archive");
    }
}

#[test]
fn cli_output_is_independent_of_cwd_and_module_order() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(tmp.path(), Compression::Zstd);
    let other_cwd = tmp.path().join("elsewhere");
    fs::create_dir(&other_cwd).unwrap();
    let build = |out: &str, cwd: &Path, modules: &[&str]| {
        let mut c = mkinitrd();
        c.current_dir(cwd)
            .arg("--closure")
            .arg(opts.closure.as_ref().unwrap())
            .arg("-o")
            .arg(tmp.path().join(out))
            .arg("--kernel-modules")
            .arg(opts.kernel_modules.as_ref().unwrap())
            .arg("--init")
            .arg(opts.init.as_ref().unwrap());
        for m in modules {
            c.args(["--module", m]);
        }
        let (ok, _, err) = run(&mut c);
        assert!(ok, "{err}");
        fs::read(tmp.path().join(out)).unwrap()
    };
    let a = build("a.img", tmp.path(), &["virtiofs", "virtio_pci"]);
    let b = build(
        "b.img",
        &other_cwd,
        &["virtio-pci", "fs-virtiofs", "virtiofs"],
    );
    let c = build("c.img", &other_cwd, &[]);
    assert_eq!(a, b);
    assert_eq!(a, c, "the default set is virtio_pci + virtiofs");
    // And identical to the library's output.
    assert_eq!(a, mkinitrd::build_image(&opts, 0).unwrap().bytes);
}

#[test]
fn source_date_epoch_sets_every_mtime() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(tmp.path(), Compression::Zstd);
    let out = tmp.path().join("dated.img");
    let (ok, _, err) = run(mkinitrd()
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .arg("--closure")
        .arg(opts.closure.as_ref().unwrap())
        .arg("-o")
        .arg(&out)
        .arg("--init")
        .arg(opts.init.as_ref().unwrap()));
    assert!(ok, "{err}");
    let entries = cpio::read_archive(&fs::read(&out).unwrap()).unwrap();
    assert!(!entries.is_empty());
    assert!(entries.iter().all(|e| e.mtime == 1_700_000_000));
    // Without modules: no kernel version, no module dirs beyond /lib/modules.
    assert!(!entries.iter().any(|e| e.name.starts_with("lib/modules/")));

    for bad in ["", "soon", "-1", "+5", "4294967296", "1.5"] {
        let (ok, _, err) = run(mkinitrd()
            .env("SOURCE_DATE_EPOCH", bad)
            .arg("--closure")
            .arg(opts.closure.as_ref().unwrap())
            .arg("-o")
            .arg(tmp.path().join("never.img"))
            .arg("--init")
            .arg(opts.init.as_ref().unwrap()));
        assert!(!ok, "SOURCE_DATE_EPOCH={bad:?} accepted");
        assert!(err.contains("SOURCE_DATE_EPOCH"), "{err}");
        assert!(!tmp.path().join("never.img").exists());
    }
}

#[test]
fn synthetic_closure_with_busybox_init() {
    // The Debian busybox-static binary is a realistic static init.
    let busybox = Path::new("/bin/busybox");
    let static_busybox = fs::read(busybox)
        .ok()
        .filter(|b| mkinitrd::elf::check_static(b).is_ok());
    if static_busybox.is_none() {
        skip("/bin/busybox is missing or not the static build");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let opts = BuildOptions {
        init: Some(busybox.to_owned()),
        ..options(tmp.path(), Compression::Zstd)
    };
    mkinitrd::build(&opts).unwrap();
    let entries = cpio::read_archive(&fs::read(&opts.output).unwrap()).unwrap();
    assert_eq!(Some(&find(&entries, "init").data), static_busybox.as_ref());
}
