//! The initrds under test and how each is built: ours (mkinitrd), the hand-written busybox
//! script, initramfs-tools and dracut (installed with apt-get when absent, one after the
//! other since they conflict; their images cached with the build time measured then).

use crate::{say, timed_command, Ctx};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Nixboot,
    Busybox,
    InitramfsTools,
    Dracut,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Nixboot => "nixboot",
            Kind::Busybox => "busybox",
            Kind::InitramfsTools => "initramfs-tools",
            Kind::Dracut => "dracut",
        }
    }

    /// The part of the kernel command line that names the root: the only part that differs
    /// between the initrds. Every one mounts virtiofs tag `store` as its root.
    pub fn root_args(self) -> &'static str {
        match self {
            // The same share as the others' root; no separate store or modules share.
            Kind::Nixboot => "root=virtiofs:store nixboot.store=none nixboot.modules=none",
            // The script hard-codes tag "store"; root= is there for the reader.
            Kind::Busybox => "root=virtiofs:store",
            Kind::InitramfsTools => "root=store rootfstype=virtiofs",
            Kind::Dracut => "root=virtiofs:store",
        }
    }

    fn package(self) -> Option<Package> {
        match self {
            Kind::Dracut => Some(Package {
                name: "dracut",
                parts: &["dracut", "dracut-core"],
            }),
            Kind::InitramfsTools => Some(Package {
                name: "initramfs-tools",
                parts: &["initramfs-tools", "initramfs-tools-core"],
            }),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One initrd, ready to boot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Built {
    pub kind: Kind,
    /// For the report: what it is and how it was configured.
    pub label: String,
    pub version: String,
    pub image: PathBuf,
    pub size: u64,
    /// Wall time of the build command (the median when it was built more than once).
    pub build_secs: f64,
    /// Every build's wall time (ours and the busybox script are built once per round; a
    /// distribution peer once, or not at all when its image came from the cache).
    #[serde(default)]
    pub build_secs_all: Vec<f64>,
    /// When the image came from the cache: the date its build time was measured.
    pub cached: Option<String>,
    /// The build command as run.
    pub command: String,
    pub compression: String,
}

/// The support files in bench/assets, compiled in so the binary works from anywhere.
pub const STAGE2_SH: &str = include_str!("../assets/stage2.sh");
pub const STAMP_C: &str = include_str!("../assets/stamp.c");
const BUSYBOX_INIT_SH: &str = include_str!("../assets/busybox-init.sh");
const BUSYBOX_INITRD_SH: &str = include_str!("../assets/busybox-initrd.sh");
const ITOOLS_CONF: &str = include_str!("../assets/initramfs-tools/initramfs.conf");
const ITOOLS_MODULES: &str = include_str!("../assets/initramfs-tools/modules");
/// dracut's options (the command line of shared/docs/peers.md).
const DRACUT_ARGS: &[&str] = &["--no-hostonly", "--add-drivers", "virtiofs virtio_pci"];

/// Builds ours or the busybox script's image again (a round of the boots starts with it, so
/// the builds are spread over the run as the boots are, not timed back to back in one moment
/// of the host) and adds the time to `b`. Ours must come out byte-identical (mkinitrd's
/// promise; the boots after it boot the same image); the busybox script's cpio records
/// mtimes and inode numbers, as a person's script does. Distribution peers are built once.
pub fn build_again(ctx: &Ctx, b: &mut Built) -> Result<()> {
    let (rebuild, reproducible): (fn(&Ctx) -> Result<Built>, bool) = match b.kind {
        Kind::Nixboot => (build_nixboot, true),
        Kind::Busybox => (build_busybox, false),
        _ => return Ok(()),
    };
    let before = reproducible
        .then(|| std::fs::read(&b.image))
        .transpose()
        .with_context(|| format!("reading {}", b.image.display()))?;
    let again = rebuild(ctx)?;
    if let Some(before) = before {
        let after = std::fs::read(&again.image)?;
        if before != after {
            bail!(
                "{} built again differs from its first build ({} vs {} bytes): not reproducible",
                b.kind,
                after.len(),
                before.len()
            );
        }
    }
    b.build_secs_all.push(again.build_secs);
    b.build_secs = crate::stats::summarize(&b.build_secs_all).map_or(b.build_secs, |s| s.median);
    b.size = again.size;
    Ok(())
}

pub fn build_nixboot(ctx: &Ctx) -> Result<Built> {
    let out = ctx.run_dir.join("nixboot.initrd");
    let mut cmd = Command::new(&ctx.mkinitrd);
    cmd.arg("--closure")
        .arg(&ctx.shares.system)
        .arg("-o")
        .arg(&out)
        .arg("--kernel-modules")
        .arg(&ctx.env.modules)
        .arg("--init")
        .arg(&ctx.static_init);
    let command =
        "mkinitrd --closure STAGE2_SYSTEM -o OUT --kernel-modules MODULES_DIR --init INIT"
            .to_string();
    say!("building nixboot's initrd: {cmd:?}");
    let took = timed_command(&mut cmd, &ctx.run_dir.join("build-nixboot.log"))?;
    let version = command_output(Command::new(&ctx.mkinitrd).arg("--version"))
        .unwrap_or_else(|| "mkinitrd ?".into());
    let version = format!(
        "{}{}",
        version.trim().trim_start_matches("mkinitrd ").trim(),
        git_describe()
            .map(|g| format!(", git {g}"))
            .unwrap_or_default()
    );
    finish(
        Kind::Nixboot,
        format!("nixboot (mkinitrd {version})"),
        version,
        out,
        took.as_secs_f64(),
        None,
        command,
    )
}

pub fn build_busybox(ctx: &Ctx) -> Result<Built> {
    let dir = ctx.run_dir.join("busybox-initrd");
    std::fs::create_dir_all(&dir)?;
    let init = dir.join("init.sh");
    let script = dir.join("busybox-initrd.sh");
    std::fs::write(&init, BUSYBOX_INIT_SH)?;
    std::fs::write(&script, BUSYBOX_INITRD_SH)?;
    let out = ctx.run_dir.join("busybox.initrd");
    let mut cmd = Command::new("sh");
    cmd.arg(&script)
        .arg(&ctx.busybox)
        .arg(&ctx.env.modules)
        .arg(&init)
        .arg(&out);
    let command = "sh bench/assets/busybox-initrd.sh BUSYBOX MODULES_DIR \
                   bench/assets/busybox-init.sh OUT"
        .to_string();
    say!("building the busybox initrd");
    let took = timed_command(&mut cmd, &ctx.run_dir.join("build-busybox.log"))?;
    let version = command_output(Command::new(&ctx.busybox).arg("--help"))
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_else(|| "?".into());
    finish(
        Kind::Busybox,
        format!("hand-written busybox script (busybox {version}: insmod 7 modules, mount retried every 10 ms, switch_root)"),
        version,
        out,
        took.as_secs_f64(),
        None,
        command,
    )
}

fn finish(
    kind: Kind,
    label: String,
    version: String,
    image: PathBuf,
    build_secs: f64,
    cached: Option<String>,
    command: String,
) -> Result<Built> {
    let size = std::fs::metadata(&image)
        .with_context(|| format!("{} was not written", image.display()))?
        .len();
    let compression = describe_compression(&image).unwrap_or_else(|e| format!("? ({e})"));
    Ok(Built {
        kind,
        label,
        version,
        image,
        size,
        build_secs,
        build_secs_all: vec![build_secs],
        cached,
        command,
        compression,
    })
}

/// A distribution package providing a peer.
#[derive(Debug, Clone, Copy)]
struct Package {
    name: &'static str,
    /// Everything installing `name` brings that we remove again (not the shared
    /// dependencies such as udev).
    parts: &'static [&'static str],
}

/// What the cache keeps next to an image.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheMeta {
    kind: Kind,
    label: String,
    version: String,
    kver: String,
    recipe: String,
    build_secs: f64,
    built_at: String,
    command: String,
}

/// Builds (or takes from the cache) dracut's and initramfs-tools' images. A peer that cannot
/// be built is returned with the reason instead of failing the run.
pub fn build_distro_peers(ctx: &Ctx, kinds: &[Kind]) -> (Vec<Built>, Vec<(Kind, String)>) {
    let mut built = Vec::new();
    let mut failed = Vec::new();
    if kinds.is_empty() {
        return (built, failed);
    }
    cleanup_stale_host_files(ctx);
    let mut apt = AptState::record(kinds);
    // Installed packages first: the other one then replaces it only once.
    let mut order: Vec<Kind> = kinds.to_vec();
    let installed = |k: &Kind| {
        k.package()
            .is_some_and(|p| installed_version(p.name).is_some())
    };
    order.sort_by_key(|k| if installed(k) { 0 } else { 1 });
    for kind in order {
        match build_distro_peer(ctx, kind, &mut apt) {
            Ok(b) => built.push(b),
            Err(e) => {
                say!("{kind}: LEFT OUT: {e:#}");
                failed.push((kind, format!("{e:#}")));
            }
        }
    }
    apt.restore();
    (built, failed)
}

fn build_distro_peer(ctx: &Ctx, kind: Kind, apt: &mut AptState) -> Result<Built> {
    let pkg = kind.package().context("not a distribution peer")?;
    let recipe = recipe_hash(kind);
    let version = installed_version(pkg.name)
        .or_else(|| candidate_version(pkg.name))
        .with_context(|| format!("apt knows no package {} (apt-get update?)", pkg.name))?;
    let key = |v: &str| format!("{}-{}-{}-{}", kind, v, ctx.kver, recipe);
    if !ctx.cli.rebuild_peers {
        if let Some(b) = from_cache(ctx, &ctx.cache.join("images").join(key(&version))) {
            say!("{kind}: image cached ({})", b.image.display());
            return Ok(b);
        }
    }
    if installed_version(pkg.name).is_none() {
        if ctx.cli.no_install {
            bail!(
                "{} is not installed, no cached image, and --no-install",
                pkg.name
            );
        }
        apt.install(pkg)?;
    }
    let version = installed_version(pkg.name)
        .with_context(|| format!("{} is still not installed", pkg.name))?;
    let dir = ctx.cache.join("images").join(key(&version));
    let kmods = module_tree(ctx)?;
    let tmp_image = ctx.run_dir.join(format!("{kind}.img"));
    let log = ctx.run_dir.join(format!("build-{kind}.log"));
    let (took, command, label) = match kind {
        Kind::Dracut => build_dracut(ctx, &version, &kmods, &tmp_image, &log)?,
        Kind::InitramfsTools => build_itools(ctx, &version, &kmods, &tmp_image, &log)?,
        _ => bail!("not a distribution peer"),
    };
    std::fs::create_dir_all(&dir)?;
    let image = dir.join("initrd.img");
    std::fs::copy(&tmp_image, &image)
        .with_context(|| format!("copying {} to the cache", tmp_image.display()))?;
    let meta = CacheMeta {
        kind,
        label: label.clone(),
        version: version.clone(),
        kver: ctx.kver.clone(),
        recipe: recipe.clone(),
        build_secs: took.as_secs_f64(),
        built_at: crate::report::utc_now(),
        command: command.clone(),
    };
    std::fs::write(dir.join("build.json"), serde_json::to_string_pretty(&meta)?)?;
    let _ = std::fs::copy(&log, dir.join("build.log"));
    let _ = std::fs::remove_file(&tmp_image);
    finish(
        kind,
        label,
        version,
        image,
        took.as_secs_f64(),
        None,
        command,
    )
}

/// How long a peer's build took, its command line as shown, and its label.
type PeerBuild = (std::time::Duration, String, String);

/// dracut into `out`, its log in `log`.
fn build_dracut(
    ctx: &Ctx,
    version: &str,
    kmods: &Path,
    out: &Path,
    log: &Path,
) -> Result<PeerBuild> {
    let kind = Kind::Dracut;
    let moddir = kmods.join("lib/modules").join(&ctx.kver);
    let mut cmd = Command::new("dracut");
    cmd.args(DRACUT_ARGS)
        .arg("--kver")
        .arg(&ctx.kver)
        .arg("--kmoddir")
        .arg(&moddir)
        .arg("--force")
        .arg(out);
    let command = format!(
        "dracut --no-hostonly --add-drivers \"virtiofs virtio_pci\" --kver {} \
         --kmoddir MODULES_DIR --force OUT",
        ctx.kver
    );
    say!("{kind}: building (tens of seconds): {command}");
    let took = timed_command(&mut cmd, log)?;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let systemd = text.contains("Including module: systemd ");
    let systemd_version = installed_version("systemd").unwrap_or_default();
    let label = if systemd {
        let major = systemd_version
            .split(['.', '-'])
            .next()
            .unwrap_or(&systemd_version);
        format!(
            "dracut {version} (systemd {major} in the initrd; --no-hostonly --add-drivers \"virtiofs virtio_pci\")"
        )
    } else {
        format!("dracut {version} (WITHOUT systemd: dracut's shell init)")
    };
    Ok((took, command, label))
}

/// initramfs-tools' mkinitramfs into `out`, its log in `log`.
fn build_itools(
    ctx: &Ctx,
    version: &str,
    kmods: &Path,
    out: &Path,
    log: &Path,
) -> Result<PeerBuild> {
    let kind = Kind::InitramfsTools;
    let conf = ctx.run_dir.join("initramfs-tools-conf");
    for d in ["conf.d", "hooks", "scripts"] {
        std::fs::create_dir_all(conf.join(d))?;
    }
    std::fs::write(conf.join("initramfs.conf"), ITOOLS_CONF)?;
    std::fs::write(conf.join("modules"), ITOOLS_MODULES)?;
    let _host = HostKernelFiles::install(ctx, kmods)?;
    let mut cmd = Command::new("mkinitramfs");
    cmd.arg("-d").arg(&conf).arg("-o").arg(out).arg(&ctx.kver);
    let command = format!(
        "mkinitramfs -d bench/assets/initramfs-tools -o OUT {}",
        ctx.kver
    );
    say!("{kind}: building: {command}");
    let took = timed_command(&mut cmd, log)?;
    let label = format!("initramfs-tools {version} (busybox + udev; MODULES=most plus virtiofs)");
    Ok((took, command, label))
}

fn from_cache(ctx: &Ctx, dir: &Path) -> Option<Built> {
    let meta: CacheMeta =
        serde_json::from_slice(&std::fs::read(dir.join("build.json")).ok()?).ok()?;
    let image = dir.join("initrd.img");
    if !image.is_file() || meta.kver != ctx.kver {
        return None;
    }
    finish(
        meta.kind,
        meta.label,
        meta.version,
        image,
        meta.build_secs,
        Some(meta.built_at),
        meta.command,
    )
    .ok()
}

/// Changes to how a peer is built invalidate its cached image.
fn recipe_hash(kind: Kind) -> String {
    let recipe = match kind {
        Kind::Dracut => DRACUT_ARGS.join(" "),
        Kind::InitramfsTools => format!("{ITOOLS_CONF}\n{ITOOLS_MODULES}"),
        _ => String::new(),
    };
    let mut h: u64 = 0xcbf29ce484222325;
    for b in recipe.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{:08x}", h as u32)
}

/// Debian's kernel package ships no modules.dep, and both peers need one: a copy of the
/// kernel's module tree (hard links, so it costs next to nothing) with depmod run on it,
/// kept in the cache. Returns the root holding `lib/modules/<kver>`.
fn module_tree(ctx: &Ctx) -> Result<PathBuf> {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in ctx.env.modules.to_string_lossy().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    let root = ctx
        .cache
        .join("kmods")
        .join(format!("{}-{:08x}", ctx.kver, h as u32));
    if root.join(".complete").is_file() {
        return Ok(root);
    }
    say!("module tree with modules.dep in {}", root.display());
    let tmp = root.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("lib/modules"))?;
    let dest = tmp.join("lib/modules").join(&ctx.kver);
    copy_tree(&ctx.env.modules, &dest)?;
    run_checked(Command::new("depmod").arg("-b").arg(&tmp).arg(&ctx.kver))?;
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&tmp, &root)?;
    std::fs::write(root.join(".complete"), "")?;
    Ok(root)
}

/// `cp -al` (hard links; `cp -a` across filesystems), then the top-level files (the only
/// ones depmod and the peers might rewrite) are made real copies, so nothing written here
/// can reach the shared kernel cache through a link.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    if run_checked(Command::new("cp").arg("-al").arg(from).arg(to)).is_err() {
        let _ = std::fs::remove_dir_all(to);
        run_checked(Command::new("cp").arg("-a").arg(from).arg(to))?;
    }
    for e in std::fs::read_dir(to)? {
        let e = e?;
        if e.file_type()?.is_file() {
            let p = e.path();
            let bytes = std::fs::read(&p)?;
            let tmp = p.with_extension("bench-copy");
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &p)?;
        }
    }
    Ok(())
}

/// mkinitramfs only reads /lib/modules/<kver> and /boot/config-<kver>: put the kernel's
/// there for the build (marked, so a killed run's leftovers are removed next time) and
/// take them away again on drop. Files that were there before are left alone.
struct HostKernelFiles {
    created: Vec<PathBuf>,
}

const HOST_MARKER: &str = ".nixboot-bench-copy";

impl HostKernelFiles {
    fn install(ctx: &Ctx, kmods: &Path) -> Result<HostKernelFiles> {
        let mut me = HostKernelFiles {
            created: Vec::new(),
        };
        let moddir = Path::new("/lib/modules").join(&ctx.kver);
        if !moddir.exists() {
            std::fs::create_dir_all("/lib/modules")?;
            copy_tree(&kmods.join("lib/modules").join(&ctx.kver), &moddir)?;
            std::fs::write(moddir.join(HOST_MARKER), "")?;
            me.created.push(moddir);
        }
        let config = Path::new("/boot").join(format!("config-{}", ctx.kver));
        if !config.exists() {
            let src = ctx
                .env
                .kernel
                .parent()
                .map(|d| d.join(format!("config-{}", ctx.kver)))
                .filter(|p| p.is_file());
            if let Some(src) = src {
                std::fs::create_dir_all("/boot")?;
                std::fs::copy(&src, &config)?;
                std::fs::write(stale_list(ctx), config.to_string_lossy().as_bytes())?;
                me.created.push(config);
            }
        }
        Ok(me)
    }
}

impl Drop for HostKernelFiles {
    fn drop(&mut self) {
        for p in self.created.drain(..) {
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

fn stale_list(ctx: &Ctx) -> PathBuf {
    ctx.cache.join("host-files-to-remove")
}

/// Removes what a killed run left in /lib/modules and /boot.
fn cleanup_stale_host_files(ctx: &Ctx) {
    let moddir = Path::new("/lib/modules").join(&ctx.kver);
    if moddir.join(HOST_MARKER).exists() {
        say!("removing a killed run's leftover {}", moddir.display());
        let _ = std::fs::remove_dir_all(&moddir);
    }
    if let Ok(p) = std::fs::read_to_string(stale_list(ctx)) {
        let p = PathBuf::from(p.trim());
        if p.starts_with("/boot") && p.is_file() {
            let _ = std::fs::remove_file(&p);
        }
        let _ = std::fs::remove_file(stale_list(ctx));
    }
}

/// Which packages were installed when the run started, so that the end can put them back.
struct AptState {
    /// (package, its dpkg status then: "ii" installed, "rc" removed with config, "" absent).
    initial: Vec<(&'static str, String)>,
}

impl AptState {
    fn record(kinds: &[Kind]) -> AptState {
        // Both peers are recorded whatever was asked: installing one removes the other.
        let _ = kinds;
        let mut initial = Vec::new();
        for kind in [Kind::Dracut, Kind::InitramfsTools] {
            if let Some(p) = kind.package() {
                for part in p.parts {
                    initial.push((*part, dpkg_status(part)));
                }
            }
        }
        AptState { initial }
    }

    fn install(&mut self, pkg: Package) -> Result<()> {
        say!(
            "apt-get install {} (the peers conflict: one at a time)",
            pkg.name
        );
        let install = || {
            run_checked(
                Command::new("apt-get")
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .args(["install", "-y", "-q", "--no-install-recommends"])
                    .arg(pkg.name),
            )
        };
        if install().is_err() {
            say!("apt-get install failed; apt-get update and once more");
            run_checked(
                Command::new("apt-get")
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .args(["update", "-q"]),
            )?;
            install()?;
        }
        Ok(())
    }

    /// Purges what this run installed (or left removed-with-config), reinstalls what it
    /// displaced. The dependencies apt brought along (udev, kpartx, klibc-utils, ...) stay.
    fn restore(&mut self) {
        let purge: Vec<&str> = self
            .initial
            .iter()
            .filter(|(p, was)| was.is_empty() && !dpkg_status(p).is_empty())
            .map(|(p, _)| *p)
            .collect();
        if !purge.is_empty() {
            say!("apt-get purge {} (installed by this run)", purge.join(" "));
            if let Err(e) = run_checked(
                Command::new("apt-get")
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .args(["purge", "-y", "-q"])
                    .args(&purge),
            ) {
                say!("WARNING: {e:#}");
            }
        }
        let reinstall: Vec<&str> = self
            .initial
            .iter()
            .filter(|(p, was)| was == "ii" && dpkg_status(p) != "ii")
            .map(|(p, _)| *p)
            .collect();
        if !reinstall.is_empty() {
            say!(
                "apt-get install {} (was installed before this run)",
                reinstall.join(" ")
            );
            if let Err(e) = run_checked(
                Command::new("apt-get")
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .args(["install", "-y", "-q", "--no-install-recommends"])
                    .args(&reinstall),
            ) {
                say!("WARNING: {e:#}");
            }
        }
    }
}

/// dpkg's two-letter status ("ii", "rc", ...), or "" when dpkg does not know the package
/// or it is not installed at all ("un", "pn").
fn dpkg_status(pkg: &str) -> String {
    let s = command_output(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Abbrev}", pkg]))
        .unwrap_or_default();
    let s = s.trim().to_string();
    if s.is_empty() || s.starts_with('u') || s.starts_with('p') {
        String::new()
    } else {
        s.chars().take(2).collect()
    }
}

/// The installed version of a package, if it is installed.
pub fn installed_version(pkg: &str) -> Option<String> {
    let out = command_output(Command::new("dpkg-query").args([
        "-W",
        "-f=${db:Status-Abbrev}|${Version}",
        pkg,
    ]))?;
    let (status, version) = out.split_once('|')?;
    (status.starts_with("ii") && !version.is_empty()).then(|| version.trim().to_string())
}

fn candidate_version(pkg: &str) -> Option<String> {
    let out = command_output(Command::new("apt-cache").args(["policy", pkg]))?;
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(|v| v.trim().to_string())
        .filter(|v| v != "(none)" && !v.is_empty())
}

/// stdout of a successful command.
pub fn command_output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(std::process::Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_checked(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `abc1234` or `abc1234+changes` for the working tree the bench was run from.
fn git_describe() -> Option<String> {
    let root = qemu_tests::artifacts::workspace_root();
    let rev = command_output(Command::new("git").arg("-C").arg(&root).args([
        "rev-parse",
        "--short",
        "HEAD",
    ]))?;
    let dirty = command_output(Command::new("git").arg("-C").arg(&root).args([
        "status",
        "--porcelain",
        "--untracked-files=no",
    ]))
    .is_some_and(|s| !s.trim().is_empty());
    Some(format!(
        "{}{}",
        rev.trim(),
        if dirty { "+changes" } else { "" }
    ))
}

/// "zstd", "gzip", "cpio (uncompressed) + zstd" (an early uncompressed segment, as
/// microcode or firmware prepends), ...
pub fn describe_compression(path: &Path) -> Result<String> {
    let data = std::fs::read(path)?;
    let mut parts = Vec::new();
    let mut at = 0;
    // At most a few uncompressed cpio segments before the compressed one.
    for _ in 0..4 {
        while at < data.len() && data[at] == 0 {
            at += 1;
        }
        let rest = &data[at.min(data.len())..];
        if rest.starts_with(b"070701") || rest.starts_with(b"070702") {
            parts.push("cpio".to_string());
            match skip_cpio(&data, at) {
                Some(end) => at = end,
                None => break,
            }
            continue;
        }
        let name = if rest.starts_with(&[0x1f, 0x8b]) {
            "gzip"
        } else if rest.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            "zstd"
        } else if rest.starts_with(&[0xfd, b'7', b'z', b'X', b'Z']) {
            "xz"
        } else if rest.starts_with(&[0x02, 0x21, 0x4c, 0x18]) {
            "lz4"
        } else if rest.starts_with(&[0x5d, 0x00, 0x00]) {
            "lzma"
        } else if rest.is_empty() {
            break;
        } else {
            "unknown"
        };
        parts.push(name.to_string());
        break;
    }
    Ok(match parts.as_slice() {
        [] => "empty".into(),
        [one] => one.clone(),
        [early @ .., last] => format!("{} uncompressed early cpio + {last}", early.len()),
    })
}

/// The offset after the TRAILER!!! entry of the newc archive at `at`.
fn skip_cpio(data: &[u8], mut at: usize) -> Option<usize> {
    let hex = |s: &[u8]| u32::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok();
    loop {
        let h = data.get(at..at + 110)?;
        let filesize = hex(&h[54..62])? as usize;
        let namesize = hex(&h[94..102])? as usize;
        let name = data.get(at + 110..at + 110 + namesize)?;
        let name_end = (at + 110 + namesize + 3) & !3;
        let next = (name_end + filesize + 3) & !3;
        if name.starts_with(b"TRAILER!!!") {
            return Some(next);
        }
        at = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_args_differ_only_in_root_syntax() {
        for k in [
            Kind::Nixboot,
            Kind::Busybox,
            Kind::InitramfsTools,
            Kind::Dracut,
        ] {
            assert!(k.root_args().starts_with("root="), "{k}");
        }
        assert_ne!(recipe_hash(Kind::Dracut), recipe_hash(Kind::InitramfsTools));
    }
}
