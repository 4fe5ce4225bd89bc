//! The imageless fixture of the mkinitrd and imageless boot tests: a store holding the
//! probe as a system's `init`, initrds for it built by the mkinitrd library, booted with
//! the store (and the kernel modules) shared over virtiofs.

use super::{assert_booted, assert_initramfs_freed, context, kit, modules_share, run, Kit};
use super::{loadable_modules, ProbeStore, VIRTIOFS_MODULES};
use nixboot_launcher::bootspec::KernelCmdline;
use nixboot_launcher::console::Status;
use nixboot_launcher::qemu::Outcome;
use nixboot_launcher::Share;
use std::path::{Path, PathBuf};

/// A [`Kit`] with a probe store in `store/`.
pub struct Fixture {
    pub kit: Kit,
    /// The host directory shared as /nix/store.
    pub store: PathBuf,
    /// `<hash>-probe-system`, whose `init` is the probe.
    pub system: PathBuf,
    /// The guest path of the probe.
    pub init: String,
}

impl std::ops::Deref for Fixture {
    type Target = Kit;
    fn deref(&self) -> &Kit {
        &self.kit
    }
}

/// What a boot shares over virtiofs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Shares {
    /// The store and the kernel modules.
    All,
    /// Only the kernel modules (a boot that must fail to find its store).
    ModulesOnly,
    /// Nothing (the store is in the initrd).
    None,
}

/// The fixture, or `None` after a loud SKIP.
pub fn fixture(test: &str) -> Option<Fixture> {
    let kit = kit(test)?;
    let ProbeStore {
        store,
        system,
        init,
    } = kit.probe_store("store");
    Some(Fixture {
        kit,
        store,
        system,
        init,
    })
}

impl Fixture {
    /// Build options for the imageless set with the project's init.
    pub fn options(&self, name: &str) -> mkinitrd::BuildOptions {
        mkinitrd::BuildOptions {
            closure: Some(self.system.clone()),
            output: self.tmp.path().join(name),
            kernel_modules: Some(self.env.modules.clone()),
            modules: VIRTIOFS_MODULES.iter().map(|m| m.to_string()).collect(),
            init: Some(self.bins.init.clone()),
            ..Default::default()
        }
    }

    /// Builds and checks the packed modules (mkinitrd resolves the dependencies itself;
    /// any valid order will do); returns the initrd's path and report.
    pub fn build(&self, opts: &mkinitrd::BuildOptions) -> (PathBuf, mkinitrd::BuildReport) {
        let report = mkinitrd::build(opts).expect("mkinitrd");
        if opts.kernel_modules.is_some() {
            let mut packed = report.modules.clone();
            packed.sort();
            let mut expected: Vec<String> =
                loadable_modules().into_iter().map(String::from).collect();
            expected.sort();
            assert_eq!(packed, expected, "{report:?}");
        }
        (opts.output.clone(), report)
    }

    /// The usual command line: the probe as init=, two arguments after `--`.
    pub fn cmdline(&self, append: Option<&str>) -> String {
        KernelCmdline {
            init: Some(self.init.clone()),
            append: append.map(str::to_string),
            init_args: vec!["alpha".into(), "beta".into()],
            ..Default::default()
        }
        .render()
    }

    pub fn boot(&self, initrd: &Path, cmdline: String, shares: Shares) -> Outcome {
        let mut cfg = self.env.vm(initrd, cmdline);
        if shares == Shares::All {
            cfg.shares
                .push(Share::new("store", &self.store).unwrap().readonly());
        }
        if shares != Shares::None {
            cfg.shares.push(modules_share(&self.env));
        }
        run(&self.test, cfg)
    }
}

/// For [`assert_probe_ok`]: the store is a virtiofs share.
pub fn virtiofs(fstype: Option<&str>) -> bool {
    fstype == Some("virtiofs")
}

/// The init reached the probe, which found a clean system on a tmpfs root whose store is
/// what `store_ok` accepts (the probe's `store_fstype`: `None` when /nix/store is not a
/// mount point).
pub fn assert_probe_ok(f: &Fixture, o: &Outcome, store_ok: impl Fn(Option<&str>) -> bool) {
    let ctx = context(o);
    let p = assert_booted(o);
    let s = o.status.as_ref().expect("no nixboot-status line");
    assert_eq!(s.status(), Status::Ok, "{s}{ctx}");
    assert_eq!(s.get("init"), Some(f.init.as_str()), "{s}");
    assert_eq!(p.argv, [f.init.as_str(), "alpha", "beta"], "{p}");
    assert_eq!(p.root_fstype.as_deref(), Some("tmpfs"), "{p}");
    assert!(
        store_ok(p.store_fstype.as_deref()),
        "unexpected store_fstype: {p}{ctx}"
    );
    assert_initramfs_freed(&p);
}
