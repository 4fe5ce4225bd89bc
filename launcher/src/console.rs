//! Reads a captured serial console: the init's `nixboot-status:` line, the probe's
//! `PROBE-RESULT {json}` line, kernel panics and how the guest stopped.
//! Formats: docs/contracts-internal.md ("Console protocol of the init", "Probe").

use std::fmt;

/// Marker of the init's one machine-readable line.
pub const STATUS_MARKER: &str = "nixboot-status:";
/// Marker of the probe's report line.
pub const PROBE_MARKER: &str = "PROBE-RESULT ";

/// The `status=` value of a status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ok,
    Failed,
    /// Anything else; kept so a newer init is not misread as a failure of the parser.
    Other(String),
}

/// A parsed `nixboot-status:` line: ordered `key=value` pairs.
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
    /// Parses from the marker to the end of the line; text before the marker is ignored
    /// (the contract allows stray console output there).
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
    /// Writes the line back in the contract's format (quoting only where needed).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(STATUS_MARKER)?;
        for (k, v) in &self.fields {
            write!(f, " {k}=")?;
            if v.is_empty() || v.contains([' ', '"', '\\']) {
                f.write_str("\"")?;
                for c in v.chars() {
                    if c == '"' || c == '\\' {
                        f.write_str("\\")?;
                    }
                    write!(f, "{c}")?;
                }
                f.write_str("\"")?;
            } else {
                f.write_str(v)?;
            }
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
        i += 1;
        let mut value = Vec::new();
        if i < b.len() && b[i] == b'"' {
            let quote_start = i;
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err(StatusParseError::Unterminated(quote_start)),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    // Only \" and \\ are defined; any other escaped byte stands for itself
                    // so that a sloppy writer still yields a readable value.
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
        } else {
            while i < b.len() && b[i] != b' ' && b[i] != b'\t' {
                value.push(b[i]);
                i += 1;
            }
        }
        out.push((key, String::from_utf8_lossy(&value).into_owned()));
    }
}

/// What a console transcript says about the boot.
#[derive(Debug, Clone, Default)]
pub struct ConsoleFacts {
    /// The status line that counts: the last well-formed one. The init prints `status=ok`
    /// right before exec; if that exec fails, a `status=failed step=exec` line follows.
    pub status: Option<StatusLine>,
    /// The first probe report that parsed as JSON.
    pub probe: Option<serde_json::Value>,
    /// A line containing "Kernel panic" was seen.
    pub panicked: bool,
    /// The kernel said "reboot: Power down".
    pub powered_off: bool,
    /// The kernel said "reboot: Restarting system".
    pub restarted: bool,
    /// Things that break the protocol: unparsable marker lines, duplicates.
    pub warnings: Vec<String>,
}

impl ConsoleFacts {
    pub fn parse(console: &str) -> ConsoleFacts {
        let mut facts = ConsoleFacts::default();
        for raw in console.split('\n') {
            facts.feed_line(raw);
        }
        facts
    }

    /// Takes one console line (with or without its trailing `\r`).
    pub fn feed_line(&mut self, raw: &str) {
        let line = raw.trim_end_matches('\r');
        if line.contains(STATUS_MARKER) {
            match StatusLine::parse(line) {
                Ok(s) => {
                    // ok then failed at step=exec is the protocol; any other repeat is not.
                    let exec_failed = |prev: &StatusLine| {
                        prev.status() == Status::Ok
                            && s.status() == Status::Failed
                            && s.step() == Some("exec")
                    };
                    if self.status.as_ref().is_some_and(|p| !exec_failed(p)) {
                        self.warnings
                            .push(format!("more than one status line: {line:?}"));
                    }
                    self.status = Some(s);
                }
                Err(e) => self
                    .warnings
                    .push(format!("unparsable status line ({e}): {line:?}")),
            }
        }
        if let Some(pos) = line.find(PROBE_MARKER) {
            let json = line[pos + PROBE_MARKER.len()..].trim();
            // One value, whatever follows it: the kernel's console output can land on the
            // same line before the probe's newline does (seen in CI: "...}[ 2.12] tsc: ...").
            let first = serde_json::Deserializer::from_str(json)
                .into_iter::<serde_json::Value>()
                .next();
            match first.unwrap_or_else(|| serde_json::from_str::<serde_json::Value>("")) {
                Ok(v) if self.probe.is_none() => self.probe = Some(v),
                Ok(_) => self.warnings.push("more than one probe result".into()),
                Err(e) => self
                    .warnings
                    .push(format!("unparsable probe result ({e}): {line:?}")),
            }
        }
        if line.contains("Kernel panic") {
            self.panicked = true;
        }
        if line.contains("reboot: Power down") {
            self.powered_off = true;
        }
        if line.contains("reboot: Restarting system") {
            self.restarted = true;
        }
    }
}

/// The init's human lines (`nixboot: [  1.234567] <step>: <message>`), for tests that check
/// what the init said it did.
pub fn init_lines(console: &str) -> impl Iterator<Item = &str> {
    console
        .split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| l.contains("nixboot: ["))
}

/// Whether `word` appears in `line` as a whole identifier (so `virtio` does not match
/// `virtio_ring`, while `virtio_pci.ko` matches `virtio_pci`).
pub fn has_word(line: &str, word: &str) -> bool {
    line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .any(|w| w == word)
}

/// The part of a console line before a kernel message spliced into it: the serial console
/// interleaves printk output with userspace writes, so a `[    2.124088] ...` timestamp
/// outside double quotes ends what the init wrote.
fn cut_at_printk(line: &str) -> &str {
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
    fn kernel_output_spliced_after_the_probe_json_is_ignored() {
        // The console line CI saw: the kernel wrote before the probe's newline.
        let c = "PROBE-RESULT {\"pid\":1,\"errors\":[]}[    2.124088] tsc: Refined TSC clocksource calibration: 2445.381 MHz\n";
        let f = ConsoleFacts::parse(c);
        assert!(f.warnings.is_empty(), "{:?}", f.warnings);
        assert_eq!(f.probe.as_ref().expect("probe")["pid"], 1);
        // Broken JSON is still a warning, not a silent pass.
        let f = ConsoleFacts::parse("PROBE-RESULT {\"pid\":1,\n");
        assert!(f.probe.is_none());
        assert_eq!(f.warnings.len(), 1, "{:?}", f.warnings);
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
    fn status_round_trips_through_display() {
        let s =
            StatusLine::parse(r#"nixboot-status: status=failed error="a \"b\" \\ c" z=1"#).unwrap();
        assert_eq!(StatusLine::parse(&s.to_string()).unwrap(), s);
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

    const SAMPLE: &str = "[    0.000000] Linux version 6.1.0-56-cloud-amd64\r\n\
[    1.900000] Run /init as init process\r\n\
nixboot: [  1.950000] modules: loaded virtio_ring\r\n\
nixboot: [  2.010000] modules: loaded virtio_pci.ko (0.4 ms)\r\n\
nixboot-status: status=ok step=exec init=/nix/store/aaaa-probe-system/init initrd_ms=87\r\n\
\r\n\
PROBE-RESULT {\"pid\":1,\"argv\":[\"/init\",\"alpha\"],\"errors\":[]}\r\n\
[    2.300000] reboot: Power down\r\n";

    #[test]
    fn console_sample_is_understood() {
        let f = ConsoleFacts::parse(SAMPLE);
        assert_eq!(f.status.as_ref().unwrap().status(), Status::Ok);
        let p = f.probe.unwrap();
        assert_eq!(p["pid"], 1);
        assert_eq!(p["argv"][1], "alpha");
        assert!(!f.panicked);
        assert!(f.powered_off);
        assert!(!f.restarted);
        assert!(f.warnings.is_empty(), "{:?}", f.warnings);
        let lines: Vec<_> = init_lines(SAMPLE).collect();
        assert_eq!(lines.len(), 2);
        assert!(has_word(lines[1], "virtio_pci"));
        assert!(!has_word(lines[0], "virtio"));
    }

    #[test]
    fn console_panic_and_protocol_breaks() {
        let text =
            "[ 1.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n\
                    nixboot-status: status=ok\nnixboot-status: status=failed\n\
                    PROBE-RESULT {not json\n[ 1.1] reboot: Restarting system\n";
        let f = ConsoleFacts::parse(text);
        assert!(f.panicked);
        assert!(f.restarted);
        // The last line counts; a repeat that is not ok-then-exec-failed is a breach.
        assert_eq!(f.status.unwrap().status(), Status::Failed);
        assert!(f.probe.is_none());
        assert_eq!(f.warnings.len(), 2, "{:?}", f.warnings);
    }

    #[test]
    fn a_failed_exec_after_the_ok_line_counts() {
        let text = "nixboot-status: status=ok step=exec init=/x initrd_ms=5\r\n\
                    nixboot-status: status=failed step=exec error=\"execve(/x) failed\" action=poweroff\r\n";
        let f = ConsoleFacts::parse(text);
        let s = f.status.unwrap();
        assert_eq!((s.status(), s.step()), (Status::Failed, Some("exec")));
        assert!(f.warnings.is_empty(), "{:?}", f.warnings);
    }
}
