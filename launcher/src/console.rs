//! Reads a captured serial console: the init's `nixboot-status:` line, the probe's
//! `PROBE-RESULT {json}` line, kernel panics and how the guest stopped. The line formats and
//! their readers are nixboot-protocol's (`console`, `probe`); this is the transcript.

pub use nixboot_protocol::console::{Status, StatusLine, StatusParseError, STATUS_MARKER};
use nixboot_protocol::probe;
pub use nixboot_protocol::probe::PROBE_MARKER;

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
        if let Some(report) = probe::read_line(line) {
            match report {
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

/// Whether `word` appears in `line` as a whole identifier (so `virtio` does not match
/// `virtio_ring`, while `virtio_pci.ko` matches `virtio_pci`).
pub fn has_word(line: &str, word: &str) -> bool {
    line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .any(|w| w == word)
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
        let lines: Vec<_> = nixboot_protocol::console::log_lines(SAMPLE).collect();
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
