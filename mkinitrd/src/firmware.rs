//! Firmware named by the packed modules (`firmware=` in `.modinfo`), copied to
//! `/lib/firmware/<name>` where the kernel's loader looks first.
//!
//! Looked up in each firmware directory in order (`--firmware-dir`, else the modules
//! directory's `../../firmware`, i.e. `/lib/firmware` for `/lib/modules/<version>`), as the
//! plain name, then `.zst`, then `.xz` (linux-firmware installs compressed files on some
//! distributions). Compressed firmware is decompressed to the plain name: the kernel reads
//! `.xz`/`.zst` only with CONFIG_FW_LOADER_COMPRESS and the matching decompressor, a plain
//! file always. A name with `*`, `?` or `[` in its last component is matched against the
//! directory's files (fnmatch, as dracut does). Firmware that is not found is a note, not an
//! error: drivers list every file they may ever ask for, most of them for other hardware.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::kmod::depmod::glob_match;
use crate::kmod::ResolvedModule;

/// Where firmware goes in the initramfs.
pub const FIRMWARE_DIR: &str = "lib/firmware";
/// Bound on one decompressed firmware file.
const MAX_FIRMWARE_SIZE: usize = 1 << 30;

/// Why firmware could not be packed.
#[derive(Debug, thiserror::Error)]
#[error("cannot read firmware {path}: {source}")]
pub struct FirmwareError {
    pub path: PathBuf,
    pub source: io::Error,
}

/// Firmware files found for a set of modules.
#[derive(Debug, Default)]
pub struct Found {
    /// Name (relative to /lib/firmware) -> contents.
    pub files: BTreeMap<String, Vec<u8>>,
    pub notes: Vec<String>,
}

/// The default firmware directory for a kernel's modules directory.
pub fn default_dir(modules_dir: &Path) -> Option<PathBuf> {
    let canonical = fs::canonicalize(modules_dir).ok()?;
    Some(canonical.parent()?.parent()?.join("firmware"))
}

/// Finds the firmware of `modules` in `dirs` (in order).
pub fn collect(modules: &[ResolvedModule], dirs: &[PathBuf]) -> Result<Found, FirmwareError> {
    let mut found = Found::default();
    for m in modules {
        for name in &m.info.firmware {
            let name = name.trim_start_matches('/');
            if name.is_empty() || name.split('/').any(|c| c == ".." || c == ".") {
                found.notes.push(format!(
                    "module {} names firmware {name:?}; ignored",
                    m.name
                ));
                continue;
            }
            let matches = if name.contains(['*', '?', '[']) {
                glob(dirs, name)?
            } else {
                lookup(dirs, name)?
                    .map(|hit| vec![(name.to_owned(), hit)])
                    .unwrap_or_default()
            };
            if matches.is_empty() {
                found.notes.push(format!(
                    "firmware {name} (module {}) not found in {}; not packed",
                    m.name,
                    if dirs.is_empty() {
                        "any firmware directory".to_owned()
                    } else {
                        dirs.iter()
                            .map(|d| d.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ));
            }
            for (name, path) in matches {
                if found.files.contains_key(&name) {
                    continue;
                }
                found.files.insert(name, read(&path)?);
            }
        }
    }
    Ok(found)
}

/// The first existing file for `name`: plain, `.zst`, `.xz`, per directory.
fn lookup(dirs: &[PathBuf], name: &str) -> Result<Option<PathBuf>, FirmwareError> {
    for dir in dirs {
        for suffix in ["", ".zst", ".xz"] {
            let path = dir.join(format!("{name}{suffix}"));
            match fs::metadata(&path) {
                Ok(m) if m.is_file() => return Ok(Some(path)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // ENOTDIR: a path component is a file.
                Err(e) if e.raw_os_error() == Some(20) => {}
                Err(source) => return Err(FirmwareError { path, source }),
            }
        }
    }
    Ok(None)
}

/// Files matching a pattern in its last component, from the first directory with any.
fn glob(dirs: &[PathBuf], pattern: &str) -> Result<Vec<(String, PathBuf)>, FirmwareError> {
    let (parent, last) = match pattern.rsplit_once('/') {
        Some((p, l)) => (p, l),
        None => ("", pattern),
    };
    for dir in dirs {
        let d = dir.join(parent);
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        let mut hits = Vec::new();
        for e in entries.flatten() {
            let Some(file) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let plain = file
                .strip_suffix(".zst")
                .or_else(|| file.strip_suffix(".xz"))
                .unwrap_or(&file)
                .to_owned();
            if glob_match(last, &plain) && fs::metadata(e.path()).is_ok_and(|m| m.is_file()) {
                let name = if parent.is_empty() {
                    plain
                } else {
                    format!("{parent}/{plain}")
                };
                hits.push((name, e.path()));
            }
        }
        if !hits.is_empty() {
            // Plain before compressed for the same name; byte order overall.
            hits.sort();
            hits.dedup_by(|a, b| a.0 == b.0);
            return Ok(hits);
        }
    }
    Ok(Vec::new())
}

fn read(path: &Path) -> Result<Vec<u8>, FirmwareError> {
    let err = |source| FirmwareError {
        path: path.to_owned(),
        source,
    };
    let data = fs::read(path).map_err(err)?;
    let name = path.to_string_lossy();
    if name.ends_with(".xz") || name.ends_with(".zst") {
        crate::compress::decompress_file(&data, MAX_FIRMWARE_SIZE).map_err(err)
    } else {
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::{compress, Compression};
    use crate::kmod::modinfo::ModInfo;

    fn module(firmware: &[&str]) -> ResolvedModule {
        ResolvedModule {
            name: "drv".into(),
            rel_path: "kernel/drv.ko".into(),
            source: PathBuf::from("/x/drv.ko"),
            data: Vec::new(),
            info: ModInfo {
                firmware: firmware.iter().map(|s| s.to_string()).collect(),
                ..ModInfo::default()
            },
        }
    }

    #[test]
    fn plain_compressed_globbed_and_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let first = tmp.path().join("updates");
        let second = tmp.path().join("firmware");
        fs::create_dir_all(second.join("vendor")).unwrap();
        fs::create_dir_all(&first).unwrap();
        fs::write(second.join("vendor/a.bin"), b"plain").unwrap();
        fs::write(
            second.join("vendor/b.bin.xz"),
            compress(Compression::Xz, b"from xz").unwrap(),
        )
        .unwrap();
        fs::write(
            second.join("vendor/c.bin.zst"),
            compress(Compression::Zstd, b"from zstd").unwrap(),
        )
        .unwrap();
        fs::write(second.join("vendor/g-1.fw"), b"g1").unwrap();
        fs::write(second.join("vendor/g-2.fw"), b"g2").unwrap();
        // The first directory wins.
        fs::create_dir_all(first.join("vendor")).unwrap();
        fs::write(first.join("vendor/a.bin"), b"updated").unwrap();
        let dirs = [first, second];
        let found = collect(
            &[module(&[
                "vendor/a.bin",
                "vendor/b.bin",
                "vendor/c.bin",
                "vendor/g-*.fw",
                "vendor/missing.bin",
                "../escape",
            ])],
            &dirs,
        )
        .unwrap();
        let got: Vec<(&str, &[u8])> = found
            .files
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        assert_eq!(
            got,
            [
                ("vendor/a.bin", &b"updated"[..]),
                ("vendor/b.bin", b"from xz"),
                ("vendor/c.bin", b"from zstd"),
                ("vendor/g-1.fw", b"g1"),
                ("vendor/g-2.fw", b"g2"),
            ]
        );
        assert_eq!(found.notes.len(), 2, "{:?}", found.notes);
        assert!(found.notes[0].contains("missing.bin") && found.notes[0].contains("not found"));
        assert!(found.notes[1].contains("escape"));
    }

    #[test]
    fn default_dir_is_lib_firmware() {
        let tmp = tempfile::tempdir().unwrap();
        let m = tmp.path().join("lib/modules/6.1.0-x");
        fs::create_dir_all(&m).unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        assert_eq!(default_dir(&m), Some(root.join("lib/firmware")));
    }
}
