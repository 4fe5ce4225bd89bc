//! newc (`070701`) archives: a writer that pins every header field, and a reader for
//! buffers made of several (plain or compressed) archives back to back.
//!
//! Hand-written rather than the `cpio` crate: the kernel's unpacker gives meaning to inode
//! numbers together with nlink (hard links), to device numbers, to mtimes and to the order
//! of entries (parents first, later duplicates win), and reproducible output needs every
//! one of those fields under our control. The format is a 110-byte ASCII header; owning it
//! costs less than working around a library's defaults.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use crate::compress::{self, Compression};

/// Magic of the newc format without checksums (the one we write).
pub const MAGIC_NEWC: &[u8; 6] = b"070701";
/// Magic of the newc format with checksums (read, checksum not verified).
pub const MAGIC_CRC: &[u8; 6] = b"070702";
/// Name of the entry that ends an archive.
pub const TRAILER: &str = "TRAILER!!!";
/// Size of a newc header: the magic and 13 fields of 8 hex digits.
pub const HEADER_LEN: usize = 110;
/// The kernel refuses longer names (PATH_MAX including the NUL).
const MAX_NAME: usize = 4095;

pub const S_IFMT: u32 = 0o170_000;
pub const S_IFDIR: u32 = 0o040_000;
pub const S_IFREG: u32 = 0o100_000;
pub const S_IFLNK: u32 = 0o120_000;
pub const S_IFCHR: u32 = 0o020_000;
pub const S_IFBLK: u32 = 0o060_000;
pub const S_IFIFO: u32 = 0o010_000;
pub const S_IFSOCK: u32 = 0o140_000;

/// Why an archive could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("invalid archive path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("archive path {path:?} added twice")]
    Duplicate { path: String },
    #[error("archive path {path:?} is needed as a directory but was added as something else")]
    NotADirectory { path: String },
    #[error("archive entry {path:?} is {size} bytes; newc stores at most 4 GiB per file")]
    TooLarge { path: String, size: usize },
    #[error("archive truncated at offset {offset}: {what}")]
    Truncated { offset: usize, what: &'static str },
    #[error("bad newc magic at offset {offset} (expected 070701)")]
    BadMagic { offset: usize },
    #[error("bad hexadecimal header field `{field}` at offset {offset}")]
    BadField { offset: usize, field: &'static str },
    #[error("plain archive at offset {offset} does not start 4-byte aligned")]
    Misaligned { offset: usize },
    #[error("segment at offset {offset} is {format}-compressed; mkinitrd reads plain, zstd, gzip, xz and lz4 segments")]
    UnsupportedCompression { offset: usize, format: &'static str },
    #[error("cannot decompress the {format} segment at offset {offset}: {source}")]
    Decompress {
        offset: usize,
        format: &'static str,
        source: std::io::Error,
    },
    #[error("archive segment at offset {offset} does not end with {TRAILER}")]
    Unterminated { offset: usize },
    #[error("cannot read {path}: {source}")]
    HostRead { path: PathBuf, source: io::Error },
    #[error("{path} changed while it was packed (it had {expected} bytes when listed)")]
    HostChanged { path: PathBuf, expected: u64 },
    /// Writing the archive out failed (the caller knows where it was going).
    #[error("{0}")]
    Output(io::Error),
}

/// A regular file of the host, read only when the archive is written: an archive of a
/// large closure is never in memory.
#[derive(Debug, Clone, Eq)]
pub struct HostFile {
    pub path: PathBuf,
    /// The size when it was listed; the archive records it, so a file that changes size
    /// before it is written is an error.
    pub size: u64,
    /// The file's identity: files with the same (dev, ino) and `nlink >= 2` are hard links
    /// (as `nix-store --optimise` leaves identical files) and are packed once.
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
}

impl HostFile {
    /// The file at `path`, described by its (not followed) metadata.
    pub fn new(path: PathBuf, meta: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        HostFile {
            path,
            size: meta.len(),
            dev: meta.dev(),
            ino: meta.ino(),
            nlink: meta.nlink(),
        }
    }
}

impl PartialEq for HostFile {
    /// The same file: the same inode, whatever path it was reached by.
    fn eq(&self, other: &Self) -> bool {
        (self.dev, self.ino, self.size) == (other.dev, other.ino, other.size)
    }
}

/// What a path in the archive is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir {
        perm: u32,
    },
    File {
        perm: u32,
        data: Vec<u8>,
    },
    /// A regular file whose contents are read from the host when the archive is written.
    HostFile {
        perm: u32,
        file: HostFile,
    },
    CharDev {
        perm: u32,
        major: u32,
        minor: u32,
    },
    Symlink {
        target: String,
    },
}

impl Node {
    fn is_dir(&self) -> bool {
        matches!(self, Node::Dir { .. })
    }

    /// Bytes of data the entry carries (file contents, symlink target).
    pub fn data_len(&self) -> u64 {
        match self {
            Node::File { data, .. } => data.len() as u64,
            Node::HostFile { file, .. } => file.size,
            Node::Symlink { target } => target.len() as u64,
            Node::Dir { .. } | Node::CharDev { .. } => 0,
        }
    }
}

/// Collects paths, then writes them as one newc archive in a deterministic order.
///
/// Paths are stored without the leading `/` (as the kernel's own `gen_init_cpio` writes
/// them). Missing parent directories are added as mode 0755 directories, because the
/// kernel silently drops an entry whose directory does not exist yet.
#[derive(Debug, Default, Clone)]
pub struct ArchiveBuilder {
    // Sorted by bytes: a parent is a proper prefix of its children, so it sorts first.
    nodes: BTreeMap<String, Node>,
}

impl ArchiveBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory (and its parents). Adding an existing directory again is allowed
    /// and sets its permissions.
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<(), CpioError> {
        self.add(path, Node::Dir { perm })
    }

    /// Adds a regular file (and its parents).
    pub fn file(&mut self, path: &str, perm: u32, data: Vec<u8>) -> Result<(), CpioError> {
        self.add(path, Node::File { perm, data })
    }

    /// Adds a character device node (and its parents).
    pub fn char_dev(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.add(path, Node::CharDev { perm, major, minor })
    }

    /// Adds a symbolic link (and its parents).
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        self.add(
            path,
            Node::Symlink {
                target: target.to_owned(),
            },
        )
    }

    /// Adds any node; see the typed helpers.
    pub fn add(&mut self, path: &str, node: Node) -> Result<(), CpioError> {
        let name = normalize(path)?;
        let size = node.data_len();
        if u32::try_from(size).is_err() {
            return Err(CpioError::TooLarge {
                path: name,
                size: size as usize,
            });
        }
        // Parents first, so that a file where a directory is needed is caught here.
        let mut end = 0;
        while let Some(pos) = name[end..].find('/') {
            let parent = &name[..end + pos];
            match self.nodes.get(parent) {
                Some(n) if n.is_dir() => {}
                Some(_) => {
                    return Err(CpioError::NotADirectory {
                        path: parent.to_owned(),
                    })
                }
                None => {
                    self.nodes
                        .insert(parent.to_owned(), Node::Dir { perm: 0o755 });
                }
            }
            end += pos + 1;
        }
        match self.nodes.get_mut(&name) {
            Some(existing) if existing.is_dir() && node.is_dir() => *existing = node,
            Some(existing) if existing.is_dir() => {
                return Err(CpioError::NotADirectory { path: name })
            }
            Some(_) => return Err(CpioError::Duplicate { path: name }),
            None => {
                self.nodes.insert(name, node);
            }
        }
        Ok(())
    }

    /// The node added at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&Node> {
        normalize(path).ok().and_then(|n| self.nodes.get(&n))
    }

    /// Paths (without the leading `/`) and nodes, in archive order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.nodes.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Bytes of file data and symlink targets held (hard links counted once each).
    pub fn data_len(&self) -> usize {
        self.nodes.values().map(|n| n.data_len() as usize).sum()
    }

    /// Number of entries (without the trailer).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The archive in memory; see [`ArchiveBuilder::write_to`]. Host files are read here: an
    /// archive holding them is written with `write_to`, which reports read errors.
    pub fn write(&self, mtime: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.archive_len() as usize);
        if let Err(e) = self.write_to(mtime, &mut out) {
            panic!("ArchiveBuilder::write: {e} (use write_to for archives of host files)");
        }
        out
    }

    /// Inode numbers, link counts and which entry carries the data, per entry in order:
    /// inode numbers 1, 2, ... in archive order, nlink 1 (2 for directories). Host files
    /// that are the same inode (hard links, `nlink >= 2` on the host) and appear more than
    /// once form a link group: every member gets the first member's inode number and the
    /// group's size as nlink, and only the last member carries the data, as GNU cpio writes
    /// newc. The kernel (init/initramfs.c: maybe_link) creates the first member, links the
    /// others to it, and writes the data when it comes; `cpio -i` defers the members until
    /// the data arrives.
    fn placement(&self) -> Vec<Placed> {
        let mut placed: Vec<Placed> = (1u32..)
            .zip(self.nodes.values())
            .map(|(ino, node)| Placed {
                ino,
                nlink: if node.is_dir() { 2 } else { 1 },
                carries_data: true,
            })
            .collect();
        let mut groups: HashMap<(u64, u64), Vec<usize>> = HashMap::new();
        for (i, node) in self.nodes.values().enumerate() {
            if let Node::HostFile { file, .. } = node {
                if file.nlink >= 2 {
                    groups.entry((file.dev, file.ino)).or_default().push(i);
                }
            }
        }
        for members in groups.values().filter(|m| m.len() >= 2) {
            let (first, last) = (members[0], members[members.len() - 1]);
            let ino = placed[first].ino;
            for &m in members {
                placed[m] = Placed {
                    ino,
                    // A group is at most the archive's entries, which are far fewer than 2^32.
                    nlink: members.len() as u32,
                    carries_data: m == last,
                };
            }
        }
        placed
    }

    /// Bytes [`ArchiveBuilder::write_to`] writes (hard links counted once).
    pub fn archive_len(&self) -> u64 {
        let entries: u64 = self
            .nodes
            .iter()
            .zip(self.placement())
            .map(|((name, node), p)| {
                let data = if p.carries_data { node.data_len() } else { 0 };
                entry_len(name, data)
            })
            .sum();
        entries + entry_len(TRAILER, 0)
    }

    /// Bytes that hard links saved: the data of every link group member but the last.
    pub fn hard_link_savings(&self) -> u64 {
        self.nodes
            .values()
            .zip(self.placement())
            .filter(|(_, p)| !p.carries_data)
            .map(|(node, _)| align4(node.data_len() as usize) as u64)
            .sum()
    }

    /// Writes the archive to `out`: entries in byte order of their names, inode numbers and
    /// links as [`ArchiveBuilder::placement`] gives, uid/gid 0, every mtime `mtime`, device
    /// numbers 0, then the trailer; [`ArchiveBuilder::archive_len`] bytes, a multiple of 4.
    /// Host files are read as they are written, one buffer at a time.
    pub fn write_to(&self, mtime: u32, out: &mut impl Write) -> Result<u64, CpioError> {
        let mut head = Vec::with_capacity(HEADER_LEN + 64);
        let mut buf = Vec::new();
        let mut written = 0u64;
        for ((name, node), placed) in self.nodes.iter().zip(self.placement()) {
            let (mode, rdev) = match node {
                Node::Dir { perm } => (S_IFDIR | (perm & 0o7777), (0, 0)),
                Node::File { perm, .. } | Node::HostFile { perm, .. } => {
                    (S_IFREG | (perm & 0o7777), (0, 0))
                }
                Node::CharDev { perm, major, minor } => {
                    (S_IFCHR | (perm & 0o7777), (*major, *minor))
                }
                Node::Symlink { .. } => (S_IFLNK | 0o777, (0, 0)),
            };
            let size = if placed.carries_data {
                node.data_len()
            } else {
                0
            };
            let header = Header {
                ino: placed.ino,
                mode,
                uid: 0,
                gid: 0,
                nlink: placed.nlink,
                mtime,
                // Checked in `add`.
                filesize: size as u32,
                dev: (0, 0),
                rdev,
            };
            head.clear();
            write_header(&mut head, &header, name);
            out.write_all(&head).map_err(CpioError::Output)?;
            match node {
                _ if size == 0 => {}
                Node::File { data, .. } => out.write_all(data).map_err(CpioError::Output)?,
                Node::Symlink { target } => out
                    .write_all(target.as_bytes())
                    .map_err(CpioError::Output)?,
                Node::HostFile { file, .. } => copy_host_file(file, out, &mut buf)?,
                Node::Dir { .. } | Node::CharDev { .. } => {}
            }
            let pad = align4(size as usize) - size as usize;
            out.write_all(&[0; 3][..pad]).map_err(CpioError::Output)?;
            written += entry_len(name, size);
        }
        let trailer = Header {
            ino: 0,
            mode: 0,
            uid: 0,
            gid: 0,
            nlink: 1,
            mtime: 0,
            filesize: 0,
            dev: (0, 0),
            rdev: (0, 0),
        };
        head.clear();
        write_header(&mut head, &trailer, TRAILER);
        out.write_all(&head).map_err(CpioError::Output)?;
        Ok(written + entry_len(TRAILER, 0))
    }
}

/// Where an entry's inode number, link count and data go (see `placement`).
#[derive(Debug, Clone, Copy)]
struct Placed {
    ino: u32,
    nlink: u32,
    carries_data: bool,
}

/// Bytes of one entry: header, name and NUL padded to 4, data padded to 4.
fn entry_len(name: &str, data: u64) -> u64 {
    (align4(HEADER_LEN + name.len() + 1) + align4(data as usize)) as u64
}

/// Copies exactly `file.size` bytes of a host file; a file that is shorter or longer now
/// than when it was listed is an error (the header already holds its size).
fn copy_host_file(
    file: &HostFile,
    out: &mut impl Write,
    buf: &mut Vec<u8>,
) -> Result<(), CpioError> {
    let read_err = |source| CpioError::HostRead {
        path: file.path.clone(),
        source,
    };
    let changed = || CpioError::HostChanged {
        path: file.path.clone(),
        expected: file.size,
    };
    if buf.is_empty() {
        buf.resize(256 << 10, 0);
    }
    let mut f = fs::File::open(&file.path).map_err(read_err)?;
    let mut left = file.size;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match f.read(&mut buf[..want]) {
            Ok(0) => return Err(changed()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        out.write_all(&buf[..n]).map_err(CpioError::Output)?;
        left -= n as u64;
    }
    match f.read(&mut buf[..1]) {
        Ok(0) => Ok(()),
        Ok(_) => Err(changed()),
        Err(e) => Err(read_err(e)),
    }
}

/// Strips leading `/`, refuses what the kernel would mangle or what could escape the root.
fn normalize(path: &str) -> Result<String, CpioError> {
    let bad = |reason| CpioError::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    let name = path.trim_start_matches('/');
    if name.is_empty() {
        return Err(bad("empty (the root is implicit)"));
    }
    if name.len() > MAX_NAME {
        return Err(bad("longer than PATH_MAX"));
    }
    if name.contains('\0') {
        return Err(bad("contains NUL"));
    }
    // `TRAILER!!!/x` would make its parent an entry named like the trailer (found by the
    // roundtrip fuzz target): the kernel would end the archive there.
    if name.split('/').next() == Some(TRAILER) {
        return Err(bad("is or starts with the trailer name"));
    }
    for component in name.split('/') {
        match component {
            "" => return Err(bad("empty component or trailing `/`")),
            "." | ".." => return Err(bad("`.` or `..` component")),
            _ => {}
        }
    }
    Ok(name.to_owned())
}

struct Header {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    dev: (u32, u32),
    rdev: (u32, u32),
}

fn pad4(out: &mut Vec<u8>) {
    // `& 3` rather than `is_multiple_of`, which is newer than the workspace's rust-version.
    while out.len() & 3 != 0 {
        out.push(0);
    }
}

/// Header, name, NUL and padding; `out` starts 4-byte aligned in the archive.
fn write_header(out: &mut Vec<u8>, h: &Header, name: &str) {
    let namesize = name.len() as u32 + 1;
    let fields = [
        h.ino, h.mode, h.uid, h.gid, h.nlink, h.mtime, h.filesize, h.dev.0, h.dev.1, h.rdev.0,
        h.rdev.1, namesize, 0,
    ];
    out.extend_from_slice(MAGIC_NEWC);
    for f in fields {
        // Uppercase like the kernel's gen_init_cpio; readers accept either case.
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

/// One entry read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name exactly as stored (usually without a leading `/`).
    pub name: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub ino: u32,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    /// File contents, or the target of a symlink.
    pub data: Vec<u8>,
}

impl Entry {
    pub fn file_type(&self) -> u32 {
        self.mode & S_IFMT
    }

    pub fn is_dir(&self) -> bool {
        self.file_type() == S_IFDIR
    }

    /// The name as an absolute path inside the initramfs (`dev/console` -> `/dev/console`).
    pub fn path(&self) -> String {
        let trimmed = self.name.trim_start_matches("./").trim_start_matches('/');
        if trimmed.is_empty() || trimmed == "." {
            "/".to_owned()
        } else {
            format!("/{trimmed}")
        }
    }
}

/// One archive inside a buffer.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Where the archive (or the compressed stream holding it) starts in the buffer.
    pub offset: usize,
    /// How the stream holding the archive is compressed.
    pub compression: Compression,
    /// Bytes the stream takes in the buffer (compressed size for compressed streams; for
    /// several archives inside one compressed stream, each reports the stream's size).
    pub stored_len: usize,
    /// Entries in order, without the trailer.
    pub entries: Vec<Entry>,
    /// Whether the archive ended with a `TRAILER!!!` entry.
    pub terminated: bool,
    /// What the kernel would trip over around this segment (see [`crate::inspect`]).
    pub problems: Vec<String>,
}

/// Reads every archive of a buffer as the kernel would: plain or compressed streams back
/// to back, with NUL padding between them. An archive missing its trailer is reported
/// (`terminated == false`), not refused; a truncated entry is an error. Each compressed
/// stream may decompress to at most [`compress::DEFAULT_DECOMPRESS_LIMIT`] bytes.
pub fn read_segments(bytes: &[u8]) -> Result<Vec<Segment>, CpioError> {
    read_segments_limited(bytes, compress::DEFAULT_DECOMPRESS_LIMIT)
}

/// [`read_segments`] with a bound on what each compressed stream may decompress to.
pub fn read_segments_limited(bytes: &[u8], limit: usize) -> Result<Vec<Segment>, CpioError> {
    let mut segments = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        if bytes[pos] == 0 {
            pos += 1;
            continue;
        }
        let format = compress::sniff(&bytes[pos..]).ok_or(CpioError::BadMagic { offset: pos })?;
        let compression =
            Compression::from_format(format).ok_or(CpioError::UnsupportedCompression {
                offset: pos,
                format: format.name(),
            })?;
        if compression == Compression::None {
            if pos % 4 != 0 {
                return Err(CpioError::Misaligned { offset: pos });
            }
            let (entries, terminated, len) = parse_archive(&bytes[pos..], pos)?;
            segments.push(Segment {
                offset: pos,
                compression,
                stored_len: len,
                entries,
                terminated,
                problems: Vec::new(),
            });
            pos += len;
            continue;
        }
        let d =
            compress::decompress_stream(compression, &bytes[pos..], limit).map_err(|source| {
                CpioError::Decompress {
                    offset: pos,
                    format: format.name(),
                    source,
                }
            })?;
        let first = segments.len();
        let plain = &d.data;
        let mut inner = 0;
        while inner < plain.len() {
            if plain[inner] == 0 {
                inner += 1;
                continue;
            }
            if inner % 4 != 0 {
                return Err(CpioError::Misaligned { offset: pos });
            }
            let (entries, terminated, len) = parse_archive(&plain[inner..], pos)?;
            segments.push(Segment {
                offset: pos,
                compression,
                stored_len: d.consumed,
                entries,
                terminated,
                problems: Vec::new(),
            });
            inner += len;
        }
        if segments.len() == first {
            // An empty stream still is a segment without a trailer.
            segments.push(Segment {
                offset: pos,
                compression,
                stored_len: d.consumed,
                entries: Vec::new(),
                terminated: false,
                problems: Vec::new(),
            });
        }
        if let (Some(problem), Some(last)) = (d.problem, segments.last_mut()) {
            last.problems.push(problem);
        }
        // A stream that took no bytes cannot happen for the formats above; never loop.
        pos += d.consumed.max(1);
    }
    Ok(segments)
}

/// All entries of all segments in order; every segment must end with a trailer.
pub fn read_archive(bytes: &[u8]) -> Result<Vec<Entry>, CpioError> {
    let mut entries = Vec::new();
    for segment in read_segments(bytes)? {
        if !segment.terminated {
            return Err(CpioError::Unterminated {
                offset: segment.offset,
            });
        }
        entries.extend(segment.entries);
    }
    Ok(entries)
}

/// Parses one archive at the start of `buf`. Returns the entries, whether a trailer was
/// found, and the bytes used (trailer and its padding included). `base` only labels errors.
fn parse_archive(buf: &[u8], base: usize) -> Result<(Vec<Entry>, bool, usize), CpioError> {
    let mut entries = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let at = base + pos;
        let header = buf.get(pos..pos + HEADER_LEN).ok_or(CpioError::Truncated {
            offset: at,
            what: "header",
        })?;
        if &header[..6] != MAGIC_NEWC && &header[..6] != MAGIC_CRC {
            return Err(CpioError::BadMagic { offset: at });
        }
        const NAMES: [&str; 13] = [
            "ino",
            "mode",
            "uid",
            "gid",
            "nlink",
            "mtime",
            "filesize",
            "devmajor",
            "devminor",
            "rdevmajor",
            "rdevminor",
            "namesize",
            "check",
        ];
        let mut f = [0u32; 13];
        for (i, slot) in f.iter_mut().enumerate() {
            let text = &header[6 + 8 * i..14 + 8 * i];
            *slot = std::str::from_utf8(text)
                .ok()
                .and_then(|t| u32::from_str_radix(t, 16).ok())
                .ok_or(CpioError::BadField {
                    offset: at,
                    field: NAMES[i],
                })?;
        }
        let namesize = f[11] as usize;
        let filesize = f[6] as usize;
        if namesize == 0 {
            return Err(CpioError::BadField {
                offset: at,
                field: "namesize",
            });
        }
        let name_start = pos + HEADER_LEN;
        let raw_name = buf
            .get(name_start..name_start + namesize)
            .ok_or(CpioError::Truncated {
                offset: at,
                what: "name",
            })?;
        // The stored size counts the terminating NUL.
        let name_bytes = raw_name.split(|b| *b == 0).next().unwrap_or_default();
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        let data_start = align4(name_start + namesize);
        let data = buf
            .get(data_start..data_start + filesize)
            .ok_or(CpioError::Truncated {
                offset: at,
                what: "file data",
            })?;
        pos = align4(data_start + filesize);
        if name == TRAILER {
            return Ok((entries, true, pos.min(buf.len())));
        }
        entries.push(Entry {
            name,
            ino: f[0],
            mode: f[1],
            uid: f[2],
            gid: f[3],
            nlink: f[4],
            mtime: f[5],
            dev_major: f[7],
            dev_minor: f[8],
            rdev_major: f[9],
            rdev_minor: f[10],
            data: data.to_vec(),
        });
    }
    Ok((entries, false, buf.len()))
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ArchiveBuilder {
        let mut b = ArchiveBuilder::new();
        b.file("/etc/nixboot/initrd.json", 0o644, b"{}\n".to_vec())
            .unwrap();
        b.char_dev("/dev/console", 0o600, 5, 1).unwrap();
        b.file("/init", 0o755, vec![1, 2, 3, 4, 5]).unwrap();
        b.symlink("/bin/sh", "busybox").unwrap();
        b.dir("/proc", 0o755).unwrap();
        b
    }

    #[test]
    fn header_layout_is_newc() {
        let bytes = sample().write(7);
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(bytes.len() % 4, 0);
        // 13 fields of 8 hex digits, then the name.
        let first_name_len = usize::from_str_radix(
            std::str::from_utf8(&bytes[6 + 8 * 11..6 + 8 * 12]).unwrap(),
            16,
        )
        .unwrap();
        assert_eq!(&bytes[HEADER_LEN..HEADER_LEN + first_name_len], b"bin\0");
        let tail = std::str::from_utf8(&bytes[bytes.len() - 16..]).unwrap_or("");
        assert!(tail.contains(TRAILER), "{tail:?}");
    }

    #[test]
    fn round_trip_fields() {
        let entries = read_archive(&sample().write(1234)).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "etc",
                "etc/nixboot",
                "etc/nixboot/initrd.json",
                "init",
                "proc"
            ]
        );
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.ino as usize, i + 1, "{}", e.name);
            assert_eq!(e.mtime, 1234);
            assert_eq!((e.uid, e.gid, e.dev_major, e.dev_minor), (0, 0, 0, 0));
            assert_eq!(e.nlink, if e.is_dir() { 2 } else { 1 }, "{}", e.name);
        }
        let console = &entries[3];
        assert_eq!(console.mode, S_IFCHR | 0o600);
        assert_eq!((console.rdev_major, console.rdev_minor), (5, 1));
        let init = &entries[7];
        assert_eq!(init.mode, S_IFREG | 0o755);
        assert_eq!(init.data, [1, 2, 3, 4, 5]);
        assert_eq!(entries[1].mode, S_IFLNK | 0o777);
        assert_eq!(entries[1].data, b"busybox");
    }

    #[test]
    fn bad_paths_and_conflicts_are_refused() {
        let mut b = ArchiveBuilder::new();
        for p in [
            "",
            "/",
            "a//b",
            "a/../b",
            "./a",
            "a/",
            "TRAILER!!!",
            "/TRAILER!!!/x",
        ] {
            assert!(
                matches!(b.dir(p, 0o755), Err(CpioError::InvalidPath { .. })),
                "{p:?} accepted"
            );
        }
        b.file("a/f", 0o644, vec![]).unwrap();
        assert!(matches!(
            b.file("a/f", 0o644, vec![]),
            Err(CpioError::Duplicate { .. })
        ));
        assert!(matches!(
            b.file("a/f/g", 0o644, vec![]),
            Err(CpioError::NotADirectory { .. })
        ));
        assert!(matches!(
            b.file("a", 0o644, vec![]),
            Err(CpioError::NotADirectory { .. })
        ));
        // The trailer's name deeper down is an ordinary name.
        b.file("a/TRAILER!!!", 0o644, vec![]).unwrap();
        // Re-adding a directory is fine and keeps one entry.
        b.dir("a", 0o700).unwrap();
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn reader_handles_padding_and_concatenation() {
        let one = sample().write(0);
        let mut two = ArchiveBuilder::new();
        two.file("x/y", 0o644, b"later".to_vec()).unwrap();
        let mut buf = one.clone();
        buf.extend_from_slice(&[0; 12]);
        buf.extend_from_slice(&compress::compress(Compression::Zstd, &two.write(0)).unwrap());
        buf.extend_from_slice(&[0; 3]);
        let segs = read_segments(&buf).unwrap();
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[0].compression, Compression::None);
        assert_eq!(segs[1].compression, Compression::Zstd);
        assert!(segs.iter().all(|s| s.terminated));
        assert_eq!(segs[1].entries.last().unwrap().data, b"later");
        assert_eq!(read_archive(&buf).unwrap().len(), 11);
    }

    #[test]
    fn reader_reads_every_compression_back_to_back() {
        let mut buf = sample().write(0);
        let mut names = vec![];
        for (i, c) in Compression::ALL.iter().enumerate() {
            let mut b = ArchiveBuilder::new();
            let name = format!("seg{i}/{c}");
            b.file(&name, 0o644, c.name().repeat(100).into_bytes())
                .unwrap();
            names.push(name);
            buf.extend_from_slice(&compress::compress(*c, &b.write(0)).unwrap());
            // NUL padding between streams, keeping plain archives aligned.
            buf.extend_from_slice(&[0; 4]);
            while buf.len() & 3 != 0 {
                buf.push(0);
            }
        }
        // lz4 has no end marker: the kernel stops at the zero padding that follows it here.
        let segs = read_segments(&buf).unwrap();
        assert_eq!(segs.len(), 1 + Compression::ALL.len());
        for (seg, c) in segs[1..].iter().zip(Compression::ALL) {
            assert_eq!(seg.compression, *c);
            assert!(seg.terminated);
            assert_eq!(
                seg.entries.last().unwrap().data,
                c.name().repeat(100).as_bytes()
            );
        }
        assert!(segs.iter().all(|s| s.problems.is_empty()));
        // Without padding, the kernel reads the next stream as an lz4 block and fails.
        let mut b = ArchiveBuilder::new();
        b.file("x", 0o644, vec![1; 50]).unwrap();
        let mut tight = compress::compress(Compression::Lz4, &b.write(0)).unwrap();
        tight.extend_from_slice(&compress::compress(Compression::Zstd, &b.write(0)).unwrap());
        let segs = read_segments(&tight).unwrap();
        assert_eq!(segs.len(), 2);
        assert!(
            segs[0].problems[0].contains("must be the last"),
            "{:?}",
            segs[0].problems
        );
    }

    #[test]
    fn reader_reports_damage() {
        let bytes = sample().write(0);
        // Cut inside the first entry's data and inside a header.
        assert!(matches!(
            read_archive(&bytes[..HEADER_LEN - 10]),
            Err(CpioError::Truncated { .. })
        ));
        // Without the trailer: a segment that is not terminated.
        let last_header = bytes.len() - align4(HEADER_LEN + TRAILER.len() + 1);
        let cut = &bytes[..last_header];
        let segs = read_segments(cut).unwrap();
        assert!(!segs[0].terminated);
        assert!(matches!(
            read_archive(cut),
            Err(CpioError::Unterminated { offset: 0 })
        ));
        let mut junk = bytes.clone();
        junk[0] = b'X';
        assert!(matches!(
            read_archive(&junk),
            Err(CpioError::BadMagic { offset: 0 })
        ));
        let mut gz = vec![0x1f, 0x8b, 8, 0];
        gz.extend_from_slice(&[0; 20]);
        assert!(matches!(
            read_archive(&gz),
            Err(CpioError::Decompress { format: "gzip", .. })
        ));
        assert!(matches!(
            read_archive(b"BZh91AY&SY"),
            Err(CpioError::UnsupportedCompression {
                format: "bzip2",
                ..
            })
        ));
        let mut misaligned = vec![0u8; 2];
        misaligned.extend_from_slice(&bytes);
        assert!(matches!(
            read_archive(&misaligned),
            Err(CpioError::Misaligned { offset: 2 })
        ));
    }
}
