//! Where an output goes, decided by what its path is; shared by every file mkinitrd writes
//! and usable by any binary that writes one file (`Output::create`, write, `commit`).
//!
//! - `-`: standard output (refused when it is a terminal).
//! - A regular file or a new path: written to a temporary file in the same directory, then
//!   renamed over the path, so readers (a running QEMU, a boot loader) see the old file or
//!   the new one, never a partial one; a failed write leaves the old file and no temporary.
//! - A character device or FIFO (`/dev/null`, `/dev/stdout`, a pipe made with mkfifo):
//!   written in place, as a shell redirection would; nothing is replaced.
//! - A directory, a block device or a socket: refused.
//! - A symlink: followed (up to 40 links, relative targets from the link's directory), and
//!   the rules above apply to what it points to; the link stays a link. A dangling link
//!   creates its target, as `>` does.

use std::fs;
use std::io::{self, IsTerminal, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Symlinks followed to find the real output (the kernel's own limit).
const MAX_SYMLINKS: usize = 40;

/// What writing to a path means; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    Stdout,
    /// A character device or FIFO, opened for writing as it is.
    InPlace(PathBuf),
    /// A regular file or a new path (symlinks resolved), replaced atomically.
    Replace(PathBuf),
}

fn refuse(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("it is {what}; outputs are regular files (replaced atomically), character devices, FIFOs or - (standard output)"),
    )
}

/// Decides where `path` is written; reads only metadata and symlinks.
pub fn resolve(path: &Path) -> io::Result<Dest> {
    if path.as_os_str() == "-" {
        return Ok(Dest::Stdout);
    }
    let mut p = path.to_path_buf();
    for _ in 0..=MAX_SYMLINKS {
        let meta = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Dest::Replace(p)),
            Err(e) => return Err(e),
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(&p)?;
            p = match p.parent() {
                Some(dir) if target.is_relative() => dir.join(target),
                _ => target,
            };
            continue;
        }
        return if ft.is_file() {
            Ok(Dest::Replace(p))
        } else if ft.is_char_device() || ft.is_fifo() {
            Ok(Dest::InPlace(p))
        } else if ft.is_dir() {
            Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "it is a directory (name a file in it)",
            ))
        } else if ft.is_block_device() {
            Err(refuse("a block device"))
        } else {
            Err(refuse("a socket"))
        };
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        "too many levels of symbolic links",
    ))
}

/// An output being written; nothing is replaced before [`Output::commit`]. Dropping it
/// uncommitted removes the temporary file.
pub struct Output {
    target: Target,
}

enum Target {
    Stdout(io::Stdout),
    InPlace(fs::File),
    Temp {
        tmp: tempfile::NamedTempFile,
        dest: PathBuf,
    },
}

impl Output {
    /// Opens the output `path` names (see [`resolve`]).
    pub fn create(path: &Path) -> io::Result<Output> {
        let target = match resolve(path)? {
            Dest::Stdout => {
                let out = io::stdout();
                if out.is_terminal() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "standard output is a terminal; redirect it to a file or pipe",
                    ));
                }
                Target::Stdout(out)
            }
            // No O_TRUNC, no O_CREAT: a device or FIFO is used as it is.
            Dest::InPlace(p) => Target::InPlace(fs::OpenOptions::new().write(true).open(p)?),
            Dest::Replace(dest) => Target::Temp {
                tmp: temp_beside(&dest)?,
                dest,
            },
        };
        Ok(Output { target })
    }

    /// Finishes the output: a temporary file is fsynced, made 0644 and renamed over its
    /// destination, then the directory fsynced; a device, FIFO or stdout is flushed.
    pub fn commit(self) -> io::Result<()> {
        match self.target {
            Target::Stdout(mut out) => out.flush(),
            Target::InPlace(mut f) => f.flush(),
            Target::Temp { mut tmp, dest } => {
                tmp.as_file_mut().flush()?;
                // tempfile creates 0600; an initrd is not secret and is read by others (QEMU).
                tmp.as_file()
                    .set_permissions(fs::Permissions::from_mode(0o644))?;
                tmp.as_file().sync_all()?;
                tmp.persist(&dest).map_err(|e| e.error)?;
                // Makes the rename itself durable.
                fs::File::open(parent_dir(&dest))?.sync_all()
            }
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.target {
            Target::Stdout(out) => out.write(buf),
            Target::InPlace(f) => f.write(buf),
            Target::Temp { tmp, .. } => tmp.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.target {
            Target::Stdout(out) => out.flush(),
            Target::InPlace(f) => f.flush(),
            Target::Temp { tmp, .. } => tmp.flush(),
        }
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A temporary file in `dest`'s directory (so the rename cannot cross file systems).
fn temp_beside(dest: &Path) -> io::Result<tempfile::NamedTempFile> {
    let file_name = dest
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(file_name);
    prefix.push(".");
    tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(parent_dir(dest))
}

/// Writes `path` through `fill` (see [`Output`]); on error nothing is replaced.
pub fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let mut out = Output::create(path)?;
    fill(&mut out)?;
    out.commit()
}

/// Counts the bytes written through it.
pub struct Counter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Counter<W> {
    pub fn new(inner: W) -> Self {
        Counter { inner, count: 0 }
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

impl<W: Write> Write for Counter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_and_sets_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("initrd");
        fs::write(&out, b"old").unwrap();
        write_atomically(&out, |f| f.write_all(b"new")).unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(listing(tmp.path()), ["initrd"]);
    }

    #[test]
    fn failure_midway_leaves_old_file_and_no_temp() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("initrd");
        fs::write(&out, b"old").unwrap();
        let e = write_atomically(&out, |f| {
            f.write_all(b"partial")?;
            Err(io::Error::other("injected"))
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "injected");
        assert_eq!(fs::read(&out).unwrap(), b"old");
        assert_eq!(listing(tmp.path()), ["initrd"]);
    }

    #[test]
    fn directory_and_missing_parent_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let e = write_atomically(tmp.path(), |_| Ok(())).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::IsADirectory);
        assert!(write_atomically(&tmp.path().join("no/such/dir/x"), |_| Ok(())).is_err());
        assert!(listing(tmp.path()).is_empty());
    }

    #[test]
    fn decisions() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        assert_eq!(resolve(Path::new("-")).unwrap(), Dest::Stdout);
        assert_eq!(
            resolve(Path::new("/dev/null")).unwrap(),
            Dest::InPlace("/dev/null".into())
        );
        assert_eq!(
            resolve(&d.join("new")).unwrap(),
            Dest::Replace(d.join("new"))
        );
        fs::write(d.join("file"), b"x").unwrap();
        symlink("file", d.join("rel")).unwrap();
        symlink(d.join("rel"), d.join("abs")).unwrap();
        symlink("missing", d.join("dangling")).unwrap();
        symlink("/dev/null", d.join("null")).unwrap();
        symlink(".", d.join("dirlink")).unwrap();
        symlink("loop", d.join("loop")).unwrap();
        assert_eq!(
            resolve(&d.join("abs")).unwrap(),
            Dest::Replace(d.join("file"))
        );
        assert_eq!(
            resolve(&d.join("dangling")).unwrap(),
            Dest::Replace(d.join("missing"))
        );
        assert_eq!(
            resolve(&d.join("null")).unwrap(),
            Dest::InPlace("/dev/null".into())
        );
        assert_eq!(
            resolve(&d.join("dirlink")).unwrap_err().kind(),
            io::ErrorKind::IsADirectory
        );
        assert!(resolve(&d.join("loop"))
            .unwrap_err()
            .to_string()
            .contains("too many levels"));
    }

    #[test]
    fn symlink_stays_and_its_target_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        fs::write(d.join("file"), b"old").unwrap();
        symlink("file", d.join("link")).unwrap();
        write_atomically(&d.join("link"), |f| f.write_all(b"new")).unwrap();
        assert!(fs::symlink_metadata(d.join("link"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(d.join("file")).unwrap(), b"new");
        assert_eq!(listing(d), ["file", "link"]);
    }

    #[test]
    fn dev_null_is_written_in_place() {
        write_atomically(Path::new("/dev/null"), |f| f.write_all(b"gone")).unwrap();
        let meta = fs::metadata("/dev/null").unwrap();
        assert!(meta.file_type().is_char_device());
    }
}
