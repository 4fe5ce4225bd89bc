//! `--embed-store`: the closure's store paths packed under `/nix/store` in the initramfs, for
//! machines that boot with no store share and no disk (netboot, kexec).
//!
//! Which paths, in this order of preference:
//! 1. `--store-paths FILE`: one store path per line, as nixpkgs' `closureInfo` writes
//!    `$out/store-paths` (what a Nix build of the initrd has at hand without calling Nix).
//! 2. `--store-dir DIR` without `--store-paths`: every entry of DIR. DIR stands for
//!    `/nix/store`; meant for synthetic stores (tests, a store copied out of a build) where
//!    the directory holds exactly the closure.
//! 3. Neither: `nix-store --query --requisites CLOSURE` when `nix-store` is installed and the
//!    closure is in `/nix/store`.
//!
//! Paths listed as `/nix/store/<name>` are read from `<store dir>/<name>` (the store dir is
//! `/nix/store` unless `--store-dir` says otherwise) and packed at `/nix/store/<name>`, in
//! byte order of their names, symlinks kept, modes kept, owner 0:0, mtimes pinned.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::closure::STORE_DIR;

/// What `--embed-store` was given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmbedStore {
    /// A closureInfo `store-paths` file.
    pub store_paths: Option<PathBuf>,
    /// The host directory that stands for /nix/store (default: /nix/store itself).
    pub store_dir: Option<PathBuf>,
}

/// Why the store paths could not be determined.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{file} line {line}: {text:?} is not a store path under {STORE_DIR} or {store_dir}")]
    NotAStorePath {
        file: PathBuf,
        line: usize,
        text: String,
        store_dir: PathBuf,
    },
    #[error("store path {name} is not in {store_dir} ({source})")]
    Missing {
        name: String,
        store_dir: PathBuf,
        source: io::Error,
    },
    #[error("--embed-store needs the closure's store paths: pass --store-paths FILE (closureInfo's store-paths), --store-dir DIR (a directory holding exactly the closure), or install Nix (nix-store -qR); {reason}")]
    Unknown { reason: String },
    #[error("nix-store --query --requisites {closure} failed: {message}")]
    NixStore { closure: PathBuf, message: String },
    #[error("the closure {closure} is not among the embedded store paths (its {name} is missing from the list)")]
    ClosureNotListed { closure: PathBuf, name: String },
}

/// One store path to pack.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StorePath {
    /// `<hash>-<name>`: packed at `/nix/store/<name>`.
    pub name: String,
    /// Where it is read from.
    pub host: PathBuf,
}

/// The store paths to embed, sorted by name, with notes for the user.
pub fn resolve(
    opts: &EmbedStore,
    closure: Option<&Path>,
) -> Result<(Vec<StorePath>, Vec<String>), StoreError> {
    let store_dir = opts
        .store_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(STORE_DIR));
    let mut notes = Vec::new();
    let names = if let Some(file) = &opts.store_paths {
        names_from_file(file, &store_dir)?
    } else if let Some(dir) = &opts.store_dir {
        let names = names_in_dir(dir)?;
        notes.push(format!(
            "embedding every entry of {} ({} store paths)",
            dir.display(),
            names.len()
        ));
        names
    } else {
        let Some(closure) = closure else {
            return Err(StoreError::Unknown {
                reason: "and there is no --closure to ask Nix about".into(),
            });
        };
        nix_requisites(closure)?
    };
    if let Some(closure) = closure {
        check_closure_listed(closure, &names, &store_dir)?;
    }
    let mut out = Vec::new();
    for name in names {
        let host = store_dir.join(&name);
        if let Err(source) = fs::symlink_metadata(&host) {
            return Err(StoreError::Missing {
                name,
                store_dir,
                source,
            });
        }
        out.push(StorePath { name, host });
    }
    Ok((out, notes))
}

/// The names listed in a closureInfo `store-paths` file (blank lines ignored).
fn names_from_file(file: &Path, store_dir: &Path) -> Result<BTreeSet<String>, StoreError> {
    let text = fs::read_to_string(file).map_err(|source| StoreError::Read {
        path: file.to_owned(),
        source,
    })?;
    let mut names = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let name = store_name(line, store_dir).ok_or_else(|| StoreError::NotAStorePath {
            file: file.to_owned(),
            line: i + 1,
            text: line.to_owned(),
            store_dir: store_dir.to_owned(),
        })?;
        names.insert(name);
    }
    Ok(names)
}

/// Every entry of `dir` but dot files.
fn names_in_dir(dir: &Path) -> Result<BTreeSet<String>, StoreError> {
    let read = |source| StoreError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut names = BTreeSet::new();
    for entry in fs::read_dir(dir).map_err(read)? {
        let entry = entry.map_err(read)?;
        // Nix's own bookkeeping, never a store path.
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        names.insert(name);
    }
    Ok(names)
}

/// Fails when `closure` is a store path whose name is not among `names`.
fn check_closure_listed(
    closure: &Path,
    names: &BTreeSet<String>,
    store_dir: &Path,
) -> Result<(), StoreError> {
    let canonical = fs::canonicalize(closure).map_err(|source| StoreError::Read {
        path: closure.to_owned(),
        source,
    })?;
    let store_dir_c = fs::canonicalize(store_dir).unwrap_or_else(|_| store_dir.to_owned());
    if let Some(name) = store_name(&canonical.to_string_lossy(), &store_dir_c) {
        if !names.contains(&name) {
            return Err(StoreError::ClosureNotListed {
                closure: closure.to_owned(),
                name,
            });
        }
    }
    Ok(())
}

/// `<hash>-<name>` of `/nix/store/<hash>-<name>[/...]` or `<store_dir>/<hash>-<name>[/...]`.
pub fn store_name(path: &str, store_dir: &Path) -> Option<String> {
    let p = Path::new(path);
    let rest = p
        .strip_prefix(STORE_DIR)
        .ok()
        .or_else(|| p.strip_prefix(store_dir).ok())?;
    let first = rest.components().next()?;
    match first {
        std::path::Component::Normal(n) => n.to_str().map(str::to_owned),
        _ => None,
    }
}

fn nix_requisites(closure: &Path) -> Result<BTreeSet<String>, StoreError> {
    let canonical = fs::canonicalize(closure).map_err(|source| StoreError::Read {
        path: closure.to_owned(),
        source,
    })?;
    if !canonical.starts_with(STORE_DIR) {
        return Err(StoreError::Unknown {
            reason: format!("the closure {} is not in {STORE_DIR}", canonical.display()),
        });
    }
    let out = match Command::new("nix-store")
        .args(["--query", "--requisites"])
        .arg(&canonical)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StoreError::Unknown {
                reason: "nix-store is not installed".into(),
            })
        }
        Err(e) => {
            return Err(StoreError::NixStore {
                closure: canonical,
                message: e.to_string(),
            })
        }
    };
    if !out.status.success() {
        return Err(StoreError::NixStore {
            closure: canonical,
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| store_name(l.trim(), Path::new(STORE_DIR)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        for n in ["aaa-system", "bbb-lib", "ccc-unrelated"] {
            fs::create_dir_all(dir.join(n)).unwrap();
        }
        fs::create_dir_all(dir.join(".links")).unwrap();
        (tmp, dir)
    }

    #[test]
    fn store_names() {
        let d = Path::new("/tmp/s");
        assert_eq!(
            store_name("/nix/store/abc-x/bin/y", d).as_deref(),
            Some("abc-x")
        );
        assert_eq!(store_name("/tmp/s/abc-x", d).as_deref(), Some("abc-x"));
        assert_eq!(store_name("/nix/store", d), None);
        assert_eq!(store_name("/usr/bin", d), None);
    }

    #[test]
    fn from_a_store_paths_file() {
        let (tmp, dir) = store();
        let list = tmp.path().join("store-paths");
        fs::write(&list, "/nix/store/bbb-lib\n\n/nix/store/aaa-system\n").unwrap();
        let opts = EmbedStore {
            store_paths: Some(list.clone()),
            store_dir: Some(dir.clone()),
        };
        let (paths, notes) = resolve(&opts, Some(&dir.join("aaa-system"))).unwrap();
        let names: Vec<&str> = paths.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["aaa-system", "bbb-lib"]);
        assert_eq!(paths[0].host, dir.join("aaa-system"));
        assert!(notes.is_empty());
        // The closure must be listed.
        let e = resolve(&opts, Some(&dir.join("ccc-unrelated"))).unwrap_err();
        assert!(matches!(e, StoreError::ClosureNotListed { .. }), "{e}");
        // Junk and missing paths.
        fs::write(&list, "/usr/lib/x\n").unwrap();
        let e = resolve(&opts, None).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("/usr/lib/x"), "{e}");
        fs::write(&list, "/nix/store/zzz-gone\n").unwrap();
        let e = resolve(&opts, None).unwrap_err().to_string();
        assert!(e.contains("zzz-gone"), "{e}");
    }

    #[test]
    fn whole_store_dir_and_nothing_to_go_on() {
        let (_tmp, dir) = store();
        let opts = EmbedStore {
            store_paths: None,
            store_dir: Some(dir.clone()),
        };
        let (paths, notes) = resolve(&opts, Some(&dir.join("aaa-system"))).unwrap();
        assert_eq!(paths.len(), 3, "{paths:?}");
        assert!(notes[0].contains("every entry"));
        let e = resolve(&EmbedStore::default(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--store-paths"), "{e}");
        // A closure outside /nix/store with no list: Nix cannot help.
        let e = resolve(&EmbedStore::default(), Some(&dir.join("aaa-system")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not in /nix/store"), "{e}");
    }
}
