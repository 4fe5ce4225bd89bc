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
//! NIXBOOT_REQUIRE_EVAL=1 (CI). It needs no crate of the workspace.

use std::path::{Path, PathBuf};
use std::process::Command;

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
    let status = Command::new("bash")
        .arg(&script)
        .current_dir(&root)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        status.success(),
        "{} failed ({status}); its output above names the mode and the property",
        script.display()
    );
}
