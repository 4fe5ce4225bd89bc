//! The end-to-end experiment: what a user waits for, timed on the host from the command's
//! start, in interleaved rounds (the order rotated every round):
//!
//! - one command in a throwaway VM: `nixboot-qemu --exec 'uname -r'` on a tiny closure
//!   (the probe as init, Debian's static busybox as its `sw`, an initrd with
//!   virtio_console) against `vng --exec 'uname -r'` (virtme-ng), until the kernel's
//!   release arrives on the command's stdout;
//! - a real systemd (Debian's debootstrap'd bookworm, `NIXBOOT_DEBIAN_ROOT`) with its root
//!   shared over virtiofs, booted by nixboot's initrd and by dracut's (systemd in the
//!   initrd), until multi-user.target is reached: the console line of [`MARKER_UNIT`], a
//!   oneshot unit ordered after multi-user.target (systemd's own `Reached target ...
//!   Multi-User System` status line is not printed once a getty owns the console). The
//!   same words for both, the same launcher and machine. Each boot gets a fresh copy of
//!   the tree with that unit added (systemd writes to its root; the cached tree is never
//!   touched), made before the clock starts.
//!
//! Every guest: the same kernel, [`MACHINE`], [`CPUS`] vCPUs, [`MEMORY_MB`] MiB.

use crate::peers::{Built, Kind};
use crate::{say, Ctx};
use anyhow::{bail, Context, Result};
use nixboot_launcher::qemu;
use nixboot_launcher::{Machine, Share};
use nixboot_protocol::console::{StatusLine, STATUS_MARKER};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// vCPUs and memory of every end-to-end guest (vng's defaults on this 2-core host).
pub const CPUS: u32 = 2;
pub const MEMORY_MB: u32 = 1024;
/// The machine of every end-to-end guest: the launcher's default, what a user gets. q35's
/// interrupt routing costs the kernel about 0.14 s per virtio device under TCG where
/// i440fx's `_PRT` costs 0.35 s with two vCPUs (docs/machines.md, "Two vCPUs").
pub const MACHINE: Machine = Machine::Q35;
/// The command both command-mode tools run.
pub const EXEC_CMD: &str = "uname -r";
/// systemd's words for the real-systemd boots (both initrds): status lines on the console,
/// the target by name (Debian's default.target is graphical.target).
pub const SYSTEMD_WORDS: &str = "rw systemd.show_status=1 systemd.unit=multi-user.target";
/// What the marker unit prints when multi-user.target is active.
pub const MARKER: &str = "nixboot-bench: reached multi-user.target, uptime ";
/// The marker unit (`/etc/systemd/system/nixboot-bench-multi-user.service` of each copy,
/// wanted by and ordered after multi-user.target).
pub const MARKER_UNIT: &str = "[Unit]
Description=nixboot-bench: multi-user.target reached
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'read u _ < /proc/uptime; echo \"nixboot-bench: reached multi-user.target, uptime $$u\" > /dev/console'

[Install]
WantedBy=multi-user.target
";

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Contender {
    NixbootExec,
    VngExec,
    NixbootSystemd,
    DracutSystemd,
}

impl Contender {
    pub const ALL: [Contender; 4] = [
        Contender::NixbootExec,
        Contender::VngExec,
        Contender::NixbootSystemd,
        Contender::DracutSystemd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Contender::NixbootExec => "nixboot-qemu --exec",
            Contender::VngExec => "vng --exec",
            Contender::NixbootSystemd => "nixboot initrd + systemd",
            Contender::DracutSystemd => "dracut initrd + systemd",
        }
    }

    pub fn is_exec(self) -> bool {
        matches!(self, Contender::NixbootExec | Contender::VngExec)
    }
}

/// One end-to-end run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub contender: Contender,
    pub round: usize,
    pub slot: usize,
    pub ok: bool,
    pub error: Option<String>,
    /// Host command start -> what the user waits for (the command's output; multi-user).
    pub secs: Option<f64>,
    /// Host command start -> the command exited (command mode) or QEMU was stopped.
    pub exit_secs: f64,
    /// Real systemd: host start -> stage 2's systemd said "Welcome to".
    pub stage2_secs: Option<f64>,
    /// Real systemd: host start -> the initrd's first sign on the console (dracut's
    /// systemd "Welcome to ... (Initramfs)"; nixboot's status line minus its initrd_ms).
    pub initrd_start_secs: Option<f64>,
    /// nixboot's own initrd phase (its status line's initrd_ms), in seconds.
    pub initrd_own_secs: Option<f64>,
    /// Real systemd: the guest's uptime when multi-user.target was reached.
    #[serde(default)]
    pub guest_uptime: Option<f64>,
    pub log: PathBuf,
}

/// What the experiment measured, and what it could not run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub records: Vec<Record>,
    pub left_out: Vec<(Contender, String)>,
}

/// Console facts of a real-systemd boot, host-timestamped as the lines arrive.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Marks {
    pub initrd_welcome: Option<f64>,
    pub status: Option<f64>,
    pub initrd_ms: Option<f64>,
    pub stage2_welcome: Option<f64>,
    pub multi_user: Option<f64>,
    /// The guest's uptime in the marker line.
    pub multi_user_uptime: Option<f64>,
}

impl Marks {
    /// Notes what `line` (arrived `at` seconds after the start) says; first sighting wins.
    pub fn see(&mut self, line: &str, at: f64) {
        let set = |slot: &mut Option<f64>| {
            slot.get_or_insert(at);
        };
        match welcome(line) {
            Some(Welcome::Initrd) => set(&mut self.initrd_welcome),
            Some(Welcome::Stage2) => set(&mut self.stage2_welcome),
            None => {}
        }
        if is_multi_user(line) {
            set(&mut self.multi_user);
        }
        if self.multi_user_uptime.is_none() {
            self.multi_user_uptime = marker_uptime(line);
        }
        if self.status.is_none() {
            if let Some(s) = line
                .find(STATUS_MARKER)
                .and_then(|i| StatusLine::parse(&line[i..]).ok())
            {
                self.status = Some(at);
                self.initrd_ms = s.get("initrd_ms").and_then(|v| v.parse().ok());
            }
        }
    }
}

/// Removes ANSI escape sequences (systemd colours its status lines).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        if it.peek() == Some(&'[') {
            it.next();
            // Parameters and intermediates, up to the final byte (@ to ~).
            for d in it.by_ref() {
                if ('@'..='~').contains(&d) {
                    break;
                }
            }
        }
    }
    out
}

/// systemd's `[  OK  ] Reached target multi-user.target - Multi-User System.` (252), the
/// older `Reached target Multi-User System.`, or the marker unit's line.
pub fn is_multi_user(line: &str) -> bool {
    let l = strip_ansi(line);
    l.contains(MARKER)
        || (l.contains("Reached target")
            && (l.contains("Multi-User System") || l.contains("multi-user.target")))
}

/// The guest's uptime (s) in the marker unit's line.
pub fn marker_uptime(line: &str) -> Option<f64> {
    let l = strip_ansi(line);
    let rest = &l[l.find(MARKER)? + MARKER.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Welcome {
    /// systemd in an initrd: its os-release says so (dracut: "... (Initramfs)").
    Initrd,
    Stage2,
}

/// systemd's `Welcome to PRETTY_NAME!` line, and whose it is.
pub fn welcome(line: &str) -> Option<Welcome> {
    let l = strip_ansi(line);
    let rest = &l[l.find("Welcome to ")?..];
    if rest.contains("Initramfs") || rest.contains("initrd") {
        Some(Welcome::Initrd)
    } else {
        Some(Welcome::Stage2)
    }
}

/// The line of a command's stdout that is the kernel's release: what `uname -r` printed.
pub fn release_line(line: &str, kver: &str) -> bool {
    strip_ansi(line).trim() == kver
}

/// What the experiment needs, found or built once per run; what could not be, and why.
pub struct Setup {
    pub launcher: PathBuf,
    pub exec: Option<ExecClosure>,
    pub vng: Option<PathBuf>,
    pub debian_root: Option<PathBuf>,
    pub left_out: Vec<(Contender, String)>,
}

/// The command-mode closure: a store with the probe as init and busybox as `sw`.
pub struct ExecClosure {
    pub store: PathBuf,
    pub system: PathBuf,
    pub initrd: PathBuf,
}

/// Everything the rounds need (the nixboot and dracut images come from the side-by-side
/// builds).
pub fn prepare(ctx: &Ctx, built: &[Built]) -> Result<Setup> {
    say!("e2e: building nixboot-qemu (cargo, release)");
    let launcher = qemu_tests::artifacts::host_binary("nixboot-launcher", "nixboot-qemu")
        .map_err(anyhow::Error::msg)?;
    let mut left_out = Vec::new();
    let exec = Some(exec_closure(ctx)?);
    let vng = find_vng();
    if vng.is_none() {
        left_out.push((
            Contender::VngExec,
            "no vng: NIXBOOT_VNG unset and no ~/.cache/nixboot/virtme-ng-*/bin/vng (.ci/setup-real-parts installs it)".into(),
        ));
    }
    let debian_root = std::env::var_os("NIXBOOT_DEBIAN_ROOT")
        .map(PathBuf::from)
        .filter(|p| p.join("usr/lib/systemd/systemd").is_file());
    if debian_root.is_none() {
        for c in [Contender::NixbootSystemd, Contender::DracutSystemd] {
            left_out.push((
                c,
                "NIXBOOT_DEBIAN_ROOT unset or without systemd (.ci/setup-real-parts)".into(),
            ));
        }
    } else if !built.iter().any(|b| b.kind == Kind::Dracut) {
        left_out.push((
            Contender::DracutSystemd,
            "dracut's image was not built in this run (--initrds)".into(),
        ));
    }
    Ok(Setup {
        launcher,
        exec,
        vng,
        debian_root,
        left_out,
    })
}

/// `NIXBOOT_VNG`, else the newest venv `.ci/setup-real-parts` made.
fn find_vng() -> Option<PathBuf> {
    if let Some(v) = std::env::var_os("NIXBOOT_VNG").map(PathBuf::from) {
        return v.is_file().then_some(v);
    }
    let cache = std::env::var_os("NIXBOOT_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/nixboot")))?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(cache)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("virtme-ng-"))
        .map(|e| e.path().join("bin/vng"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// The tiny closure of tests/readme.sh and qemu-tests/tests/exec.rs, and its initrd.
fn exec_closure(ctx: &Ctx) -> Result<ExecClosure> {
    let probe = &qemu_tests::artifacts::static_binaries()
        .map_err(anyhow::Error::msg)?
        .probe;
    let store = ctx.run_dir.join("exec-store");
    let bb = store.join(qemu_tests::artifacts::fake_store_name("e2e", "busybox"));
    let system = store.join(qemu_tests::artifacts::fake_store_name("e2e", "exec-system"));
    std::fs::create_dir_all(bb.join("bin"))?;
    std::fs::create_dir_all(&system)?;
    std::fs::copy(&ctx.busybox, bb.join("bin/busybox"))?;
    for applet in ["sh", "uname", "cat", "echo"] {
        std::os::unix::fs::symlink("busybox", bb.join("bin").join(applet))?;
    }
    std::fs::copy(probe, system.join("init"))?;
    let bb_name = bb.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    std::os::unix::fs::symlink(format!("/nix/store/{bb_name}"), system.join("sw"))?;
    let initrd = ctx.run_dir.join("exec.initrd");
    let mut cmd = Command::new(&ctx.mkinitrd);
    cmd.arg("--closure")
        .arg(&system)
        .arg("-o")
        .arg(&initrd)
        .arg("--kernel-modules")
        .arg(&ctx.env.modules)
        .arg("--init")
        .arg(&ctx.static_init);
    for m in ["virtio_pci", "virtiofs", "virtio_console"] {
        cmd.args(["--module", m]);
    }
    crate::timed_command(&mut cmd, &ctx.run_dir.join("build-exec-initrd.log"))?;
    Ok(ExecClosure {
        store,
        system,
        initrd,
    })
}

/// N rounds over the contenders that can run, the order rotated by one every round.
pub fn run_rounds(ctx: &Ctx, setup: &Setup, built: &[Built]) -> Result<Vec<Record>> {
    let dir = ctx.run_dir.join("e2e");
    std::fs::create_dir_all(&dir)?;
    let ready: Vec<Contender> = Contender::ALL
        .into_iter()
        .filter(|c| ctx.cli.e2e.contains(c))
        .filter(|c| !setup.left_out.iter().any(|(l, _)| l == c))
        .collect();
    let mut records = Vec::new();
    for round in 1..=ctx.cli.runs {
        for slot in 0..ready.len() {
            let c = ready[(slot + round - 1) % ready.len()];
            let log = dir.join(format!("{round:02}-{c:?}.log"));
            let r = run_one(ctx, setup, built, c, &log)
                .unwrap_or_else(|e| failed(c, format!("{e:#}"), log.clone()));
            let r = Record { round, slot, ..r };
            say!(
                "e2e round {round}/{} {:<26} {}",
                ctx.cli.runs,
                c.name(),
                match (&r.error, r.secs) {
                    (None, Some(s)) => format!("{s:6.2} s (exit {:.2} s)", r.exit_secs),
                    (e, _) => format!(
                        "FAILED: {} ({})",
                        e.as_deref().unwrap_or("?"),
                        log.display()
                    ),
                }
            );
            records.push(r);
        }
    }
    Ok(records)
}

fn failed(contender: Contender, error: String, log: PathBuf) -> Record {
    Record {
        contender,
        round: 0,
        slot: 0,
        ok: false,
        error: Some(error),
        secs: None,
        exit_secs: 0.0,
        stage2_secs: None,
        initrd_start_secs: None,
        initrd_own_secs: None,
        guest_uptime: None,
        log,
    }
}

fn run_one(ctx: &Ctx, s: &Setup, built: &[Built], c: Contender, log: &Path) -> Result<Record> {
    let image = |k: Kind| {
        built
            .iter()
            .find(|b| b.kind == k)
            .map(|b| b.image.clone())
            .with_context(|| format!("no {k} image"))
    };
    match c {
        Contender::NixbootExec => {
            let e = s.exec.as_ref().context("no exec closure")?;
            exec_run(ctx, c, nixboot_exec_cmd(ctx, s, e, log), log)
        }
        Contender::VngExec => {
            let vng = s.vng.as_ref().context("no vng")?;
            exec_run(ctx, c, vng_cmd(ctx, vng), log)
        }
        Contender::NixbootSystemd => {
            systemd_run(ctx, s, c, &image(Kind::Nixboot)?, Kind::Nixboot, log)
        }
        Contender::DracutSystemd => {
            systemd_run(ctx, s, c, &image(Kind::Dracut)?, Kind::Dracut, log)
        }
    }
}

fn nixboot_exec_cmd(ctx: &Ctx, s: &Setup, e: &ExecClosure, log: &Path) -> Command {
    let mut cmd = Command::new(&s.launcher);
    cmd.arg("--closure")
        .arg(&e.system)
        .arg("--store")
        .arg(&e.store)
        .arg("--kernel")
        .arg(&ctx.env.kernel)
        .arg("--initrd")
        .arg(&e.initrd)
        .arg("--modules")
        .arg(&ctx.env.modules)
        .arg("--qemu")
        .arg(&ctx.env.qemu)
        .arg("--virtiofsd")
        .arg(&ctx.env.virtiofsd)
        .arg("--accel")
        .arg(ctx.accel.to_string())
        .arg("--machine")
        .arg(MACHINE.to_string())
        .arg("--cpus")
        .arg(CPUS.to_string())
        .arg("--memory")
        .arg(MEMORY_MB.to_string())
        .arg("--timeout")
        .arg(ctx.cli.timeout.to_string())
        .arg("--console-log")
        .arg(log.with_extension("console"))
        .arg("--exec")
        .arg(EXEC_CMD);
    cmd
}

/// `vng --disable-kvm -r VMLINUZ --exec CMD` (KVM when the bench uses it), the Rust
/// virtiofsd first in PATH (else vng takes QEMU's C virtiofsd, falls back to 9p and this
/// kernel panics), then the venv's own scripts (vng runs `virtme-run`).
fn vng_cmd(ctx: &Ctx, vng: &Path) -> Command {
    let mut path = Vec::new();
    for p in [ctx.env.virtiofsd.parent(), vng.parent()]
        .into_iter()
        .flatten()
    {
        path.push(p.to_path_buf());
    }
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let mut cmd = Command::new(vng);
    cmd.env("PATH", std::env::join_paths(path).unwrap_or_default());
    if ctx.accel.to_string() != "kvm" {
        cmd.arg("--disable-kvm");
    }
    cmd.arg("-r")
        .arg(&ctx.env.kernel)
        .arg("--cpus")
        .arg(CPUS.to_string())
        .arg("--memory")
        .arg(format!("{MEMORY_MB}M"))
        .arg("--exec")
        .arg(EXEC_CMD);
    cmd
}

/// Runs a command-mode tool: its stdout piped (vng loses output written to a file), its
/// stderr to the log; times the release line's arrival and the exit.
fn exec_run(ctx: &Ctx, c: Contender, mut cmd: Command, log: &Path) -> Result<Record> {
    let err = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .current_dir(&ctx.run_dir)
        .process_group(0);
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("running {cmd:?}"))?;
    let out = child.stdout.take().context("no stdout pipe")?;
    let seen: Arc<Mutex<(Option<f64>, String)>> = Arc::default();
    let kver = ctx.kver.clone();
    let seen2 = Arc::clone(&seen);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
            let mut s = seen2.lock().unwrap_or_else(|e| e.into_inner());
            if s.0.is_none() && release_line(&line, &kver) {
                s.0 = Some(start.elapsed().as_secs_f64());
            }
            s.1.push_str(&line);
            s.1.push('\n');
        }
    });
    let limit = Duration::from_secs(ctx.cli.timeout);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if start.elapsed() > limit {
            let pgid = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let exit_secs = start.elapsed().as_secs_f64();
    let _ = reader.join();
    let (secs, stdout) = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let _ = std::fs::OpenOptions::new()
        .append(true)
        .open(log)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, format!("# --- stdout ---\n{stdout}").as_bytes())
        });
    let error = match (status, secs) {
        (None, _) => Some(format!("timed out after {} s", ctx.cli.timeout)),
        (Some(st), _) if !st.success() => Some(format!("exited with {st}")),
        (_, None) => Some(format!("no `{}` line on stdout", ctx.kver)),
        _ => None,
    };
    Ok(Record {
        ok: error.is_none(),
        error,
        secs,
        exit_secs,
        ..failed(c, String::new(), log.to_path_buf())
    })
}

/// One boot of Debian's systemd on a fresh copy of its tree, through `image`.
fn systemd_run(
    ctx: &Ctx,
    s: &Setup,
    c: Contender,
    image: &Path,
    kind: Kind,
    log: &Path,
) -> Result<Record> {
    let src = s.debian_root.as_ref().context("no Debian root")?;
    let tmp = tempfile::Builder::new()
        .prefix("e2e-root.")
        .tempdir_in(&ctx.run_dir)?;
    let root = tmp.path().join("root");
    let st = Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(src)
        .arg(&root)
        .status()?;
    if !st.success() {
        bail!("cp -a {} {} failed ({st})", src.display(), root.display());
    }
    add_marker_unit(&root)?;
    let cmdline = format!(
        "{} {} {SYSTEMD_WORDS}",
        crate::boot::base_cmdline(),
        kind.root_args()
    );
    let mut cfg = ctx.env.vm(image, cmdline);
    cfg.memory_mb = MEMORY_MB;
    cfg.cpus = CPUS;
    cfg.machine = MACHINE;
    cfg.accel = Some(ctx.accel);
    cfg.timeout = Some(Duration::from_secs(ctx.cli.timeout));
    cfg.quiet = true;
    cfg.extra_qemu_args = ctx.cli.qemu_args.clone();
    cfg.console_file = Some(log.with_extension("console"));
    // Read-write, as a root is. Served as the launcher serves an immutable store
    // (`--cache=always`): the copy is this guest's alone, so nothing changes it behind the
    // guest's back (its own writes go through this virtiofsd); with `--cache=never` every
    // lookup is a round trip and systemd's first boot takes minutes under TCG.
    cfg.shares.push(Share {
        immutable: true,
        ..Share::new("store", &root)?
    });
    let start = Instant::now();
    let mut marks = Marks::default();
    let mut tail = ConsoleTail::new(log.with_extension("console"));
    let o = qemu::run_watched(&cfg, &mut |_| {
        for line in tail.new_lines() {
            marks.see(&line, start.elapsed().as_secs_f64());
        }
        marks.multi_user.map(|_| "multi-user.target reached".into())
    })
    .with_context(|| format!("booting {kind} with Debian's systemd"))?;
    let exit_secs = start.elapsed().as_secs_f64();
    for line in tail.new_lines() {
        marks.see(&line, exit_secs);
    }
    std::fs::write(
        log,
        format!("# {}\n# cmdline: {}\n{}", c.name(), cfg.cmdline, o.console),
    )?;
    let error = if marks.multi_user.is_some() {
        None
    } else if o.timed_out {
        Some(format!("timed out after {} s", ctx.cli.timeout))
    } else {
        Some("no `Reached target ... Multi-User System` on the console".into())
    };
    let initrd_own = marks.initrd_ms.map(|ms| ms / 1000.0);
    let initrd_start = match kind {
        Kind::Nixboot => marks.status.zip(initrd_own).map(|(s, o)| s - o),
        _ => marks.initrd_welcome,
    };
    Ok(Record {
        ok: error.is_none(),
        error,
        secs: marks.multi_user,
        exit_secs,
        stage2_secs: marks.stage2_welcome,
        initrd_start_secs: initrd_start,
        initrd_own_secs: initrd_own,
        guest_uptime: marks.multi_user_uptime,
        ..failed(c, String::new(), log.to_path_buf())
    })
}

/// Installs [`MARKER_UNIT`] into a copy of the tree, enabled as `systemctl enable` would.
fn add_marker_unit(root: &Path) -> Result<()> {
    let units = root.join("etc/systemd/system");
    let wants = units.join("multi-user.target.wants");
    std::fs::create_dir_all(&wants)?;
    let name = "nixboot-bench-multi-user.service";
    std::fs::write(units.join(name), MARKER_UNIT)?;
    std::os::unix::fs::symlink(format!("/etc/systemd/system/{name}"), wants.join(name))?;
    Ok(())
}

/// The complete lines appended to a growing file since the last call.
pub struct ConsoleTail {
    path: PathBuf,
    offset: u64,
    lines: LineSplitter,
}

impl ConsoleTail {
    pub fn new(path: PathBuf) -> Self {
        ConsoleTail {
            path,
            offset: 0,
            lines: LineSplitter::default(),
        }
    }

    pub fn new_lines(&mut self) -> Vec<String> {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(self.offset)).is_err() || f.read_to_end(&mut buf).is_err() {
            return Vec::new();
        }
        self.offset += buf.len() as u64;
        self.lines.feed(&buf)
    }
}

/// Splits a byte stream into lines (`\n`; a `\r` before it dropped), keeping a partial
/// last line for the next feed.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.partial.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            let line = &line[..line.len() - 1];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            out.push(String::from_utf8_lossy(line).into_owned());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// systemd 252's status line as it reaches a serial console, colours and all.
    const MULTI_USER: &str = "[\x1b[0;32m  OK  \x1b[0m] Reached target \x1b[0;1;39mmulti-user.target\x1b[0m - Multi-User System.\r";

    #[test]
    fn end_to_end_guests_run_on_the_launchers_default_machine() {
        assert_eq!(MACHINE, Machine::default());
    }

    #[test]
    fn multi_user_line_is_recognised_through_colours() {
        assert!(is_multi_user(MULTI_USER));
        assert!(is_multi_user("[  OK  ] Reached target Multi-User System."));
        assert!(!is_multi_user(
            "[  OK  ] Reached target \x1b[0;1;39mbasic.target\x1b[0m - Basic System."
        ));
        assert!(!is_multi_user("         Starting multi-user.target ..."));
        let marker = format!("{MARKER}12.34");
        assert!(is_multi_user(&marker));
        assert_eq!(marker_uptime(&marker), Some(12.34));
        assert_eq!(marker_uptime(MULTI_USER), None);
    }

    #[test]
    fn ansi_sequences_are_removed() {
        assert_eq!(
            strip_ansi("[\x1b[0;32m  OK  \x1b[0m] a\x1b[Kb"),
            "[  OK  ] ab"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn welcome_lines_tell_initrd_from_stage2() {
        assert_eq!(
            welcome(
                "Welcome to \x1b[1mDebian GNU/Linux 12 (bookworm) dracut-059-4 (Initramfs)\x1b[0m!"
            ),
            Some(Welcome::Initrd)
        );
        assert_eq!(
            welcome("Welcome to \x1b[1mDebian GNU/Linux 12 (bookworm)\x1b[0m!\r"),
            Some(Welcome::Stage2)
        );
        assert_eq!(welcome("[  OK  ] Started foo."), None);
    }

    #[test]
    fn marks_keep_first_sightings_and_read_the_status_line() {
        let mut m = Marks::default();
        m.see(
            "nixboot-status: status=ok step=exec init=/sbin/init initrd_ms=250",
            2.0,
        );
        m.see("Welcome to Debian GNU/Linux 12 (bookworm)!", 3.0);
        m.see(MULTI_USER, 9.5);
        m.see(MULTI_USER, 11.0);
        assert_eq!(m.status, Some(2.0));
        assert_eq!(m.initrd_ms, Some(250.0));
        assert_eq!(m.stage2_welcome, Some(3.0));
        assert_eq!(m.multi_user, Some(9.5));
        assert_eq!(m.initrd_welcome, None);
    }

    #[test]
    fn release_line_is_the_whole_line() {
        assert!(release_line(
            "6.1.0-57-cloud-amd64\r",
            "6.1.0-57-cloud-amd64"
        ));
        assert!(!release_line(
            "Linux 6.1.0-57-cloud-amd64",
            "6.1.0-57-cloud-amd64"
        ));
        assert!(!release_line("", "6.1.0-57-cloud-amd64"));
    }

    #[test]
    fn lines_split_across_feeds() {
        let mut s = LineSplitter::default();
        assert_eq!(s.feed(b"ab"), Vec::<String>::new());
        assert_eq!(s.feed(b"c\r\nde\nf"), vec!["abc".to_string(), "de".into()]);
        assert_eq!(s.feed(b"\n"), vec!["f".to_string()]);
    }

    #[test]
    fn marker_unit_is_enabled_in_the_copy() {
        let d = tempfile::tempdir().unwrap();
        add_marker_unit(d.path()).unwrap();
        let unit = d
            .path()
            .join("etc/systemd/system/nixboot-bench-multi-user.service");
        let text = std::fs::read_to_string(&unit).unwrap();
        assert!(
            text.contains("After=multi-user.target") && text.contains("WantedBy=multi-user.target")
        );
        // The guest's shell prints MARKER followed by the uptime ($$ is systemd's $).
        assert!(text.contains(&format!("{MARKER}$$u")), "{text}");
        let link = d
            .path()
            .join("etc/systemd/system/multi-user.target.wants/nixboot-bench-multi-user.service");
        assert_eq!(
            std::fs::read_link(link).unwrap(),
            PathBuf::from("/etc/systemd/system/nixboot-bench-multi-user.service")
        );
    }

    #[test]
    fn console_tail_returns_only_new_complete_lines() {
        use std::io::Write;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console");
        let mut t = ConsoleTail::new(p.clone());
        assert!(t.new_lines().is_empty(), "no file yet");
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(b"one\ntw").unwrap();
        assert_eq!(t.new_lines(), vec!["one".to_string()]);
        f.write_all(b"o\n").unwrap();
        assert_eq!(t.new_lines(), vec!["two".to_string()]);
        assert!(t.new_lines().is_empty());
    }
}
