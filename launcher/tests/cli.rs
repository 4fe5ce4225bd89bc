//! The command-line convention of `nixboot-qemu` (README, "Exit status"): `--version`,
//! exit 2 for usage errors, 1 for failures at run time, each error said once with the path
//! and the cause. None of these boots a VM.

use std::path::Path;
use std::process::{Command, Output};

fn nixboot_qemu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nixboot-qemu"))
        .args(args)
        .env_remove("NIXBOOT_VIRTIOFSD")
        .output()
        .expect("running nixboot-qemu")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A closure directory with an `init`, inside a store directory.
fn closure(dir: &Path) -> std::path::PathBuf {
    let c = dir.join("store/0000000000000000000000000000000a-system");
    std::fs::create_dir_all(&c).unwrap();
    std::fs::write(c.join("init"), "#!/bin/sh\n").unwrap();
    c
}

#[test]
fn version_is_the_crate_version() {
    let o = nixboot_qemu(&["--version"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("nixboot-qemu {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_describes_every_option() {
    let o = nixboot_qemu(&["--help"]);
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    for line in help.lines().filter(|l| l.trim_start().starts_with("--")) {
        // clap puts an option's description on its line, after the value name.
        let words: Vec<&str> = line.split_whitespace().collect();
        let described = words.len() > 2 || (words.len() == 2 && !words[1].starts_with('<'));
        assert!(
            described,
            "option without a description in --help: {line:?}"
        );
    }
}

#[test]
fn unknown_option_is_a_usage_error() {
    let o = nixboot_qemu(&["--no-such-option"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn bad_value_is_a_usage_error() {
    for args in [
        &["--accel", "xen"][..],
        &["--timeout", "soon"],
        &["--cpus", "0"],
    ] {
        let o = nixboot_qemu(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn bad_disks_are_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("scratch.img");
    std::fs::write(&img, [0u8; 512]).unwrap();
    let img = img.to_str().unwrap();
    let twice = [
        "--disk",
        img,
        "--disk",
        &format!("{img},serial=scratch"),
        "--kernel",
        "/k",
    ];
    for (args, code, says) in [
        (&["--disk", "x,sector=1024"][..], 2, "512 or 4096"),
        (&twice[..], 2, "two disks with serial scratch"),
        (
            &["--disk", "/no/such.img"],
            1,
            "--disk /no/such.img: cannot read it",
        ),
    ] {
        let o = nixboot_qemu(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn nothing_to_boot_is_a_usage_error() {
    let o = nixboot_qemu(&["--kernel", "/k", "--initrd", "/i"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no init to boot"), "{}", stderr(&o));
}

#[test]
fn missing_kernel_names_the_path_and_the_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = closure(dir.path());
    let missing = dir.path().join("no-such-vmlinuz");
    let o = nixboot_qemu(&[
        "--closure",
        c.to_str().unwrap(),
        "--store",
        dir.path().join("store").to_str().unwrap(),
        "--kernel",
        missing.to_str().unwrap(),
        "--initrd",
        "/dev/null",
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("kernel {}", missing.display())),
        "{err}"
    );
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(
        err.contains(".ci/setup"),
        "says where to get a kernel: {err}"
    );
}

#[test]
fn missing_closure_names_the_path() {
    let o = nixboot_qemu(&[
        "--closure",
        "/no/such/closure",
        "--kernel",
        "/k",
        "--initrd",
        "/i",
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("closure /no/such/closure: No such file or directory"),
        "{err}"
    );
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}
