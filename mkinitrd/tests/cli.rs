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

/// A minimal build's arguments (closure, init) writing to `out`.
fn small_build(dir: &std::path::Path, out: &std::path::Path) -> std::process::Command {
    with_init(dir, out, &static_init(dir))
}

fn with_init(
    dir: &std::path::Path,
    out: &std::path::Path,
    init: &std::path::Path,
) -> std::process::Command {
    let mut c = mkinitrd();
    c.arg("--closure")
        .arg(closure(dir, "e-system"))
        .arg("--init")
        .arg(init)
        .arg("-o")
        .arg(out);
    c
}

fn exit_code(c: &mut std::process::Command) -> (Option<i32>, String) {
    let o = c.output().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn dev_null_is_written_in_place_not_replaced() {
    use std::os::unix::fs::FileTypeExt;
    let tmp = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) =
        run(small_build(tmp.path(), std::path::Path::new("/dev/null")).arg("--print-cmdline"));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("init=/"), "{stdout}");
    let meta = fs::symlink_metadata("/dev/null").unwrap();
    assert!(meta.file_type().is_char_device(), "/dev/null was replaced");
}

#[test]
fn stdout_fifo_and_file_get_the_same_bytes() {
    use std::os::unix::fs::FileTypeExt;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("initrd");
    let (ok, _, err) = run(&mut small_build(tmp.path(), &file));
    assert!(ok, "{err}");
    let expected = fs::read(&file).unwrap();

    let o = small_build(tmp.path(), std::path::Path::new("-"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout == expected, "-o - wrote other bytes");
    assert!(String::from_utf8_lossy(&o.stderr).contains("wrote standard output"));

    let fifo = tmp.path().join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || fs::read(fifo).unwrap())
    };
    let (ok, _, err) = run(&mut small_build(tmp.path(), &fifo));
    assert!(ok, "{err}");
    assert!(
        reader.join().unwrap() == expected,
        "the FIFO got other bytes"
    );
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
}

#[test]
fn a_directory_is_refused_and_a_symlink_is_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    fs::create_dir(&dir).unwrap();
    let (code, err) = exit_code(&mut small_build(tmp.path(), &dir));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&dir.display().to_string()) && err.contains("is a directory"),
        "{err}"
    );
    assert!(listing(&dir).is_empty());

    let target = tmp.path().join("images/initrd-1");
    fs::create_dir_all(target.parent().unwrap()).unwrap();
    fs::write(&target, b"old").unwrap();
    let link = tmp.path().join("initrd");
    std::os::unix::fs::symlink("images/initrd-1", &link).unwrap();
    let (ok, _, err) = run(&mut small_build(tmp.path(), &link));
    assert!(ok, "{err}");
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let written = fs::read(&target).unwrap();
    assert_eq!(
        &written[..4],
        &[0x28, 0xb5, 0x2f, 0xfd],
        "target not replaced"
    );
    assert_eq!(listing(target.parent().unwrap()), ["initrd-1"]);
}

#[test]
fn usage_errors_exit_2_and_failures_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, err) =
        exit_code(small_build(tmp.path(), std::path::Path::new("-")).arg("--print-cmdline"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--print-cmdline"), "{err}");
    let (code, err) =
        exit_code(small_build(tmp.path(), &tmp.path().join("x")).args(["--module", "virtiofs"]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--kernel-modules"), "{err}");
    let (code, err) = exit_code(small_build(tmp.path(), &tmp.path().join("x")).arg("--bogus"));
    assert_eq!(code, Some(2), "{err}");
    let (code, err) = exit_code(&mut with_init(
        tmp.path(),
        &tmp.path().join("x"),
        "/no/such/init".as_ref(),
    ));
    assert_eq!(code, Some(1), "{err}");
    let o = mkinitrd().arg("--version").output().unwrap();
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("mkinitrd {}", env!("CARGO_PKG_VERSION"))
    );
    let help = mkinitrd().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    assert!(
        help.contains("Exit status: 0") && help.contains("written in place"),
        "{help}"
    );
}

#[test]
fn every_error_is_said_once_with_path_and_cause() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing-system");
    let (code, err) = exit_code(
        mkinitrd()
            .arg("--closure")
            .arg(&missing)
            .arg("-o")
            .arg(tmp.path().join("x")),
    );
    assert_eq!(code, Some(1));
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // A dynamic program as the init: named once, the interpreter said once.
    let Some(dynamic) = ["/bin/true", "/usr/bin/true"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        panic!("no /bin/true to use as a dynamic executable");
    };
    let (code, err) = exit_code(&mut with_init(
        tmp.path(),
        &tmp.path().join("x"),
        dynamic.as_ref(),
    ));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("not a static executable") && err.contains(dynamic),
        "{err}"
    );
    assert_eq!(err.matches("PT_INTERP").count(), 1, "{err}");
    assert!(listing(tmp.path()).iter().all(|n| n != "x"));
}
