//! The closure's flavour, and the nixos-init flavour's preparation of the new root.
//!
//! Three NixOS closure flavours, told apart by what the closure holds (every 26.05
//! toplevel's boot.json carries `org.nixos.nixos-init.v1`, whatever its initrd, so the
//! extension alone says nothing):
//! - (a) `init` is a `#!` script: the stage-2 script (scripted initrd, or none);
//! - (b) a `prepare-root` lies beside `init`: the systemd initrd's activation;
//! - (c) neither, boot.json has `org.nixos.nixos-init.v1` and the toplevel has
//!   `nixos-version` (nixos-init's `verify_init_is_nixos`): `system.nixos-init.enable`.
//!   There is no prepare-root; nixos-init's `initrd-init` prepares the root inside the
//!   initrd, and so do we: [`plan`] decides, [`execute`] does.
//!
//! What (c) does, from nixpkgs pkgs/by-name/ni/nixos-init/src (init.rs, activate.rs,
//! find_etc.rs) and nixos/modules/system/etc/etc-activation.nix:
//! - /nix/store owner 0:0 mode 1775, failures ignored (a read-only store). nixos-init's own
//!   chmod never takes effect (it sets the mode on a copy of the permissions); stage-2-init.sh
//!   does chmod 1775, and so do we.
//! - /nix/store remounted (bind + remount,bind) with the `nix_store_mount_opts` its mount
//!   lacks.
//! - /run/booted-system and /run/current-system -> the toplevel (atomic symlinks).
//! - /proc/sys/kernel/modprobe and /sys/module/firmware_class/parameters/path written when
//!   they exist.
//! - /usr/bin/env and /bin/sh linked (an empty value removes the link, keeping the
//!   directory: systemd treats an empty /usr as fatal).
//! - /etc: the erofs metadata image on a read-only loop device at /run/nixos-etc-metadata
//!   (`loop,ro,nodev,nosuid`), then overlay `ro,nodev,nosuid,redirect_dir=on,metacopy=on,
//!   lowerdir=METADATA::BASEDIR` on /etc. boot.json does not say whether the overlay is
//!   mutable (`system.etc.overlay.mutable` adds an upperdir under /.rw-etc); we mount the
//!   immutable form. The `::` data-only layer needs Linux 6.5: NixOS asserts a kernel of at
//!   least 6.6 for the etc overlay and has no fallback, so an older kernel is a failure at
//!   `etc-overlay` that says so, before anything is changed.
//! - `special_filesystems` (newer nixpkgs; there is no activation script to mount them):
//!   each mounted unless something is mounted there already (/dev, /proc, /sys, /run are);
//!   a failure is a warning, since systemd mounts its own API filesystems anyway.
//! - `etc_confext` and unknown fields: a warning naming each.
//!
//! Every input is checked before the root is touched (boot.json, image is erofs, basedir,
//! kernel), and any failure goes to the failure policy: never a half-prepared root handed
//! to systemd.

use crate::failure::Failure;
use crate::log::{self, errno};
use nixboot_protocol::bootspec::{BootJson, NixosInitV1, NIXOS_INIT_V1};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::mount::MountFlags;

pub const STEP_FLAVOUR: &str = "flavour";
pub const STEP_BOOT_JSON: &str = "boot-json";
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
const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
const EROFS_SUPER_OFFSET: u64 = 1024;

/// Which of the three NixOS closures (or something else) the next init belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Stage2Script,
    PrepareRoot,
    NixosInit,
    /// No NixOS preparation recognised: exec'd as is.
    Other,
}

impl Flavour {
    pub fn describe(self) -> &'static str {
        match self {
            Flavour::Stage2Script => "(a) init is the stage-2 script",
            Flavour::PrepareRoot => "(b) init is systemd with prepare-root beside it",
            Flavour::NixosInit => "(c) nixos-init: boot.json has org.nixos.nixos-init.v1",
            Flavour::Other => "no NixOS preparation recognised",
        }
    }
}

/// What the closure holds, as far as the flavour goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub init_is_script: bool,
    pub has_prepare_root: bool,
    pub has_nixos_init_ext: bool,
    pub has_nixos_version: bool,
}

/// The flavour, from what the closure holds (pure).
pub fn detect(f: &Facts) -> Flavour {
    if f.init_is_script {
        Flavour::Stage2Script
    } else if f.has_prepare_root {
        Flavour::PrepareRoot
    } else if f.has_nixos_init_ext && f.has_nixos_version {
        Flavour::NixosInit
    } else {
        Flavour::Other
    }
}

/// `major.minor` of a kernel release (`6.1.0-31-cloud-amd64` -> (6, 1)).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

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

/// The warnings for what boot.json holds that we do not act on.
fn warnings(ext: &NixosInitV1) -> Vec<Action> {
    let mut out = Vec::new();
    for k in ext.unknown.keys() {
        out.push(Action::Warn(format!(
            "WARNING: {NIXOS_INIT_V1}.{k} is not known to this init; ignored"
        )));
    }
    if let Some(c) = &ext.etc_confext {
        out.push(Action::Warn(format!(
            "WARNING: {NIXOS_INIT_V1}.etc_confext ({} from {}) is NOT merged: this init does \
             not run systemd-confext; /etc lacks what that image provides",
            c.name, c.image
        )));
    }
    out
}

/// The etc overlay's inputs (in the initramfs's view), `None` without an etc overlay; one
/// without the other fails at the missing one's step.
fn etc_inputs(
    r: &dyn Fn(&str) -> String,
    toplevel: &str,
    ext: &NixosInitV1,
    out: &mut Vec<Action>,
) -> Result<Option<(String, String)>, Failure> {
    let (step, missing, have) = match (&ext.etc_metadata_image, &ext.etc_basedir) {
        (Some(image), Some(basedir)) => return Ok(Some((r(image), r(basedir)))),
        (None, None) => {
            out.push(Action::Warn(format!(
                "WARNING: {NIXOS_INIT_V1} has no etc_metadata_image/etc_basedir \
                 (system.etc.overlay disabled?): /etc is left as the root has it"
            )));
            return Ok(None);
        }
        (None, have) => (STEP_ETC_IMAGE, "etc_metadata_image", have),
        (have, None) => (STEP_ETC_BASEDIR, "etc_basedir", have),
    };
    Err(Failure::new(
        step,
        format!("{NIXOS_INIT_V1}.{missing} is missing beside {have:?}"),
    )
    .tried(format!("read {toplevel}/boot.json"))
    .check("the closure's boot.json: nixos-init.nix writes both or neither"))
}

/// Everything (c) does to `new_root` for `toplevel`, inputs checked first (pure).
pub fn plan(
    new_root: &str,
    toplevel: &str,
    ext: &NixosInitV1,
    kernel_release: &str,
) -> Result<Vec<Action>, Failure> {
    let r = |p: &str| format!("{new_root}{p}");
    let mut out = warnings(ext);
    let etc = etc_inputs(&r, toplevel, ext, &mut out)?;
    if let Some((image, basedir)) = &etc {
        out.push(Action::CheckErofs {
            image: image.clone(),
        });
        out.push(Action::CheckDir {
            path: basedir.clone(),
        });
        out.push(Action::RequireKernel {
            min: DATA_ONLY_LAYERS,
            release: kernel_release.to_string(),
        });
    }
    out.push(Action::StoreOwnerMode {
        store: r("/nix/store"),
        mode: 0o1775,
    });
    out.push(Action::RemountStore {
        store: r("/nix/store"),
        wanted: ext.nix_store_mount_opts.clone(),
    });
    for f in ext.special_filesystems.iter().flatten() {
        out.push(Action::MountSpecial {
            device: f.device.clone(),
            target: r(&f.mountpoint),
            fstype: f.fstype.clone(),
            options: f.options.join(","),
        });
    }
    activation(&r, toplevel, ext, &mut out);
    if let Some((image, basedir)) = etc {
        out.push(Action::MountEtc {
            image,
            basedir,
            metadata: r(ETC_METADATA),
            target: r("/etc"),
        });
    }
    Ok(out)
}

/// nixos-init's activate.rs: system links, kernel paths, /usr/bin/env and /bin/sh.
fn activation(
    r: &dyn Fn(&str) -> String,
    toplevel: &str,
    ext: &NixosInitV1,
    out: &mut Vec<Action>,
) {
    for link in ["/run/booted-system", "/run/current-system"] {
        out.push(Action::Symlink {
            link: r(link),
            target: toplevel.to_string(),
        });
    }
    for (value, path) in [
        (&ext.modprobe_binary, "/proc/sys/kernel/modprobe"),
        (&ext.firmware, "/sys/module/firmware_class/parameters/path"),
    ] {
        if let Some(v) = value {
            out.push(Action::WriteIfExists {
                path: r(path),
                value: v.clone(),
            });
        }
    }
    for (value, dir, name) in [
        (&ext.env_binary, "/usr/bin", "env"),
        (&ext.sh_binary, "/bin", "sh"),
    ] {
        let link = r(&format!("{dir}/{name}"));
        match value.as_deref() {
            None => {}
            Some("") => out.push(Action::RemoveLink { dir: r(dir), link }),
            Some(t) => out.push(Action::MkdirSymlink {
                dir: r(dir),
                link,
                target: t.to_string(),
            }),
        }
    }
}

/// The per-mount options of the last mount at `mountpoint` in /proc/self/mountinfo.
pub fn mount_options<'a>(mountinfo: &'a str, mountpoint: &str) -> Option<&'a str> {
    mountinfo.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&mountpoint))
            .then(|| f.get(5).copied())
            .flatten()
    })
}

/// The options of `wanted` that `current` (comma-separated) lacks.
pub fn missing_options(current: &str, wanted: &[String]) -> Vec<String> {
    let have: Vec<&str> = current.split(',').collect();
    wanted
        .iter()
        .filter(|w| !have.contains(&w.as_str()))
        .cloned()
        .collect()
}

/// Per-mount flags for a bind remount: what the mount has plus what is missing, the way
/// mount(8) merges `remount` options. Options that are not per-mount flags are returned.
pub fn remount_flags(current: &str, missing: &[String]) -> (MountFlags, Vec<String>) {
    let mut flags = MountFlags::empty();
    let mut unknown = Vec::new();
    let table = [
        ("ro", MountFlags::RDONLY),
        ("nosuid", MountFlags::NOSUID),
        ("nodev", MountFlags::NODEV),
        ("noexec", MountFlags::NOEXEC),
        ("noatime", MountFlags::NOATIME),
        ("nodiratime", MountFlags::NODIRATIME),
        ("strictatime", MountFlags::STRICTATIME),
    ];
    let keep = ["rw", "relatime", "suid", "dev", "exec"];
    let all = current
        .split(',')
        .map(str::to_string)
        .chain(missing.iter().cloned());
    for (i, o) in all.enumerate() {
        match table.iter().find(|(n, _)| *n == o) {
            Some((_, f)) => flags |= *f,
            None if keep.contains(&o.as_str()) || o.is_empty() => {}
            // Only the wanted ones are worth a warning; the mount's own are its business.
            None if i >= current.split(',').count() => unknown.push(o),
            None => {}
        }
    }
    (flags, unknown)
}

/// Whether the bytes at offset 1024 of a file start with erofs's superblock magic.
pub fn is_erofs(at_1k: &[u8]) -> bool {
    at_1k
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        == Some(EROFS_MAGIC)
}

// ---- doing -------------------------------------------------------------------------

/// The hook at the prepare-root step: the device links stage 1 leaves for every flavour,
/// then the flavour; for (c) the whole preparation. `Ok(None)`: not (c), go on with
/// prepare-root as before; `Ok(Some(msg))`: (c) done.
pub fn prepare(step: &'static str, new_root: &str, init: &str) -> Result<Option<String>, Failure> {
    stage1_device_links(new_root);
    let resolved = resolve_in(new_root, init).map_err(|e| {
        Failure::new(
            step,
            format!("cannot resolve {init} in the new root: {}", errno(e)),
        )
    })?;
    let toplevel = match resolved.rfind('/') {
        Some(0) | None => "/".to_string(),
        Some(i) => resolved[..i].to_string(),
    };
    let inside = |p: &str| format!("{new_root}{}/{p}", toplevel.trim_end_matches('/'));
    let exists = |p: &str| rustix::fs::access(p, rustix::fs::Access::EXISTS).is_ok();
    let mut head = [0u8; 2];
    let init_is_script = std::fs::File::open(format!("{new_root}{resolved}"))
        .and_then(|f| std::io::Read::read_exact(&mut &f, &mut head))
        .is_ok()
        && &head == b"#!";
    let mut facts = Facts {
        init_is_script,
        has_prepare_root: exists(&inside("prepare-root")),
        has_nixos_version: exists(&inside("nixos-version")),
        ..Facts::default()
    };
    let mut ext = None;
    if !facts.init_is_script && !facts.has_prepare_root {
        ext = read_extension(&inside("boot.json"))?;
        facts.has_nixos_init_ext = ext.is_some();
    }
    let flavour = detect(&facts);
    log::log(STEP_FLAVOUR, &format!("{toplevel}: {}", flavour.describe()));
    match (flavour, ext) {
        (Flavour::NixosInit, Some(ext)) => run(new_root, &toplevel, &ext).map(Some),
        (Flavour::Other, Some(_)) => {
            log::log(
                STEP_FLAVOUR,
                &format!("{toplevel} has no nixos-version: not a NixOS toplevel, not initialised (as nixos-init)"),
            );
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// boot.json's nixos-init extension; `None` without boot.json or without the extension.
fn read_extension(path: &str) -> Result<Option<NixosInitV1>, Failure> {
    let check = "the closure's boot.json (nixos/modules/system/activation/bootspec.nix \
                 writes it; nixos-init.nix its org.nixos.nixos-init.v1)";
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(
                Failure::new(STEP_BOOT_JSON, format!("cannot read {path}: {e}")).check(check),
            )
        }
    };
    let bad = |e: nixboot_protocol::bootspec::BootspecError| {
        Failure::new(STEP_BOOT_JSON, format!("{path}: {e}"))
            .tried(format!("parse {path} ({} bytes) as bootspec", bytes.len()))
            .check(check)
    };
    BootJson::parse(&bytes)
        .and_then(|d| d.nixos_init())
        .map_err(bad)
}

/// Plans and executes (c); every action logged under its step.
fn run(new_root: &str, toplevel: &str, ext: &NixosInitV1) -> Result<String, Failure> {
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

/// The links NixOS's stage 1 leaves in /dev (stage-1-init.sh): stage-2-init.sh's
/// `exec > >(tee ...)` needs /dev/fd. An existing entry is left alone.
pub fn stage1_device_links(new_root: &str) {
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let link = format!("{new_root}/dev/{name}");
        match rustix::fs::symlink(target, link.as_str()) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => log::notice(
                "prepare-root",
                &format!("WARNING: cannot link {link}: {}", errno(e)),
            ),
        }
    }
}

/// Where `path` leads inside `new_root`, symlinks resolved with `new_root` as `/`.
fn resolve_in(new_root: &str, path: &str) -> Result<String, Errno> {
    let root = rustix::fs::open(
        new_root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let fd = rustix::fs::openat2(
        &root,
        path.trim_start_matches('/'),
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT,
    )?;
    use rustix::fd::AsRawFd;
    // /proc has moved into the new root by now; before the move it is at /proc.
    let link = |proc: &str| format!("{proc}/self/fd/{}", fd.as_raw_fd());
    let real = rustix::fs::readlink(link(&format!("{new_root}/proc")), Vec::new())
        .or_else(|_| rustix::fs::readlink(link("/proc"), Vec::new()))?;
    let real = real.to_string_lossy();
    Ok(real.strip_prefix(new_root).unwrap_or(&real).to_string())
}

fn execute(new_root: &str, a: &Action) -> Result<String, Failure> {
    let step = a.step();
    let sys = |what: String| move |e: Errno| Failure::new(step, format!("{what}: {}", errno(e)));
    match a {
        Action::Warn(w) => Ok(w.clone()),
        Action::CheckErofs { image } => check_erofs(step, image),
        Action::CheckDir { path } => match rustix::fs::stat(path.as_str()) {
            Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir() => {
                Ok(format!("{path} is a directory"))
            }
            Ok(_) => Err(
                Failure::new(step, format!("etc_basedir {path} is not a directory"))
                    .check("the closure's boot.json etc_basedir and the store's contents"),
            ),
            Err(e) => Err(
                Failure::new(step, format!("etc_basedir {path}: {}", errno(e)))
                    .tried(format!("stat {path}"))
                    .check("is the etc_basedir store path in the store (copied with the closure)?"),
            ),
        },
        Action::RequireKernel { min, release } => require_kernel(step, *min, release),
        Action::StoreOwnerMode { store, mode } => {
            let own = rustix::fs::chown(
                store.as_str(),
                Some(rustix::fs::Uid::ROOT),
                Some(rustix::fs::Gid::ROOT),
            );
            let chmod = rustix::fs::chmod(store.as_str(), Mode::from_raw_mode(*mode));
            Ok(match (own, chmod) {
                (Ok(()), Ok(())) => format!("{store} 0:0 mode {mode:04o}"),
                (o, c) => format!(
                    "{store} left as it is (chown: {}, chmod: {}; ignored, as nixos-init does)",
                    o.map_or_else(errno, |_| "ok".into()),
                    c.map_or_else(errno, |_| "ok".into())
                ),
            })
        }
        Action::RemountStore { store, wanted } => remount_store(step, new_root, store, wanted),
        Action::Symlink { link, target } => {
            atomic_symlink(target, link).map_err(sys(format!("ln -sfn {target} {link}")))?;
            Ok(format!("{link} -> {target}"))
        }
        Action::WriteIfExists { path, value } => {
            if rustix::fs::access(path.as_str(), rustix::fs::Access::EXISTS).is_err() {
                return Ok(format!("{path} does not exist; not written"));
            }
            std::fs::write(path, value)
                .map_err(|e| Failure::new(step, format!("cannot write {value} to {path}: {e}")))?;
            Ok(format!("{path} = {value}"))
        }
        Action::RemoveLink { dir, link } => {
            crate::mounts::mkdir_p(dir).map_err(|(d, e)| sys(format!("mkdir {d}"))(e))?;
            match rustix::fs::unlink(link.as_str()) {
                Ok(()) | Err(Errno::NOENT) => Ok(format!("{link} removed ({dir} kept)")),
                Err(e) => Err(sys(format!("rm {link}"))(e)),
            }
        }
        Action::MkdirSymlink { dir, link, target } => {
            crate::mounts::mkdir_p(dir).map_err(|(d, e)| sys(format!("mkdir {d}"))(e))?;
            atomic_symlink(target, link).map_err(sys(format!("ln -sfn {target} {link}")))?;
            Ok(format!("{link} -> {target}"))
        }
        Action::MountSpecial {
            device,
            target,
            fstype,
            options,
        } => Ok(mount_special(new_root, device, target, fstype, options)),
        Action::MountEtc {
            image,
            basedir,
            metadata,
            target,
        } => mount_etc(step, new_root, image, basedir, metadata, target),
    }
}

fn check_erofs(step: &'static str, image: &str) -> Result<String, Failure> {
    let check = "etc_metadata_image must be the erofs image NixOS builds \
                 (system.build.etcMetadataImage); is the store path complete?";
    let fd =
        rustix::fs::open(image, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).map_err(|e| {
            Failure::new(step, format!("etc_metadata_image {image}: {}", errno(e))).check(check)
        })?;
    let mut magic = [0u8; 4];
    let ok =
        crate::elf::ReadAt::read_exact_at(&crate::elf::File(&fd), EROFS_SUPER_OFFSET, &mut magic);
    if ok && is_erofs(&magic) {
        return Ok(format!("{image} is an erofs image"));
    }
    Err(Failure::new(
        step,
        format!("etc_metadata_image {image} is not an erofs image"),
    )
    .tried(format!(
        "read 4 bytes at offset {EROFS_SUPER_OFFSET}: {} (erofs magic {EROFS_MAGIC:#010x})",
        if ok {
            format!("{:#010x}", u32::from_le_bytes(magic))
        } else {
            "short file".into()
        }
    ))
    .check(check))
}

fn require_kernel(step: &'static str, min: (u32, u32), release: &str) -> Result<String, Failure> {
    match kernel_version(release) {
        Some(v) if v >= min => Ok(format!("Linux {release} has overlayfs data-only layers")),
        _ => Err(Failure::new(
            step,
            format!(
                "Linux {release} cannot mount the /etc overlay: lowerdir=METADATA::BASEDIR \
                 (data-only layer) needs Linux {}.{} or later",
                min.0, min.1
            ),
        )
        .tried("nothing yet: checked before touching the root")
        .check(
            "boot a kernel >= 6.6 (NixOS asserts it for system.etc.overlay), or build the \
                system without system.etc.overlay / nixos-init",
        )),
    }
}

fn remount_store(
    step: &'static str,
    new_root: &str,
    store: &str,
    wanted: &[String],
) -> Result<String, Failure> {
    let info = std::fs::read_to_string(format!("{new_root}/proc/self/mountinfo"))
        .or_else(|_| std::fs::read_to_string("/proc/self/mountinfo"))
        .map_err(|e| Failure::new(step, format!("cannot read mountinfo: {e}")))?;
    let (current, missing) = match mount_options(&info, store) {
        Some(c) => (c, missing_options(c, wanted)),
        None => ("", wanted.to_vec()),
    };
    if missing.is_empty() {
        return Ok(format!("{store} already has {}", wanted.join(",")));
    }
    let (flags, unknown) = remount_flags(current, &missing);
    for u in &unknown {
        log::notice(
            step,
            &format!("WARNING: nix_store_mount_opts {u} is not a per-mount flag; not applied"),
        );
    }
    let tried = format!(
        "mount --bind {store} {store}; mount -o remount,bind,{} {store}",
        missing.join(",")
    );
    let fail = |what: &str, e: Errno| {
        Failure::new(step, format!("{what} {store}: {}", errno(e)))
            .tried(tried.clone())
            .check("the store's mount (mountinfo above); nix_store_mount_opts in boot.json")
    };
    rustix::mount::mount_bind(store, store).map_err(|e| fail("bind mount", e))?;
    rustix::mount::mount_remount(store, flags | MountFlags::BIND, "")
        .map_err(|e| fail("remount", e))?;
    Ok(format!(
        "{store} remounted with {} (had {current})",
        missing.join(",")
    ))
}

/// A special filesystem nothing is mounted on yet; what happened, for the log.
fn mount_special(
    new_root: &str,
    device: &str,
    target: &str,
    fstype: &str,
    options: &str,
) -> String {
    let info =
        std::fs::read_to_string(format!("{new_root}/proc/self/mountinfo")).unwrap_or_default();
    if mount_options(&info, target).is_some() {
        return format!("{target} is mounted already");
    }
    let (mut flags, ro, data) = crate::plan::split_mount_options(options);
    flags.set(MountFlags::RDONLY, ro == Some(true));
    let cmd = crate::mounts::command(device, target, fstype, flags, &data);
    if let Err((d, e)) = crate::mounts::mkdir_p(target) {
        return format!("WARNING: {cmd}: cannot create {d}: {}", errno(e));
    }
    match crate::mounts::mount(device, target, fstype, flags, &data) {
        Ok(()) => format!(
            "{fstype} on {target} ({})",
            crate::plan::options(flags, &data)
        ),
        Err(e) => format!("WARNING: {cmd} failed: {}", errno(e)),
    }
}

/// `ln -sfn`: a temporary link renamed over the old one.
fn atomic_symlink(target: &str, link: &str) -> Result<(), Errno> {
    let tmp = format!("{link}.nixboot-tmp");
    let _ = rustix::fs::unlink(tmp.as_str());
    rustix::fs::symlink(target, tmp.as_str())?;
    rustix::fs::rename(tmp.as_str(), link)
}

fn mount_etc(
    step: &'static str,
    new_root: &str,
    image: &str,
    basedir: &str,
    metadata: &str,
    target: &str,
) -> Result<String, Failure> {
    // The loop device's fd is held until erofs holds the device: with autoclear, the last
    // close of an unmounted loop device detaches it.
    let (loopdev, _held) = loop_attach(step, new_root, image)?;
    let ro = MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV;
    crate::mounts::mount_step(step, &loopdev, metadata, "erofs", ro, "")?;
    let data = format!("redirect_dir=on,metacopy=on,lowerdir={metadata}::{basedir}");
    crate::mounts::mount_step(step, "overlay", target, "overlay", ro, &data).map_err(|f| {
        f.check("the kernel log (overlayfs says why); overlay, erofs and loop in the initrd")
    })?;
    Ok(format!(
        "{image} on {loopdev} at {metadata}; overlay on {target} (ro,nodev,nosuid,{data})"
    ))
}

// ---- loop devices (linux/loop.h) ----------------------------------------------------

const LOOP_SET_FD: u32 = 0x4C00;
const LOOP_SET_STATUS64: u32 = 0x4C04;
const LOOP_CONFIGURE: u32 = 0x4C0A;
const LOOP_CTL_GET_FREE: u32 = 0x4C82;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// An ioctl whose argument is a pointer or an integer and whose result is the return value.
struct Raw {
    opcode: rustix::ioctl::Opcode,
    arg: *mut std::ffi::c_void,
}

// SAFETY: each use below passes the argument type its opcode expects (linux/loop.h).
unsafe impl rustix::ioctl::Ioctl for Raw {
    type Output = i32;
    const IS_MUTATING: bool = false;
    fn opcode(&self) -> rustix::ioctl::Opcode {
        self.opcode
    }
    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        self.arg
    }
    unsafe fn output_from_ptr(
        out: rustix::ioctl::IoctlOutput,
        _: *mut std::ffi::c_void,
    ) -> rustix::io::Result<i32> {
        Ok(out)
    }
}

fn ioctl(fd: impl AsFd, opcode: u32, arg: *mut std::ffi::c_void) -> Result<i32, Errno> {
    // SAFETY: see `Raw`; the pointers outlive the call.
    unsafe {
        rustix::ioctl::ioctl(
            fd,
            Raw {
                opcode: opcode as _,
                arg,
            },
        )
    }
}

/// Attaches `image` read-only (autoclear) to a free loop device; returns its path and an
/// open fd (closing it before something else holds the device detaches it).
fn loop_attach(
    step: &'static str,
    new_root: &str,
    image: &str,
) -> Result<(String, OwnedFd), Failure> {
    let tried = format!("LOOP_CTL_GET_FREE on {new_root}/dev/loop-control, LOOP_CONFIGURE (or LOOP_SET_FD + LOOP_SET_STATUS64) read-only with {image}");
    let fail = |what: String, e: Errno| {
        Failure::new(step, format!("{what}: {}", errno(e)))
            .tried(tried.clone())
            .check("is the loop driver in the kernel or the initrd (mkinitrd --module loop)?")
    };
    let open = |p: &str, flags: OFlags| rustix::fs::open(p, flags | OFlags::CLOEXEC, Mode::empty());
    let file = open(image, OFlags::RDONLY).map_err(|e| fail(format!("open {image}"), e))?;
    let ctl_path = format!("{new_root}/dev/loop-control");
    let ctl = open(&ctl_path, OFlags::RDWR).map_err(|e| fail(format!("open {ctl_path}"), e))?;
    // Another process may take the free device first: a few tries.
    let mut last = Errno::BUSY;
    for _ in 0..8 {
        let n = ioctl(&ctl, LOOP_CTL_GET_FREE, std::ptr::null_mut())
            .map_err(|e| fail("LOOP_CTL_GET_FREE".into(), e))?;
        let dev = format!("{new_root}/dev/loop{n}");
        let lo = open(&dev, OFlags::RDONLY).map_err(|e| fail(format!("open {dev}"), e))?;
        match configure(&lo, &file) {
            Ok(()) => return Ok((dev, lo)),
            Err(Errno::BUSY) => last = Errno::BUSY,
            Err(e) => return Err(fail(format!("attach {image} to {dev}"), e)),
        }
    }
    Err(fail("no free loop device after 8 tries".into(), last))
}

fn configure(lo: &OwnedFd, file: &OwnedFd) -> Result<(), Errno> {
    use rustix::fd::AsRawFd;
    let mut info = LoopInfo64 {
        device: 0,
        inode: 0,
        rdevice: 0,
        offset: 0,
        sizelimit: 0,
        number: 0,
        encrypt_type: 0,
        encrypt_key_size: 0,
        flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
        file_name: [0; 64],
        crypt_name: [0; 64],
        encrypt_key: [0; 32],
        init: [0; 2],
    };
    let mut cfg = LoopConfig {
        fd: file.as_raw_fd() as u32,
        block_size: 0,
        info,
        reserved: [0; 8],
    };
    match ioctl(lo, LOOP_CONFIGURE, (&mut cfg as *mut LoopConfig).cast()) {
        Ok(_) => return Ok(()),
        // Before Linux 5.8: the two-call way.
        Err(Errno::INVAL) | Err(Errno::NOTTY) => {}
        Err(e) => return Err(e),
    }
    ioctl(
        lo,
        LOOP_SET_FD,
        file.as_raw_fd() as usize as *mut std::ffi::c_void,
    )?;
    ioctl(lo, LOOP_SET_STATUS64, (&mut info as *mut LoopInfo64).cast()).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(json: &str) -> NixosInitV1 {
        let doc =
            format!(r#"{{"org.nixos.bootspec.v1":{{"init":"/x"}},"{NIXOS_INIT_V1}":{json}}}"#);
        BootJson::parse(doc.as_bytes())
            .unwrap()
            .nixos_init()
            .unwrap()
            .unwrap()
    }

    const FULL: &str = r#"{"firmware": "/nix/store/f-fw/lib/firmware",
        "modprobe_binary": "/nix/store/k-kmod/bin/modprobe",
        "nix_store_mount_opts": ["ro", "nosuid", "nodev"],
        "sh_binary": "/nix/store/b-bash/bin/sh", "env_binary": "",
        "etc_metadata_image": "/nix/store/m-etc-metadata.erofs", "etc_basedir": "/nix/store/e-etc"}"#;

    #[test]
    fn flavours_from_what_the_closure_holds() {
        let f = |s, p, e, v| Facts {
            init_is_script: s,
            has_prepare_root: p,
            has_nixos_init_ext: e,
            has_nixos_version: v,
        };
        // Every 26.05 toplevel has the extension: it never decides against (a) or (b).
        assert_eq!(detect(&f(true, false, true, true)), Flavour::Stage2Script);
        assert_eq!(detect(&f(false, true, true, true)), Flavour::PrepareRoot);
        assert_eq!(detect(&f(true, true, false, false)), Flavour::Stage2Script);
        assert_eq!(detect(&f(false, false, true, true)), Flavour::NixosInit);
        // nixos-init's verify_init_is_nixos: no nixos-version, no initialisation.
        assert_eq!(detect(&f(false, false, true, false)), Flavour::Other);
        assert_eq!(detect(&f(false, false, false, true)), Flavour::Other);
    }

    #[test]
    fn plan_checks_inputs_before_touching_the_root() {
        let a = plan(
            "/sysroot",
            "/nix/store/s-sys",
            &ext(FULL),
            "6.12.0-1-cloud-amd64",
        )
        .unwrap();
        let first_change = a
            .iter()
            .position(|x| matches!(x, Action::StoreOwnerMode { .. }))
            .unwrap();
        for (i, x) in a.iter().enumerate() {
            let check = matches!(
                x,
                Action::CheckErofs { .. }
                    | Action::CheckDir { .. }
                    | Action::RequireKernel { .. }
                    | Action::Warn(_)
            );
            assert_eq!(check, i < first_change, "{i}: {x:?}");
        }
        assert!(a.contains(&Action::CheckErofs {
            image: "/sysroot/nix/store/m-etc-metadata.erofs".into()
        }));
        assert!(a.contains(&Action::CheckDir {
            path: "/sysroot/nix/store/e-etc".into()
        }));
        assert!(
            matches!(a.last(), Some(Action::MountEtc { target, metadata, .. })
            if target == "/sysroot/etc" && metadata == "/sysroot/run/nixos-etc-metadata")
        );
    }

    #[test]
    fn plan_does_what_initrd_init_does() {
        let a = plan("/sysroot", "/nix/store/s-sys", &ext(FULL), "6.12.0").unwrap();
        for link in ["/sysroot/run/booted-system", "/sysroot/run/current-system"] {
            assert!(a.contains(&Action::Symlink {
                link: link.into(),
                target: "/nix/store/s-sys".into()
            }));
        }
        assert!(a.contains(&Action::StoreOwnerMode {
            store: "/sysroot/nix/store".into(),
            mode: 0o1775
        }));
        assert!(a.contains(&Action::RemountStore {
            store: "/sysroot/nix/store".into(),
            wanted: vec!["ro".into(), "nosuid".into(), "nodev".into()]
        }));
        assert!(a.contains(&Action::WriteIfExists {
            path: "/sysroot/proc/sys/kernel/modprobe".into(),
            value: "/nix/store/k-kmod/bin/modprobe".into()
        }));
        assert!(a.contains(&Action::WriteIfExists {
            path: "/sysroot/sys/module/firmware_class/parameters/path".into(),
            value: "/nix/store/f-fw/lib/firmware".into()
        }));
        assert!(a.contains(&Action::MkdirSymlink {
            dir: "/sysroot/bin".into(),
            link: "/sysroot/bin/sh".into(),
            target: "/nix/store/b-bash/bin/sh".into()
        }));
        // Empty env_binary: the link goes, /usr/bin stays.
        assert!(a.contains(&Action::RemoveLink {
            dir: "/sysroot/usr/bin".into(),
            link: "/sysroot/usr/bin/env".into()
        }));
    }

    #[test]
    fn unhandled_fields_are_named() {
        let e = ext(r#"{"nix_store_mount_opts": [], "new_knob": 1,
            "etc_confext": {"name": "nixos", "image": "/nix/store/c.raw", "targets": "/nix/store/t", "flags": []}}"#);
        let a = plan("/sysroot", "/nix/store/s", &e, "6.12").unwrap();
        let warns: Vec<&String> = a
            .iter()
            .filter_map(|x| match x {
                Action::Warn(w) => Some(w),
                _ => None,
            })
            .collect();
        assert!(
            warns
                .iter()
                .any(|w| w.contains("org.nixos.nixos-init.v1.new_knob")),
            "{warns:?}"
        );
        assert!(
            warns
                .iter()
                .any(|w| w.contains("etc_confext") && w.contains("/nix/store/c.raw")),
            "{warns:?}"
        );
        assert!(
            warns.iter().any(|w| w.contains("no etc_metadata_image")),
            "{warns:?}"
        );
        assert!(!a.iter().any(|x| matches!(x, Action::MountEtc { .. })));
    }

    #[test]
    fn special_filesystems_are_planned() {
        let e = ext(r#"{"nix_store_mount_opts": [], "special_filesystems": [
            {"mountpoint": "/run/keys", "device": "ramfs", "fstype": "ramfs", "options": ["nosuid", "nodev", "mode=750"]}]}"#);
        let a = plan("/sysroot", "/nix/store/s", &e, "6.12").unwrap();
        assert!(a.contains(&Action::MountSpecial {
            device: "ramfs".into(),
            target: "/sysroot/run/keys".into(),
            fstype: "ramfs".into(),
            options: "nosuid,nodev,mode=750".into()
        }));
    }

    #[test]
    fn half_an_etc_overlay_fails_at_its_step() {
        let e = ext(r#"{"nix_store_mount_opts": [], "etc_metadata_image": "/nix/store/m.erofs"}"#);
        let f = plan("/sysroot", "/nix/store/s", &e, "6.12").unwrap_err();
        assert_eq!(f.step, STEP_ETC_BASEDIR);
        assert!(f.error.contains("etc_basedir is missing"), "{}", f.error);
        let e = ext(r#"{"nix_store_mount_opts": [], "etc_basedir": "/nix/store/e"}"#);
        assert_eq!(
            plan("/sysroot", "/nix/store/s", &e, "6.12")
                .unwrap_err()
                .step,
            STEP_ETC_IMAGE
        );
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.1.0-31-cloud-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("6.12.117+deb13-cloud-amd64"), Some((6, 12)));
        assert_eq!(kernel_version("junk"), None);
        assert!(require_kernel("x", DATA_ONLY_LAYERS, "6.1.0-31")
            .unwrap_err()
            .error
            .contains("6.5"));
        assert!(require_kernel("x", DATA_ONLY_LAYERS, "6.5.0").is_ok());
        assert!(require_kernel("x", DATA_ONLY_LAYERS, "10.0").is_ok());
    }

    #[test]
    fn store_options() {
        let info = "22 1 0:21 / / rw - tmpfs none rw\n\
                    30 22 0:40 / /sysroot/nix/store ro,relatime - virtiofs store rw\n";
        assert_eq!(
            mount_options(info, "/sysroot/nix/store"),
            Some("ro,relatime")
        );
        assert_eq!(mount_options(info, "/nix/store"), None);
        let wanted: Vec<String> = ["ro", "nosuid", "nodev"].map(String::from).to_vec();
        let missing = missing_options("ro,relatime", &wanted);
        assert_eq!(missing, ["nosuid", "nodev"]);
        let (flags, unknown) = remount_flags("ro,relatime", &missing);
        assert_eq!(
            flags,
            MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV
        );
        assert!(unknown.is_empty());
        let (_, unknown) = remount_flags("rw", &["x-weird".to_string()]);
        assert_eq!(unknown, ["x-weird"]);
    }

    #[test]
    fn erofs_magic() {
        assert!(is_erofs(&[0xE2, 0xE1, 0xF5, 0xE0]));
        assert!(!is_erofs(b"hsqs"));
        assert!(!is_erofs(&[0xE2]));
    }

    #[test]
    fn loop_structs_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    /// The syscall layer on the host's kernel: loop ioctls, erofs and the overlay with a
    /// data-only layer, in a private mount namespace (the test re-runs itself under
    /// `unshare -m`). The boot tests' kernel (6.1) refuses before reaching this code.
    #[test]
    #[ignore = "needs root, /dev/loop-control, mkfs.erofs and Linux >= 6.5 with loop, erofs, overlay; run with --ignored"]
    fn etc_overlay_on_this_kernel() {
        const MARK: &str = "NIXBOOT_TEST_IN_MOUNT_NS";
        if std::env::var_os(MARK).is_none() {
            let st = std::process::Command::new("unshare")
                .args(["-m", "--propagation", "private"])
                .arg(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "nixos::nixos_init::tests::etc_overlay_on_this_kernel",
                ])
                .args(["--ignored", "--test-threads=1", "--nocapture"])
                .env(MARK, "1")
                .status()
                .unwrap();
            assert!(st.success());
            return;
        }
        // Never a bind mount of /dev under the temporary directory: its removal would
        // delete the host's device links. The loop devices are the host's own /dev ("").
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_str().unwrap();
        for d in ["tree", "nix/store/b-etc", "run/nixos-etc-metadata", "etc"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        std::fs::write(t.path().join("tree/hello"), "from the erofs image\n").unwrap();
        let image = format!("{root}/nix/store/m-etc.erofs");
        let st = std::process::Command::new("mkfs.erofs")
            .args(["--quiet", &image, &format!("{root}/tree")])
            .status()
            .unwrap();
        assert!(st.success());
        assert!(check_erofs("t", &image).is_ok());
        let (meta, etc) = (
            format!("{root}/run/nixos-etc-metadata"),
            format!("{root}/etc"),
        );
        let msg = mount_etc(
            "t",
            "",
            &image,
            &format!("{root}/nix/store/b-etc"),
            &meta,
            &etc,
        )
        .unwrap_or_else(|f| panic!("{f:?}"));
        let hello = std::fs::read_to_string(t.path().join("etc/hello"));
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let write = std::fs::write(t.path().join("etc/x"), "x");
        // Unmounted before anything can fail and the directory is removed.
        for m in [&etc, &meta] {
            rustix::mount::unmount(m.as_str(), rustix::mount::UnmountFlags::DETACH).unwrap();
        }
        assert_eq!(hello.unwrap(), "from the erofs image\n", "{msg}");
        assert_eq!(mount_options(&info, &etc), Some("ro,nosuid,nodev,relatime"));
        assert!(write.is_err(), "/etc is read-only");
    }
}
