//! `cargo test` entry for the offline evaluation of the NixOS modules: runs the script
//! `nixos/tests/eval` (every mode; see that script) and fails when it fails.
//!
//! Wire it into a crate of the workspace as an integration test, e.g. in tests/Cargo.toml:
//!
//! ```toml
//! [[test]]
//! name = "nixos_eval"
//! path = "../nixos/tests/cargo_eval.rs"
//! ```
//!
//! and run `cargo test -p nixboot-tests --test nixos_eval -- --nocapture`.
//! Without NIXPKGS or nix the script prints a loud SKIP and succeeds, unless
//! NIXBOOT_REQUIRE_EVAL=1 (CI), which makes it fail. A skip is added to the test runner's
//! skip list (the file NIXBOOT_SKIP_LEDGER names; tests/run.sh prints it at the end), so it
//! is never counted as a silent pass. It needs no crate of the workspace.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The script's banner when it skips: `## SKIP nixos/tests/eval: <reason>`.
const SKIP_MARK: &str = "## SKIP nixos/tests/eval: ";

/// The repository root: the first ancestor of this crate that holds nixos/tests/eval.
fn repository_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|dir| dir.join("nixos/tests/eval").is_file())
        .unwrap_or_else(|| panic!("no nixos/tests/eval above {}", manifest.display()))
        .to_path_buf()
}

#[test]
fn nixos_modules_evaluate_offline() {
    let root = repository_root();
    let script = root.join("nixos/tests/eval");
    let mut child = Command::new("bash")
        .arg(&script)
        .current_dir(&root)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    // Passed through as it comes (the evaluation takes minutes), watching for the skip.
    let mut skipped = None;
    for line in BufReader::new(child.stderr.take().expect("piped stderr")).lines() {
        let Ok(line) = line else { break };
        let _ = writeln!(std::io::stderr(), "{line}");
        if let Some(reason) = line.strip_prefix(SKIP_MARK) {
            skipped = Some(reason.to_string());
        }
    }
    let status = child
        .wait()
        .unwrap_or_else(|e| panic!("waiting for {}: {e}", script.display()));
    if let (true, Some(reason)) = (status.success(), skipped) {
        record_skip("nixos_modules_evaluate_offline", &reason);
    }
    assert!(
        status.success(),
        "{} failed ({status}); its output above names the mode and the property",
        script.display()
    );
}

/// Adds `test: reason` to the runner's skip list (see qemu_tests::artifacts::record_skip,
/// the same format).
fn record_skip(test: &str, reason: &str) {
    let Some(ledger) = std::env::var_os("NIXBOOT_SKIP_LEDGER").filter(|v| !v.is_empty()) else {
        return;
    };
    let line = format!("{test}: {reason}\n");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&ledger)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        let _ = writeln!(std::io::stderr(), "cannot add the skip to {ledger:?}: {e}");
    }
}
