//! The store and the modules in the new root: the store embedded in the initrd, or a
//! store share (optionally under a tmpfs overlay), and the modules share.

use super::{Role, Step, NEW_ROOT};
use crate::cmdline::{Options, Root, ShareChoice, DEFAULT_MODULES_TAG, DEFAULT_STORE_TAG};
use nixboot_protocol::InitrdConfig;
use rustix::mount::MountFlags;

/// Mount points of a store overlay, NixOS's names (installer ISO, netboot).
pub const STORE_LOWER: &str = "/nix/.ro-store";
pub const STORE_UPPER: &str = "/nix/.rw-store";

pub fn plan(opts: &Options, config: &InitrdConfig, notes: &mut Vec<String>) -> Vec<Step> {
    let mut steps = Vec::new();
    let is_tmpfs = opts.root == Root::Tmpfs;
    let embedded = config
        .embedded_store
        .as_deref()
        .filter(|_| is_tmpfs && opts.store == ShareChoice::Default);
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
    match (opts.store.resolve(store_default), opts.store_overlay) {
        (Some(tag), true) => steps.extend(overlay(opts, tag)),
        (Some(tag), false) => steps.push(share(opts, Role::Store, tag, "/nix/store")),
        (None, true) => notes.push(
            "nixboot.store_overlay ignored: no store share to lay the overlay on".to_string(),
        ),
        (None, false) => {}
    }
    if let Some(tag) = opts.modules.resolve(modules_default) {
        steps.push(share(opts, Role::Modules, tag, "/lib/modules"));
    }
    // The host's working directory, read-write, at its own path (`--share-cwd`).
    if let Some(path) = &opts.cwd {
        steps.push(Step::MountVirtiofs {
            role: Role::Cwd,
            tag: nixboot_protocol::exec::CWD_TAG.into(),
            target: format!("{NEW_ROOT}{path}"),
            flags: MountFlags::empty(),
            data: String::new(),
            timeout: opts.timeout,
        });
    }
    steps
}

/// A read-only virtiofs share at `path` in the new root.
fn share(opts: &Options, role: Role, tag: String, path: &str) -> Step {
    Step::MountVirtiofs {
        role,
        tag,
        target: format!("{NEW_ROOT}{path}"),
        flags: MountFlags::RDONLY,
        data: String::new(),
        timeout: opts.timeout,
    }
}

/// The store share read-only below, a tmpfs above, the overlay of both on /nix/store.
fn overlay(opts: &Options, tag: String) -> [Step; 3] {
    let lower = format!("{NEW_ROOT}{STORE_LOWER}");
    let upper = format!("{NEW_ROOT}{STORE_UPPER}");
    [
        share(opts, Role::Store, tag, STORE_LOWER),
        Step::Mount {
            role: Role::StoreUpper,
            source: "tmpfs".into(),
            target: upper.clone(),
            fstype: "tmpfs".into(),
            flags: MountFlags::empty(),
            data: format!("mode=0755,size={}", opts.tmpfs_size),
        },
        Step::MountOverlay {
            role: Role::StoreOverlay,
            target: format!("{NEW_ROOT}/nix/store"),
            lower,
            upper: format!("{upper}/store"),
            work: format!("{upper}/work"),
        },
    ]
}
