//! `nixboot-qemu`: boots a NixOS closure (or any kernel + initrd) in QEMU with the Nix
//! store and kernel modules shared over virtiofs.
//!
//! Exit status: 0 the init reported status=ok and the guest stopped cleanly; 1 the boot
//! failed (status=failed, kernel panic, no status line); 124 timeout; 2 launcher error.

use anyhow::{bail, Context};
use clap::Parser;
use nixboot_launcher::bootspec::{self, BootSpec, KernelCmdline};
use nixboot_launcher::console::Status;
use nixboot_launcher::qemu::{self, Outcome, VmConfig};
use nixboot_launcher::{Accel, Share};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "nixboot-qemu",
    about = "Boot a NixOS closure in QEMU with /nix/store (and kernel modules) over virtiofs",
    after_help = "Exit status: 0 booted (status=ok, clean stop), 1 boot failed or kernel \
                  panic, 124 timeout, 2 launcher error.\nNIXBOOT_ACCEL=kvm|tcg|auto picks the \
                  accelerator (default auto: KVM only if a trial boot works)."
)]
struct Cli {
    /// The closure's boot.json (bootspec v1): init, kernel, initrd, kernelParams.
    #[arg(long, value_name = "FILE", conflicts_with = "closure")]
    boot_json: Option<PathBuf>,
    /// The closure (toplevel) directory, e.g. ./result: init=CLOSURE/init, and its
    /// boot.json when present.
    #[arg(long, value_name = "DIR")]
    closure: Option<PathBuf>,
    /// Kernel image (default: boot.json's kernel).
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,
    /// Initrd (default: boot.json's initrd).
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// Kernel modules, shared as tag `modules`: a lib/modules directory or one kernel's
    /// lib/modules/<version>.
    #[arg(long, value_name = "DIR")]
    modules: Option<PathBuf>,
    /// The store shared read-only as tag `store` (seen as /nix/store by the guest).
    #[arg(long, value_name = "DIR", default_value = "/nix/store")]
    store: PathBuf,
    /// Extra read-write share, TAG=DIR (repeatable).
    #[arg(long, value_name = "TAG=DIR")]
    share: Vec<String>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    memory: u32,
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Appended to the kernel command line.
    #[arg(long, value_name = "STR")]
    append: Option<String>,
    /// Kill the VM after this many seconds (exit status 124).
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Do not echo the console (it is still parsed).
    #[arg(long)]
    quiet: bool,
    /// kvm, tcg or auto (overrides NIXBOOT_ACCEL).
    #[arg(long, value_name = "ACCEL")]
    accel: Option<String>,
    #[arg(long, value_name = "FILE", default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    #[arg(
        long,
        value_name = "FILE",
        env = "NIXBOOT_VIRTIOFSD",
        default_value = "virtiofsd"
    )]
    virtiofsd: PathBuf,
    /// Arguments for the init (after ` -- ` on the kernel command line).
    #[arg(last = true, value_name = "ARGS")]
    init_args: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nixboot-qemu: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let boot_json = match (&cli.boot_json, &cli.closure) {
        (Some(b), _) => Some(b.clone()),
        (None, Some(c)) => Some(c.join("boot.json")).filter(|p| p.is_file()),
        (None, None) => None,
    };
    let spec = boot_json.as_deref().map(BootSpec::load).transpose()?;

    let init = match (&cli.closure, &spec) {
        (Some(c), _) => Some(
            bootspec::guest_store_path(&c.join("init"), &cli.store)
                .with_context(|| format!("the closure's init ({})", c.join("init").display()))?,
        ),
        (None, Some(s)) => Some(s.init.clone()),
        (None, None) => None,
    };
    if init.is_none() && !cli.append.as_deref().unwrap_or("").contains("init=") {
        bail!("no init to boot: give --closure, --boot-json, or init=... in --append");
    }

    let from_spec = |f: fn(&BootSpec) -> Option<&String>| {
        spec.as_ref()
            .and_then(f)
            .map(|p| bootspec::host_store_path(p, &cli.store))
    };
    let kernel = cli
        .kernel
        .clone()
        .or_else(|| from_spec(|s| s.kernel.as_ref()))
        .context("no kernel: give --kernel (or a boot.json that names one)")?;
    let initrd = cli
        .initrd
        .clone()
        .or_else(|| from_spec(|s| s.initrd.as_ref()))
        .context("no initrd: give --initrd (or a boot.json that names one)")?;

    let cmdline = KernelCmdline {
        init,
        kernel_params: spec
            .as_ref()
            .map(|s| s.kernel_params.clone())
            .unwrap_or_default(),
        append: cli.append.clone(),
        init_args: cli.init_args.clone(),
    }
    .render();

    let mut shares = vec![Share::new("store", &cli.store)?.readonly()];
    if let Some(m) = &cli.modules {
        shares.push(Share::new("modules", bootspec::modules_share_dir(m)?)?.readonly());
    }
    for s in &cli.share {
        shares.push(s.parse()?);
    }

    let accel = match cli.accel.as_deref() {
        None | Some("auto") => None,
        Some("kvm") => Some(Accel::Kvm),
        Some("tcg") => Some(Accel::Tcg),
        Some(other) => bail!("--accel {other:?}: expected kvm, tcg or auto"),
    };
    let timeout = cli
        .timeout
        .map(|s| {
            Duration::try_from_secs_f64(s)
                .map_err(|_| anyhow::anyhow!("--timeout {s}: not a duration"))
        })
        .transpose()?;

    let mut cfg = VmConfig::new(kernel, Some(initrd), cmdline);
    cfg.qemu = cli.qemu.clone();
    cfg.virtiofsd = cli.virtiofsd.clone();
    cfg.memory_mb = cli.memory;
    cfg.cpus = cli.cpus;
    cfg.shares = shares;
    cfg.accel = accel;
    cfg.timeout = timeout;
    cfg.quiet = cli.quiet;
    cfg.interactive = true;
    eprintln!("nixboot-qemu: kernel command line: {}", cfg.cmdline);

    let outcome = qemu::run(&cfg)?;
    let (code, summary) = verdict(&outcome);
    if code != 0 {
        for (tag, log) in &outcome.virtiofsd_logs {
            for line in log.lines().filter(|l| !l.trim().is_empty()) {
                eprintln!("nixboot-qemu: virtiofsd[{tag}]: {line}");
            }
        }
    }
    eprintln!("nixboot-qemu: {summary}");
    Ok(ExitCode::from(code))
}

/// The exit status and a one-line summary.
fn verdict(o: &Outcome) -> (u8, String) {
    let secs = o.elapsed.as_secs_f64();
    let status = o.status.as_ref();
    if o.timed_out {
        let last = status.map_or_else(|| "no status line".to_string(), |s| s.to_string());
        return (124, format!("timed out after {secs:.1}s ({last})"));
    }
    if o.panicked {
        let line = o
            .console
            .lines()
            .find(|l| l.contains("Kernel panic"))
            .unwrap_or("")
            .trim();
        return (1, format!("kernel panic: {line}"));
    }
    match status {
        Some(s) if s.status() == Status::Failed => (
            1,
            format!(
                "boot failed at step {}: {}",
                s.step().unwrap_or("?"),
                s.error().unwrap_or("(no error given)")
            ),
        ),
        Some(s) if s.status() == Status::Ok && o.qemu_clean_exit() => {
            let how = if o.powered_off {
                "powered off"
            } else {
                "stopped"
            };
            (
                0,
                format!(
                    "init status=ok step={} (initrd {} ms); guest {how} after {secs:.1}s",
                    s.step().unwrap_or("?"),
                    s.get("initrd_ms").unwrap_or("?")
                ),
            )
        }
        Some(s) if s.status() == Status::Ok => (
            1,
            format!(
                "init status=ok, but QEMU exited with {}: {}",
                o.qemu_exit,
                o.qemu_stderr.lines().last().unwrap_or("").trim()
            ),
        ),
        Some(s) => (1, format!("init reported an unknown status: {s}")),
        None if !o.qemu_exit.success() && o.console.trim().is_empty() => (
            2,
            format!("QEMU failed ({}): {}", o.qemu_exit, o.qemu_stderr.trim()),
        ),
        None => (
            1,
            format!(
                "no nixboot-status line from the init (QEMU exited with {})",
                o.qemu_exit
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nixboot_launcher::console::ConsoleFacts;
    use nixboot_launcher::AccelChoice;
    use std::os::unix::process::ExitStatusExt;

    fn outcome(console: &str, exit: i32, timed_out: bool) -> Outcome {
        let f = ConsoleFacts::parse(console);
        Outcome {
            console: console.into(),
            qemu_stderr: "qemu: some error".into(),
            qemu_exit: ExitStatusExt::from_raw(exit),
            status: f.status,
            probe: f.probe,
            panicked: f.panicked,
            powered_off: f.powered_off,
            timed_out,
            elapsed: Duration::from_secs(3),
            accel: AccelChoice {
                accel: Accel::Tcg,
                reason: "test".into(),
            },
            kernel_started_at: None,
            status_at: None,
            probe_at: None,
            warnings: f.warnings,
            virtiofsd_logs: Vec::new(),
        }
    }

    #[test]
    fn exit_codes() {
        let ok = "nixboot-status: status=ok step=exec init=/x initrd_ms=5\r\n[ 2.0] reboot: Power down\r\n";
        let (code, msg) = verdict(&outcome(ok, 0, false));
        assert_eq!(code, 0, "{msg}");
        assert!(msg.contains("powered off"), "{msg}");

        let failed = "nixboot-status: status=failed step=mount-store error=\"tag \\\"store\\\" missing\" action=poweroff\n";
        let (code, msg) = verdict(&outcome(failed, 0, false));
        assert_eq!(code, 1);
        assert_eq!(
            msg,
            r#"boot failed at step mount-store: tag "store" missing"#
        );

        let panic = "[ 1.9] Kernel panic - not syncing: VFS: Unable to mount root fs\n";
        let (code, msg) = verdict(&outcome(panic, 0, false));
        assert_eq!(code, 1);
        assert!(msg.starts_with("kernel panic: "), "{msg}");

        assert_eq!(verdict(&outcome(ok, 9, true)).0, 124);
        // status=ok but QEMU itself failed afterwards.
        assert_eq!(verdict(&outcome(ok, 1 << 8, false)).0, 1);
        // QEMU never got going: a launcher-side problem.
        assert_eq!(verdict(&outcome("", 1 << 8, false)).0, 2);
        // The kernel ran but no init spoke.
        assert_eq!(
            verdict(&outcome("[ 0.0] Linux version 6.1\n", 0, false)).0,
            1
        );
    }
}
