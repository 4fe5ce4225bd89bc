//! Host files in the initramfs: `--include SRC[:DST]` (files, directories, symlinks), the
//! run-time dependencies of the ELF programs among them, and whole store paths.
//!
//! Two ways to place a file:
//! - **At its own path** (`--include SRC`, ELF interpreters and libraries): as nixpkgs'
//!   make-initrd-ng does, the path is walked one component at a time; a symlink met on the
//!   way is packed as a symlink and the walk goes on through its target, so that
//!   `/lib64/ld-linux-x86-64.so.2` arrives with the links that lead to the real file. A
//!   component that is a directory in the initramfs already (`/lib`, made by mkinitrd) is
//!   not replaced by the host's symlink (`/lib -> usr/lib` on merged-/usr hosts): the walk
//!   goes on through the host's target while the initramfs path stays, merging the two.
//! - **Somewhere else** (`--include SRC:DST`): SRC (followed if it is a symlink) is copied
//!   to DST; inside a directory, symlinks are kept as symlinks with their targets verbatim.
//!
//! Every entry keeps its permission bits (setuid included) and nothing else of the host:
//! owner 0:0, the build's mtime, fresh inode numbers. Directories are read in byte order of
//! their names, so the result does not depend on the file system's order.
//!
//! ELF dependencies: every regular file packed from `--include` that asks for a program
//! interpreter or libraries (PT_INTERP, DT_NEEDED) gets them, recursively. Libraries are
//! looked up like ld.so(8) does without a cache: DT_RPATH (only without DT_RUNPATH), then
//! DT_RUNPATH, with `$ORIGIN` expanded, then the default directories (multiarch
//! `/lib/<triplet>` and `/usr/lib/<triplet>`, `/lib64`, `/usr/lib64`, `/lib`, `/usr/lib`);
//! a candidate of another ELF class or machine is skipped, as the loader skips it. Nix store
//! programs find everything through DT_RUNPATH, as make-initrd-ng relies on.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use crate::cpio::{ArchiveBuilder, CpioError, HostFile, Node};
use crate::elf::{self, DynamicInfo, ElfError};

/// Symlinks followed while placing one path (the kernel's own limit is 40).
const MAX_SYMLINKS: usize = 40;

/// One `--include` argument.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Include {
    /// A host file, directory or symlink.
    pub src: PathBuf,
    /// Where it goes in the initramfs; None means at SRC's own (absolute) path.
    pub dst: Option<String>,
}

impl Include {
    /// The initramfs path this include is sorted by (so argument order does not matter).
    fn sort_key(&self) -> (String, PathBuf) {
        let dst = match &self.dst {
            Some(d) => d.clone(),
            None => self.src.to_string_lossy().into_owned(),
        };
        (dst, self.src.clone())
    }
}

impl fmt::Display for Include {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.dst {
            Some(d) => write!(f, "{}:{d}", self.src.display()),
            None => write!(f, "{}", self.src.display()),
        }
    }
}

/// A malformed `--include` argument.
#[derive(Debug, thiserror::Error)]
#[error("invalid --include {given:?}: {reason}")]
pub struct BadInclude {
    pub given: String,
    pub reason: &'static str,
}

impl FromStr for Include {
    type Err = BadInclude;

    /// `SRC` or `SRC:DST` with an absolute DST; a `:` not followed by `/` is part of SRC.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| BadInclude {
            given: s.to_owned(),
            reason,
        };
        let (src, dst) = match s.rsplit_once(':') {
            Some((src, dst)) if dst.starts_with('/') => (src, Some(dst.to_owned())),
            _ => (s, None),
        };
        if src.is_empty() {
            return Err(bad("empty source"));
        }
        if let Some(d) = &dst {
            if d.trim_start_matches('/').is_empty() {
                return Err(bad("the destination cannot be the root itself"));
            }
            if d.split('/').any(|c| c == "..") {
                return Err(bad("the destination has a `..` component"));
            }
        }
        Ok(Include {
            src: PathBuf::from(src),
            dst,
        })
    }
}

/// Why host files could not be packed.
#[derive(Debug, thiserror::Error)]
pub enum IncludeError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: too many levels of symbolic links")]
    SymlinkLoop { path: PathBuf },
    #[error("{path} is not valid UTF-8 (initramfs paths are kept as text)")]
    NonUtf8 { path: PathBuf },
    #[error("{from} would replace {path} in the initramfs, which already holds {existing}")]
    Conflict {
        path: String,
        from: PathBuf,
        existing: String,
    },
    #[error("library {name} needed by {by} not found (searched: {})", searched.join(", "))]
    LibraryNotFound {
        name: String,
        by: PathBuf,
        searched: Vec<String>,
    },
    #[error("cannot read the ELF dependencies of {path}: {source}")]
    Elf { path: PathBuf, source: ElfError },
    #[error("cannot place {from} in the initramfs: {source}")]
    Cpio { from: PathBuf, source: CpioError },
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> IncludeError + '_ {
    move |source| IncludeError::Read {
        path: path.to_owned(),
        source,
    }
}

/// Adds host files to an archive; see the module documentation.
pub struct Collector<'a> {
    archive: &'a mut ArchiveBuilder,
    /// Remarks for the user (skipped special files, dangling symlinks, ...).
    pub notes: Vec<String>,
    /// ELF files whose needs are not handled yet, by canonical host path.
    pending: BTreeMap<PathBuf, DynamicInfo>,
    done: BTreeSet<PathBuf>,
    /// Host files read, and their bytes.
    pub files_read: usize,
    pub bytes_read: u64,
}

/// Whether regular files are looked at for ELF dependencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deps {
    Follow,
    Ignore,
}

impl<'a> Collector<'a> {
    pub fn new(archive: &'a mut ArchiveBuilder) -> Self {
        Collector {
            archive,
            notes: Vec::new(),
            pending: BTreeMap::new(),
            done: BTreeSet::new(),
            files_read: 0,
            bytes_read: 0,
        }
    }

    /// Adds every include (in a fixed order, whatever order they were given in), then
    /// their ELF dependencies.
    pub fn add_includes(&mut self, includes: &[Include]) -> Result<(), IncludeError> {
        let mut sorted: Vec<&Include> = includes.iter().collect();
        sorted.sort_by_key(|i| i.sort_key());
        sorted.dedup();
        for inc in sorted {
            match &inc.dst {
                None => self.add_at_own_path(&inc.src)?,
                Some(dst) => self.add_copy(&inc.src, dst, Deps::Follow)?,
            }
        }
        self.add_elf_dependencies()
    }

    /// Places an entry, accepting an identical one (or a directory over a directory).
    fn put(&mut self, path: &str, node: Node, from: &Path) -> Result<(), IncludeError> {
        match self.archive.get(path) {
            Some(existing) if *existing == node || same_file(existing, &node) => return Ok(()),
            Some(Node::Dir { .. }) if matches!(node, Node::Dir { .. }) => return Ok(()),
            Some(existing) => {
                return Err(IncludeError::Conflict {
                    path: format!("/{}", path.trim_start_matches('/')),
                    from: from.to_owned(),
                    existing: describe(existing),
                })
            }
            None => {}
        }
        self.archive
            .add(path, node)
            .map_err(|source| IncludeError::Cpio {
                from: from.to_owned(),
                source,
            })
    }

    /// `SRC` at its own path, make-initrd-ng style (see the module documentation).
    pub fn add_at_own_path(&mut self, path: &Path) -> Result<(), IncludeError> {
        let abs = std::path::absolute(path).map_err(read_err(path))?;
        let mut host = PathBuf::from("/");
        let mut arch = PathBuf::from("/");
        let mut rest: VecDeque<OsString> = components(&abs);
        let mut hops = 0;
        while let Some(c) = rest.pop_front() {
            if c == ".." {
                host.pop();
                arch.pop();
                continue;
            }
            host.push(&c);
            arch.push(&c);
            let arch_s = utf8(&arch)?;
            let mut meta = fs::symlink_metadata(&host).map_err(read_err(&host))?;
            if meta.file_type().is_symlink() {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return Err(IncludeError::SymlinkLoop { path: abs });
                }
                if matches!(self.archive.get(&arch_s), Some(Node::Dir { .. })) {
                    // Merge: keep the initramfs directory, read through the host's link.
                    host = fs::canonicalize(&host).map_err(read_err(&host))?;
                    meta = fs::metadata(&host).map_err(read_err(&host))?;
                } else {
                    let target = fs::read_link(&host).map_err(read_err(&host))?;
                    let target_s = utf8(&target)?;
                    self.put(&arch_s, Node::Symlink { target: target_s }, &host)?;
                    if rest.is_empty() && fs::metadata(&host).is_err() {
                        self.notes.push(format!(
                            "{} is a dangling symlink; packed as it is",
                            host.display()
                        ));
                        return Ok(());
                    }
                    host.pop();
                    arch.pop();
                    if target.is_absolute() {
                        host = PathBuf::from("/");
                        arch = PathBuf::from("/");
                    }
                    let mut next = components(&target);
                    next.extend(rest.drain(..));
                    rest = next;
                    continue;
                }
            }
            let last = rest.is_empty();
            let ft = meta.file_type();
            if ft.is_dir() {
                if last {
                    self.add_tree(&host, &arch_s, &meta, Deps::Follow)?;
                } else {
                    self.put(&arch_s, Node::Dir { perm: perm(&meta) }, &host)?;
                }
            } else if !last {
                return Err(IncludeError::Read {
                    path: host,
                    source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
                });
            } else if ft.is_file() {
                self.add_file(&host, &arch_s, &meta, Deps::Follow)?;
            } else {
                self.note_special(&host, ft);
            }
        }
        Ok(())
    }

    /// `SRC:DST`: SRC followed if it is a symlink, copied to DST.
    pub fn add_copy(&mut self, src: &Path, dst: &str, deps: Deps) -> Result<(), IncludeError> {
        let meta = fs::metadata(src).map_err(read_err(src))?;
        if meta.is_dir() {
            self.add_tree(src, dst, &meta, deps)
        } else if meta.is_file() {
            self.add_file(src, dst, &meta, deps)
        } else {
            self.note_special(src, meta.file_type());
            Ok(())
        }
    }

    /// A store path (or any path) copied to DST without following a top-level symlink.
    pub fn add_verbatim(&mut self, src: &Path, dst: &str, deps: Deps) -> Result<(), IncludeError> {
        let meta = fs::symlink_metadata(src).map_err(read_err(src))?;
        if meta.file_type().is_symlink() {
            let target = utf8(&fs::read_link(src).map_err(read_err(src))?)?;
            self.put(dst, Node::Symlink { target }, src)
        } else {
            self.add_copy(src, dst, deps)
        }
    }

    /// A directory and everything below it; symlinks inside are kept as they are.
    fn add_tree(
        &mut self,
        src: &Path,
        dst: &str,
        meta: &fs::Metadata,
        deps: Deps,
    ) -> Result<(), IncludeError> {
        self.put(dst, Node::Dir { perm: perm(meta) }, src)?;
        let mut entries = Vec::new();
        for entry in fs::read_dir(src).map_err(read_err(src))? {
            let entry = entry.map_err(read_err(src))?;
            entries.push(entry.file_name());
        }
        // Byte order of names: independent of the file system's directory order.
        entries.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in entries {
            let child = src.join(&name);
            let name = name.to_str().ok_or_else(|| IncludeError::NonUtf8 {
                path: child.clone(),
            })?;
            let child_dst = format!("{}/{name}", dst.trim_end_matches('/'));
            let m = fs::symlink_metadata(&child).map_err(read_err(&child))?;
            let ft = m.file_type();
            if ft.is_symlink() {
                let target = utf8(&fs::read_link(&child).map_err(read_err(&child))?)?;
                self.put(&child_dst, Node::Symlink { target }, &child)?;
            } else if ft.is_dir() {
                self.add_tree(&child, &child_dst, &m, deps)?;
            } else if ft.is_file() {
                self.add_file(&child, &child_dst, &m, deps)?;
            } else {
                self.note_special(&child, ft);
            }
        }
        Ok(())
    }

    fn add_file(
        &mut self,
        src: &Path,
        dst: &str,
        meta: &fs::Metadata,
        deps: Deps,
    ) -> Result<(), IncludeError> {
        self.files_read += 1;
        self.bytes_read += meta.len();
        if deps == Deps::Follow {
            // Read now only to look for ELF needs; the archive reads it again when written.
            let data = fs::read(src).map_err(read_err(src))?;
            if elf::is_elf(&data) {
                self.note_elf(src, &data)?;
            }
        }
        self.put(
            dst,
            Node::HostFile {
                perm: perm(meta),
                file: HostFile::new(src.to_owned(), meta),
            },
            src,
        )
    }

    fn note_elf(&mut self, src: &Path, data: &[u8]) -> Result<(), IncludeError> {
        match elf::dynamic_info(data) {
            Ok(Some(info)) if info.interpreter.is_some() || !info.needed.is_empty() => {
                let canonical = fs::canonicalize(src).map_err(read_err(src))?;
                if !self.done.contains(&canonical) {
                    self.pending.insert(canonical, info);
                }
            }
            Ok(_) => {}
            Err(e) => self.notes.push(format!(
                "{}: unreadable ELF ({e}); its libraries, if any, are not packed",
                src.display()
            )),
        }
        Ok(())
    }

    fn note_special(&mut self, path: &Path, ft: fs::FileType) {
        let kind = if ft.is_char_device() {
            "character device"
        } else if ft.is_block_device() {
            "block device"
        } else if ft.is_fifo() {
            "FIFO"
        } else if ft.is_socket() {
            "socket"
        } else {
            "special file"
        };
        self.notes
            .push(format!("{} is a {kind}; not packed", path.display()));
    }

    /// Packs the interpreter and libraries of every ELF file added so far, recursively.
    pub fn add_elf_dependencies(&mut self) -> Result<(), IncludeError> {
        while let Some((path, info)) = self.pending.pop_first() {
            if !self.done.insert(path.clone()) {
                continue;
            }
            if let Some(interp) = &info.interpreter {
                self.add_at_own_path(Path::new(interp))?;
            }
            let origin = path.parent().unwrap_or(Path::new("/"));
            let origin_s = origin.to_string_lossy();
            let mut dirs: Vec<String> = info
                .search_path()
                .iter()
                .map(|d| {
                    d.replace("${ORIGIN}", &origin_s)
                        .replace("$ORIGIN", &origin_s)
                })
                .collect();
            dirs.extend(default_dirs(info.machine, info.is_64));
            for name in &info.needed {
                if name.contains('/') {
                    self.add_at_own_path(Path::new(name))?;
                    continue;
                }
                let found = dirs
                    .iter()
                    .map(|d| Path::new(d).join(name))
                    .find(|candidate| header_matches(candidate, info.is_64, info.machine));
                match found {
                    Some(lib) => self.add_at_own_path(&lib)?,
                    None => {
                        return Err(IncludeError::LibraryNotFound {
                            name: name.clone(),
                            by: path.clone(),
                            searched: dirs.clone(),
                        })
                    }
                }
            }
        }
        Ok(())
    }
}

/// ld.so's directories after DT_RUNPATH when there is no cache (Debian's multiarch first).
pub fn default_dirs(machine: u16, is_64: bool) -> Vec<String> {
    let triplet = match machine {
        62 => Some("x86_64-linux-gnu"),
        183 => Some("aarch64-linux-gnu"),
        3 => Some("i386-linux-gnu"),
        40 => Some("arm-linux-gnueabihf"),
        243 => Some("riscv64-linux-gnu"),
        _ => None,
    };
    let mut dirs = Vec::new();
    if let Some(t) = triplet {
        dirs.push(format!("/lib/{t}"));
        dirs.push(format!("/usr/lib/{t}"));
    }
    if is_64 {
        dirs.push("/lib64".into());
        dirs.push("/usr/lib64".into());
    }
    dirs.push("/lib".into());
    dirs.push("/usr/lib".into());
    dirs
}

/// Whether `path` is a readable ELF file of this class and machine (what ld.so accepts).
fn header_matches(path: &Path, is_64: bool, machine: u16) -> bool {
    let mut head = [0u8; 64];
    let Ok(mut f) = fs::File::open(path) else {
        return false;
    };
    if f.read_exact(&mut head).is_err() {
        return false;
    }
    elf::class_and_machine(&head) == Some((is_64, machine))
}

fn perm(meta: &fs::Metadata) -> u32 {
    meta.mode() & 0o7777
}

fn utf8(path: &Path) -> Result<String, IncludeError> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| IncludeError::NonUtf8 {
            path: path.to_owned(),
        })
}

/// The normal and `..` components of a path (`.` and the root dropped).
fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// Two regular files with the same permissions and contents (a library reached by two
/// paths that are different inodes); read only when two files meet at one path.
fn same_file(a: &Node, b: &Node) -> bool {
    fn parts(n: &Node) -> Option<(u32, io::Result<Vec<u8>>)> {
        match n {
            Node::File { perm, data } => Some((*perm, Ok(data.clone()))),
            Node::HostFile { perm, file } => Some((*perm, fs::read(&file.path))),
            _ => None,
        }
    }
    match (parts(a), parts(b)) {
        (Some((pa, Ok(da))), Some((pb, Ok(db)))) => pa == pb && da == db,
        _ => false,
    }
}

fn describe(node: &Node) -> String {
    match node {
        Node::Dir { .. } => "a directory".into(),
        Node::File { data, .. } => format!("another file ({} bytes)", data.len()),
        Node::HostFile { file, .. } => format!(
            "another file ({} bytes, from {})",
            file.size,
            file.path.display()
        ),
        Node::CharDev { major, minor, .. } => format!("a device node {major}:{minor}"),
        Node::Symlink { target } => format!("a symlink to {target}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn host_file(b: &ArchiveBuilder, path: &str) -> Option<(u32, Vec<u8>)> {
        match b.get(path)? {
            Node::HostFile { perm, file } => Some((*perm, fs::read(&file.path).unwrap())),
            _ => None,
        }
    }

    fn names(b: &ArchiveBuilder) -> Vec<String> {
        b.iter().map(|(n, _)| n.to_owned()).collect()
    }

    #[test]
    fn parse_include_arguments() {
        let i: Include = "/bin/ls".parse().unwrap();
        assert_eq!((i.src, i.dst), (PathBuf::from("/bin/ls"), None));
        let i: Include = "./conf:/etc/app.conf".parse().unwrap();
        assert_eq!(i.src, PathBuf::from("./conf"));
        assert_eq!(i.dst.as_deref(), Some("/etc/app.conf"));
        // A colon not followed by an absolute path belongs to the source.
        let i: Include = "a:b".parse().unwrap();
        assert_eq!((i.src, i.dst), (PathBuf::from("a:b"), None));
        for bad in ["", ":/x", "a:/", "a:/x/../y"] {
            assert!(bad.parse::<Include>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn trees_keep_modes_and_symlinks_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("app");
        fs::create_dir_all(src.join("sub/deeper")).unwrap();
        fs::write(src.join("run"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(src.join("run"), fs::Permissions::from_mode(0o4750)).unwrap();
        fs::write(src.join("sub/deeper/data"), "x").unwrap();
        fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o700)).unwrap();
        symlink("sub/deeper/data", src.join("link")).unwrap();
        symlink("/nonexistent/elsewhere", src.join("dangling")).unwrap();
        let mut b = ArchiveBuilder::new();
        let mut c = Collector::new(&mut b);
        c.add_includes(&[format!("{}:/opt/app", src.display()).parse().unwrap()])
            .unwrap();
        assert!(c.notes.is_empty(), "{:?}", c.notes);
        assert_eq!(
            names(&b),
            [
                "opt",
                "opt/app",
                "opt/app/dangling",
                "opt/app/link",
                "opt/app/run",
                "opt/app/sub",
                "opt/app/sub/deeper",
                "opt/app/sub/deeper/data"
            ]
        );
        // Host files are read when the archive is written: their mode and contents.
        assert_eq!(
            host_file(&b, "opt/app/run"),
            Some((0o4750, b"#!/bin/sh\n".to_vec()))
        );
        assert_eq!(b.get("opt/app/sub"), Some(&Node::Dir { perm: 0o700 }));
        assert_eq!(
            b.get("opt/app/link"),
            Some(&Node::Symlink {
                target: "sub/deeper/data".into()
            })
        );
        assert_eq!(
            b.get("opt/app/dangling"),
            Some(&Node::Symlink {
                target: "/nonexistent/elsewhere".into()
            })
        );
    }

    #[test]
    fn own_path_reproduces_symlinks_on_the_way() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        // root/usr/lib/real.so.1.2, root/lib -> usr/lib, root/usr/lib/real.so.1 -> real.so.1.2
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        fs::write(root.join("usr/lib/real.so.1.2"), "lib").unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink("real.so.1.2", root.join("usr/lib/real.so.1")).unwrap();
        let mut b = ArchiveBuilder::new();
        let mut c = Collector::new(&mut b);
        c.add_at_own_path(&root.join("lib/real.so.1")).unwrap();
        let r = root.to_str().unwrap().trim_start_matches('/').to_owned();
        assert_eq!(
            b.get(&format!("{r}/lib")),
            Some(&Node::Symlink {
                target: "usr/lib".into()
            })
        );
        assert_eq!(
            b.get(&format!("{r}/usr/lib/real.so.1")),
            Some(&Node::Symlink {
                target: "real.so.1.2".into()
            })
        );
        assert!(matches!(
            b.get(&format!("{r}/usr/lib/real.so.1.2")),
            Some(Node::HostFile { .. })
        ));

        // With the initramfs already holding a directory there, the two are merged.
        let mut b = ArchiveBuilder::new();
        b.dir(&format!("{r}/lib"), 0o755).unwrap();
        let mut c = Collector::new(&mut b);
        c.add_at_own_path(&root.join("lib/real.so.1")).unwrap();
        assert_eq!(b.get(&format!("{r}/lib")), Some(&Node::Dir { perm: 0o755 }));
        assert_eq!(
            b.get(&format!("{r}/lib/real.so.1")),
            Some(&Node::Symlink {
                target: "real.so.1.2".into()
            })
        );
        assert!(matches!(
            b.get(&format!("{r}/lib/real.so.1.2")),
            Some(Node::HostFile { .. })
        ));
    }

    #[test]
    fn loops_conflicts_and_missing_files_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        symlink("b", root.join("a")).unwrap();
        symlink("a", root.join("b")).unwrap();
        let mut b = ArchiveBuilder::new();
        let mut c = Collector::new(&mut b);
        let e = c.add_at_own_path(&root.join("a/x")).unwrap_err();
        assert!(matches!(e, IncludeError::SymlinkLoop { .. }), "{e}");
        let e = c.add_at_own_path(&root.join("missing")).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");

        fs::write(root.join("f"), "one").unwrap();
        fs::write(root.join("g"), "two").unwrap();
        let mut b = ArchiveBuilder::new();
        b.file("init", 0o755, vec![1]).unwrap();
        let mut c = Collector::new(&mut b);
        // The same file twice is fine; another file at the same place is not.
        c.add_copy(&root.join("f"), "/etc/x", Deps::Ignore).unwrap();
        c.add_copy(&root.join("f"), "/etc/x", Deps::Ignore).unwrap();
        let e = c
            .add_copy(&root.join("g"), "/etc/x", Deps::Ignore)
            .unwrap_err();
        assert!(
            e.to_string().contains("/etc/x") && e.to_string().contains("another file"),
            "{e}"
        );
        let e = c
            .add_copy(&root.join("g"), "/init", Deps::Ignore)
            .unwrap_err();
        assert!(matches!(e, IncludeError::Conflict { .. }), "{e}");
    }

    #[test]
    fn host_ls_brings_its_interpreter_and_libraries() {
        let Ok(bytes) = fs::read("/bin/ls") else {
            eprintln!("SKIP: /bin/ls unreadable");
            return;
        };
        let info = elf::dynamic_info(&bytes).unwrap().unwrap();
        let mut b = ArchiveBuilder::new();
        b.dir("lib", 0o755).unwrap();
        let mut c = Collector::new(&mut b);
        c.add_includes(&["/bin/ls".parse().unwrap()]).unwrap();
        let interp = info.interpreter.unwrap();
        // The interpreter's path resolves inside the archive to a file.
        let resolved = resolve_in(&b, &interp)
            .unwrap_or_else(|| panic!("{interp} not packed: {:?}", names(&b)));
        assert!(matches!(b.get(&resolved), Some(Node::HostFile { .. })));
        for lib in &info.needed {
            assert!(
                names(&b).iter().any(|n| n.ends_with(&format!("/{lib}"))),
                "{lib} not packed: {:?}",
                names(&b)
            );
        }
    }

    /// Follows symlinks inside the archive (a test helper).
    pub(crate) fn resolve_in(b: &ArchiveBuilder, path: &str) -> Option<String> {
        let mut parts: VecDeque<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let mut cur: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(p) = parts.pop_front() {
            if p == ".." {
                cur.pop();
                continue;
            }
            if p == "." {
                continue;
            }
            cur.push(p);
            if let Node::Symlink { target } = b.get(&cur.join("/"))? {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                cur.pop();
                if target.starts_with('/') {
                    cur.clear();
                }
                let mut next: VecDeque<String> = target
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                next.extend(parts.drain(..));
                parts = next;
            }
        }
        Some(cur.join("/"))
    }
}
