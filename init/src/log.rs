//! Console output: human log lines, the one machine status line, phase timings.
//!
//! The formats are nixboot-protocol's (`console`, `timings`); this module only writes them:
//! straight to fd 1 with write(2), unbuffered, so nothing is lost when we exec or power off
//! right after.

use nixboot_protocol::console::{self, StatusLine};
use nixboot_protocol::timings;
use rustix::fd::AsRawFd;
use std::time::Duration;

/// Seconds since boot (CLOCK_BOOTTIME), the clock the kernel's own log lines use.
pub fn now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Writes bytes to fd 1, retrying short writes and EINTR; errors are dropped (there is no
/// better place to report them, and logging must never stop the boot).
pub fn write_console(bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        match rustix::io::write(rustix::stdio::stdout(), rest) {
            Ok(0) => return,
            Ok(n) => rest = &rest[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `quiet` on the command line (and no `rd.debug`): [`log`] lines are dropped from then on.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, std::sync::atomic::Ordering::Relaxed);
}

/// Logs one informational line (a step done, a note) at the current time; `quiet` hides it.
pub fn log(step: &str, message: &str) {
    if !QUIET.load(std::sync::atomic::Ordering::Relaxed) {
        notice(step, message);
    }
}

/// Logs a line that `quiet` does not hide: warnings and failures.
pub fn notice(step: &str, message: &str) {
    write_console(console::log_line(now(), step, message).as_bytes());
}

/// Makes sure fds 0, 1 and 2 are open. The kernel opens /dev/console for /init when the
/// initramfs has one; when it did not, we open it ourselves (devtmpfs is mounted by now).
/// Returns whether we had to.
pub fn ensure_console() -> rustix::io::Result<bool> {
    use rustix::fd::{BorrowedFd, IntoRawFd};
    let closed = |fd: i32| {
        // SAFETY: only used for fcntl(F_GETFD), which reports EBADF for a closed fd.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        rustix::io::fcntl_getfd(fd) == Err(rustix::io::Errno::BADF)
    };
    let missing: Vec<i32> = (0..3).filter(|fd| closed(*fd)).collect();
    if missing.is_empty() {
        return Ok(false);
    }
    // No O_CLOEXEC: these become the next init's stdio.
    let console = rustix::fs::open(
        "/dev/console",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY,
        rustix::fs::Mode::empty(),
    )?;
    for fd in missing {
        match fd {
            0 => rustix::stdio::dup2_stdin(&console)?,
            1 => rustix::stdio::dup2_stdout(&console)?,
            _ => rustix::stdio::dup2_stderr(&console)?,
        }
    }
    // open(2) took the lowest free fd: if that is one of 0-2 it must stay open.
    if console.as_raw_fd() <= 2 {
        let _ = console.into_raw_fd();
    }
    Ok(true)
}

/// The success line, printed right before exec.
pub fn status_ok(init: &str, initrd_ms: u64) -> String {
    format!("{}\n", StatusLine::ok(init, initrd_ms))
}

/// The failure line, printed right before the failure action.
pub fn status_failed(step: &str, error: &str, action: &str) -> String {
    format!("{}\n", StatusLine::failed(step, error, action))
}

/// One timed phase of the boot.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    /// What ran (`load-module virtio_ring`, `mount-store`, ...).
    pub name: String,
    /// Start, since boot.
    pub start: Duration,
    pub duration: Duration,
}

/// Phase timings, kept for `/run/nixboot/timings.json`.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// When the init started, since boot.
    pub init_start: Duration,
    pub phases: Vec<Phase>,
}

impl Timings {
    pub fn new(init_start: Duration) -> Self {
        Timings {
            init_start,
            phases: Vec::new(),
        }
    }

    pub fn record(&mut self, name: impl Into<String>, start: Duration, end: Duration) {
        self.phases.push(Phase {
            name: name.into(),
            start,
            duration: end.saturating_sub(start),
        });
    }

    /// Milliseconds from the init's start to `at`.
    pub fn elapsed_ms(&self, at: Duration) -> u64 {
        at.saturating_sub(self.init_start).as_millis() as u64
    }

    /// Sums per kind of work, in boot order (nixboot_protocol::timings::totals).
    pub fn totals(&self) -> Vec<(&'static str, Duration)> {
        timings::totals(self.phases.iter().map(|p| (p.name.as_str(), p.duration)))
            .into_iter()
            .map(|(k, d)| (k.name(), d))
            .collect()
    }

    /// One console line: `modules 31.2 ms, device-waits 0.4 ms, ...; 87 ms since start`.
    pub fn summary(&self, at: Duration) -> String {
        let parts: Vec<String> = self
            .totals()
            .iter()
            .map(|(k, d)| format!("{k} {:.1} ms", d.as_secs_f64() * 1000.0))
            .collect();
        format!(
            "{}; {} ms since the init started",
            parts.join(", "),
            self.elapsed_ms(at)
        )
    }

    /// The text of `/run/nixboot/timings.json`, written `written_at` since boot.
    pub fn to_json(&self, written_at: Duration) -> String {
        let phases: Vec<(String, Duration, Duration)> = self
            .phases
            .iter()
            .map(|p| (p.name.clone(), p.start, p.duration))
            .collect();
        timings::Timings::new(self.init_start, written_at, &phases).to_json()
    }
}

/// `EINVAL (Invalid argument)`: the symbolic name a reader can search for, and the text.
pub fn errno(e: rustix::io::Errno) -> String {
    let raw = e.raw_os_error();
    let text = std::io::Error::from_raw_os_error(raw).to_string();
    // std appends " (os error N)"; the name already identifies it.
    let text = text.split(" (os error").next().unwrap_or("").to_string();
    match errno_name(raw) {
        Some(name) => format!("{name} ({text})"),
        None => format!("errno {raw} ({text})"),
    }
}

fn errno_name(raw: i32) -> Option<&'static str> {
    use rustix::io::Errno as E;
    let table = [
        (E::PERM, "EPERM"),
        (E::NOENT, "ENOENT"),
        (E::INTR, "EINTR"),
        (E::IO, "EIO"),
        (E::NXIO, "ENXIO"),
        (E::NOEXEC, "ENOEXEC"),
        (E::BADF, "EBADF"),
        (E::AGAIN, "EAGAIN"),
        (E::NOMEM, "ENOMEM"),
        (E::ACCESS, "EACCES"),
        (E::FAULT, "EFAULT"),
        (E::BUSY, "EBUSY"),
        (E::EXIST, "EEXIST"),
        (E::XDEV, "EXDEV"),
        (E::NODEV, "ENODEV"),
        (E::NOTDIR, "ENOTDIR"),
        (E::ISDIR, "EISDIR"),
        (E::INVAL, "EINVAL"),
        (E::NOSPC, "ENOSPC"),
        (E::ROFS, "EROFS"),
        (E::NAMETOOLONG, "ENAMETOOLONG"),
        (E::NOSYS, "ENOSYS"),
        (E::NOTEMPTY, "ENOTEMPTY"),
        (E::LOOP, "ELOOP"),
        (E::BADMSG, "EBADMSG"),
        (E::NOTSUP, "EOPNOTSUPP"),
        (E::TIMEDOUT, "ETIMEDOUT"),
        (E::KEYREJECTED, "EKEYREJECTED"),
        (E::NOKEY, "ENOKEY"),
        (E::TXTBSY, "ETXTBSY"),
        (E::TOOBIG, "E2BIG"),
    ];
    table
        .iter()
        .find(|(e, _)| e.raw_os_error() == raw)
        .map(|(_, n)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names() {
        assert_eq!(errno(rustix::io::Errno::INVAL), "EINVAL (Invalid argument)");
        assert!(errno(rustix::io::Errno::from_raw_os_error(4000)).starts_with("errno 4000 ("));
    }

    #[test]
    fn status_lines_end_the_line() {
        assert_eq!(
            status_ok("/nix/store/..-x/init", 87),
            "nixboot-status: status=ok step=exec init=/nix/store/..-x/init initrd_ms=87\n"
        );
        let failed = status_failed("exec", "execve failed", "poweroff");
        assert!(failed.ends_with("action=poweroff\n"), "{failed}");
    }

    #[test]
    fn timings_json_is_the_protocol_file() {
        let mut t = Timings::new(Duration::from_millis(500));
        t.record(
            "load-module virtio_ring",
            Duration::from_millis(501),
            Duration::from_micros(502_500),
        );
        let json = t.to_json(Duration::from_millis(587));
        let back = timings::Timings::from_json(&json).unwrap();
        assert_eq!(back.initrd_ms, 87);
        assert_eq!(back.init_start_ms, 500.0);
        assert_eq!(back.totals_ms.modules, Some(1.5));
        assert_eq!(back.phases[0].step, "load-module virtio_ring");
        assert_eq!(back.phases[0].start_ms, 501.0);
    }

    #[test]
    fn summary_names_each_kind_and_the_time_since_start() {
        // The classification itself is protocol::timings' (tested there); this is the
        // console line built from it.
        let mut t = Timings::new(Duration::ZERO);
        let ms = Duration::from_millis;
        for (name, d) in [
            ("early-mounts", 1),
            ("load-module a", 2),
            ("load-module b", 3),
        ] {
            t.record(name, ms(0), ms(d));
        }
        assert_eq!(t.totals(), [("setup", ms(1)), ("modules", ms(5))]);
        assert_eq!(
            t.summary(ms(100)),
            "setup 1.0 ms, modules 5.0 ms; 100 ms since the init started"
        );
    }
}
