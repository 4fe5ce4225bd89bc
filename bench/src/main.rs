//! `nixboot-bench`: the side-by-side boot benchmark (README, "Benchmark").
//!
//! In one run, on one machine, with one kernel and one share, it builds an initrd with each
//! of nixboot's mkinitrd, dracut (systemd inside), initramfs-tools and a hand-written busybox
//! script, boots each N times interleaved (round-robin in a rotating order), and reports per
//! initrd the build time, the image size, the kernel's "Run /init" time, the uptime at which
//! stage 2 started and the initrd phase in between (median, min, max), with ratios against
//! nixboot's. A scale run then boots K imageless guests at once from one shared store.
//! The end-to-end experiment ([`e2e`]) times what a user waits for from the host command's
//! start: `nixboot-qemu --exec` against `vng --exec`, and Debian's real systemd to
//! multi-user.target through nixboot's initrd against dracut's; a second scale run boots
//! `--systemd-scale` guests of a real systemd at once.
//!
//! What every boot shares (the method of shared/docs/peers.md): Debian's cloud kernel, QEMU
//! (machine `pc`) with 1 GiB of RAM in a memfd backend and one vCPU, one virtiofsd
//! (`--cache=never`, read-only) sharing a tiny root whose `/sbin/init` is a busybox script
//! (bench/assets/stage2.sh) that reads /proc/uptime first, then the kernel log's
//! timestamp of "Run /init", prints both and powers off. Every initrd mounts that share as
//! its root and switches to it; the kernel command line is the same for all but the root=
//! syntax.
//!
//! Peers are installed with apt-get when absent (dracut and initramfs-tools conflict: one
//! after the other), their images are cached under `<cache>/images/` keyed by package
//! version, kernel version and recipe, with the build time measured when they were built;
//! packages this run installed are purged again at the end and removed ones reinstalled.
//!
//! Outputs: `<out>/benchmark.md` (tables), `<out>/benchmark.png` (chart),
//! `<out>/benchmark.json` (every boot); the consoles of all boots in the run directory.

mod boot;
mod chart;
mod e2e;
mod peers;
mod report;
mod scale;
mod stats;

use anyhow::{bail, Context, Result};
use clap::Parser;
use nixboot_launcher::said_once;
use peers::Kind;
use qemu_tests::artifacts;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Builds and boots nixboot's initrd and its peers side by side; writes a report.
#[derive(Parser, Debug, Clone)]
#[command(name = "nixboot-bench", version)]
pub struct Cli {
    /// Boots per initrd (interleaved rounds).
    #[arg(short = 'n', long, default_value_t = 5)]
    pub runs: usize,
    /// Which initrds to build and boot, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "nixboot,busybox,initramfs-tools,dracut"
    )]
    pub initrds: Vec<Kind>,
    /// Guest counts of the scale run (imageless guests booted at once), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub scale: Vec<usize>,
    /// Repetitions of each guest count of the scale run.
    #[arg(long, default_value_t = 3)]
    pub scale_runs: usize,
    /// Skip the scale run.
    #[arg(long)]
    pub no_scale: bool,
    /// Skip the side-by-side boots (e.g. only the scale run).
    #[arg(long)]
    pub no_boots: bool,
    /// Skip the end-to-end experiment (`nixboot-qemu --exec` vs `vng --exec`; Debian's
    /// systemd to multi-user.target through nixboot's initrd vs dracut's).
    #[arg(long)]
    pub no_e2e: bool,
    /// Which tools of the end-to-end experiment to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "nixboot-exec,vng-exec,nixboot-systemd,dracut-systemd"
    )]
    pub e2e: Vec<e2e::Contender>,
    /// Guests booted at once to multi-user.target of a real systemd (Debian's, as a
    /// NixOS-shaped imageless closure) from one store; 0 skips it.
    #[arg(long, default_value_t = 8)]
    pub systemd_scale: usize,
    /// Where the report goes [default: results/ at the repository root].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Cache of peer images, module trees and run directories
    /// [default: $NIXBOOT_CACHE/bench, else ~/.cache/nixboot/bench].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Rebuild the dracut and initramfs-tools images even when cached.
    #[arg(long)]
    pub rebuild_peers: bool,
    /// Never run apt-get: a peer whose package is missing and whose image is not cached is
    /// left out (and the report says so).
    #[arg(long)]
    pub no_install: bool,
    /// Extra kernel command-line words for every boot (the report marks the run as
    /// non-standard), e.g. "initcall_debug".
    #[arg(long, value_name = "WORDS", allow_hyphen_values = true)]
    pub append: Option<String>,
    /// Extra QEMU arguments for every boot, one per flag (e.g. --qemu-arg=-machine
    /// --qemu-arg=q35); marks the run as non-standard.
    #[arg(long = "qemu-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub qemu_args: Vec<String>,
    /// Stage 2 also prints the whole kernel log (kept in the run directory's consoles).
    #[arg(long)]
    pub dmesg: bool,
    /// Per-boot limit in seconds.
    #[arg(long, default_value_t = 240)]
    pub timeout: u64,
    /// Replace the table and chart in README.md's "Benchmark" section with this run's.
    #[arg(long)]
    pub update_readme: bool,
    /// The static init to pack into nixboot's initrd [default: built with cargo from this
    /// tree, as `cargo static` does].
    #[arg(long, value_name = "PATH")]
    pub init: Option<PathBuf>,
    /// The mkinitrd to build it with [default: built with cargo from this tree].
    #[arg(long, value_name = "PATH")]
    pub mkinitrd: Option<PathBuf>,
    /// Only re-render benchmark.md, benchmark.png (and with --update-readme the README)
    /// from a benchmark.json written by an earlier run; nothing is built or booted.
    #[arg(long, value_name = "BENCHMARK_JSON")]
    pub render: Option<PathBuf>,
    /// A note printed at the top of the report (e.g. "NOT FINAL: N=1 on a busy machine").
    #[arg(long)]
    pub note: Option<String>,
}

/// Exit status (README, "Command-line conventions"): 0 done, 1 failed at run time,
/// 2 usage error (clap's own, and the checks of [`usage_error`]).
fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(msg) = usage_error(&cli) {
        use clap::CommandFactory;
        Cli::command()
            .error(clap::error::ErrorKind::ValueValidation, msg)
            .exit();
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nixboot-bench: error: {}", said_once(&e));
            ExitCode::FAILURE
        }
    }
}

/// What clap cannot check alone: values that contradict each other or the run.
fn usage_error(cli: &Cli) -> Option<String> {
    if cli.render.is_some() {
        return None;
    }
    if cli.runs == 0 && !cli.no_boots {
        return Some("--runs must be at least 1".into());
    }
    if cli.scale.contains(&0) {
        return Some("--scale counts must be at least 1".into());
    }
    if !cli.no_boots && !cli.initrds.contains(&Kind::Nixboot) {
        return Some("--initrds must include nixboot: every ratio is against it".into());
    }
    None
}

/// Progress on stderr, with the time since the start.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::say_line(&format!($($arg)*))
    };
}

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

pub fn say_line(msg: &str) {
    let t = START.get_or_init(Instant::now).elapsed();
    eprintln!("[bench {:6.1}s] {msg}", t.as_secs_f64());
}

/// What every part of the run needs.
pub struct Ctx {
    pub cli: Cli,
    pub env: artifacts::Env,
    pub kver: String,
    pub accel: nixboot_launcher::Accel,
    pub accel_reason: String,
    /// `<cache>`: images, module trees, runs.
    pub cache: PathBuf,
    /// This run's directory: shares, fresh initrds, consoles.
    pub run_dir: PathBuf,
    pub static_init: PathBuf,
    pub mkinitrd: PathBuf,
    pub busybox: PathBuf,
    pub shares: boot::Shares,
}

fn run(cli: &Cli) -> Result<()> {
    START.get_or_init(Instant::now);
    if let Some(json) = &cli.render {
        return render_only(cli, json);
    }
    let mut kinds = Vec::new();
    for k in &cli.initrds {
        if !kinds.contains(k) {
            kinds.push(*k);
        }
    }
    let ctx = context(cli)?;
    let host_before = report::HostState::now();
    warn_if_loaded(&host_before);
    let (mut built, skipped) = build_all(&ctx, &kinds)?;
    let boots = if cli.no_boots {
        Vec::new()
    } else {
        boot::run_rounds(&ctx, &mut built)?
    };
    let e2e = if cli.no_e2e {
        e2e::Outcome::default()
    } else {
        let setup = e2e::prepare(&ctx, &built)?;
        e2e::Outcome {
            records: e2e::run_rounds(&ctx, &setup, &built)?,
            left_out: setup.left_out,
        }
    };
    let ours = built.iter().find(|b| b.kind == Kind::Nixboot);
    let scale = match (cli.no_scale, ours) {
        (true, _) => Vec::new(),
        (false, Some(ours)) => scale::run(&ctx, ours)?,
        (false, None) => bail!("no nixboot initrd for the scale run"),
    };
    let systemd_scale = match (cli.systemd_scale, ours) {
        (0, _) | (_, None) => Vec::new(),
        (k, Some(ours)) => {
            let spec = scale::systemd_spec(&ctx)?;
            vec![scale::run_group(&ctx, ours, &spec, k, 1)?]
        }
    };

    let host_after = report::HostState::now();
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| artifacts::workspace_root().join("results"));
    let rep = report::Report::assemble(
        &ctx,
        built,
        skipped,
        boots,
        report::Extra {
            scale,
            e2e,
            systemd_scale,
        },
        host_before,
        host_after,
    );
    rep.write(&out)?;
    say!("report: {}", out.join("benchmark.md").display());
    if cli.update_readme {
        let readme = artifacts::workspace_root().join("README.md");
        rep.update_readme(&readme, &out)?;
        say!("README.md's Benchmark section updated");
    }
    say!("consoles of every boot: {}", ctx.run_dir.display());
    Ok(())
}

/// Everything a run needs before the first build: prerequisites, accelerator, directories,
/// the static init and mkinitrd, the shared store.
fn context(cli: &Cli) -> Result<Ctx> {
    let env = artifacts::prerequisites().map_err(|e| {
        anyhow::anyhow!(
            "{e} (run `bash .ci/setup >/dev/null && . ~/.cache/nixboot/env` first: it installs \
             and caches them)"
        )
    })?;
    let kver = env
        .modules
        .file_name()
        .and_then(|n| n.to_str())
        .context("NIXBOOT_MODULES has no version directory name")?
        .to_string();
    let choice = nixboot_launcher::accel::choose(&env.qemu, &env.kernel);
    say!("accelerator {} ({})", choice.accel, choice.reason);

    let cache = match &cli.cache {
        Some(c) => c.clone(),
        None => default_cache(),
    };
    prune_runs(&cache.join("runs"), 10);
    let run_dir = cache.join("runs").join(report::timestamp_for_path());
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    say!("run directory {}", run_dir.display());

    let static_init = match &cli.init {
        Some(p) => p.clone(),
        None => {
            say!("building the static init (cargo, release, musl)");
            artifacts::static_binaries()
                .map_err(anyhow::Error::msg)?
                .init
                .clone()
        }
    };
    let mkinitrd = match &cli.mkinitrd {
        Some(p) => p.clone(),
        None => {
            say!("building mkinitrd (cargo, release)");
            build_mkinitrd()?
        }
    };
    let busybox = find_busybox()?;
    let shares = boot::prepare_shares(&run_dir, &busybox)?;

    Ok(Ctx {
        cli: cli.clone(),
        env,
        kver,
        accel: choice.accel,
        accel_reason: choice.reason,
        cache,
        run_dir,
        static_init,
        mkinitrd,
        busybox,
        shares,
    })
}

/// Under TCG every other process shows in the numbers: say so when the machine is busy.
fn warn_if_loaded(host: &report::HostState) {
    if let Some(load) = host
        .loadavg
        .split_whitespace()
        .next()
        .and_then(|l| l.parse::<f64>().ok())
        .filter(|l| *l > 0.5)
    {
        say!(
            "WARNING: load average {load:.2} at the start: under TCG every other process shows in \
             the numbers; measure on a quiet machine"
        );
    }
}

/// A peer that could not be built, and why.
type Skipped = (Kind, String);

/// Builds: ours and the busybox script every run (they take a moment and must reflect the
/// current code; built again at each later round of the boots, `peers::build_again`);
/// dracut and initramfs-tools once, or from the cache. Returns them in report order (ours
/// first, then the peers as asked) and the peers that failed.
fn build_all(ctx: &Ctx, kinds: &[Kind]) -> Result<(Vec<peers::Built>, Vec<Skipped>)> {
    let cli = &ctx.cli;
    let mut built = Vec::new();
    let mut skipped = Vec::new();
    let needs_ours = !cli.no_boots || !cli.no_scale || !cli.no_e2e || cli.systemd_scale > 0;
    if needs_ours {
        built.push(peers::build_nixboot(ctx)?);
    }
    if !cli.no_boots || !cli.no_e2e {
        if kinds.contains(&Kind::Busybox) && !cli.no_boots {
            built.push(peers::build_busybox(ctx)?);
        }
        let distro: Vec<Kind> = kinds
            .iter()
            .copied()
            .filter(|k| matches!(k, Kind::Dracut | Kind::InitramfsTools))
            .collect();
        let (ok, failed) = peers::build_distro_peers(ctx, &distro);
        built.extend(ok);
        skipped.extend(failed);
    }
    for b in &built {
        say!(
            "{}: {} bytes, built in {:.3} s{}",
            b.kind,
            b.size,
            b.build_secs,
            if b.cached.is_some() { " (cached)" } else { "" }
        );
    }
    built.sort_by_key(|b| {
        kinds
            .iter()
            .position(|k| *k == b.kind)
            .unwrap_or(usize::MAX)
    });
    Ok((built, skipped))
}

fn render_only(cli: &Cli, json: &Path) -> Result<()> {
    let bytes = std::fs::read(json).with_context(|| format!("reading {}", json.display()))?;
    let mut rep: report::Report = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a benchmark.json", json.display()))?;
    if cli.note.is_some() {
        rep.setup.note = cli.note.clone();
    }
    // The summaries and targets are derived: made again from the runs' records, so a report
    // rendered by a newer nixboot-bench shows what it now computes from the same measurements.
    rep.e2e_rows = report::e2e::rows(&rep.e2e);
    rep.e2e_targets = report::e2e::targets(&rep.e2e_rows);
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| artifacts::workspace_root().join("results"));
    rep.write(&out)?;
    say!("report: {}", out.join("benchmark.md").display());
    if cli.update_readme {
        rep.update_readme(&artifacts::workspace_root().join("README.md"), &out)?;
        say!("README.md's Benchmark section updated");
    }
    Ok(())
}

/// Keeps the newest `keep` run directories (their names sort by time).
fn prune_runs(runs: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(runs) else {
        return;
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let excess = dirs.len().saturating_sub(keep);
    for d in &dirs[..excess] {
        let _ = std::fs::remove_dir_all(d);
    }
}

fn default_cache() -> PathBuf {
    if let Some(c) = std::env::var_os("NIXBOOT_CACHE").filter(|c| !c.is_empty()) {
        return PathBuf::from(c).join("bench");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/nixboot/bench")
}

/// `cargo build --release -p mkinitrd`; the path comes from cargo's JSON messages.
fn build_mkinitrd() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(&cargo)
        .current_dir(artifacts::workspace_root())
        .args(["build", "--release", "-p", "mkinitrd", "--bin", "mkinitrd"])
        .arg("--message-format=json-render-diagnostics")
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo")?;
    if !out.status.success() {
        bail!("cargo build --release -p mkinitrd failed ({})", out.status);
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "mkinitrd" {
            if let Some(exe) = msg["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    bail!("cargo built no mkinitrd executable")
}

/// A static busybox (Debian's busybox-static, which .ci/setup installs).
fn find_busybox() -> Result<PathBuf> {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        let p = Path::new(p);
        if p.is_file() {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            if is_static_elf(&bytes) {
                return Ok(p.to_path_buf());
            }
        }
    }
    bail!("no static busybox: apt-get install busybox-static")
}

/// A 64-bit little-endian ELF without a PT_INTERP program header (no dynamic loader).
fn is_static_elf(b: &[u8]) -> bool {
    let u16_at = |o: usize| {
        b.get(o..o + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
    };
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .and_then(|s| s.try_into().ok())
            .map(|a: [u8; 8]| u64::from_le_bytes(a) as usize)
    };
    if !b.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum).all(|i| u32_at(phoff + i * phentsize) != Some(3))
}

/// Runs a command, its output to `log`; returns the wall time it took.
pub fn timed_command(cmd: &mut std::process::Command, log: &Path) -> Result<Duration> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = file.try_clone()?;
    let start = Instant::now();
    let status = cmd
        .stdin(std::process::Stdio::null())
        .stdout(file)
        .stderr(err)
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    let took = start.elapsed();
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(25).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "{cmd:?} failed ({status}); last lines of {}:\n{}",
            log.display(),
            tail.join("\n")
        );
    }
    Ok(took)
}
