//! The `mkinitrd` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use mkinitrd::{BuildOptions, Closure, Compression};

/// Packs a static init, its configuration and kernel modules into a reproducible initramfs.
#[derive(Parser, Debug)]
#[command(
    name = "mkinitrd",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    build: BuildArgs,
}

#[derive(Args, Debug)]
struct BuildArgs {
    /// The system to boot: a NixOS toplevel (./result) or any directory with an executable `init`.
    #[arg(long, value_name = "RESULT", required = true)]
    closure: Option<PathBuf>,
    /// The initramfs to write (replaced atomically).
    #[arg(
        short,
        long,
        value_name = "FILE",
        required_unless_present = "print_cmdline"
    )]
    output: Option<PathBuf>,
    /// One kernel's lib/modules/<version> directory; packs virtio_pci and virtiofs unless --module is given.
    #[arg(long, value_name = "DIR")]
    kernel_modules: Option<PathBuf>,
    /// A kernel module name or alias to pack with its dependencies (repeatable).
    #[arg(long = "module", value_name = "NAME", requires = "kernel_modules")]
    modules: Vec<String>,
    /// The static init to pack as /init [default: the init built alongside mkinitrd].
    #[arg(long, value_name = "PATH")]
    init: Option<PathBuf>,
    /// Compression of the archive.
    #[arg(long, value_name = "METHOD", default_value = "zstd", value_parser = parse_compression)]
    compress: Compression,
    /// Print the kernel command line that boots the closure with this initrd.
    #[arg(long)]
    print_cmdline: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List every segment's entries and check the kernel's unpacking rules.
    Inspect {
        /// The initramfs file.
        file: PathBuf,
    },
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    s.parse()
        .map_err(|e: mkinitrd::compress::UnknownCompression| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Inspect { file }) => inspect(&file),
        None => build(cli.build),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mkinitrd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    // clap enforces --closure outside subcommands.
    let closure = args.closure.context("--closure is required")?;
    let Some(output) = args.output else {
        // --print-cmdline alone: nothing to build.
        println!("{}", Closure::open(&closure)?.kernel_cmdline());
        return Ok(ExitCode::SUCCESS);
    };
    let opts = BuildOptions {
        closure,
        output,
        kernel_modules: args.kernel_modules,
        modules: args.modules,
        init: args.init,
        compression: args.compress,
    };
    let report = mkinitrd::build(&opts)?;
    for note in &report.notes {
        eprintln!("mkinitrd: note: {note}");
    }
    if args.print_cmdline {
        println!("{}", report.kernel_cmdline);
    }
    eprintln!(
        "mkinitrd: wrote {} ({} bytes, {} modules{}, {} ms)",
        report.output.display(),
        report.size,
        report.modules.len(),
        report
            .kernel_version
            .as_deref()
            .map(|v| format!(" for {v}"))
            .unwrap_or_default(),
        report.elapsed.as_millis()
    );
    Ok(ExitCode::SUCCESS)
}

fn inspect(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let report = mkinitrd::inspect::inspect(&bytes)
        .with_context(|| format!("{} is not a valid initramfs", file.display()))?;
    print!("{report}");
    if report.violations.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for v in &report.violations {
        eprintln!("mkinitrd: violation: {v}");
    }
    Ok(ExitCode::FAILURE)
}
