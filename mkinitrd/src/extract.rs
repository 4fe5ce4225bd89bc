//! `mkinitrd inspect --extract DIR FILE`: unpacks every segment into DIR the way the kernel
//! unpacks into rootfs (later entries replace earlier ones, hard links within a segment), but
//! never outside DIR:
//! - names are taken relative to DIR (a leading `/` or `./` is dropped, as the kernel does);
//!   a name with a `..` component is skipped with a note;
//! - an entry whose parent is a symlink (or not a directory) in DIR is skipped with a note,
//!   so an archive cannot write through a link it planted;
//! - files are created with `O_NOFOLLOW` after removing whatever was there;
//! - device nodes are made only when running as root (skipped with a note otherwise, or when
//!   mknod is refused, as in most containers); FIFOs are made; sockets skipped;
//! - permission bits and mtimes are restored, owners only as root; directories get their
//!   final permissions last, so a read-only directory can still be filled.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::cpio::{self, Entry, Segment};

/// What an extraction did.
#[derive(Debug, Default, Clone)]
pub struct ExtractReport {
    /// Entries written (directories included).
    pub written: usize,
    /// Entries skipped, and why.
    pub notes: Vec<String>,
}

/// Why extraction stopped.
#[derive(Debug, thiserror::Error)]
#[error("cannot extract {path}: {source}")]
pub struct ExtractError {
    pub path: PathBuf,
    pub source: io::Error,
}

fn err(path: &Path) -> impl FnOnce(io::Error) -> ExtractError + '_ {
    move |source| ExtractError {
        path: path.to_owned(),
        source,
    }
}

/// The path of an entry below DIR, or None when it would leave DIR or is the root.
pub fn safe_relative(name: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Extracts all segments into `dir` (created if missing).
pub fn extract(segments: &[Segment], dir: &Path) -> Result<ExtractReport, ExtractError> {
    fs::create_dir_all(dir).map_err(err(dir))?;
    let mut x = Extraction {
        root: fs::canonicalize(dir).map_err(err(dir))?,
        is_root: rustix::process::geteuid().is_root(),
        report: ExtractReport::default(),
        dirs: Vec::new(),
    };
    for seg in segments {
        // The kernel's hard-link table lives until the segment's trailer.
        let mut links = Links::new();
        for e in &seg.entries {
            x.entry(e, &mut links)?;
        }
    }
    x.finish_dirs()
}

/// Hard links seen in one segment: (dev major, dev minor, inode, mode) to the first path.
type Links = HashMap<(u32, u32, u32, u32), PathBuf>;

/// A directory's final mode, mtime and owner, applied at the end.
struct DirMeta {
    path: PathBuf,
    perm: u32,
    mtime: u32,
    uid: u32,
    gid: u32,
}

/// The state of one extraction.
struct Extraction {
    root: PathBuf,
    is_root: bool,
    report: ExtractReport,
    /// Directories: final mode and mtime, applied deepest first at the end.
    dirs: Vec<DirMeta>,
}

/// What making one entry did.
enum Made {
    /// Made; its owner, mode and mtime are still to be set.
    Node,
    /// Made and complete (a directory waiting for the end, or a data-less extra hard link).
    Done,
    /// Not made; the note says why.
    Skipped(String),
}

impl Extraction {
    /// Makes one entry, or notes why it was skipped.
    fn entry(&mut self, e: &Entry, links: &mut Links) -> Result<(), ExtractError> {
        let Some(path) = self.target(e)? else {
            return Ok(());
        };
        let perm = e.mode & 0o7777;
        let made = match e.file_type() {
            cpio::S_IFDIR => self.make_dir(&path, e, perm)?,
            cpio::S_IFREG => write_file(&path, e, links)?,
            cpio::S_IFLNK => {
                let target = String::from_utf8_lossy(&e.data).into_owned();
                std::os::unix::fs::symlink(&target, &path).map_err(err(&path))?;
                Made::Node
            }
            cpio::S_IFCHR | cpio::S_IFBLK | cpio::S_IFIFO => {
                make_node(&path, e, perm, self.is_root)
            }
            _ => Made::Skipped(format!(
                "{}: socket or unknown type {:o}; skipped",
                e.name,
                e.mode & cpio::S_IFMT
            )),
        };
        match made {
            Made::Node => {
                let mode = (e.file_type() != cpio::S_IFLNK).then_some(perm);
                finish(&path, mode, e.mtime, e.uid, e.gid, self.is_root).map_err(err(&path))?;
                self.report.written += 1;
            }
            Made::Done => self.report.written += 1,
            Made::Skipped(note) => self.report.notes.push(note),
        }
        Ok(())
    }

    /// Where `e` goes below the root, with room made for it; None (and a note) when it is
    /// skipped.
    fn target(&mut self, e: &Entry) -> Result<Option<PathBuf>, ExtractError> {
        let Some(rel) = safe_relative(&e.name) else {
            if e.path() != "/" {
                self.report
                    .notes
                    .push(format!("{}: leaves the target directory; skipped", e.name));
            }
            return Ok(None);
        };
        let path = self.root.join(&rel);
        match parent_ok(&self.root, &rel) {
            Ok(true) => {}
            Ok(false) => {
                self.report.notes.push(format!(
                    "{}: a parent is a symlink or not a directory; skipped",
                    e.name
                ));
                return Ok(None);
            }
            Err(source) => return Err(ExtractError { path, source }),
        }
        if let Some(why) = clear(&path, e).map_err(err(&path))? {
            self.report
                .notes
                .push(format!("{}: {why}; skipped", e.name));
            return Ok(None);
        }
        Ok(Some(path))
    }

    /// Makes (or keeps) a directory, writable by us until `finish_dirs`.
    fn make_dir(&mut self, path: &Path, e: &Entry, perm: u32) -> Result<Made, ExtractError> {
        if !path.is_dir() {
            fs::create_dir(path).map_err(err(path))?;
        }
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(err(path))?;
        self.dirs.push(DirMeta {
            path: path.to_owned(),
            perm,
            mtime: e.mtime,
            uid: e.uid,
            gid: e.gid,
        });
        Ok(Made::Done)
    }

    /// Gives every directory its final mode, owner and mtime; returns the report.
    fn finish_dirs(mut self) -> Result<ExtractReport, ExtractError> {
        // Deepest first: setting a parent's mtime after its children were touched.
        self.dirs.sort_by(|a, b| b.path.cmp(&a.path));
        self.dirs.dedup_by(|a, b| a.path == b.path);
        for d in self.dirs {
            finish(&d.path, Some(d.perm), d.mtime, d.uid, d.gid, self.is_root)
                .map_err(err(&d.path))?;
        }
        Ok(self.report)
    }
}

/// Writes a regular file, or a hard link to an earlier entry of the same segment.
fn write_file(path: &Path, e: &Entry, links: &mut Links) -> Result<Made, ExtractError> {
    let key = (e.dev_major, e.dev_minor, e.ino, e.mode);
    let linked = if e.nlink >= 2 {
        match links.get(&key) {
            Some(first) => {
                fs::hard_link(first, path).map_err(err(path))?;
                true
            }
            None => {
                links.insert(key, path.to_owned());
                false
            }
        }
    } else {
        false
    };
    let mut opts = fs::OpenOptions::new();
    opts.write(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    if linked {
        // GNU cpio puts the data on the last link: write through it.
        if e.data.is_empty() {
            return Ok(Made::Done);
        }
        opts.truncate(true);
    } else {
        opts.create_new(true).mode(0o600);
    }
    let mut f = opts.open(path).map_err(err(path))?;
    f.write_all(&e.data).map_err(err(path))?;
    Ok(Made::Node)
}

/// Makes a device node (as root only) or a FIFO; a refused mknod is a note, not an error.
fn make_node(path: &Path, e: &Entry, perm: u32, is_root: bool) -> Made {
    let kind = match e.file_type() {
        cpio::S_IFCHR => rustix::fs::FileType::CharacterDevice,
        cpio::S_IFBLK => rustix::fs::FileType::BlockDevice,
        _ => rustix::fs::FileType::Fifo,
    };
    if kind != rustix::fs::FileType::Fifo && !is_root {
        return Made::Skipped(format!(
            "{}: device node {},{} skipped (not running as root)",
            e.name, e.rdev_major, e.rdev_minor
        ));
    }
    let dev = rustix::fs::makedev(e.rdev_major, e.rdev_minor);
    match rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        kind,
        rustix::fs::Mode::from_raw_mode(perm),
        dev,
    ) {
        Ok(()) => Made::Node,
        Err(e2) => Made::Skipped(format!("{}: mknod refused ({e2}); skipped", e.name)),
    }
}

/// Whether every parent of `rel` below `root` is a real directory (missing ones are made).
fn parent_ok(root: &Path, rel: &Path) -> io::Result<bool> {
    let mut cur = root.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for c in &parts[..parts.len().saturating_sub(1)] {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // GNU cpio -d makes missing directories; the kernel would drop the entry.
                fs::create_dir(&cur)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Makes room for `e` at `path` as the kernel's `clean_path` does: an existing entry of
/// another kind is removed (a directory only when empty). Returns why not, if not.
fn clear(path: &Path, e: &Entry) -> io::Result<Option<&'static str>> {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(None);
    };
    if meta.is_dir() {
        if e.is_dir() {
            return Ok(None);
        }
        return match fs::remove_dir(path) {
            Ok(()) => Ok(None),
            Err(_) => Ok(Some("a non-empty directory is in the way")),
        };
    }
    // Files are replaced, not written through: a hard link of an earlier segment must not
    // change, and a symlink must not be followed.
    fs::remove_file(path)?;
    Ok(None)
}

/// Owner (as root), then permissions (after chown, which clears setuid), then mtime.
fn finish(
    path: &Path,
    perm: Option<u32>,
    mtime: u32,
    uid: u32,
    gid: u32,
    is_root: bool,
) -> io::Result<()> {
    if is_root {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    }
    if let Some(perm) = perm {
        fs::set_permissions(path, fs::Permissions::from_mode(perm))?;
    }
    let t = rustix::fs::Timespec {
        tv_sec: i64::from(mtime),
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::{ArchiveBuilder, Node};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn safe_paths() {
        assert_eq!(safe_relative("/etc/x"), Some(PathBuf::from("etc/x")));
        assert_eq!(safe_relative("./a/./b"), Some(PathBuf::from("a/b")));
        assert_eq!(safe_relative("a/../../b"), None);
        assert_eq!(safe_relative("."), None);
        assert_eq!(safe_relative("/"), None);
    }

    #[test]
    fn extracts_types_modes_and_times() {
        let mut b = ArchiveBuilder::new();
        b.dir("ro", 0o555).unwrap();
        b.file("ro/inside", 0o4711, b"data".to_vec()).unwrap();
        b.symlink("link", "ro/inside").unwrap();
        b.char_dev("dev/console", 0o600, 5, 1).unwrap();
        b.add(
            "empty",
            Node::File {
                perm: 0o640,
                data: vec![],
            },
        )
        .unwrap();
        let segs = cpio::read_segments(&b.write(1_000_000)).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("x");
        let r = extract(&segs, &out).unwrap();
        assert_eq!(fs::read(out.join("ro/inside")).unwrap(), b"data");
        let m = fs::metadata(out.join("ro/inside")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o4711);
        assert_eq!(m.mtime(), 1_000_000);
        assert_eq!(fs::metadata(out.join("ro")).unwrap().mode() & 0o7777, 0o555);
        assert_eq!(fs::metadata(out.join("ro")).unwrap().mtime(), 1_000_000);
        assert_eq!(
            fs::read_link(out.join("link")).unwrap(),
            PathBuf::from("ro/inside")
        );
        assert_eq!(
            fs::metadata(out.join("empty")).unwrap().mode() & 0o7777,
            0o640
        );
        assert_eq!(
            fs::symlink_metadata(out.join("link")).unwrap().mtime(),
            1_000_000
        );
        let console = fs::symlink_metadata(out.join("dev/console"));
        if rustix::process::geteuid().is_root() {
            // Made, or refused with a note (containers).
            assert!(
                console.is_ok() || r.notes.iter().any(|n| n.contains("mknod")),
                "{:?}",
                r.notes
            );
        } else {
            assert!(console.is_err());
            assert!(r.notes.iter().any(|n| n.contains("not running as root")));
        }
        fs::set_permissions(out.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn raw_entry(name: &str, mode: u32, data: &[u8], ino: u32, nlink: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    #[test]
    fn hostile_names_and_links_stay_inside() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let mut buf = Vec::new();
        buf.extend(raw_entry("../escape", cpio::S_IFREG | 0o644, b"x", 1, 1));
        buf.extend(raw_entry("/abs", cpio::S_IFREG | 0o644, b"abs", 2, 1));
        buf.extend(raw_entry(
            "planted",
            cpio::S_IFLNK | 0o777,
            outside.to_str().unwrap().as_bytes(),
            3,
            1,
        ));
        buf.extend(raw_entry(
            "planted/owned",
            cpio::S_IFREG | 0o644,
            b"pwned",
            4,
            1,
        ));
        // Hard links, GNU cpio style: data on the last one.
        buf.extend(raw_entry("h1", cpio::S_IFREG | 0o644, b"", 9, 2));
        buf.extend(raw_entry("h2", cpio::S_IFREG | 0o644, b"shared", 9, 2));
        // A later duplicate replaces the symlink with a file.
        buf.extend(raw_entry(
            "planted",
            cpio::S_IFREG | 0o600,
            b"file now",
            5,
            1,
        ));
        buf.extend(raw_entry("TRAILER!!!", 0, b"", 0, 1));
        let segs = cpio::read_segments(&buf).unwrap();
        let out = tmp.path().join("out");
        let r = extract(&segs, &out).unwrap();
        assert!(!tmp.path().join("escape").exists());
        assert_eq!(fs::read(out.join("abs")).unwrap(), b"abs");
        assert!(
            fs::read_dir(&outside).unwrap().next().is_none(),
            "wrote through the symlink"
        );
        assert_eq!(fs::read(out.join("planted")).unwrap(), b"file now");
        assert_eq!(fs::read(out.join("h1")).unwrap(), b"shared");
        assert_eq!(
            fs::metadata(out.join("h1")).unwrap().ino(),
            fs::metadata(out.join("h2")).unwrap().ino()
        );
        assert_eq!(r.notes.len(), 2, "{:?}", r.notes);
        assert!(r.notes[0].contains("../escape"));
        assert!(r.notes[1].contains("planted/owned"));
    }
}
