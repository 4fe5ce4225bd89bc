//! `mkinitrd inspect`: lists every segment of an initramfs and checks the rules the
//! kernel's unpacker relies on.

use std::collections::BTreeSet;
use std::fmt;

use crate::cpio::{self, CpioError, Entry, Segment};

/// Segments read from a buffer, and the kernel rules they break.
#[derive(Debug, Clone)]
pub struct Report {
    pub segments: Vec<Segment>,
    /// Empty when the buffer is fine.
    pub violations: Vec<String>,
}

/// Reads and checks a buffer. Structural damage (truncation, bad magic) is an error;
/// rule violations are listed in the report.
pub fn inspect(bytes: &[u8]) -> Result<Report, CpioError> {
    inspect_limited(bytes, crate::compress::DEFAULT_DECOMPRESS_LIMIT)
}

/// [`inspect`] with a bound on what each compressed stream may decompress to.
pub fn inspect_limited(bytes: &[u8], limit: usize) -> Result<Report, CpioError> {
    let segments = cpio::read_segments_limited(bytes, limit)?;
    let violations = check_rules(&segments);
    Ok(Report {
        segments,
        violations,
    })
}

/// The rules: every segment ends with a trailer (it resets the kernel's hard-link table);
/// every entry's directory exists already, in this or an earlier segment (the kernel
/// silently drops entries whose parent is missing); early microcode is in the first segment,
/// uncompressed (the early loader looks nowhere else); nothing follows an lz4 stream but
/// padding (the kernel's unlz4 has no end marker, see [`crate::compress`]).
pub fn check_rules(segments: &[Segment]) -> Vec<String> {
    let mut violations = Vec::new();
    let mut dirs: BTreeSet<String> = BTreeSet::from(["/".to_owned()]);
    for (i, seg) in segments.iter().enumerate() {
        for e in &seg.entries {
            let path = e.path();
            if path == "/" {
                continue;
            }
            let parent = match path.rfind('/') {
                Some(0) | None => "/",
                Some(p) => &path[..p],
            };
            if !dirs.contains(parent) {
                violations.push(format!(
                    "segment {}: {} comes before its directory {parent}",
                    i + 1,
                    e.name
                ));
            }
            if path.starts_with("/kernel/x86/microcode/")
                && !e.is_dir()
                && (i > 0 || seg.compression != crate::compress::Compression::None)
            {
                violations.push(format!(
                    "segment {}: {} is early microcode, but the kernel reads it only from a first, uncompressed segment",
                    i + 1,
                    e.name
                ));
            }
            if e.is_dir() {
                dirs.insert(path);
            } else {
                // A later file replaces a directory of that name in rootfs only if empty;
                // either way it no longer is a directory for later entries.
                dirs.remove(&path);
            }
        }
        for p in &seg.problems {
            violations.push(format!("segment {}: {p}", i + 1));
        }
        if !seg.terminated {
            violations.push(format!(
                "segment {} (offset {}) does not end with {}",
                i + 1,
                seg.offset,
                cpio::TRAILER
            ));
        }
    }
    violations
}

/// `ls -l` style type and permission letters.
pub fn mode_string(mode: u32) -> String {
    let kind = match mode & cpio::S_IFMT {
        cpio::S_IFDIR => 'd',
        cpio::S_IFREG => '-',
        cpio::S_IFLNK => 'l',
        cpio::S_IFCHR => 'c',
        cpio::S_IFBLK => 'b',
        cpio::S_IFIFO => 'p',
        cpio::S_IFSOCK => 's',
        _ => '?',
    };
    let mut s = String::with_capacity(10);
    s.push(kind);
    let special = [(0o4000, 's', 'S'), (0o2000, 's', 'S'), (0o1000, 't', 'T')];
    for (i, who) in [6u32, 3, 0].into_iter().enumerate() {
        let bits = (mode >> who) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let (flag, with_x, without_x) = special[i];
        s.push(match (bits & 1 != 0, mode & flag != 0) {
            (true, true) => with_x,
            (false, true) => without_x,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

fn entry_line(e: &Entry) -> String {
    let size = match e.file_type() {
        cpio::S_IFCHR | cpio::S_IFBLK => format!("{},{}", e.rdev_major, e.rdev_minor),
        _ => e.data.len().to_string(),
    };
    let mut line = format!(
        "{} {:>5} {:>5} {:>3} {:>9} {:>10} {}",
        mode_string(e.mode),
        e.uid,
        e.gid,
        e.nlink,
        size,
        e.mtime,
        e.name
    );
    if e.file_type() == cpio::S_IFLNK {
        line.push_str(" -> ");
        line.push_str(&String::from_utf8_lossy(&e.data));
    }
    line
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.segments.iter().enumerate() {
            writeln!(
                f,
                "segment {}: offset {}, {}, {} bytes stored, {} entries{}",
                i + 1,
                seg.offset,
                seg.compression,
                seg.stored_len,
                seg.entries.len(),
                if seg.terminated { "" } else { ", NO TRAILER" }
            )?;
            writeln!(f, "mode        uid   gid nlink     size      mtime name")?;
            for e in &seg.entries {
                writeln!(f, "{}", entry_line(e))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::Compression;

    fn entry(name: &str, mode: u32) -> Entry {
        Entry {
            name: name.to_owned(),
            mode,
            uid: 0,
            gid: 0,
            nlink: 1,
            mtime: 0,
            ino: 1,
            dev_major: 0,
            dev_minor: 0,
            rdev_major: 0,
            rdev_minor: 0,
            data: Vec::new(),
        }
    }

    fn seg(entries: Vec<Entry>, terminated: bool) -> Segment {
        Segment {
            offset: 0,
            compression: Compression::None,
            stored_len: 0,
            entries,
            terminated,
            problems: Vec::new(),
        }
    }

    #[test]
    fn parents_must_come_first_across_segments() {
        let ok = [
            seg(vec![entry("a", cpio::S_IFDIR | 0o755)], true),
            seg(
                vec![
                    entry("a/b", cpio::S_IFREG | 0o644),
                    entry("./c", cpio::S_IFREG),
                ],
                true,
            ),
        ];
        assert!(check_rules(&ok).is_empty(), "{:?}", check_rules(&ok));
        let bad = [seg(
            vec![
                entry("x/y", cpio::S_IFREG),
                entry("x", cpio::S_IFDIR | 0o755),
                entry("f", cpio::S_IFREG),
                entry("f/g", cpio::S_IFREG),
            ],
            false,
        )];
        let v = check_rules(&bad);
        assert_eq!(v.len(), 3, "{v:?}");
        assert!(v[0].contains("x/y") && v[0].contains("/x"));
        assert!(v[1].contains("f/g"));
        assert!(v[2].contains("TRAILER!!!"));
    }

    #[test]
    fn modes_render_like_ls() {
        assert_eq!(mode_string(cpio::S_IFDIR | 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(cpio::S_IFCHR | 0o600), "crw-------");
        assert_eq!(mode_string(cpio::S_IFREG | 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(cpio::S_IFDIR | 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(cpio::S_IFLNK | 0o777), "lrwxrwxrwx");
    }

    #[test]
    fn listing_shows_devices_and_links() {
        let mut b = cpio::ArchiveBuilder::new();
        b.char_dev("dev/console", 0o600, 5, 1).unwrap();
        b.symlink("bin/sh", "busybox").unwrap();
        let r = inspect(&b.write(42)).unwrap();
        assert!(r.violations.is_empty());
        let text = r.to_string();
        assert!(text.contains("segment 1: offset 0, none"), "{text}");
        assert!(
            text.lines().any(|l| l.starts_with("crw-------")
                && l.contains(" 5,1 ")
                && l.ends_with("dev/console")),
            "{text}"
        );
        assert!(text.contains("bin/sh -> busybox"), "{text}");
    }
}
