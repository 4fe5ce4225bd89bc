//! Command mode for closures without an agent (`nixboot.exec=`, `nixboot-qemu --exec`):
//! after the switch, the init (still PID 1, in the new root) runs the command with a shell
//! of the closure, its stdout and stderr on the virtio-serial ports the launcher reads,
//! reaps every child until the command has ended, writes its status on the status port and
//! powers off. Formats and port names: `nixboot_protocol::exec`.

use crate::failure::{self, fail, Failure};
use crate::log::{self, log, Timings};
use crate::plan::switch::RunCommand;
use crate::wait::{self, Try, WaitError};
use nixboot_protocol::exec::{StatusMsg, STATUS_PORT, STDERR_PORT, STDOUT_PORT};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

const PORTS: [&str; 3] = [STDOUT_PORT, STDERR_PORT, STATUS_PORT];
const PORTS_DIR: &str = "/sys/class/virtio-ports";

/// Runs the command and powers off; returns only when the closure has its own agent
/// ([`RunCommand::agent_marker`]), which the next init will start.
pub fn serve_unless_agent(run: &RunCommand, timings: &Timings) {
    if std::path::Path::new(&run.agent_marker).exists() {
        log(
            "exec-command",
            &format!(
                "{} exists: the closure's agent runs the command",
                run.agent_marker
            ),
        );
        return;
    }
    failure::set_step("exec-ports");
    let [out, err, mut status] = open_ports(run.ports_timeout).unwrap_or_else(|f| fail(f));
    failure::set_step("exec-shell");
    let shell = find_shell(&run.shells).unwrap_or_else(|f| fail(f));

    failure::set_step("exec-command");
    let now = log::now();
    log("timings", &timings.summary(now));
    log("exec-command", &format!("{shell} -l -c {:?}", run.command));
    log::write_console(log::status_ok(&shell, timings.elapsed_ms(now)).as_bytes());
    let _ = status.write_all(StatusMsg::Started.line().as_bytes());
    let code = run_and_reap(run, &shell, out, err);
    log(
        "exec-command",
        &format!(
            "exited with status {code} ({:.1} s)",
            (log::now() - now).as_secs_f64()
        ),
    );
    // Written once the command has ended: its output went out before (port writes return
    // when the host has the data).
    let _ = status.write_all(StatusMsg::Exit(code).line().as_bytes());
    drop(status);
    rustix::fs::sync();
    if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::PowerOff) {
        log::notice(
            "exec-command",
            &format!("power off failed: {}", log::errno(e)),
        );
    }
    // PID 1 must not exit.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The device of each port (`/dev/vportNpM`), found by name in sysfs (no udev here, so no
/// /dev/virtio-ports links), waited for up to `bound`.
fn open_ports(bound: Duration) -> Result<[File; 3], Failure> {
    let found = wait::poll(bound, || {
        let names = port_names();
        let devs: Vec<Option<&String>> = PORTS
            .iter()
            .map(|p| names.iter().find(|(n, _)| n == p).map(|(_, d)| d))
            .collect();
        match devs.iter().position(Option::is_none) {
            None => Try::Ready(devs.into_iter().flatten().cloned().collect::<Vec<_>>()),
            Some(i) => Try::NotYet(PORTS[i]),
        }
    });
    let devs = match found {
        Ok(r) => r.value,
        Err(WaitError::TimedOut { last, .. } | WaitError::Fatal { error: last, .. }) => {
            return Err(Failure::new(
                "exec-ports",
                format!("no virtio-serial port named {last} in {PORTS_DIR}"),
            )
            .tried(format!(
                "waited {} for ports {}",
                crate::cmdline::describe_timeout(bound),
                PORTS.join(", ")
            ))
            .check(
                "the initrd loads virtio_console (mkinitrd --module virtio_console; it is a \
                 module in Debian's kernel) and QEMU has the ports (nixboot-qemu --exec adds them)",
            ));
        }
    };
    let mut files = Vec::new();
    for (dev, name) in devs.iter().zip(PORTS) {
        let f = File::options().write(true).open(dev).map_err(|e| {
            Failure::new(
                "exec-ports",
                format!("cannot open {dev} (port {name}): {e}"),
            )
            .check("the host side of the port (the launcher) is connected")
        })?;
        files.push(f);
    }
    files
        .try_into()
        .map_err(|_| Failure::new("exec-ports", "internal error: three ports expected"))
}

/// `(port name, /dev/NODE)` of every virtio-serial port present.
fn port_names() -> Vec<(String, String)> {
    let Ok(dir) = std::fs::read_dir(PORTS_DIR) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let name = std::fs::read_to_string(e.path().join("name")).ok()?;
            let node = e.file_name().to_str()?.to_string();
            Some((name.trim_end().to_string(), format!("/dev/{node}")))
        })
        .collect()
}

/// The first candidate that is an executable file.
fn find_shell(candidates: &[String]) -> Result<String, Failure> {
    let is_exec = |p: &String| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    candidates.iter().find(|p| is_exec(p)).cloned().ok_or_else(|| {
        Failure::new("exec-shell", "no shell in the closure to run the command")
            .tried(format!("looked for {}", candidates.join(", ")))
            .check("the closure provides a POSIX shell as sw/bin/sh beside its init (or the root has /bin/sh)")
    })
}

/// Starts `shell -l -c COMMAND` and reaps every child until it has ended; its status as a
/// shell reports it (128+N when killed by signal N).
fn run_and_reap(run: &RunCommand, shell: &str, out: File, err: File) -> u8 {
    let home = run
        .env
        .iter()
        .find(|(k, _)| k == "HOME")
        .map_or("/", |(_, v)| v.as_str());
    let _ = std::fs::create_dir_all(home);
    let mut cmd = Command::new(shell);
    cmd.args(["-l", "-c", &run.command])
        .env_clear()
        .envs(run.env.iter().map(|(k, v)| (k, v)))
        .current_dir(match &run.cwd {
            Some(cwd) => cwd.as_str(),
            None if std::path::Path::new(home).is_dir() => home,
            None => "/",
        })
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group: signals meant for it do not reach PID 1.
        .process_group(0);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            log::notice("exec-command", &format!("cannot start {shell}: {e}"));
            return 127;
        }
    };
    let pid = rustix::process::Pid::from_child(&child);
    loop {
        match rustix::process::wait(rustix::process::WaitOptions::empty()) {
            Ok(Some((p, st))) if p == pid => {
                let code = st
                    .exit_status()
                    .or_else(|| st.terminating_signal().map(|s| 128 + s))
                    .unwrap_or(255);
                return u8::try_from(code).unwrap_or(255);
            }
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                log::notice("exec-command", &format!("wait failed: {}", log::errno(e)));
                return 255;
            }
        }
    }
}
