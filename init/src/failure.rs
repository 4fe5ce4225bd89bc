//! The failure policy: tell the user what failed, tried and to check, print the one status
//! line, then run the failure action. Never returns: PID 1 exiting panics the kernel.

use crate::cmdline::Emergency;
use crate::log;
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// A failed step, as reported to the user and the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `step=` of the status line.
    pub step: &'static str,
    /// One line: what went wrong (`error=` of the status line).
    pub error: String,
    /// What was attempted (may be several lines).
    pub tried: Option<String>,
    /// What the user should look at.
    pub check: Option<String>,
}

impl Failure {
    pub fn new(step: &'static str, error: impl Into<String>) -> Self {
        Failure {
            step,
            error: error.into(),
            tried: None,
            check: None,
        }
    }

    pub fn tried(mut self, t: impl Into<String>) -> Self {
        self.tried = Some(t.into());
        self
    }

    pub fn check(mut self, c: impl Into<String>) -> Self {
        self.check = Some(c.into());
        self
    }
}

// Global because the panic hook needs them and has no other way in. Single-threaded.
static ACTION: AtomicU8 = AtomicU8::new(0);
static CURRENT_STEP: Mutex<&str> = Mutex::new("start");
static FAILING: AtomicBool = AtomicBool::new(false);

const ACTIONS: [Emergency; 4] = [
    Emergency::PowerOff,
    Emergency::Reboot,
    Emergency::Halt,
    Emergency::Shell,
];

/// Sets the action taken on failure (from `rd.emergency=`; power off until then).
pub fn set_action(a: Emergency) {
    let i = ACTIONS.iter().position(|x| *x == a).unwrap_or(0);
    ACTION.store(i as u8, Ordering::Relaxed);
}

fn action() -> Emergency {
    ACTIONS
        .get(ACTION.load(Ordering::Relaxed) as usize)
        .copied()
        .unwrap_or_default()
}

/// Records the step being executed, so that a panic can name it.
pub fn set_step(step: &'static str) {
    if let Ok(mut s) = CURRENT_STEP.try_lock() {
        *s = step;
    }
}

fn current_step() -> &'static str {
    CURRENT_STEP.try_lock().map(|s| *s).unwrap_or("unknown")
}

/// Turns any panic into a reported failure plus the failure action. With panic=abort the
/// abort would come after the hook; the hook never returns, so it never comes.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let step = current_step();
        // One line: the status line carries it.
        let error = format!("internal error (panic): {info}").replace('\n', " ");
        fail(Failure::new(step, error).check("this is a bug in nixboot's init; please report it"))
    }));
}

/// Reports the failure and runs the failure action. Never returns.
pub fn fail(f: Failure) -> ! {
    if FAILING.swap(true, Ordering::SeqCst) {
        // Failed (panicked) while failing: skip the reporting, go straight to the action.
        act(Emergency::PowerOff)
    }
    for (i, line) in f.error.lines().enumerate() {
        let lead = if i == 0 { "FAILED: " } else { "  " };
        log::notice(f.step, &format!("{lead}{line}"));
    }
    // Every failure says what to check, even one no step expects.
    let fallback = Some("the kernel log (dmesg) and the lines above".to_string());
    let check = if f.check.is_some() {
        &f.check
    } else {
        &fallback
    };
    for (label, text) in [("tried", &f.tried), ("check", check)] {
        if let Some(text) = text {
            for line in text.lines() {
                log::notice(f.step, &format!("  {label}: {line}"));
            }
        }
    }
    let mut act_as = action();
    if act_as == Emergency::Shell && !shell_exists() {
        log::notice(
            "failure",
            &format!("rd.emergency=shell but there is no {SHELL}; powering off instead"),
        );
        act_as = Emergency::PowerOff;
    }
    log::write_console(log::status_failed(f.step, &f.error, act_as.as_str()).as_bytes());
    act(act_as)
}

const SHELL: &str = "/bin/sh";

fn shell_exists() -> bool {
    rustix::fs::access(SHELL, rustix::fs::Access::EXEC_OK).is_ok()
}

/// Runs the action. A shell runs as a child (an exec'd shell exiting would be PID 1
/// exiting); when it ends we power off.
fn act(a: Emergency) -> ! {
    let (cmd, what) = match a {
        Emergency::Shell => {
            log::notice(
                "failure",
                &format!("starting {SHELL}; leaving it powers off"),
            );
            let mut shell = std::process::Command::new(SHELL);
            // A clean environment: the kernel hands PID 1 every unknown key=value of the
            // command line, which is no business of the shell's.
            shell.env_clear().envs([
                ("HOME", "/"),
                ("TERM", "linux"),
                ("PATH", "/bin:/sbin:/usr/bin:/usr/sbin"),
                ("PS1", "nixboot# "),
            ]);
            // Its own session with the console as controlling tty: job control and Ctrl-C
            // work in the shell and do not reach PID 1.
            // SAFETY: the closure runs between fork and exec and only makes two syscalls.
            unsafe {
                shell.pre_exec(|| {
                    let _ = rustix::process::setsid();
                    let _ = rustix::process::ioctl_tiocsctty(rustix::stdio::stdin());
                    Ok(())
                });
            }
            match shell.spawn() {
                Ok(mut child) => {
                    let _ = child.wait();
                }
                Err(e) => log::notice("failure", &format!("could not start {SHELL}: {e}")),
            }
            (rustix::system::RebootCommand::PowerOff, "power off")
        }
        Emergency::PowerOff => (rustix::system::RebootCommand::PowerOff, "power off"),
        Emergency::Reboot => (rustix::system::RebootCommand::Restart, "reboot"),
        Emergency::Halt => (rustix::system::RebootCommand::Halt, "halt"),
    };
    // Unwritten data (the timings file, logs on disks) goes out before the machine does.
    rustix::fs::sync();
    if let Err(e) = rustix::system::reboot(cmd) {
        log::notice(
            "failure",
            &format!("reboot({what}) failed: {}; sleeping forever", log::errno(e)),
        );
    }
    // Only reached when reboot(2) failed: PID 1 must not exit.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
