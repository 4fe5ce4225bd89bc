//! The `mkinitrd` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use mkinitrd::{BuildOptions, Closure, Compression, EmbedStore, Include, Vendor};

/// Packs a static init, its configuration, kernel modules and host files into a
/// reproducible initramfs.
#[derive(Parser, Debug)]
#[command(
    name = "mkinitrd",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = EXIT_STATUS
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    build: BuildArgs,
}

#[derive(Args, Debug)]
struct BuildArgs {
    /// The system to boot: a NixOS toplevel (./result) or any directory with an executable
    /// `init`, whose init becomes the default. Without it the kernel command line must carry init=.
    #[arg(long, value_name = "RESULT")]
    closure: Option<PathBuf>,
    /// The initramfs to write. A regular file or a new path is replaced atomically (a
    /// temporary file beside it, then a rename); - is standard output; a character device or
    /// FIFO (/dev/null, a named pipe) is written in place; a symlink is followed and these
    /// rules apply to its target (the link stays); a directory, block device or socket is
    /// refused. Not needed with --print-cmdline alone.
    #[arg(
        short,
        long,
        value_name = "FILE",
        required_unless_present_any = ["print_cmdline", "uki"],
        conflicts_with = "uki"
    )]
    output: Option<PathBuf>,
    /// One kernel's lib/modules/<version> directory; packs virtio_pci and virtiofs unless --module is given.
    #[arg(long, value_name = "DIR")]
    kernel_modules: Option<PathBuf>,
    /// A kernel module name or alias to pack with its dependencies (repeatable).
    #[arg(long = "module", value_name = "NAME", requires = "kernel_modules")]
    modules: Vec<String>,
    /// Where the modules' firmware is looked for (repeatable) [default: the modules directory's ../../firmware].
    #[arg(long = "firmware-dir", value_name = "DIR", requires = "kernel_modules")]
    firmware_dirs: Vec<PathBuf>,
    /// A host file, directory or program to pack, at its own path or at DST; programs bring
    /// their interpreter and libraries (repeatable).
    #[arg(long = "include", value_name = "SRC[:DST]", value_parser = parse_include)]
    includes: Vec<Include>,
    /// Early microcode: a blob or a directory of blobs (intel-ucode, amd-ucode), packed
    /// uncompressed in front of the archive (repeatable).
    #[arg(long, value_name = "FILE|DIR")]
    microcode: Vec<PathBuf>,
    /// The CPU vendor of every --microcode input [default: from their names].
    #[arg(long, value_name = "intel|amd", requires = "microcode")]
    microcode_vendor: Option<Vendor>,
    /// Pack the closure's store paths under /nix/store: a machine boots with no store share and no disk.
    #[arg(long)]
    embed_store: bool,
    /// With --embed-store: the store paths to pack, one per line (closureInfo's store-paths)
    /// [default: $NIXBOOT_CLOSURE_INFO/store-paths when that variable is set].
    #[arg(long, value_name = "FILE", requires = "embed_store")]
    store_paths: Option<PathBuf>,
    /// With --embed-store: the host directory holding the store paths [default: /nix/store];
    /// without --store-paths, every entry of it is packed.
    #[arg(long, value_name = "DIR", requires = "embed_store")]
    store_dir: Option<PathBuf>,
    /// The static init to pack as /init [default: the init built alongside mkinitrd].
    #[arg(long, value_name = "PATH")]
    init: Option<PathBuf>,
    /// Compression of the archive: zstd, gzip, xz, lz4 or none.
    #[arg(long, value_name = "METHOD", default_value = "zstd", value_parser = parse_compression)]
    compress: Compression,
    /// Print the kernel command line that boots the closure with this initrd (on standard
    /// output, so not with -o -); with --uki, the UKI's .cmdline.
    #[arg(long)]
    print_cmdline: bool,
    #[command(flatten)]
    uki: UkiArgs,
}

/// A unified kernel image instead of a bare initramfs; the names are ukify's.
#[derive(Args, Debug)]
#[command(next_help_heading = "Unified kernel image (systemd-stub)")]
struct UkiArgs {
    /// Write a UKI to FILE instead of an initramfs: systemd-stub with .osrel, .cmdline,
    /// .initrd and .linux (and .ucode) sections. The initrd is the one the other options
    /// build, unless --initrd names one. FILE follows --output's rules.
    #[arg(id = "uki", long = "uki", value_name = "FILE", requires = "linux")]
    file: Option<PathBuf>,
    /// The kernel for .linux: an x86 bzImage with an EFI stub (vmlinuz).
    #[arg(long, value_name = "FILE", requires = "uki")]
    linux: Option<PathBuf>,
    /// An initrd file for .initrd instead of building one here.
    #[arg(long, value_name = "FILE", requires = "uki", conflicts_with_all = [
        "kernel_modules", "includes", "microcode", "embed_store", "init", "compress"
    ])]
    initrd: Option<PathBuf>,
    /// The kernel command line for .cmdline, or @FILE [default: the line that boots the
    /// closure, as --print-cmdline prints it].
    #[arg(long, value_name = "TEXT|@FILE", requires = "uki")]
    cmdline: Option<mkinitrd::uki::Text>,
    /// The os-release for .osrel, or @FILE [default: the closure's etc/os-release, else
    /// NAME=nixboot].
    #[arg(long, value_name = "TEXT|@FILE", requires = "uki")]
    os_release: Option<mkinitrd::uki::Text>,
    /// A microcode blob for .ucode (ukify's --microcode; systemd-stub >= 256 loads it;
    /// --microcode packs microcode into the initrd instead, which any stub boots).
    #[arg(long, value_name = "FILE", requires = "uki")]
    ucode: Option<PathBuf>,
    /// systemd-stub, unsigned (systemd-boot-efi's linuxx64.efi.stub).
    #[arg(long, value_name = "FILE", requires = "uki", default_value = mkinitrd::uki::DEFAULT_STUB)]
    stub: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List every segment's entries and check the kernel's unpacking rules; --extract unpacks.
    Inspect {
        /// Unpack every segment into DIR (created if missing; never outside it; an existing
        /// entry is replaced, never written through; device nodes only as root).
        #[arg(long, value_name = "DIR")]
        extract: Option<PathBuf>,
        /// The initramfs file to read.
        file: PathBuf,
    },
    /// Writes the closure's store as a read-only erofs image with a dm-verity hash tree
    /// appended (one disk image); prints the root hash on standard output.
    Verity(VerityArgs),
    /// Checks an image written by `mkinitrd verity` against a root hash (exit 1 on a mismatch).
    VerityCheck {
        /// The root hash (64 hex digits) the image must have.
        #[arg(long, value_name = "HEX")]
        root_hash: String,
        /// Where the verity superblock is [default: found after the data].
        #[arg(long, value_name = "BYTES")]
        hash_offset: Option<u64>,
        /// The image to check.
        image: PathBuf,
    },
}

#[derive(Args, Debug)]
struct VerityArgs {
    /// The system whose closure to pack (checked to be among the store paths).
    #[arg(long, value_name = "RESULT")]
    closure: Option<PathBuf>,
    /// The store paths, one per line (closureInfo's store-paths) [default:
    /// $NIXBOOT_CLOSURE_INFO/store-paths when set].
    #[arg(long, value_name = "FILE")]
    store_paths: Option<PathBuf>,
    /// The host directory holding the store paths [default: /nix/store]; without
    /// --store-paths, every entry of it is packed.
    #[arg(long, value_name = "DIR")]
    store_dir: Option<PathBuf>,
    /// The image to write (replaced atomically).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// The salt in hex [default: the SHA-256 of the erofs image].
    #[arg(long, value_name = "HEX", value_parser = parse_hex)]
    salt: Option<Salt>,
    /// The mkfs.erofs to run.
    #[arg(long, value_name = "PATH", default_value = "mkfs.erofs")]
    mkfs_erofs: PathBuf,
}

/// The exit codes, said in --help.
const EXIT_STATUS: &str = "Exit status: 0 on success; 1 when the build or inspection fails (or inspect finds rule violations), with one line naming the path and the cause (for --uki also: a stub that is not an unsigned PE image, a kernel that is not a PE bzImage), and nothing written; 2 for usage errors (unknown or malformed options, an option without the one it needs such as --module without --kernel-modules or --uki without --linux, --print-cmdline with -o -).";

/// With --embed-store and no --store-paths: a closureInfo directory whose `store-paths` is used.
const CLOSURE_INFO_ENV: &str = "NIXBOOT_CLOSURE_INFO";

fn parse_compression(s: &str) -> Result<Compression, String> {
    s.parse()
        .map_err(|e: mkinitrd::compress::UnknownCompression| e.to_string())
}

fn parse_include(s: &str) -> Result<Include, String> {
    s.parse()
        .map_err(|e: mkinitrd::include::BadInclude| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.build.print_cmdline && cli.build.output.as_deref() == Some(Path::new("-")) {
        // Usage error: exit 2 like clap's own.
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--print-cmdline prints on standard output, which -o - already fills with the image",
            )
            .exit();
    }
    let result = match cli.command {
        Some(Command::Inspect { extract, file }) => inspect(&file, extract.as_deref()),
        Some(Command::Verity(args)) => verity(args),
        Some(Command::VerityCheck {
            root_hash,
            hash_offset,
            image,
        }) => verity_check(&root_hash, hash_offset, &image),
        None => build(cli.build),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mkinitrd: error: {}", render(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each said once: the library's messages already
/// quote their source (`cannot read X: <io error>`), so a cause whose text is in the line
/// already is not repeated.
fn render(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

/// `--salt`'s bytes (a newtype: clap reads a bare `Vec` as a list of values).
#[derive(Clone, Debug)]
struct Salt(Vec<u8>);

fn parse_hex(s: &str) -> Result<Salt, String> {
    if s.len() & 1 == 1 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("{s:?} is not an even number of hex digits"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()
        .map(Salt)
}

fn verity(args: VerityArgs) -> anyhow::Result<ExitCode> {
    let opts = mkinitrd::verity::VerityOptions {
        store: EmbedStore {
            store_paths: args.store_paths.or_else(|| {
                std::env::var_os(CLOSURE_INFO_ENV)
                    .filter(|v| !v.is_empty())
                    .map(|d| PathBuf::from(d).join("store-paths"))
            }),
            store_dir: args.store_dir,
        },
        closure: args.closure,
        output: args.output,
        salt: args.salt.map(|s| s.0),
        timestamp: source_date_epoch()?,
        mkfs_erofs: args.mkfs_erofs,
    };
    let image = mkinitrd::verity::build(&opts)?;
    let hex = nixboot_protocol::verity::hex;
    println!("{}", hex(&image.root_hash));
    eprintln!(
        "mkinitrd: wrote {} ({} bytes, {} store paths, {} data blocks, hash offset {}, salt {}); \
         attach it with: {}",
        opts.output.display(),
        image.size,
        image.store_paths,
        image.data_blocks,
        image.hash_offset,
        hex(&image.salt),
        image.cmdline("PARTUUID=...|LABEL=...|/dev/vdX")
    );
    Ok(ExitCode::SUCCESS)
}

/// SOURCE_DATE_EPOCH, the reproducible-builds convention, else 0.
fn source_date_epoch() -> anyhow::Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        Err(_) => Ok(0),
    }
}

fn verity_check(root_hash: &str, offset: Option<u64>, image: &Path) -> anyhow::Result<ExitCode> {
    let Some(root) = nixboot_protocol::verity::parse_root_hash(root_hash) else {
        anyhow::bail!("--root-hash {root_hash:?} is not 64 hex digits");
    };
    let c = mkinitrd::verity::check(image, &root, offset)?;
    eprintln!(
        "mkinitrd: {} matches its root hash ({} data blocks, hash offset {})",
        image.display(),
        c.superblock.data_blocks,
        c.hash_offset
    );
    Ok(ExitCode::SUCCESS)
}

fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let embed = args.embed_store.then(|| EmbedStore {
        // A Nix build hands a closureInfo over in this variable (nixos/modules/baremetal).
        store_paths: args.store_paths.clone().or_else(|| {
            std::env::var_os(CLOSURE_INFO_ENV)
                .filter(|v| !v.is_empty())
                .map(|d| PathBuf::from(d).join("store-paths"))
        }),
        store_dir: args.store_dir.clone(),
    });
    if let Some(uki) = &args.uki.file {
        return build_uki(&args, uki, embed);
    }
    let Some(output) = args.output.clone() else {
        // --print-cmdline alone: nothing to build.
        let closure = args.closure.as_deref().map(Closure::open).transpose()?;
        if closure.is_none() {
            eprintln!("mkinitrd: note: no --closure: add init=/nix/store/...-nixos-system-.../init to this line");
        }
        println!("{}", mkinitrd::kernel_cmdline(closure.as_ref()));
        return Ok(ExitCode::SUCCESS);
    };
    let report = mkinitrd::build(&build_options(&args, &output, embed))?;
    for note in &report.notes {
        eprintln!("mkinitrd: note: {note}");
    }
    if report.default_init.is_none() {
        eprintln!("mkinitrd: note: no --closure, so no default init: the kernel command line must carry init=");
    }
    if args.print_cmdline {
        println!("{}", report.kernel_cmdline);
    }
    let mut extra = String::new();
    if let Some(v) = &report.kernel_version {
        extra.push_str(&format!(" for {v}"));
    }
    if !report.firmware.is_empty() {
        extra.push_str(&format!(", {} firmware files", report.firmware.len()));
    }
    if report.store_paths > 0 {
        extra.push_str(&format!(", {} store paths", report.store_paths));
    }
    if report.hard_link_savings > 0 {
        extra.push_str(&format!(
            ", {} bytes saved by hard links",
            report.hard_link_savings
        ));
    }
    let target = if report.output == Path::new("-") {
        "standard output".to_owned()
    } else {
        report.output.display().to_string()
    };
    eprintln!(
        "mkinitrd: wrote {target} ({} bytes, {} modules{extra}, {} ms)",
        report.size,
        report.modules.len(),
        report.elapsed.as_millis()
    );
    Ok(ExitCode::SUCCESS)
}

fn build_options(args: &BuildArgs, output: &Path, embed: Option<EmbedStore>) -> BuildOptions {
    BuildOptions {
        closure: args.closure.clone(),
        output: output.to_owned(),
        kernel_modules: args.kernel_modules.clone(),
        modules: args.modules.clone(),
        firmware_dirs: args.firmware_dirs.clone(),
        init: args.init.clone(),
        compression: args.compress,
        includes: args.includes.clone(),
        microcode: args.microcode.clone(),
        microcode_vendor: args.microcode_vendor,
        embed_store: embed,
    }
}

/// --uki: the initrd in memory (or --initrd's), wrapped with the kernel into one PE file.
fn build_uki(
    args: &BuildArgs,
    output: &Path,
    embed: Option<EmbedStore>,
) -> anyhow::Result<ExitCode> {
    let u = &args.uki;
    let uki = mkinitrd::uki::UkiOptions {
        output: output.to_owned(),
        stub: u.stub.clone(),
        // clap: --uki requires --linux.
        linux: u.linux.clone().unwrap_or_default(),
        initrd: u.initrd.clone(),
        cmdline: u.cmdline.clone(),
        os_release: u.os_release.clone(),
        ucode: u.ucode.clone(),
    };
    let report = mkinitrd::uki::build(&build_options(args, output, embed), &uki)?;
    for note in &report.notes {
        eprintln!("mkinitrd: note: {note}");
    }
    if args.print_cmdline {
        println!("{}", report.cmdline);
    }
    let sections: Vec<String> = report
        .sections
        .iter()
        .map(|(name, size)| format!("{name} {size}"))
        .collect();
    eprintln!(
        "mkinitrd: wrote UKI {} ({} bytes: systemd-stub {} + {}; {} ms)",
        report.output.display(),
        report.size,
        report
            .stub_version
            .as_deref()
            .unwrap_or("(version unknown)"),
        sections.join(", "),
        report.elapsed.as_millis()
    );
    Ok(ExitCode::SUCCESS)
}

fn inspect(file: &Path, extract: Option<&Path>) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let report = mkinitrd::inspect::inspect(&bytes)
        .with_context(|| format!("{} is not a valid initramfs", file.display()))?;
    match extract {
        Some(dir) => {
            let r = mkinitrd::extract::extract(&report.segments, dir)?;
            for note in &r.notes {
                eprintln!("mkinitrd: note: {note}");
            }
            eprintln!(
                "mkinitrd: extracted {} entries of {} segments into {}",
                r.written,
                report.segments.len(),
                dir.display()
            );
        }
        None => print!("{report}"),
    }
    if report.violations.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for v in &report.violations {
        eprintln!("mkinitrd: violation: {v}");
    }
    Ok(ExitCode::FAILURE)
}
