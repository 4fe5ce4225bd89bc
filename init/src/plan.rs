//! (command-line [`Options`], the initrd's [`InitrdConfig`]) -> [`Plan`] (pure; no I/O).
//!
//! Deciding is kept apart from doing: everything the boot will do is an ordered list of
//! [`Step`]s that unit tests can look at, and `main` executes it one step at a time.
//!
//! Decisions, written down once:
//! - The special filesystems (/dev devtmpfs, /proc, /sys, /run tmpfs) stay MOUNTED and are
//!   moved into the new root, as NixOS's scripted stage 1 does, for both closure flavours.
//!   stage-2-init.sh (and prepare-root, which is the same script) then skips its own early
//!   mounts (it only mounts them when `/proc/1` is missing) and systemd mounts the rest
//!   (/dev/shm, /dev/pts, ...). /run survives, so `/run/nixboot/timings.json` and
//!   prepare-root's `/run/booted-system` reach the booted system.
//! - Closure flavours: when a `prepare-root` lies beside the next init (NixOS built with the
//!   systemd initrd: `init` is systemd itself), it is run the way NixOS's systemd initrd runs
//!   it (`chroot /sysroot $closure/prepare-root` with `IN_NIXOS_SYSTEMD_STAGE1=true`, /run
//!   shared with the initrd), after the special mounts are in the new root and before the
//!   switch; then init (systemd) is exec'd. Without one, init is the stage-2 script and is
//!   exec'd directly.
//! - The next init gets argv = [init path] + the words after `--`, and exactly the
//!   environment the kernel gives an init it starts itself: `HOME=/` and `TERM=linux`.
//!   Nothing else is inherited (NixOS's stage 1 uses `env -i`; the kernel also turns unknown
//!   `key=value` parameters into environment variables of /init, which we drop).
//! - The root is mounted read-write unless the command line says `ro` (NixOS's stage 2
//!   remounts / read-write anyway, so rw saves a remount). A block root with `ro` is mounted
//!   read-only from the start (nothing is written to the disk, not even a journal replay); a
//!   tmpfs or virtiofs root is remounted read-only right before the switch, once every mount
//!   point in it exists (store, modules, /dev, /proc, /sys, /run).
//! - `rootflags=` is read as mount(8) reads `-o`: per-mount flags (`noatime`, `nosuid`, ...)
//!   become mount flags, the rest goes to the filesystem (mount(2) refuses such flags in the
//!   data string).
//! - Shares by kind of root, unless `nixboot.store=` / `nixboot.modules=` say otherwise:
//!   tmpfs root: store `store`, modules `modules` (neither when the initrd carries the
//!   store); virtiofs root: store `store`, modules `modules`; block root: none (the disk
//!   carries its system).
//! - An embedded store (`mkinitrd --embed-store`) is copied into a tmpfs root file by file,
//!   each source unlinked once copied, so memory peaks near one copy; other roots ignore it.
//! - virtiofs shares are waited for and mounted in one step: on kernels without
//!   /sys/fs/virtiofs (6.1) the only way to know a tag is there is to mount it. Block roots
//!   are waited for (sysfs + superblocks) and mounted in two steps, timed apart.
//! - Timings are kept in memory and written after the switch, into the /run the booted
//!   system sees, so they cover every phase up to the exec.

use crate::cmdline::{BlockSpec, Options, Root, DEFAULT_MODULES_TAG, DEFAULT_STORE_TAG};
use nixboot_protocol::InitrdConfig;
use std::time::Duration;

/// Where the new root is assembled before the switch.
pub const NEW_ROOT: &str = "/sysroot";
/// Where phase timings are written (in the new root, after the switch).
pub const TIMINGS_PATH: &str = "/run/nixboot/timings.json";
/// Environment of the next init (see the module documentation).
pub const NEXT_INIT_ENV: &[(&str, &str)] = &[("HOME", "/"), ("TERM", "linux")];
/// Mount points of a store overlay, NixOS's names (installer ISO, netboot).
pub const STORE_LOWER: &str = "/nix/.ro-store";
pub const STORE_UPPER: &str = "/nix/.rw-store";

/// Mount flags the plan uses (a subset of MS_*; kept independent of the syscall crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags {
    pub read_only: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    pub noatime: bool,
    pub nodiratime: bool,
    pub strictatime: bool,
}

impl Flags {
    pub const NONE: Flags = Flags {
        read_only: false,
        nosuid: false,
        nodev: false,
        noexec: false,
        noatime: false,
        nodiratime: false,
        strictatime: false,
    };
    pub const RO: Flags = Flags {
        read_only: true,
        ..Flags::NONE
    };
}

/// Splits mount(8)-style options into per-mount flags and the filesystem's data string.
/// `ro`/`rw` are returned apart (`None` when absent) so the caller can let the command
/// line's `ro`/`rw` win. Options that only restate a default (`defaults`, `relatime`,
/// `suid`, `dev`, `exec`, `atime`, `diratime`) are dropped: mount(2) refuses them as data.
pub fn split_mount_options(s: &str) -> (Flags, Option<bool>, String) {
    let mut f = Flags::NONE;
    let mut ro = None;
    let mut data: Vec<&str> = Vec::new();
    for o in s.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => ro = Some(true),
            "rw" => ro = Some(false),
            "nosuid" => f.nosuid = true,
            "nodev" => f.nodev = true,
            "noexec" => f.noexec = true,
            "noatime" => f.noatime = true,
            "nodiratime" => f.nodiratime = true,
            "strictatime" => f.strictatime = true,
            "suid" => f.nosuid = false,
            "dev" => f.nodev = false,
            "exec" => f.noexec = false,
            "atime" => f.noatime = false,
            "diratime" => f.nodiratime = false,
            "defaults" | "relatime" => {}
            other => data.push(other),
        }
    }
    (f, ro, data.join(","))
}

/// `mount -o` style text of flags + data, for messages.
pub fn options(flags: Flags, data: &str) -> String {
    let mut o = vec![if flags.read_only { "ro" } else { "rw" }];
    for (set, name) in [
        (flags.nosuid, "nosuid"),
        (flags.nodev, "nodev"),
        (flags.noexec, "noexec"),
        (flags.noatime, "noatime"),
        (flags.nodiratime, "nodiratime"),
        (flags.strictatime, "strictatime"),
    ] {
        if set {
            o.push(name);
        }
    }
    if !data.is_empty() {
        o.push(data);
    }
    o.join(",")
}

/// One early mount, done before anything else (even before the console exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarlyMount {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: Flags,
    pub data: &'static str,
}

/// The fixed early table: it does not depend on the command line, which lives in /proc.
/// Options as NixOS's stage 1 mounts them (/run size 25% is its `boot.runSize` default).
pub const EARLY_MOUNTS: &[EarlyMount] = &[
    EarlyMount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: Flags {
            nosuid: true,
            ..Flags::NONE
        },
        data: "mode=0755",
    },
    EarlyMount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: Flags {
            nosuid: true,
            nodev: true,
            noexec: true,
            ..Flags::NONE
        },
        data: "",
    },
    EarlyMount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: Flags {
            nosuid: true,
            nodev: true,
            noexec: true,
            ..Flags::NONE
        },
        data: "",
    },
    EarlyMount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: Flags {
            nosuid: true,
            nodev: true,
            ..Flags::NONE
        },
        data: "mode=0755,size=25%",
    },
];

/// What a mount is for; names the step in logs and in the status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Root,
    Store,
    /// The tmpfs holding the upper layer of a store overlay.
    StoreUpper,
    /// The overlay itself on /nix/store.
    StoreOverlay,
    Modules,
}

impl Role {
    pub fn step_name(self) -> &'static str {
        match self {
            Role::Root => "mount-root",
            Role::Store => "mount-store",
            Role::StoreUpper => "mount-store-upper",
            Role::StoreOverlay => "mount-store-overlay",
            Role::Modules => "mount-modules",
        }
    }
}

/// Where `kexec-run.sh` (nixos/modules/baremetal) puts files for the next system, in the
/// initramfs, and where that system's `nixboot-carry` service reads them.
pub const CARRY_FROM: &str = "/etc/nixboot/carry";
pub const CARRY_TO: &str = "/run/nixboot/carry";

/// One step of the boot, executed in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// finit_module of a `.ko` packed in the initramfs.
    LoadModule {
        name: String,
        path: String,
        params: String,
    },
    /// A filesystem that is there when asked (tmpfs).
    Mount {
        role: Role,
        source: String,
        target: String,
        fstype: String,
        flags: Flags,
        data: String,
    },
    /// A virtiofs share: wait for the tag (bounded), then mount it.
    MountVirtiofs {
        role: Role,
        tag: String,
        target: String,
        flags: Flags,
        data: String,
        timeout: Duration,
    },
    /// Wait (bounded) until a block device matching `spec` shows up in /sys/class/block.
    /// The device found is what the next [`Step::MountBlock`] mounts.
    WaitBlock {
        role: Role,
        spec: BlockSpec,
        timeout: Duration,
    },
    /// Mount the device found by the [`Step::WaitBlock`] before it. `fstypes` empty: the
    /// type is read from the superblock; else they are tried in order (`rootfstype=a,b`).
    MountBlock {
        role: Role,
        target: String,
        fstypes: Vec<String>,
        flags: Flags,
        data: String,
    },
    /// Bring the store packed in the initramfs into the new root (copy, unlink each source).
    CopyEmbeddedStore { from: String, to: String },
    /// overlay on `target`: `lower` read-only, `upper`/`work` created on the upper tmpfs.
    MountOverlay {
        role: Role,
        target: String,
        lower: String,
        upper: String,
        work: String,
    },
    /// `mount -o remount,ro` (the `ro` command-line flag).
    RemountReadOnly { target: String },
    /// Refuse to switch unless the next init exists in the new root: after the switch the
    /// initramfs is gone and nothing can be repaired.
    CheckInit { new_root: String, path: String },
    /// Move /dev, /proc, /sys, /run into the new root.
    MoveSpecialMounts {
        new_root: String,
        mounts: Vec<String>,
    },
    /// Move files carried into the initramfs (kexec: ssh host keys, addresses) from `from`
    /// to `to` in the new root's /run, when `from` exists. The kexec script appends them as
    /// one more archive at kexec time, so the initrd's configuration cannot name them.
    CarryFiles { from: String, to: String },
    /// Run `prepare-root` beside `init` in the new root, when there is one.
    PrepareRoot { new_root: String, init: String },
    /// Free the initramfs, make the new root `/`.
    SwitchRoot { new_root: String },
    /// Write the phase timings (after the switch: into the booted system's /run).
    WriteTimings { path: String },
}

impl Step {
    /// The step's name in log lines and in `step=` of the status line.
    pub fn name(&self) -> &'static str {
        match self {
            Step::LoadModule { .. } => "load-module",
            Step::Mount { role, .. }
            | Step::MountVirtiofs { role, .. }
            | Step::MountBlock { role, .. }
            | Step::MountOverlay { role, .. } => role.step_name(),
            Step::WaitBlock { role, .. } => match role {
                Role::Root => "wait-root",
                _ => "wait-device",
            },
            Step::CopyEmbeddedStore { .. } => "copy-store",
            Step::RemountReadOnly { .. } => "remount-root-ro",
            Step::CheckInit { .. } => "check-init",
            Step::MoveSpecialMounts { .. } => "move-mounts",
            Step::CarryFiles { .. } => "carry",
            Step::PrepareRoot { .. } => "prepare-root",
            Step::SwitchRoot { .. } => "switch-root",
            Step::WriteTimings { .. } => "write-timings",
        }
    }

    /// A one-line description for the debug dump of the plan.
    pub fn describe(&self) -> String {
        match self {
            Step::LoadModule { name, path, params } if params.is_empty() => {
                format!("{name} from {path}")
            }
            Step::LoadModule { name, path, params } => format!("{name} from {path} ({params})"),
            Step::Mount {
                source,
                target,
                fstype,
                flags,
                data,
                ..
            } => format!(
                "{source} on {target} type {fstype} ({})",
                options(*flags, data)
            ),
            Step::MountVirtiofs {
                tag,
                target,
                flags,
                data,
                timeout,
                ..
            } => format!(
                "virtiofs tag {tag} on {target} ({}), waiting up to {}",
                options(*flags, data),
                crate::cmdline::describe_timeout(*timeout)
            ),
            Step::WaitBlock { spec, timeout, .. } => format!(
                "block device {}, waiting up to {}",
                Root::Block(spec.clone()),
                crate::cmdline::describe_timeout(*timeout)
            ),
            Step::MountBlock {
                target,
                fstypes,
                flags,
                data,
                ..
            } => format!(
                "that device on {target} type {} ({})",
                if fstypes.is_empty() {
                    "from its superblock".to_string()
                } else {
                    fstypes.join(" or ")
                },
                options(*flags, data)
            ),
            Step::CopyEmbeddedStore { from, to } => format!("{from} -> {to}"),
            Step::MountOverlay {
                target,
                lower,
                upper,
                work,
                ..
            } => format!("overlay on {target} (lower {lower}, upper {upper}, work {work})"),
            Step::RemountReadOnly { target } => format!("{target} read-only"),
            Step::CheckInit { new_root, path } => format!("{path} in {new_root}"),
            Step::MoveSpecialMounts { new_root, mounts } => {
                format!("{} -> {new_root}", mounts.join(" "))
            }
            Step::CarryFiles { from, to } => format!("{from} -> {to}, if any"),
            Step::PrepareRoot { new_root, init } => {
                format!("prepare-root beside {init} in {new_root}, if any")
            }
            Step::SwitchRoot { new_root } => format!("{new_root} becomes /"),
            Step::WriteTimings { path } => path.clone(),
        }
    }
}

/// What to exec once the new root is `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub path: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// Everything the boot will do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub exec: Exec,
    /// Things worth telling the user that do not stop the boot (ignored options, ...).
    pub notes: Vec<String>,
}

/// Why no plan could be made; the failure policy reports it with `step=plan`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError {
    pub error: String,
    pub check: String,
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
    }
}

/// Decides the boot.
pub fn build(opts: &Options, config: &InitrdConfig) -> Result<Plan, PlanError> {
    let mut notes = Vec::new();

    let init = match (&opts.init, &config.default_init) {
        (Some(i), _) => i.clone(),
        (None, Some(d)) => {
            notes.push(format!(
                "no init= on the command line, using the initrd's default {d}"
            ));
            d.clone()
        }
        (None, None) => {
            return Err(PlanError {
                error: "no init= on the command line and the initrd names no default init".into(),
                check: "add init=/nix/store/...-nixos-system-.../init to the kernel command line, \
                        or build the initrd with a default init"
                    .into(),
            })
        }
    };

    let mut steps = Vec::new();
    for m in &config.modules {
        if opts.driver_blacklist.contains(&m.name) {
            notes.push(format!("not loading {}: rd.driver.blacklist", m.name));
            continue;
        }
        steps.push(Step::LoadModule {
            name: m.name.clone(),
            path: m.path.clone(),
            params: m.params.clone(),
        });
    }
    for b in &opts.driver_blacklist {
        if !config.modules.iter().any(|m| m.name == *b) {
            notes.push(format!(
                "rd.driver.blacklist={b}: the initrd does not list this module"
            ));
        }
    }

    let (mut flags, flags_ro, data) = split_mount_options(opts.rootflags.as_deref().unwrap_or(""));
    // The command line's ro/rw wins over an ro/rw inside rootflags=.
    let read_only = opts.read_only.or(flags_ro).unwrap_or(false);
    let with = |base: &str| match (base.is_empty(), data.is_empty()) {
        (_, true) => base.to_string(),
        (true, false) => data.clone(),
        (false, false) => format!("{base},{data}"),
    };
    let is_tmpfs = opts.root == Root::Tmpfs;
    let embedded = config
        .embedded_store
        .as_deref()
        .filter(|_| is_tmpfs && opts.store == crate::cmdline::ShareChoice::Default);
    match &opts.root {
        Root::Tmpfs => {
            if let Some(t) = opts.rootfstype.as_deref().filter(|t| *t != "tmpfs") {
                notes.push(format!("rootfstype={t} ignored: root=tmpfs"));
            }
            steps.push(Step::Mount {
                role: Role::Root,
                source: "tmpfs".into(),
                target: NEW_ROOT.into(),
                fstype: "tmpfs".into(),
                flags,
                data: with(&format!("mode=0755,size={}", opts.tmpfs_size)),
            });
        }
        Root::Virtiofs(tag) => {
            if let Some(t) = opts.rootfstype.as_deref().filter(|t| *t != "virtiofs") {
                notes.push(format!("rootfstype={t} ignored: root=virtiofs:{tag}"));
            }
            steps.push(Step::MountVirtiofs {
                role: Role::Root,
                tag: tag.clone(),
                target: NEW_ROOT.into(),
                flags,
                data: data.clone(),
                timeout: opts.timeout,
            });
        }
        Root::Block(spec) => {
            if let BlockSpec::Other(v) = spec {
                return Err(PlanError {
                    error: format!("root={v}: this form of root= is not supported"),
                    check: "use root=/dev/NAME, LABEL=, UUID=, PARTUUID=, PARTLABEL=, MAJ:MIN, \
                            /dev/disk/by-{label,uuid,partuuid,partlabel}/..., tmpfs or \
                            virtiofs:TAG (there is no udev in this initrd, so no other \
                            /dev/disk or /dev/mapper names)"
                        .into(),
                });
            }
            flags.read_only = read_only;
            steps.push(Step::WaitBlock {
                role: Role::Root,
                spec: spec.clone(),
                timeout: opts.timeout,
            });
            steps.push(Step::MountBlock {
                role: Role::Root,
                target: NEW_ROOT.into(),
                fstypes: opts
                    .rootfstype
                    .as_deref()
                    .unwrap_or("")
                    .split(',')
                    .filter(|t| !t.is_empty() && *t != "auto")
                    .map(str::to_string)
                    .collect(),
                flags,
                data: data.clone(),
            });
        }
    }
    if let Some(e) = config.embedded_store.as_deref() {
        if embedded.is_none() {
            notes.push(format!(
                "the initrd carries a store ({e}), not used: {}",
                if is_tmpfs {
                    "nixboot.store= names a share"
                } else {
                    "only a tmpfs root takes it"
                }
            ));
        }
    }
    if let Some(from) = embedded {
        steps.push(Step::CopyEmbeddedStore {
            from: from.to_string(),
            to: format!("{NEW_ROOT}{from}"),
        });
    }

    let (store_default, modules_default) = match &opts.root {
        Root::Tmpfs if embedded.is_some() => (None, None),
        Root::Tmpfs | Root::Virtiofs(_) => (Some(DEFAULT_STORE_TAG), Some(DEFAULT_MODULES_TAG)),
        Root::Block(_) => (None, None),
    };
    let store_tag = opts.store.resolve(store_default);
    match (&store_tag, opts.store_overlay) {
        (Some(tag), true) => {
            let lower = format!("{NEW_ROOT}{STORE_LOWER}");
            let upper = format!("{NEW_ROOT}{STORE_UPPER}");
            steps.push(Step::MountVirtiofs {
                role: Role::Store,
                tag: tag.clone(),
                target: lower.clone(),
                flags: Flags::RO,
                data: String::new(),
                timeout: opts.timeout,
            });
            steps.push(Step::Mount {
                role: Role::StoreUpper,
                source: "tmpfs".into(),
                target: upper.clone(),
                fstype: "tmpfs".into(),
                flags: Flags::NONE,
                data: format!("mode=0755,size={}", opts.tmpfs_size),
            });
            steps.push(Step::MountOverlay {
                role: Role::StoreOverlay,
                target: format!("{NEW_ROOT}/nix/store"),
                lower,
                upper: format!("{upper}/store"),
                work: format!("{upper}/work"),
            });
        }
        (Some(tag), false) => steps.push(Step::MountVirtiofs {
            role: Role::Store,
            tag: tag.clone(),
            target: format!("{NEW_ROOT}/nix/store"),
            flags: Flags::RO,
            data: String::new(),
            timeout: opts.timeout,
        }),
        (None, true) => notes.push(
            "nixboot.store_overlay ignored: no store share to lay the overlay on".to_string(),
        ),
        (None, false) => {}
    }
    if let Some(tag) = opts.modules.resolve(modules_default) {
        steps.push(Step::MountVirtiofs {
            role: Role::Modules,
            tag,
            target: format!("{NEW_ROOT}/lib/modules"),
            flags: Flags::RO,
            data: String::new(),
            timeout: opts.timeout,
        });
    }

    steps.push(Step::CheckInit {
        new_root: NEW_ROOT.into(),
        path: init.clone(),
    });
    steps.push(Step::MoveSpecialMounts {
        new_root: NEW_ROOT.into(),
        mounts: EARLY_MOUNTS.iter().map(|m| m.target.to_string()).collect(),
    });
    // After the move: /run is the new root's now, and stays the booted system's.
    steps.push(Step::CarryFiles {
        from: CARRY_FROM.into(),
        to: format!("{NEW_ROOT}{CARRY_TO}"),
    });
    steps.push(Step::PrepareRoot {
        new_root: NEW_ROOT.into(),
        init: init.clone(),
    });
    // Last, once every mount point in it (including /dev, /proc, /sys, /run) exists and
    // prepare-root has written its /etc. A block root was mounted read-only already.
    if read_only && !matches!(opts.root, Root::Block(_)) {
        steps.push(Step::RemountReadOnly {
            target: NEW_ROOT.into(),
        });
    }
    steps.push(Step::SwitchRoot {
        new_root: NEW_ROOT.into(),
    });
    steps.push(Step::WriteTimings {
        path: TIMINGS_PATH.into(),
    });

    let mut argv = vec![init.clone()];
    argv.extend(opts.init_args.iter().cloned());
    Ok(Plan {
        steps,
        exec: Exec {
            path: init,
            argv,
            env: NEXT_INIT_ENV
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        },
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdline::parse;
    use nixboot_protocol::ModuleSpec;

    const SEED: &str =
        "root=tmpfs console=ttyS0,115200 console=hvc0 init=/nix/store/abc-nixos-system-x/init";
    const KVER: &str = "6.1.0-56-cloud-amd64";
    const MODULES: &[&str] = &[
        "virtio_ring",
        "virtio",
        "virtio_pci_modern_dev",
        "virtio_pci_legacy_dev",
        "virtio_pci",
        "fuse",
        "virtiofs",
    ];
    const TAIL: [&str; 6] = [
        "check-init",
        "move-mounts",
        "carry",
        "prepare-root",
        "switch-root",
        "write-timings",
    ];

    fn config(modules: &[&str], default_init: Option<&str>) -> InitrdConfig {
        InitrdConfig {
            kernel_version: Some(KVER.into()),
            default_init: default_init.map(Into::into),
            modules: modules
                .iter()
                .map(|m| ModuleSpec {
                    name: m.to_string(),
                    path: format!("/lib/modules/{KVER}/kernel/{m}.ko"),
                    params: String::new(),
                })
                .collect(),
            ..InitrdConfig::new()
        }
    }

    fn embedded() -> InitrdConfig {
        InitrdConfig {
            embedded_store: Some("/nix/store".into()),
            ..config(&[], None)
        }
    }

    fn names(plan: &Plan) -> Vec<&'static str> {
        plan.steps.iter().map(Step::name).collect()
    }

    fn plan_of(cmdline: &str, config: &InitrdConfig) -> Plan {
        build(&parse(cmdline), config).unwrap()
    }

    #[test]
    fn seed_command_line_with_modules() {
        let plan = plan_of(SEED, &config(MODULES, None));
        let mut expected = vec!["load-module"; MODULES.len()];
        expected.extend(["mount-root", "mount-store", "mount-modules"]);
        expected.extend(TAIL);
        assert_eq!(names(&plan), expected);

        let t30 = Duration::from_secs(30);
        assert_eq!(
            plan.steps[MODULES.len()],
            Step::Mount {
                role: Role::Root,
                source: "tmpfs".into(),
                target: "/sysroot".into(),
                fstype: "tmpfs".into(),
                flags: Flags::NONE,
                data: "mode=0755,size=50%".into(),
            }
        );
        assert_eq!(
            plan.steps[MODULES.len() + 1],
            Step::MountVirtiofs {
                role: Role::Store,
                tag: "store".into(),
                target: "/sysroot/nix/store".into(),
                flags: Flags::RO,
                data: String::new(),
                timeout: t30,
            }
        );
        assert_eq!(
            plan.steps[MODULES.len() + 2],
            Step::MountVirtiofs {
                role: Role::Modules,
                tag: "modules".into(),
                target: "/sysroot/lib/modules".into(),
                flags: Flags::RO,
                data: String::new(),
                timeout: t30,
            }
        );
        let n = plan.steps.len();
        assert_eq!(
            plan.steps[n - 5],
            Step::MoveSpecialMounts {
                new_root: "/sysroot".into(),
                mounts: vec!["/dev".into(), "/proc".into(), "/sys".into(), "/run".into()],
            }
        );
        // Carried files go to the new root's /run, which exists only after the move.
        assert_eq!(
            plan.steps[n - 4],
            Step::CarryFiles {
                from: "/etc/nixboot/carry".into(),
                to: "/sysroot/run/nixboot/carry".into(),
            }
        );
        assert_eq!(
            plan.steps[n - 3],
            Step::PrepareRoot {
                new_root: "/sysroot".into(),
                init: "/nix/store/abc-nixos-system-x/init".into()
            }
        );
        // Timings are written last, after the switch, into the booted system's /run.
        assert_eq!(
            plan.steps[n - 1],
            Step::WriteTimings {
                path: "/run/nixboot/timings.json".into()
            }
        );
        assert_eq!(plan.exec.path, "/nix/store/abc-nixos-system-x/init");
        assert_eq!(plan.exec.argv, ["/nix/store/abc-nixos-system-x/init"]);
        assert_eq!(
            plan.exec.env,
            [
                ("HOME".to_string(), "/".to_string()),
                ("TERM".to_string(), "linux".to_string())
            ]
        );
        assert!(plan.notes.is_empty(), "{:?}", plan.notes);
    }

    #[test]
    fn modules_come_in_config_order_before_mounts() {
        let order = ["fuse", "virtio", "virtiofs", "zzz", "aaa"];
        let plan = plan_of(SEED, &config(&order, None));
        let loaded: Vec<&str> = plan
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::LoadModule { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(loaded, order);
        let last_load = plan.steps.iter().rposition(|s| s.name() == "load-module");
        let first_mount = plan
            .steps
            .iter()
            .position(|s| s.name().starts_with("mount-"));
        assert!(last_load < first_mount);
        assert_eq!(last_load, Some(order.len() - 1));
    }

    #[test]
    fn blacklisted_modules_are_skipped_and_noted() {
        let plan = plan_of(
            &format!("{SEED} rd.driver.blacklist=fuse,nosuch"),
            &config(MODULES, None),
        );
        assert_eq!(
            names(&plan).iter().filter(|n| **n == "load-module").count(),
            MODULES.len() - 1
        );
        assert_eq!(
            plan.notes,
            [
                "not loading fuse: rd.driver.blacklist",
                "rd.driver.blacklist=nosuch: the initrd does not list this module"
            ]
        );
    }

    #[test]
    fn virtiofs_root_has_no_tmpfs() {
        let plan = plan_of(
            "root=virtiofs:rootfs init=/sbin/init rd.timeout=5 rootflags=dax,noatime",
            &config(&[], None),
        );
        assert!(!plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::Mount { fstype, .. } if fstype == "tmpfs")));
        assert_eq!(
            plan.steps[0],
            Step::MountVirtiofs {
                role: Role::Root,
                tag: "rootfs".into(),
                target: "/sysroot".into(),
                flags: Flags {
                    noatime: true,
                    ..Flags::NONE
                },
                data: "dax".into(),
                timeout: Duration::from_secs(5),
            }
        );
        assert_eq!(
            names(&plan)[..3],
            ["mount-root", "mount-store", "mount-modules"]
        );
        // A root share that carries its own store.
        let plan = plan_of(
            "root=virtiofs:rootfs init=/sbin/init nixboot.store=none nixboot.modules=none",
            &config(&[], None),
        );
        let mut expected = vec!["mount-root"];
        expected.extend(TAIL);
        assert_eq!(names(&plan), expected);
    }

    #[test]
    fn modules_none_drops_the_modules_mount() {
        let plan = plan_of(
            &format!("{SEED} nixboot.modules=none"),
            &config(MODULES, None),
        );
        assert!(!names(&plan).contains(&"mount-modules"));
        assert!(names(&plan).contains(&"mount-store"));
        let plan = plan_of(
            &format!("{SEED} nixboot.store=none nixboot.modules=mods"),
            &config(&[], None),
        );
        assert!(!names(&plan).contains(&"mount-store"));
        assert!(plan.steps.iter().any(
            |s| matches!(s, Step::MountVirtiofs { tag, role: Role::Modules, .. } if tag == "mods")
        ));
    }

    #[test]
    fn missing_init_without_default_is_an_error() {
        let e = build(&parse("root=tmpfs"), &config(MODULES, None)).unwrap_err();
        assert_eq!(
            e.error,
            "no init= on the command line and the initrd names no default init"
        );
    }

    #[test]
    fn default_init_is_used_and_noted() {
        let plan = plan_of(
            "root=tmpfs -- a b",
            &config(&[], Some("/nix/store/x-sys/init")),
        );
        assert_eq!(plan.exec.argv, ["/nix/store/x-sys/init", "a", "b"]);
        assert_eq!(plan.notes.len(), 1);
        // init= wins over the default.
        let plan = plan_of(
            "init=/nix/store/y/init",
            &config(&[], Some("/nix/store/x-sys/init")),
        );
        assert_eq!(plan.exec.path, "/nix/store/y/init");
    }

    #[test]
    fn block_roots_wait_then_mount_and_share_nothing_by_default() {
        for (root, spec) in [
            ("LABEL=nixos", BlockSpec::Label("nixos".into())),
            ("UUID=abcd", BlockSpec::Uuid("abcd".into())),
            ("PARTUUID=1-2", BlockSpec::PartUuid("1-2".into())),
            ("PARTLABEL=root", BlockSpec::PartLabel("root".into())),
            ("/dev/vda1", BlockSpec::Path("/dev/vda1".into())),
            ("254:1", BlockSpec::DevNum(254, 1)),
        ] {
            let plan = plan_of(
                &format!("root={root} init=/x rd.timeout=7"),
                &config(&["virtio_blk"], None),
            );
            let mut expected = vec!["load-module", "wait-root", "mount-root"];
            expected.extend(TAIL);
            assert_eq!(names(&plan), expected, "{root}");
            assert_eq!(
                plan.steps[1],
                Step::WaitBlock {
                    role: Role::Root,
                    spec,
                    timeout: Duration::from_secs(7)
                }
            );
            assert_eq!(
                plan.steps[2],
                Step::MountBlock {
                    role: Role::Root,
                    target: "/sysroot".into(),
                    fstypes: vec![],
                    flags: Flags::NONE,
                    data: String::new(),
                }
            );
        }
    }

    #[test]
    fn block_root_options() {
        let plan = plan_of(
            "root=/dev/vda1 init=/x ro rootfstype=ext4,btrfs \
             rootflags=noatime,data=journal,defaults,nosuid,errors=remount-ro",
            &config(&[], None),
        );
        assert_eq!(
            plan.steps[1],
            Step::MountBlock {
                role: Role::Root,
                target: "/sysroot".into(),
                fstypes: vec!["ext4".into(), "btrfs".into()],
                flags: Flags {
                    read_only: true,
                    noatime: true,
                    nosuid: true,
                    ..Flags::NONE
                },
                data: "data=journal,errors=remount-ro".into(),
            }
        );
        // Mounted read-only from the start: no remount before the switch.
        assert!(!names(&plan).contains(&"remount-root-ro"));
        // ro inside rootflags counts unless the command line says rw.
        let ro = |c: &str| {
            matches!(
                &plan_of(c, &config(&[], None)).steps[1],
                Step::MountBlock { flags, .. } if flags.read_only
            )
        };
        assert!(ro("root=/dev/vda init=/x rootflags=ro"));
        assert!(!ro("root=/dev/vda init=/x rootflags=ro rw"));
        assert!(!ro("root=/dev/vda init=/x"));
        // A store share on a block root only when asked for.
        let plan = plan_of(
            "root=LABEL=x init=/x nixboot.store=store",
            &config(&[], None),
        );
        assert!(names(&plan).contains(&"mount-store"));
        assert!(!names(&plan).contains(&"mount-modules"));
    }

    #[test]
    fn unsupported_root_forms_are_refused_with_the_forms_that_work() {
        for root in ["/dev/mapper/vg-root", "0801", "PARTUUID=ab-01/PARTNROFF=1"] {
            let e = build(&parse(&format!("root={root} init=/x")), &config(&[], None)).unwrap_err();
            assert!(e.error.contains(root), "{e}");
            assert!(e.error.contains("not supported"), "{e}");
            assert!(e.check.contains("LABEL="), "{}", e.check);
        }
    }

    #[test]
    fn embedded_store_is_copied_and_no_share_is_mounted() {
        let plan = plan_of("root=tmpfs init=/nix/store/x/init", &embedded());
        let mut expected = vec!["mount-root", "copy-store"];
        expected.extend(TAIL);
        assert_eq!(names(&plan), expected);
        assert_eq!(
            plan.steps[1],
            Step::CopyEmbeddedStore {
                from: "/nix/store".into(),
                to: "/sysroot/nix/store".into()
            }
        );
        assert!(plan.notes.is_empty(), "{:?}", plan.notes);
        // A share named on the command line wins; the embedded copy is noted and unused.
        let plan = plan_of("init=/x nixboot.store=store", &embedded());
        assert!(!names(&plan).contains(&"copy-store"));
        assert!(names(&plan).contains(&"mount-store"));
        assert_eq!(plan.notes.len(), 1, "{:?}", plan.notes);
        // Only a tmpfs root takes it.
        let plan = plan_of("root=virtiofs:r init=/x", &embedded());
        assert!(!names(&plan).contains(&"copy-store"));
        assert!(
            plan.notes[0].contains("only a tmpfs root"),
            "{:?}",
            plan.notes
        );
        // Modules can still come over virtiofs when asked for.
        let plan = plan_of("init=/x nixboot.modules=modules", &embedded());
        assert!(names(&plan).contains(&"mount-modules"));
    }

    #[test]
    fn store_overlay_layers_a_tmpfs_over_the_share() {
        let plan = plan_of(
            &format!("{SEED} nixboot.store_overlay nixboot.tmpfs_size=1G"),
            &config(&[], None),
        );
        let mut expected = vec![
            "mount-root",
            "mount-store",
            "mount-store-upper",
            "mount-store-overlay",
            "mount-modules",
        ];
        expected.extend(TAIL);
        assert_eq!(names(&plan), expected);
        assert!(matches!(&plan.steps[1],
            Step::MountVirtiofs { target, flags, .. }
                if target == "/sysroot/nix/.ro-store" && flags.read_only));
        assert!(matches!(&plan.steps[2],
            Step::Mount { target, fstype, data, .. }
                if target == "/sysroot/nix/.rw-store" && fstype == "tmpfs"
                    && data == "mode=0755,size=1G"));
        assert_eq!(
            plan.steps[3],
            Step::MountOverlay {
                role: Role::StoreOverlay,
                target: "/sysroot/nix/store".into(),
                lower: "/sysroot/nix/.ro-store".into(),
                upper: "/sysroot/nix/.rw-store/store".into(),
                work: "/sysroot/nix/.rw-store/work".into(),
            }
        );
        let plan = plan_of(
            "init=/x nixboot.store=none nixboot.store_overlay",
            &config(&[], None),
        );
        assert!(!names(&plan).iter().any(|n| n.starts_with("mount-store")));
        assert_eq!(plan.notes.len(), 1);
    }

    #[test]
    fn ro_remounts_after_prepare_root() {
        let plan = plan_of(
            &format!("{SEED} ro nixboot.tmpfs_size=1G rootflags=nr_inodes=1k,noatime"),
            &config(&[], None),
        );
        let n = names(&plan);
        let at = |name: &str| n.iter().position(|s| *s == name).unwrap();
        let remount = at("remount-root-ro");
        assert!(remount > at("mount-modules"));
        assert!(remount > at("move-mounts"));
        assert!(remount > at("prepare-root"));
        assert_eq!(remount + 1, at("switch-root"));
        assert!(matches!(&plan.steps[0],
            Step::Mount { data, flags, .. }
                if data == "mode=0755,size=1G,nr_inodes=1k" && flags.noatime && !flags.read_only));
    }

    #[test]
    fn rootfstype_mismatch_is_noted() {
        let plan = plan_of(&format!("{SEED} rootfstype=ext4"), &config(&[], None));
        assert_eq!(plan.notes, ["rootfstype=ext4 ignored: root=tmpfs"]);
    }

    #[test]
    fn mount_options_are_split_like_mount8() {
        assert_eq!(split_mount_options(""), (Flags::NONE, None, String::new()));
        let (f, ro, data) = split_mount_options("ro,noatime,,subvol=@,relatime,compress=zstd");
        assert_eq!(ro, Some(true));
        assert!(f.noatime && !f.read_only);
        assert_eq!(data, "subvol=@,compress=zstd");
        let (f, ro, _) = split_mount_options("noexec,exec,nodev,rw");
        assert_eq!(ro, Some(false));
        assert!(!f.noexec && f.nodev);
        assert_eq!(
            options(
                Flags {
                    noatime: true,
                    ..Flags::RO
                },
                "x=1"
            ),
            "ro,noatime,x=1"
        );
    }

    #[test]
    fn early_table_is_the_special_mounts() {
        let targets: Vec<&str> = EARLY_MOUNTS.iter().map(|m| m.target).collect();
        assert_eq!(targets, ["/dev", "/proc", "/sys", "/run"]);
        assert_eq!(options(EARLY_MOUNTS[1].flags, ""), "rw,nosuid,nodev,noexec");
        assert_eq!(options(Flags::RO, "x=1"), "ro,x=1");
    }
}
