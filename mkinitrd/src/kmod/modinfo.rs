//! The `.modinfo` ELF section of a kernel module: NUL-separated `key=value` strings.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use goblin::container::{Container, Ctx};
use goblin::elf::{Elf, SectionHeader};

use super::normalize;

/// Why `.modinfo` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ModinfoError {
    #[error("not an ELF object: {0}")]
    NotElf(String),
    #[error("no .modinfo section (not a kernel module?)")]
    Missing,
    #[error("section table or .modinfo lies outside the file")]
    OutOfBounds,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The fields of `.modinfo` that decide what to pack and in which order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// `name=` (normalised), present in modules of kernels since 4.x.
    pub name: Option<String>,
    /// `depends=`: hard dependencies, normalised names.
    pub depends: Vec<String>,
    /// `alias=`: patterns (fnmatch style) this module answers to.
    pub aliases: Vec<String>,
    /// `vermagic=`: the kernel release first, then build flags.
    pub vermagic: Option<String>,
    /// `softdep=`: optional modules to load before / after this one.
    pub softdep: SoftDeps,
    /// `firmware=`: files the module may request (not packed yet).
    pub firmware: Vec<String>,
}

/// Soft dependencies (`softdep=pre: a b post: c`), normalised names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SoftDeps {
    pub pre: Vec<String>,
    pub post: Vec<String>,
}

impl SoftDeps {
    /// Parses `pre: a b post: c` (either part optional, in any order, repeatable).
    pub fn parse(text: &str) -> SoftDeps {
        let mut out = SoftDeps::default();
        // Words before any `pre:`/`post:` are ignored, as modprobe does.
        let mut target: Option<&mut Vec<String>> = None;
        for word in text.split_whitespace() {
            match word {
                "pre:" => target = Some(&mut out.pre),
                "post:" => target = Some(&mut out.post),
                w => {
                    if let Some(t) = target.as_deref_mut() {
                        t.push(normalize(w));
                    }
                }
            }
        }
        out
    }

    pub fn extend(&mut self, other: SoftDeps) {
        self.pre.extend(other.pre);
        self.post.extend(other.post);
    }
}

impl ModInfo {
    /// Parses the raw section.
    pub fn parse(section: &[u8]) -> ModInfo {
        let mut info = ModInfo::default();
        for field in section.split(|b| *b == 0) {
            let field = String::from_utf8_lossy(field);
            let Some((key, value)) = field.split_once('=') else {
                continue; // alignment padding between strings
            };
            match key {
                "name" => info.name = Some(normalize(value)),
                "depends" => info
                    .depends
                    .extend(value.split(',').filter(|s| !s.is_empty()).map(normalize)),
                "alias" => info.aliases.push(value.to_owned()),
                "vermagic" => info.vermagic = Some(value.to_owned()),
                "softdep" => info.softdep.extend(SoftDeps::parse(value)),
                "firmware" => info.firmware.push(value.to_owned()),
                _ => {}
            }
        }
        info
    }

    /// The kernel release the module was built for: `vermagic`'s first word.
    pub fn kernel_release(&self) -> Option<&str> {
        self.vermagic.as_deref()?.split_whitespace().next()
    }
}

/// Reads `.modinfo` from a module already in memory.
pub fn from_bytes(elf: &[u8]) -> Result<ModInfo, ModinfoError> {
    let section = section(&mut |offset, len| {
        let start = usize::try_from(offset).map_err(|_| ModinfoError::OutOfBounds)?;
        let end = start.checked_add(len).ok_or(ModinfoError::OutOfBounds)?;
        elf.get(start..end)
            .map(<[u8]>::to_vec)
            .ok_or(ModinfoError::OutOfBounds)
    })?;
    Ok(ModInfo::parse(&section))
}

/// Reads `.modinfo` from a module file with a few small reads (the alias scan goes over
/// every module of a kernel, about 100 MB, so reading whole files would dominate).
pub fn from_file(path: &Path) -> Result<ModInfo, ModinfoError> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let section = section(&mut |offset, len| {
        let end = offset
            .checked_add(len as u64)
            .ok_or(ModinfoError::OutOfBounds)?;
        if end > file_len {
            return Err(ModinfoError::OutOfBounds);
        }
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    })?;
    Ok(ModInfo::parse(&section))
}

type ReadAt<'a> = dyn FnMut(u64, usize) -> Result<Vec<u8>, ModinfoError> + 'a;

/// Finds `.modinfo` through the section header table; `read` returns `len` bytes at an
/// offset or fails when they are outside the file.
fn section(read: &mut ReadAt<'_>) -> Result<Vec<u8>, ModinfoError> {
    let head = read(0, 64).or_else(|_| read(0, 52))?;
    let header = Elf::parse_header(&head).map_err(|e| ModinfoError::NotElf(e.to_string()))?;
    let container = header
        .container()
        .map_err(|e| ModinfoError::NotElf(e.to_string()))?;
    let endian = header
        .endianness()
        .map_err(|e| ModinfoError::NotElf(e.to_string()))?;
    let ctx = Ctx::new(container, endian);
    let entsize = match container {
        Container::Big => 64,
        Container::Little => 40,
    };
    let count = usize::from(header.e_shnum);
    // e_shoff 0 means no section table; count 0 with a table means more than 0xff00
    // sections, which no module has.
    if count == 0 || header.e_shoff == 0 {
        return Err(ModinfoError::Missing);
    }
    let table = read(header.e_shoff, count * entsize)?;
    // parse_from: offsets are relative to `table`, not to the file.
    let sections = SectionHeader::parse_from(&table, 0, count, ctx)
        .map_err(|e| ModinfoError::NotElf(e.to_string()))?;
    let strtab_header = sections
        .get(usize::from(header.e_shstrndx))
        .ok_or(ModinfoError::OutOfBounds)?;
    let strtab_len =
        usize::try_from(strtab_header.sh_size).map_err(|_| ModinfoError::OutOfBounds)?;
    let strtab = read(strtab_header.sh_offset, strtab_len)?;
    // Compared as bytes: goblin's Strtab refuses a table with any non-UTF-8 name.
    let modinfo = sections
        .iter()
        .find(|s| {
            strtab
                .get(s.sh_name..)
                .is_some_and(|t| t.starts_with(b".modinfo\0"))
        })
        .ok_or(ModinfoError::Missing)?;
    let len = usize::try_from(modinfo.sh_size).map_err(|_| ModinfoError::OutOfBounds)?;
    read(modinfo.sh_offset, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::fake_module;

    #[test]
    fn fields_are_parsed_and_normalised() {
        let m = fake_module(&[
            "alias=fs-virtiofs",
            "depends=fuse,virtio-ring,",
            "alias=virtio:d0000001Av*",
            "softdep=pre: crc32c post: foo-bar",
            "firmware=x/y.bin",
            "name=virtiofs",
            "vermagic=6.1.0-56-cloud-amd64 SMP preempt mod_unload modversions ",
        ]);
        let info = from_bytes(&m).unwrap();
        assert_eq!(info.name.as_deref(), Some("virtiofs"));
        assert_eq!(info.depends, ["fuse", "virtio_ring"]);
        assert_eq!(info.aliases, ["fs-virtiofs", "virtio:d0000001Av*"]);
        assert_eq!(info.softdep.pre, ["crc32c"]);
        assert_eq!(info.softdep.post, ["foo_bar"]);
        assert_eq!(info.firmware, ["x/y.bin"]);
        assert_eq!(info.kernel_release(), Some("6.1.0-56-cloud-amd64"));
    }

    #[test]
    fn empty_depends_and_padding() {
        let info = ModInfo::parse(b"depends=\0\0\0\0vermagic=1 SMP\0");
        assert!(info.depends.is_empty());
        assert_eq!(info.kernel_release(), Some("1"));
    }

    #[test]
    fn softdep_forms() {
        let s = SoftDeps::parse("post: a pre: b c post: d");
        assert_eq!(s.pre, ["b", "c"]);
        assert_eq!(s.post, ["a", "d"]);
        assert_eq!(SoftDeps::parse("junk"), SoftDeps::default());
    }

    #[test]
    fn file_and_bytes_agree_and_errors_are_typed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.ko");
        let m = fake_module(&["depends=a", "vermagic=1.2.3 SMP"]);
        std::fs::write(&path, &m).unwrap();
        assert_eq!(from_file(&path).unwrap(), from_bytes(&m).unwrap());
        assert!(matches!(
            from_bytes(b"not elf at all, long enough to hold a header................"),
            Err(ModinfoError::NotElf(_))
        ));
        let no_modinfo = crate::testutil::elf_object(&[(".text", &[0xc3])]);
        assert!(matches!(
            from_bytes(&no_modinfo),
            Err(ModinfoError::Missing)
        ));
        assert!(matches!(
            from_bytes(&m[..m.len() - 10]),
            Err(ModinfoError::OutOfBounds)
        ));
    }

    #[test]
    fn real_module_matches_modinfo_tool() {
        let Some(dir) = crate::kmod::tests::real_modules_dir() else {
            return;
        };
        let path = dir.join("kernel/fs/fuse/virtiofs.ko");
        let info = from_file(&path).unwrap();
        let mut deps = info.depends.clone();
        deps.sort();
        assert_eq!(deps, ["fuse", "virtio", "virtio_ring"]);
        assert!(info.aliases.iter().any(|a| a == "fs-virtiofs"));
        let release = dir.file_name().unwrap().to_str().unwrap();
        assert_eq!(info.kernel_release(), Some(release));
        // Cross-check with kmod's modinfo when installed.
        if let Ok(out) = std::process::Command::new("modinfo")
            .args(["-F", "depends"])
            .arg(&path)
            .output()
        {
            let text = String::from_utf8_lossy(&out.stdout);
            let mut oracle: Vec<&str> = text.trim().split(',').collect();
            oracle.sort();
            assert_eq!(deps, oracle);
        }
    }
}
