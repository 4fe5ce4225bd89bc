//! Helpers for the QEMU boot tests: the static guest binaries and the host prerequisites.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// CI sets this so that a missing prerequisite fails the tests instead of skipping them.
pub const REQUIRE_ENV: &str = "NIXBOOT_REQUIRE_QEMU";
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// The workspace root (this crate lives directly under it).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Paths of the static guest binaries.
#[derive(Debug, Clone)]
pub struct StaticBinaries {
    pub init: PathBuf,
    pub probe: PathBuf,
}

/// Builds `init` and `probe-init` for the musl target once per test process.
pub fn static_binaries() -> Result<&'static StaticBinaries, String> {
    static CELL: OnceLock<Result<StaticBinaries, String>> = OnceLock::new();
    CELL.get_or_init(|| {
        let mut found = build_static(&["init", "probe-init"])?;
        let mut take = |name: &str| {
            found
                .iter()
                .position(|(n, _)| n == name)
                .map(|i| found.remove(i).1)
                .ok_or_else(|| format!("cargo built no executable named {name}"))
        };
        Ok(StaticBinaries {
            init: take("init")?,
            probe: take("probe-init")?,
        })
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Builds only `probe-init`: for checks of the launcher that must not depend on the init.
pub fn static_probe() -> Result<&'static Path, String> {
    static CELL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    CELL.get_or_init(|| {
        build_static(&["probe-init"])?
            .into_iter()
            .find(|(n, _)| n == "probe-init")
            .map(|(_, p)| p)
            .ok_or_else(|| "cargo built no executable named probe-init".to_string())
    })
    .as_ref()
    .map(PathBuf::as_path)
    .map_err(Clone::clone)
}

/// `cargo build --release --target musl -p ...`; the executables' paths come from cargo's
/// JSON messages, so CARGO_TARGET_DIR and .cargo/config settings are honoured as cargo
/// itself sees them.
fn build_static(packages: &[&str]) -> Result<Vec<(String, PathBuf)>, String> {
    cargo_build(&["--release", "--target", MUSL_TARGET], packages)
}

/// A host program of the workspace (`nixboot-qemu` of `nixboot-launcher`), built once per
/// test process with the test's own profile: for tests that run a program of another
/// package (CARGO_BIN_EXE_ only names the test's own package's).
pub fn host_binary(package: &str, name: &str) -> Result<PathBuf, String> {
    let release = !cfg!(debug_assertions);
    let args: &[&str] = if release { &["--release"] } else { &[] };
    cargo_build(args, &[package])?
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| p)
        .ok_or_else(|| format!("cargo built no executable named {name} in {package}"))
}

/// `cargo build ARGS -p ...`; the executables' paths come from cargo's JSON messages.
fn cargo_build(args: &[&str], packages: &[&str]) -> Result<Vec<(String, PathBuf)>, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace_root())
        .arg("build")
        .args(args)
        .arg("--message-format=json-render-diagnostics");
    for p in packages {
        cmd.args(["-p", p]);
    }
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {}: {e}", Path::new(&cargo).display()))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build {} -p {} failed ({})",
            args.join(" "),
            packages.join(" -p "),
            out.status
        ));
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        if let (Some(name), Some(exe)) =
            (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            found.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    Ok(found)
}

/// What a boot test needs from the host.
#[derive(Debug, Clone)]
pub struct Env {
    pub kernel: PathBuf,
    /// One kernel's `lib/modules/<version>`.
    pub modules: PathBuf,
    pub virtiofsd: PathBuf,
    pub qemu: PathBuf,
}

impl Env {
    /// A VM of this environment's kernel, QEMU and virtiofsd booting `initrd` with
    /// `cmdline`; shares, timeout and the rest are the caller's.
    pub fn vm(&self, initrd: &Path, cmdline: String) -> nixboot_launcher::qemu::VmConfig {
        let mut cfg = nixboot_launcher::qemu::VmConfig::new(
            &self.kernel,
            Some(initrd.to_path_buf()),
            cmdline,
        );
        cfg.qemu = self.qemu.clone();
        cfg.virtiofsd = self.virtiofsd.clone();
        cfg
    }
}

/// Looks for the kernel, modules, virtiofsd (from `.ci/setup`'s variables) and QEMU.
pub fn prerequisites() -> Result<Env, String> {
    let var = |name: &str| -> Result<PathBuf, String> {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .ok_or_else(|| {
                format!("{name} is not set (bash .ci/setup >/dev/null && . ~/.cache/nixboot/env)")
            })
    };
    let kernel = var("NIXBOOT_KERNEL")?;
    if !kernel.is_file() {
        return Err(format!("NIXBOOT_KERNEL={} is not a file", kernel.display()));
    }
    let modules = var("NIXBOOT_MODULES")?;
    if !modules.join("kernel").is_dir() {
        return Err(format!(
            "NIXBOOT_MODULES={} has no kernel/ directory",
            modules.display()
        ));
    }
    let virtiofsd = var("NIXBOOT_VIRTIOFSD")?;
    if !virtiofsd.is_file() {
        return Err(format!(
            "NIXBOOT_VIRTIOFSD={} is not a file",
            virtiofsd.display()
        ));
    }
    let qemu = find_in_path("qemu-system-x86_64")
        .ok_or_else(|| "qemu-system-x86_64 is not in PATH".to_string())?;
    Ok(Env {
        kernel,
        modules,
        virtiofsd,
        qemu,
    })
}

/// For tests: the prerequisites, or `None` after a loud SKIP line on stderr (and a line in
/// the runner's skip list, see [`record_skip`]); with
/// NIXBOOT_REQUIRE_QEMU=1 a missing prerequisite panics instead.
pub fn require_prerequisites(test: &str) -> Option<Env> {
    require(test, prerequisites())
}

/// For tests: a host tool from PATH (qemu-img, ...), under the same rule as
/// [`require_prerequisites`].
pub fn require_tool(test: &str, name: &str) -> Option<PathBuf> {
    require(
        test,
        find_in_path(name)
            .ok_or_else(|| format!("{name} is not installed (.ci/setup installs it)")),
    )
}

/// For tests: a file a package installs (OVMF's firmware, systemd-stub), under the same
/// rule as [`require_prerequisites`].
pub fn require_file(test: &str, path: &Path, package: &str) -> Option<PathBuf> {
    require(
        test,
        path.is_file().then(|| path.to_path_buf()).ok_or_else(|| {
            format!(
                "{} is missing ({package}; .ci/setup installs it)",
                path.display()
            )
        }),
    )
}

fn require<T>(test: &str, found: Result<T, String>) -> Option<T> {
    match found {
        Ok(v) => Some(v),
        Err(reason) => {
            if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
                panic!("{test}: {reason} (and {REQUIRE_ENV}=1)");
            }
            skip(test, &reason);
            None
        }
    }
}

/// Where the test runner (tests/run.sh) collects what was skipped: one `test: reason`
/// line per skip, listed at the end of its output.
pub const SKIP_LEDGER_ENV: &str = "NIXBOOT_SKIP_LEDGER";

/// Says SKIP where a human sees it (libtest captures `eprintln!` of passing tests, but not
/// direct writes to the stderr handle) and adds it to the runner's skip list.
pub fn skip(test: &str, reason: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n*** SKIP: {test}: {reason} ***\n");
    record_skip(test, reason);
}

/// Appends `test: reason` to the file named by NIXBOOT_SKIP_LEDGER, when set. One write of
/// one line in append mode, so tests running at once do not mix their lines.
pub fn record_skip(test: &str, reason: &str) {
    use std::io::Write;
    let Some(ledger) = std::env::var_os(SKIP_LEDGER_ENV).filter(|v| !v.is_empty()) else {
        return;
    };
    let line = format!("{test}: {}\n", reason.replace('\n', " "));
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&ledger)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        let _ = writeln!(
            std::io::stderr(),
            "*** cannot add the skip to {}: {e} ***",
            Path::new(&ledger).display()
        );
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// A plausible store path name: 32 characters of Nix's base32 alphabet, then `-name`.
/// Derived from `seed` so a test's paths are stable from run to run.
pub fn fake_store_name(seed: &str, name: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    // FNV-1a, stretched: only needs to look like a hash, not be one.
    let mut h: u64 = 0xcbf29ce484222325;
    let mut hash = String::with_capacity(32);
    for i in 0..32u64 {
        for b in seed.bytes().chain(i.to_le_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
        hash.push(ALPHABET[(h % 32) as usize] as char);
    }
    format!("{hash}-{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_store_names_look_like_nix() {
        let n = fake_store_name("probe", "probe-system");
        let (hash, rest) = n.split_at(32);
        assert_eq!(rest, "-probe-system");
        assert!(hash
            .bytes()
            .all(|b| b"0123456789abcdfghijklmnpqrsvwxyz".contains(&b)));
        assert_eq!(n, fake_store_name("probe", "probe-system"));
        assert_ne!(n, fake_store_name("other", "probe-system"));
    }

    #[test]
    fn a_skip_is_one_line_of_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("skips");
        // The variable is read per call; this test is the only one in this binary to set it.
        std::env::set_var(SKIP_LEDGER_ENV, &ledger);
        record_skip("t1", "no qemu\n(apt-get)");
        record_skip("t2", "no kernel");
        std::env::remove_var(SKIP_LEDGER_ENV);
        let text = std::fs::read_to_string(&ledger).unwrap();
        assert_eq!(text, "t1: no qemu (apt-get)\nt2: no kernel\n");
    }

    #[test]
    fn workspace_root_has_the_workspace_manifest() {
        let root = workspace_root();
        let text = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        assert!(text.contains("[workspace]"));
    }
}
