//! Files of the new root, looked at from the initramfs with the new root as `/`: absolute
//! symlinks inside the store resolve as they will after the switch.

use crate::failure::Failure;
use crate::log::errno;
use rustix::fd::{AsRawFd, OwnedFd};
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Why a file in the new root cannot be exec'd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    Sys(Errno),
    NotRegular,
    NotExecutable(u32),
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::Sys(e) => f.write_str(&errno(*e)),
            Unusable::NotRegular => f.write_str("not a regular file"),
            Unusable::NotExecutable(mode) => write!(f, "not executable (mode {mode:04o})"),
        }
    }
}

/// Opens the new root as a directory handle for [`open_in_root`].
pub fn open_root(step: &'static str, new_root: &str) -> Result<OwnedFd, Failure> {
    rustix::fs::open(
        new_root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Failure::new(step, format!("cannot open {new_root}: {}", errno(e))))
}

/// Opens `path` with `new_root` as `/` (absolute symlinks inside the store resolve
/// correctly), requires an executable regular file, returns its first bytes (enough for an
/// ELF's program headers and loader path).
pub fn open_in_root(root: &OwnedFd, path: &str) -> Result<Vec<u8>, Unusable> {
    open_exec_in_root(root, path).map(|(_, header)| header)
}

/// [`open_in_root`], keeping the file open for positioned reads (its ELF interpreter):
/// over virtiofs every open is a round trip per path component, each one a few hundred
/// microseconds of the boot under TCG.
pub fn open_exec_in_root(root: &OwnedFd, path: &str) -> Result<(OwnedFd, Vec<u8>), Unusable> {
    let fd = open_file(root, path, OFlags::RDONLY).map_err(Unusable::Sys)?;
    let st = rustix::fs::fstat(&fd).map_err(Unusable::Sys)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(Unusable::NotRegular);
    }
    if st.st_mode & 0o111 == 0 {
        return Err(Unusable::NotExecutable(st.st_mode & 0o7777));
    }
    let mut buf = vec![0u8; 4096];
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(&fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::INTR) => {}
            // Never read an error as a short file: under dm-verity a changed block is EIO.
            Err(e) => return Err(Unusable::Sys(e)),
        }
    }
    buf.truncate(got);
    Ok((fd, buf))
}

/// `openat2` with `root` as `/`.
fn open_file(root: &OwnedFd, path: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
    rustix::fs::openat2(
        root,
        path.trim_start_matches('/'),
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT,
    )
}

/// The whole of a (small) file in the new root: boot.json.
pub fn read_in_root(root: &OwnedFd, path: &str) -> Result<Vec<u8>, Errno> {
    let fd = open_file(root, path, OFlags::RDONLY)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match rustix::io::read(&fd, &mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Whether `path` exists in the new root (symlinks followed inside it).
pub fn exists_in_root(root: &OwnedFd, path: &str) -> bool {
    open_file(root, path, OFlags::PATH).is_ok()
}

/// Where `path` leads inside the new root, symlinks resolved (NixOS's systemd initrd does
/// `chroot /sysroot realpath $init`).
pub fn resolve_in_root(new_root: &str, path: &str) -> Result<String, Errno> {
    let root = rustix::fs::open(
        new_root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let fd = rustix::fs::openat2(
        &root,
        path.trim_start_matches('/'),
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT,
    )?;
    // /proc may already have moved into the new root (prepare-root runs after the move).
    let link = |proc: &str| format!("{proc}/self/fd/{}", fd.as_raw_fd());
    let real = rustix::fs::readlink(link("/proc"), Vec::new())
        .or_else(|_| rustix::fs::readlink(link(&format!("{new_root}/proc")), Vec::new()))?;
    let real = real.to_string_lossy();
    let inside = real.strip_prefix(new_root).unwrap_or(&real);
    Ok(if inside.is_empty() {
        "/".to_string()
    } else {
        inside.to_string()
    })
}
