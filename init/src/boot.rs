//! The boot, executed: early mounts, console, command line, config, plan, then the plan
//! step by step, then exec of the next init. Any error goes to the failure policy
//! (failure.rs). Never returns.

use crate::cmdline::{self, describe_timeout};
use crate::failure::{self, fail, Failure};
use crate::plan::{self, Plan, Step};
use crate::report::{self, log, Timings};
use crate::{devices, modules, mounts, store, switch_root, wait};
use nixboot_protocol::{InitrdConfig, CONFIG_PATH};
use std::time::Duration;

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The whole boot; called from the binary's C `main`.
pub fn run() -> ! {
    if !rustix::process::getpid().is_init() {
        // Everything below mounts over / and finally deletes it: never outside an initramfs.
        report::write_console(
            b"nixboot init: not PID 1; this program only runs as /init of an initramfs\n",
        );
        std::process::exit(1);
    }
    failure::install_panic_hook();
    let init_start = report::now();
    let mut timings = Timings::new(init_start);

    // Early mounts: a fixed table, before the console (it needs devtmpfs) and before the
    // command line (it lives in /proc).
    failure::set_step("early-mounts");
    let mut early_failure = None;
    for m in plan::EARLY_MOUNTS {
        if let Err(f) = mounts::mount_step(
            "early-mounts",
            m.source,
            m.target,
            m.fstype,
            m.flags,
            m.data,
        ) {
            early_failure.get_or_insert(f);
        }
    }
    let console = report::ensure_console();
    let end = report::now();
    timings.record("early-mounts", init_start, end);
    if let Some(f) = early_failure {
        fail(f)
    }

    // The command line comes before the first informational line: it says whether to be quiet.
    failure::set_step("cmdline");
    let t = report::now();
    let raw = match std::fs::read("/proc/cmdline") {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => fail(Failure::new(
            "cmdline",
            format!("cannot read /proc/cmdline: {e}"),
        )),
    };
    let opts = cmdline::parse(raw.trim_end());
    failure::set_action(opts.emergency);
    report::set_quiet(opts.quiet && !opts.debug);
    timings.record("cmdline", t, report::now());

    log(
        "init",
        &format!("nixboot init {} starting", env!("CARGO_PKG_VERSION")),
    );
    match console {
        Ok(true) => log(
            "console",
            "the kernel gave us no console; opened /dev/console",
        ),
        Ok(false) => {}
        Err(e) => report::notice(
            "console",
            &format!("cannot open /dev/console: {}", report::errno(e)),
        ),
    }
    log(
        "early-mounts",
        &format!(
            "devtmpfs /dev, proc /proc, sysfs /sys, tmpfs /run ({})",
            ms(end.saturating_sub(init_start))
        ),
    );
    if opts.debug {
        log("cmdline", raw.trim_end());
    }
    for w in &opts.warnings {
        report::notice("cmdline", &format!("WARNING: {w}"));
    }

    failure::set_step("config");
    let t = report::now();
    let config = read_config();
    timings.record("config", t, report::now());

    failure::set_step("plan");
    let plan = plan::build(&opts, &config)
        .unwrap_or_else(|e| fail(Failure::new("plan", e.error).check(e.check)));
    for n in &plan.notes {
        log("plan", n);
    }
    log_plan(&plan, &opts);

    if plan
        .steps
        .iter()
        .any(|s| matches!(s, Step::LoadModule { .. }))
    {
        modules::check_kernel_version(config.kernel_version.as_deref());
    }

    let mut state = State::default();
    for step in &plan.steps {
        let name = step.name();
        failure::set_step(name);
        let t = report::now();
        let done = execute(step, &opts, &mut state, &mut timings).unwrap_or_else(|f| fail(f));
        let end = report::now();
        let phase = match step {
            Step::LoadModule { name: m, .. } => format!("{name} {m}"),
            _ => name.to_string(),
        };
        // The timings file is written inside its own step; its time goes to the log only.
        if !matches!(step, Step::WriteTimings { .. }) {
            timings.record(phase, t, end);
        }
        log(name, &format!("{done} ({})", ms(end.saturating_sub(t))));
    }

    failure::set_step("exec");
    let now = report::now();
    let exec = &plan.exec;
    log("timings", &timings.summary(now));
    log(
        "exec",
        &format!("{} args {:?}", exec.path, exec.argv.get(1..).unwrap_or(&[])),
    );
    report::write_console(report::status_ok(&exec.path, timings.elapsed_ms(now)).as_bytes());
    // Only returns when execve failed: a failed status line follows the ok line, and the
    // last status line is the one that counts (docs/contracts-internal.md).
    fail(switch_root::exec("exec", exec))
}

/// What one step hands to a later one.
#[derive(Default)]
struct State {
    /// The device the last block wait found, for the mount after it.
    found: Option<devices::Found>,
}

/// A missing config is an initrd without modules and default init (fine for kernels with
/// everything built in); a corrupt one is a failure.
fn read_config() -> InitrdConfig {
    match std::fs::read(CONFIG_PATH) {
        Ok(bytes) => InitrdConfig::parse(&bytes).unwrap_or_else(|e| {
            fail(
                Failure::new("config", format!("{CONFIG_PATH}: {e}"))
                    .tried(format!("read {} bytes from {CONFIG_PATH}", bytes.len()))
                    .check("rebuild the initrd with mkinitrd (same version as this init)"),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            log(
                "config",
                &format!("no {CONFIG_PATH}: no modules to load, no default init"),
            );
            InitrdConfig::new()
        }
        Err(e) => fail(
            Failure::new("config", format!("cannot read {CONFIG_PATH}: {e}"))
                .check("rebuild the initrd with mkinitrd"),
        ),
    }
}

fn log_plan(plan: &Plan, opts: &cmdline::Options) {
    let modules = plan
        .steps
        .iter()
        .filter(|s| matches!(s, Step::LoadModule { .. }))
        .count();
    let tag = |role: plan::Role| {
        plan.steps.iter().find_map(|s| match s {
            Step::MountVirtiofs { role: r, tag, .. } if *r == role => Some(tag.clone()),
            _ => None,
        })
    };
    let has = |f: fn(&Step) -> bool| plan.steps.iter().any(f);
    let store = match tag(plan::Role::Store) {
        Some(t) if has(|s| matches!(s, Step::MountOverlay { .. })) => format!("{t} (overlay)"),
        Some(t) => t,
        None if has(|s| matches!(s, Step::CopyEmbeddedStore { .. })) => "embedded".into(),
        None => "none".into(),
    };
    log(
        "plan",
        &format!(
            "root={} store={store} modules={} timeout={} on-failure={} init={} ({} modules to load)",
            opts.root,
            tag(plan::Role::Modules).unwrap_or_else(|| "none".into()),
            describe_timeout(opts.timeout),
            opts.emergency.as_str(),
            plan.exec.path,
            modules
        ),
    );
    if opts.debug {
        for (i, s) in plan.steps.iter().enumerate() {
            log(
                "plan",
                &format!("{:2}. {}: {}", i + 1, s.name(), s.describe()),
            );
        }
        log(
            "plan",
            &format!(
                "then exec {:?} with environment {:?}",
                plan.exec.argv, plan.exec.env
            ),
        );
    }
}

/// Runs one step; `Ok` is the message logged for it.
fn execute(
    step: &Step,
    opts: &cmdline::Options,
    state: &mut State,
    timings: &mut Timings,
) -> Result<String, Failure> {
    let name = step.name();
    match step {
        Step::LoadModule {
            name: m,
            path,
            params,
        } => Ok(match modules::load(m, path, params)? {
            modules::Loaded::Now => format!("{m} loaded"),
            modules::Loaded::Already => format!("{m} already loaded (built in?)"),
        }),
        Step::Mount {
            source,
            target,
            fstype,
            flags,
            data,
            ..
        } => {
            mounts::mount_step(name, source, target, fstype, *flags, data)?;
            Ok(format!(
                "{source} on {target} type {fstype} ({})",
                plan::options(*flags, data)
            ))
        }
        Step::MountVirtiofs {
            tag,
            target,
            flags,
            data,
            timeout,
            ..
        } => {
            wait::mount_virtiofs(name, tag, target, *flags, data, *timeout, opts.debug)?;
            Ok(format!(
                "virtiofs tag {tag} on {target} ({})",
                plan::options(*flags, data)
            ))
        }
        Step::WaitBlock { spec, timeout, .. } => {
            let found = devices::wait_block(name, spec, *timeout, opts.debug)?;
            let msg = format!(
                "{} is {}",
                cmdline::Root::Block(spec.clone()),
                crate::blockdev::describe(&found.candidate)
            );
            state.found = Some(found);
            Ok(msg)
        }
        Step::MountBlock {
            target,
            fstypes,
            flags,
            data,
            ..
        } => {
            let Some(found) = state.found.as_ref() else {
                return Err(
                    Failure::new(name, "internal error: no device was waited for")
                        .check("this is a bug in nixboot's init; please report it"),
                );
            };
            let fstype = devices::mount_block(name, found, target, fstypes, *flags, data)?;
            Ok(format!(
                "{} on {target} type {fstype} ({})",
                found.node,
                plan::options(*flags, data)
            ))
        }
        Step::CarryFiles { from, to } => {
            if rustix::fs::access(from.as_str(), rustix::fs::Access::EXISTS).is_err() {
                return Ok("nothing carried".into());
            }
            let c = store::copy_embedded(name, from, to, &opts.tmpfs_size)?;
            // Host keys among them: readable by root only, whatever the archive said.
            rustix::fs::chmod(to.as_str(), rustix::fs::Mode::from_raw_mode(0o700)).map_err(
                |e| Failure::new(name, format!("chmod 0700 {to}: {}", report::errno(e))),
            )?;
            Ok(format!(
                "{from} -> {to}: {} files, {} symlinks",
                c.files, c.symlinks
            ))
        }
        Step::CopyEmbeddedStore { from, to } => {
            let c = store::copy_embedded(name, from, to, &opts.tmpfs_size)?;
            let mut msg = format!(
                "{from} -> {to}: {} files, {} symlinks, {} directories, {:.1} MiB",
                c.files,
                c.symlinks,
                c.dirs,
                c.bytes as f64 / (1024.0 * 1024.0)
            );
            if c.skipped > 0 {
                msg.push_str(&format!(
                    "; {} special files left behind (not expected in a store)",
                    c.skipped
                ));
            }
            Ok(msg)
        }
        Step::MountOverlay {
            target,
            lower,
            upper,
            work,
            ..
        } => {
            mounts::mount_overlay(name, target, lower, upper, work)?;
            Ok(format!(
                "overlay on {target} (lower {lower}, upper {upper})"
            ))
        }
        Step::RemountReadOnly { target } => {
            mounts::remount_read_only(name, target)?;
            Ok(format!("{target} remounted read-only"))
        }
        Step::CheckInit { new_root, path } => {
            let notes = switch_root::check_init(name, new_root, path)?;
            for n in notes {
                log(name, &n);
            }
            Ok(format!("{path} is there"))
        }
        Step::MoveSpecialMounts { new_root, mounts } => {
            switch_root::move_special_mounts(name, new_root, mounts)?;
            Ok(format!("{} moved to {new_root}", mounts.join(" ")))
        }
        Step::PrepareRoot { new_root, init } => {
            // HOOK h5-nixos (issue 9), to be re-homed with the per-phase planners: stage 1's
            // /dev links for every flavour, the flavour logged, and the nixos-init flavour (c)
            // prepared here; (a), (b) and others go on to prepare-root as before.
            match crate::nixos::nixos_init::prepare(name, new_root, init)? {
                Some(done) => Ok(done),
                None => switch_root::prepare_root(name, new_root, init),
            }
        }
        Step::SwitchRoot { new_root } => {
            switch_root::switch_root(name, new_root)?;
            Ok(format!("{new_root} is now /"))
        }
        Step::WriteTimings { path } => Ok(write_timings(path, timings)),
    }
}

/// Not being able to write the timings is worth a line, not a failed boot.
fn write_timings(path: &str, timings: &Timings) -> String {
    let json = timings.to_json(report::now());
    let dir = std::path::Path::new(path)
        .parent()
        .and_then(|p| p.to_str())
        .unwrap_or("/");
    if let Err((d, e)) = mounts::mkdir_p(dir) {
        return format!("WARNING: cannot create {d}: {}", report::errno(e));
    }
    match std::fs::write(path, json) {
        Ok(()) => format!("{path} written"),
        Err(e) => format!("WARNING: cannot write {path}: {e}"),
    }
}
