//! `benchmark.md`: the report's tables and sections, rendered from the model.

use super::model::*;
use crate::boot::{BootRecord, CPUS, MACHINE, MEMORY_MB};
use crate::peers::{Built, Kind};
use crate::stats::{summarize, Summary};
use std::fmt::Write as _;

/// The report's Reproduce commands: the README's setup line, then this tool's build and run.
const REPRODUCE: &str =
    "bash .ci/setup >/dev/null && . \"${NIXBOOT_CACHE:-$HOME/.cache/nixboot}/env\"
cargo build -p nixboot-bench --release
target/release/nixboot-bench          # --help: runs, initrds, scale, cache, ...
";

impl Report {
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
        if !self.e2e_rows.is_empty() || !self.e2e_left_out.is_empty() {
            m.push_str(&self.e2e_section());
        }
        if !self.scale.is_empty() {
            m.push_str(&self.scale_section());
        }
        if !self.systemd_scale.is_empty() {
            m.push_str(&self.systemd_scale_section());
        }
        m.push_str(&self.method_section());
        let failed: Vec<&BootRecord> = self.boots.iter().filter(|b| !b.ok).collect();
        let e2e_failed: Vec<_> = self.e2e.iter().filter(|r| !r.ok).collect();
        if !failed.is_empty() || !self.left_out.is_empty() || !e2e_failed.is_empty() {
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
            for r in e2e_failed {
                let _ = writeln!(
                    m,
                    "- {} round {}: {} (log: `{}`)",
                    r.contender.name(),
                    r.round,
                    r.error.as_deref().unwrap_or("?"),
                    r.log.display()
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
            "| QEMU | {}; {} ({}); machine {MACHINE}, {} vCPU, {} MiB RAM in a shared memfd \
             backend |",
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

    pub(crate) fn main_table(&self) -> String {
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

    pub(crate) fn ratio_table(&self) -> String {
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
             virtiofsd per share and guest, all serving the same host directories), machine \
             {MACHINE}, {} vCPU and {} MiB each, on this {}-core host. Wall time from \
             launching the first guest until every guest's stage 2 reported; host memory from /proc/PID/smaps_rollup of each \
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
            "## Reproduce\n\n```sh\n{REPRODUCE}```\n\n\
             The tool installs dracut and initramfs-tools with apt-get when they are absent (one \
             after the other: they conflict), purges them again afterwards, and keeps their \
             images in `~/.cache/nixboot/bench/images` keyed by package version, kernel version \
             and recipe, with the build time measured when they were built. Every boot's \
             console is kept in the run directory (`~/.cache/nixboot/bench/runs/`); \
             benchmark.json holds every measurement."
        );
        m
    }
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
pub(crate) fn build_s(b: &Built) -> String {
    if b.build_secs_all.len() > 1 {
        sum_s(summarize(&b.build_secs_all))
    } else {
        secs(b.build_secs)
    }
}

pub(crate) fn sum_s(s: Option<Summary>) -> String {
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

pub(crate) fn sum_mib(s: Option<Summary>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s.n == 1 => format!("{:.0} MiB", s.median),
        Some(s) => format!("{:.0} MiB ({:.0}-{:.0})", s.median, s.min, s.max),
    }
}

pub(crate) fn med_mib(s: Option<Summary>) -> String {
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

pub(crate) fn ratio(peer: Option<f64>, ours: Option<f64>) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproduce_builds_this_crate_after_the_readmes_setup_line() {
        let lines: Vec<&str> = REPRODUCE.lines().collect();
        let readme = include_str!("../../../README.md");
        assert!(readme.lines().any(|l| l == lines[0]), "{}", lines[0]);
        let build = format!("cargo build -p {} --release", env!("CARGO_PKG_NAME"));
        assert_eq!(lines[1], build);
        assert!(lines[2].starts_with(&format!("target/release/{}", env!("CARGO_BIN_NAME"))));
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
