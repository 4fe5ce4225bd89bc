//! A NixOS-shaped closure made of real parts no one here wrote, for the boot tests of a real
//! stage 2 (`tests/real_systemd.rs`): Debian 12's systemd 252 (a debootstrap'd tree from
//! `.ci/setup-real-parts`) placed in a fake /nix/store as one store path, its PID 1 binary
//! and that binary's libraries patched with patchelf (ELF interpreter and RUNPATH into the
//! store, as Nix builds them), Debian's static bash and busybox as the scripts' tools, and
//! one toplevel per closure flavour:
//!
//! - [`Flavour::Scripted`]: `init` is a stage-2 script modelled on nixpkgs'
//!   `stage-2-init.sh` (process substitution for its kernel-log copy, as upstream);
//! - [`Flavour::PrepareRoot`]: `init` is a copy of systemd, `prepare-root` the same script;
//! - [`Flavour::NixosInit`]: `init` is a copy of systemd, no `prepare-root`, `boot.json`
//!   carries `org.nixos.nixos-init.v1` with a real erofs metadata image (composefs-style:
//!   overlay redirect + metacopy xattrs) over an `etc_basedir`. Nothing runs activation before
//!   systemd here, so the image's `/etc/systemd/system` holds every unit and an early unit
//!   (ordered before every service and mount by top-level drop-ins) links Debian's
//!   compiled-in paths (/usr, /bin, /lib64, ...) into its store path.
//!
//! Every toplevel's `multi-user.target` pulls in a report unit that prints one line starting
//! with [`REPORT_MARKER`] on the console, then powers off; [`Report`] parses it.
//!
//! The store is built once per content (every generated file and the Debian tree's path go
//! into its name) under a cache directory, into a `.tmp` directory then renamed, so a stale
//! or half-built store is never used.

use crate::artifacts::fake_store_name;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Starts the report unit's console line.
pub const REPORT_MARKER: &str = "nixboot-real-systemd:";
/// Bumped when the builder's output changes in a way the generated texts do not show.
const BUILDER_REVISION: &str = "10";
/// Debian's multiarch library directories, relative to the root.
const LIB_DIRS: &[&str] = &[
    "usr/lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu/systemd",
    "usr/lib/systemd",
];
/// Files NixOS's activation writes as real files (users and groups), not links.
const COPIED_ETC: &[&str] = &["passwd", "group", "shadow", "gshadow", "subuid", "subgid"];
/// Unit types systemd will not load through a symlink (only services, sockets, targets ...
/// may be aliased).
const NO_SYMLINK_UNITS: &[&str] = &[
    ".mount",
    ".automount",
    ".slice",
    ".swap",
    ".scope",
    ".device",
];
/// Busybox applets the scripts use (besides bash's builtins).
const APPLETS: &[&str] = &[
    "awk",
    "cat",
    "chmod",
    "chown",
    "cp",
    "cut",
    "dirname",
    "find",
    "grep",
    "head",
    "ln",
    "ls",
    "mkdir",
    "mount",
    "mountpoint",
    "mv",
    "readlink",
    "rm",
    "sed",
    "sleep",
    "tee",
    "touch",
    "tr",
    "uname",
];

/// The closure's shape, as the init must tell them apart (docs: boot-contracts.md 5, 5b).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Flavour {
    /// `init` is the stage-2 script (NixOS without the systemd initrd).
    Scripted,
    /// `init` is systemd, `prepare-root` the stage-2 script (the systemd initrd).
    PrepareRoot,
    /// `init` is systemd, no `prepare-root`; `boot.json` has `org.nixos.nixos-init.v1`.
    NixosInit,
}

impl Flavour {
    pub const ALL: [Flavour; 3] = [Flavour::Scripted, Flavour::PrepareRoot, Flavour::NixosInit];

    pub fn name(self) -> &'static str {
        match self {
            Flavour::Scripted => "scripted",
            Flavour::PrepareRoot => "prepare-root",
            Flavour::NixosInit => "nixos-init",
        }
    }
}

/// The host's real parts: the Debian tree and the static tools.
#[derive(Debug, Clone)]
pub struct RealParts {
    /// A debootstrap'd Debian 12 with systemd (`NIXBOOT_DEBIAN_ROOT`).
    pub debian_root: PathBuf,
    /// Debian's bash-static.
    pub bash_static: PathBuf,
    /// Debian's busybox-static.
    pub busybox: PathBuf,
}

impl RealParts {
    /// From `.ci/setup-real-parts`'s `NIXBOOT_DEBIAN_ROOT`, and the static tools and
    /// `patchelf`/`mkfs.erofs` it installs.
    pub fn from_env() -> Result<RealParts, String> {
        let root = std::env::var_os("NIXBOOT_DEBIAN_ROOT")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .ok_or("NIXBOOT_DEBIAN_ROOT is not set (eval \"$(bash .ci/setup)\")")?;
        if !root.join("usr/lib/systemd/systemd").is_file() {
            return Err(format!(
                "NIXBOOT_DEBIAN_ROOT={} has no usr/lib/systemd/systemd",
                root.display()
            ));
        }
        let parts = RealParts {
            debian_root: root,
            bash_static: PathBuf::from("/bin/bash-static"),
            busybox: PathBuf::from("/bin/busybox"),
        };
        for (p, pkg) in [
            (&parts.bash_static, "bash-static"),
            (&parts.busybox, "busybox-static"),
        ] {
            if !p.is_file() {
                return Err(format!(
                    "{} is missing (apt-get install {pkg})",
                    p.display()
                ));
            }
        }
        for tool in ["patchelf", "mkfs.erofs"] {
            let found = std::env::var_os("PATH")
                .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()));
            if !found {
                return Err(format!("{tool} is not installed (.ci/setup-real-parts)"));
            }
        }
        Ok(parts)
    }

    /// systemd's upstream version as dpkg-query records it in the tree (`252.39`).
    fn systemd_version(&self) -> Result<String, String> {
        let status = std::fs::read_to_string(self.debian_root.join("var/lib/dpkg/status"))
            .map_err(|e| format!("reading the Debian tree's dpkg status: {e}"))?;
        let mut in_systemd = false;
        for line in status.lines() {
            if let Some(p) = line.strip_prefix("Package: ") {
                in_systemd = p == "systemd";
            } else if let (true, Some(v)) = (in_systemd, line.strip_prefix("Version: ")) {
                return Ok(v.split(['-', '~', '+']).next().unwrap_or(v).to_string());
            }
        }
        Err("the Debian tree has no systemd package".into())
    }
}

/// The store paths' names (`<hash>-name`), stable for one Debian tree.
#[derive(Debug, Clone)]
struct Names {
    debian: String,
    bash: String,
    busybox: String,
    tools: String,
    etc: String,
    basedir: String,
    image: String,
    stand_in: String,
    toplevels: BTreeMap<Flavour, String>,
}

impl Names {
    fn new(parts: &RealParts, systemd_version: &str) -> Names {
        let seed = format!("{}|{BUILDER_REVISION}", parts.debian_root.display());
        let n = |name: &str| fake_store_name(&format!("{seed}|{name}"), name);
        Names {
            debian: n(&format!("debian-systemd-{systemd_version}")),
            bash: n("bash-static"),
            busybox: n("busybox-static"),
            tools: n("nixboot-test-tools"),
            etc: n("etc"),
            basedir: n("etc-basedir"),
            image: n("etc-metadata.erofs"),
            stand_in: n("initrd-init-stand-in"),
            toplevels: Flavour::ALL
                .iter()
                .map(|&f| (f, n(&format!("nixos-system-test-{}", f.name()))))
                .collect(),
        }
    }
}

fn store(name: &str) -> String {
    format!("/nix/store/{name}")
}

/// A fake /nix/store holding the three toplevels.
#[derive(Debug, Clone)]
pub struct NixosStore {
    /// The host directory to share as /nix/store (read-only).
    pub dir: PathBuf,
    /// The guest path of the Debian store path.
    pub debian: String,
    stand_in: String,
    toplevels: BTreeMap<Flavour, String>,
}

impl NixosStore {
    /// The guest path of one flavour's toplevel.
    pub fn toplevel(&self, f: Flavour) -> String {
        store(&self.toplevels[&f])
    }

    /// The guest path to boot with `init=`.
    pub fn init(&self, f: Flavour) -> String {
        format!("{}/init", self.toplevel(f))
    }

    /// A script that does what nixos-init's `initrd-init` does before the switch (the etc
    /// overlay, the /run links, /usr/bin/env and /bin/sh), then execs the nixos-init
    /// flavour's systemd: proves that closure bootable apart from any init's support for it.
    pub fn stand_in_init(&self) -> String {
        format!("{}/init", store(&self.stand_in))
    }
}

/// Builds the store under `cache` (or finds it built), as described in the module's docs.
pub fn build(parts: &RealParts, cache: &Path) -> Result<NixosStore, String> {
    let names = Names::new(parts, &parts.systemd_version()?);
    let texts = Texts::new(&names);
    let key = fake_store_name(&format!("{names:?}{texts:?}"), "store");
    let dir = cache.join("nixos-store").join(&key[..32]);
    let result = NixosStore {
        dir: dir.join("store"),
        debian: store(&names.debian),
        stand_in: names.stand_in.clone(),
        toplevels: names.toplevels.clone(),
    };
    if dir.join(".complete").exists() {
        return Ok(result);
    }
    let tmp = cache
        .join("nixos-store")
        .join(format!("{}.tmp-{}", &key[..32], std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let built = write_store(parts, &names, &texts, &tmp.join("store"))
        .and_then(|()| std::fs::write(tmp.join(".complete"), "").map_err(|e| e.to_string()));
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(format!(
            "building the NixOS-shaped store in {}: {e}",
            tmp.display()
        ));
    }
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        // Another test process built it at the same time: use theirs.
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join(".complete").exists() {
            return Err(format!(
                "renaming {} to {}: {e}",
                tmp.display(),
                dir.display()
            ));
        }
    }
    Ok(result)
}

fn write_store(parts: &RealParts, names: &Names, texts: &Texts, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let debian = dir.join(&names.debian);
    link_tree(&parts.debian_root, &debian, true)?;
    patch_systemd(&debian, &store(&names.debian))?;

    let bin = |name: &str| dir.join(name).join("bin");
    mkdirs(&bin(&names.bash))?;
    copy(&parts.bash_static, &bin(&names.bash).join("bash"))?;
    sym("bash", &bin(&names.bash).join("sh"))?;
    mkdirs(&bin(&names.busybox))?;
    copy(&parts.busybox, &bin(&names.busybox).join("busybox"))?;
    for a in APPLETS {
        sym("busybox", &bin(&names.busybox).join(a))?;
    }
    mkdirs(&bin(&names.tools))?;
    for (name, text) in [
        ("debian-paths", &texts.debian_paths),
        ("nixboot-report", &texts.report),
    ] {
        write_exec(&bin(&names.tools).join(name), text)?;
    }

    let etc = dir.join(&names.etc).join("etc");
    write_etc(&parts.debian_root.join("etc"), &etc, texts)?;
    let basedir = dir.join(&names.basedir);
    mkdirs(&basedir)?;
    for f in COPIED_ETC.iter().chain(&["machine-id"]) {
        if let Ok(m) = std::fs::symlink_metadata(etc.join(f)) {
            if m.is_file() {
                copy(&etc.join(f), &basedir.join(f))?;
            }
        }
    }
    let image_tree = dir.join(".etc-image-tree");
    write_image_tree(&etc, &image_tree, names, &parts.debian_root)?;
    mkfs_erofs(&image_tree, &dir.join(&names.image))?;
    std::fs::remove_dir_all(&image_tree).map_err(|e| e.to_string())?;

    for (&f, name) in &names.toplevels {
        write_toplevel(&dir.join(name), f, names, texts, &debian)?;
    }
    mkdirs(&dir.join(&names.stand_in))?;
    write_exec(&dir.join(&names.stand_in).join("init"), &texts.stand_in)
}

/// Mirrors `src` into `dst` with hard links (the cache and the store share a file system;
/// copies otherwise). At the top, the API file systems' directories stay empty.
fn link_tree(src: &Path, dst: &Path, top: bool) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(src).map_err(|e| format!("{}: {e}", src.display()))?;
    std::fs::create_dir(dst).map_err(|e| format!("{}: {e}", dst.display()))?;
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .map_err(|e| format!("{}: {e}", src.display()))?
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let (from, to) = (e.path(), dst.join(&name));
        let m = std::fs::symlink_metadata(&from).map_err(|e| e.to_string())?;
        if m.file_type().is_symlink() {
            let target = std::fs::read_link(&from).map_err(|e| e.to_string())?;
            sym(&target, &to)?;
        } else if m.is_dir() {
            if top
                && ["dev", "proc", "sys", "run", "tmp", "debootstrap"]
                    .contains(&name.to_str().unwrap_or(""))
            {
                std::fs::create_dir(&to).map_err(|e| e.to_string())?;
                continue;
            }
            link_tree(&from, &to, false)?;
        } else if m.is_file() && std::fs::hard_link(&from, &to).is_err() {
            copy(&from, &to)?;
        }
        // Device nodes, fifos and sockets stay out of the store, as Nix keeps them out.
    }
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(|e| e.to_string())
}

/// Points systemd's ELF interpreter and the RUNPATH of it and of every library it needs
/// (transitively) into the store path, as Nix builds binaries: PID 1 then starts before
/// anything links /lib64 or /usr (the nixos-init flavour). Patched files are new copies:
/// the tree's hard links to the cache must not change.
fn patch_systemd(debian: &Path, guest: &str) -> Result<(), String> {
    let runpath = LIB_DIRS
        .iter()
        .filter(|d| debian.join(d).is_dir())
        .map(|d| format!("{guest}/{d}"))
        .collect::<Vec<_>>()
        .join(":");
    let exe = debian.join("usr/lib/systemd/systemd");
    let mut todo = vec![exe.clone()];
    let mut done: Vec<PathBuf> = Vec::new();
    while let Some(file) = todo.pop() {
        if done.contains(&file) {
            continue;
        }
        let needed = run(Command::new("patchelf").arg("--print-needed").arg(&file))?;
        for lib in needed.lines().filter(|l| !l.starts_with("ld-linux")) {
            let found = LIB_DIRS
                .iter()
                .map(|d| debian.join(d).join(lib))
                .find(|p| p.exists())
                .ok_or_else(|| format!("{} needs {lib}, not in {LIB_DIRS:?}", file.display()))?;
            todo.push(std::fs::canonicalize(&found).map_err(|e| e.to_string())?);
        }
        let tmp = file.with_extension("patchelf-tmp");
        copy(&file, &tmp)?;
        let mut cmd = Command::new("patchelf");
        cmd.arg("--set-rpath").arg(&runpath);
        if file == exe {
            cmd.arg("--set-interpreter")
                // The loader itself: Debian's /usr/lib64 entry is an absolute link to /lib/...
                .arg(format!(
                    "{guest}/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
                ));
        }
        run(cmd.arg(&tmp))?;
        std::fs::rename(&tmp, &file).map_err(|e| e.to_string())?;
        done.push(file);
    }
    Ok(())
}

/// The etc store path: Debian's /etc, with relative links that leave /etc made absolute (they
/// must resolve from the booted root, not from the store), NixOS-like changes and the test's
/// units.
fn write_etc(debian_etc: &Path, etc: &Path, texts: &Texts) -> Result<(), String> {
    mkdirs(etc.parent().unwrap_or(etc))?;
    link_tree(debian_etc, etc, false)?;
    absolutize_links(etc, Path::new("/etc"))?;
    // .pwd.lock: stage 2 removes the user database's locks; a link into the read-only store
    // would make every user database writer (systemd-sysusers) fail to lock.
    for gone in ["machine-id", "hostname", "fstab", "mtab", ".pwd.lock"] {
        let _ = std::fs::remove_file(etc.join(gone));
    }
    write(&etc.join("hostname"), "nixboot-real\n")?;
    write(
        &etc.join("fstab"),
        "# the init mounts everything (imageless)\n",
    )?;
    write(&etc.join("NIXOS"), "")?;
    let units = etc.join("systemd/system");
    write(&units.join("nixboot-report.service"), &texts.report_unit)?;
    mkdirs(&units.join("sysinit.target.wants"))?;
    sym(
        "/etc/systemd/system/nixboot-report.service",
        &units.join("sysinit.target.wants/nixboot-report.service"),
    )
}

/// Rewrites relative symlinks under `dir` (which the guest sees as `guest`) that climb out
/// of it into absolute ones.
fn absolutize_links(dir: &Path, guest: &Path) -> Result<(), String> {
    for e in std::fs::read_dir(dir).map_err(|e| e.to_string())?.flatten() {
        let (p, g) = (e.path(), guest.join(e.file_name()));
        let m = std::fs::symlink_metadata(&p).map_err(|e| e.to_string())?;
        if m.is_dir() {
            absolutize_links(&p, &g)?;
        } else if m.file_type().is_symlink() {
            let t = std::fs::read_link(&p).map_err(|e| e.to_string())?;
            if t.is_relative() && t.starts_with("..") {
                let abs = normalize(&guest.join(&t));
                std::fs::remove_file(&p).map_err(|e| e.to_string())?;
                sym(&abs, &p)?;
            }
        }
    }
    Ok(())
}

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// The tree mkfs.erofs turns into the composefs-style metadata image: every leaf of the etc
/// store path a symlink into it (or its own link target), the copied files empty-bodied with
/// the overlay's redirect + metacopy xattrs pointing into `etc_basedir`, as nixpkgs'
/// build-composefs-dump.py describes them; plus every Debian unit under
/// /etc/systemd/system (units must be found with no /usr: see the module docs) and the
/// drop-ins ordering everything after the unit that links Debian's paths.
fn write_image_tree(
    etc: &Path,
    tree: &Path,
    names: &Names,
    debian_root: &Path,
) -> Result<(), String> {
    mkdirs(tree)?;
    image_entries(
        etc,
        tree,
        &store(&names.etc),
        &store(&names.debian),
        Path::new("etc"),
    )?;
    let units = tree.join("systemd/system");
    let debian_units = debian_root.join("usr/lib/systemd/system");
    link_units(
        &debian_units,
        &units,
        &format!("{}/usr/lib/systemd/system", store(&names.debian)),
    )?;
    let paths_unit = "nixboot-debian-paths.service";
    write(
        &units.join(paths_unit),
        &format!(
            "[Unit]\nDescription=Link Debian's compiled-in paths into its store path\n\
             DefaultDependencies=no\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\n\
             ExecStart={}/bin/debian-paths\n",
            store(&names.tools)
        ),
    )?;
    for kind in ["service.d", "mount.d"] {
        mkdirs(&units.join(kind))?;
        write(
            &units.join(kind).join("10-nixboot-debian-paths.conf"),
            &format!("[Unit]\nWants={paths_unit}\nAfter={paths_unit}\n"),
        )?;
    }
    let machine_id = tree.join("machine-id");
    let _ = std::fs::remove_file(&machine_id);
    write(&machine_id, "")?;
    set_mode(&machine_id, 0o444)?;
    for f in COPIED_ETC {
        let src = etc.join(f);
        let Ok(m) = std::fs::metadata(&src) else {
            continue;
        };
        let dst = tree.join(f);
        let _ = std::fs::remove_file(&dst);
        let file = std::fs::File::create(&dst).map_err(|e| e.to_string())?;
        file.set_len(m.len()).map_err(|e| e.to_string())?;
        set_mode(&dst, m.mode() & 0o7777)?;
        std::os::unix::fs::chown(&dst, Some(m.uid()), Some(m.gid())).map_err(|e| e.to_string())?;
        xattr(&dst, "trusted.overlay.redirect", format!("/{f}").as_bytes())?;
        xattr(&dst, "trusted.overlay.metacopy", b"")?;
    }
    Ok(())
}

/// A link to Debian's units leads into its store path: systemd reads the unit directories
/// before anything links /lib (nothing prepares the root before systemd in this flavour).
fn image_link(target: &Path, debian: &str) -> PathBuf {
    for prefix in ["/lib/systemd/", "/usr/lib/systemd/"] {
        if let Ok(rest) = target.strip_prefix(prefix) {
            return Path::new(debian).join("usr/lib/systemd").join(rest);
        }
    }
    target.to_path_buf()
}

fn image_entries(
    src: &Path,
    dst: &Path,
    guest_store: &str,
    debian: &str,
    rel: &Path,
) -> Result<(), String> {
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .map_err(|e| e.to_string())?
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let (p, r) = (e.path(), rel.join(e.file_name()));
        let to = dst.join(e.file_name());
        let m = std::fs::symlink_metadata(&p).map_err(|e| e.to_string())?;
        if m.is_dir() {
            mkdirs(&to)?;
            image_entries(&p, &to, guest_store, debian, &r)?;
        } else if m.file_type().is_symlink() {
            sym(
                image_link(&std::fs::read_link(&p).map_err(|e| e.to_string())?, debian),
                &to,
            )?;
        } else {
            sym(Path::new(guest_store).join(&r), &to)?;
        }
    }
    Ok(())
}

/// Links every unit of Debian's unit directory (and its .wants/.requires directories) under
/// `dst`, where nothing of the same name is already.
fn link_units(src: &Path, dst: &Path, guest: &str) -> Result<(), String> {
    mkdirs(dst)?;
    for e in std::fs::read_dir(src).map_err(|e| e.to_string())?.flatten() {
        let to = dst.join(e.file_name());
        let g = format!("{guest}/{}", e.file_name().to_string_lossy());
        if std::fs::symlink_metadata(&to).is_ok() && !to.is_dir() {
            continue;
        }
        let m = std::fs::symlink_metadata(e.path()).map_err(|e| e.to_string())?;
        let name = e.file_name().to_string_lossy().into_owned();
        if m.is_dir() {
            link_units(&e.path(), &to, &g)?;
        } else if m.is_file() && NO_SYMLINK_UNITS.iter().any(|t| name.ends_with(t)) {
            // systemd refuses these types as symlinks ("symlinks are not allowed for units
            // of this type"): the image carries their text.
            copy(&e.path(), &to)?;
        } else {
            sym(&g, &to)?;
        }
    }
    Ok(())
}

fn mkfs_erofs(tree: &Path, image: &Path) -> Result<(), String> {
    // Fixed timestamps and UUID: the same tree gives the same image.
    run(Command::new("mkfs.erofs")
        .arg("-T0")
        .arg("-U")
        .arg("6e697862-6f6f-7465-7463-000000000001")
        .arg("--quiet")
        .arg(image)
        .arg(tree))
    .map(drop)
}

fn write_toplevel(
    dir: &Path,
    f: Flavour,
    names: &Names,
    texts: &Texts,
    debian: &Path,
) -> Result<(), String> {
    mkdirs(dir)?;
    let systemd = debian.join("usr/lib/systemd/systemd");
    match f {
        Flavour::Scripted => write_exec(&dir.join("init"), &texts.stage2[&f])?,
        Flavour::PrepareRoot => {
            copy(&systemd, &dir.join("init"))?;
            write_exec(&dir.join("prepare-root"), &texts.stage2[&f])?;
        }
        Flavour::NixosInit => copy(&systemd, &dir.join("init"))?,
    }
    write_exec(&dir.join("activate"), &texts.activate[&f])?;
    write(&dir.join("boot.json"), &texts.boot_json[&f])?;
    write(&dir.join("nixos-version"), "26.05.nixboot-real-systemd\n")?;
    write(&dir.join("kernel-params"), "")?;
    sym(store(&names.debian), &dir.join("systemd"))?;
    sym(format!("{}/etc", store(&names.etc)), &dir.join("etc"))?;
    sym(format!("{}/usr", store(&names.debian)), &dir.join("sw"))
}

/// Every generated text: these (with the names) make the store's cache key.
#[derive(Debug)]
struct Texts {
    stage2: BTreeMap<Flavour, String>,
    activate: BTreeMap<Flavour, String>,
    boot_json: BTreeMap<Flavour, String>,
    debian_paths: String,
    stand_in: String,
    report: String,
    report_unit: String,
}

impl Texts {
    fn new(n: &Names) -> Texts {
        let per = |g: &dyn Fn(Flavour) -> String| Flavour::ALL.iter().map(|&f| (f, g(f))).collect();
        Texts {
            stage2: per(&|f| stage2_script(n, f)),
            activate: per(&|f| activate_script(n, f)),
            boot_json: per(&|f| boot_json(n, f)),
            debian_paths: debian_paths_script(n),
            stand_in: stand_in_script(n),
            report: report_script(n),
            report_unit: format!(
                "[Unit]\nDescription=nixboot boot-test report\nDefaultDependencies=no\n\n\
                 [Service]\nType=simple\nExecStart={}/bin/nixboot-report\n\
                 StandardOutput=journal\n",
                store(&n.tools)
            ),
        }
    }
}

fn shebang(n: &Names) -> String {
    format!("#!{}/bin/bash\n", store(&n.bash))
}

/// Modelled on nixpkgs' nixos/modules/system/boot/stage-2-init.sh (master): the same steps
/// in the same order, its kernel-log copy through process substitution exactly as upstream
/// (which needs /dev/fd from stage 1), busybox for the tools NixOS takes from its store.
fn stage2_script(n: &Names, f: Flavour) -> String {
    let config = store(&n.toplevels[&f]);
    let path = format!("{}/bin:{}/bin", store(&n.busybox), store(&n.bash));
    format!(
        r#"{shebang}
systemConfig={config}

export HOME=/root PATH="{path}"

if [ "${{IN_NIXOS_SYSTEMD_STAGE1:-}}" != true ]; then
    echo
    echo -e "\e[1;32m<<< NixOS Stage 2 >>>\e[0m"
    echo
    if [ -z "${{container:-}}" ]; then
        mount -n -o remount,rw none /
    fi
fi

# Stage 1 mounts the API file systems; without one, mount them here.
if [ ! -e /proc/1 ]; then
    specialMount() {{
        if [ "${{IN_NIXOS_SYSTEMD_STAGE1:-}}" = true ] && [ "$2" = /run ]; then return; fi
        mkdir -m 0755 -p "$2"
        mount -n -t "$4" -o "$3" "$1" "$2"
    }}
    specialMount proc /proc nosuid,noexec,nodev proc
    specialMount sysfs /sys nosuid,noexec,nodev sysfs
    specialMount devtmpfs /dev nosuid,strictatime,mode=755 devtmpfs
    specialMount devpts /dev/pts nosuid,noexec,mode=620,ptmxmode=0666,gid=3 devpts
    specialMount tmpfs /dev/shm nosuid,nodev,strictatime,mode=1777 tmpfs
    specialMount tmpfs /run nosuid,nodev,strictatime,mode=755 tmpfs
fi

if [ "${{IN_NIXOS_SYSTEMD_STAGE1:-}}" = true ] || [ ! -c /dev/kmsg ] ; then
    echo "booting system configuration ${{systemConfig}}"
else
    echo "booting system configuration $systemConfig" > /dev/kmsg
fi

# The store: owner and mode as NixOS sets them (failing quietly on a read-only store), and
# every option of boot.nixStoreMountOpts the top mount lacks added by a bind remount.
chown -f 0:30000 /nix/store
chmod -f 1775 /nix/store
missing_opts=()
current_opts="$(awk '$5 == "/nix/store" {{ o = $6 }} END {{ print o }}' /proc/self/mountinfo)"
for mount_opt in ro nosuid nodev; do
    if ! [[ "$current_opts" =~ (^|,)"$mount_opt"(,|$) ]]; then
        missing_opts+=("$mount_opt")
    fi
done
if [[ ${{#missing_opts[@]}} != 0 ]]; then
    mount --bind /nix/store /nix/store
    mount -o remount,"$(IFS=, ; echo "${{missing_opts[*]}}")",bind /nix/store
fi

if [ "${{IN_NIXOS_SYSTEMD_STAGE1:-}}" != true ]; then
    # Log the script output to /dev/kmsg or /run/log/stage-2-init.log.
    exec {{logOutFd}}>&1 {{logErrFd}}>&2
    if test -w /dev/kmsg; then
        exec > >(tee -i /proc/self/fd/"$logOutFd" | while read -r line; do
            if test -n "$line"; then
                echo "<7>stage-2-init: $line" > /dev/kmsg
            fi
        done) 2>&1
    else
        mkdir -p /run/log
        exec > >(tee -i /run/log/stage-2-init.log) 2>&1
    fi
fi

# (busybox has no `install`: mkdir -m does the same here)
mkdir -m 0755 -p /etc
if [ ! -h "/etc/nixos" ]; then
    mkdir -m 0755 -p /etc/nixos
fi
mkdir -m 01777 -p /tmp

echo "running activation script..."
$systemConfig/activate

ln -sfn "$systemConfig" /run/booted-system

if [ "${{IN_NIXOS_SYSTEMD_STAGE1:-}}" != true ]; then
    exec 1>&$logOutFd 2>&$logErrFd
    exec {{logOutFd}}>&- {{logErrFd}}>&-

    echo "starting systemd..."
    exec /run/current-system/systemd/lib/systemd/systemd "$@"
fi
"#,
        shebang = shebang(n).trim_end(),
    )
}

/// What NixOS's activation script does at boot, for this closure: Debian's compiled-in paths
/// linked into its store path (NixOS's own `usrbinenv`/`binsh` snippets, widened), /etc as
/// links through /etc/static (setup-etc.pl), users' files as real files (update-users-groups),
/// a machine-id (so systemd does not treat the boot as a first boot), /run/current-system.
fn activate_script(n: &Names, f: Flavour) -> String {
    let config = store(&n.toplevels[&f]);
    let mut s = shebang(n);
    let _ = write!(
        s,
        r#"# Activation of {config}
systemConfig={config}
export PATH={busybox}/bin
set -e

{tools}/bin/debian-paths

echo "setting up /etc..."
mkdir -p /etc
ln -sfn "$systemConfig/etc" /etc/static
# One process for every leaf (a fork costs much under TCG): directories made, files linked.
cp -rsf /etc/static/* /etc/static/.[!.]* /etc/

echo "setting up users and groups..."
for f in {copied}; do
    if [ -f "/etc/static/$f" ]; then
        cp -p "/etc/static/$f" "/etc/$f.tmp"
        mv -f "/etc/$f.tmp" "/etc/$f"
    fi
done

if [ ! -s /etc/machine-id ]; then
    tr -d - < /proc/sys/kernel/random/uuid > /etc/machine-id
    chmod 0444 /etc/machine-id
fi

mkdir -m 0755 -p /var /var/lib /var/log /run/nixos
ln -sfn "$systemConfig" /run/current-system
"#,
        busybox = store(&n.busybox),
        tools = store(&n.tools),
        copied = COPIED_ETC.join(" "),
    );
    s
}

/// Links /usr, /bin, /sbin, /lib64 to the Debian store path's (merged-/usr) directories;
/// where one is already a real directory (the init's /lib/modules mount point, stage 2's
/// /bin, nixos-init's /usr/bin/env and /bin/sh), links the missing entries inside it,
/// recursively, keeping what is there. Idempotent; few processes (forks are slow under TCG).
fn debian_paths_script(n: &Names) -> String {
    let mut s = shebang(n);
    let _ = write!(
        s,
        r#"# Debian's binaries name /usr, /lib64, /lib/systemd ... literally; NixOS's do not.
export PATH={busybox}/bin
merge() {{
    local src=$1 dst=$2 e missing=()
    [ -L "$dst" ] && return 0
    if [ ! -e "$dst" ]; then
        ln -s "$src" "$dst"
        return
    fi
    [ -d "$dst" ] && [ -d "$src" ] || return 0
    for e in "$src"/*; do
        if [ -L "$dst/${{e##*/}}" ]; then
            continue
        elif [ -e "$dst/${{e##*/}}" ]; then
            merge "$e" "$dst/${{e##*/}}"
        else
            missing+=("$e")
        fi
    done
    [ ${{#missing[@]}} = 0 ] || ln -s "${{missing[@]}}" "$dst/"
}}
d={debian}
merge $d/usr /usr
merge $d/usr/bin /bin
merge $d/usr/sbin /sbin
merge $d/usr/lib64 /lib64
merge $d/usr/lib /lib
"#,
        busybox = store(&n.busybox),
        debian = store(&n.debian),
    );
    s
}

/// nixos-init's `initrd-init` steps (pkgs/by-name/ni/nixos-init/src, etc-activation.nix's
/// initrd mounts) as a script run as PID 1 after stage 1, for [`NixosStore::stand_in_init`].
fn stand_in_script(n: &Names) -> String {
    let top = store(&n.toplevels[&Flavour::NixosInit]);
    let mut s = shebang(n);
    let _ = write!(
        s,
        r#"# A stand-in for nixos-init's initrd-init, run after stage 1 (not part of the closure).
export PATH={busybox}/bin
set -e
top={top}
chown -f 0:0 /nix/store || true
chmod -f 1775 /nix/store || true
mount --bind /nix/store /nix/store
mount -o remount,ro,nosuid,nodev,bind /nix/store
mkdir -p /run/nixos-etc-metadata /etc
mount -t erofs -o loop,ro,nodev,nosuid {image} /run/nixos-etc-metadata
mount -t overlay overlay -o ro,nodev,nosuid,relatime,redirect_dir=on,metacopy=on,lowerdir=/run/nixos-etc-metadata::{basedir} /etc
ln -sfn "$top" /run/booted-system
ln -sfn "$top" /run/current-system
mkdir -p /usr/bin /bin
ln -sfn {debian}/usr/bin/env /usr/bin/env
ln -sfn {bash}/bin/sh /bin/sh
echo "initrd-init stand-in: /etc mounted, handing over to $top/init"
exec "$top/init"
"#,
        busybox = store(&n.busybox),
        image = store(&n.image),
        basedir = store(&n.basedir),
        debian = store(&n.debian),
        bash = store(&n.bash),
    );
    s
}

/// One console line for the boot test once the system is up, then power off.
fn report_script(n: &Names) -> String {
    let mut s = shebang(n);
    let _ = write!(
        s,
        r#"# Reports what the boot test asserts, as `key=value` words after the marker.
export PATH=/usr/bin:/usr/sbin:{busybox}/bin
exec 2>/dev/console
echo "{marker}-detail started at $(cut -d' ' -f1 /proc/uptime)s" > /dev/console
# Started early in sysinit (not after multi-user.target): a job that never ends must show up
# in the report, not as a silent timeout. Wait for the target (saying every 30 s what still
# runs), then for the boot's end.
for i in $(seq 1 180); do
    [ "$(systemctl is-active multi-user.target)" = active ] && break
    if [ $((i % 30)) = 0 ]; then
        echo "{marker}-detail at $(cut -d' ' -f1 /proc/uptime)s running: $(systemctl list-jobs --no-legend --plain | awk '$4 == "running" {{print $2}}' | paste -sd' ' -)" > /dev/console
    fi
    sleep 1
done
multi_user=$(systemctl is-active multi-user.target)
multi_user_uptime=$(cut -d' ' -f1 /proc/uptime)
state=$(timeout 30 systemctl is-system-running --wait 2>/dev/null)
jobs=$(systemctl list-jobs --no-legend --plain 2>/dev/null | awk '{{print $2}}' | paste -sd, -)
# For a human reading a failed test's console: what failed or still runs, and why.
for u in $(systemctl --failed --no-legend --plain 2>/dev/null | awk '{{print $1}}') ${{jobs//,/ }}; do
    journalctl -b -u "$u" -n 4 -o cat --no-pager 2>/dev/null | sed "s|^|{marker}-detail $u: |" > /dev/console
done
v() {{ local x="$*"; x=${{x//[[:space:]]/_}}; printf '%s' "${{x:--}}"; }}
failed=$(systemctl --failed --no-legend --plain 2>/dev/null | awk '{{print $1}}' | paste -sd, -)
store_line=$(findmnt -n -o FSTYPE,OPTIONS -M /nix/store | tail -n1)
kmsg=$(dmesg 2>/dev/null)
line="{marker}"
line+=" pid1_comm=$(v "$(cat /proc/1/comm)")"
line+=" pid1_exe=$(v "$(readlink /proc/1/exe)")"
line+=" systemd=$(v "$(systemctl --version | head -n1)")"
line+=" multi_user=$(v "$multi_user")"
line+=" multi_user_uptime=$(v "$multi_user_uptime")"
line+=" state=$(v "$state")"
line+=" jobs=$(v "$jobs")"
line+=" failed=$(v "$failed")"
line+=" journald=$(v "$(systemctl is-active systemd-journald.service)")"
line+=" root_fstype=$(v "$(findmnt -n -o FSTYPE -M / | tail -n1)")"
line+=" store_fstype=$(v "${{store_line%% *}}")"
line+=" store_options=$(v "${{store_line##* }}")"
line+=" etc_fstype=$(v "$(findmnt -n -o FSTYPE -M /etc | tail -n1)")"
line+=" booted_system=$(v "$(readlink /run/booted-system)")"
line+=" current_system=$(v "$(readlink /run/current-system)")"
line+=" dev_fd=$(v "$(readlink /dev/fd)")"
line+=" kmsg_booting=$(grep -c 'booting system configuration' <<<"$kmsg")"
line+=" kmsg_stage2_log=$(grep -c 'stage-2-init: running activation script' <<<"$kmsg")"
line+=" kmsg_activation=$(grep -c 'running activation script' <<<"$kmsg")"
line+=" uptime=$(v "$(cut -d' ' -f1 /proc/uptime)")"
line+=" END"
echo "$line" > /dev/console
systemctl --no-block poweroff
"#,
        busybox = store(&n.busybox),
        marker = REPORT_MARKER,
    );
    s
}

/// Bootspec v1 (nixos/modules/system/activation/bootspec.nix), and for the nixos-init
/// flavour the `org.nixos.nixos-init.v1` extension (nixos/modules/system/boot/nixos-init.nix).
fn boot_json(n: &Names, f: Flavour) -> String {
    let top = store(&n.toplevels[&f]);
    let mut doc = serde_json::json!({
        "org.nixos.bootspec.v1": {
            "system": "x86_64-linux",
            "init": format!("{top}/init"),
            "initrd": format!("{top}/initrd"),
            "kernel": format!("{top}/kernel"),
            "kernelParams": [],
            "label": format!("NixOS-shaped test system ({}, Debian systemd)", f.name()),
            "toplevel": top,
        }
    });
    if f == Flavour::NixosInit {
        doc["org.nixos.nixos-init.v1"] = serde_json::json!({
            "firmware": format!("{}/usr/lib/firmware", store(&n.debian)),
            "modprobe_binary": format!("{}/usr/sbin/modprobe", store(&n.debian)),
            "nix_store_mount_opts": ["ro", "nosuid", "nodev"],
            "sh_binary": format!("{}/bin/sh", store(&n.bash)),
            "env_binary": format!("{}/usr/bin/env", store(&n.debian)),
            "etc_metadata_image": store(&n.image),
            "etc_basedir": store(&n.basedir),
        });
    }
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// The report unit's console line, parsed.
#[derive(Debug, Clone)]
pub struct Report {
    pub fields: BTreeMap<String, String>,
}

impl Report {
    /// The first complete report line on `console` (ends in `END`: console output spliced
    /// into it would make it fail to parse rather than mislead).
    pub fn find(console: &str) -> Option<Report> {
        console.lines().find_map(|line| {
            let rest = &line[line.find(REPORT_MARKER)? + REPORT_MARKER.len()..];
            let words: Vec<&str> = rest.split_whitespace().collect();
            if words.last() != Some(&"END") {
                return None;
            }
            let fields = words[..words.len() - 1]
                .iter()
                .map(|w| {
                    w.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect::<Option<BTreeMap<_, _>>>()?;
            Some(Report { fields })
        })
    }

    /// A field's value (`-` when the guest found it empty), or "" when absent.
    pub fn get(&self, key: &str) -> &str {
        self.fields.get(key).map_or("", String::as_str)
    }
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn mkdirs(p: &Path) -> Result<(), String> {
    std::fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(from, to)
        .map(drop)
        .map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))
}

fn sym(target: impl AsRef<Path>, link: &Path) -> Result<(), String> {
    symlink(target.as_ref(), link).map_err(|e| format!("{}: {e}", link.display()))
}

fn write(p: &Path, text: &str) -> Result<(), String> {
    std::fs::write(p, text).map_err(|e| format!("{}: {e}", p.display()))
}

fn write_exec(p: &Path, text: &str) -> Result<(), String> {
    write(p, text)?;
    set_mode(p, 0o755)
}

fn set_mode(p: &Path, mode: u32) -> Result<(), String> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", p.display()))
}

fn xattr(p: &Path, name: &str, value: &[u8]) -> Result<(), String> {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty()).map_err(|e| {
        format!(
            "setting {name} on {}: {e} (trusted.* needs root)",
            p.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        let parts = RealParts {
            debian_root: "/cache/debian-root/x/root".into(),
            bash_static: "/bin/bash-static".into(),
            busybox: "/bin/busybox".into(),
        };
        Names::new(&parts, "252.39")
    }

    #[test]
    fn report_lines_parse_only_when_complete() {
        let c = "noise\r\n[  9.1] nixboot-real-systemd: pid1_comm=systemd failed=- END\r\nmore";
        let r = Report::find(c).expect("a report");
        assert_eq!(r.get("pid1_comm"), "systemd");
        assert_eq!(r.get("failed"), "-");
        assert_eq!(r.get("absent"), "");
        assert!(Report::find("nixboot-real-systemd: pid1_comm=systemd fai").is_none());
        assert!(Report::find("nixboot-real-systemd: pid1_comm systemd END").is_none());
    }

    #[test]
    fn stage2_logs_through_process_substitution_and_execs_systemd() {
        let n = names();
        let s = stage2_script(&n, Flavour::Scripted);
        assert!(s.starts_with(&format!("#!/nix/store/{}/bin/bash\n", n.bash)));
        assert!(s.contains(r#"exec > >(tee -i /proc/self/fd/"$logOutFd" | while read -r line; do"#));
        assert!(s.contains(&format!(
            "systemConfig=/nix/store/{}\n",
            n.toplevels[&Flavour::Scripted]
        )));
        assert!(s.contains("exec /run/current-system/systemd/lib/systemd/systemd \"$@\""));
    }

    #[test]
    fn only_the_nixos_init_flavour_carries_the_extension() {
        let n = names();
        for f in Flavour::ALL {
            let doc: serde_json::Value = serde_json::from_str(&boot_json(&n, f)).unwrap();
            let spec = &doc["org.nixos.bootspec.v1"];
            assert_eq!(spec["toplevel"], store(&n.toplevels[&f]));
            assert_eq!(spec["init"], format!("{}/init", store(&n.toplevels[&f])));
            let ext = &doc["org.nixos.nixos-init.v1"];
            assert_eq!(ext.is_object(), f == Flavour::NixosInit, "{f:?}");
        }
        let doc: serde_json::Value =
            serde_json::from_str(&boot_json(&n, Flavour::NixosInit)).unwrap();
        let ext = &doc["org.nixos.nixos-init.v1"];
        assert_eq!(ext["etc_metadata_image"], store(&n.image));
        assert_eq!(ext["etc_basedir"], store(&n.basedir));
        assert_eq!(
            ext["nix_store_mount_opts"],
            serde_json::json!(["ro", "nosuid", "nodev"])
        );
    }

    #[test]
    fn names_are_store_paths_and_differ_per_flavour() {
        let n = names();
        assert!(n.debian.ends_with("-debian-systemd-252.39"));
        let tops: std::collections::BTreeSet<_> = n.toplevels.values().collect();
        assert_eq!(tops.len(), 3);
        assert_eq!(
            normalize(Path::new("/etc/../usr/lib/os-release")),
            Path::new("/usr/lib/os-release")
        );
    }
}
