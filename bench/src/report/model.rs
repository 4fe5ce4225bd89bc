//! The report's model: what one run measured, assembled from the boot records, the
//! builds and the scale run, and written as `benchmark.json` (read back by `--report-only`).

use super::markdown::*;
use crate::boot::{base_cmdline, BootRecord};
use crate::peers::{command_output, Built, Kind};
use crate::scale::Group;
use crate::stats::{summarize, Summary};
use crate::Ctx;
use anyhow::{Context, Result};
use nixboot_protocol::console::{LogLine, LOG_MARKER, STATUS_MARKER};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// Load and time at one moment, to show how quiet the machine was.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostState {
    pub at: String,
    pub loadavg: String,
}

impl HostState {
    pub fn now() -> HostState {
        HostState {
            at: utc_now(),
            loadavg: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// Per initrd: its build and the summaries of its boots.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub built: Built,
    pub root_args: String,
    pub boots_ok: usize,
    pub boots_failed: usize,
    pub run_init: Option<Summary>,
    pub stage2: Option<Summary>,
    pub initrd_phase: Option<Summary>,
    pub host_to_stage2: Option<Summary>,
    /// The kernel log's clock minus CLOCK_BOOTTIME, in ms.
    pub clock_offset_ms: Option<Summary>,
}

/// One line of "where nixboot's initrd phase goes".
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Part {
    pub what: String,
    pub ms: Summary,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub what: String,
    pub measured: String,
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleRow {
    pub k: usize,
    pub reps: usize,
    pub failed_guests: usize,
    pub wall_all: Option<Summary>,
    pub stage2: Option<Summary>,
    pub pss_per_guest_mib: Option<Summary>,
    pub qemu_rss_mib: Option<Summary>,
    pub qemu_pss_mib: Option<Summary>,
    pub virtiofsd_rss_mib: Option<Summary>,
    pub virtiofsd_pss_mib: Option<Summary>,
    pub guest_ram_pss_mib: Option<Summary>,
    /// Each guest's arrival, host clock from the group's start.
    #[serde(default)]
    pub host_to_arrival: Option<Summary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Setup {
    pub date: String,
    pub note: Option<String>,
    pub cpu: String,
    pub cores: usize,
    pub qemu: String,
    pub accel: String,
    pub accel_reason: String,
    pub virtiofsd: String,
    pub kernel: String,
    pub base_cmdline: String,
    /// Stage 2 began with stamp.c's binary (else with the busybox script itself).
    #[serde(default)]
    pub stamped: bool,
    pub append: Option<String>,
    pub qemu_args: Vec<String>,
    pub runs: usize,
    pub before: HostState,
    pub after: HostState,
    pub command: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub setup: Setup,
    pub rows: Vec<Row>,
    pub left_out: Vec<(Kind, String)>,
    pub targets: Vec<Target>,
    pub nixboot_parts: Vec<Part>,
    /// Bytes the init wrote to the console per boot (median), for the logging cost.
    pub nixboot_console_bytes: Option<f64>,
    pub scale: Vec<ScaleRow>,
    pub boots: Vec<BootRecord>,
    pub scale_groups: Vec<Group>,
    /// The end-to-end experiment (issue #11).
    #[serde(default)]
    pub e2e: Vec<crate::e2e::Record>,
    #[serde(default)]
    pub e2e_left_out: Vec<(crate::e2e::Contender, String)>,
    #[serde(default)]
    pub e2e_rows: Vec<super::e2e::E2eRow>,
    #[serde(default)]
    pub e2e_targets: Vec<Target>,
    /// Guests to multi-user.target of a real systemd at once.
    #[serde(default)]
    pub systemd_scale: Vec<ScaleRow>,
    #[serde(default)]
    pub systemd_scale_groups: Vec<Group>,
}

/// The parts of a run beyond the side-by-side boots.
pub struct Extra {
    pub scale: Vec<Group>,
    pub e2e: crate::e2e::Outcome,
    pub systemd_scale: Vec<Group>,
}

impl Report {
    pub fn assemble(
        ctx: &Ctx,
        built: Vec<Built>,
        left_out: Vec<(Kind, String)>,
        boots: Vec<BootRecord>,
        extra: Extra,
        before: HostState,
        after: HostState,
    ) -> Report {
        let rows: Vec<Row> = built
            .into_iter()
            .map(|b| {
                let mine: Vec<&BootRecord> = boots.iter().filter(|r| r.kind == b.kind).collect();
                let ok: Vec<&&BootRecord> = mine.iter().filter(|r| r.ok).collect();
                let col = |f: fn(&BootRecord) -> Option<f64>| {
                    summarize(&ok.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
                };
                Row {
                    root_args: b.kind.root_args().to_string(),
                    boots_ok: ok.len(),
                    boots_failed: mine.len() - ok.len(),
                    run_init: col(|r| r.run_init),
                    stage2: col(|r| r.stage2),
                    initrd_phase: col(|r| r.initrd_phase),
                    host_to_stage2: col(|r| r.host_to_stage2),
                    clock_offset_ms: col(|r| r.clock_offset.map(|o| o * 1000.0)),
                    built: b,
                }
            })
            .collect();
        let (nixboot_parts, nixboot_console_bytes) = nixboot_parts(&boots);
        let setup = Setup {
            date: before.at.clone(),
            note: ctx.cli.note.clone(),
            cpu: cpu_model(),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            qemu: command_output(Command::new(&ctx.env.qemu).arg("--version"))
                .and_then(|s| s.lines().next().map(str::to_string))
                .unwrap_or_default(),
            accel: ctx.accel.to_string(),
            accel_reason: short_reason(&ctx.accel_reason),
            virtiofsd: command_output(Command::new(&ctx.env.virtiofsd).arg("--version"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            kernel: ctx.kver.clone(),
            base_cmdline: base_cmdline(),
            stamped: ctx.shares.stamped,
            append: ctx.cli.append.clone(),
            qemu_args: ctx.cli.qemu_args.clone(),
            runs: ctx.cli.runs,
            before,
            after,
            command: std::env::args()
                .enumerate()
                .map(|(i, a)| {
                    if i == 0 {
                        "nixboot-bench".into()
                    } else if a.contains([' ', '"', '\'']) {
                        format!("'{a}'")
                    } else {
                        a
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
        };
        let targets = targets(&rows);
        let scale = scale_rows(&extra.scale);
        let e2e_rows = super::e2e::rows(&extra.e2e.records);
        Report {
            setup,
            rows,
            left_out,
            targets,
            nixboot_parts,
            nixboot_console_bytes,
            scale,
            boots,
            scale_groups: extra.scale,
            e2e: extra.e2e.records,
            e2e_left_out: extra.e2e.left_out,
            e2e_targets: super::e2e::targets(&e2e_rows),
            e2e_rows,
            systemd_scale: scale_rows(&extra.systemd_scale),
            systemd_scale_groups: extra.systemd_scale,
        }
    }

    pub fn row(&self, kind: Kind) -> Option<&Row> {
        self.rows.iter().find(|r| r.built.kind == kind)
    }

    pub fn write(&self, out: &Path) -> Result<()> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        std::fs::write(out.join("benchmark.md"), self.markdown())?;
        std::fs::write(
            out.join("benchmark.json"),
            serde_json::to_string_pretty(self)? + "\n",
        )?;
        if !self.rows.is_empty() {
            crate::chart::draw(self, &out.join("benchmark.png"))?;
        }
        Ok(())
    }
}

pub(crate) fn targets(rows: &[Row]) -> Vec<Target> {
    let get = |k: Kind| rows.iter().find(|r| r.built.kind == k);
    let Some(ours) = get(Kind::Nixboot) else {
        return Vec::new();
    };
    let mut t = Vec::new();
    let ours_phase = med(ours.initrd_phase);
    let mut phase_target = |k: Kind, factor: f64, what: String| {
        let peer = get(k).and_then(|r| med(r.initrd_phase));
        let (measured, met) = match (peer, ours_phase) {
            (Some(p), Some(o)) if o > 0.0 => (
                format!(
                    "{k} {} ÷ nixboot {} = {:.1}×{}",
                    secs(p),
                    secs(o),
                    p / o,
                    if factor > 1.0 {
                        format!(" (needs ≥ {factor:.0}×)")
                    } else {
                        String::new()
                    }
                ),
                Some(p / o >= factor && (factor > 1.0 || o < p)),
            ),
            _ => ("(not measured)".into(), None),
        };
        t.push(Target {
            what,
            measured,
            met,
        });
    };
    phase_target(
        Kind::Dracut,
        40.0,
        "initrd phase at most 1/40 of dracut's".into(),
    );
    phase_target(
        Kind::InitramfsTools,
        10.0,
        "initrd phase at most 1/10 of initramfs-tools'".into(),
    );
    phase_target(
        Kind::Busybox,
        1.0,
        "initrd phase below the busybox script's".into(),
    );
    t.push(stage2_target(rows, ours));
    t.push(build_target(get(Kind::InitramfsTools), ours));
    t
}

/// Stage 2 reached sooner than with the fastest peer.
fn stage2_target(rows: &[Row], ours: &Row) -> Target {
    let ours_stage2 = med(ours.stage2);
    let peers: Vec<(Kind, f64)> = rows
        .iter()
        .filter(|r| r.built.kind != Kind::Nixboot)
        .filter_map(|r| med(r.stage2).map(|s| (r.built.kind, s)))
        .collect();
    let fastest = peers.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1));
    match (fastest, ours_stage2) {
        (Some((k, p)), Some(o)) => Target {
            what: "stage 2 reached sooner than with any peer".into(),
            measured: format!(
                "nixboot {} vs the fastest peer ({k}) {} ({:+.0} ms)",
                secs(o),
                secs(p),
                (o - p) * 1000.0
            ),
            met: Some(o < p),
        },
        _ => Target {
            what: "stage 2 reached sooner than with any peer".into(),
            measured: "(not measured)".into(),
            met: None,
        },
    }
}

/// nixboot builds at least 100 times faster than initramfs-tools.
fn build_target(itools: Option<&Row>, ours: &Row) -> Target {
    match itools.map(|r| r.built.build_secs) {
        Some(p) if ours.built.build_secs > 0.0 => Target {
            what: "build at least 100× faster than initramfs-tools".into(),
            measured: format!(
                "initramfs-tools {} ÷ nixboot {} = {:.0}×",
                secs(p),
                secs(ours.built.build_secs),
                p / ours.built.build_secs
            ),
            met: Some(p / ours.built.build_secs >= 100.0),
        },
        _ => Target {
            what: "build at least 100× faster than initramfs-tools".into(),
            measured: "(not measured)".into(),
            met: None,
        },
    }
}

/// The parts of nixboot's initrd phase, from each boot's console and timings.json.
pub(crate) fn nixboot_parts(boots: &[BootRecord]) -> (Vec<Part>, Option<f64>) {
    let mut order: Vec<String> = Vec::new();
    let mut per: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut bytes = Vec::new();
    let mut push = |order: &mut Vec<String>, what: String, ms: f64| {
        if !order.contains(&what) {
            order.push(what.clone());
        }
        per.entry(what).or_default().push(ms);
    };
    for b in boots.iter().filter(|b| b.kind == Kind::Nixboot && b.ok) {
        let Ok(console) = std::fs::read_to_string(&b.console_log) else {
            continue;
        };
        let lines: Vec<LogLine> = console.lines().filter_map(LogLine::parse).collect();
        bytes.push(
            console
                .lines()
                .filter(|l| l.contains(LOG_MARKER) || l.contains(STATUS_MARKER))
                .map(|l| l.len() + 1)
                .sum::<usize>() as f64,
        );
        let (Some(run_init), Some(stage2), Some(offset)) = (b.run_init, b.stage2, b.clock_offset)
        else {
            continue;
        };
        // The init's clock (CLOCK_BOOTTIME) on the kernel log's.
        let init_start = b
            .timings
            .as_ref()
            .map(|t| t.init_start_ms / 1000.0 + offset);
        let exec_at = lines
            .iter()
            .find(|l| l.step == "exec")
            .map(|l| l.at + offset);
        let (Some(init_start), Some(exec_at)) = (init_start, exec_at) else {
            continue;
        };
        push(
            &mut order,
            "kernel \"Run /init\" → the init's first clock read (exec of the static /init)".into(),
            (init_start - run_init) * 1000.0,
        );
        let steps = boot_steps(b, &lines);
        let steps_ms: f64 = steps.iter().map(|(_, ms)| ms).sum();
        for (what, ms) in steps {
            push(&mut order, what, ms);
        }
        push(
            &mut order,
            "between the steps (console lines, planning)".into(),
            ((exec_at - init_start) * 1000.0 - steps_ms).max(0.0),
        );
        push(
            &mut order,
            "the init's exec of /sbin/init → stage 2's stamp".into(),
            (stage2 - exec_at) * 1000.0,
        );
    }
    let parts = order
        .into_iter()
        .filter_map(|what| {
            let v = per.get(&what)?;
            Some(Part {
                ms: summarize(v)?,
                what,
            })
        })
        .collect();
    (parts, summarize(&bytes).map(|s| s.median))
}

/// One boot's steps and their ms: every phase timings.json has (start order), then the
/// steps logged with "(N ms)" that it lacks (those after write-timings).
fn boot_steps(b: &BootRecord, lines: &[LogLine]) -> Vec<(String, f64)> {
    let mut steps: Vec<(String, f64)> = b
        .timings
        .iter()
        .flat_map(|t| &t.phases)
        .map(|p| (p.step.clone(), p.ms))
        .collect();
    for l in lines {
        let Some(ms) = l.ms() else { continue };
        let what = if l.step == "load-module" {
            let name = l.message.split_whitespace().next().unwrap_or("?");
            format!("load-module {name}")
        } else {
            l.step.clone()
        };
        if !steps.iter().any(|(n, _)| *n == what) {
            steps.push((what, ms));
        }
    }
    steps
}

pub(crate) fn scale_rows(groups: &[Group]) -> Vec<ScaleRow> {
    let mut ks: Vec<usize> = groups.iter().map(|g| g.k).collect();
    ks.sort_unstable();
    ks.dedup();
    let mib = |kb: u64| kb as f64 / 1024.0;
    ks.into_iter()
        .map(|k| {
            let gs: Vec<&Group> = groups.iter().filter(|g| g.k == k).collect();
            let guests: Vec<_> = gs
                .iter()
                .flat_map(|g| g.guests.iter())
                .filter(|g| g.ok)
                .collect();
            let col = |f: &dyn Fn(&crate::scale::Guest) -> f64| {
                summarize(&guests.iter().map(|g| f(g)).collect::<Vec<_>>())
            };
            ScaleRow {
                k,
                reps: gs.len(),
                failed_guests: gs
                    .iter()
                    .flat_map(|g| g.guests.iter())
                    .filter(|g| !g.ok)
                    .count(),
                wall_all: summarize(&gs.iter().filter_map(|g| g.wall_all).collect::<Vec<_>>()),
                stage2: summarize(&guests.iter().filter_map(|g| g.stage2).collect::<Vec<_>>()),
                pss_per_guest_mib: col(&|g| mib(g.qemu.pss_kb + g.virtiofsd.pss_kb)),
                qemu_rss_mib: col(&|g| mib(g.qemu.rss_kb)),
                qemu_pss_mib: col(&|g| mib(g.qemu.pss_kb)),
                virtiofsd_rss_mib: col(&|g| mib(g.virtiofsd.rss_kb)),
                virtiofsd_pss_mib: col(&|g| mib(g.virtiofsd.pss_kb)),
                guest_ram_pss_mib: col(&|g| mib(g.qemu.pss_shmem_kb + g.virtiofsd.pss_shmem_kb)),
                host_to_arrival: summarize(
                    &guests
                        .iter()
                        .filter_map(|g| g.host_to_stage2)
                        .collect::<Vec<_>>(),
                ),
            }
        })
        .collect()
}

/// "KVM does not work here: QEMU exited ... (cached in ...)" -> "KVM does not work here".
pub(crate) fn short_reason(r: &str) -> String {
    let r = r.split(" (cached in").next().unwrap_or(r);
    match r.split_once(": ") {
        Some((head, _)) if r.len() > 60 => head.to_string(),
        _ => r.to_string(),
    }
}

pub fn med(s: Option<Summary>) -> Option<f64> {
    s.map(|s| s.median)
}

pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// `2026-11-22 05:09` (UTC).
pub fn utc_now() -> String {
    let (y, mo, d, h, mi, _) = civil(SystemTime::now());
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}")
}

/// `20261122-050912` (UTC), for directory names.
pub fn timestamp_for_path() -> String {
    let (y, mo, d, h, mi, s) = civil(SystemTime::now());
    format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}")
}

fn civil(t: SystemTime) -> (i64, u32, u32, u32, u32, u32) {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Howard Hinnant's days_from_civil, inverted.
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
        (rem % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn civil_dates() {
        let t = UNIX_EPOCH + Duration::from_secs(0);
        assert_eq!(civil(t), (1970, 1, 1, 0, 0, 0));
        // 2024-02-29 12:34:56 UTC
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(civil(t), (2024, 2, 29, 12, 34, 56));
    }
}
