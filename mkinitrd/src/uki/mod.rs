//! `mkinitrd --uki`: a unified kernel image, one PE file that firmware boots directly
//! (and Secure Boot verifies as a whole): systemd-stub with `.osrel`, `.cmdline`,
//! `.initrd`, `.ucode` (when given) and `.linux` appended, in ukify's order and with its
//! names (`--linux`, `--initrd`, `--cmdline`, `--os-release`, `--microcode`'s section
//! `.ucode`, `--stub`), so systemd-boot and `ukify inspect` read it as one of theirs.
//! `.linux` is last so that a larger kernel moves nothing else. Everything is assembled in
//! memory and written atomically ([`crate::output`]): a bad input leaves nothing behind.

pub mod pe;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pe::{PeError, Section};

/// Debian's systemd-boot-efi; NixOS has it at `${systemd}/lib/systemd/boot/efi/`.
pub const DEFAULT_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// The sections systemd-stub reads, in the order written.
pub const SECTION_ORDER: [&str; 5] = [".osrel", ".cmdline", ".initrd", ".ucode", ".linux"];

/// Text given inline or, as ukify's `@PATH`, read from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    Inline(String),
    File(PathBuf),
}

impl std::str::FromStr for Text {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Text, Self::Err> {
        Ok(match s.strip_prefix('@') {
            Some(path) => Text::File(path.into()),
            None => Text::Inline(s.to_owned()),
        })
    }
}

/// What goes into a UKI besides what [`crate::BuildOptions`] builds.
#[derive(Debug, Clone)]
pub struct UkiOptions {
    /// The UKI to write (the rules of [`crate::output`]).
    pub output: PathBuf,
    /// systemd-stub ([`DEFAULT_STUB`] when built by the CLI).
    pub stub: PathBuf,
    /// The kernel: an x86 bzImage with an EFI stub (a PE file).
    pub linux: PathBuf,
    /// An initrd file; None: the initrd built in this run from the build options.
    pub initrd: Option<PathBuf>,
    /// None: the command line that boots the closure ([`crate::kernel_cmdline`]).
    pub cmdline: Option<Text>,
    /// None: the closure's `etc/os-release`, else a minimal one naming nixboot.
    pub os_release: Option<Text>,
    /// A microcode blob for `.ucode` (systemd-stub 256 and later load it).
    pub ucode: Option<PathBuf>,
}

/// Why a UKI cannot be made. Every one is found before anything is written.
#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("stub {path} cannot take the UKI's sections: {source}")]
    Stub { path: PathBuf, source: PeError },
    #[error("kernel {path} is not an x86 bzImage with an EFI stub (a PE file with a Linux setup header): {reason}")]
    Kernel { path: PathBuf, reason: String },
    #[error("{what} {path} is not UTF-8 text")]
    NotText { what: &'static str, path: PathBuf },
    #[error("cannot lay out the UKI: {0}")]
    Layout(PeError),
}

/// What was written.
#[derive(Debug, Clone)]
pub struct UkiReport {
    pub output: PathBuf,
    pub size: u64,
    /// Each appended section and its size in bytes, in file order.
    pub sections: Vec<(String, usize)>,
    /// The command line in `.cmdline`.
    pub cmdline: String,
    /// The stub's own version (`#### LoaderInfo: systemd-stub 252.39 ####`), when it says.
    pub stub_version: Option<String>,
    pub notes: Vec<String>,
    pub elapsed: Duration,
}

/// The checked inputs read from files.
pub struct Parts {
    pub stub: Vec<u8>,
    pub linux: Vec<u8>,
    /// The kernel's SizeOfImage: `.linux`'s size in memory.
    pub linux_size_of_image: u32,
    pub ucode: Option<Vec<u8>>,
}

/// Reads and checks the stub, the kernel and the microcode: a stub that is not a PE image
/// (or cannot take sections) and a kernel that is not a PE bzImage are refused here.
pub fn read_parts(opts: &UkiOptions) -> Result<Parts, UkiError> {
    let stub = read("stub", &opts.stub)?;
    // A dry run of the layout on an empty section: every stub problem is found now.
    pe::add_sections(&stub, &[Section::data(".linux", &[])]).map_err(|source| UkiError::Stub {
        path: opts.stub.clone(),
        source,
    })?;
    let linux = read("kernel", &opts.linux)?;
    let linux_size_of_image = check_bzimage(&linux).map_err(|reason| UkiError::Kernel {
        path: opts.linux.clone(),
        reason,
    })?;
    let ucode = opts
        .ucode
        .as_deref()
        .map(|p| read("microcode", p))
        .transpose()?;
    Ok(Parts {
        stub,
        linux,
        linux_size_of_image,
        ucode,
    })
}

/// The kernel's SizeOfImage if it is a PE file carrying the x86 boot protocol's setup
/// header (what systemd-stub hands over to); the reason otherwise.
pub fn check_bzimage(linux: &[u8]) -> Result<u32, String> {
    let header = goblin::pe::header::Header::parse(linux).map_err(|e| e.to_string())?;
    // Documentation/arch/x86/boot.rst: boot_flag 0xAA55 at 0x1FE, "HdrS" at 0x202.
    if linux.get(0x1FE..0x200) != Some(&[0x55, 0xAA]) || linux.get(0x202..0x206) != Some(b"HdrS") {
        return Err("no Linux setup header (boot_flag 0xAA55, \"HdrS\")".into());
    }
    let opt = header
        .optional_header
        .ok_or_else(|| "no PE optional header".to_string())?;
    Ok(opt.windows_fields.size_of_image)
}

/// The UKI's bytes: the stub with `.osrel`, `.cmdline`, `.initrd`, `.ucode` and `.linux`.
pub fn assemble(
    parts: &Parts,
    os_release: &[u8],
    cmdline: &str,
    initrd: &[u8],
) -> Result<Vec<u8>, UkiError> {
    let mut sections = vec![
        Section::data(".osrel", os_release),
        Section::data(".cmdline", cmdline.as_bytes()),
        Section::data(".initrd", initrd),
    ];
    if let Some(ucode) = &parts.ucode {
        sections.push(Section::data(".ucode", ucode));
    }
    sections.push(Section {
        name: ".linux",
        data: &parts.linux,
        virtual_size: parts.linux_size_of_image,
        code: true,
    });
    pe::add_sections(&parts.stub, &sections).map_err(UkiError::Layout)
}

/// `#### LoaderInfo: systemd-stub 252.39-1~deb12u2 ####` in the stub: its version.
pub fn stub_version(stub: &[u8]) -> Option<String> {
    let marker = b"LoaderInfo: systemd-stub ";
    let at = stub.windows(marker.len()).position(|w| w == marker)? + marker.len();
    let rest = &stub[at..stub.len().min(at + 64)];
    let end = rest.iter().position(|b| *b == b' ' || *b == 0)?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

/// The major version of a stub version string (`252.39-1` -> 252).
fn major(version: &str) -> Option<u32> {
    version.split(['.', '-', '~']).next()?.parse().ok()
}

/// Builds the UKI (and, unless `uki.initrd` names one, its initrd from `build`) and
/// writes it to `uki.output`.
pub fn build(build: &crate::BuildOptions, uki: &UkiOptions) -> Result<UkiReport, crate::Error> {
    let start = Instant::now();
    let parts = read_parts(uki)?;
    let mut notes = Vec::new();
    let (initrd, closure) = match &uki.initrd {
        Some(path) => (read("initrd", path)?, build_closure(build)?),
        None => {
            let image = crate::build_image(build, crate::source_date_epoch()?)?;
            notes.extend(image.notes);
            (image.bytes, image.closure)
        }
    };
    let cmdline = match &uki.cmdline {
        Some(t) => text("command line", t)?.trim_end().to_owned(),
        None => crate::kernel_cmdline(closure.as_ref()),
    };
    let os_release = match &uki.os_release {
        Some(t) => text("os-release", t)?,
        None => default_os_release(closure.as_ref()),
    };
    let stub_version = stub_version(&parts.stub);
    if parts.ucode.is_some() && stub_version.as_deref().and_then(major) < Some(256) {
        notes.push(format!(
            "systemd-stub {} ignores .ucode (256 loads it): --microcode with an initrd built here puts it in the initrd instead",
            stub_version.as_deref().unwrap_or("(unknown version)")
        ));
    }
    let bytes = assemble(&parts, os_release.as_bytes(), &cmdline, &initrd)?;
    crate::output::write_atomically(&uki.output, |w| w.write_all(&bytes)).map_err(|source| {
        crate::Error::Output {
            path: uki.output.clone(),
            source,
        }
    })?;
    let mut sections = vec![
        (".osrel".to_owned(), os_release.len()),
        (".cmdline".to_owned(), cmdline.len()),
        (".initrd".to_owned(), initrd.len()),
    ];
    if let Some(u) = &parts.ucode {
        sections.push((".ucode".to_owned(), u.len()));
    }
    sections.push((".linux".to_owned(), parts.linux.len()));
    Ok(UkiReport {
        output: uki.output.clone(),
        size: bytes.len() as u64,
        sections,
        cmdline,
        stub_version,
        notes,
        elapsed: start.elapsed(),
    })
}

/// With a given initrd the closure only decides the default command line and os-release.
fn build_closure(build: &crate::BuildOptions) -> Result<Option<crate::Closure>, crate::Error> {
    Ok(build
        .closure
        .as_deref()
        .map(crate::Closure::open)
        .transpose()?)
}

/// The closure's `etc/os-release` (a NixOS toplevel has one), else a minimal one: never
/// the build host's, which would make the image depend on where it was built.
fn default_os_release(closure: Option<&crate::Closure>) -> String {
    closure
        .and_then(|c| std::fs::read_to_string(c.path.join("etc/os-release")).ok())
        .unwrap_or_else(|| "NAME=nixboot\nID=nixboot\nPRETTY_NAME=\"nixboot\"\n".to_owned())
}

fn text(what: &'static str, t: &Text) -> Result<String, UkiError> {
    match t {
        Text::Inline(s) => Ok(s.clone()),
        Text::File(p) => String::from_utf8(read(what, p)?).map_err(|_| UkiError::NotText {
            what,
            path: p.clone(),
        }),
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, UkiError> {
    std::fs::read(path).map_err(|source| UkiError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests;
