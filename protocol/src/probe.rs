//! The probe's report: one console line `PROBE-RESULT {json}` written by `probe-init` (the
//! synthetic stage 2) with [`ProbeReport::to_line`], read by the launcher's console parser
//! with [`read_line`] and by the tests as a [`ProbeReport`] (docs/contracts-internal.md,
//! "Probe"). The bench's stage-2 script reports its own fields behind the same marker,
//! which is why [`read_line`] yields a JSON value and the typing is the reader's choice.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Marker of the report line.
pub const PROBE_MARKER: &str = "PROBE-RESULT ";

/// What the probe found in the system the init handed over. `None` is "could not tell"
/// (the reason is in `errors`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub pid: Option<u32>,
    pub argv: Vec<String>,
    pub cmdline: Option<String>,
    pub root_fstype: Option<String>,
    pub store_fstype: Option<String>,
    pub modules_fstype: Option<String>,
    pub store_readonly: Option<bool>,
    pub modules_readonly: Option<bool>,
    /// `/proc`, `/sys`, `/dev`, `/run` to their fstype (`None`: not mounted).
    pub special_mounts: BTreeMap<String, Option<String>>,
    /// What is left of the initramfs under the old root (`None`: could not look).
    pub initramfs_leftovers: Option<Vec<String>>,
    /// `initramfs_leftovers` is known.
    pub initramfs_checked: bool,
    pub root_readonly: Option<bool>,
    /// The root mount's per-mount options, then the filesystem's.
    pub root_options: Option<String>,
    /// A file could be created in /nix/store (`None`: no /nix/store).
    pub store_writable: Option<bool>,
    /// `KEY=value`, sorted.
    pub env: Vec<String>,
    /// Where /run/booted-system points.
    pub booted_system: Option<String>,
    /// The text of /run/nixboot/timings.json (see [`crate::timings::Timings::from_json`]).
    pub timings: Option<String>,
    /// /run/nixboot-test/NAME to its text (the synthetic closures' scripts leave these).
    pub test_files: BTreeMap<String, String>,
    /// `stat:PATH` arguments, lstat'ed.
    pub stats: BTreeMap<String, Stat>,
    pub errors: Vec<String>,
}

impl std::fmt::Display for ProbeReport {
    /// The report as JSON, for assertion messages.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&serde_json::to_string(self).map_err(|_| std::fmt::Error)?)
    }
}

/// lstat of one path asked for with `stat:PATH`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// `file`, `dir`, `symlink`, `other` or `missing`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Permission bits in octal, `"0755"`.
    pub mode: Option<String>,
    pub size: Option<u64>,
    /// A symlink's target.
    pub target: Option<String>,
    pub mtime: Option<i64>,
}

impl ProbeReport {
    /// The console line, newlines included: a leading newline keeps the marker at the start
    /// of a line even when the console was left mid-line by earlier output.
    pub fn to_line(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_else(|e| {
            format!(
                "{{\"errors\":[{}]}}",
                serde_json::Value::from(e.to_string())
            )
        });
        format!("\n{PROBE_MARKER}{json}\n")
    }

    /// The report in a JSON value read by [`read_line`].
    pub fn from_value(v: &serde_json::Value) -> Result<ProbeReport, serde_json::Error> {
        ProbeReport::deserialize(v)
    }

    /// The init's timings file, parsed (`None` when the probe found none).
    pub fn timings(&self) -> Option<Result<crate::timings::Timings, serde_json::Error>> {
        self.timings
            .as_deref()
            .map(crate::timings::Timings::from_json)
    }
}

/// The report of the benchmark's stage 2 (`bench/assets/stage2.sh`, a busybox script that
/// writes this JSON with `echo`), read by the bench. Times are seconds since boot on the
/// kernel log's clock unless said otherwise.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// The kernel log's stamp of the line stage 2 writes first thing.
    pub stage2: Option<f64>,
    /// The kernel log's stamp of "Run /init as init process".
    pub run_init: Option<f64>,
    /// /proc/uptime (CLOCK_BOOTTIME) right after the stage-2 line.
    pub uptime: Option<f64>,
    /// /proc/uptime when it ticked, and the kernel log's stamp of that moment.
    pub tick_uptime: Option<f64>,
    pub tick_klog: Option<f64>,
    /// nixboot's timings.json, embedded as an object (`null` for the peers).
    pub timings: Option<crate::timings::Timings>,
}

impl BenchReport {
    pub fn from_value(v: &serde_json::Value) -> Result<BenchReport, serde_json::Error> {
        BenchReport::deserialize(v)
    }
}

/// The JSON value of a `PROBE-RESULT` line: `None` without the marker. One value is read,
/// whatever follows it: the kernel's console output can land on the same line before the
/// probe's newline does (seen in CI: `...}[    2.12] tsc: ...`).
pub fn read_line(line: &str) -> Option<Result<serde_json::Value, serde_json::Error>> {
    let pos = line.find(PROBE_MARKER)?;
    let json = line[pos + PROBE_MARKER.len()..].trim();
    let first = serde_json::Deserializer::from_str(json)
        .into_iter::<serde_json::Value>()
        .next();
    Some(first.unwrap_or_else(|| serde_json::from_str::<serde_json::Value>("")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trips_through_its_line() {
        let mut r = ProbeReport {
            pid: Some(1),
            argv: vec!["/init".into(), "a\"b\\c\n".into()],
            errors: vec!["x\u{1}".into()],
            initramfs_leftovers: Some(vec![]),
            initramfs_checked: true,
            ..ProbeReport::default()
        };
        r.special_mounts.insert("/proc".into(), Some("proc".into()));
        r.special_mounts.insert("/run".into(), None);
        r.stats.insert(
            "/etc/x".into(),
            Stat {
                kind: "symlink".into(),
                target: Some("/y".into()),
                ..Stat::default()
            },
        );
        let line = r.to_line();
        assert!(line.starts_with("\nPROBE-RESULT {"), "{line}");
        assert_eq!(line.matches('\n').count(), 2, "one line: {line}");
        assert!(line.contains(r#""type":"symlink""#), "{line}");
        let v = read_line(&line).unwrap().unwrap();
        assert_eq!(ProbeReport::from_value(&v).unwrap(), r);
    }

    #[test]
    fn kernel_output_spliced_after_the_json_is_ignored() {
        let line = "PROBE-RESULT {\"pid\":1,\"errors\":[]}[    2.124088] tsc: Refined TSC clocksource calibration: 2445.381 MHz";
        let v = read_line(line).unwrap().unwrap();
        assert_eq!(v["pid"], 1);
        // Broken JSON is an error, not a silent pass.
        assert!(read_line("PROBE-RESULT {\"pid\":1,").unwrap().is_err());
        assert!(read_line("PROBE-RESULT ").unwrap().is_err());
        assert!(read_line("nixboot: x").is_none());
    }

    #[test]
    fn bench_report_as_stage2_sh_writes_it() {
        let line = "PROBE-RESULT {\"stage2\":2.5,\"run_init\":1.9,\"uptime\":2.51,\"tick_uptime\":null,\"tick_klog\":null,\"timings\":null}";
        let r = BenchReport::from_value(&read_line(line).unwrap().unwrap()).unwrap();
        assert_eq!(
            (r.stage2, r.run_init, r.tick_klog),
            (Some(2.5), Some(1.9), None)
        );
        assert!(r.timings.is_none());
        let t = crate::timings::Timings::new(Default::default(), Default::default(), &[]);
        let line = format!(
            "PROBE-RESULT {{\"stage2\":null,\"uptime\":1,\"timings\":{}}}",
            t.to_json().replace('\n', "")
        );
        let r = BenchReport::from_value(&read_line(&line).unwrap().unwrap()).unwrap();
        assert_eq!(r.timings, Some(t));
    }
}
