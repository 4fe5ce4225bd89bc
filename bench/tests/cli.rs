//! The command-line convention of `nixboot-bench` (README, "Command-line conventions"):
//! `--version`, exit 2 for usage errors, 1 for failures at run time with the path and the
//! cause said once. None of these builds or boots anything.

use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nixboot-bench"))
        .args(args)
        .output()
        .expect("running nixboot-bench")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn version_is_the_crate_version() {
    let o = bench(&["--version"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("nixboot-bench {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["--no-such-option"][..],
        &["--runs", "many"],
        &["--runs", "0"],
        &["--scale", "0,2"],
        &["--initrds", "dracut"],
        &["--initrds", "grub"],
    ] {
        let o = bench(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn missing_file_names_the_path_and_the_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("benchmark.json");
    let out = dir.path().join("out");
    let o = bench(&[
        "--render",
        missing.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(!out.exists(), "nothing written on failure");
}
