//! The shares every boot uses and the interleaved boots of the side-by-side comparison.

use crate::peers::{Built, Kind, STAGE2_SH, STAMP_C};
use crate::{say, Ctx};
use anyhow::{Context, Result};
use nixboot_launcher::qemu;
use nixboot_launcher::{Machine, Share};
use nixboot_protocol::probe::BenchReport;
use nixboot_protocol::timings::Timings;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Guest RAM and vCPUs of every boot (peers.md's method).
pub const MEMORY_MB: u32 = 1024;
pub const CPUS: u32 = 1;
/// The machine of the side-by-side boots and the scale runs: i440fx, where the launcher
/// routes PCI interrupts from the BIOS table (`pci=noacpi pci=nomsi` with one vCPU), as in
/// every run since issue 6. The launcher's default is q35, whose ACPI `_PRT` evaluation
/// costs every initrd alike per virtio device under TCG: not what these tables compare.
pub const MACHINE: Machine = Machine::Pc;
/// The kernel command line every initrd gets, before its root= words: the launcher's base
/// parameters (the same for every peer), quiet, and the stage-2 stamp as init.
pub fn base_cmdline() -> String {
    format!(
        "{} quiet init=/sbin/init",
        nixboot_launcher::bootspec::BASE_PARAMS.join(" ")
    )
}

/// The directories shared with the guests.
#[derive(Debug, Clone)]
pub struct Shares {
    /// The tiny root (tag `store` in the side-by-side boots): busybox and `/sbin/init`.
    pub root: PathBuf,
    /// The store of the scale run's imageless guests (tag `store`).
    pub store: PathBuf,
    /// The stage-2 "system" in that store: a directory with `init` (mkinitrd's closure).
    pub system: PathBuf,
    /// Its init as the guest sees it.
    pub system_init: String,
    /// Stage 2 starts with stamp.c's binary (else with the script itself: no C compiler).
    pub stamped: bool,
}

/// Lays out the tiny root and the store, both with the same stage 2: stamp.c's binary as
/// the init, which stamps the kernel log and execs stage2.sh (or, without a C compiler,
/// stage2.sh itself as the init).
pub fn prepare_shares(run_dir: &Path, busybox: &Path) -> Result<Shares> {
    let stamp_c = run_dir.join("stamp.c");
    std::fs::write(&stamp_c, STAMP_C)?;

    let root = run_dir.join("root");
    for d in [
        "bin", "sbin", "etc", "dev", "proc", "sys", "run", "tmp", "root", "mnt",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(busybox, root.join("bin/busybox"))
        .with_context(|| format!("copying {}", busybox.display()))?;
    let script = STAGE2_SH.replace("@BUSYBOX@", "/bin/busybox");
    let stamped = compile_stamp(
        &stamp_c,
        "/bin/busybox",
        "/sbin/stage2.sh",
        &root.join("sbin/init"),
    );
    if stamped {
        write_exec(&root.join("sbin/stage2.sh"), &script)?;
    } else {
        write_exec(&root.join("sbin/init"), &script)?;
    }
    // systemd's switch-root refuses a new root without os-release.
    std::fs::write(
        root.join("etc/os-release"),
        "NAME=\"nixboot-bench stage 2\"\nID=nixboot-bench\nPRETTY_NAME=\"nixboot-bench stage 2\"\n",
    )?;

    let store = run_dir.join("store");
    let bb_name = qemu_tests::artifacts::fake_store_name("nixboot-bench", "busybox-static");
    let sys_name = qemu_tests::artifacts::fake_store_name("nixboot-bench", "bench-stage2");
    std::fs::create_dir_all(store.join(&bb_name).join("bin"))?;
    std::fs::copy(busybox, store.join(&bb_name).join("bin/busybox"))?;
    let system = store.join(&sys_name);
    std::fs::create_dir_all(&system)?;
    let guest_bb = format!("/nix/store/{bb_name}/bin/busybox");
    let script = STAGE2_SH.replace("@BUSYBOX@", &guest_bb);
    let guest_script = format!("/nix/store/{sys_name}/stage2.sh");
    if stamped && compile_stamp(&stamp_c, &guest_bb, &guest_script, &system.join("init")) {
        write_exec(&system.join("stage2.sh"), &script)?;
    } else {
        write_exec(&system.join("init"), &script)?;
    }
    Ok(Shares {
        root,
        store,
        system,
        system_init: format!("/nix/store/{sys_name}/init"),
        stamped,
    })
}

/// `cc` builds stamp.c for one busybox and script path; false (and a note) when it cannot.
fn compile_stamp(src: &Path, busybox: &str, script: &str, out: &Path) -> bool {
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let result = std::process::Command::new(&cc)
        .args([
            "-static",
            "-no-pie",
            "-nostdlib",
            "-ffreestanding",
            "-fno-stack-protector",
            "-O2",
            "-s",
        ])
        .arg(format!("-DBUSYBOX=\"{busybox}\""))
        .arg(format!("-DSCRIPT=\"{script}\""))
        .arg("-o")
        .arg(out)
        .arg(src)
        .stdin(std::process::Stdio::null())
        .output();
    match result {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            say!(
                "WARNING: cc could not build stamp.c ({}); stage 2 stamps from the script, \
                 tens of ms later:\n{}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
            false
        }
        Err(e) => {
            say!("WARNING: no C compiler ({e}); stage 2 stamps from the script, tens of ms later");
            false
        }
    }
}

fn write_exec(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// One boot of one initrd.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootRecord {
    pub kind: Kind,
    pub round: usize,
    /// Position within its round (the order rotates from round to round).
    pub slot: usize,
    pub ok: bool,
    pub error: Option<String>,
    /// The kernel log's timestamp of "Run /init as init process" (s since boot).
    pub run_init: Option<f64>,
    /// The kernel log's timestamp of the line stage 2 writes first thing.
    pub stage2: Option<f64>,
    /// stage2 - run_init (one clock).
    pub initrd_phase: Option<f64>,
    /// /proc/uptime (CLOCK_BOOTTIME, centiseconds) read right after that line.
    pub stage2_uptime: Option<f64>,
    /// The kernel log's clock minus CLOCK_BOOTTIME (s), measured when /proc/uptime ticked;
    /// converts the init's own timestamps (CLOCK_BOOTTIME) to the kernel log's clock.
    pub clock_offset: Option<f64>,
    /// Host: QEMU's start to the stage-2 report on the console.
    pub host_to_stage2: Option<f64>,
    /// Host: QEMU's whole run.
    pub qemu_secs: f64,
    /// nixboot's /run/nixboot/timings.json, as stage 2 found it.
    pub timings: Option<Timings>,
    pub console_log: PathBuf,
}

/// The kernel command line of one initrd.
pub fn cmdline(ctx: &Ctx, kind: Kind) -> String {
    let mut c = format!("{} {}", base_cmdline(), kind.root_args());
    if let Some(a) = ctx
        .cli
        .append
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        c.push(' ');
        c.push_str(a);
    }
    if ctx.cli.dmesg {
        c.push_str(" bench.dmesg");
    }
    c
}

/// N rounds; each boots every initrd once, the order rotated by one each round so that no
/// initrd always runs right after the same other one. Every round after the first starts by
/// building ours and the busybox script's images again, to time their builds as the boots
/// are timed: spread over the run.
pub fn run_rounds(ctx: &Ctx, built: &mut [Built]) -> Result<Vec<BootRecord>> {
    let boots_dir = ctx.run_dir.join("boots");
    std::fs::create_dir_all(&boots_dir)?;
    let mut records = Vec::new();
    let n = built.len();
    for round in 0..ctx.cli.runs {
        if round > 0 {
            for b in built.iter_mut() {
                crate::peers::build_again(ctx, b)?;
            }
        }
        for slot in 0..n {
            let b = &built[(slot + round) % n];
            let r = boot_once(ctx, b, round + 1, slot, &boots_dir)?;
            match (&r.error, r.initrd_phase) {
                (None, Some(p)) => say!(
                    "round {}/{} {:<16} Run /init {:6.3} s  stage 2 {:6.3} s  initrd phase {:6.3} s",
                    round + 1,
                    ctx.cli.runs,
                    b.kind.name(),
                    r.run_init.unwrap_or(f64::NAN),
                    r.stage2.unwrap_or(f64::NAN),
                    p
                ),
                (e, _) => say!(
                    "round {}/{} {:<16} FAILED: {} (console: {})",
                    round + 1,
                    ctx.cli.runs,
                    b.kind.name(),
                    e.as_deref().unwrap_or("no timings"),
                    r.console_log.display()
                ),
            }
            records.push(r);
        }
    }
    Ok(records)
}

fn boot_once(
    ctx: &Ctx,
    b: &Built,
    round: usize,
    slot: usize,
    boots_dir: &Path,
) -> Result<BootRecord> {
    let mut cfg = ctx.env.vm(&b.image, cmdline(ctx, b.kind));
    cfg.memory_mb = MEMORY_MB;
    cfg.cpus = CPUS;
    cfg.machine = MACHINE;
    cfg.accel = Some(ctx.accel);
    cfg.timeout = Some(Duration::from_secs(ctx.cli.timeout));
    cfg.quiet = true;
    cfg.extra_qemu_args = ctx.cli.qemu_args.clone();
    cfg.shares
        .push(Share::new("store", &ctx.shares.root)?.readonly());
    let o = qemu::run(&cfg).with_context(|| format!("booting {}", b.kind))?;

    let console_log = boots_dir.join(format!("{:02}-{}.log", round, b.kind));
    write_console_log(&console_log, b.kind, round, &cfg.cmdline, &o)?;

    let probe = match o.probe.as_ref().map(BenchReport::from_value) {
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            say!("{}: stage 2's report does not parse: {e}", b.kind);
            None
        }
        None => None,
    };
    let probe = probe.as_ref();
    let run_init = probe.and_then(|p| p.run_init);
    let stage2 = probe.and_then(|p| p.stage2);
    let initrd_phase = match (run_init, stage2) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let clock_offset = match (
        probe.and_then(|p| p.tick_klog),
        probe.and_then(|p| p.tick_uptime),
    ) {
        (Some(k), Some(u)) => Some(k - u),
        _ => None,
    };
    let error = if o.timed_out {
        Some(format!("timed out after {} s", ctx.cli.timeout))
    } else if o.panicked {
        Some("kernel panic".into())
    } else if probe.is_none() {
        Some("stage 2 never reported".into())
    } else if initrd_phase.is_none() {
        Some("stage 2 found no \"Run /init\" or its own line in the kernel log".into())
    } else {
        None
    };
    Ok(BootRecord {
        kind: b.kind,
        round,
        slot,
        ok: error.is_none(),
        error,
        run_init,
        stage2,
        initrd_phase,
        stage2_uptime: probe.and_then(|p| p.uptime),
        clock_offset,
        host_to_stage2: o.probe_at.map(|d| d.as_secs_f64()),
        qemu_secs: o.elapsed.as_secs_f64(),
        timings: probe.and_then(|p| p.timings.clone()),
        console_log,
    })
}

/// Keeps one boot's console, QEMU's stderr and virtiofsd's logs in the run directory.
fn write_console_log(
    path: &Path,
    kind: Kind,
    round: usize,
    cmdline: &str,
    o: &qemu::Outcome,
) -> Result<()> {
    let mut text = format!(
        "# {} round {round}\n# cmdline: {}\n# qemu exit {}, {:.3} s{}\n",
        kind,
        cmdline,
        o.qemu_exit,
        o.elapsed.as_secs_f64(),
        if o.timed_out { ", TIMED OUT" } else { "" }
    );
    text.push_str(&o.console);
    if !o.qemu_stderr.trim().is_empty() {
        text.push_str("\n# --- qemu stderr ---\n");
        text.push_str(&o.qemu_stderr);
    }
    for (tag, log) in &o.virtiofsd_logs {
        if !log.trim().is_empty() {
            text.push_str(&format!("\n# --- virtiofsd {tag} ---\n{log}"));
        }
    }
    std::fs::write(path, text)?;
    Ok(())
}
