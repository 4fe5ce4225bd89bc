//! `nixboot-qemu`: boots a NixOS closure (or any kernel + initrd) in QEMU with the Nix
//! store and kernel modules shared over virtiofs.
//!
//! Exit status (README, "Exit status"): 0 the init reported status=ok and the guest stopped
//! cleanly; 1 the boot failed (status=failed, kernel panic, no status line) or the launcher
//! failed at run time (a file missing, QEMU or virtiofsd not starting); 2 usage error;
//! 124 timeout. With `--exec`: the command's status; 124 timeout; 125 the command's status
//! never came (the guest did not start it within `--exec-timeout`, or stopped before it
//! ended).

use anyhow::Context;
use clap::{Parser, ValueEnum};
use nixboot_launcher::bootspec::{self, BootSpec, KernelCmdline};
use nixboot_launcher::console::Status;
use nixboot_launcher::disk::{self, Disk};
use nixboot_launcher::exec::{ExecPorts, ExecState};
use nixboot_launcher::qemu::{self, Outcome, VmConfig};
use nixboot_launcher::{said_once, Accel, Machine, Share};
use nixboot_protocol::exec::Tty;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

mod terminal;

const AFTER_HELP: &str = "\
Exit status: 0 booted (the init said status=ok, the guest stopped cleanly); 1 the boot
failed (status=failed, kernel panic, no status line) or the launcher failed (a file
missing, QEMU or virtiofsd not starting); 2 usage error; 124 timeout.
With --exec: the command's exit status; 124 --timeout; 125 the command's status never came
(the guest did not start it within --exec-timeout, or stopped before it ended); 1 and 2 as
above when the launcher itself fails.

The console is on stdin/stdout; Ctrl-A x quits QEMU.
NIXBOOT_ACCEL=kvm|tcg|auto picks the accelerator (default auto: KVM only if a trial boot
works). `bash .ci/setup` (in nixboot's repository) installs QEMU, builds virtiofsd into
~/.cache/nixboot and caches Debian's cloud kernel; it writes their paths to
~/.cache/nixboot/env (NIXBOOT_KERNEL, NIXBOOT_MODULES, NIXBOOT_VIRTIOFSD).";

#[derive(Parser, Debug)]
#[command(
    group(clap::ArgGroup::new("command_mode").args(["exec", "shell"])),
    name = "nixboot-qemu",
    version,
    about = "Boot a NixOS closure in QEMU with /nix/store (and kernel modules) over virtiofs",
    after_help = AFTER_HELP
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
    /// The store shared read-only as tag `store` (seen as /nix/store by the guest), cached
    /// by the guest without revalidation (virtiofsd --cache=always; likewise --modules):
    /// it must not change while the guest runs. Other shares are not cached (--cache=never).
    #[arg(long, value_name = "DIR", default_value = "/nix/store")]
    store: PathBuf,
    /// Extra share, TAG=DIR read-write or TAG=DIR:ro read-only (repeatable). The guest
    /// mounts it by its tag (`mount -t virtiofs TAG DIR`, or NixOS's fileSystems).
    #[arg(long, value_name = "TAG=DIR[:ro]")]
    share: Vec<String>,
    /// Share the current directory read-write (tag `cwd`), mounted by nixboot's init at the
    /// same path in the guest; with --exec the command runs there.
    #[arg(long)]
    share_cwd: bool,
    /// The guest's network: `user` gives it a virtio-net NIC behind QEMU's user-mode NAT
    /// (outbound connections; DHCP from 10.0.2.2); `none` (default) gives it no NIC.
    #[arg(long, value_name = "MODE", default_value = "none")]
    net: NetArg,
    /// An extra virtio-blk disk (repeatable), a raw or qcow2 image read and written in
    /// place: IMAGE is FILE[,serial=NAME][,sector=512|4096]. The serial (default: the
    /// file's stem, at most 20 bytes) gives the guest's /dev/disk/by-id/virtio-NAME
    /// (udev); the sector size is its logical and physical block size. E.g. fstests' TEST_DEV and SCRATCH_DEV.
    #[arg(long, value_name = "IMAGE", value_parser = disk::parse)]
    disk: Vec<Disk>,
    /// The emulated machine: q35 (the default: the fastest under TCG here, with one vCPU
    /// or more), pc (i440fx; with one vCPU the launcher adds `pci=noacpi pci=nomsi`), or
    /// microvm (virtio-mmio, no PCI: the initrd must load virtio_mmio instead of
    /// virtio_pci; under TCG its kernel hangs calibrating clocks, KVM untested).
    /// Measured in docs/machines.md.
    #[arg(long, value_name = "MACHINE", default_value = "q35", value_parser = parse_machine)]
    machine: Machine,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MiB", default_value_t = 1024)]
    memory: u32,
    /// Number of virtual CPUs.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    cpus: u32,
    /// Appended to the kernel command line (e.g. "loglevel=4" for a quiet kernel,
    /// "rd.debug" for the init's details).
    #[arg(long, value_name = "STR")]
    append: Option<String>,
    /// Kill the VM after this many seconds (exit status 124).
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    timeout: Option<Duration>,
    /// Do not echo the console (it is still parsed).
    #[arg(long)]
    quiet: bool,
    /// The accelerator (overrides NIXBOOT_ACCEL; auto: KVM only if a trial boot works).
    #[arg(long, value_name = "ACCEL")]
    accel: Option<AccelArg>,
    /// The QEMU system emulator to run (a name looked up in PATH, or a path).
    #[arg(long, value_name = "FILE", default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// The virtiofsd to run, one per share [default: PATH's virtiofsd, else the one
    /// `.ci/setup` built: $NIXBOOT_CACHE or ~/.cache/nixboot/virtiofsd-*/bin/virtiofsd].
    #[arg(long, value_name = "FILE", env = "NIXBOOT_VIRTIOFSD")]
    virtiofsd: Option<PathBuf>,
    /// Command mode: boot, run CMD as root with a login shell (`sh -l -c CMD`; `bash -l -c`
    /// on NixOS), its stdout and stderr on ours, apart from the console (which goes to a
    /// file); exit with its status. Needs virtio_console in the initrd
    /// (`mkinitrd --module virtio_console`) for closures without systemd.
    #[arg(long, value_name = "CMD")]
    exec: Option<String>,
    /// An interactive root shell in a NixOS guest (the imageless module's agent), on a
    /// pseudo-terminal of your terminal's size: the guest boots to its target, the agent
    /// starts `bash -i` (after a login shell's profile), your terminal is raw until it
    /// exits; its exit ends the VM and gives our exit status (as --exec's). The console
    /// goes to a file as with --exec. From a pipe, the input's end is sent as Ctrl-D.
    /// Closures without the agent (served by nixboot's init) cannot give a terminal.
    #[arg(long, conflicts_with = "exec")]
    shell: bool,
    /// With --exec or --shell: how long to wait for the guest to start the command (exit
    /// 125 after).
    #[arg(long, value_name = "SECS", value_parser = parse_timeout, default_value = "300", requires = "command_mode")]
    exec_timeout: Duration,
    /// With --exec or --shell: also show the console as it comes, on stderr.
    #[arg(long, requires = "command_mode")]
    console: bool,
    /// With --exec or --shell: where the console is written [default: a new file in
    /// $TMPDIR, named when something goes wrong].
    #[arg(long, value_name = "FILE", requires = "command_mode")]
    console_log: Option<PathBuf>,
    /// Arguments for the init (after ` -- ` on the kernel command line).
    #[arg(last = true, value_name = "ARGS")]
    init_args: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum NetArg {
    None,
    User,
}

/// QEMU's arguments for `--net`.
fn net_args(net: NetArg, machine: Machine) -> Vec<String> {
    match net {
        NetArg::None => Vec::new(),
        NetArg::User => vec![
            "-netdev".into(),
            "user,id=net0".into(),
            "-device".into(),
            format!("{},netdev=net0", machine.virtio_device("virtio-net")),
        ],
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AccelArg {
    Kvm,
    Tcg,
    Auto,
}

/// QEMU's arguments for `--disk`: each file must be there, its format read from its head.
fn disk_args(cli: &Cli) -> anyhow::Result<Vec<String>> {
    disk::check_all(&cli.disk).map_err(|e| usage(format!("--disk: {e}")))?;
    let mut formats = Vec::new();
    for d in &cli.disk {
        let format = disk::image_format(&d.file)
            .with_context(|| format!("--disk {}: cannot read it", d.file.display()))?;
        formats.push(format);
    }
    Ok(disk::qemu_args(&cli.disk, &formats, cli.machine))
}

fn parse_machine(s: &str) -> Result<Machine, String> {
    s.parse()
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| "expected a number of seconds, 0 or more".to_string())
}

/// A mistake in the command line (exit 2), as opposed to a failure at run time (exit 1).
#[derive(Debug)]
struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    Usage(msg.into()).into()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nixboot-qemu: error: {}", said_once(&e));
            if e.downcast_ref::<Usage>().is_some() {
                eprintln!("Try 'nixboot-qemu --help' for more information.");
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// `path` must be an existing file of the given kind; the error names it and the cause.
fn check_path(what: &str, path: &Path, dir: bool, hint: &str) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("{what} {}: {e}{hint}", path.display()))?;
    if dir && !meta.is_dir() {
        anyhow::bail!("{what} {}: not a directory", path.display());
    }
    if !dir && meta.is_dir() {
        anyhow::bail!("{what} {}: is a directory, not a file", path.display());
    }
    Ok(())
}

const SETUP_HINT: &str = " (`bash .ci/setup` in nixboot's repository caches Debian's cloud \
kernel and its modules: NIXBOOT_KERNEL and NIXBOOT_MODULES in ~/.cache/nixboot/env)";

/// The virtiofsd to run: the option (or NIXBOOT_VIRTIOFSD), else PATH, else the one
/// `.ci/setup` built into the cache (the newest version there).
fn find_virtiofsd(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        check_path("virtiofsd", p, false, "")?;
        return Ok(p.to_path_buf());
    }
    if let Some(p) = in_path("virtiofsd") {
        return Ok(p);
    }
    let cache = std::env::var_os("NIXBOOT_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/nixboot")));
    let mut built: Vec<PathBuf> = cache
        .iter()
        .filter_map(|c| std::fs::read_dir(c).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("virtiofsd-"))
        .map(|e| e.path().join("bin/virtiofsd"))
        .filter(|p| p.is_file())
        .collect();
    built.sort();
    built.pop().with_context(|| {
        let where_ = cache.map_or_else(|| "$NIXBOOT_CACHE".into(), |c| c.display().to_string());
        format!(
            "virtiofsd not found (not given with --virtiofsd or NIXBOOT_VIRTIOFSD, not in PATH, \
             not in {where_}/virtiofsd-*/bin): `bash .ci/setup` in nixboot's repository builds it \
             there, or `cargo install virtiofsd`"
        )
    })
}

fn in_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The QEMU binary: a path as given, or a name looked up in PATH.
fn find_qemu(given: &Path) -> anyhow::Result<PathBuf> {
    if given.components().count() > 1 {
        check_path("QEMU", given, false, "")?;
        return Ok(given.to_path_buf());
    }
    let name = given.to_string_lossy();
    in_path(&name).with_context(|| {
        format!("{name} not found in PATH: apt-get install qemu-system-x86 (or `bash .ci/setup`)")
    })
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let disks = disk_args(cli)?;
    let spec = boot_spec(cli)?;
    // The usage error (nothing to boot) before any path check: it is the one to fix first.
    let init = guest_init(cli, spec.as_ref())?;
    check_path("store", &cli.store, true, "")?;
    let (kernel, initrd) = kernel_and_initrd(cli, spec.as_ref())?;
    if let Some(m) = &cli.modules {
        check_path("modules", m, true, SETUP_HINT)?;
    }

    let cwd = shared_cwd(cli)?;
    let command = command(cli);
    let tty = cli.shell.then(terminal::guest_tty);
    let cmdline = KernelCmdline {
        init,
        kernel_params: spec
            .as_ref()
            .map(|s| s.kernel_params.clone())
            .unwrap_or_default(),
        append: exec_append(
            cli.append.as_deref(),
            command.as_deref(),
            cwd.as_deref(),
            tty.as_ref(),
        ),
        init_args: cli.init_args.clone(),
    }
    .render();
    let shares = shares(cli, cwd.as_deref())?;

    let mut cfg = VmConfig::new(kernel, Some(initrd), cmdline);
    cfg.qemu = find_qemu(&cli.qemu)?;
    cfg.virtiofsd = find_virtiofsd(cli.virtiofsd.as_deref())?;
    cfg.machine = cli.machine;
    cfg.memory_mb = cli.memory;
    cfg.cpus = cli.cpus;
    cfg.shares = shares;
    cfg.accel = match cli.accel {
        None | Some(AccelArg::Auto) => None,
        Some(AccelArg::Kvm) => Some(Accel::Kvm),
        Some(AccelArg::Tcg) => Some(Accel::Tcg),
    };
    cfg.timeout = cli.timeout;
    cfg.extra_qemu_args.extend(net_args(cli.net, cli.machine));
    cfg.extra_qemu_args.extend(disks);
    match &command {
        Some(command) => run_exec(cli, cfg, command),
        None => run_boot(cli, cfg),
    }
}

/// What `--shell` runs: bash, interactive, after the agent's login shell read the profile.
const SHELL_COMMAND: &str = "exec bash -i";

/// The command of command mode: `--exec`'s, or `--shell`'s.
fn command(cli: &Cli) -> Option<String> {
    cli.exec
        .clone()
        .or_else(|| cli.shell.then(|| SHELL_COMMAND.to_string()))
}

/// The closure's (or `--boot-json`'s) boot.json, when there is one.
fn boot_spec(cli: &Cli) -> anyhow::Result<Option<BootSpec>> {
    if let Some(c) = &cli.closure {
        check_path("closure", c, true, "")?;
    }
    let boot_json = match (&cli.boot_json, &cli.closure) {
        (Some(b), _) => Some(b.clone()),
        (None, Some(c)) => Some(c.join("boot.json")).filter(|p| p.is_file()),
        (None, None) => None,
    };
    Ok(boot_json.as_deref().map(BootSpec::load).transpose()?)
}

/// The guest path of the init to boot: the closure's, else boot.json's; none only when
/// `--append` names one.
fn guest_init(cli: &Cli, spec: Option<&BootSpec>) -> anyhow::Result<Option<String>> {
    let init = match (&cli.closure, spec) {
        (Some(c), _) => Some(
            bootspec::guest_store_path(&c.join("init"), &cli.store)
                .with_context(|| format!("the closure's init ({})", c.join("init").display()))?,
        ),
        (None, Some(s)) => Some(s.init.clone()),
        (None, None) => None,
    };
    if init.is_none() && !cli.append.as_deref().unwrap_or("").contains("init=") {
        return Err(usage(
            "no init to boot: give --closure, --boot-json, or init=... in --append",
        ));
    }
    Ok(init)
}

/// The kernel and initrd on the host: as given, else boot.json's (in `--store`); both
/// must exist.
fn kernel_and_initrd(cli: &Cli, spec: Option<&BootSpec>) -> anyhow::Result<(PathBuf, PathBuf)> {
    let from_spec = |f: fn(&BootSpec) -> Option<&String>| {
        spec.and_then(f)
            .map(|p| bootspec::host_store_path(p, &cli.store))
    };
    let kernel = cli
        .kernel
        .clone()
        .or_else(|| from_spec(|s| s.kernel.as_ref()))
        .ok_or_else(|| {
            usage(format!(
                "no kernel: give --kernel FILE (or a boot.json that names one){SETUP_HINT}"
            ))
        })?;
    check_path("kernel", &kernel, false, SETUP_HINT)?;
    let initrd = cli
        .initrd
        .clone()
        .or_else(|| from_spec(|s| s.initrd.as_ref()))
        .ok_or_else(|| {
            usage(
                "no initrd: give --initrd FILE (made with mkinitrd), or a boot.json that names one",
            )
        })?;
    check_path("initrd", &initrd, false, " (build one with mkinitrd)")?;
    Ok((kernel, initrd))
}

/// With `--share-cwd`: the current directory, which must be UTF-8 and not `/`.
fn shared_cwd(cli: &Cli) -> anyhow::Result<Option<String>> {
    let cwd = match cli.share_cwd {
        true => Some(std::env::current_dir().context("--share-cwd: the current directory")?),
        false => None,
    };
    let cwd = cwd
        .map(|d| {
            d.to_str()
                .map(str::to_string)
                .ok_or_else(|| usage(format!("--share-cwd: {} is not UTF-8", d.display())))
        })
        .transpose()?;
    if cwd.as_deref() == Some("/") {
        return Err(usage(
            "--share-cwd: the current directory is /, which cannot be shared over the guest's root",
        ));
    }
    Ok(cwd)
}

/// The store, the modules, the working directory, then `--share`s. The store and the
/// modules are immutable while the guest runs, so the guest caches them without asking
/// again (`Share::immutable`, virtiofsd `--cache=always`: measured in docs/machines.md);
/// the others may change on the host under the guest and are not cached.
fn shares(cli: &Cli, cwd: Option<&str>) -> anyhow::Result<Vec<Share>> {
    let mut shares = vec![Share::new("store", &cli.store)?.immutable()];
    if let Some(m) = &cli.modules {
        let dir = bootspec::modules_share_dir(m)?;
        for v in bootspec::unindexed_versions(&dir) {
            eprintln!(
                "nixboot-qemu: warning: {}/{v} has no modules.dep: the guest's udev and modprobe \
                 cannot load modules by alias or name; write depmod's indexes first (`depmod -b BASE {v}` \
                 reads BASE/lib/modules/{v}; nixboot's .ci/index-modules DIR does it for any DIR)",
                dir.display()
            );
        }
        shares.push(Share::new("modules", dir)?.immutable());
    }
    if let Some(d) = cwd {
        shares.push(Share::new(nixboot_protocol::exec::CWD_TAG, d)?);
    }
    for s in &cli.share {
        shares.push(s.parse().map_err(|e| usage(format!("--share {s}: {e}")))?);
    }
    Ok(shares)
}

/// Boot mode: the console on the terminal, the boot's verdict as our status.
fn run_boot(cli: &Cli, mut cfg: VmConfig) -> anyhow::Result<ExitCode> {
    cfg.quiet = cli.quiet;
    cfg.interactive = true;
    eprintln!("nixboot-qemu: kernel command line: {}", cfg.full_cmdline());
    if std::io::stdin().is_terminal() {
        eprintln!("nixboot-qemu: the console follows; leave it with Ctrl-A then x");
    }

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

/// `--append`, then the shared working directory's, the command's and the terminal's
/// parameters.
fn exec_append(
    append: Option<&str>,
    exec: Option<&str>,
    cwd: Option<&str>,
    tty: Option<&Tty>,
) -> Option<String> {
    let cwd = cwd.map(nixboot_protocol::exec::cwd_param);
    let param = exec.map(nixboot_protocol::exec::cmdline_param);
    let tty = tty.map(Tty::param);
    let parts: Vec<&str> = append
        .into_iter()
        .chain(cwd.as_deref())
        .chain(param.as_deref())
        .chain(tty.as_deref())
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// After the command's status came, the guest has this long to power off.
const POWEROFF_GRACE: Duration = Duration::from_secs(15);

/// Command mode: the ports, the boot, the command's status as ours.
fn run_exec(cli: &Cli, mut cfg: VmConfig, command: &str) -> anyhow::Result<ExitCode> {
    let console = match &cli.console_log {
        Some(p) => p.clone(),
        None => tempfile::Builder::new()
            .prefix("nixboot-qemu-")
            .suffix(".console")
            .tempfile()
            .context("creating the console file")?
            .into_temp_path()
            .keep()
            .context("keeping the console file")?,
    };
    cfg.console_file = Some(console.clone());
    cfg.quiet = !cli.console;
    cfg.console_to_stderr = true;
    cfg.interactive = false;
    let ports = ExecPorts::new()?;
    cfg.extra_qemu_args.extend(ports.qemu_args(cfg.machine));
    // --shell: the keys go to the guest's terminal; ours is raw until the guard drops.
    let (input, raw) = match cli.shell {
        true => terminal::input(),
        false => (None, None),
    };
    let running = ports.start_with_input(
        Box::new(std::io::stdout()),
        Box::new(std::io::stderr()),
        input,
    );
    let exec_timeout = cli.exec_timeout;
    let outcome = qemu::run_watched(&cfg, &mut |elapsed| {
        let st = running.state();
        match (st.started, st.exit) {
            (_, Some((_, at))) if elapsed > at + POWEROFF_GRACE => {
                Some("the guest did not power off after the command".into())
            }
            (None, None) if elapsed >= exec_timeout => Some("exec-timeout".into()),
            _ => None,
        }
    });
    let state = running.finish();
    drop(raw);
    let outcome = outcome?;
    let (code, message) = exec_verdict(&state, &outcome, exec_timeout, &console, command);
    if let Some(m) = message {
        eprintln!("nixboot-qemu: {m}");
    }
    Ok(ExitCode::from(code))
}

/// Command mode's exit status and, unless it is the command's, why.
fn exec_verdict(
    st: &ExecState,
    o: &Outcome,
    exec_timeout: Duration,
    console: &Path,
    command: &str,
) -> (u8, Option<String>) {
    let console = console.display();
    if let Some((code, _)) = st.exit {
        return (code, None);
    }
    let secs = o.elapsed.as_secs_f64();
    if o.timed_out {
        let when = if st.started.is_some() {
            "while the command ran"
        } else {
            "before the guest started the command"
        };
        return (
            124,
            Some(format!(
                "timed out after {secs:.1}s {when}; console: {console}"
            )),
        );
    }
    let port = nixboot_protocol::exec::STATUS_PORT;
    if st.started.is_some() {
        return (
            125,
            Some(format!(
                "the guest stopped after {secs:.1}s before {command:?} ended (no exit status on \
             virtio-serial port {port}); console: {console}"
            )),
        );
    }
    let why = if o.stopped.is_some() {
        format!(
            "gave up after --exec-timeout {}s",
            exec_timeout.as_secs_f64()
        )
    } else {
        let (_, boot) = verdict(o);
        format!("QEMU exited after {secs:.1}s: {boot}")
    };
    (
        125,
        Some(format!(
            "the guest never started {command:?}: waited for the runner (nixboot's init, or the \
             closure's agent after multi-user.target) to say `started` on virtio-serial port \
             {port}; {why}; console: {console}"
        )),
    )
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
            1,
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
            stopped: None,
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
        // QEMU never got going: a launcher-side failure at run time.
        let (code, msg) = verdict(&outcome("", 1 << 8, false));
        assert_eq!(code, 1);
        assert!(msg.starts_with("QEMU failed"), "{msg}");
        // The kernel ran but no init spoke.
        assert_eq!(
            verdict(&outcome("[ 0.0] Linux version 6.1\n", 0, false)).0,
            1
        );
    }

    #[test]
    fn exec_codes() {
        let c = Path::new("/tmp/c.console");
        let t = Duration::from_secs(9);
        let done = ExecState {
            started: Some(Duration::from_secs(1)),
            exit: Some((3, Duration::from_secs(2))),
        };
        let off = "[ 2.0] reboot: Power down\r\n";
        assert_eq!(
            exec_verdict(&done, &outcome(off, 0, false), t, c, "x"),
            (3, None)
        );
        // The status counts even when QEMU had to be stopped afterwards.
        assert_eq!(exec_verdict(&done, &outcome("", 9, true), t, c, "x").0, 3);

        let never = ExecState::default();
        let failed =
            "nixboot-status: status=failed step=check-init error=\"no init\" action=poweroff\n";
        let (code, msg) = exec_verdict(&never, &outcome(failed, 0, false), t, c, "x");
        assert_eq!(code, 125);
        let msg = msg.unwrap();
        assert!(
            msg.contains("boot failed at step check-init: no init"),
            "{msg}"
        );
        assert!(
            msg.contains("nixboot.exec.status") && msg.contains("/tmp/c.console"),
            "{msg}"
        );
        let mut stuck = outcome("", 9, false);
        stuck.stopped = Some("exec-timeout".into());
        let (code, msg) = exec_verdict(&never, &stuck, t, c, "x");
        assert_eq!(code, 125);
        assert!(msg.unwrap().contains("gave up after --exec-timeout 9s"));

        let started = ExecState {
            started: Some(Duration::from_secs(1)),
            exit: None,
        };
        assert_eq!(
            exec_verdict(&started, &outcome("", 0, false), t, c, "x").0,
            125
        );
        assert_eq!(
            exec_verdict(&started, &outcome("", 9, true), t, c, "x").0,
            124
        );
    }

    #[test]
    fn user_networking_is_one_virtio_nic() {
        assert!(net_args(NetArg::None, Machine::Pc).is_empty());
        assert_eq!(
            net_args(NetArg::User, Machine::Pc).join(" "),
            "-netdev user,id=net0 -device virtio-net-pci,netdev=net0"
        );
        assert_eq!(
            net_args(NetArg::User, Machine::Microvm).join(" "),
            "-netdev user,id=net0 -device virtio-net-device,netdev=net0"
        );
    }

    #[test]
    fn the_command_goes_after_append() {
        assert_eq!(exec_append(None, None, None, None), None);
        assert_eq!(
            exec_append(Some("quiet"), None, None, None).as_deref(),
            Some("quiet")
        );
        assert_eq!(
            exec_append(Some("quiet"), Some("true"), Some("/a"), None).as_deref(),
            Some("quiet nixboot.cwd=L2E= nixboot.exec=dHJ1ZQ==")
        );
        let tty = Tty {
            rows: 24,
            cols: 80,
            term: "vt100".into(),
        };
        assert_eq!(
            exec_append(None, Some("true"), None, Some(&tty)).as_deref(),
            Some("nixboot.exec=dHJ1ZQ== nixboot.tty=24,80,vt100")
        );
    }

    #[test]
    fn shell_is_command_mode_with_a_terminal() {
        let cli = Cli::try_parse_from(["nixboot-qemu", "--shell", "--exec-timeout", "5"]).unwrap();
        assert_eq!(command(&cli).as_deref(), Some(SHELL_COMMAND));
        assert!(Cli::try_parse_from(["nixboot-qemu", "--shell", "--exec", "x"]).is_err());
        assert!(Cli::try_parse_from(["nixboot-qemu", "--console"]).is_err());
        let cli = Cli::try_parse_from(["nixboot-qemu", "--machine", "q35"]).unwrap();
        assert_eq!((cli.machine, command(&cli)), (Machine::Q35, None));
        assert!(Cli::try_parse_from(["nixboot-qemu", "--machine", "virt"]).is_err());
    }
}
