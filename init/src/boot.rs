//! The boot, executed: early mounts, console, command line, config, plan, then the plan
//! step by step, then exec of the next init. Any error goes to the failure policy
//! (failure.rs). Never returns.
//!
//! Each step runs as one or more phases ([`Boot::phase`]): the phase names the step for
//! the failure policy, is timed, and logs what it did. The executors below only call the
//! phase's module and say what it did.

use crate::cmdline::{self, describe_timeout, Options};
use crate::failure::{self, fail, Failure};
use crate::log::{self, log, Timings};
use crate::plan::step::{mount_text, overlay_text, virtiofs_text};
use crate::plan::{self, Plan, Step};
use crate::{block, modules, mounts, nixos, store, switch_root, virtiofs};
use nixboot_protocol::{InitrdConfig, CONFIG_PATH};
use std::time::Duration;

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The whole boot; called from the binary's C `main`.
pub fn run() -> ! {
    if !rustix::process::getpid().is_init() {
        // Everything below mounts over / and finally deletes it: never outside an initramfs.
        log::write_console(
            b"nixboot init: not PID 1; this program only runs as /init of an initramfs\n",
        );
        std::process::exit(1);
    }
    failure::install_panic_hook();
    let init_start = log::now();
    let mut timings = Timings::new(init_start);
    let (console, early_done) = early_mounts(&mut timings, init_start);
    let (opts, raw) = read_cmdline(&mut timings);
    announce(&opts, &raw, console, early_done.saturating_sub(init_start));

    failure::set_step("config");
    let t = log::now();
    let config = read_config();
    timings.record("config", t, log::now());

    let plan = make_plan(&opts, &config);
    let mut boot = Boot {
        opts: &opts,
        timings,
    };
    for step in &plan.steps {
        boot.execute(step);
    }
    if let Some(run) = &plan.command {
        crate::exec::serve_unless_agent(run, &boot.timings);
    }
    exec(&plan.exec, &boot.timings)
}

/// The fixed early table, before the console (it needs devtmpfs) and before the command
/// line (it lives in /proc). Returns whether the console had to be opened, and when the
/// phase ended.
fn early_mounts(
    timings: &mut Timings,
    init_start: Duration,
) -> (rustix::io::Result<bool>, Duration) {
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
    let console = log::ensure_console();
    let end = log::now();
    timings.record("early-mounts", init_start, end);
    if let Some(f) = early_failure {
        fail(f)
    }
    (console, end)
}

/// The command line comes before the first informational line: it says whether to be quiet.
fn read_cmdline(timings: &mut Timings) -> (Options, String) {
    failure::set_step("cmdline");
    let t = log::now();
    let raw = match std::fs::read("/proc/cmdline") {
        Ok(b) => String::from_utf8_lossy(&b).trim_end().to_string(),
        Err(e) => fail(Failure::new(
            "cmdline",
            format!("cannot read /proc/cmdline: {e}"),
        )),
    };
    let opts = cmdline::parse(&raw);
    failure::set_action(opts.emergency);
    log::set_quiet(opts.quiet && !opts.debug);
    timings.record("cmdline", t, log::now());
    (opts, raw)
}

/// The first lines: version, console, early mounts, the command line's warnings.
fn announce(opts: &Options, raw: &str, console: rustix::io::Result<bool>, early: Duration) {
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
        Err(e) => log::notice(
            "console",
            &format!("cannot open /dev/console: {}", log::errno(e)),
        ),
    }
    log(
        "early-mounts",
        &format!(
            "devtmpfs /dev, proc /proc, sysfs /sys, tmpfs /run ({})",
            ms(early)
        ),
    );
    if opts.debug {
        log("cmdline", raw);
    }
    for w in &opts.warnings {
        log::notice("cmdline", &format!("WARNING: {w}"));
    }
}

fn make_plan(opts: &Options, config: &InitrdConfig) -> Plan {
    failure::set_step("plan");
    let plan = plan::build(opts, config)
        .unwrap_or_else(|e| fail(Failure::new("plan", e.error).check(e.check)));
    for n in &plan.notes {
        log("plan", n);
    }
    log_plan(&plan, opts);
    if plan
        .steps
        .iter()
        .any(|s| matches!(s, Step::LoadModule { .. }))
    {
        modules::check_kernel_version(config.kernel_version.as_deref());
    }
    plan
}

/// The status line, then the next init. Only returns when execve failed: a failed status
/// line follows the ok line, and the last status line is the one that counts
/// (docs/contracts-internal.md).
fn exec(exec: &plan::Exec, timings: &Timings) -> ! {
    failure::set_step("exec");
    let now = log::now();
    log("timings", &timings.summary(now));
    log(
        "exec",
        &format!("{} args {:?}", exec.path, exec.argv.get(1..).unwrap_or(&[])),
    );
    log::write_console(log::status_ok(&exec.path, timings.elapsed_ms(now)).as_bytes());
    fail(switch_root::exec("exec", exec))
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

fn log_plan(plan: &Plan, opts: &Options) {
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
        let phases = plan.steps.iter().flat_map(Step::phases);
        for (i, (name, text)) in phases.enumerate() {
            log("plan", &format!("{:2}. {name}: {text}", i + 1));
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

/// The plan being executed: the options the executors need and the timings so far.
struct Boot<'a> {
    opts: &'a Options,
    timings: Timings,
}

/// How a phase's time is kept.
enum Timed {
    /// Under the phase's name.
    AsNamed,
    /// Under another label (`load-module virtio_blk`).
    As(String),
    /// The log only (the timings file is written inside its own phase).
    LogOnly,
}

impl Boot<'_> {
    /// Runs one phase: names it for the failure policy (a failure never returns), times
    /// it, logs what it did with its time. Returns the phase's value.
    fn phase<T>(
        &mut self,
        name: &'static str,
        timed: Timed,
        run: impl FnOnce(&Timings) -> Result<(T, String), Failure>,
    ) -> T {
        failure::set_step(name);
        let t = log::now();
        let (value, done) = run(&self.timings).unwrap_or_else(|f| fail(f));
        let end = log::now();
        match timed {
            Timed::AsNamed => self.timings.record(name, t, end),
            Timed::As(label) => self.timings.record(label, t, end),
            Timed::LogOnly => {}
        }
        log(name, &format!("{done} ({})", ms(end.saturating_sub(t))));
        value
    }

    /// A phase with nothing to hand on, timed under its name.
    fn simple(&mut self, name: &'static str, run: impl FnOnce() -> Result<String, Failure>) {
        self.phase(name, Timed::AsNamed, |_| run().map(|done| ((), done)))
    }

    /// One step: each arm calls its phase's module and says what it did.
    fn execute(&mut self, step: &Step) {
        let name = step.name();
        let (debug, tmpfs_size) = (self.opts.debug, self.opts.tmpfs_size.as_str());
        match step {
            Step::LoadModule {
                name: m,
                path,
                params,
            } => self.phase(name, Timed::As(format!("{name} {m}")), |_| {
                Ok(((), modules::load_step(m, path, params)?))
            }),
            Step::Mount {
                source,
                target,
                fstype,
                flags,
                data,
                ..
            } => self.simple(name, || {
                mounts::mount_step(name, source, target, fstype, *flags, data)?;
                Ok(mount_text(source, target, fstype, *flags, data))
            }),
            Step::MountVirtiofs {
                tag,
                target,
                flags,
                data,
                timeout,
                ..
            } => self.simple(name, || {
                virtiofs::mount_virtiofs(name, tag, target, *flags, data, *timeout, debug)?;
                Ok(virtiofs_text(tag, target, *flags, data))
            }),
            Step::MountBlock { .. } => self.mount_block(step),
            Step::MountVerity { .. } => self.mount_verity(step),
            Step::CarryFiles { from, to } => {
                self.simple(name, || store::carry(name, from, to, tmpfs_size))
            }
            Step::CopyEmbeddedStore { from, to } => {
                self.simple(name, || store::copy_store(name, from, to, tmpfs_size))
            }
            Step::MountOverlay {
                target,
                lower,
                upper,
                work,
                ..
            } => self.simple(name, || {
                mounts::mount_overlay(name, target, lower, upper, work)?;
                Ok(overlay_text(target, lower, upper, None))
            }),
            Step::RemountReadOnly { .. }
            | Step::CheckInit { .. }
            | Step::MoveSpecialMounts { .. }
            | Step::DeviceLinks { .. }
            | Step::PrepareRoot { .. }
            | Step::SwitchRoot { .. }
            | Step::WriteTimings { .. } => self.execute_switch(step),
        }
    }

    /// The steps from check-init on.
    fn execute_switch(&mut self, step: &Step) {
        let name = step.name();
        match step {
            Step::RemountReadOnly { target } => self.simple(name, || {
                mounts::remount_read_only(name, target)?;
                Ok(format!("{target} remounted read-only"))
            }),
            Step::CheckInit { new_root, path } => self.simple(name, || {
                for n in nixos::check_init::check_init(name, new_root, path)? {
                    log(name, &n);
                }
                Ok(format!("{path} is there"))
            }),
            Step::MoveSpecialMounts { new_root, mounts } => self.simple(name, || {
                switch_root::move_special_mounts(name, new_root, mounts)?;
                Ok(format!("{} moved to {new_root}", mounts.join(" ")))
            }),
            Step::DeviceLinks { dir, links } => {
                self.simple(name, || Ok(switch_root::link_devices(name, dir, links)))
            }
            Step::PrepareRoot { new_root, init } => self.prepare_root(new_root, init),
            Step::SwitchRoot { new_root } => self.simple(name, || {
                switch_root::switch_root(name, new_root)?;
                Ok(format!("{new_root} is now /"))
            }),
            Step::WriteTimings { path } => self.phase(name, Timed::LogOnly, |timings| {
                Ok(((), write_timings(path, timings)))
            }),
            // `execute` matches every step and hands only the ones above to here.
            _ => misrouted(step),
        }
    }

    /// The closure's flavour, then what it needs done: two phases, the flavour handed from
    /// one to the other as a value; the second is named for what it does.
    fn prepare_root(&mut self, new_root: &str, init: &str) {
        let detect = nixos::flavour::STEP_FLAVOUR;
        let flavour = self.phase(detect, Timed::AsNamed, |_| {
            nixos::flavour::detect(detect, new_root, init)
        });
        let prepare = nixos::prepare_phase(&flavour);
        self.simple(prepare, || nixos::prepare(prepare, new_root, &flavour))
    }

    /// A block device: the wait and the mount, two phases timed apart; the device found is
    /// handed from one to the other as a value.
    fn mount_block(&mut self, step: &Step) {
        let Step::MountBlock {
            role,
            spec,
            timeout,
            target,
            fstypes,
            flags,
            data,
        } = step
        else {
            misrouted(step)
        };
        let debug = self.opts.debug;
        let wait = role.wait_name();
        let found = self.phase(wait, Timed::AsNamed, |_| {
            let found = block::wait::wait_block(wait, spec, *timeout, debug)?;
            let done = format!(
                "{} is {}",
                cmdline::Root::Block(spec.clone()),
                block::probe::describe(&found.candidate)
            );
            Ok((found, done))
        });
        let mount = role.step_name();
        self.simple(mount, || {
            let fstype = block::mount::mount_block(mount, &found, target, fstypes, *flags, data)?;
            Ok(mount_text(&found.node, target, &fstype, *flags, data))
        })
    }
}

impl Boot<'_> {
    /// The verity store: find the image, set up the target and read through it, mount it;
    /// three phases timed apart, each handing its device to the next as a value.
    fn mount_verity(&mut self, step: &Step) {
        let Step::MountVerity {
            source,
            root_hash,
            hash_offset,
            check,
            timeout,
            target,
        } = step
        else {
            misrouted(step)
        };
        let debug = self.opts.debug;
        let find = step.name();
        let image = self.phase(find, Timed::AsNamed, |_| {
            crate::verity::find(find, source, *timeout, debug)
        });
        let expected = crate::verity::Expected {
            source,
            root_hash,
            hash_offset: *hash_offset,
            check: *check,
        };
        let verify = crate::verity::STEP;
        let dm_node = self.phase(verify, Timed::AsNamed, |_| {
            crate::verity::attach(verify, image, &expected)
        });
        let mount = plan::Role::Store.step_name();
        self.simple(mount, || crate::verity::mount(mount, &dm_node, target))
    }
}

/// A step handed to an executor that is not its own: a bug, reported as one.
fn misrouted(step: &Step) -> ! {
    fail(
        Failure::new(
            step.name(),
            "internal error: step given to the wrong executor",
        )
        .check("this is a bug in nixboot's init; please report it"),
    )
}

/// Not being able to write the timings is worth a line, not a failed boot.
fn write_timings(path: &str, timings: &Timings) -> String {
    let json = timings.to_json(log::now());
    let dir = std::path::Path::new(path)
        .parent()
        .and_then(|p| p.to_str())
        .unwrap_or("/");
    if let Err((d, e)) = mounts::mkdir_p(dir) {
        return format!("WARNING: cannot create {d}: {}", log::errno(e));
    }
    match std::fs::write(path, json) {
        Ok(()) => format!("{path} written"),
        Err(e) => format!("WARNING: cannot write {path}: {e}"),
    }
}
