//! Command mode end to end: `nixboot-qemu --exec CMD` run as a user runs it, on a closure
//! without systemd (the probe's, with Debian's static busybox as a store path giving
//! `sw/bin/sh`), served by the init's runner. The command's stdout and stderr must come
//! back apart from each other and from the console, byte for byte, and its status must be
//! the launcher's; a guest that never starts the command gets exit 125 within the bound.
//!
//! Guest kernels: 6.1 only (the launcher's command channel, host side).

mod common;

use common::{kit, Kit, BOOT_TIMEOUT, FAILURE_BOUND};
use qemu_tests::artifacts::{self, fake_store_name};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// One VM at a time from this binary: the boots are short, the machine is shared.
static ONE_VM: Mutex<()> = Mutex::new(());

fn launcher() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        artifacts::host_binary("nixboot-launcher", "nixboot-qemu").expect("building nixboot-qemu")
    })
}

/// The probe's closure with `sw` -> a busybox store path, and an initrd that loads
/// virtio_console with the virtiofs modules.
struct ExecClosure {
    kit: Kit,
    /// The launcher's `--timeout`.
    timeout: Duration,
    store: PathBuf,
    system: PathBuf,
    initrd: PathBuf,
}

fn closure(test: &str) -> Option<ExecClosure> {
    let kit = kit(test)?;
    let probe = kit.probe_store("store");
    let busybox = probe.store.join(fake_store_name(test, "busybox"));
    let bin = busybox.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(kit.busybox(), bin.join("busybox")).unwrap();
    // The source, not the fresh copy: another test thread's fork can still hold the copy's
    // write descriptor open, and exec'ing it fails with ETXTBSY (seen in CI).
    let list = Command::new(kit.busybox()).arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
    }
    let guest = format!(
        "/nix/store/{}",
        busybox.file_name().unwrap().to_str().unwrap()
    );
    std::os::unix::fs::symlink(guest, probe.system.join("sw")).unwrap();
    let initrd = kit.initrd(
        Some(&probe.system),
        &["virtio_pci", "virtiofs", "virtio_console"],
    );
    let initrd = kit.write_initrd("initrd", &initrd.bytes);
    Some(ExecClosure {
        timeout: BOOT_TIMEOUT,
        store: probe.store,
        system: probe.system,
        initrd,
        kit,
    })
}

impl ExecClosure {
    /// `nixboot-qemu --closure ... --exec CMD EXTRA...`; its output and how long it took.
    fn exec(&self, command: &str, extra: &[&str]) -> (Output, Duration) {
        self.exec_in(Path::new("."), command, extra)
    }

    /// [`Self::exec`] with the launcher started in `dir`.
    fn exec_in(&self, dir: &Path, command: &str, extra: &[&str]) -> (Output, Duration) {
        let mut args = extra.to_vec();
        args.extend(["--exec", command]);
        self.launch(dir, &args, None)
    }

    /// The launcher with `args`, `input` on its stdin.
    fn run_with_input(&self, args: &[&str], input: &[u8]) -> (Output, Duration) {
        self.launch(Path::new("."), args, Some(input))
    }

    /// `nixboot-qemu --closure ... ARGS...` in `dir`; stdin is `input`, else /dev/null.
    fn launch(&self, dir: &Path, args: &[&str], input: Option<&[u8]>) -> (Output, Duration) {
        let env = &self.kit.env;
        let mut cmd = Command::new(launcher());
        cmd.current_dir(dir);
        cmd.arg("--closure")
            .arg(&self.system)
            .arg("--store")
            .arg(&self.store)
            .arg("--kernel")
            .arg(&env.kernel)
            .arg("--initrd")
            .arg(&self.initrd)
            .arg("--modules")
            .arg(&env.modules)
            .arg("--qemu")
            .arg(&env.qemu)
            .arg("--virtiofsd")
            .arg(&env.virtiofsd)
            .arg("--timeout")
            .arg(self.timeout.as_secs().to_string())
            .arg("--console-log")
            .arg(self.kit.path("console.log"))
            .args(args);
        let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
        let t = Instant::now();
        let out = run_fed(&mut cmd, input);
        let took = t.elapsed();
        eprintln!(
            "{}: {:?} -> {} in {took:?}; stderr: {}",
            self.kit.test,
            args,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        (out, took)
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.kit.path("console.log")).unwrap_or_default()
    }

    fn context(&self, out: &Output) -> String {
        let console = self.console();
        let tail: Vec<&str> = console.lines().rev().take(40).collect();
        format!(
            "\n--- stderr ---\n{}\n--- console tail ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

#[test]
fn output_comes_back_apart_from_errors_and_console() {
    let Some(c) = closure("exec_output") else {
        return;
    };
    let (out, _) = c.exec("uname -r; echo out-2; echo err-1 >&2; id -u", &[]);
    let ctx = c.context(&out);
    assert_eq!(out.status.code(), Some(0), "{ctx}");
    let release = c.kit.env.modules.file_name().unwrap().to_str().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{release}\nout-2\n0\n"),
        "{ctx}"
    );
    // Nothing of the launcher's, QEMU's or the console's: only the command's stderr.
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err-1\n", "{ctx}");
    let console = c.console();
    assert!(console.contains("nixboot-status: status=ok"), "{ctx}");
    assert!(
        console.contains("exec-command: exited with status 0"),
        "{ctx}"
    );
}

#[test]
fn the_commands_status_is_the_launchers() {
    let Some(c) = closure("exec_status") else {
        return;
    };
    let (out, _) = c.exec("echo before; exit 3", &[]);
    let ctx = c.context(&out);
    assert_eq!(out.status.code(), Some(3), "{ctx}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "before\n", "{ctx}");
    // A command killed by a signal: the shell's 128+N.
    let (out, _) = c.exec("kill -9 $$", &[]);
    assert_eq!(out.status.code(), Some(128 + 9), "{}", c.context(&out));
}

/// `--cpus N` is N CPUs in the guest, on the default machine (q35) and on `pc`, with no
/// kernel WARNING. `pci=noacpi pci=nomsi` (which hide the MADT and every CPU but the
/// first) are `pc`'s with one vCPU only (`Machine::kernel_params`): booted here too, the
/// one special case of the machines.
#[test]
fn the_guest_gets_the_cpus_asked_for() {
    let Some(c) = closure("exec_cpus") else {
        return;
    };
    for (machine, cpus) in [(None, "2"), (Some("pc"), "2"), (Some("pc"), "1")] {
        let mut args = vec!["--cpus", cpus];
        args.extend(machine.iter().flat_map(|m| ["--machine", *m]));
        let (out, _) = c.exec("grep -c ^processor /proc/cpuinfo; cat /proc/cmdline", &args);
        let ctx = format!("machine {machine:?}, {cpus} vCPUs: {}", c.context(&out));
        assert_eq!(out.status.code(), Some(0), "{ctx}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut lines = stdout.lines();
        assert_eq!(lines.next(), Some(cpus), "{ctx}");
        let noacpi = lines.next().unwrap_or("").contains("pci=noacpi pci=nomsi");
        assert_eq!(noacpi, machine == Some("pc") && cpus == "1", "{ctx}");
        let console = c.console();
        // With those words the kernel finds no local APIC (one CPU, the PIC): expected there,
        // a lost CPU anywhere else.
        assert_eq!(console.contains("No local APIC present"), noacpi, "{ctx}");
        assert!(!console.contains("WARNING:"), "{ctx}");
    }
}

/// The kernel's crypto self-tests are skipped by default (`bootspec::BASE_PARAMS`:
/// `cryptomgr.notests`, a quarter of a second of every boot under TCG), and the user's
/// `--append cryptomgr.notests=0` brings them back: its word comes last and wins.
#[test]
fn crypto_self_tests_are_skipped_unless_asked_for() {
    let Some(c) = closure("exec_notests") else {
        return;
    };
    let cmd = "cat /sys/module/cryptomgr/parameters/notests";
    for (args, want) in [
        (vec![], "Y"),
        (vec!["--append", "cryptomgr.notests=0"], "N"),
    ] {
        let (out, _) = c.exec(cmd, &args);
        let ctx = format!("{args:?}: {}", c.context(&out));
        assert_eq!(out.status.code(), Some(0), "{ctx}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want, "{ctx}");
        let console = c.console();
        assert_eq!(
            console.contains("alg: self-tests disabled"),
            want == "Y",
            "{ctx}"
        );
    }
}

#[test]
fn megabytes_arrive_whole() {
    let Some(c) = closure("exec_megabytes") else {
        return;
    };
    const SIZE: usize = 8 << 20;
    let (out, _) = c.exec(
        &format!("head -c {SIZE} /dev/urandom > blob; cat blob; sha256sum blob >&2"),
        &[],
    );
    let ctx = c.context(&out);
    assert_eq!(out.status.code(), Some(0), "{ctx}");
    assert_eq!(out.stdout.len(), SIZE, "{ctx}");
    let host = c.kit.path("blob");
    std::fs::write(&host, &out.stdout).unwrap();
    let sum = Command::new("sha256sum").arg(&host).output().unwrap();
    let host_sum = String::from_utf8_lossy(&sum.stdout);
    let guest_sum = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        host_sum.split_whitespace().next(),
        guest_sum.split_whitespace().next(),
        "{ctx}"
    );
}

#[test]
fn a_guest_that_never_starts_the_command_gets_125() {
    let Some(c) = closure("exec_never") else {
        return;
    };
    // The init fails (no such init) and powers off: 125 at once, naming the failed step.
    let (out, took) = c.exec("echo never", &["--append", "init=/nix/store/none/init"]);
    let err = String::from_utf8_lossy(&out.stderr);
    let ctx = c.context(&out);
    assert_eq!(out.status.code(), Some(125), "{ctx}");
    assert!(out.stdout.is_empty(), "{ctx}");
    assert!(took < FAILURE_BOUND, "took {took:?}{ctx}");
    assert!(
        err.contains("the guest never started \"echo never\""),
        "{ctx}"
    );
    assert!(err.contains("boot failed at step check-init"), "{ctx}");
    let log = c.kit.path("console.log");
    assert!(
        err.contains(&format!("console: {}", log.display())),
        "{ctx}"
    );

    // The same guest halting instead: only the bounded wait ends it.
    let bound = 40;
    let (out, took) = c.exec(
        "echo never",
        &[
            "--append",
            "init=/nix/store/none/init rd.emergency=halt",
            "--exec-timeout",
            &bound.to_string(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let ctx = c.context(&out);
    assert_eq!(out.status.code(), Some(125), "{ctx}");
    assert!(err.contains("gave up after --exec-timeout 40s"), "{ctx}");
    assert!(
        took >= Duration::from_secs(bound) && took < Duration::from_secs(bound + 20),
        "took {took:?}{ctx}"
    );
}

#[test]
fn share_cwd_puts_the_hosts_directory_at_its_own_path() {
    let Some(c) = closure("exec_cwd") else { return };
    let dir = c.kit.path("work dir");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("input"), "from the host\n").unwrap();
    let (out, _) = c.exec_in(
        &dir,
        "pwd; cat input; echo from the guest > output",
        &["--share-cwd"],
    );
    let ctx = c.context(&out);
    assert_eq!(out.status.code(), Some(0), "{ctx}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\nfrom the host\n", dir.display()),
        "{ctx}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("output")).unwrap_or_default(),
        "from the guest\n",
        "{ctx}"
    );
}

/// The NixOS agent (nixos/exec-agent.sh) on the host, against plain files standing in for
/// /proc/cmdline, sysfs and the port devices: the same formats as the init's runner.
#[test]
fn the_nixos_agent_speaks_the_same_protocol() {
    use nixboot_protocol::exec::{cmdline_param, StatusMsg, STATUS_PORT, STDERR_PORT, STDOUT_PORT};
    let t = tempfile::tempdir().unwrap();
    let dir = |p: &str| {
        let d = t.path().join(p);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let (sys, dev) = (dir("sys"), dir("dev"));
    for (i, name) in [STDOUT_PORT, STDERR_PORT, STATUS_PORT].iter().enumerate() {
        std::fs::write(
            dir(&format!("sys/vport1p{i}")).join("name"),
            format!("{name}\n"),
        )
        .unwrap();
        std::fs::write(dev.join(format!("vport1p{i}")), "").unwrap();
    }
    let agent = artifacts::workspace_root().join("nixos/exec-agent.sh");
    let run = |cmdline: &str| {
        std::fs::write(t.path().join("cmdline"), cmdline).unwrap();
        let off = t.path().join("off");
        let _ = std::fs::remove_file(&off);
        let out = Command::new("bash")
            .arg(&agent)
            .env("NIXBOOT_EXEC_CMDLINE", t.path().join("cmdline"))
            .env("NIXBOOT_EXEC_PORTS", &sys)
            .env("NIXBOOT_EXEC_DEV", &dev)
            .env("NIXBOOT_EXEC_POWEROFF", format!("touch {}", off.display()))
            .output()
            .unwrap();
        (out, off.exists())
    };
    let read = |i: usize| std::fs::read_to_string(dev.join(format!("vport1p{i}"))).unwrap();

    let command = "echo \"out 1\"; echo 'err 1' >&2; echo $HOME; exit 3";
    let (out, off) = run(&format!("console=ttyS0 {} quiet\n", cmdline_param(command)));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(off, "the agent did not power off: {log}");
    assert_eq!(read(0), "out 1\n/root\n", "{log}");
    assert_eq!(read(1), "err 1\n", "{log}");
    assert_eq!(
        read(2),
        StatusMsg::Started.line() + &StatusMsg::Exit(3).line(),
        "{log}"
    );

    // No command on the command line: nothing run, no power-off.
    let (out, off) = run("console=ttyS0 quiet\n");
    assert!(out.status.success() && !off);
}

/// A real systemd (Debian's 252, the NixOS-shaped scripted closure of
/// `qemu_tests::nixos_closure`) whose toplevel is derived with the agent's unit (after
/// multi-user.target), the marker, and without the report unit (the agent powers off).
fn agent_closure(test: &str) -> Option<ExecClosure> {
    use qemu_tests::nixos_closure::{self, Flavour, RealParts};
    let kit = kit(test)?;
    let parts = match RealParts::from_env() {
        Ok(p) => p,
        Err(e) => {
            artifacts::skip(test, &e);
            return None;
        }
    };
    let cache = std::env::var_os("NIXBOOT_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/nixboot")))
        .unwrap();
    let built = nixos_closure::build(&parts, &cache).expect("the NixOS-shaped store");
    let store = kit.path("store");
    sh(&format!(
        "cp -al '{}' '{}'",
        built.dir.display(),
        store.display()
    ));
    let top = built.toplevel(Flavour::Scripted);
    let top_name = top.trim_start_matches("/nix/store/");
    let etc = std::fs::read_link(store.join(top_name).join("etc")).unwrap();
    let etc_name = etc
        .to_str()
        .unwrap()
        .trim_start_matches("/nix/store/")
        .trim_end_matches("/etc");
    let (new_etc, new_top) = (
        fake_store_name(test, "etc-exec"),
        fake_store_name(test, "nixos-system-exec"),
    );
    let init = std::fs::read_to_string(store.join(top_name).join("init")).unwrap();
    let bash = init.lines().next().unwrap().trim_start_matches("#!");
    let path = init
        .split("PATH=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let unit = format!(
        "[Unit]\nAfter=multi-user.target\nConditionKernelCommandLine=nixboot.exec\n\n\
         [Service]\nType=oneshot\nEnvironment=PATH=/usr/bin:/usr/sbin:{path}\n\
         ExecStart={bash} /nix/store/{new_top}/exec-agent.sh\nStandardError=journal+console\n"
    );
    let agent = artifacts::workspace_root().join("nixos/exec-agent.sh");
    sh(&format!(
        "set -e; cd '{s}'; cp -a --no-preserve=links {etc_name} {new_etc}; \
         u={new_etc}/etc/systemd/system; rm -f $u/sysinit.target.wants/nixboot-report.service; \
         printf '%s' '{unit}' > $u/nixboot-exec.service; \
         ln -s /etc/systemd/system/nixboot-exec.service $u/multi-user.target.wants/; \
         mkdir {new_top}; cp -P {top_name}/sw {top_name}/systemd {top_name}/kernel-params {new_top}/; \
         ln -s /nix/store/{new_etc}/etc {new_top}/etc; \
         sed 's/{top_name}/{new_top}/g; s/{etc_name}/{new_etc}/g' {top_name}/init > {new_top}/init; \
         sed 's/{top_name}/{new_top}/g; s/{etc_name}/{new_etc}/g' {top_name}/activate > {new_top}/activate; \
         chmod 755 {new_top}/init {new_top}/activate; cp '{agent}' {new_top}/exec-agent.sh; \
         touch {new_top}/nixboot-exec-agent",
        s = store.display(),
        agent = agent.display()
    ));
    let initrd = kit.initrd(None, &["virtio_pci", "virtiofs", "virtio_console"]);
    Some(ExecClosure {
        timeout: SYSTEMD_TIMEOUT,
        initrd: kit.write_initrd("initrd", &initrd.bytes),
        system: store.join(&new_top),
        store,
        kit,
    })
}

/// A real systemd to multi-user.target under TCG: 26-48 s on an idle machine, minutes on
/// 2 cores shared with other builds and boots (as real_systemd.rs's bound, with room).
const SYSTEMD_TIMEOUT: Duration = Duration::from_secs(420);

/// The real-systemd boots' options: multi-user.target by name (Debian's default target is
/// graphical), and a wait for the agent as long as the boot's bound.
const SYSTEMD_ARGS: [&str; 4] = [
    "--append",
    "systemd.show_status=error systemd.unit=multi-user.target",
    "--exec-timeout",
    "400",
];

/// The agent under a real systemd runs the command after multi-user.target; the guest is
/// one as kdevops uses them: two extra disks (`--disk`, a raw one with 512-byte sectors and
/// a qcow2 one with 4096) that Debian's udev links under /dev/disk/by-id by their serials,
/// and the loop module loadable from the shared modules.
#[test]
fn real_systemd_runs_the_command_through_the_agent() {
    let Some(c) = agent_closure("exec_real_systemd") else {
        return;
    };
    let raw = c.kit.path("scratch-512.img");
    std::fs::File::create(&raw)
        .and_then(|f| f.set_len(64 << 20))
        .unwrap();
    let qcow2 = c.kit.path("scratch-4k.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow2)
        .arg("64M")
        .status();
    assert!(
        made.is_ok_and(|s| s.success()),
        "qemu-img create (qemu-utils)"
    );
    let disks = [
        format!("{},serial=nbt-512", raw.display()),
        format!("{},serial=nbt-4k,sector=4096", qcow2.display()),
    ];
    let mut args = SYSTEMD_ARGS.to_vec();
    args.extend(["--disk", &disks[0], "--disk", &disks[1]]);
    let (out, _) = c.exec(
        "echo out-$(id -un) $HOME; echo err-1 >&2; udevadm settle; \
         echo $(ls /dev/disk/by-id | grep virtio- | sort); \
         echo $(cat /sys/block/vda/queue/logical_block_size /sys/block/vdb/queue/physical_block_size); \
         modprobe loop && test -c /dev/loop-control && echo loop-ok; exit 3",
        &args,
    );
    let ctx = c.context(&out);
    assert_eq!(out.status.code(), Some(3), "{ctx}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "out-root /root\nvirtio-nbt-4k virtio-nbt-512\n512 4096\nloop-ok\n",
        "{ctx}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err-1\n", "{ctx}");
    assert!(c.console().contains("nixboot-exec-agent: ["), "{ctx}");
}

/// `--shell` under a real systemd: the agent's pseudo-terminal, fed from a pipe. The
/// shell's output (echo and prompts included) comes back on stdout, its status is ours.
#[test]
fn real_systemd_shell_takes_input_and_gives_its_status() {
    let Some(c) = agent_closure("exec_real_systemd_shell") else {
        return;
    };
    let input = b"echo $((40+2)) $(tty) $(id -un); exit 4\n";
    let mut args = vec!["--shell"];
    args.extend(SYSTEMD_ARGS);
    let (out, _) = c.run_with_input(&args, input);
    let ctx = c.context(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{stdout}{ctx}");
    // Only the command's output has 42 (the echoed input has `$((40+2))`); the shell is
    // root's, on a pseudo-terminal.
    assert!(stdout.contains("42 /dev/pts/"), "{stdout:?}{ctx}");
    assert!(stdout.contains(" root"), "{stdout:?}{ctx}");
}

/// Runs `cmd` to its end with `input` written to its stdin (then closed).
fn run_fed(cmd: &mut Command, input: Option<&[u8]>) -> Output {
    let Some(input) = input else {
        return cmd.output().expect("running nixboot-qemu");
    };
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("running nixboot-qemu");
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, input).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

fn sh(script: &str) {
    let st = Command::new("bash").arg("-c").arg(script).status().unwrap();
    assert!(st.success(), "{script}");
}
