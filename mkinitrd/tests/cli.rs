//! The command line: building without a subcommand word, --print-cmdline, inspect.

mod common;

use std::fs;

use common::*;
use mkinitrd::compress::{self, Compression};
use mkinitrd::cpio::ArchiveBuilder;

#[test]
fn build_prints_summary_and_cmdline() {
    let tmp = tempfile::tempdir().unwrap();
    let sys = closure(tmp.path(), "b00t-nixos-system");
    fs::write(
        sys.join("boot.json"),
        r#"{"org.nixos.bootspec.v1": {"init": "/nix/store/b00t-nixos-system/init",
            "kernelParams": ["loglevel=4", "nixboot.timeout=5"], "toplevel": "/nix/store/b00t-nixos-system",
            "kernel": "/nix/store/k/bzImage", "label": "x", "system": "x86_64-linux"}}"#,
    )
    .unwrap();
    let out = tmp.path().join("initrd");
    let (ok, stdout, stderr) = run(mkinitrd()
        .arg("--closure")
        .arg(&sys)
        .arg("-o")
        .arg(&out)
        .arg("--init")
        .arg(static_init(tmp.path()))
        .arg("--kernel-modules")
        .arg(fake_modules(tmp.path(), "6.1.0-1-t"))
        .arg("--print-cmdline"));
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout,
        "root=tmpfs console=ttyS0,115200 init=/nix/store/b00t-nixos-system/init loglevel=4 nixboot.timeout=5\n"
    );
    let size = fs::metadata(&out).unwrap().len();
    let summary = stderr.lines().last().unwrap_or_default();
    assert!(
        summary.contains(&out.display().to_string())
            && summary.contains(&format!("{size} bytes"))
            && summary.contains("7 modules")
            && summary.ends_with(" ms)"),
        "{stderr}"
    );
}

#[test]
fn print_cmdline_alone_builds_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let sys = closure(tmp.path(), "c0ffee-nixos-system");
    let (ok, stdout, stderr) = run(mkinitrd().arg("--closure").arg(&sys).arg("--print-cmdline"));
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout,
        "root=tmpfs console=ttyS0,115200 init=/nix/store/c0ffee-nixos-system/init\n"
    );
    assert_eq!(listing(tmp.path()), ["c0ffee-nixos-system"]);
}

#[test]
fn inspect_lists_every_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("initrd");
    let (ok, _, stderr) = run(mkinitrd()
        .arg("--closure")
        .arg(closure(tmp.path(), "d-system"))
        .arg("-o")
        .arg(&out)
        .arg("--init")
        .arg(static_init(tmp.path())));
    assert!(ok, "{stderr}");
    // Prepend a plain segment (as early microcode would be), NUL padding in between.
    let mut first = ArchiveBuilder::new();
    first
        .file(
            "kernel/x86/microcode/GenuineIntel.bin",
            0o644,
            vec![0xab; 10],
        )
        .unwrap();
    let mut buf = first.write(0);
    buf.extend_from_slice(&[0; 8]);
    buf.extend_from_slice(&fs::read(&out).unwrap());
    let combined = tmp.path().join("combined");
    fs::write(&combined, &buf).unwrap();

    let (ok, stdout, stderr) = run(mkinitrd().arg("inspect").arg(&combined));
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("segment 1: offset 0, none"),
        "{stdout}"
    );
    let seg2 = lines
        .iter()
        .find(|l| l.starts_with("segment 2:"))
        .expect(&stdout);
    assert!(seg2.contains("zstd"), "{seg2}");
    assert!(
        lines.iter().any(|l| l.starts_with("crw-------")
            && l.contains(" 5,1 ")
            && l.ends_with(" dev/console")),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with(" init")),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with(" kernel/x86/microcode/GenuineIntel.bin")),
        "{stdout}"
    );
}

#[test]
fn inspect_fails_on_rule_violations_and_damage() {
    let tmp = tempfile::tempdir().unwrap();
    // Hand-written archive with a child before its parent: the kernel would drop it.
    let mut good = ArchiveBuilder::new();
    good.file("a/b", 0o644, b"x".to_vec()).unwrap();
    let bytes = good.write(0);
    // Swap the two entries: "a" (dir) then "a/b" (file); find the second header.
    let second = bytes
        .windows(6)
        .enumerate()
        .skip(1)
        .find(|(_, w)| *w == b"070701")
        .map(|(i, _)| i)
        .unwrap();
    let third = bytes
        .windows(6)
        .enumerate()
        .skip(second + 1)
        .find(|(_, w)| *w == b"070701")
        .map(|(i, _)| i)
        .unwrap();
    let mut swapped = bytes[second..third].to_vec();
    swapped.extend_from_slice(&bytes[..second]);
    swapped.extend_from_slice(&bytes[third..]);
    let bad = tmp.path().join("bad");
    fs::write(&bad, &swapped).unwrap();
    let (ok, stdout, stderr) = run(mkinitrd().arg("inspect").arg(&bad));
    assert!(!ok);
    assert!(stdout.contains("a/b"), "{stdout}");
    assert!(
        stderr.contains("violation") && stderr.contains("a/b comes before its directory /a"),
        "{stderr}"
    );

    // Missing trailer in a compressed segment.
    let unterminated = compress::compress(Compression::Zstd, &bytes[..third]).unwrap();
    let path = tmp.path().join("unterminated");
    fs::write(&path, unterminated).unwrap();
    let (ok, _, stderr) = run(mkinitrd().arg("inspect").arg(&path));
    assert!(!ok);
    assert!(stderr.contains("TRAILER!!!"), "{stderr}");

    // Garbage.
    let junk = tmp.path().join("junk");
    fs::write(&junk, b"this is not an initramfs").unwrap();
    let (ok, _, stderr) = run(mkinitrd().arg("inspect").arg(&junk));
    assert!(!ok);
    assert!(
        stderr.contains("not a valid initramfs") && stderr.contains("magic"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(mkinitrd().arg("inspect").arg(tmp.path().join("absent")));
    assert!(!ok);
    assert!(stderr.contains("absent"), "{stderr}");
}
