//! The store packed in the initramfs (`mkinitrd --embed-store`), brought into the new root.
//!
//! rootfs cannot be moved or bind-mounted into the new root (it is deleted at the switch),
//! so the files are copied, and each source is unlinked as soon as its copy is complete:
//! memory peaks near one copy of the store plus one file, not two copies. Modes, owners,
//! mtimes and symlinks are preserved (Nix tooling expects the store's mtime 1, for one).

use crate::failure::Failure;
use crate::log::errno;
use crate::plan::step::copy_text;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use std::ffi::{CStr, CString};

/// What the copy did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Copied {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Device nodes, fifos, sockets: never in a Nix store; left behind, counted.
    pub skipped: u64,
}

/// The copy-store step: the embedded store into the new root; `Ok` is the log line.
pub fn copy_store(
    step: &'static str,
    from: &str,
    to: &str,
    tmpfs_size: &str,
) -> Result<String, Failure> {
    let c = copy_embedded(step, from, to, tmpfs_size)?;
    let mut msg = format!(
        "{}: {} files, {} symlinks, {} directories, {:.1} MiB",
        copy_text(from, to),
        c.files,
        c.symlinks,
        c.dirs,
        c.bytes as f64 / (1024.0 * 1024.0)
    );
    if c.skipped > 0 {
        msg.push_str(&format!(
            "; {} special files left behind (not expected in a store)",
            c.skipped
        ));
    }
    Ok(msg)
}

/// The carry step: files carried into the initramfs (kexec), when there are any, into the
/// new root's /run; `Ok` is the log line.
pub fn carry(
    step: &'static str,
    from: &str,
    to: &str,
    tmpfs_size: &str,
) -> Result<String, Failure> {
    if rustix::fs::access(from, rustix::fs::Access::EXISTS).is_err() {
        return Ok("nothing carried".into());
    }
    let c = copy_embedded(step, from, to, tmpfs_size)?;
    // Host keys among them: readable by root only, whatever the archive said.
    rustix::fs::chmod(to, Mode::from_raw_mode(0o700))
        .map_err(|e| Failure::new(step, format!("chmod 0700 {to}: {}", errno(e))))?;
    Ok(format!(
        "{}: {} files, {} symlinks",
        copy_text(from, to),
        c.files,
        c.symlinks
    ))
}

/// Why the copy stopped: the path (relative to the store) and the error.
struct CopyError {
    path: String,
    what: &'static str,
    errno: Errno,
}

/// Copies `from` (a directory of the initramfs) to `to` (in the new root), unlinking as it
/// goes. `tmpfs_size` is only for the message when the new root fills up.
pub fn copy_embedded(
    step: &'static str,
    from: &str,
    to: &str,
    tmpfs_size: &str,
) -> Result<Copied, Failure> {
    let src = rustix::fs::open(
        from,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        Failure::new(
            step,
            format!(
                "the initrd's configuration says it carries a store at {from}, but {from} \
                 cannot be opened: {}",
                errno(e)
            ),
        )
        .check("rebuild the initrd with mkinitrd --embed-store (same version as this init)")
    })?;
    let st = rustix::fs::fstat(&src).map_err(|e| Failure::new(step, errno(e)))?;
    let parent = std::path::Path::new(to)
        .parent()
        .and_then(|p| p.to_str())
        .unwrap_or("/");
    crate::mounts::mkdir_p(parent)
        .map_err(|(d, e)| Failure::new(step, format!("cannot create {d}: {}", errno(e))))?;
    let mut copied = Copied::default();
    let to_c = CString::new(to).map_err(|_| Failure::new(step, format!("{to:?}: NUL in path")))?;
    let result = make_dir(rustix::fs::CWD, &to_c)
        .map_err(|errno| CopyError {
            path: String::new(),
            what: "mkdir",
            errno,
        })
        .and_then(|dst| copy_dir(&src, &dst, "", &mut copied).map(|()| dst))
        .and_then(|dst| {
            finish_dir(&dst, &st).map_err(|errno| CopyError {
                path: String::new(),
                what: "set mode/owner/mtime of",
                errno,
            })
        });
    drop(src);
    if let Err(e) = result {
        return Err(copy_failed(step, (from, to), tmpfs_size, &copied, e));
    }
    // The emptied source directory itself; a failure only costs an inode until the switch.
    let _ = rustix::fs::unlinkat(rustix::fs::CWD, from, AtFlags::REMOVEDIR);
    Ok(copied)
}

/// Where the copy stopped and what it had done; a full tmpfs says how to make room.
fn copy_failed(
    step: &'static str,
    (from, to): (&str, &str),
    tmpfs_size: &str,
    copied: &Copied,
    e: CopyError,
) -> Failure {
    let path = format!("{to}/{}", e.path);
    let path = path.trim_end_matches('/');
    let tried = format!(
        "copied {} files, {} symlinks, {} directories ({:.1} MiB) from {from} to {to}, \
         unlinking each source; then {} {path} failed: {}",
        copied.files,
        copied.symlinks,
        copied.dirs,
        copied.bytes as f64 / (1024.0 * 1024.0),
        e.what,
        errno(e.errno)
    );
    if matches!(e.errno, Errno::NOSPC | Errno::DQUOT) {
        Failure::new(
            step,
            format!(
                "the new root is full: the store embedded in the initrd does not fit in \
                 the tmpfs root (nixboot.tmpfs_size={tmpfs_size})"
            ),
        )
        .tried(tried)
        .check(format!(
            "raise nixboot.tmpfs_size= (now {tmpfs_size}; the store needs its size plus room \
             for the running system) or give the machine more memory"
        ))
    } else {
        Failure::new(
            step,
            format!(
                "copying the embedded store failed at {path}: {}",
                errno(e.errno)
            ),
        )
        .tried(tried)
        .check("the kernel log (dmesg); is the initrd complete (mkinitrd inspect INITRD)?")
    }
}

fn make_dir(parent: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd, Errno> {
    // Owner-only until it is filled in; the real mode comes last (it may be read-only).
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e),
    }
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn times(st: &rustix::fs::Stat) -> Timestamps {
    let mtime = Timespec {
        tv_sec: st.st_mtime as _,
        tv_nsec: st.st_mtime_nsec as _,
    };
    Timestamps {
        last_access: mtime,
        last_modification: mtime,
    }
}

fn finish_dir(dir: &OwnedFd, st: &rustix::fs::Stat) -> Result<(), Errno> {
    set_owner(dir.as_fd(), st)?;
    rustix::fs::fchmod(dir, Mode::from_raw_mode(st.st_mode & 0o7777))?;
    rustix::fs::futimens(dir, &times(st))
}

fn ids(st: &rustix::fs::Stat) -> (Option<rustix::fs::Uid>, Option<rustix::fs::Gid>) {
    (
        Some(rustix::fs::Uid::from_raw(st.st_uid)),
        Some(rustix::fs::Gid::from_raw(st.st_gid)),
    )
}

fn set_owner(fd: BorrowedFd<'_>, st: &rustix::fs::Stat) -> Result<(), Errno> {
    let (uid, gid) = ids(st);
    rustix::fs::fchown(fd, uid, gid)
}

/// The names in a directory (not `.` and `..`), read before anything is unlinked under
/// the directory stream.
fn list_names(dir: &OwnedFd, rel: &str) -> Result<Vec<CString>, CopyError> {
    let list_error = |errno| CopyError {
        path: rel.to_string(),
        what: "list",
        errno,
    };
    let mut names: Vec<CString> = Vec::new();
    let mut entries = rustix::fs::Dir::read_from(dir).map_err(list_error)?;
    while let Some(e) = entries.read() {
        let e = e.map_err(list_error)?;
        let n = e.file_name();
        if n.to_bytes() != b"." && n.to_bytes() != b".." {
            names.push(n.to_owned());
        }
    }
    Ok(names)
}

/// Copies the contents of `src` into `dst`, unlinking each source once copied. `rel` is
/// `src`'s path below the store, for messages.
fn copy_dir(src: &OwnedFd, dst: &OwnedFd, rel: &str, copied: &mut Copied) -> Result<(), CopyError> {
    for name in list_names(src, rel)? {
        let fail = |(what, errno): (&'static str, Errno)| CopyError {
            path: format!("{rel}{}", name.to_string_lossy()),
            what,
            errno,
        };
        let st = rustix::fs::statat(src, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| fail(("stat", e)))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => copy_subdir(src, dst, rel, &name, &st, copied)?,
            FileType::RegularFile => {
                copied.bytes += copy_file(src, dst, &name, &st).map_err(fail)?;
                copied.files += 1;
            }
            FileType::Symlink => {
                copy_symlink(src, dst, &name, &st).map_err(fail)?;
                copied.symlinks += 1;
            }
            _ => copied.skipped += 1,
        }
    }
    Ok(())
}

/// What failed (`mkdir`, `chown`, ...) and how.
type Op = (&'static str, Errno);

fn op(what: &'static str) -> impl Fn(Errno) -> Op {
    move |e| (what, e)
}

fn copy_subdir(
    src: &OwnedFd,
    dst: &OwnedFd,
    rel: &str,
    name: &CStr,
    st: &rustix::fs::Stat,
    copied: &mut Copied,
) -> Result<(), CopyError> {
    let fail = |(what, errno): Op| CopyError {
        path: format!("{rel}{}", name.to_string_lossy()),
        what,
        errno,
    };
    let s = rustix::fs::openat(
        src,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail(("open", e)))?;
    let d = make_dir(dst.as_fd(), name).map_err(|e| fail(("mkdir", e)))?;
    let sub = format!("{rel}{}/", name.to_string_lossy());
    copy_dir(&s, &d, &sub, copied)?;
    finish_dir(&d, st).map_err(|e| fail(("set mode/owner/mtime of", e)))?;
    drop(s);
    rustix::fs::unlinkat(src, name, AtFlags::REMOVEDIR)
        .map_err(|e| fail(("remove the source of", e)))?;
    copied.dirs += 1;
    Ok(())
}

/// Copies one regular file with its owner, mode and mtime; returns its size.
fn copy_file(src: &OwnedFd, dst: &OwnedFd, name: &CStr, st: &rustix::fs::Stat) -> Result<u64, Op> {
    let s = rustix::fs::openat(
        src,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(op("open"))?;
    let d = rustix::fs::openat(
        dst,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(op("create"))?;
    let mut s = std::fs::File::from(s);
    let mut d = std::fs::File::from(d);
    // std picks copy_file_range, then sendfile, then read/write.
    let n = std::io::copy(&mut s, &mut d)
        .map_err(|e| ("write", Errno::from_io_error(&e).unwrap_or(Errno::IO)))?;
    set_owner(d.as_fd(), st).map_err(op("chown"))?;
    rustix::fs::fchmod(&d, Mode::from_raw_mode(st.st_mode & 0o7777)).map_err(op("chmod"))?;
    rustix::fs::futimens(&d, &times(st)).map_err(op("set the mtime of"))?;
    drop((s, d));
    rustix::fs::unlinkat(src, name, AtFlags::empty()).map_err(op("remove the source of"))?;
    Ok(n)
}

fn copy_symlink(
    src: &OwnedFd,
    dst: &OwnedFd,
    name: &CStr,
    st: &rustix::fs::Stat,
) -> Result<(), Op> {
    let target = rustix::fs::readlinkat(src, name, Vec::new()).map_err(op("readlink"))?;
    rustix::fs::symlinkat(target.as_c_str(), dst, name).map_err(op("symlink"))?;
    let (uid, gid) = ids(st);
    rustix::fs::chownat(dst, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW).map_err(op("chown"))?;
    rustix::fs::utimensat(dst, name, &times(st), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(op("set the mtime of"))?;
    rustix::fs::unlinkat(src, name, AtFlags::empty()).map_err(op("remove the source of"))
}
