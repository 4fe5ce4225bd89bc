//! The report: `benchmark.md` (tables), `benchmark.json` (every measurement),
//! `benchmark.png` (chart), and the README's copy of the main table and the chart.

use crate::boot::{base_cmdline, BootRecord, CPUS, MEMORY_MB};
use crate::peers::{command_output, Built, Kind};
use crate::scale::Group;
use crate::stats::{summarize, Summary};
use crate::Ctx;
use anyhow::{bail, Context, Result};
use nixboot_protocol::console::{LogLine, LOG_MARKER, STATUS_MARKER};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

pub const README_BEGIN: &str = "<!-- nixboot-bench:begin -->";
pub const README_END: &str = "<!-- nixboot-bench:end -->";

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
}

impl Report {
    pub fn assemble(
        ctx: &Ctx,
        built: Vec<Built>,
        left_out: Vec<(Kind, String)>,
        boots: Vec<BootRecord>,
        scale_groups: Vec<Group>,
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
        let scale = scale_rows(&scale_groups);
        Report {
            setup,
            rows,
            left_out,
            targets,
            nixboot_parts,
            nixboot_console_bytes,
            scale,
            boots,
            scale_groups,
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

    /// The whole report.
    pub fn markdown(&self) -> String {
        let s = &self.setup;
        let mut m = String::new();
        let _ = writeln!(m, "# nixboot boot benchmark\n");
        if let Some(n) = &s.note {
            let _ = writeln!(m, "> **{n}**\n");
        }
        let nonstandard = s.append.is_some() || !s.qemu_args.is_empty();
        if nonstandard {
            let _ = writeln!(
                m,
                "> **Non-standard run:** extra kernel words `{}`, extra QEMU arguments `{}`.\n",
                s.append.as_deref().unwrap_or(""),
                s.qemu_args.join(" ")
            );
        }
        let _ = writeln!(
            m,
            "Measured by `{}` on {} (UTC): one run on one machine, one kernel, one share; \
             {} boot(s) of each initrd, interleaved (round-robin, the order rotated every \
             round).\n",
            s.command, s.date, s.runs
        );
        m.push_str(&self.setup_table());
        if !self.rows.is_empty() {
            let _ = writeln!(
                m,
                "\n## Results ({} boot{} each: median, min-max)\n",
                s.runs,
                if s.runs == 1 { "" } else { "s" }
            );
            m.push_str(&self.main_table());
            m.push('\n');
            m.push_str(&self.ratio_table());
            let _ = writeln!(m, "\n![boot benchmark chart](benchmark.png)\n");
            m.push_str(&self.targets_section());
            m.push_str(&self.parts_section());
            m.push_str(&self.builds_section());
        }
        if !self.scale.is_empty() {
            m.push_str(&self.scale_section());
        }
        m.push_str(&self.method_section());
        let failed: Vec<&BootRecord> = self.boots.iter().filter(|b| !b.ok).collect();
        if !failed.is_empty() || !self.left_out.is_empty() {
            let _ = writeln!(m, "\n## Failures\n");
            for (k, why) in &self.left_out {
                let first = why.lines().next().unwrap_or("");
                let _ = writeln!(m, "- {k} left out: {first}");
            }
            for b in failed {
                let _ = writeln!(
                    m,
                    "- {} round {}: {} (console: `{}`)",
                    b.kind,
                    b.round,
                    b.error.as_deref().unwrap_or("?"),
                    b.console_log.display()
                );
            }
        }
        m
    }

    fn setup_table(&self) -> String {
        let s = &self.setup;
        let mut m = String::new();
        let _ = writeln!(m, "| | |\n|---|---|");
        let _ = writeln!(
            m,
            "| host | {}, {} cores; load average {} at the start, {} at the end |",
            s.cpu, s.cores, s.before.loadavg, s.after.loadavg
        );
        let _ = writeln!(
            m,
            "| QEMU | {}; {} ({}); {} vCPU, {} MiB RAM in a shared memfd backend |",
            s.qemu.trim_start_matches("QEMU emulator "),
            s.accel,
            s.accel_reason,
            CPUS,
            MEMORY_MB
        );
        let _ = writeln!(
            m,
            "| kernel | Debian {} (virtio_pci, fuse and virtiofs are modules) |",
            s.kernel
        );
        let _ = writeln!(
            m,
            "| share | one {} per boot, `--cache=never --readonly`, tag `store`: a tiny root (static busybox; `/sbin/init` {}, then reports the kernel's \"Run /init\" timestamp and powers off) |",
            s.virtiofsd,
            if s.stamped {
                "= bench/assets/stamp.c, 9 kB without libc, which stamps the kernel log first thing and execs bench/assets/stage2.sh"
            } else {
                "= bench/assets/stage2.sh, which stamps the kernel log first thing"
            }
        );
        let _ = writeln!(
            m,
            "| command line | `{}{}` + the initrd's root= words (below) |",
            s.base_cmdline,
            s.append
                .as_deref()
                .map(|a| format!(" {a}"))
                .unwrap_or_default()
        );
        m
    }

    fn main_table(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(
            m,
            "| initrd | build time | image size | kernel \"Run /init\" | stage 2 reached | initrd phase |"
        );
        let _ = writeln!(m, "|---|---|---|---|---|---|");
        for r in &self.rows {
            let name = if r.built.kind == Kind::Nixboot {
                format!("**{}**", r.built.label)
            } else {
                r.built.label.clone()
            };
            let _ = writeln!(
                m,
                "| {name}{} | {}{} | {} | {} | {} | {} |",
                if r.boots_failed > 0 {
                    format!(
                        " ({} of {} boots failed)",
                        r.boots_failed,
                        r.boots_failed + r.boots_ok
                    )
                } else {
                    String::new()
                },
                build_s(&r.built),
                if r.built.cached.is_some() { "*" } else { "" },
                mb(r.built.size),
                sum_s(r.run_init),
                sum_s(r.stage2),
                sum_s(r.initrd_phase),
            );
        }
        if self.rows.iter().any(|r| r.built.cached.is_some()) {
            let _ = writeln!(
                m,
                "\n\\* image from the cache: build time as measured when it was built ({}).",
                self.rows
                    .iter()
                    .filter_map(|r| r
                        .built
                        .cached
                        .as_ref()
                        .map(|c| format!("{} on {c}", r.built.kind)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let _ = writeln!(
            m,
            "\nImage sizes in MB (10^6 bytes). Times are seconds since the kernel started, on \
             the kernel log's clock: \"Run /init\" is the kernel's own line, \"stage 2 \
             reached\" the line stage 2 writes to the kernel log first thing. Initrd phase = the \
             difference. The kernel's part before \"Run /init\" grows with the image (the \
             kernel unpacks it first), so \"stage 2 reached\" is what a user waits for."
        );
        if let Some(o) = self
            .rows
            .iter()
            .find(|r| r.built.kind == Kind::Nixboot)
            .and_then(|r| r.clock_offset_ms)
        {
            let _ = writeln!(
                m,
                "(CLOCK_BOOTTIME, the clock of /proc/uptime and of the init's own timestamps, \
                 differed from the kernel log's clock by {:+.0} ms in nixboot's boots (median; \
                 {:+.0} to {:+.0}; + = ahead; it changes from boot to boot). The init's \
                 timestamps below are converted with each boot's measured offset.)",
                -o.median, -o.max, -o.min
            );
        }
        m
    }

    fn ratio_table(&self) -> String {
        let mut m = String::new();
        let Some(ours) = self.row(Kind::Nixboot) else {
            return m;
        };
        let _ = writeln!(
            m,
            "Ratios, peer ÷ nixboot (medians; above 1 means nixboot is faster or smaller):\n"
        );
        let _ = writeln!(
            m,
            "| initrd | build time | image size | kernel \"Run /init\" | stage 2 reached | initrd phase |"
        );
        let _ = writeln!(m, "|---|---|---|---|---|---|");
        for r in self.rows.iter().filter(|r| r.built.kind != Kind::Nixboot) {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} |",
                r.built.kind,
                ratio(Some(r.built.build_secs), Some(ours.built.build_secs)),
                ratio(Some(r.built.size as f64), Some(ours.built.size as f64)),
                ratio(med(r.run_init), med(ours.run_init)),
                ratio(med(r.stage2), med(ours.stage2)),
                ratio(med(r.initrd_phase), med(ours.initrd_phase)),
            );
        }
        m
    }

    fn targets_section(&self) -> String {
        let mut m = String::new();
        if self.targets.is_empty() {
            return m;
        }
        let _ = writeln!(m, "## Targets (issue #6; medians)\n");
        let _ = writeln!(m, "| target | measured | met |\n|---|---|---|");
        for t in &self.targets {
            let _ = writeln!(
                m,
                "| {} | {} | {} |",
                t.what,
                t.measured,
                match t.met {
                    Some(true) => "yes",
                    Some(false) => "**NO**",
                    None => "not measured",
                }
            );
        }
        if self.targets.iter().any(|t| t.met == Some(false)) {
            let _ = writeln!(
                m,
                "\nWhere a target is missed, the next section shows where nixboot's time goes."
            );
        }
        m.push('\n');
        m
    }

    fn parts_section(&self) -> String {
        let mut m = String::new();
        if self.nixboot_parts.is_empty() {
            return m;
        }
        let total = self
            .row(Kind::Nixboot)
            .and_then(|r| r.initrd_phase)
            .map(|s| s.median * 1000.0);
        let _ = writeln!(
            m,
            "## Where nixboot's initrd phase goes\n\nFrom the init's own console lines \
             (`nixboot: [ts] step: ... (N ms)`) and /run/nixboot/timings.json, read by stage 2; \
             medians over the boots (so the parts need not add up exactly).\n"
        );
        let _ = writeln!(
            m,
            "| part | ms (median) | min-max | share |\n|---|---|---|---|"
        );
        for p in &self.nixboot_parts {
            let _ = writeln!(
                m,
                "| {} | {:.1} | {:.1}-{:.1} | {} |",
                p.what,
                p.ms.median,
                p.ms.min,
                p.ms.max,
                total.map_or("".into(), |t| format!("{:.0}%", 100.0 * p.ms.median / t))
            );
        }
        if let Some(t) = total {
            let _ = writeln!(m, "| **initrd phase** | **{t:.1}** | | 100% |");
        }
        let pci = self
            .nixboot_parts
            .iter()
            .find(|p| p.what == "load-module virtio_pci")
            .map(|p| p.ms.median);
        let tuned = self
            .setup
            .append
            .as_deref()
            .is_some_and(|a| a.contains("pci=noacpi"))
            || self.setup.qemu_args.iter().any(|a| a.contains("q35"));
        if pci.is_some_and(|ms| ms > 100.0) && !tuned {
            let _ = writeln!(
                m,
                "\n\"load-module virtio_pci\" is mostly not the module: its probe calls \
                 pci_enable_device, and the kernel routes the device's legacy interrupt by \
                 evaluating the `_PRT` method of QEMU's i440fx ACPI tables (an AML loop over 128 \
                 entries, interpreted anew for every device; slow under TCG). Every initrd pays \
                 it, whoever loads virtio_pci. `--append pci=noacpi` (routing from the BIOS \
                 table instead) takes it down to about 15 ms, as does `--qemu-arg=-machine \
                 --qemu-arg=q35`."
            );
        }
        if let Some(bytes) = self.nixboot_console_bytes {
            let _ = writeln!(
                m,
                "\nThe init wrote {bytes:.0} bytes of log lines to the serial console per boot \
                 (median); their cost is part of \"between the steps\"."
            );
        }
        m.push('\n');
        m
    }

    fn builds_section(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(m, "## How each initrd was built and booted\n");
        let _ = writeln!(
            m,
            "| initrd | root= words | build command | compression | boots ok |\n|---|---|---|---|---|"
        );
        for r in &self.rows {
            let _ = writeln!(
                m,
                "| {} | `{}` | `{}` | {} | {}/{} |",
                r.built.kind,
                r.root_args,
                r.built.command.replace('|', "\\|"),
                r.built.compression,
                r.boots_ok,
                r.boots_ok + r.boots_failed
            );
        }
        let _ = writeln!(
            m,
            "\nnixboot mounts the same share as its root with `root=virtiofs:store` (no \
             separate store or modules share, so it does the same work as the peers: load the \
             modules, mount one virtiofs root, switch to it). The distribution peers were \
             installed with `apt-get install --no-install-recommends` (dracut without lvm2, \
             mdadm, cryptsetup: its image is smaller and faster than with recommends)."
        );
        if let Some(r) = self.row(Kind::Nixboot) {
            if let Some(h) = r.host_to_stage2 {
                let _ = writeln!(
                    m,
                    "\nHost view: from QEMU's start to stage 2's report on the console, nixboot \
                     took {} (median).",
                    sum_s(Some(h))
                );
            }
        }
        m.push('\n');
        m
    }

    fn scale_section(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(
            m,
            "## Scale: K imageless guests booted at once from one shared store\n\n\
             nixboot's initrd, tmpfs root, the store and the kernel modules over virtiofs (one \
             virtiofsd per share and guest, all serving the same host directories), {} vCPU and \
             {} MiB each, on this {}-core host. Wall time from launching the first guest until \
             every guest's stage 2 reported; host memory from /proc/PID/smaps_rollup of each \
             guest's QEMU and its two virtiofsd, sampled when that guest reached stage 2. PSS \
             splits shared pages (the guest RAM memfd that QEMU and virtiofsd both map, the \
             binaries) between the processes that map them, so PSS per guest times K is the \
             host memory all K take. The guest's 1 GiB is only reserved: \"guest RAM\" is what \
             its kernel touched; the rest of QEMU's share is its heap, its binary and TCG's \
             translated-code buffer (none of which a KVM guest has in that size).\n",
            CPUS, MEMORY_MB, self.setup.cores
        );
        let _ = writeln!(
            m,
            "| K | runs | all at stage 2 (wall) | stage 2 reached per guest (guest clock) | host memory per guest (PSS) | of which guest RAM | QEMU RSS / PSS | 2× virtiofsd RSS / PSS |"
        );
        let _ = writeln!(m, "|---|---|---|---|---|---|---|---|");
        for r in &self.scale {
            let _ = writeln!(
                m,
                "| {} | {}{} | {} | {} | {} | {} | {} / {} | {} / {} |",
                r.k,
                r.reps,
                if r.failed_guests > 0 {
                    format!(" ({} guests failed)", r.failed_guests)
                } else {
                    String::new()
                },
                sum_s(r.wall_all),
                sum_s(r.stage2),
                sum_mib(r.pss_per_guest_mib),
                sum_mib(r.guest_ram_pss_mib),
                med_mib(r.qemu_rss_mib),
                med_mib(r.qemu_pss_mib),
                med_mib(r.virtiofsd_rss_mib),
                med_mib(r.virtiofsd_pss_mib),
            );
        }
        m.push('\n');
        m
    }

    fn method_section(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(
            m,
            "## Reproduce\n\n```sh\neval \"$(bash .ci/setup)\"\n\
             cargo build -p qemu-tests --release --bin nixboot-bench\n\
             target/release/nixboot-bench          # --help: runs, initrds, scale, cache, ...\n```\n\n\
             The tool installs dracut and initramfs-tools with apt-get when they are absent (one \
             after the other: they conflict), purges them again afterwards, and keeps their \
             images in `~/.cache/nixboot/bench/images` keyed by package version, kernel version \
             and recipe, with the build time measured when they were built. Every boot's \
             console is kept in the run directory (`~/.cache/nixboot/bench/runs/`); \
             benchmark.json holds every measurement."
        );
        m
    }

    /// The part of the report the README shows: the main table and the chart.
    pub fn readme_section(&self, out: &Path, readme: &Path) -> String {
        let rel = relative(out, readme.parent().unwrap_or(Path::new(".")));
        let mut m = String::new();
        let _ = writeln!(
            m,
            "Latest run ({}, {} boot(s) per initrd, {}; the whole report with the targets, where \
             the time goes and the scale run: [{rel}/benchmark.md]({rel}/benchmark.md)):\n",
            self.setup.date,
            self.setup.runs,
            if self.setup.accel == "tcg" {
                "QEMU under TCG"
            } else {
                "QEMU under KVM"
            }
        );
        if let Some(n) = &self.setup.note {
            let _ = writeln!(m, "> **{n}**\n");
        }
        m.push_str(&self.main_table());
        m.push('\n');
        m.push_str(&self.ratio_table());
        let _ = writeln!(m, "\n![boot benchmark chart]({rel}/benchmark.png)");
        m
    }

    pub fn update_readme(&self, readme: &Path, out: &Path) -> Result<()> {
        let text = std::fs::read_to_string(readme)
            .with_context(|| format!("reading {}", readme.display()))?;
        let (Some(b), Some(e)) = (text.find(README_BEGIN), text.find(README_END)) else {
            bail!(
                "{} has no {README_BEGIN} ... {README_END} markers (in its Benchmark section)",
                readme.display()
            );
        };
        if e < b {
            bail!(
                "{}: the benchmark markers are out of order",
                readme.display()
            );
        }
        let mut new = String::new();
        new.push_str(&text[..b + README_BEGIN.len()]);
        new.push('\n');
        new.push_str(&self.readme_section(out, readme));
        new.push_str(&text[e..]);
        std::fs::write(readme, new).with_context(|| format!("writing {}", readme.display()))?;
        Ok(())
    }
}

fn targets(rows: &[Row]) -> Vec<Target> {
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
    let ours_stage2 = med(ours.stage2);
    let peers: Vec<(Kind, f64)> = rows
        .iter()
        .filter(|r| r.built.kind != Kind::Nixboot)
        .filter_map(|r| med(r.stage2).map(|s| (r.built.kind, s)))
        .collect();
    let fastest = peers.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1));
    t.push(match (fastest, ours_stage2) {
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
    });
    let itools_build = get(Kind::InitramfsTools).map(|r| r.built.build_secs);
    t.push(match itools_build {
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
    });
    t
}

/// The parts of nixboot's initrd phase, from each boot's console and timings.json.
fn nixboot_parts(boots: &[BootRecord]) -> (Vec<Part>, Option<f64>) {
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
        // Every phase timings.json has (start order), then the steps logged with "(N ms)"
        // that it lacks (those after write-timings).
        let mut steps: Vec<(String, f64)> = b
            .timings
            .iter()
            .flat_map(|t| &t.phases)
            .map(|p| (p.step.clone(), p.ms))
            .collect();
        for l in &lines {
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

fn scale_rows(groups: &[Group]) -> Vec<ScaleRow> {
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
            }
        })
        .collect()
}

/// "KVM does not work here: QEMU exited ... (cached in ...)" -> "KVM does not work here".
fn short_reason(r: &str) -> String {
    let r = r.split(" (cached in").next().unwrap_or(r);
    match r.split_once(": ") {
        Some((head, _)) if r.len() > 60 => head.to_string(),
        _ => r.to_string(),
    }
}

pub fn med(s: Option<Summary>) -> Option<f64> {
    s.map(|s| s.median)
}

pub fn secs(s: f64) -> String {
    if s < 0.1 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 10.0 {
        format!("{s:.2} s")
    } else {
        format!("{s:.1} s")
    }
}

/// The build time: one value, or the median with min-max of several builds.
fn build_s(b: &Built) -> String {
    if b.build_secs_all.len() > 1 {
        sum_s(summarize(&b.build_secs_all))
    } else {
        secs(b.build_secs)
    }
}

fn sum_s(s: Option<Summary>) -> String {
    let Some(s) = s else { return "-".into() };
    // One unit for the three numbers, chosen by the median.
    let (unit, f): (&str, Box<dyn Fn(f64) -> String>) = if s.median < 0.1 {
        ("ms", Box::new(|v| format!("{:.0}", v * 1000.0)))
    } else if s.median < 10.0 {
        ("s", Box::new(|v| format!("{v:.2}")))
    } else {
        ("s", Box::new(|v| format!("{v:.1}")))
    };
    if s.n == 1 {
        format!("{} {unit}", f(s.median))
    } else {
        format!("{} {unit} ({}-{})", f(s.median), f(s.min), f(s.max))
    }
}

fn sum_mib(s: Option<Summary>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s.n == 1 => format!("{:.0} MiB", s.median),
        Some(s) => format!("{:.0} MiB ({:.0}-{:.0})", s.median, s.min, s.max),
    }
}

fn med_mib(s: Option<Summary>) -> String {
    s.map_or("-".into(), |s| format!("{:.0} MiB", s.median))
}

pub fn mb(bytes: u64) -> String {
    let v = bytes as f64 / 1e6;
    if v < 10.0 {
        format!("{v:.2} MB")
    } else {
        format!("{v:.1} MB")
    }
}

fn ratio(peer: Option<f64>, ours: Option<f64>) -> String {
    match (peer, ours) {
        (Some(p), Some(o)) if o > 0.0 => {
            let r = p / o;
            if r >= 100.0 {
                format!("{r:.0}×")
            } else {
                format!("{r:.1}×")
            }
        }
        _ => "-".into(),
    }
}

fn cpu_model() -> String {
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

/// `out` relative to `base` when it is inside it (for links in the README).
fn relative(out: &Path, base: &Path) -> String {
    let out = out.canonicalize().unwrap_or_else(|_| out.to_path_buf());
    let base = base.canonicalize().unwrap_or_else(|_| base.to_path_buf());
    out.strip_prefix(&base)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| out.display().to_string())
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

    #[test]
    fn formatting() {
        assert_eq!(secs(0.0123), "12 ms");
        assert_eq!(secs(2.345), "2.35 s");
        assert_eq!(secs(12.34), "12.3 s");
        assert_eq!(mb(1_234_567), "1.23 MB");
        assert_eq!(mb(26_100_000), "26.1 MB");
        assert_eq!(ratio(Some(10.0), Some(0.5)), "20.0×");
        assert_eq!(ratio(Some(500.0), Some(1.0)), "500×");
        assert_eq!(ratio(None, Some(1.0)), "-");
    }
}
