//! The end-to-end experiment and the real-systemd scale run in the report: summaries,
//! targets (issue #11) and their markdown.

use super::markdown::{ratio, secs, sum_mib, sum_s};
use super::model::{med, Report, Target};
use crate::e2e::{Contender, Record, CPUS, EXEC_CMD, MACHINE, MEMORY_MB, SYSTEMD_WORDS};
use crate::stats::{summarize, Summary};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Per contender: the summaries of its runs (seconds from the host command's start).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct E2eRow {
    pub contender: Contender,
    pub ok: usize,
    pub failed: usize,
    /// To what the user waits for: the command's output, or multi-user.target.
    pub secs: Option<Summary>,
    pub exit_secs: Option<Summary>,
    pub initrd_start_secs: Option<Summary>,
    pub stage2_secs: Option<Summary>,
    pub initrd_own_secs: Option<Summary>,
    /// The guest's uptime at multi-user.target (its own clock).
    #[serde(default)]
    pub guest_uptime: Option<Summary>,
    /// Initrd start -> stage 2's "Welcome" (the whole initrd phase as the console shows it).
    pub initrd_phase_secs: Option<Summary>,
    /// Stage 2's "Welcome" -> multi-user.target.
    pub stage2_to_target_secs: Option<Summary>,
    /// To what the user waits for, minus the whole initrd phase of the same run: the boot
    /// an initrd taking no time at all would give (it also drops the start of stage 2's
    /// systemd before its Welcome line, which is not the initrd's).
    #[serde(default)]
    pub without_initrd_secs: Option<Summary>,
    /// To what the user waits for, minus the initrd's own report of its time (nixboot's
    /// initrd_ms): the boot nixboot's init taking no time at all would give. What remains of
    /// the initrd phase, systemd's own start from the new root, dracut's boots pay too.
    #[serde(default)]
    pub without_init_secs: Option<Summary>,
}

pub fn rows(records: &[Record]) -> Vec<E2eRow> {
    Contender::ALL
        .into_iter()
        .filter(|c| records.iter().any(|r| r.contender == *c))
        .map(|c| {
            let mine: Vec<&Record> = records.iter().filter(|r| r.contender == c).collect();
            let ok: Vec<&&Record> = mine.iter().filter(|r| r.ok).collect();
            let col = |f: &dyn Fn(&Record) -> Option<f64>| {
                summarize(&ok.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
            };
            E2eRow {
                contender: c,
                ok: ok.len(),
                failed: mine.len() - ok.len(),
                secs: col(&|r| r.secs),
                exit_secs: col(&|r| Some(r.exit_secs)),
                initrd_start_secs: col(&|r| r.initrd_start_secs),
                stage2_secs: col(&|r| r.stage2_secs),
                initrd_own_secs: col(&|r| r.initrd_own_secs),
                guest_uptime: col(&|r| r.guest_uptime),
                initrd_phase_secs: col(&|r| Some(r.stage2_secs? - r.initrd_start_secs?)),
                stage2_to_target_secs: col(&|r| Some(r.secs? - r.stage2_secs?)),
                without_initrd_secs: col(&|r| {
                    Some(r.secs? - (r.stage2_secs? - r.initrd_start_secs?))
                }),
                without_init_secs: col(&|r| Some(r.secs? - r.initrd_own_secs?)),
            }
        })
        .collect()
}

/// Issue #11's targets: `--exec` at least 3× faster than vng; multi-user at least 2×
/// sooner than with dracut and within 20 s.
pub fn targets(rows: &[E2eRow]) -> Vec<Target> {
    let get = |c: Contender| {
        rows.iter()
            .find(|r| r.contender == c)
            .and_then(|r| med(r.secs))
    };
    let mut t = vec![
        factor_target(
            "`nixboot-qemu --exec 'uname -r'` at least 3× faster than `vng --exec` (host command to output)",
            "vng",
            get(Contender::VngExec),
            get(Contender::NixbootExec),
            3.0,
            None,
        ),
        factor_target(
            "real systemd at multi-user.target at least 2× sooner than with dracut's initrd (host command to the console line)",
            "dracut",
            get(Contender::DracutSystemd),
            get(Contender::NixbootSystemd),
            2.0,
            bounds_aside(rows),
        ),
    ];
    let ours = get(Contender::NixbootSystemd);
    t.push(Target {
        what: "real systemd at multi-user.target within 20 s under TCG (nixboot's initrd)".into(),
        measured: ours.map_or("(not measured)".into(), |o| {
            format!("{} (host command to the console line)", secs(o))
        }),
        met: ours.map(|o| o <= 20.0),
    });
    t
}

fn factor_target(
    what: &str,
    peer_name: &str,
    peer: Option<f64>,
    ours: Option<f64>,
    factor: f64,
    aside: Option<String>,
) -> Target {
    match (peer, ours) {
        (Some(p), Some(o)) if o > 0.0 => Target {
            what: what.into(),
            measured: format!(
                "{peer_name} {} ÷ nixboot {} = {:.2}× (needs ≥ {factor:.0}×{})",
                secs(p),
                secs(o),
                p / o,
                aside.map_or(String::new(), |a| format!("; {a}"))
            ),
            met: Some(p / o >= factor),
        },
        _ => Target {
            what: what.into(),
            measured: "(not measured)".into(),
            met: None,
        },
    }
}

/// What target (b) could be in this run: with nixboot's init taking no time, and with no
/// initrd phase at all (the most any initrd could give; it also drops the start of stage
/// 2's systemd, which every initrd's boot pays). The rest (launcher, firmware, kernel, the
/// distribution's own stage 2) is the same for every initrd.
fn bounds_aside(rows: &[E2eRow]) -> Option<String> {
    let init = bound(rows, |r| r.without_init_secs);
    let initrd = bound(rows, |r| r.without_initrd_secs);
    let parts: Vec<String> = [
        init.map(|b| format!("with nixboot's init taking no time {b:.2}×")),
        initrd.map(|b| {
            format!("with no initrd phase at all {b:.2}×, the most any initrd could give here")
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// dracut's median ÷ the median of nixboot's boots with a part taken out.
fn bound(rows: &[E2eRow], floor: impl Fn(&E2eRow) -> Option<Summary>) -> Option<f64> {
    let row = |c: Contender| rows.iter().find(|r| r.contender == c);
    let dracut = med(row(Contender::DracutSystemd)?.secs)?;
    let floor = med(floor(row(Contender::NixbootSystemd)?))?;
    (floor > 0.0).then(|| dracut / floor)
}

fn exec_ours(r: &Report) -> Option<f64> {
    r.e2e_rows
        .iter()
        .find(|x| x.contender == Contender::NixbootExec)
        .and_then(|x| med(x.secs))
}

fn systemd_ours(r: &Report) -> Option<f64> {
    r.e2e_rows
        .iter()
        .find(|x| x.contender == Contender::NixbootSystemd)
        .and_then(|x| med(x.secs))
}

impl Report {
    /// The table of what users wait for, with the ratio against nixboot's.
    pub(crate) fn e2e_table(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(
            m,
            "| what the user waits for | tool | runs ok | host command to result (median, min-max) | to exit / stop | ratio to nixboot |\n|---|---|---|---|---|---|"
        );
        for r in &self.e2e_rows {
            let (what, ours) = if r.contender.is_exec() {
                (format!("`{EXEC_CMD}` output"), exec_ours(self))
            } else {
                (
                    "real systemd at multi-user.target".to_string(),
                    systemd_ours(self),
                )
            };
            let _ = writeln!(
                m,
                "| {what} | {} | {}/{} | {} | {} | {} |",
                r.contender.name(),
                r.ok,
                r.ok + r.failed,
                sum_s(r.secs),
                sum_s(r.exit_secs),
                ratio(med(r.secs), ours)
            );
        }
        m
    }

    pub(crate) fn e2e_section(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(
            m,
            "## End to end: what a user waits for\n\n\
             In the same run, {} rounds, the order rotated every round; every guest {CPUS} vCPUs \
             (machine {MACHINE} for nixboot-qemu and both real-systemd boots; vng picks its own: microvm only with KVM), \
             {MEMORY_MB} MiB, the same kernel; times on the host from the command's start.\n\n\
             - **One command in a throwaway VM.** `nixboot-qemu --closure SYSTEM --exec '{EXEC_CMD}'` \
             (a tiny closure: the probe as init, Debian's static busybox as `sw`, served by the \
             init's command runner; its initrd from mkinitrd with virtio_pci, virtiofs and \
             virtio_console) against `vng -r VMLINUZ --exec '{EXEC_CMD}'` (virtme-ng from PyPI; \
             `--disable-kvm` under TCG; the Rust virtiofsd first in PATH; its own kernel command \
             line: no `cryptomgr.notests`, which nixboot-qemu passes by default). Until the kernel's \
             release arrives on the tool's stdout (a pipe).\n\
             - **A real systemd to multi-user.target.** Debian 12's systemd (debootstrap'd, \
             `NIXBOOT_DEBIAN_ROOT`) with its root shared read-write over virtiofs (tag `store`; \
             a fresh `cp -a` of the cached tree per boot, made before the clock starts, so the \
             cached tree is never written; served with `--cache=always` as the launcher serves \
             an immutable store: the copy is that guest's alone), booted by nixboot's initrd and by dracut's (the \
             images of the table above) through the launcher library with the same settings; \
             kernel command line `{}` + the initrd's root= words + `{SYSTEMD_WORDS}`. Until \
             multi-user.target is reached: a oneshot unit added to each copy, wanted by and \
             ordered after multi-user.target, prints a marker line on the console (timestamped \
             on the host as it arrives, within 20 ms; systemd's own `Reached target ... \
             Multi-User System` line is not shown once a getty owns the console), for both.\n",
            self.setup.runs,
            crate::boot::base_cmdline(),
        );
        m.push_str(&self.e2e_table());
        m.push('\n');
        m.push_str(&self.e2e_split());
        for (c, why) in &self.e2e_left_out {
            let _ = writeln!(m, "- {} left out: {why}", c.name());
        }
        let _ = writeln!(
            m,
            "\n### Targets (issue #11; medians)\n\n| target | measured | met |\n|---|---|---|"
        );
        for t in &self.e2e_targets {
            let met = match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "not measured",
            };
            let _ = writeln!(m, "| {} | {} | {met} |", t.what, t.measured);
        }
        m.push('\n');
        m
    }

    /// Where the real-systemd boot's time goes, as the console shows it.
    fn e2e_split(&self) -> String {
        let mut m = String::new();
        let sys: Vec<&E2eRow> = self
            .e2e_rows
            .iter()
            .filter(|r| !r.contender.is_exec())
            .collect();
        if sys.is_empty() {
            return m;
        }
        let _ = writeln!(
            m,
            "Where the real-systemd boot's time goes (host clock, medians and min-max): \"to the \
             initrd\" is the launcher (virtiofsd, QEMU), firmware and the kernel up to the \
             initrd's first sign (dracut: its systemd's `Welcome to ... (Initramfs)!`; nixboot: \
             its status line minus the initrd_ms it reports); \"initrd phase\" from there to \
             stage 2's systemd saying `Welcome to Debian GNU/Linux 12 (bookworm)!`; \"stage 2\" \
             from there to multi-user.target.\n\n\
             | initrd | to the initrd | initrd phase | of which the initrd's own report | stage 2 to multi-user | total | guest uptime at multi-user |\n|---|---|---|---|---|---|---|"
        );
        for r in sys {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.contender.name(),
                sum_s(r.initrd_start_secs),
                sum_s(r.initrd_phase_secs),
                sum_s(r.initrd_own_secs),
                sum_s(r.stage2_to_target_secs),
                sum_s(r.secs),
                sum_s(r.guest_uptime)
            );
        }
        m.push('\n');
        m
    }

    pub(crate) fn systemd_scale_section(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(
            m,
            "## Scale: imageless guests to multi-user.target of a real systemd at once\n\n\
             Debian 12's systemd as a NixOS-shaped closure (qemu_tests::nixos_closure, the scripted \
             flavour: nixpkgs' stage-2-init.sh in front of systemd), every guest booted imageless \
             from the same host store: nixboot's initrd, a tmpfs root, the store (immutable: \
             read-only, cached by the guest) and the kernel modules (read-only) over virtiofs, \
             {} vCPU and {} MiB each; `systemd.show_status=1 systemd.unit=multi-user.target`. \
             Wall time from launching the first guest until every guest's console showed \
             `Reached target ... Multi-User System`; memory from smaps_rollup of each guest's \
             QEMU and virtiofsd processes, sampled as that line arrived.\n\n\
             | K | all at multi-user (wall) | each at multi-user (host, from the group's start) | host memory per guest (PSS) | of which guest RAM | QEMU RSS / PSS | virtiofsd processes per guest | their RSS / PSS |\n|---|---|---|---|---|---|---|---|",
            crate::boot::CPUS,
            crate::boot::MEMORY_MB
        );
        for (r, procs) in self.systemd_scale.iter().zip(self.systemd_scale_procs()) {
            let _ = writeln!(
                m,
                "| {}{} | {} | {} | {} | {} | {} / {} | {} | {} / {} |",
                r.k,
                if r.failed_guests > 0 {
                    format!(" ({} failed)", r.failed_guests)
                } else {
                    String::new()
                },
                sum_s(r.wall_all),
                sum_s(r.host_to_arrival),
                sum_mib(r.pss_per_guest_mib),
                sum_mib(r.guest_ram_pss_mib),
                mib(r.qemu_rss_mib),
                mib(r.qemu_pss_mib),
                procs,
                mib(r.virtiofsd_rss_mib),
                mib(r.virtiofsd_pss_mib),
            );
        }
        let _ = writeln!(
            m,
            "\nWhat keeps both low: no image per guest (the store is one host directory every \
             guest reads through its own virtiofsd, so the page cache holds one copy of it; \
             the root is a tmpfs inside the guest's RAM); guest RAM is a memfd the kernel \
             fills on demand (a 1 GiB guest takes what it touched); the store share is \
             immutable, so guests cache it and virtiofsd stays idle after the boot; a \
             virtiofsd is small (its RSS is mostly shared libraries and the memfd mapping, \
             counted once in PSS) and serves one share of one guest (vhost-user is one \
             connection per daemon): two per guest, the store and the modules.\n"
        );
        m
    }

    /// Median virtiofsd processes per guest, per row of the real-systemd scale run.
    fn systemd_scale_procs(&self) -> Vec<String> {
        self.systemd_scale
            .iter()
            .map(|r| {
                let procs: Vec<f64> = self
                    .systemd_scale_groups
                    .iter()
                    .filter(|g| g.k == r.k)
                    .flat_map(|g| g.guests.iter())
                    .filter(|g| g.ok)
                    .map(|g| g.virtiofsd_procs as f64)
                    .collect();
                summarize(&procs).map_or("-".into(), |s| format!("{:.0}", s.median))
            })
            .collect()
    }
}

fn mib(s: Option<Summary>) -> String {
    s.map_or("-".into(), |s| format!("{:.0} MiB", s.median))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn rec(c: Contender, secs: f64, ok: bool) -> Record {
        Record {
            contender: c,
            round: 1,
            slot: 0,
            ok,
            error: None,
            secs: Some(secs),
            exit_secs: secs + 1.0,
            stage2_secs: Some(secs - 5.0),
            initrd_start_secs: Some(1.0),
            initrd_own_secs: None,
            guest_uptime: None,
            log: PathBuf::new(),
        }
    }

    #[test]
    fn rows_summarise_ok_runs_and_targets_compare_medians() {
        let mut records = vec![
            rec(Contender::NixbootExec, 2.0, true),
            rec(Contender::NixbootExec, 3.0, true),
            rec(Contender::NixbootExec, 99.0, false),
            rec(Contender::VngExec, 9.0, true),
            rec(Contender::NixbootSystemd, 18.0, true),
            rec(Contender::DracutSystemd, 30.0, true),
        ];
        records[4].initrd_own_secs = Some(0.5);
        let rows = rows(&records);
        assert_eq!(rows.len(), 4);
        let ours = &rows[0];
        assert_eq!((ours.ok, ours.failed), (2, 1));
        assert_eq!(med(ours.secs), Some(2.5));
        assert_eq!(med(rows[2].initrd_phase_secs), Some(12.0));
        assert_eq!(med(rows[2].stage2_to_target_secs), Some(5.0));
        let t = targets(&rows);
        // 9 / 2.5 = 3.6 >= 3; 30 / 18 < 2; 18 <= 20.
        assert_eq!(
            t.iter().map(|t| t.met).collect::<Vec<_>>(),
            [Some(true), Some(false), Some(true)]
        );
        // Without its 12 s initrd phase nixboot's boot is 6 s: 30 / 6 = 5x at most.
        assert_eq!(med(rows[2].without_initrd_secs), Some(6.0));
        // Without the init's own 0.5 s: 30 / 17.5.
        assert_eq!(med(rows[2].without_init_secs), Some(17.5));
        assert!(t[1].measured.ends_with("(needs ≥ 2×; with nixboot's init taking no time 1.71×; with no initrd phase at all 5.00×, the most any initrd could give here)"), "{}", t[1].measured);
        assert!(!t[0].measured.contains("initrd phase"), "{}", t[0].measured);
    }

    #[test]
    fn targets_without_peers_are_not_measured() {
        let rows = rows(&[rec(Contender::NixbootExec, 2.0, true)]);
        let t = targets(&rows);
        assert!(t.iter().all(|t| t.met.is_none()), "{t:?}");
    }
}
