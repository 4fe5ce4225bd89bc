//! `/run/nixboot/timings.json`: the init's phase timings, written after the switch into the
//! booted system's /run (docs/contracts-internal.md, "Phase timings"). The init writes it
//! with [`Timings::to_json`]; the probe, the tests and the bench read it with
//! [`Timings::from_json`].

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Where the init writes the file, in the booted system.
pub const TIMINGS_PATH: &str = "/run/nixboot/timings.json";

/// The whole file. Times are milliseconds; `*start_ms` are since boot (CLOCK_BOOTTIME, the
/// clock of the console timestamps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// When the init started.
    pub init_start_ms: f64,
    /// From the init's start to writing this file.
    pub initrd_ms: u64,
    /// Sums per kind of work; kinds with no phase are left out.
    pub totals_ms: Totals,
    /// Every timed phase, in the order it ran.
    pub phases: Vec<Phase>,
}

/// One timed phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// What ran (`load-module virtio_ring`, `mount-store`, ...).
    pub step: String,
    pub start_ms: f64,
    pub ms: f64,
}

/// Kinds of work, in boot order (`device-waits` are block-device waits; virtiofs waits are
/// part of their mounts, because on 6.1 the mount is the wait).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Setup,
    Modules,
    DeviceWaits,
    Mounts,
    StoreCopy,
    Checks,
    PrepareRoot,
    Switch,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Setup => "setup",
            Kind::Modules => "modules",
            Kind::DeviceWaits => "device-waits",
            Kind::Mounts => "mounts",
            Kind::StoreCopy => "store-copy",
            Kind::Checks => "checks",
            Kind::PrepareRoot => "prepare-root",
            Kind::Switch => "switch",
        }
    }

    /// The kind of a phase, by its step name (the first word).
    pub fn of(step: &str) -> Kind {
        match step.split(' ').next().unwrap_or("") {
            "load-module" => Kind::Modules,
            s if s.starts_with("wait-") => Kind::DeviceWaits,
            s if s.starts_with("mount-") || s == "remount-root-ro" => Kind::Mounts,
            "copy-store" => Kind::StoreCopy,
            "check-init" | "flavour" => Kind::Checks,
            "prepare-root" | "nixos-init" => Kind::PrepareRoot,
            "move-mounts" | "dev-links" | "switch-root" | "write-timings" => Kind::Switch,
            _ => Kind::Setup,
        }
    }
}

/// `totals_ms`: one optional field per [`Kind`], so the object keeps the kinds' order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Totals {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_waits: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mounts: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_copy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepare_root: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch: Option<f64>,
}

impl Totals {
    fn slot(&mut self, kind: Kind) -> &mut Option<f64> {
        match kind {
            Kind::Setup => &mut self.setup,
            Kind::Modules => &mut self.modules,
            Kind::DeviceWaits => &mut self.device_waits,
            Kind::Mounts => &mut self.mounts,
            Kind::StoreCopy => &mut self.store_copy,
            Kind::Checks => &mut self.checks,
            Kind::PrepareRoot => &mut self.prepare_root,
            Kind::Switch => &mut self.switch,
        }
    }
}

/// Sums phase durations per kind, in the kinds' order, leaving out kinds with no phase:
/// the console's `timings:` line and `totals_ms` both come from here.
pub fn totals<'a>(phases: impl IntoIterator<Item = (&'a str, Duration)>) -> Vec<(Kind, Duration)> {
    let mut out: Vec<(Kind, Duration)> = Vec::new();
    for (step, d) in phases {
        let kind = Kind::of(step);
        match out.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, sum)) => *sum += d,
            None => out.push((kind, d)),
        }
    }
    out.sort_by_key(|(k, _)| *k);
    out
}

/// Milliseconds, to the microsecond (what the clock and the old fixed-point format gave).
pub fn ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

impl Timings {
    /// The file for phases `(step, start since boot, duration)`, written `written_at` since
    /// boot by an init that started at `init_start`.
    pub fn new(
        init_start: Duration,
        written_at: Duration,
        phases: &[(String, Duration, Duration)],
    ) -> Timings {
        let mut totals_ms = Totals::default();
        for (kind, d) in totals(phases.iter().map(|(s, _, d)| (s.as_str(), *d))) {
            *totals_ms.slot(kind) = Some(ms(d));
        }
        Timings {
            init_start_ms: ms(init_start),
            initrd_ms: written_at.saturating_sub(init_start).as_millis() as u64,
            totals_ms,
            phases: phases
                .iter()
                .map(|(step, start, d)| Phase {
                    step: step.clone(),
                    start_ms: ms(*start),
                    ms: ms(*d),
                })
                .collect(),
        }
    }

    /// The file's text (pretty JSON, one trailing newline).
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    pub fn from_json(text: &str) -> Result<Timings, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The step names, in the order they ran.
    pub fn steps(&self) -> impl Iterator<Item = &str> {
        self.phases.iter().map(|p| p.step.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Timings {
        let ms = Duration::from_millis;
        Timings::new(
            ms(500),
            ms(587),
            &[
                (
                    "load-module virtio_ring".into(),
                    ms(501),
                    Duration::from_micros(1_500),
                ),
                ("mount-\"x\"".into(), ms(503), ms(7)),
            ],
        )
    }

    #[test]
    fn file_has_the_contract_fields() {
        let v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "init_start_ms": 500.0,
                "initrd_ms": 87,
                "totals_ms": {"modules": 1.5, "mounts": 7.0},
                "phases": [
                    {"step": "load-module virtio_ring", "start_ms": 501.0, "ms": 1.5},
                    {"step": "mount-\"x\"", "start_ms": 503.0, "ms": 7.0},
                ],
            })
        );
        let empty = Timings::new(Duration::ZERO, Duration::ZERO, &[]).to_json();
        assert!(empty.ends_with("}\n"), "{empty}");
        assert!(empty.contains("\"totals_ms\": {}"), "{empty}");
    }

    #[test]
    fn round_trip() {
        let t = sample();
        assert_eq!(Timings::from_json(&t.to_json()).unwrap(), t);
        assert_eq!(
            t.steps().collect::<Vec<_>>(),
            ["load-module virtio_ring", "mount-\"x\""]
        );
        assert!(Timings::from_json("{\"phases\": []}").is_err());
    }

    #[test]
    fn totals_by_kind_in_boot_order() {
        let ms = Duration::from_millis;
        let phases = [
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
        ];
        let t = totals(phases.iter().map(|(s, d)| (*s, ms(*d))));
        let named: Vec<(&str, Duration)> = t.iter().map(|(k, d)| (k.name(), *d)).collect();
        assert_eq!(
            named,
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
        // The JSON object keeps that order.
        let owned: Vec<(String, Duration, Duration)> = phases
            .iter()
            .map(|(s, d)| (s.to_string(), Duration::ZERO, ms(*d)))
            .collect();
        let json = Timings::new(Duration::ZERO, ms(100), &owned).to_json();
        let keys = [
            "\"setup\"",
            "\"modules\"",
            "\"device-waits\"",
            "\"mounts\"",
            "\"store-copy\"",
            "\"checks\"",
            "\"prepare-root\"",
            "\"switch\"",
        ];
        let at: Vec<usize> = keys.iter().map(|k| json.find(k).unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{json}");
    }
}
