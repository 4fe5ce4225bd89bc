//! Every --compress kind is written as the kernel reads it and read back by inspect; archives
//! made by other tools (GNU cpio with gzip, xz, lz4, zstd; distribution initrds) are read and
//! extracted.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use mkinitrd::cpio::{self, Entry};
use mkinitrd::Compression;

fn build(tmp: &Path, compression: Compression, out: &Path) {
    let (ok, _, err) = run(mkinitrd()
        .arg("--closure")
        .arg(closure(tmp, "7e57-nixos-system"))
        .arg("--init")
        .arg(static_init(tmp))
        .arg("--kernel-modules")
        .arg(fake_modules(tmp, "6.1.0-8-c"))
        .arg("-o")
        .arg(out)
        .args(["--compress", compression.name()]));
    assert!(ok, "{compression}: {err}");
}

#[test]
fn every_compression_holds_the_same_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let plain_path = tmp.path().join("initrd.none");
    build(tmp.path(), Compression::None, &plain_path);
    let plain = fs::read(&plain_path).unwrap();
    let reference = cpio::read_archive(&plain).unwrap();
    for c in Compression::ALL {
        let out = tmp.path().join(format!("initrd.{c}"));
        build(tmp.path(), *c, &out);
        let bytes = fs::read(&out).unwrap();
        let magic: &[u8] = match c {
            Compression::Zstd => &[0x28, 0xb5, 0x2f, 0xfd],
            Compression::Gzip => &[0x1f, 0x8b, 0x08, 0x00],
            Compression::Xz => &[0xfd, b'7', b'z', b'X', b'Z', 0, 0, 1],
            Compression::Lz4 => &[0x02, 0x21, 0x4c, 0x18],
            Compression::None => b"070701",
        };
        assert!(bytes.starts_with(magic), "{c}: {:02x?}", &bytes[..8]);
        let segs = cpio::read_segments(&bytes).unwrap();
        assert_eq!(segs.len(), 1, "{c}");
        assert_eq!(segs[0].compression, *c);
        assert_eq!(segs[0].stored_len, bytes.len(), "{c}: trailing bytes");
        assert_eq!(segs[0].entries, reference, "{c}");
        // Built twice: the same bytes.
        let again = tmp.path().join(format!("again.{c}"));
        build(tmp.path(), *c, &again);
        assert_eq!(fs::read(&again).unwrap(), bytes, "{c} is not reproducible");
        let (ok, stdout, err) = run(mkinitrd().arg("inspect").arg(&out));
        assert!(ok, "{c}: {err}");
        assert!(
            stdout.starts_with(&format!("segment 1: offset 0, {c}, {} bytes", bytes.len())),
            "{stdout}"
        );
    }
}

/// Pipes `input` through a command.
fn pipe(cmd: &mut Command, input: &[u8]) -> Vec<u8> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{cmd:?}");
    out.stdout
}

#[test]
fn the_kernels_tools_read_our_streams() {
    // What the kernel's decompressors accept, checked with the reference tools: xz with
    // its integrity check, lz4 in legacy mode, gzip, zstd.
    let tmp = tempfile::tempdir().unwrap();
    let plain_path = tmp.path().join("initrd.none");
    build(tmp.path(), Compression::None, &plain_path);
    let plain = fs::read(&plain_path).unwrap();
    for (c, tool, args) in [
        (Compression::Gzip, "gzip", &["-dc"][..]),
        (Compression::Xz, "xz", &["-dc"][..]),
        (Compression::Lz4, "lz4", &["-dc"][..]),
        (Compression::Zstd, "zstd", &["-dcq"][..]),
    ] {
        if !have(tool, "--version") {
            continue;
        }
        let out = tmp.path().join(format!("initrd.{c}"));
        build(tmp.path(), c, &out);
        let back = pipe(Command::new(tool).args(args), &fs::read(&out).unwrap());
        assert_eq!(back, plain, "{tool} disagrees");
    }
    if have("xz", "--version") {
        let out = tmp.path().join("initrd.xz");
        let listing = Command::new("xz")
            .args(["--robot", "--list"])
            .arg(&out)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&listing.stdout);
        assert!(text.contains("CRC32"), "{text}");
    }
}

/// A tree with what GNU cpio's newc output has that ours does not: `.`, hard links.
fn gnu_tree(dir: &Path) {
    fs::create_dir_all(dir.join("etc/conf.d")).unwrap();
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::write(dir.join("etc/conf.d/a"), "alpha\n").unwrap();
    fs::write(dir.join("bin/tool"), vec![7u8; 5000]).unwrap();
    fs::set_permissions(dir.join("bin/tool"), fs::Permissions::from_mode(0o751)).unwrap();
    fs::hard_link(dir.join("bin/tool"), dir.join("bin/tool-link")).unwrap();
    std::os::unix::fs::symlink("tool", dir.join("bin/sym")).unwrap();
}

fn gnu_cpio(dir: &Path) -> Vec<u8> {
    let list = Command::new("sh")
        .arg("-c")
        .arg("find . | LC_ALL=C sort")
        .current_dir(dir)
        .output()
        .unwrap()
        .stdout;
    pipe(
        Command::new("cpio")
            .args(["-o", "-H", "newc", "--quiet"])
            .current_dir(dir),
        &list,
    )
}

#[test]
fn gnu_cpio_archives_compressed_by_other_tools_are_read_and_extracted() {
    if !have("cpio", "--version") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    gnu_tree(&tree);
    let archive = gnu_cpio(&tree);
    let listed: Vec<String> = String::from_utf8(pipe(
        Command::new("cpio").args(["-it", "--quiet"]),
        &archive,
    ))
    .unwrap()
    .lines()
    .map(str::to_owned)
    .collect();
    for (name, tool, args) in [
        ("gzip", "gzip", &["-9", "-c"][..]),
        ("xz", "xz", &["--check=crc32", "-c"][..]),
        ("lz4", "lz4", &["-l", "-c"][..]),
        ("zstd", "zstd", &["-q", "-c"][..]),
        ("none", "cat", &[][..]),
    ] {
        if !have(tool, "--version") {
            continue;
        }
        let packed = pipe(Command::new(tool).args(args), &archive);
        let path = tmp.path().join(format!("gnu.{name}"));
        fs::write(&path, &packed).unwrap();
        let segs = cpio::read_segments(&packed).unwrap();
        assert_eq!(segs.len(), 1, "{name}");
        assert_eq!(segs[0].compression.name(), name);
        let names: Vec<&str> = segs[0].entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, listed, "{name}");

        let (ok, stdout, err) = run(mkinitrd().arg("inspect").arg(&path));
        assert!(ok, "{name}: {err}");
        assert!(
            stdout.lines().any(|l| l.ends_with(" bin/tool-link")),
            "{stdout}"
        );

        let dest = tmp.path().join(format!("x.{name}"));
        let (ok, _, err) = run(mkinitrd()
            .arg("inspect")
            .arg("--extract")
            .arg(&dest)
            .arg(&path));
        assert!(ok, "{name}: {err}");
        assert_eq!(fs::read(dest.join("etc/conf.d/a")).unwrap(), b"alpha\n");
        assert_eq!(fs::read(dest.join("bin/tool")).unwrap(), vec![7u8; 5000]);
        assert_eq!(
            fs::metadata(dest.join("bin/tool")).unwrap().mode() & 0o7777,
            0o751
        );
        // The hard link is a hard link again.
        assert_eq!(
            fs::metadata(dest.join("bin/tool")).unwrap().ino(),
            fs::metadata(dest.join("bin/tool-link")).unwrap().ino(),
            "{name}"
        );
        assert_eq!(
            fs::read_link(dest.join("bin/sym")).unwrap(),
            Path::new("tool")
        );
    }
}

#[test]
fn our_archive_extracts_like_gnu_cpio_does() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("initrd");
    build(tmp.path(), Compression::Xz, &out);
    let dest = tmp.path().join("ours");
    let (ok, _, err) = run(mkinitrd()
        .arg("inspect")
        .arg("--extract")
        .arg(&dest)
        .arg(&out));
    assert!(ok, "{err}");
    let entries: BTreeMap<String, Entry> = cpio::read_archive(&fs::read(&out).unwrap())
        .unwrap()
        .into_iter()
        .map(|e| (e.name.clone(), e))
        .collect();
    for e in entries.values() {
        let p = dest.join(&e.name);
        if e.file_type() == cpio::S_IFCHR {
            continue; // made only as root, and not in every container
        }
        let m = fs::symlink_metadata(&p).unwrap_or_else(|x| panic!("{}: {x}", e.name));
        assert_eq!(m.mode() & 0o7777, e.mode & 0o7777, "{}", e.name);
        assert_eq!(m.mtime(), 0, "{}", e.name);
        if e.file_type() == cpio::S_IFREG {
            assert_eq!(fs::read(&p).unwrap(), e.data, "{}", e.name);
        }
    }
}

#[test]
fn distribution_initrd_is_read() {
    // Debian's initramfs-tools (and dracut, where installed) images of the host, if any:
    // an optional peer, so its absence is not a failure even in CI.
    let Ok(dir) = fs::read_dir("/boot") else {
        eprintln!("SKIP: no /boot");
        record_skip("no /boot");
        return;
    };
    let images: Vec<_> = dir
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("initrd.img-") || n.starts_with("initramfs-"))
        })
        .collect();
    if images.is_empty() {
        eprintln!("SKIP: no /boot/initrd.img-* or /boot/initramfs-* on this host");
        record_skip("no /boot/initrd.img-* or /boot/initramfs-* on this host");
        return;
    }
    for img in images {
        let (ok, stdout, err) = run(mkinitrd().arg("inspect").arg(&img));
        assert!(ok, "{}: {err}", img.display());
        assert!(
            stdout
                .lines()
                .any(|l| l.ends_with(" init") || l.ends_with(" ./init")),
            "{}: no /init listed",
            img.display()
        );
        eprintln!(
            "{}: {} segments read",
            img.display(),
            stdout.lines().filter(|l| l.starts_with("segment ")).count()
        );
    }
}
