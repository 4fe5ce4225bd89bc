//! The early microcode segment: a first, uncompressed archive holding
//! `kernel/x86/microcode/GenuineIntel.bin` and/or `AuthenticAMD.bin`, which the kernel's
//! early loader finds before anything is unpacked (Documentation/arch/x86/microcode.rst).
//!
//! Inputs are files or directories (`/lib/firmware/intel-ucode`, `/lib/firmware/amd-ucode`,
//! or one blob). Each input's vendor comes from `--microcode-vendor` or else from its name
//! (`intel` / `amd`, any case, as in `intel-ucode`, `GenuineIntel.bin`, `amd-ucode`,
//! `microcode_amd_fam17h.bin`). All blobs of one vendor are concatenated in byte order of
//! their paths (as dracut concatenates a directory), so the argument order does not matter.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::cpio::ArchiveBuilder;

/// A CPU vendor with an early microcode file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Vendor {
    Intel,
    Amd,
}

impl Vendor {
    /// Where the early loader looks for this vendor's blob.
    pub fn archive_path(self) -> &'static str {
        match self {
            Vendor::Intel => "kernel/x86/microcode/GenuineIntel.bin",
            Vendor::Amd => "kernel/x86/microcode/AuthenticAMD.bin",
        }
    }

    /// The vendor a file or directory name points to, if exactly one.
    pub fn from_name(path: &Path) -> Option<Vendor> {
        let name = path.file_name()?.to_string_lossy().to_lowercase();
        match (name.contains("intel"), name.contains("amd")) {
            (true, false) => Some(Vendor::Intel),
            (false, true) => Some(Vendor::Amd),
            _ => None,
        }
    }
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Vendor::Intel => "intel",
            Vendor::Amd => "amd",
        })
    }
}

impl FromStr for Vendor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "intel" | "genuineintel" => Ok(Vendor::Intel),
            "amd" | "authenticamd" => Ok(Vendor::Amd),
            _ => Err(format!("unknown microcode vendor {s:?} (intel or amd)")),
        }
    }
}

/// Why the microcode segment could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MicrocodeError {
    #[error("cannot read microcode {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot tell the CPU vendor of microcode {path} from its name: pass --microcode-vendor intel|amd")]
    UnknownVendor { path: PathBuf },
    #[error("microcode directory {path} holds no files")]
    Empty { path: PathBuf },
}

/// The blobs per vendor, concatenated.
pub fn collect(
    inputs: &[PathBuf],
    vendor: Option<Vendor>,
) -> Result<BTreeMap<Vendor, Vec<u8>>, MicrocodeError> {
    let mut files: BTreeMap<Vendor, Vec<PathBuf>> = BTreeMap::new();
    for input in inputs {
        let v = vendor.or_else(|| Vendor::from_name(input)).ok_or_else(|| {
            MicrocodeError::UnknownVendor {
                path: input.clone(),
            }
        })?;
        let read = |source| MicrocodeError::Read {
            path: input.clone(),
            source,
        };
        let meta = fs::metadata(input).map_err(read)?;
        let list = files.entry(v).or_default();
        if meta.is_dir() {
            let before = list.len();
            walk(input, list)?;
            if list.len() == before {
                return Err(MicrocodeError::Empty {
                    path: input.clone(),
                });
            }
        } else {
            list.push(input.clone());
        }
    }
    let mut out = BTreeMap::new();
    for (v, mut list) in files {
        list.sort_by(|a, b| a.as_os_str().cmp(b.as_os_str()));
        list.dedup();
        let mut blob = Vec::new();
        for path in list {
            let data = fs::read(&path).map_err(|source| MicrocodeError::Read { path, source })?;
            blob.extend_from_slice(&data);
        }
        out.insert(v, blob);
    }
    Ok(out)
}

/// Regular files below `dir` (following symlinks, as linux-firmware's links are meant).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), MicrocodeError> {
    let read = |source| MicrocodeError::Read {
        path: dir.to_owned(),
        source,
    };
    for entry in fs::read_dir(dir).map_err(read)? {
        let path = entry.map_err(read)?.path();
        let meta = fs::metadata(&path).map_err(|source| MicrocodeError::Read {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            walk(&path, out)?;
        } else if meta.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// The early archive (plain newc, a multiple of 4 bytes long so that the next segment
/// starts aligned), or None without blobs.
pub fn segment(blobs: &BTreeMap<Vendor, Vec<u8>>, mtime: u32) -> Option<Vec<u8>> {
    if blobs.is_empty() {
        return None;
    }
    let mut b = ArchiveBuilder::new();
    for (v, blob) in blobs {
        // Paths are fixed and valid; a blob over 4 GiB is not microcode.
        b.file(v.archive_path(), 0o644, blob.clone()).ok()?;
    }
    Some(b.write(mtime))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio;

    #[test]
    fn vendor_from_names_and_flag() {
        for (name, v) in [
            ("intel-ucode", Some(Vendor::Intel)),
            ("GenuineIntel.bin", Some(Vendor::Intel)),
            ("amd-ucode", Some(Vendor::Amd)),
            ("microcode_amd_fam17h.bin", Some(Vendor::Amd)),
            ("06-55-04", None),
            ("intel-and-amd", None),
        ] {
            assert_eq!(Vendor::from_name(Path::new(name)), v, "{name}");
        }
        assert_eq!("AMD".parse::<Vendor>().unwrap(), Vendor::Amd);
        assert!("via".parse::<Vendor>().is_err());
    }

    #[test]
    fn directories_concatenate_in_path_order_and_segment_is_plain() {
        let tmp = tempfile::tempdir().unwrap();
        let intel = tmp.path().join("intel-ucode");
        fs::create_dir(&intel).unwrap();
        fs::write(intel.join("06-9e-0a"), b"BBBB").unwrap();
        fs::write(intel.join("06-55-04"), b"AAAA").unwrap();
        let amd = tmp.path().join("fam17h.bin");
        fs::write(&amd, b"CCCC").unwrap();
        let e = collect(&[intel.clone(), amd.clone()], None).unwrap_err();
        assert!(e.to_string().contains("--microcode-vendor"), "{e}");
        let blobs = collect(std::slice::from_ref(&intel), None).unwrap();
        assert_eq!(blobs[&Vendor::Intel], b"AAAABBBB");
        let both = collect(std::slice::from_ref(&amd), Some(Vendor::Amd)).unwrap();
        let seg = segment(&both, 5).unwrap();
        assert_eq!(seg.len() % 4, 0);
        let entries = cpio::read_archive(&seg).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "kernel",
                "kernel/x86",
                "kernel/x86/microcode",
                "kernel/x86/microcode/AuthenticAMD.bin"
            ]
        );
        assert_eq!(entries[3].data, b"CCCC");
        assert!(entries.iter().all(|e| e.mtime == 5));
        fs::create_dir(tmp.path().join("amd-empty")).unwrap();
        assert!(matches!(
            collect(&[tmp.path().join("amd-empty")], None),
            Err(MicrocodeError::Empty { .. })
        ));
        assert!(segment(&BTreeMap::new(), 0).is_none());
    }
}
