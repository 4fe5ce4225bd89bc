//! (command-line [`Options`], the initrd's [`InitrdConfig`]) -> [`Plan`] (pure; no I/O).
//!
//! Deciding is kept apart from doing: everything the boot will do is an ordered list of
//! [`Step`]s that unit tests can look at, and `main` executes it one step at a time.
//!
//! Decisions, written down once:
//! - The special filesystems (/dev devtmpfs, /proc, /sys, /run tmpfs) stay MOUNTED and are
//!   moved into the new root, as NixOS's scripted stage 1 does. stage-2-init.sh then skips
//!   its own early mounts (it only mounts them when `/proc/1` is missing) and systemd mounts
//!   the rest (/dev/shm, /dev/pts, ...). /run survives, so `/run/nixboot/timings.json`
//!   reaches the booted system.
//! - The next init gets argv = [init path] + the words after `--`, and exactly the
//!   environment the kernel gives an init it starts itself: `HOME=/` and `TERM=linux`.
//!   Nothing else is inherited (NixOS's stage 1 uses `env -i`; the kernel also turns unknown
//!   `key=value` parameters into environment variables of /init, which we drop).
//! - The root is mounted read-write unless the command line says `ro`; with `ro` it is
//!   remounted read-only right before the switch, once every mount point in it exists
//!   (store, modules, /dev, /proc, /sys, /run). NixOS's stage 2 remounts / read-write.
//! - virtiofs shares are waited for and mounted in one step: on kernels without
//!   /sys/fs/virtiofs (6.1) the only way to know a tag is there is to mount it.

use crate::cmdline::{Options, Root};
use initrd_config::InitrdConfig;
use std::time::Duration;

/// Where the new root is assembled before the switch.
pub const NEW_ROOT: &str = "/sysroot";
/// Where phase timings are written (moved into the new root with /run).
pub const TIMINGS_PATH: &str = "/run/nixboot/timings.json";
/// Environment of the next init (see the module documentation).
pub const NEXT_INIT_ENV: &[(&str, &str)] = &[("HOME", "/"), ("TERM", "linux")];

/// Mount flags the plan uses (a subset of MS_*; kept independent of the syscall crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags {
    pub read_only: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
}

impl Flags {
    pub const NONE: Flags = Flags {
        read_only: false,
        nosuid: false,
        nodev: false,
        noexec: false,
    };
    pub const RO: Flags = Flags {
        read_only: true,
        ..Flags::NONE
    };
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
    Modules,
}

impl Role {
    pub fn step_name(self) -> &'static str {
        match self {
            Role::Root => "mount-root",
            Role::Store => "mount-store",
            Role::Modules => "mount-modules",
        }
    }
}

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
    /// `mount -o remount,ro` (the `ro` command-line flag).
    RemountReadOnly { target: String },
    /// Refuse to switch unless the next init exists in the new root: after the switch the
    /// initramfs is gone and nothing can be repaired.
    CheckInit { new_root: String, path: String },
    /// Write the phase timings (into /run, which moves with the switch).
    WriteTimings { path: String },
    /// Move /dev, /proc, /sys, /run into the new root.
    MoveSpecialMounts {
        new_root: String,
        mounts: Vec<String>,
    },
    /// Free the initramfs, make the new root `/`.
    SwitchRoot { new_root: String },
}

impl Step {
    /// The step's name in log lines and in `step=` of the status line.
    pub fn name(&self) -> &'static str {
        match self {
            Step::LoadModule { .. } => "load-module",
            Step::Mount { role, .. } | Step::MountVirtiofs { role, .. } => role.step_name(),
            Step::RemountReadOnly { .. } => "remount-root-ro",
            Step::CheckInit { .. } => "check-init",
            Step::WriteTimings { .. } => "write-timings",
            Step::MoveSpecialMounts { .. } => "move-mounts",
            Step::SwitchRoot { .. } => "switch-root",
        }
    }

    /// A one-line description for the debug dump of the plan and the timings.
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
                "virtiofs tag {tag} on {target} ({}), waiting up to {}s",
                options(*flags, data),
                timeout.as_secs()
            ),
            Step::RemountReadOnly { target } => format!("{target} read-only"),
            Step::CheckInit { new_root, path } => format!("{path} in {new_root}"),
            Step::WriteTimings { path } => path.clone(),
            Step::MoveSpecialMounts { new_root, mounts } => {
                format!("{} -> {new_root}", mounts.join(" "))
            }
            Step::SwitchRoot { new_root } => format!("{new_root} becomes /"),
        }
    }
}

/// `mount -o` style text of flags + data, for messages.
pub fn options(flags: Flags, data: &str) -> String {
    let mut o = vec![if flags.read_only { "ro" } else { "rw" }];
    if flags.nosuid {
        o.push("nosuid");
    }
    if flags.nodev {
        o.push("nodev");
    }
    if flags.noexec {
        o.push("noexec");
    }
    if !data.is_empty() {
        o.push(data);
    }
    o.join(",")
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

    let mut steps: Vec<Step> = config
        .modules
        .iter()
        .map(|m| Step::LoadModule {
            name: m.name.clone(),
            path: m.path.clone(),
            params: m.params.clone(),
        })
        .collect();

    let rootflags = opts.rootflags.as_deref().unwrap_or("");
    match &opts.root {
        Root::Tmpfs => {
            if let Some(t) = opts.rootfstype.as_deref().filter(|t| *t != "tmpfs") {
                notes.push(format!("rootfstype={t} ignored: root=tmpfs"));
            }
            let mut data = format!("mode=0755,size={}", opts.tmpfs_size);
            if !rootflags.is_empty() {
                data.push(',');
                data.push_str(rootflags);
            }
            steps.push(Step::Mount {
                role: Role::Root,
                source: "tmpfs".into(),
                target: NEW_ROOT.into(),
                fstype: "tmpfs".into(),
                flags: Flags::NONE,
                data,
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
                flags: Flags::NONE,
                data: rootflags.into(),
                timeout: opts.timeout,
            });
        }
        Root::Block(spec) => {
            let root = Root::Block(spec.clone());
            return Err(PlanError {
                error: format!("root={root}: block device roots are not supported yet"),
                check: "use root=tmpfs (store over virtiofs) or root=virtiofs:TAG".into(),
            });
        }
    }

    for (role, tag, dir) in [
        (Role::Store, &opts.store_tag, "/nix/store"),
        (Role::Modules, &opts.modules_tag, "/lib/modules"),
    ] {
        if let Some(tag) = tag {
            steps.push(Step::MountVirtiofs {
                role,
                tag: tag.clone(),
                target: format!("{NEW_ROOT}{dir}"),
                flags: Flags::RO,
                data: String::new(),
                timeout: opts.timeout,
            });
        }
    }

    steps.push(Step::CheckInit {
        new_root: NEW_ROOT.into(),
        path: init.clone(),
    });
    steps.push(Step::WriteTimings {
        path: TIMINGS_PATH.into(),
    });
    steps.push(Step::MoveSpecialMounts {
        new_root: NEW_ROOT.into(),
        mounts: EARLY_MOUNTS.iter().map(|m| m.target.to_string()).collect(),
    });
    // Last, once every mount point in it (including /dev, /proc, /sys, /run) exists.
    if opts.read_only == Some(true) {
        steps.push(Step::RemountReadOnly {
            target: NEW_ROOT.into(),
        });
    }
    steps.push(Step::SwitchRoot {
        new_root: NEW_ROOT.into(),
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
    use initrd_config::ModuleSpec;

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

    fn names(plan: &Plan) -> Vec<&'static str> {
        plan.steps.iter().map(Step::name).collect()
    }

    #[test]
    fn seed_command_line_with_modules() {
        let plan = build(&parse(SEED), &config(MODULES, None)).unwrap();
        let mut expected = vec!["load-module"; MODULES.len()];
        expected.extend([
            "mount-root",
            "mount-store",
            "mount-modules",
            "check-init",
            "write-timings",
            "move-mounts",
            "switch-root",
        ]);
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
        assert_eq!(
            plan.steps.last(),
            Some(&Step::SwitchRoot {
                new_root: "/sysroot".into()
            })
        );
        assert_eq!(
            plan.steps[plan.steps.len() - 2],
            Step::MoveSpecialMounts {
                new_root: "/sysroot".into(),
                mounts: vec!["/dev".into(), "/proc".into(), "/sys".into(), "/run".into()],
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
        let plan = build(&parse(SEED), &config(&order, None)).unwrap();
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
    fn virtiofs_root_has_no_tmpfs() {
        let plan = build(
            &parse("root=virtiofs:rootfs init=/sbin/init rd.timeout=5 rootflags=dax"),
            &config(&[], None),
        )
        .unwrap();
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
                flags: Flags::NONE,
                data: "dax".into(),
                timeout: Duration::from_secs(5),
            }
        );
        assert_eq!(
            names(&plan)[..3],
            ["mount-root", "mount-store", "mount-modules"]
        );
    }

    #[test]
    fn modules_none_drops_the_modules_mount() {
        let plan = build(
            &parse(&format!("{SEED} nixboot.modules=none")),
            &config(MODULES, None),
        )
        .unwrap();
        assert!(!names(&plan).contains(&"mount-modules"));
        assert!(names(&plan).contains(&"mount-store"));
        let plan = build(
            &parse(&format!("{SEED} nixboot.store=none nixboot.modules=mods")),
            &config(&[], None),
        )
        .unwrap();
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
        let plan = build(
            &parse("root=tmpfs -- a b"),
            &config(&[], Some("/nix/store/x-sys/init")),
        )
        .unwrap();
        assert_eq!(plan.exec.argv, ["/nix/store/x-sys/init", "a", "b"]);
        assert_eq!(plan.notes.len(), 1);
        // init= wins over the default.
        let plan = build(
            &parse("init=/nix/store/y/init"),
            &config(&[], Some("/nix/store/x-sys/init")),
        )
        .unwrap();
        assert_eq!(plan.exec.path, "/nix/store/y/init");
    }

    #[test]
    fn block_roots_are_refused_for_now() {
        for root in ["LABEL=nixos", "UUID=abcd", "PARTUUID=1-2", "/dev/vda1"] {
            let e = build(&parse(&format!("root={root} init=/x")), &config(&[], None)).unwrap_err();
            assert!(e.error.contains(root), "{e}");
            assert!(e.error.contains("not supported yet"), "{e}");
        }
    }

    #[test]
    fn ro_remounts_after_every_mount_point_exists() {
        let plan = build(
            &parse(&format!(
                "{SEED} ro nixboot.tmpfs_size=1G rootflags=nr_inodes=1k"
            )),
            &config(&[], None),
        )
        .unwrap();
        let n = names(&plan);
        let remount = n.iter().position(|s| *s == "remount-root-ro").unwrap();
        assert!(remount > n.iter().position(|s| *s == "mount-modules").unwrap());
        assert!(remount > n.iter().position(|s| *s == "move-mounts").unwrap());
        assert_eq!(
            remount + 1,
            n.iter().position(|s| *s == "switch-root").unwrap()
        );
        assert!(
            matches!(&plan.steps[0], Step::Mount { data, .. } if data == "mode=0755,size=1G,nr_inodes=1k")
        );
    }

    #[test]
    fn rootfstype_mismatch_is_noted() {
        let plan = build(
            &parse(&format!("{SEED} rootfstype=ext4")),
            &config(&[], None),
        )
        .unwrap();
        assert_eq!(plan.notes, ["rootfstype=ext4 ignored: root=tmpfs"]);
    }

    #[test]
    fn early_table_is_the_special_mounts() {
        let targets: Vec<&str> = EARLY_MOUNTS.iter().map(|m| m.target).collect();
        assert_eq!(targets, ["/dev", "/proc", "/sys", "/run"]);
        assert_eq!(options(EARLY_MOUNTS[1].flags, ""), "rw,nosuid,nodev,noexec");
        assert_eq!(options(Flags::RO, "x=1"), "ro,x=1");
    }
}
