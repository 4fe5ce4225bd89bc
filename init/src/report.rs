//! Console output: human log lines, the one machine status line, phase timings.
//!
//! The formatting functions are pure (unit-tested); the writers go straight to fd 1 with
//! write(2), unbuffered, so nothing is lost when we exec or power off right after.

use rustix::fd::AsRawFd;
use std::fmt::Write as _;
use std::time::Duration;

/// Seconds since boot (CLOCK_BOOTTIME), the clock the kernel's own log lines use.
pub fn now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// `nixboot: [  1.234567] <step>: <message>` (docs/contracts-internal.md).
pub fn format_line(at: Duration, step: &str, message: &str) -> String {
    format!(
        "nixboot: [{:3}.{:06}] {step}: {message}\n",
        at.as_secs(),
        at.subsec_micros()
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
    write_console(format_line(now(), step, message).as_bytes());
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

/// Quotes a status-line value: a value containing a space, `"` or `\` (or empty) is wrapped
/// in double quotes with `\"` and `\\` escapes. Control characters (a newline would split
/// the line a host parses) become spaces first.
pub fn quote_value(value: &str) -> String {
    let clean: String = value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if !clean.is_empty() && !clean.contains([' ', '"', '\\']) {
        return clean;
    }
    let mut out = String::with_capacity(clean.len() + 2);
    out.push('"');
    for c in clean.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `nixboot-status: k=v k=v ...` with every value quoted as needed.
pub fn status_line(pairs: &[(&str, &str)]) -> String {
    let mut line = String::from("nixboot-status:");
    for (k, v) in pairs {
        let _ = write!(line, " {k}={}", quote_value(v));
    }
    line.push('\n');
    line
}

/// The success line, printed right before exec.
pub fn status_ok(init: &str, initrd_ms: u64) -> String {
    status_line(&[
        ("status", "ok"),
        ("step", "exec"),
        ("init", init),
        ("initrd_ms", &initrd_ms.to_string()),
    ])
}

/// The failure line, printed right before the failure action.
pub fn status_failed(step: &str, error: &str, action: &str) -> String {
    status_line(&[
        ("status", "failed"),
        ("step", step),
        ("error", error),
        ("action", action),
    ])
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

    /// Sums per kind of work, in a fixed order, for the console summary and the JSON
    /// (`device-waits` are block-device waits; virtiofs waits are part of their mounts,
    /// because on 6.1 the mount is the wait).
    pub fn totals(&self) -> Vec<(&'static str, Duration)> {
        let mut out: Vec<(&'static str, Duration)> = Vec::new();
        for p in &self.phases {
            let kind = phase_kind(&p.name);
            match out.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, d)) => *d += p.duration,
                None => out.push((kind, p.duration)),
            }
        }
        out.sort_by_key(|(k, _)| KINDS.iter().position(|x| x == k));
        out
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

    /// The JSON document written to `/run/nixboot/timings.json`: times in milliseconds,
    /// `start_ms` since boot (CLOCK_BOOTTIME) like the console timestamps.
    pub fn to_json(&self, written_at: Duration) -> String {
        let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1000.0);
        let mut s = String::from("{\n");
        let _ = writeln!(s, "  \"init_start_ms\": {},", ms(self.init_start));
        let _ = writeln!(s, "  \"initrd_ms\": {},", self.elapsed_ms(written_at));
        s.push_str("  \"totals_ms\": {");
        for (i, (k, d)) in self.totals().iter().enumerate() {
            let _ = write!(
                s,
                "{}{}: {}",
                if i == 0 { "" } else { ", " },
                json_string(k),
                ms(*d)
            );
        }
        s.push_str("},\n");
        s.push_str("  \"phases\": [");
        for (i, p) in self.phases.iter().enumerate() {
            let _ = write!(
                s,
                "{}\n    {{\"step\": {}, \"start_ms\": {}, \"ms\": {}}}",
                if i == 0 { "" } else { "," },
                json_string(&p.name),
                ms(p.start),
                ms(p.duration)
            );
        }
        s.push_str(if self.phases.is_empty() {
            "]\n}\n"
        } else {
            "\n  ]\n}\n"
        });
        s
    }
}

/// Kinds of work, in boot order.
const KINDS: [&str; 8] = [
    "setup",
    "modules",
    "device-waits",
    "mounts",
    "store-copy",
    "checks",
    "prepare-root",
    "switch",
];

/// The kind of a phase, by its step name.
pub fn phase_kind(name: &str) -> &'static str {
    let step = name.split(' ').next().unwrap_or("");
    match step {
        "load-module" => "modules",
        s if s.starts_with("wait-") => "device-waits",
        s if s.starts_with("mount-") || s == "remount-root-ro" => "mounts",
        "copy-store" => "store-copy",
        "check-init" => "checks",
        "prepare-root" => "prepare-root",
        "move-mounts" | "switch-root" | "write-timings" => "switch",
        _ => "setup",
    }
}

/// A JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
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
    fn line_format() {
        assert_eq!(
            format_line(
                Duration::from_micros(1_234_567),
                "mount-root",
                "tmpfs on /sysroot"
            ),
            "nixboot: [  1.234567] mount-root: tmpfs on /sysroot\n"
        );
        assert_eq!(
            format_line(Duration::from_secs(1234), "x", "y"),
            "nixboot: [1234.000000] x: y\n"
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_value("ok"), "ok");
        assert_eq!(quote_value("/nix/store/a-b/init"), "/nix/store/a-b/init");
        assert_eq!(quote_value("a b"), "\"a b\"");
        assert_eq!(quote_value(r#"say "hi""#), r#""say \"hi\"""#);
        assert_eq!(quote_value(r"back\slash"), r#""back\\slash""#);
        assert_eq!(quote_value(""), "\"\"");
        assert_eq!(quote_value("two\nlines"), "\"two lines\"");
        assert_eq!(quote_value("k=v"), "k=v");
    }

    #[test]
    fn status_lines_match_the_contract() {
        assert_eq!(
            status_ok("/nix/store/..-x/init", 87),
            "nixboot-status: status=ok step=exec init=/nix/store/..-x/init initrd_ms=87\n"
        );
        assert_eq!(
            status_failed(
                "mount-store",
                "virtiofs tag \"store\" did not appear within 30s",
                "poweroff"
            ),
            "nixboot-status: status=failed step=mount-store error=\"virtiofs tag \\\"store\\\" did not appear within 30s\" action=poweroff\n"
        );
    }

    #[test]
    fn timings_json() {
        let mut t = Timings::new(Duration::from_millis(500));
        t.record(
            "load-module virtio_ring",
            Duration::from_millis(501),
            Duration::from_micros(502_500),
        );
        t.record(
            "mount-\"x\"",
            Duration::from_millis(503),
            Duration::from_millis(510),
        );
        let j = t.to_json(Duration::from_millis(587));
        assert_eq!(
            j,
            "{\n  \"init_start_ms\": 500.000,\n  \"initrd_ms\": 87,\n  \
             \"totals_ms\": {\"modules\": 1.500, \"mounts\": 7.000},\n  \"phases\": [\n    \
             {\"step\": \"load-module virtio_ring\", \"start_ms\": 501.000, \"ms\": 1.500},\n    \
             {\"step\": \"mount-\\\"x\\\"\", \"start_ms\": 503.000, \"ms\": 7.000}\n  ]\n}\n"
        );
        assert_eq!(
            Timings::new(Duration::ZERO).to_json(Duration::ZERO),
            "{\n  \"init_start_ms\": 0.000,\n  \"initrd_ms\": 0,\n  \"totals_ms\": {},\n  \
             \"phases\": []\n}\n"
        );
    }

    #[test]
    fn totals_by_kind_in_boot_order() {
        let mut t = Timings::new(Duration::ZERO);
        let ms = Duration::from_millis;
        for (name, d) in [
            ("early-mounts", 1),
            ("load-module a", 2),
            ("load-module b", 3),
            ("mount-root", 4),
            ("wait-root", 5),
            ("mount-store", 6),
            ("copy-store", 7),
            ("check-init", 8),
            ("move-mounts", 9),
            ("prepare-root", 10),
            ("switch-root", 11),
        ] {
            t.record(name, ms(0), ms(d));
        }
        assert_eq!(
            t.totals(),
            [
                ("setup", ms(1)),
                ("modules", ms(5)),
                ("device-waits", ms(5)),
                ("mounts", ms(10)),
                ("store-copy", ms(7)),
                ("checks", ms(8)),
                ("prepare-root", ms(10)),
                ("switch", ms(20)),
            ]
        );
        assert_eq!(
            t.summary(ms(100)),
            "setup 1.0 ms, modules 5.0 ms, device-waits 5.0 ms, mounts 10.0 ms, \
             store-copy 7.0 ms, checks 8.0 ms, prepare-root 10.0 ms, switch 20.0 ms; \
             100 ms since the init started"
        );
    }

    #[test]
    fn json_strings() {
        assert_eq!(json_string("a\u{1}b\n"), "\"a\\u0001b\\n\"");
    }
}
