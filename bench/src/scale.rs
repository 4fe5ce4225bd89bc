//! The scale runs: K imageless guests (tmpfs root; the store and the kernel modules over
//! virtiofs, one virtiofsd per share and guest, all serving the same host directories)
//! started at once with nixboot's initrd. Measures the wall time until every guest arrived
//! (its stage 2 reported; or, with a real systemd, it reached multi-user.target), and each
//! guest's host memory (QEMU plus its virtiofsd) from /proc/<pid>/smaps_rollup, sampled
//! when that guest arrived (the guest then waits or goes on booting, so the sample sees a
//! live guest; QEMU is killed once all are sampled).

use crate::boot::{CPUS, MACHINE, MEMORY_MB};
use crate::peers::Built;
use crate::{say, Ctx};
use anyhow::{Context, Result};
use nixboot_launcher::qemu::{self, VmConfig};
use nixboot_launcher::virtiofsd::Virtiofsd;
use nixboot_launcher::Share;
use nixboot_protocol::probe::{self, BenchReport, PROBE_MARKER};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Memory of one process (kB, from smaps_rollup).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Mem {
    pub rss_kb: u64,
    pub pss_kb: u64,
    /// The part of PSS that is shared memory: the guest's RAM (a memfd QEMU and virtiofsd
    /// both map).
    pub pss_shmem_kb: u64,
}

impl std::ops::Add for Mem {
    type Output = Mem;
    fn add(self, o: Mem) -> Mem {
        Mem {
            rss_kb: self.rss_kb + o.rss_kb,
            pss_kb: self.pss_kb + o.pss_kb,
            pss_shmem_kb: self.pss_shmem_kb + o.pss_shmem_kb,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Guest {
    pub ok: bool,
    pub error: Option<String>,
    /// From the start of the whole group to this guest's stage-2 report (host clock).
    pub host_to_stage2: Option<f64>,
    /// The kernel log's timestamp of stage 2's first line.
    pub stage2: Option<f64>,
    pub run_init: Option<f64>,
    pub qemu: Mem,
    /// Both virtiofsd together.
    pub virtiofsd: Mem,
    /// Host processes serving its shares (every process of each virtiofsd it started).
    #[serde(default)]
    pub virtiofsd_procs: usize,
}

/// One group of K guests started at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Group {
    pub k: usize,
    pub rep: usize,
    /// From the start of the first launch until the last guest's stage 2 reported (None if
    /// one never did).
    pub wall_all: Option<f64>,
    pub guests: Vec<Guest>,
}

/// What the guests of one scale run boot, and which console line says a guest arrived.
pub struct Spec {
    /// Directory (under the run directory) for the consoles.
    pub dir: &'static str,
    /// What arriving means, for progress lines ("stage 2", "multi-user.target").
    pub what: &'static str,
    pub cmdline: String,
    pub shares: Vec<Share>,
    pub arrived: fn(&str) -> bool,
}

/// The tiny stage 2 of the side-by-side boots as the guests' system: arrived when its
/// report is on the console.
pub fn probe_spec(ctx: &Ctx) -> Result<Spec> {
    let modules_dir = nixboot_launcher::bootspec::modules_share_dir(&ctx.env.modules)?;
    Ok(Spec {
        dir: "scale",
        what: "stage 2",
        cmdline: format!(
            "{} quiet root=tmpfs init={} bench.hold{}",
            nixboot_launcher::bootspec::BASE_PARAMS.join(" "),
            ctx.shares.system_init,
            append(ctx)
        ),
        shares: vec![
            Share::new("store", &ctx.shares.store)?.readonly(),
            Share::new("modules", &modules_dir)?.readonly(),
        ],
        arrived: |line| line.contains(PROBE_MARKER),
    })
}

/// Real systemd (Debian's 252 as a NixOS-shaped closure, qemu_tests::nixos_closure, the
/// scripted flavour: nixpkgs' stage-2-init.sh in front) as every guest's system, its store
/// shared as the launcher shares a store (immutable); arrived at `Reached target ...
/// Multi-User System` on the console, the detector of the end-to-end boots.
pub fn systemd_spec(ctx: &Ctx) -> Result<Spec> {
    use qemu_tests::nixos_closure::{self, Flavour, RealParts};
    let parts = RealParts::from_env().map_err(anyhow::Error::msg)?;
    let cache_root = ctx.cache.parent().unwrap_or(&ctx.cache);
    say!("building (or finding) the NixOS-shaped store of Debian's systemd");
    let store = nixos_closure::build(&parts, cache_root).map_err(anyhow::Error::msg)?;
    let modules_dir = nixboot_launcher::bootspec::modules_share_dir(&ctx.env.modules)?;
    let cmdline = nixboot_launcher::bootspec::KernelCmdline {
        init: Some(store.init(Flavour::Scripted)),
        kernel_params: vec![
            "quiet".into(),
            "systemd.show_status=1".into(),
            "systemd.unit=multi-user.target".into(),
        ],
        append: ctx.cli.append.clone(),
        ..Default::default()
    }
    .render();
    Ok(Spec {
        dir: "scale-systemd",
        what: "multi-user.target",
        cmdline,
        shares: vec![
            Share::new("store", &store.dir)?.immutable(),
            Share::new("modules", &modules_dir)?.readonly(),
        ],
        // systemd's status line, unless a getty took the console first: then the closure's
        // report unit's line (it follows multi-user.target within seconds).
        arrived: |line| {
            crate::e2e::is_multi_user(line)
                || line.contains(qemu_tests::nixos_closure::REPORT_MARKER)
        },
    })
}

fn append(ctx: &Ctx) -> String {
    ctx.cli
        .append
        .as_deref()
        .map(|a| format!(" {}", a.trim()))
        .unwrap_or_default()
}

/// The side-by-side scale run: every count of `--scale`, `--scale-runs` times.
pub fn run(ctx: &Ctx, ours: &Built) -> Result<Vec<Group>> {
    let spec = probe_spec(ctx)?;
    let mut groups = Vec::new();
    for rep in 1..=ctx.cli.scale_runs.max(1) {
        for &k in &ctx.cli.scale {
            groups.push(run_group(ctx, ours, &spec, k, rep)?);
        }
    }
    Ok(groups)
}

/// One group of `k` guests of `spec`, with a progress line.
pub fn run_group(ctx: &Ctx, ours: &Built, spec: &Spec, k: usize, rep: usize) -> Result<Group> {
    let dir = ctx.run_dir.join(spec.dir);
    std::fs::create_dir_all(&dir)?;
    let g = group(ctx, ours, spec, k, rep, &dir)?;
    let mem: Vec<f64> = g
        .guests
        .iter()
        .map(|x| (x.qemu + x.virtiofsd).pss_kb as f64 / 1024.0)
        .collect();
    say!(
        "scale ({}) K={k} rep {rep}: all at {} after {}; PSS per guest {:.0} MiB (median); {} of {k} ok",
        spec.dir,
        spec.what,
        g.wall_all
            .map_or("(not all reached it)".to_string(), |w| format!("{w:.2} s")),
        crate::stats::summarize(&mem).map_or(f64::NAN, |s| s.median),
        g.guests.iter().filter(|x| x.ok).count()
    );
    Ok(g)
}

struct Running {
    qemu: Child,
    daemons: Vec<Virtiofsd>,
    daemon_pids: Vec<i32>,
    _sockdir: tempfile::TempDir,
    console: Option<std::thread::JoinHandle<Vec<u8>>>,
}

enum Event {
    Stage2 {
        guest: usize,
        at: Instant,
        line: String,
    },
    Eof {
        guest: usize,
    },
}

fn group(ctx: &Ctx, ours: &Built, spec: &Spec, k: usize, rep: usize, dir: &Path) -> Result<Group> {
    let (tx, rx) = mpsc::channel::<Event>();
    let start = Instant::now();
    let timeout = Duration::from_secs(ctx.cli.timeout);
    let mut guests: Vec<Running> = Vec::new();
    for i in 0..k {
        guests.push(start_guest(ctx, ours, spec, i, tx.clone())?);
    }
    drop(tx);
    let results = collect(&guests, &rx, start, timeout);
    for (i, mut g) in guests.into_iter().enumerate() {
        let _ = g.qemu.kill();
        let _ = g.qemu.wait();
        for d in g.daemons.iter_mut() {
            d.stop();
        }
        if let Some(t) = g.console.take() {
            let bytes = t.join().unwrap_or_default();
            let _ = std::fs::write(dir.join(format!("k{k}-rep{rep}-guest{i}.log")), bytes);
        }
    }
    let guests: Vec<Guest> = results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Guest::failed(format!("no {} within {} s", spec.what, timeout.as_secs()))
            })
        })
        .collect();
    let wall_all = if guests.iter().all(|g| g.ok) {
        guests
            .iter()
            .filter_map(|g| g.host_to_stage2)
            .reduce(f64::max)
    } else {
        None
    };
    Ok(Group {
        k,
        rep,
        wall_all,
        guests,
    })
}

impl Guest {
    fn failed(error: String) -> Guest {
        Guest {
            ok: false,
            error: Some(error),
            host_to_stage2: None,
            stage2: None,
            run_init: None,
            qemu: Mem::default(),
            virtiofsd: Mem::default(),
            virtiofsd_procs: 0,
        }
    }
}

/// Starts guest `i`: its virtiofsd (one per share) and its QEMU, whose console a thread
/// reads.
fn start_guest(
    ctx: &Ctx,
    ours: &Built,
    spec: &Spec,
    i: usize,
    tx: mpsc::Sender<Event>,
) -> Result<Running> {
    let sockdir = tempfile::Builder::new()
        .prefix("nixboot-bench.")
        .tempdir()?;
    let mut daemons = Vec::new();
    for (j, share) in spec.shares.iter().enumerate() {
        let sock = sockdir.path().join(format!("vfs{j}.sock"));
        daemons.push(
            Virtiofsd::start(&ctx.env.virtiofsd, share, &sock, Duration::from_secs(10))
                .context("starting virtiofsd")?,
        );
    }
    let daemon_pids = daemons
        .iter()
        .flat_map(|d| pids_with_arg(&format!("--socket-path={}", d.socket.display())))
        .collect();
    let mut cfg = VmConfig::new(
        &ctx.env.kernel,
        Some(ours.image.clone()),
        spec.cmdline.clone(),
    );
    cfg.memory_mb = MEMORY_MB;
    cfg.cpus = CPUS;
    cfg.machine = MACHINE;
    cfg.extra_qemu_args = ctx.cli.qemu_args.clone();
    let args = qemu::qemu_args(&cfg, ctx.accel, &daemons);
    let mut cmd = Command::new(&ctx.env.qemu);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    nixboot_launcher::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().context("starting QEMU")?;
    let out = child.stdout.take();
    let arrived = spec.arrived;
    let console = std::thread::spawn(move || read_console(i, out, arrived, &tx));
    Ok(Running {
        qemu: child,
        daemons,
        daemon_pids,
        _sockdir: sockdir,
        console: Some(console),
    })
}

/// Each guest's result as its stage 2 reports (memory measured right then) or its QEMU
/// exits, until all are in or `timeout` from `start` has passed.
fn collect(
    guests: &[Running],
    rx: &mpsc::Receiver<Event>,
    start: Instant,
    timeout: Duration,
) -> Vec<Option<Guest>> {
    let mut results: Vec<Option<Guest>> = vec![None; guests.len()];
    let mut pending = guests.len();
    while pending > 0 {
        let Ok(ev) = rx.recv_timeout(timeout.saturating_sub(start.elapsed())) else {
            break;
        };
        match ev {
            Event::Stage2 { guest, at, line } => {
                if results[guest].is_some() {
                    continue;
                }
                let g = &guests[guest];
                let qemu_mem = smaps_rollup(g.qemu.id() as i32).unwrap_or_default();
                let vfs_mem = g
                    .daemon_pids
                    .iter()
                    .filter_map(|p| smaps_rollup(*p))
                    .fold(Mem::default(), |a, b| a + b);
                let report = probe::read_line(&line)
                    .and_then(Result::ok)
                    .and_then(|v| BenchReport::from_value(&v).ok())
                    .unwrap_or_default();
                results[guest] = Some(Guest {
                    ok: true,
                    error: None,
                    host_to_stage2: Some(at.duration_since(start).as_secs_f64()),
                    stage2: report.stage2,
                    run_init: report.run_init,
                    qemu: qemu_mem,
                    virtiofsd: vfs_mem,
                    virtiofsd_procs: g.daemon_pids.len(),
                });
                pending -= 1;
            }
            Event::Eof { guest } => {
                if results[guest].is_none() {
                    results[guest] =
                        Some(Guest::failed("QEMU exited before stage 2 reported".into()));
                    pending -= 1;
                }
            }
        }
    }
    results
}

/// Reads a guest's console to its end; reports the arrival line as soon as it comes.
fn read_console(
    guest: usize,
    out: Option<std::process::ChildStdout>,
    arrived: fn(&str) -> bool,
    tx: &mpsc::Sender<Event>,
) -> Vec<u8> {
    let mut all = Vec::new();
    let mut line_start = 0;
    let mut reported = false;
    if let Some(mut out) = out {
        let mut buf = [0u8; 8192];
        loop {
            match out.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    all.extend_from_slice(&buf[..n]);
                    while let Some(nl) = all[line_start..].iter().position(|b| *b == b'\n') {
                        let line =
                            String::from_utf8_lossy(&all[line_start..line_start + nl]).into_owned();
                        line_start += nl + 1;
                        if !reported && arrived(&line) {
                            reported = true;
                            let _ = tx.send(Event::Stage2 {
                                guest,
                                at: Instant::now(),
                                line,
                            });
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    }
    let _ = tx.send(Event::Eof { guest });
    all
}

/// The processes whose command line contains `arg` exactly (our virtiofsd, by its socket;
/// a sandboxing virtiofsd may fork, and each process counts).
fn pids_with_arg(arg: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(PathBuf::from("/proc").join(pid.to_string()).join("cmdline"))
        {
            if cmd.split(|b| *b == 0).any(|a| a == arg.as_bytes()) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Rss, Pss and Pss_Shmem of a live process.
pub fn smaps_rollup(pid: i32) -> Option<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let mut m = Mem::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(key), Some(val)) = (it.next(), it.next()) else {
            continue;
        };
        let Ok(v) = val.parse::<u64>() else { continue };
        match key {
            "Rss:" => m.rss_kb = v,
            "Pss:" => m.pss_kb = v,
            "Pss_Shmem:" => m.pss_shmem_kb = v,
            _ => {}
        }
    }
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_smaps_rollup_parses() {
        let m = smaps_rollup(std::process::id() as i32).expect("smaps_rollup");
        assert!(
            m.rss_kb > 0 && m.pss_kb > 0 && m.pss_kb <= m.rss_kb,
            "{m:?}"
        );
    }
}
