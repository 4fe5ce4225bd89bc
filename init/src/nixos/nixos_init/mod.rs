//! The nixos-init flavour (c): what nixos-init's `initrd-init` does to the new root inside
//! the initrd, done by us before the switch ([`super::flavour`] tells the flavour apart).
//! [`plan`] decides, pure; the other files do, each one kind of action.
//!
//! What (c) does, from nixpkgs pkgs/by-name/ni/nixos-init/src (init.rs, activate.rs,
//! find_etc.rs) and nixos/modules/system/etc/etc-activation.nix:
//! - /nix/store owner 0:0 mode 1775, failures ignored (a read-only store). nixos-init's own
//!   chmod never takes effect (it sets the mode on a copy of the permissions); stage-2-init.sh
//!   does chmod 1775, and so do we ([`store`]).
//! - /nix/store remounted (bind + remount,bind) with the `nix_store_mount_opts` its mount
//!   lacks ([`store`]).
//! - /run/booted-system and /run/current-system -> the toplevel (atomic symlinks);
//!   /proc/sys/kernel/modprobe and /sys/module/firmware_class/parameters/path written when
//!   they exist; /usr/bin/env and /bin/sh linked (an empty value removes the link, keeping
//!   the directory: systemd treats an empty /usr as fatal) ([`activate`]).
//! - /etc: the erofs metadata image on a read-only loop device at /run/nixos-etc-metadata
//!   (`loop,ro,nodev,nosuid`), then overlay `ro,nodev,nosuid,redirect_dir=on,metacopy=on,
//!   lowerdir=METADATA::BASEDIR` on /etc ([`etc_overlay`]). boot.json does not say whether
//!   the overlay is mutable (`system.etc.overlay.mutable` adds an upperdir under /.rw-etc);
//!   we mount the immutable form. The `::` data-only layer needs Linux 6.5: NixOS asserts a
//!   kernel of at least 6.6 for the etc overlay and has no fallback, so an older kernel is a
//!   failure at `etc-overlay` that says so, before anything is changed.
//! - `special_filesystems` (newer nixpkgs; there is no activation script to mount them):
//!   each mounted unless something is mounted there already (/dev, /proc, /sys, /run are);
//!   a failure is a warning, since systemd mounts its own API filesystems anyway.
//! - `etc_confext` and unknown fields: a warning naming each.
//!
//! Every input is checked before the root is touched (boot.json, image is erofs, basedir,
//! kernel), and any failure goes to the failure policy: never a half-prepared root handed
//! to systemd.

pub mod activate;
pub mod etc_overlay;
pub mod plan;
pub mod store;

use super::flavour::STEP_BOOT_JSON;
use crate::failure::Failure;
use crate::log;
use nixboot_protocol::bootspec::NixosInitV1;

pub use plan::plan;

/// The preparation's phase name (timings, status line); its actions log under their own.
pub const STEP_NIXOS_INIT: &str = "nixos-init";
pub const STEP_STORE: &str = "nixos-init-store";
pub const STEP_LINKS: &str = "nixos-init-links";
pub const STEP_KERNEL: &str = "nixos-init-kernel";
pub const STEP_SPECIAL: &str = "nixos-init-special";
pub const STEP_ETC_IMAGE: &str = "etc-image";
pub const STEP_ETC_BASEDIR: &str = "etc-basedir";
pub const STEP_ETC_OVERLAY: &str = "etc-overlay";

/// Where the metadata image is mounted (etc-activation.nix; it stays visible in stage 2).
pub const ETC_METADATA: &str = "/run/nixos-etc-metadata";
/// The first kernel with overlayfs data-only lower layers (`lowerdir=a::b`).
pub const DATA_ONLY_LAYERS: (u32, u32) = (6, 5);

/// One thing done to the new root. Paths are absolute, in the initramfs's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Logged, nothing done (a field we do not handle).
    Warn(String),
    /// The file must be an erofs image (superblock magic at 1 KiB).
    CheckErofs {
        image: String,
    },
    /// The directory must exist.
    CheckDir {
        path: String,
    },
    /// The running kernel must be at least `min` (for `lowerdir=a::b`).
    RequireKernel {
        min: (u32, u32),
        release: String,
    },
    /// chown 0:0 + chmod; failures logged, not fatal (nixos-init ignores them).
    StoreOwnerMode {
        store: String,
        mode: u32,
    },
    /// bind + remount,bind with the options of `wanted` the mount lacks.
    RemountStore {
        store: String,
        wanted: Vec<String>,
    },
    Symlink {
        link: String,
        target: String,
    },
    /// Written only when the file exists (nixos-init's activate.rs).
    WriteIfExists {
        path: String,
        value: String,
    },
    /// `mkdir -p dir`, then the link removed if present.
    RemoveLink {
        dir: String,
        link: String,
    },
    /// `mkdir -p dir`, then the link made.
    MkdirSymlink {
        dir: String,
        link: String,
        target: String,
    },
    /// One of `special_filesystems`, unless something is mounted there already; a failure
    /// is a warning (systemd mounts its API filesystems itself).
    MountSpecial {
        device: String,
        target: String,
        fstype: String,
        options: String,
    },
    /// Loop device + erofs at `metadata`, overlay at `target`.
    MountEtc {
        image: String,
        basedir: String,
        metadata: String,
        target: String,
    },
}

impl Action {
    /// The step a failure of this action is reported under.
    pub fn step(&self) -> &'static str {
        match self {
            Action::Warn(_) => STEP_BOOT_JSON,
            Action::CheckErofs { .. } => STEP_ETC_IMAGE,
            Action::CheckDir { .. } => STEP_ETC_BASEDIR,
            Action::RequireKernel { .. } | Action::MountEtc { .. } => STEP_ETC_OVERLAY,
            Action::StoreOwnerMode { .. } | Action::RemountStore { .. } => STEP_STORE,
            Action::WriteIfExists { .. } => STEP_KERNEL,
            Action::MountSpecial { .. } => STEP_SPECIAL,
            Action::Symlink { .. } | Action::RemoveLink { .. } | Action::MkdirSymlink { .. } => {
                STEP_LINKS
            }
        }
    }
}

/// Plans and executes (c) on `new_root` for `toplevel`; every action logged under its step.
pub fn prepare(new_root: &str, toplevel: &str, ext: &NixosInitV1) -> Result<String, Failure> {
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let actions = plan(new_root, toplevel, ext, &release)?;
    for a in &actions {
        let msg = execute(new_root, a)?;
        log::log(a.step(), &msg);
    }
    Ok(format!(
        "{toplevel} prepared as nixos-init's initrd-init would ({} actions)",
        actions.len()
    ))
}

/// One action; `Ok` is its log line.
fn execute(new_root: &str, a: &Action) -> Result<String, Failure> {
    let step = a.step();
    match a {
        Action::Warn(w) => Ok(w.clone()),
        Action::CheckErofs { image } => etc_overlay::check_erofs(step, image),
        Action::CheckDir { path } => etc_overlay::check_basedir(step, path),
        Action::RequireKernel { min, release } => etc_overlay::require_kernel(step, *min, release),
        Action::StoreOwnerMode { store, mode } => Ok(store::owner_mode(store, *mode)),
        Action::RemountStore { store, wanted } => store::remount(step, new_root, store, wanted),
        Action::Symlink { link, target } => activate::symlink(step, target, link),
        Action::WriteIfExists { path, value } => activate::write_if_exists(step, path, value),
        Action::RemoveLink { dir, link } => activate::remove_link(step, dir, link),
        Action::MkdirSymlink { dir, link, target } => {
            activate::mkdir_symlink(step, dir, link, target)
        }
        Action::MountSpecial {
            device,
            target,
            fstype,
            options,
        } => Ok(activate::mount_special(
            new_root, device, target, fstype, options,
        )),
        Action::MountEtc {
            image,
            basedir,
            metadata,
            target,
        } => etc_overlay::mount_etc(
            step,
            &format!("{new_root}/dev"),
            image,
            basedir,
            metadata,
            target,
        ),
    }
}
