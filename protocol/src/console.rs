//! The init's console lines: the human log lines `nixboot: [  1.234567] <step>: <message>`
//! and the one machine line `nixboot-status: status=ok step=exec ...`
//! (docs/contracts-internal.md, "Console protocol of the init").
//!
//! Writers ([`log_line`], [`StatusLine`]'s `Display`) are used by the init; readers
//! ([`LogLine::parse`], [`StatusLine::parse`]) by the launcher, the tests and the bench. The
//! serial console interleaves the kernel's printk output with the init's writes, so the
//! readers stop at a kernel timestamp spliced into a line.

use std::fmt;
use std::time::Duration;

/// Marker of the init's human log lines (followed by the timestamp).
pub const LOG_MARKER: &str = "nixboot: [";
/// Marker of the init's one machine-readable line.
pub const STATUS_MARKER: &str = "nixboot-status:";

/// Writes one log line, newline included: `nixboot: [  1.234567] <step>: <message>\n`.
pub fn log_line(at: Duration, step: &str, message: &str) -> String {
    format!(
        "{LOG_MARKER}{:3}.{:06}] {step}: {message}\n",
        at.as_secs(),
        at.subsec_micros()
    )
}

/// A parsed log line.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// Seconds since boot (CLOCK_BOOTTIME).
    pub at: f64,
    pub step: String,
    pub message: String,
}

impl LogLine {
    /// Parses from the marker on; text before it and a kernel message spliced after the
    /// message are ignored. `None` when the line is not a log line.
    pub fn parse(line: &str) -> Option<LogLine> {
        let rest = &line[line.find(LOG_MARKER)? + LOG_MARKER.len()..];
        let (ts, rest) = rest.split_once(']')?;
        let at: f64 = ts.trim().parse().ok()?;
        let rest = rest.split('\n').next().unwrap_or("");
        let rest = cut_at_printk(rest).trim_end_matches(['\r', ' ', '\t']);
        let (step, message) = rest.trim_start().split_once(": ")?;
        Some(LogLine {
            at,
            step: step.to_string(),
            message: message.to_string(),
        })
    }

    /// The duration a step logged at the end of its message, `... (312.4 ms)`.
    pub fn ms(&self) -> Option<f64> {
        self.message
            .strip_suffix(" ms)")
            .and_then(|m| m.rsplit_once('('))
            .and_then(|(_, n)| n.trim().parse::<f64>().ok())
    }
}

/// The console lines that hold an init log line (with their `\r` trimmed), for tests that
/// check what the init said it did.
pub fn log_lines(console: &str) -> impl Iterator<Item = &str> {
    console
        .split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| l.contains(LOG_MARKER))
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

/// The `status=` value of a status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ok,
    Failed,
    /// Anything else; kept so a newer init is not misread as a failure of the parser.
    Other(String),
}

/// A `nixboot-status:` line: ordered `key=value` pairs. `Display` writes it (without the
/// newline) in the contract's format; [`StatusLine::parse`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusLine {
    pub fields: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusParseError {
    #[error("no {STATUS_MARKER} marker")]
    NoMarker,
    #[error("expected key=value at byte {0}")]
    ExpectedPair(usize),
    #[error("unterminated quoted value starting at byte {0}")]
    Unterminated(usize),
    #[error("no status= field")]
    NoStatus,
}

impl StatusLine {
    fn of(pairs: &[(&str, &str)]) -> StatusLine {
        StatusLine {
            fields: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// The success line, printed right before the exec of the next init.
    pub fn ok(init: &str, initrd_ms: u64) -> StatusLine {
        StatusLine::of(&[
            ("status", "ok"),
            ("step", "exec"),
            ("init", init),
            ("initrd_ms", &initrd_ms.to_string()),
        ])
    }

    /// The failure line, printed right before the failure action.
    pub fn failed(step: &str, error: &str, action: &str) -> StatusLine {
        StatusLine::of(&[
            ("status", "failed"),
            ("step", step),
            ("error", error),
            ("action", action),
        ])
    }

    /// Parses from the marker to the end of the line; text before the marker is ignored
    /// (the contract allows stray console output there), and so is a kernel message spliced
    /// after the last pair.
    pub fn parse(line: &str) -> Result<StatusLine, StatusParseError> {
        let start = line.find(STATUS_MARKER).ok_or(StatusParseError::NoMarker)?;
        let rest = &line[start + STATUS_MARKER.len()..];
        let rest = rest.split('\n').next().unwrap_or("");
        let rest = cut_at_printk(rest).trim_end_matches(['\r', ' ', '\t']);
        let fields = parse_pairs(rest)?;
        if !fields.iter().any(|(k, _)| k == "status") {
            return Err(StatusParseError::NoStatus);
        }
        Ok(StatusLine { fields })
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn status(&self) -> Status {
        match self.get("status") {
            Some("ok") => Status::Ok,
            Some("failed") => Status::Failed,
            other => Status::Other(other.unwrap_or("").to_string()),
        }
    }

    pub fn step(&self) -> Option<&str> {
        self.get("step")
    }

    pub fn error(&self) -> Option<&str> {
        self.get("error")
    }
}

impl fmt::Display for StatusLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(STATUS_MARKER)?;
        for (k, v) in &self.fields {
            write!(f, " {k}={}", quote_value(v))?;
        }
        Ok(())
    }
}

/// `key=value key2="quoted \"value\""`; keys are non-empty and contain no `=`, space or `"`.
fn parse_pairs(s: &str) -> Result<Vec<(String, String)>, StatusParseError> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    loop {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        if i >= b.len() {
            return Ok(out);
        }
        let key_start = i;
        while i < b.len() && !matches!(b[i], b'=' | b' ' | b'\t' | b'"') {
            i += 1;
        }
        if i == key_start || i >= b.len() || b[i] != b'=' {
            return Err(StatusParseError::ExpectedPair(key_start));
        }
        let key = s[key_start..i].to_string();
        let (value, end) = parse_value(b, i + 1)?;
        i = end;
        out.push((key, String::from_utf8_lossy(&value).into_owned()));
    }
}

/// One value starting at `i`, quoted or bare; returns it and the index after it.
fn parse_value(b: &[u8], mut i: usize) -> Result<(Vec<u8>, usize), StatusParseError> {
    let mut value = Vec::new();
    if b.get(i) != Some(&b'"') {
        while i < b.len() && b[i] != b' ' && b[i] != b'\t' {
            value.push(b[i]);
            i += 1;
        }
        return Ok((value, i));
    }
    let quote_start = i;
    i += 1;
    loop {
        match b.get(i) {
            None => return Err(StatusParseError::Unterminated(quote_start)),
            Some(b'"') => {
                i += 1;
                break;
            }
            // Only \" and \\ are defined; any other escaped byte stands for itself so that
            // a sloppy writer still yields a readable value.
            Some(b'\\') if i + 1 < b.len() => {
                value.push(b[i + 1]);
                i += 2;
            }
            Some(&c) => {
                value.push(c);
                i += 1;
            }
        }
    }
    if i < b.len() && b[i] != b' ' && b[i] != b'\t' {
        return Err(StatusParseError::ExpectedPair(i));
    }
    Ok((value, i))
}

/// The part of a console line before a kernel message spliced into it: the serial console
/// interleaves printk output with userspace writes, so a `[    2.124088] ...` timestamp
/// outside double quotes ends what the init wrote.
pub fn cut_at_printk(line: &str) -> &str {
    let b = line.as_bytes();
    let mut quoted = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'[' if !quoted && is_printk_stamp(&b[i..]) => return &line[..i],
            _ => {}
        }
        i += 1;
    }
    line
}

/// `[` spaces digits `.` six digits `]`
fn is_printk_stamp(b: &[u8]) -> bool {
    let mut i = 1;
    while b.get(i) == Some(&b' ') {
        i += 1;
    }
    let int = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    if i == int || b.get(i) != Some(&b'.') {
        return false;
    }
    let frac = i + 1;
    i = frac;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i - frac == 6 && b.get(i) == Some(&b']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_line_format() {
        assert_eq!(
            log_line(
                Duration::from_micros(1_234_567),
                "mount-root",
                "tmpfs on /sysroot"
            ),
            "nixboot: [  1.234567] mount-root: tmpfs on /sysroot\n"
        );
        assert_eq!(
            log_line(Duration::from_secs(1234), "x", "y"),
            "nixboot: [1234.000000] x: y\n"
        );
    }

    #[test]
    fn log_lines_round_trip() {
        let text = log_line(
            Duration::from_micros(1_234_567),
            "load-module",
            "virtio_pci loaded (312.4 ms)",
        );
        let l = LogLine::parse(&text).unwrap();
        assert_eq!(l.at, 1.234567);
        assert_eq!(l.step, "load-module");
        assert_eq!(l.message, "virtio_pci loaded (312.4 ms)");
        assert_eq!(l.ms(), Some(312.4));
        let l = LogLine::parse("nixboot: [  2.000000] exec: /sbin/init args []\r").unwrap();
        assert_eq!(l.message, "/sbin/init args []");
        assert_eq!(l.ms(), None);
        assert!(LogLine::parse("[ 1.0] Run /init as init process").is_none());
        assert!(LogLine::parse("nixboot: [x] a: b").is_none());
    }

    #[test]
    fn kernel_output_spliced_into_a_log_line_is_cut_off() {
        let l = LogLine::parse(
            "[    1.9] xnixboot: [  2.000000] mount-store: done (3.0 ms)[    2.124088] tsc: Refined",
        )
        .unwrap();
        assert_eq!(l.message, "done (3.0 ms)");
        assert_eq!(l.ms(), Some(3.0));
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
            StatusLine::ok("/nix/store/..-x/init", 87).to_string(),
            "nixboot-status: status=ok step=exec init=/nix/store/..-x/init initrd_ms=87"
        );
        assert_eq!(
            StatusLine::failed(
                "mount-store",
                "virtiofs tag \"store\" did not appear within 30s",
                "poweroff"
            )
            .to_string(),
            "nixboot-status: status=failed step=mount-store error=\"virtiofs tag \\\"store\\\" did not appear within 30s\" action=poweroff"
        );
    }

    #[test]
    fn status_lines_round_trip() {
        for s in [
            StatusLine::ok("/nix/store/abc-x/init", 87),
            StatusLine::failed("exec", r#"a "b" \ c [    1.000000] d"#, "poweroff"),
            StatusLine::failed("x", "", "shell"),
        ] {
            assert_eq!(StatusLine::parse(&s.to_string()).unwrap(), s, "{s}");
        }
        // Control characters cannot survive a line; they come back as spaces.
        let s = StatusLine::failed("x", "two\nlines", "halt");
        assert_eq!(
            StatusLine::parse(&s.to_string()).unwrap().error(),
            Some("two lines")
        );
    }

    #[test]
    fn kernel_output_spliced_after_the_status_line_is_cut_off() {
        let s = StatusLine::parse(
            "nixboot-status: status=ok step=exec init=/x/init initrd_ms=87[    2.124088] tsc: Refined",
        )
        .unwrap();
        assert_eq!(s.get("initrd_ms"), Some("87"));
        assert_eq!(s.fields.len(), 4, "{s}");
        // Inside quotes the same text is part of the value.
        let s = StatusLine::parse(
            "nixboot-status: status=failed step=x error=\"saw [    1.000000] here\" action=poweroff",
        )
        .unwrap();
        assert_eq!(s.error(), Some("saw [    1.000000] here"));
        assert_eq!(s.get("action"), Some("poweroff"));
    }

    #[test]
    fn status_ok_line() {
        let s = StatusLine::parse(
            "nixboot-status: status=ok step=exec init=/nix/store/abc-x/init initrd_ms=87\r",
        )
        .unwrap();
        assert_eq!(s.status(), Status::Ok);
        assert_eq!(s.step(), Some("exec"));
        assert_eq!(s.get("init"), Some("/nix/store/abc-x/init"));
        assert_eq!(s.get("initrd_ms"), Some("87"));
        assert_eq!(s.error(), None);
    }

    #[test]
    fn status_failed_with_quotes_and_escapes() {
        let s = StatusLine::parse(
            r#"nixboot-status: status=failed step=mount-store error="virtiofs tag \"store\" did not appear within 30s" action=poweroff"#,
        )
        .unwrap();
        assert_eq!(s.status(), Status::Failed);
        assert_eq!(s.step(), Some("mount-store"));
        assert_eq!(
            s.error(),
            Some(r#"virtiofs tag "store" did not appear within 30s"#)
        );
        assert_eq!(s.get("action"), Some("poweroff"));
        let s =
            StatusLine::parse(r#"nixboot-status: status=failed error="a\\b \"c\"" x="""#).unwrap();
        assert_eq!(s.error(), Some(r#"a\b "c""#));
        assert_eq!(s.get("x"), Some(""));
    }

    #[test]
    fn status_with_prefix_garbage_and_bad_lines() {
        let s = StatusLine::parse("[    2.1] randomnixboot-status: status=ok step=exec").unwrap();
        assert_eq!(s.status(), Status::Ok);
        assert_eq!(
            StatusLine::parse("nixboot: hello"),
            Err(StatusParseError::NoMarker)
        );
        assert_eq!(
            StatusLine::parse("nixboot-status: step=exec"),
            Err(StatusParseError::NoStatus)
        );
        assert!(matches!(
            StatusLine::parse("nixboot-status: status=ok garbage"),
            Err(StatusParseError::ExpectedPair(_))
        ));
        assert!(matches!(
            StatusLine::parse(r#"nixboot-status: status=failed error="never closed"#),
            Err(StatusParseError::Unterminated(_))
        ));
        assert!(matches!(
            StatusLine::parse(r#"nixboot-status: status=failed error="x"y"#),
            Err(StatusParseError::ExpectedPair(_))
        ));
        assert!(matches!(
            StatusLine::parse("nixboot-status: =x status=ok"),
            Err(StatusParseError::ExpectedPair(_))
        ));
        let s = StatusLine::parse("nixboot-status: status=weird").unwrap();
        assert_eq!(s.status(), Status::Other("weird".into()));
    }

    #[test]
    fn log_lines_are_picked_out_of_a_transcript() {
        let c = "[ 0.1] Linux\r\nnixboot: [  1.950000] modules: loaded virtio_ring\r\n\
                 nixboot-status: status=ok\r\n";
        let lines: Vec<_> = log_lines(c).collect();
        assert_eq!(lines, ["nixboot: [  1.950000] modules: loaded virtio_ring"]);
    }
}
