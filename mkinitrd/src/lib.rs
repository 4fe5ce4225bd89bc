//! mkinitrd: packs the static init, its configuration ([`nixboot_protocol::InitrdConfig`]) and
//! the kernel modules it must load into a reproducible newc initramfs.
//!
//! The layout is fixed by `docs/contracts-internal.md`; everything that can be decided at
//! build time (module load order, the default next init) is decided here, so the init only
//! executes a list.

pub mod closure;
pub mod compress;
pub mod cpio;
pub mod elf;
pub mod extract;
pub mod firmware;
pub mod include;
pub mod inspect;
pub mod kmod;
pub mod microcode;
pub mod output;
pub mod store;
#[doc(hidden)]
pub mod testutil;
pub mod uki;
pub mod verity;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nixboot_protocol::{InitrdConfig, ModuleSpec, CONFIG_PATH};

pub use closure::{BootspecV1, Closure, ClosureError};
pub use compress::Compression;
pub use elf::ElfError;
pub use include::{Include, IncludeError};
pub use kmod::KmodError;
pub use microcode::Vendor;
pub use store::{EmbedStore, StoreError};

/// The triple the guest binaries are built for (`cargo static`).
pub const GUEST_TARGET: &str = "x86_64-unknown-linux-musl";

/// What to build. `Default` gives an initrd with the default init, no closure (the command
/// line must carry `init=`), no modules, zstd.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// A NixOS system toplevel, or any directory with an executable `init`; its init is the
    /// default next init. None: no default (the NixOS module builds the initrd before the
    /// toplevel exists, since the toplevel's boot.json names the initrd).
    pub closure: Option<PathBuf>,
    /// The initramfs file to write (atomically).
    pub output: PathBuf,
    /// One kernel's `lib/modules/<version>` directory.
    pub kernel_modules: Option<PathBuf>,
    /// Module names or aliases; empty means [`kmod::DEFAULT_MODULES`] when
    /// `kernel_modules` is given.
    pub modules: Vec<String>,
    /// Where the modules' firmware is looked for; empty means the modules directory's
    /// `../../firmware` (`/lib/firmware`).
    pub firmware_dirs: Vec<PathBuf>,
    /// The static init to pack as `/init`; None means [`default_init_binary`].
    pub init: Option<PathBuf>,
    pub compression: Compression,
    /// Host files, directories and programs (with their libraries) to pack.
    pub includes: Vec<Include>,
    /// Early microcode blobs or directories (see [`microcode`]).
    pub microcode: Vec<PathBuf>,
    /// The vendor of every microcode input; None: from their names.
    pub microcode_vendor: Option<Vendor>,
    /// Pack the closure's store paths under /nix/store (see [`store`]).
    pub embed_store: Option<EmbedStore>,
}

/// What was built.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub output: PathBuf,
    /// Bytes written.
    pub size: u64,
    /// Bytes of the archives before compression (microcode segment included).
    pub uncompressed_size: u64,
    /// Entries of the main archive.
    pub entries: usize,
    /// Module names in load order.
    pub modules: Vec<String>,
    pub kernel_version: Option<String>,
    /// The next init recorded in the configuration (None without a closure).
    pub default_init: Option<String>,
    /// The command line a user needs to boot the closure with this initrd.
    pub kernel_cmdline: String,
    /// The static init packed as `/init`.
    pub init_binary: PathBuf,
    /// Firmware files packed (relative to /lib/firmware).
    pub firmware: Vec<String>,
    /// Store paths packed by `--embed-store`.
    pub store_paths: usize,
    /// Bytes of file data not packed twice thanks to hard links (before compression).
    pub hard_link_savings: u64,
    /// Remarks for the user (built-in modules skipped, aliases resolved, ...).
    pub notes: Vec<String>,
    pub elapsed: Duration,
}

/// An initramfs built in memory.
#[derive(Debug, Clone)]
pub struct Image {
    /// The initramfs: the microcode segment if any, then the (possibly compressed) archive.
    pub bytes: Vec<u8>,
    /// Bytes of the archives before compression.
    pub uncompressed_size: usize,
    /// Entries of the main archive.
    pub entries: usize,
    /// The configuration written to [`CONFIG_PATH`].
    pub config: InitrdConfig,
    pub closure: Option<Closure>,
    pub init_binary: PathBuf,
    pub firmware: Vec<String>,
    pub store_paths: usize,
    pub notes: Vec<String>,
}

impl Image {
    /// The command line a user needs to boot with this initrd.
    pub fn kernel_cmdline(&self) -> String {
        kernel_cmdline(self.closure.as_ref())
    }
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Closure(#[from] ClosureError),
    #[error("no static init found to pack as /init (build it with `cargo static` or pass --init); tried: {}", tried.join("; "))]
    NoDefaultInit { tried: Vec<String> },
    #[error("cannot read init {path}: {source}")]
    InitUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("init {path} is not a static executable ({source})")]
    InitNotStatic { path: PathBuf, source: ElfError },
    #[error("--module needs --kernel-modules (which kernel's modules?)")]
    ModulesWithoutDir,
    #[error(transparent)]
    Kmod(#[from] KmodError),
    #[error(transparent)]
    Firmware(#[from] firmware::FirmwareError),
    #[error("--include: {0}")]
    Include(#[from] IncludeError),
    #[error("--microcode: {0}")]
    Microcode(#[from] microcode::MicrocodeError),
    #[error("--embed-store: {0}")]
    Store(#[from] StoreError),
    #[error("--embed-store: {0}")]
    StoreInclude(IncludeError),
    #[error("cannot lay out the initramfs: {0}")]
    Cpio(#[from] cpio::CpioError),
    #[error(transparent)]
    Compress(#[from] compress::CompressError),
    #[error(transparent)]
    Uki(#[from] uki::UkiError),
    #[error("SOURCE_DATE_EPOCH={value:?} is not a number of seconds between 0 and 4294967295")]
    SourceDateEpoch { value: String },
    #[error("cannot write {path}: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The mtime of every entry: `SOURCE_DATE_EPOCH` when set (reproducible-builds.org), else 0.
pub fn source_date_epoch() -> Result<u32, Error> {
    match std::env::var_os("SOURCE_DATE_EPOCH") {
        None => Ok(0),
        Some(v) => {
            let text = v.to_string_lossy();
            // Digits only: u32's parser would also take a `+` sign.
            text.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| text.parse::<u32>().ok())
                .flatten()
                .ok_or_else(|| Error::SourceDateEpoch {
                    value: text.into_owned(),
                })
        }
    }
}

/// The kernel command line for an imageless guest: the closure's init and bootspec
/// parameters when there is a closure. The same with an embedded store: the init takes the
/// store from the initrd (and mounts no share) on its own when the root is a tmpfs.
pub fn kernel_cmdline(closure: Option<&Closure>) -> String {
    match closure {
        Some(c) => c.kernel_cmdline(),
        None => "root=tmpfs console=ttyS0,115200".to_owned(),
    }
}

/// Builds the initramfs and writes it to `opts.output` as [`output::Output`] does: a
/// regular file is replaced atomically, `-` is standard output, a character device or FIFO
/// is written in place. File contents are read while they are compressed into the output:
/// memory does not grow with what is packed.
pub fn build(opts: &BuildOptions) -> Result<BuildReport, Error> {
    let start = Instant::now();
    let mtime = source_date_epoch()?;
    let plan = plan_image(opts)?;
    let out_err = |source| Error::Output {
        path: opts.output.clone(),
        source,
    };
    let mut out = output::Output::create(&opts.output).map_err(out_err)?;
    let sizes = {
        let mut buffered = std::io::BufWriter::with_capacity(1 << 20, &mut out);
        let sizes = plan.write_to(opts.compression, mtime, &mut buffered, &opts.output)?;
        buffered.flush().map_err(out_err)?;
        sizes
    };
    out.commit().map_err(out_err)?;
    Ok(BuildReport {
        output: opts.output.clone(),
        size: sizes.written,
        uncompressed_size: sizes.uncompressed,
        entries: plan.archive.len(),
        modules: plan.config.modules.iter().map(|m| m.name.clone()).collect(),
        kernel_version: plan.config.kernel_version.clone(),
        default_init: plan.config.default_init.clone(),
        kernel_cmdline: kernel_cmdline(plan.closure.as_ref()),
        init_binary: plan.init_binary.clone(),
        firmware: plan.firmware.clone(),
        store_paths: plan.store_paths,
        hard_link_savings: plan.archive.hard_link_savings(),
        notes: plan.notes,
        elapsed: start.elapsed(),
    })
}

/// Directories every initramfs has (mode 0755), parents first.
const LAYOUT_DIRS: &[&str] = &[
    "dev",
    "proc",
    "sys",
    "run",
    "sysroot",
    "etc",
    "etc/nixboot",
    "lib",
    "lib/modules",
];

/// Where `--embed-store` puts the store, and what the configuration says.
pub const EMBEDDED_STORE: &str = "/nix/store";

/// Builds the initramfs in memory with every mtime set to `mtime`; writes nothing. The same
/// bytes as [`build`] writes; for tests and small images (everything is held in memory).
pub fn build_image(opts: &BuildOptions, mtime: u32) -> Result<Image, Error> {
    let plan = plan_image(opts)?;
    let mut bytes = Vec::new();
    let sizes = plan.write_to(opts.compression, mtime, &mut bytes, Path::new("memory"))?;
    Ok(Image {
        bytes,
        uncompressed_size: sizes.uncompressed as usize,
        entries: plan.archive.len(),
        config: plan.config,
        closure: plan.closure,
        init_binary: plan.init_binary,
        firmware: plan.firmware,
        store_paths: plan.store_paths,
        notes: plan.notes,
    })
}

/// Everything decided before a byte is written: the archive's entries (host files by
/// path, read when written), the microcode segment, the configuration.
struct Plan {
    archive: cpio::ArchiveBuilder,
    /// The early microcode blobs, packed uncompressed in front of the archive.
    microcode: std::collections::BTreeMap<Vendor, Vec<u8>>,
    config: InitrdConfig,
    closure: Option<Closure>,
    init_binary: PathBuf,
    firmware: Vec<String>,
    store_paths: usize,
    notes: Vec<String>,
}

/// Bytes a [`Plan`] wrote.
struct Sizes {
    written: u64,
    uncompressed: u64,
}

impl Plan {
    /// Writes the microcode segment, then the archive through the compressor, to `out`.
    /// `path` names the output in errors.
    fn write_to(
        &self,
        compression: Compression,
        mtime: u32,
        out: &mut impl Write,
        path: &Path,
    ) -> Result<Sizes, Error> {
        let out_err = |source| Error::Output {
            path: path.to_owned(),
            source,
        };
        let early = microcode::segment(&self.microcode, mtime).unwrap_or_default();
        let mut counted = output::Counter::new(out);
        counted.write_all(&early).map_err(out_err)?;
        let len = self.archive.archive_len();
        let mut enc = compress::Encoder::new(compression, &mut counted, len).map_err(|source| {
            compress::CompressError {
                compression,
                source,
            }
        })?;
        self.archive
            .write_to(mtime, &mut enc)
            .map_err(|e| match e {
                cpio::CpioError::Output(source) => out_err(source),
                other => Error::Cpio(other),
            })?;
        enc.finish().map_err(out_err)?;
        Ok(Sizes {
            written: counted.count(),
            uncompressed: early.len() as u64 + len,
        })
    }
}

/// Decides the image: reads the small inputs (init, modules, firmware, microcode), lists the
/// host files.
fn plan_image(opts: &BuildOptions) -> Result<Plan, Error> {
    let closure = opts.closure.as_deref().map(Closure::open).transpose()?;
    if opts.kernel_modules.is_none() && !opts.modules.is_empty() {
        return Err(Error::ModulesWithoutDir);
    }
    let init_binary = match &opts.init {
        Some(p) => p.clone(),
        None => default_init_binary()?,
    };
    let init_bytes = read_static(&init_binary)?;

    let mut config = InitrdConfig::new();
    config.default_init = closure.as_ref().map(|c| c.default_init.clone());
    if opts.embed_store.is_some() {
        config.embedded_store = Some(EMBEDDED_STORE.to_owned());
    }
    let mut notes = Vec::new();
    let (modules, firmware) = plan_modules(opts, &mut config, &mut notes)?;

    let mut archive = cpio::ArchiveBuilder::new();
    for dir in LAYOUT_DIRS {
        archive.dir(dir, 0o755)?;
    }
    // The kernel opens /dev/console for /init's stdio before anything is mounted.
    archive.char_dev("dev/console", 0o600, 5, 1)?;
    archive.file("init", 0o755, init_bytes)?;
    archive.file(CONFIG_PATH, 0o644, config.to_bytes())?;
    for (path, data) in modules {
        archive.file(&path, 0o644, data)?;
    }
    let firmware_names: Vec<String> = firmware.files.keys().cloned().collect();
    for (name, data) in firmware.files {
        archive.file(&format!("{}/{name}", firmware::FIRMWARE_DIR), 0o644, data)?;
    }

    let store_paths = add_host_files(opts, &mut archive, &mut notes)?;

    let blobs = microcode::collect(&opts.microcode, opts.microcode_vendor)?;
    Ok(Plan {
        microcode: blobs,
        archive,
        config,
        closure,
        init_binary,
        firmware: firmware_names,
        store_paths,
        notes,
    })
}

/// A module's archive path and contents.
type PackedModule = (String, Vec<u8>);

/// The modules to pack (archive path, contents) in load order, recorded in `config`, and
/// their firmware.
fn plan_modules(
    opts: &BuildOptions,
    config: &mut InitrdConfig,
    notes: &mut Vec<String>,
) -> Result<(Vec<PackedModule>, firmware::Found), Error> {
    let mut modules = Vec::new();
    let Some(dir) = &opts.kernel_modules else {
        return Ok((modules, firmware::Found::default()));
    };
    let modules_dir = kmod::ModulesDir::open(dir)?;
    let requested: Vec<String> = if opts.modules.is_empty() {
        kmod::DEFAULT_MODULES
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    } else {
        opts.modules.clone()
    };
    let resolution = modules_dir.resolve(&requested)?;
    notes.extend(resolution.notes);
    let fw_dirs = if opts.firmware_dirs.is_empty() {
        firmware::default_dir(dir).into_iter().collect()
    } else {
        opts.firmware_dirs.clone()
    };
    let mut firmware = firmware::collect(&resolution.modules, &fw_dirs)?;
    notes.append(&mut firmware.notes);
    config.kernel_version = Some(resolution.kernel_version.clone());
    for m in resolution.modules {
        let path = format!("/lib/modules/{}/{}", resolution.kernel_version, m.rel_path);
        config.modules.push(ModuleSpec {
            name: m.name,
            path: path.clone(),
            params: String::new(),
        });
        modules.push((path, m.data));
    }
    Ok((modules, firmware))
}

/// Lists `--include` and `--embed-store` host files into the archive (their contents are
/// read when it is written); returns the number of store paths.
fn add_host_files(
    opts: &BuildOptions,
    archive: &mut cpio::ArchiveBuilder,
    notes: &mut Vec<String>,
) -> Result<usize, Error> {
    let mut store_paths = 0;
    let mut collector = include::Collector::new(archive);
    collector.add_includes(&opts.includes)?;
    if let Some(embed) = &opts.embed_store {
        let (paths, store_notes) = store::resolve(embed, opts.closure.as_deref())?;
        notes.extend(store_notes);
        store_paths = paths.len();
        for p in paths {
            collector
                .add_verbatim(
                    &p.host,
                    &format!("{EMBEDDED_STORE}/{}", p.name),
                    include::Deps::Ignore,
                )
                .map_err(Error::StoreInclude)?;
        }
    }
    notes.append(&mut collector.notes);
    Ok(store_paths)
}

/// Reads a file and checks it is a static executable.
fn read_static(path: &Path) -> Result<Vec<u8>, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::InitUnreadable {
        path: path.to_owned(),
        source,
    })?;
    elf::check_static(&bytes).map_err(|source| Error::InitNotStatic {
        path: path.to_owned(),
        source,
    })?;
    Ok(bytes)
}

/// Where [`default_init_binary`] looks, in order.
pub fn default_init_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        // (a) Installed side by side (a package's bin/ holding both).
        out.push(dir.join("init"));
        // (b) Cargo's layout: <target>/<profile>/mkinitrd or <target>/<profile>/deps/<test>.
        let profile_dir = if dir.file_name().is_some_and(|n| n == "deps") {
            dir.parent().map(Path::to_path_buf)
        } else {
            Some(dir.clone())
        };
        if let Some(target) = profile_dir.as_deref().and_then(Path::parent) {
            out.push(target.join(GUEST_TARGET).join("release").join("init"));
        }
    }
    // (c) Set by packagers when building mkinitrd.
    if let Some(p) = option_env!("NIXBOOT_DEFAULT_INIT") {
        out.push(PathBuf::from(p));
    }
    out
}

/// The init built alongside mkinitrd: the first of [`default_init_candidates`] that is a
/// static executable. A dynamic one is skipped (a host `cargo build` puts a dynamic
/// `init` next to `mkinitrd`) and reported if nothing fits.
pub fn default_init_binary() -> Result<PathBuf, Error> {
    let mut tried = Vec::new();
    for candidate in default_init_candidates() {
        match read_static(&candidate) {
            Ok(_) => return Ok(candidate),
            Err(Error::InitUnreadable { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                tried.push(format!("{} (missing)", candidate.display()));
            }
            Err(e) => tried.push(e.to_string()),
        }
    }
    if option_env!("NIXBOOT_DEFAULT_INIT").is_none() {
        tried.push("NIXBOOT_DEFAULT_INIT (not set when mkinitrd was compiled)".to_owned());
    }
    Err(Error::NoDefaultInit { tried })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_cargo_layout() {
        let c = default_init_candidates();
        let exe = std::env::current_exe().unwrap();
        // Test binaries live in <target>/<profile>/deps.
        assert_eq!(c[0], exe.parent().unwrap().join("init"));
        let target = exe.parent().unwrap().parent().unwrap().parent().unwrap();
        assert_eq!(c[1], target.join("x86_64-unknown-linux-musl/release/init"));
    }

    #[test]
    fn default_init_error_lists_places() {
        match default_init_binary() {
            Ok(p) => {
                // Whatever was found must be static.
                elf::check_static(&std::fs::read(&p).unwrap()).unwrap();
            }
            Err(e) => {
                let text = e.to_string();
                for c in default_init_candidates() {
                    assert!(text.contains(&c.display().to_string()), "{text}");
                }
            }
        }
    }
}
