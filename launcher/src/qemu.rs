//! Runs one VM: virtiofsd per share, QEMU with a serial console on stdio, and the console
//! read back into an [`Outcome`].

use crate::accel::{self, Accel, AccelChoice};
use crate::console::{ConsoleFacts, StatusLine, PROBE_MARKER, STATUS_MARKER};
use crate::machine::Machine;
use crate::virtiofsd::{Share, Virtiofsd};
use crate::{Error, Result};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a virtiofsd may take to create its socket.
const VIRTIOFSD_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything needed to boot once.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub qemu: PathBuf,
    pub virtiofsd: PathBuf,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The kernel command line; [`Machine::kernel_params`] go before it
    /// ([`VmConfig::full_cmdline`]).
    pub cmdline: String,
    pub machine: Machine,
    pub memory_mb: u32,
    pub cpus: u32,
    pub shares: Vec<Share>,
    /// `None`: decided by [`accel::choose`] (NIXBOOT_ACCEL, else a trial boot).
    pub accel: Option<Accel>,
    /// Kill QEMU after this long and report `timed_out`.
    pub timeout: Option<Duration>,
    /// Do not echo the console (or QEMU's stderr); it is still captured.
    pub quiet: bool,
    /// Hand our stdin to the guest console. Tests leave this off: parallel QEMUs must not
    /// fight over (and switch to raw mode) the terminal of `cargo test`.
    pub interactive: bool,
    /// Appended verbatim to QEMU's arguments.
    pub extra_qemu_args: Vec<String>,
    /// Typed into the guest's console, in order: each `(marker, bytes)` is sent once the
    /// console has shown `marker` (after the previous one's). For tests of interactive
    /// programs (an emergency shell); makes QEMU's stdin a pipe, so it wins over
    /// `interactive`.
    pub console_replies: Vec<(String, Vec<u8>)>,
    /// The console is also written to this file as it arrives (command mode).
    pub console_file: Option<PathBuf>,
    /// Echo the console on our stderr instead of stdout (command mode: stdout is the
    /// command's).
    pub console_to_stderr: bool,
    /// Let the firmware boot (OVMF from a disk given in `extra_qemu_args`, e.g. a UKI on an
    /// ESP) instead of `-kernel`/`-initrd`/`-append`; `kernel` then only serves the
    /// accelerator's trial boot.
    pub firmware_boot: bool,
    /// Let the guest reboot in the same QEMU run (no `-no-reboot`): boot counting walks
    /// through several boots before the guest powers off.
    pub reboot: bool,
}

impl VmConfig {
    pub fn new(kernel: impl Into<PathBuf>, initrd: Option<PathBuf>, cmdline: String) -> Self {
        VmConfig {
            qemu: PathBuf::from("qemu-system-x86_64"),
            virtiofsd: PathBuf::from("virtiofsd"),
            kernel: kernel.into(),
            initrd,
            cmdline,
            machine: Machine::default(),
            memory_mb: 1024,
            cpus: 1,
            shares: Vec::new(),
            accel: None,
            timeout: None,
            quiet: false,
            interactive: false,
            extra_qemu_args: Vec::new(),
            console_replies: Vec::new(),
            console_file: None,
            console_to_stderr: false,
            firmware_boot: false,
            reboot: false,
        }
    }

    /// The kernel command line QEMU passes: the machine's parameters, then [`Self::cmdline`].
    pub fn full_cmdline(&self) -> String {
        let mut parts: Vec<&str> = self.machine.kernel_params(self.cpus).to_vec();
        if !self.cmdline.trim().is_empty() {
            parts.push(self.cmdline.trim());
        }
        parts.join(" ")
    }
}

/// What happened during one boot.
#[derive(Debug)]
pub struct Outcome {
    /// The whole serial console (lossy UTF-8, `\r\n` line ends as the guest wrote them).
    pub console: String,
    /// QEMU's own diagnostics.
    pub qemu_stderr: String,
    pub qemu_exit: ExitStatus,
    /// The init's `nixboot-status:` line.
    pub status: Option<StatusLine>,
    /// The probe's report.
    pub probe: Option<serde_json::Value>,
    pub panicked: bool,
    /// The kernel announced a power-off (as opposed to a reboot, e.g. after a panic).
    pub powered_off: bool,
    pub timed_out: bool,
    /// Why the caller's watch ([`run_watched`]) stopped QEMU, when it did.
    pub stopped: Option<String>,
    /// From QEMU's start to its exit.
    pub elapsed: Duration,
    pub accel: AccelChoice,
    /// Host-side times since QEMU's start at which these lines arrived.
    pub kernel_started_at: Option<Duration>,
    pub status_at: Option<Duration>,
    pub probe_at: Option<Duration>,
    /// Console protocol breaches (duplicate or unparsable marker lines).
    pub warnings: Vec<String>,
    /// Per tag, whatever virtiofsd printed.
    pub virtiofsd_logs: Vec<(String, String)>,
}

impl Outcome {
    /// QEMU exited by itself with status 0 (with -no-reboot: the guest powered off or
    /// rebooted).
    pub fn qemu_clean_exit(&self) -> bool {
        !self.timed_out && self.stopped.is_none() && self.qemu_exit.success()
    }

    /// Time from the kernel's first line to the probe's report, when both were seen.
    pub fn kernel_to_probe(&self) -> Option<Duration> {
        Some(self.probe_at?.saturating_sub(self.kernel_started_at?))
    }

    /// The last `n` console lines, for assertion messages.
    pub fn console_tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.console.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Boots the VM and waits for QEMU to exit (or the timeout).
pub fn run(cfg: &VmConfig) -> Result<Outcome> {
    run_watched(cfg, &mut |_| None)
}

/// [`run`], asking `watch` every 20 ms while QEMU runs (with the time since its start)
/// whether to stop it: `Some(reason)` kills QEMU and lands in [`Outcome::stopped`].
pub fn run_watched(
    cfg: &VmConfig,
    watch: &mut dyn FnMut(Duration) -> Option<String>,
) -> Result<Outcome> {
    check_config(cfg)?;
    let accel = pick_accel(cfg);
    let console_file = match &cfg.console_file {
        Some(p) => Some(
            std::fs::File::create(p)
                .map_err(|e| Error::io(format!("creating the console file {}", p.display()), e))?,
        ),
        None => None,
    };

    let sockdir = tempfile::Builder::new()
        .prefix("nixboot-qemu.")
        .tempdir()
        .map_err(|e| Error::io("creating a socket directory", e))?;
    let daemons = start_daemons(cfg, sockdir.path())?;

    let (mut child, start) = spawn_qemu(cfg, accel.accel, &daemons)?;
    let readers = Readers::spawn(cfg, &mut child, start, console_file);
    let (status, timed_out, stopped) = wait_qemu(cfg, &mut child, start, watch)?;
    let elapsed = start.elapsed();

    let (console, qemu_stderr) = readers.join();
    let mut virtiofsd_logs = Vec::new();
    for mut d in daemons {
        d.stop();
        virtiofsd_logs.push((d.share.tag.clone(), d.log()));
    }
    drop(sockdir);

    let text = String::from_utf8_lossy(&console.bytes).into_owned();
    let facts = ConsoleFacts::parse(&text);
    Ok(Outcome {
        console: text,
        qemu_stderr,
        qemu_exit: status,
        status: facts.status,
        probe: facts.probe,
        panicked: facts.panicked,
        powered_off: facts.powered_off,
        timed_out,
        stopped,
        elapsed,
        accel,
        kernel_started_at: console.kernel_started_at,
        status_at: console.status_at,
        probe_at: console.probe_at,
        warnings: facts.warnings,
        virtiofsd_logs,
    })
}

/// What can be told wrong before starting anything: missing kernel or initrd, a share tag
/// given twice.
fn check_config(cfg: &VmConfig) -> Result<()> {
    for (what, p) in [
        ("kernel", Some(&cfg.kernel)),
        ("initrd", cfg.initrd.as_ref()),
    ] {
        if let Some(p) = p {
            if !p.is_file() {
                return Err(Error::Config(format!(
                    "{what} {} does not exist",
                    p.display()
                )));
            }
        }
    }
    let mut tags: Vec<&str> = cfg.shares.iter().map(|s| s.tag.as_str()).collect();
    tags.sort_unstable();
    if tags.windows(2).any(|w| w[0] == w[1]) {
        return Err(Error::Config(format!("duplicate share tags: {tags:?}")));
    }
    Ok(())
}

/// The caller's accelerator, else [`accel::choose`]'s; said unless quiet.
fn pick_accel(cfg: &VmConfig) -> AccelChoice {
    let accel = match cfg.accel {
        Some(a) => AccelChoice {
            accel: a,
            reason: "chosen by the caller".into(),
        },
        None => accel::choose(&cfg.qemu, &cfg.kernel),
    };
    if !cfg.quiet {
        eprintln!(
            "nixboot-qemu: accelerator {} ({})",
            accel.accel, accel.reason
        );
    }
    accel
}

/// One virtiofsd per share, each with its socket in `sockdir`.
fn start_daemons(cfg: &VmConfig, sockdir: &Path) -> Result<Vec<Virtiofsd>> {
    let mut daemons = Vec::new();
    for (i, share) in cfg.shares.iter().enumerate() {
        let sock = sockdir.join(format!("vfs{i}.sock"));
        daemons.push(Virtiofsd::start(
            &cfg.virtiofsd,
            share,
            &sock,
            VIRTIOFSD_START_TIMEOUT,
        )?);
    }
    Ok(daemons)
}

/// Starts QEMU with piped output (stdin piped for console replies, the terminal when
/// interactive); returns it with its start time.
fn spawn_qemu(
    cfg: &VmConfig,
    accel: Accel,
    daemons: &[Virtiofsd],
) -> Result<(std::process::Child, Instant)> {
    let args = qemu_args(cfg, accel, daemons);
    let mut cmd = Command::new(&cfg.qemu);
    cmd.args(&args)
        .stdin(if !cfg.console_replies.is_empty() {
            Stdio::piped()
        } else if cfg.interactive {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    crate::die_with_parent(&mut cmd);
    if cfg.interactive && std::io::stdin().is_terminal() {
        eprintln!("nixboot-qemu: the console takes your keyboard; Ctrl-A x quits QEMU");
    }
    let start = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("running {}", cfg.qemu.display()), e))?;
    Ok((child, start))
}

/// The threads reading QEMU's console (stdout) and stderr while it runs.
struct Readers {
    console: JoinHandle<Console>,
    stderr: JoinHandle<Vec<u8>>,
}

impl Readers {
    fn spawn(
        cfg: &VmConfig,
        child: &mut std::process::Child,
        start: Instant,
        console_file: Option<std::fs::File>,
    ) -> Self {
        let echo = match (cfg.quiet, cfg.console_to_stderr) {
            (true, _) => Echo::None,
            (false, false) => Echo::Stdout,
            (false, true) => Echo::Stderr,
        };
        let quiet = cfg.quiet;
        let out = child.stdout.take();
        let replies = Replies {
            pending: cfg.console_replies.clone().into(),
            input: child.stdin.take(),
            search_from: 0,
        };
        let console =
            std::thread::spawn(move || read_console(out, start, echo, console_file, replies));
        let err = child.stderr.take();
        let stderr: JoinHandle<Vec<u8>> = std::thread::spawn(move || {
            let mut sink = (!quiet).then(std::io::stderr);
            let mut all = Vec::new();
            pump(err, |chunk| {
                if let Some(s) = sink.as_mut() {
                    let _ = s.write_all(chunk);
                }
                all.extend_from_slice(chunk);
            });
            all
        });
        Readers { console, stderr }
    }

    /// The console as read, and QEMU's stderr as text (once QEMU has exited).
    fn join(self) -> (Console, String) {
        let console = self.console.join().unwrap_or_default();
        let stderr = String::from_utf8_lossy(&self.stderr.join().unwrap_or_default()).into_owned();
        (console, stderr)
    }
}

/// Waits for QEMU to exit, killing it at the timeout or when `watch` says so; returns its
/// status, whether it timed out, and `watch`'s reason.
fn wait_qemu(
    cfg: &VmConfig,
    child: &mut std::process::Child,
    start: Instant,
    watch: &mut dyn FnMut(Duration) -> Option<String>,
) -> Result<(ExitStatus, bool, Option<String>)> {
    let mut timed_out = false;
    let mut stopped = None;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {}
            Err(e) => return Err(Error::io("waiting for QEMU", e)),
        }
        if cfg.timeout.is_some_and(|t| start.elapsed() >= t) {
            timed_out = true;
            let _ = child.kill();
            break child.wait().map_err(|e| Error::io("waiting for QEMU", e))?;
        }
        if let Some(reason) = watch(start.elapsed()) {
            stopped = Some(reason);
            let _ = child.kill();
            break child.wait().map_err(|e| Error::io("waiting for QEMU", e))?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok((status, timed_out, stopped))
}

/// The QEMU command line (without the binary).
pub fn qemu_args(cfg: &VmConfig, accel: Accel, daemons: &[Virtiofsd]) -> Vec<String> {
    let sockets: Vec<(&str, &Path)> = daemons
        .iter()
        .map(|d| (d.share.tag.as_str(), d.socket.as_path()))
        .collect();
    args_for(cfg, accel, &sockets)
}

/// [`qemu_args`] with each share's tag and virtiofsd socket.
fn args_for(cfg: &VmConfig, accel: Accel, sockets: &[(&str, &Path)]) -> Vec<String> {
    let mut a: Vec<String> = accel.qemu_args().iter().map(|s| s.to_string()).collect();
    let mem = cfg.memory_mb;
    a.extend([
        "-m".into(),
        format!("{mem}M"),
        "-smp".into(),
        cfg.cpus.to_string(),
        // vhost-user needs guest RAM in a shareable memfd (the machine's memory-backend:
        // microvm has no NUMA nodes to hang it on).
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
        "-machine".into(),
        format!("{},memory-backend=mem", cfg.machine.qemu_machine()),
    ]);
    for (i, (tag, socket)) in sockets.iter().enumerate() {
        a.push("-chardev".into());
        a.push(format!(
            "socket,id=vfs{i},path={}",
            qemu_escape(&socket.display().to_string())
        ));
        a.push("-device".into());
        a.push(format!(
            "{},chardev=vfs{i},tag={tag}",
            cfg.machine.virtio_device("vhost-user-fs"),
        ));
    }
    if !cfg.firmware_boot {
        a.push("-kernel".into());
        a.push(qemu_path(&cfg.kernel));
        if let Some(initrd) = &cfg.initrd {
            a.push("-initrd".into());
            a.push(qemu_path(initrd));
        }
        a.push("-append".into());
        a.push(cfg.full_cmdline());
    }
    if !cfg.reboot {
        a.push("-no-reboot".into());
    }
    a.extend(
        [
            // Not -nographic: that also turns on SeaBIOS's serial console, whose screen
            // clearing escapes would wipe the user's terminal.
            "-display",
            "none",
            "-nodefaults",
            // The console multiplexed with the monitor, as -serial mon:stdio does, so an
            // interactive user gets Ctrl-A x; signal=off sends Ctrl-C to the guest.
            "-chardev",
            "stdio,id=con,mux=on,signal=off",
            "-serial",
            "chardev:con",
            "-mon",
            "chardev=con,mode=readline",
        ]
        .into_iter()
        .map(String::from),
    );
    a.extend(cfg.extra_qemu_args.iter().cloned());
    a
}

/// A value inside one of QEMU's comma-separated option lists (`path=`, `file=`): commas
/// are doubled.
pub(crate) fn qemu_escape(s: &str) -> String {
    s.replace(',', ",,")
}

fn qemu_path(p: &Path) -> String {
    p.display().to_string()
}

#[derive(Default)]
struct Console {
    bytes: Vec<u8>,
    kernel_started_at: Option<Duration>,
    status_at: Option<Duration>,
    probe_at: Option<Duration>,
}

/// [`VmConfig::console_replies`] still to send, and where to send them.
struct Replies {
    pending: std::collections::VecDeque<(String, Vec<u8>)>,
    input: Option<std::process::ChildStdin>,
    /// Console offset after the last marker answered.
    search_from: usize,
}

impl Replies {
    /// Sends every reply whose marker has appeared in `console`.
    fn answer(&mut self, console: &[u8]) {
        while let Some((marker, bytes)) = self.pending.front() {
            let hay = &console[self.search_from.min(console.len())..];
            let Some(pos) = hay
                .windows(marker.len().max(1))
                .position(|w| w == marker.as_bytes())
            else {
                return;
            };
            self.search_from += pos + marker.len();
            if let Some(input) = self.input.as_mut() {
                let _ = input.write_all(bytes);
                let _ = input.flush();
            }
            self.pending.pop_front();
        }
    }
}

/// Where the console is echoed.
#[derive(Clone, Copy)]
enum Echo {
    None,
    Stdout,
    Stderr,
}

/// Streams the console to our stdout (or stderr, or a file) and keeps a copy, noting when key lines arrive and
/// answering [`VmConfig::console_replies`].
fn read_console(
    out: Option<std::process::ChildStdout>,
    start: Instant,
    echo: Echo,
    mut file: Option<std::fs::File>,
    mut replies: Replies,
) -> Console {
    let mut c = Console::default();
    let mut line_start = 0;
    pump(out, |chunk| {
        let _ = match echo {
            Echo::None => Ok(()),
            Echo::Stdout => std::io::stdout()
                .write_all(chunk)
                .and_then(|_| std::io::stdout().flush()),
            Echo::Stderr => std::io::stderr().write_all(chunk),
        };
        if let Some(f) = file.as_mut() {
            let _ = f.write_all(chunk);
        }
        c.bytes.extend_from_slice(chunk);
        replies.answer(&c.bytes);
        while let Some(nl) = c.bytes[line_start..].iter().position(|b| *b == b'\n') {
            let line = &c.bytes[line_start..line_start + nl];
            let now = start.elapsed();
            let has = |m: &str| line.windows(m.len()).any(|w| w == m.as_bytes());
            if c.kernel_started_at.is_none() && has("Linux version") {
                c.kernel_started_at = Some(now);
            }
            if c.status_at.is_none() && has(STATUS_MARKER) {
                c.status_at = Some(now);
            }
            if c.probe_at.is_none() && has(PROBE_MARKER) {
                c.probe_at = Some(now);
            }
            line_start += nl + 1;
        }
    });
    c
}

/// Reads `r` to its end, handing each chunk to `f` as it arrives.
fn pump<R: Read>(r: Option<R>, mut f: impl FnMut(&[u8])) {
    let Some(mut r) = r else { return };
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => f(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_shape() {
        let mut cfg = VmConfig::new("/k", Some("/i".into()), "console=ttyS0 x".into());
        cfg.memory_mb = 512;
        cfg.cpus = 2;
        let a = qemu_args(&cfg, Accel::Tcg, &[]);
        let joined = a.join(" ");
        assert!(
            joined.starts_with("-accel tcg -cpu max -m 512M -smp 2 "),
            "{joined}"
        );
        assert!(joined.contains("memory-backend-memfd,id=mem,size=512M,share=on"));
        assert!(joined.contains("-kernel /k -initrd /i -append"));
        let i = a.iter().position(|x| x == "-append").unwrap();
        // The default machine (q35) needs no parameters (see Machine::kernel_params).
        assert_eq!(a[i + 1], "console=ttyS0 x");
        assert!(joined.contains("-no-reboot"));
        assert_eq!(qemu_escape("/a,b"), "/a,,b");
    }

    #[test]
    fn firmware_boot_leaves_the_kernel_to_the_firmware() {
        let mut cfg = VmConfig::new("/k", Some("/i".into()), "x".into());
        cfg.firmware_boot = true;
        cfg.extra_qemu_args = vec!["-drive".into(), "file=esp.img".into()];
        let a = qemu_args(&cfg, Accel::Tcg, &[]);
        for gone in ["-kernel", "-initrd", "-append"] {
            assert!(!a.iter().any(|x| x == gone), "{a:?}");
        }
        assert!(a.ends_with(&["-drive".to_string(), "file=esp.img".to_string()]));
        assert!(a.iter().any(|x| x == "-no-reboot"));
        cfg.reboot = true;
        let a = qemu_args(&cfg, Accel::Tcg, &[]);
        assert!(!a.iter().any(|x| x == "-no-reboot"), "{a:?}");
    }

    #[test]
    fn the_machine_picks_devices_and_kernel_parameters() {
        let mut cfg = VmConfig::new("/k", None, "console=ttyS0 x".into());
        let fs_device = |cfg: &VmConfig| {
            let a = args_for(cfg, Accel::Tcg, &[("store", Path::new("/s/v.sock"))]);
            let i = a.iter().position(|x| x.contains("chardev=vfs0")).unwrap();
            let m = a
                .iter()
                .position(|x| x.contains("memory-backend=mem"))
                .unwrap();
            let append = a.iter().position(|x| x == "-append").unwrap();
            (a[i].clone(), a[m].clone(), a[append + 1].clone())
        };
        assert_eq!(
            fs_device(&cfg),
            (
                "vhost-user-fs-pci,chardev=vfs0,tag=store".into(),
                "q35,memory-backend=mem".into(),
                "console=ttyS0 x".into()
            )
        );
        cfg.machine = Machine::Pc;
        assert_eq!(
            fs_device(&cfg).1,
            "pc,memory-backend=mem",
            "pc keeps the BIOS routing with one vCPU"
        );
        assert_eq!(fs_device(&cfg).2, "pci=noacpi pci=nomsi console=ttyS0 x");
        cfg.machine = Machine::Microvm;
        let (dev, machine, append) = fs_device(&cfg);
        assert_eq!(dev, "vhost-user-fs-device,chardev=vfs0,tag=store");
        assert!(machine.starts_with("microvm,"), "{machine}");
        assert_eq!(append, "console=ttyS0 x");
    }

    #[test]
    fn replies_follow_their_markers_in_order() {
        let mut r = Replies {
            pending: vec![
                ("a> ".to_string(), b"1".to_vec()),
                ("a> ".to_string(), b"2".to_vec()),
            ]
            .into(),
            input: None,
            search_from: 0,
        };
        r.answer(b"boot... a");
        assert_eq!(r.pending.len(), 2);
        r.answer(b"boot... a> ");
        assert_eq!(r.pending.len(), 1, "the second waits for a second marker");
        r.answer(b"boot... a> x a> ");
        assert!(r.pending.is_empty());
    }
}
