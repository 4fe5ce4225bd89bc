//! (command-line [`Options`], the initrd's [`InitrdConfig`]) -> [`Plan`] (pure; no I/O).
//!
//! Deciding is kept apart from doing: everything the boot will do is an ordered list of
//! [`Step`]s that unit tests can look at, and `boot` executes it one step at a time. One
//! planner per phase: [`modules`], [`root`], [`store`] (and the modules share), [`switch`]
//! (check-init to the exec); [`early`] is the fixed table before the command line is read.
//!
//! Decisions, written down once:
//! - The special filesystems (/dev devtmpfs, /proc, /sys, /run tmpfs) stay MOUNTED and are
//!   moved into the new root, as NixOS's scripted stage 1 does, for every closure flavour.
//!   stage-2-init.sh (and prepare-root, which is the same script) then skips its own early
//!   mounts (it only mounts them when `/proc/1` is missing) and systemd mounts the rest
//!   (/dev/shm, /dev/pts, ...). /run survives, so `/run/nixboot/timings.json` and
//!   prepare-root's `/run/booted-system` reach the booted system. Stage 1's /dev links
//!   ([`DEV_LINKS`]: /dev/fd, /dev/stdin, ...) are made in the moved devtmpfs, one step
//!   (`dev-links`) for every flavour.
//! - Closure flavours (nixos/flavour.rs), told from the closure once the root is mounted,
//!   so one step of two phases (`flavour`, then what it needs): with a `prepare-root`
//!   beside the next init (NixOS built with the systemd initrd: `init` is systemd itself),
//!   it is run the way NixOS's systemd initrd runs it (`chroot /sysroot
//!   $closure/prepare-root` with `IN_NIXOS_SYSTEMD_STAGE1=true`, /run shared with the
//!   initrd), after the special mounts are in the new root and before the switch; then init
//!   (systemd) is exec'd. A nixos-init closure is prepared as its `initrd-init` would (phase
//!   `nixos-init`). Otherwise init (the stage-2 script, or another) is exec'd directly.
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
//!   /sys/fs/virtiofs (6.1) the only way to know a tag is there is to mount it. A block
//!   root is waited for (sysfs + superblocks) and mounted in one step too, in two phases
//!   timed apart (`wait-root`, `mount-root`): the device found is a value handed from the
//!   wait to the mount, not state shared between steps.
//! - Timings are kept in memory and written after the switch, into the /run the booted
//!   system sees, so they cover every phase up to the exec.

pub mod early;
pub mod modules;
pub mod options;
pub mod root;
pub mod step;
pub mod store;
pub mod switch;
pub mod verity;

pub use early::{EarlyMount, DEV_LINKS, EARLY_MOUNTS};
pub use options::{options, split_mount_options};
pub use step::{Role, Step};
pub use switch::{NEXT_INIT_ENV, TIMINGS_PATH};

use crate::cmdline::{Options, ShareChoice};
use nixboot_protocol::InitrdConfig;

/// Where the new root is assembled before the switch.
pub const NEW_ROOT: &str = "/sysroot";

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
    /// Command mode: run this instead of exec'ing the next init (unless it has an agent).
    pub command: Option<switch::RunCommand>,
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

/// Decides the boot: each phase's planner in boot order; notes in the same order.
pub fn build(opts: &Options, config: &InitrdConfig) -> Result<Plan, PlanError> {
    let mut notes = Vec::new();
    let init = switch::next_init(opts, config, &mut notes)?;
    let mut steps = modules::plan(opts, config, &mut notes);
    let root = root::plan(opts, &mut notes)?;
    steps.push(root.step);
    match verity::plan(opts)? {
        // The verified store replaces any store share and the embedded store's copy (which
        // may carry the image itself); the modules share stays.
        Some(step) => {
            steps.push(step);
            if config.embedded_store.is_some() || opts.store != ShareChoice::Default {
                notes.push(
                    "the store is the verity image: nixboot.store= and an embedded store \
                     are not mounted on /nix/store"
                        .into(),
                );
            }
            // An initrd carrying a store boots without a modules share unless one is named.
            let modules = match (&config.embedded_store, &opts.modules) {
                (Some(_), ShareChoice::Default) => ShareChoice::Off,
                (_, m) => m.clone(),
            };
            let opts = Options {
                store: ShareChoice::Off,
                store_overlay: false,
                modules,
                ..opts.clone()
            };
            let config = InitrdConfig {
                embedded_store: None,
                ..config.clone()
            };
            steps.extend(store::plan(&opts, &config, &mut notes));
        }
        None => steps.extend(store::plan(opts, config, &mut notes)),
    }
    steps.extend(switch::plan(&init, root.remount_read_only));
    Ok(Plan {
        steps,
        command: switch::run_command(&init, opts),
        exec: switch::exec(init, opts),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdline::{parse, BlockSpec};
    use nixboot_protocol::ModuleSpec;
    use rustix::mount::MountFlags;
    use std::time::Duration;

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
    const TAIL: [&str; 8] = [
        "check-init",
        "move-mounts",
        "dev-links",
        "carry",
        "flavour",
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

    /// The phase names: a block mount's wait and mount are two phases of one step.
    fn names(plan: &Plan) -> Vec<&'static str> {
        plan.steps
            .iter()
            .flat_map(Step::phases)
            .map(|(name, _)| name)
            .collect()
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
                flags: MountFlags::empty(),
                data: "mode=0755,size=50%".into(),
            }
        );
        assert_eq!(
            plan.steps[MODULES.len() + 1],
            Step::MountVirtiofs {
                role: Role::Store,
                tag: "store".into(),
                target: "/sysroot/nix/store".into(),
                flags: MountFlags::RDONLY,
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
                flags: MountFlags::RDONLY,
                data: String::new(),
                timeout: t30,
            }
        );
        let n = plan.steps.len();
        assert_eq!(
            plan.steps[n - 6],
            Step::MoveSpecialMounts {
                new_root: "/sysroot".into(),
                mounts: vec!["/dev".into(), "/proc".into(), "/sys".into(), "/run".into()],
            }
        );
        // Stage 1's /dev links, in the devtmpfs that moved, for every flavour.
        assert_eq!(
            plan.steps[n - 5].phases()[0].1,
            "fd -> /proc/self/fd, stdin -> /proc/self/fd/0, stdout -> /proc/self/fd/1, \
             stderr -> /proc/self/fd/2 in /sysroot/dev"
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
                flags: MountFlags::NOATIME,
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
                Step::MountBlock {
                    role: Role::Root,
                    spec,
                    timeout: Duration::from_secs(7),
                    target: "/sysroot".into(),
                    fstypes: vec![],
                    flags: MountFlags::empty(),
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
            plan.steps[0],
            Step::MountBlock {
                role: Role::Root,
                spec: BlockSpec::Path("/dev/vda1".into()),
                timeout: Duration::from_secs(30),
                target: "/sysroot".into(),
                fstypes: vec!["ext4".into(), "btrfs".into()],
                flags: MountFlags::RDONLY | MountFlags::NOATIME | MountFlags::NOSUID,
                data: "data=journal,errors=remount-ro".into(),
            }
        );
        // Mounted read-only from the start: no remount before the switch.
        assert!(!names(&plan).contains(&"remount-root-ro"));
        // ro inside rootflags counts unless the command line says rw.
        let ro = |c: &str| {
            matches!(
                &plan_of(c, &config(&[], None)).steps[0],
                Step::MountBlock { flags, .. } if flags.contains(MountFlags::RDONLY)
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
                if target == "/sysroot/nix/.ro-store" && flags.contains(MountFlags::RDONLY)));
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
                if data == "mode=0755,size=1G,nr_inodes=1k" && flags.contains(MountFlags::NOATIME) && !flags.contains(MountFlags::RDONLY)));
    }

    #[test]
    fn rootfstype_mismatch_is_noted() {
        let plan = plan_of(&format!("{SEED} rootfstype=ext4"), &config(&[], None));
        assert_eq!(plan.notes, ["rootfstype=ext4 ignored: root=tmpfs"]);
    }

    #[test]
    fn mount_options_are_split_like_mount8() {
        assert_eq!(
            split_mount_options(""),
            (MountFlags::empty(), None, String::new())
        );
        let (f, ro, data) = split_mount_options("ro,noatime,,subvol=@,relatime,compress=zstd");
        assert_eq!(ro, Some(true));
        assert!(f.contains(MountFlags::NOATIME) && !f.contains(MountFlags::RDONLY));
        assert_eq!(data, "subvol=@,compress=zstd");
        let (f, ro, _) = split_mount_options("noexec,exec,nodev,rw");
        assert_eq!(ro, Some(false));
        assert!(!f.contains(MountFlags::NOEXEC) && f.contains(MountFlags::NODEV));
        assert_eq!(
            options(MountFlags::RDONLY | MountFlags::NOATIME, "x=1"),
            "ro,noatime,x=1"
        );
    }

    #[test]
    fn early_table_is_the_special_mounts() {
        let targets: Vec<&str> = EARLY_MOUNTS.iter().map(|m| m.target).collect();
        assert_eq!(targets, ["/dev", "/proc", "/sys", "/run"]);
        assert_eq!(options(EARLY_MOUNTS[1].flags, ""), "rw,nosuid,nodev,noexec");
        assert_eq!(options(MountFlags::RDONLY, "x=1"), "ro,x=1");
    }
}
