//! Leaving the initramfs: the busybox `switch_root` / booster sequence, done by hand.
//!
//! rootfs cannot be pivot_root'ed away from, so: free its contents (the RAM is only given
//! back if the files are deleted), move the new root over `/`, chroot into it, exec.

use crate::failure::Failure;
use crate::mounts;
use crate::plan::Exec;
use crate::report::{self, errno};
use rustix::fd::{AsFd, AsRawFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::ffi::CString;
use std::os::unix::process::CommandExt;

const RAMFS_MAGIC: u64 = 0x8584_58f6;
const TMPFS_MAGIC: u64 = 0x0102_1994;

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

/// Checks that the next init exists in the new root and is an executable regular file,
/// and that its interpreter (`#!` line, or an ELF's PT_INTERP loader) exists too. Done
/// before the switch: after it there is no initramfs left to fall back to.
pub fn check_init(step: &'static str, new_root: &str, path: &str) -> Result<Vec<String>, Failure> {
    let mut notes = Vec::new();
    let root = open_root(step, new_root)?;
    let check = "is the closure in the store (the store share's directory on the host, the \
                 disk, or the initrd's embedded store)? is init= the closure's init \
                 (result/boot.json has it)?";
    let header = match open_in_root(&root, path) {
        Ok(h) => h,
        Err(Unusable::Sys(Errno::NOSYS)) => {
            notes.push(format!("cannot check {path} (no openat2 on this kernel)"));
            return Ok(notes);
        }
        Err(e) => {
            return Err(Failure::new(
                step,
                format!("next init {path} is not usable in the new root: {e}"),
            )
            .tried(format!(
                "openat2({new_root}, {path}, RESOLVE_IN_ROOT), fstat"
            ))
            .check(check))
        }
    };
    // The kernel runs ELF files and #! scripts; anything else would fail at execve, after
    // the initramfs is gone.
    let interp = if header.starts_with(b"\x7fELF") {
        // Positioned reads of the file itself: PT_INTERP may lie past `header` (patchelf).
        match crate::elf::interpreter_in_root(&root, path) {
            crate::elf::Interp::Path(p) => Some(("loader", p)),
            crate::elf::Interp::None => None,
            crate::elf::Interp::Unknown => {
                notes.push(format!(
                    "could not read {path}'s ELF header to check its loader"
                ));
                None
            }
        }
    } else if header.starts_with(b"#!") {
        shebang(&header).map(|p| ("interpreter", p))
    } else {
        return Err(Failure::new(
            step,
            format!("next init {path} is neither an ELF executable nor a #! script"),
        )
        .check(check));
    };
    if let Some((what, interp)) = interp {
        match open_in_root(&root, &interp) {
            Ok(_) | Err(Unusable::Sys(Errno::NOSYS)) => {}
            Err(e) => {
                return Err(Failure::new(
                    step,
                    format!("next init {path} needs the {what} {interp}, which is not usable: {e}"),
                )
                .check(check))
            }
        }
    }
    Ok(notes)
}

/// Opens `path` with `new_root` as `/` (absolute symlinks inside the store resolve
/// correctly), requires an executable regular file, returns its first bytes (enough for an
/// ELF's program headers and loader path).
pub fn open_in_root(root: &OwnedFd, path: &str) -> Result<Vec<u8>, Unusable> {
    let rel = path.trim_start_matches('/');
    let fd = rustix::fs::openat2(
        root,
        rel,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT,
    )
    .map_err(Unusable::Sys)?;
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
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    buf.truncate(got);
    Ok(buf)
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

/// Runs `prepare-root` beside the next init, if there is one, the way NixOS's systemd
/// initrd does: chrooted into the new root, /run shared, `IN_NIXOS_SYSTEMD_STAGE1=true`.
/// Returns what happened, for the log.
pub fn prepare_root(step: &'static str, new_root: &str, init: &str) -> Result<String, Failure> {
    let resolved = resolve_in_root(new_root, init).map_err(|e| {
        Failure::new(
            step,
            format!("cannot resolve {init} in the new root: {}", errno(e)),
        )
    })?;
    let prepare = crate::plan::prepare_root_path(&resolved);
    let root = open_root(step, new_root)?;
    match open_in_root(&root, &prepare) {
        Ok(_) => {}
        Err(Unusable::Sys(Errno::NOENT)) => {
            return Ok(format!(
                "no prepare-root beside {resolved}: a stage-2 init (scripted NixOS or other), \
                 exec'd as is"
            ))
        }
        Err(e) => {
            // NixOS's initrd tests `[ -x prepare-root ]` and skips activation too.
            return Ok(format!(
                "WARNING: {prepare} is not usable ({e}); not running it (as NixOS's initrd \
                 would not), exec'ing {init} as is"
            ));
        }
    }
    drop(root);
    report::log(
        step,
        &format!(
            "{init} comes with {prepare} (NixOS with the systemd initrd): running it in {new_root}"
        ),
    );
    let root_c = CString::new(new_root).map_err(|_| Failure::new(step, "NUL in the root path"))?;
    let mut cmd = std::process::Command::new(&prepare);
    cmd.arg0(&prepare)
        .env_clear()
        .envs(crate::plan::NEXT_INIT_ENV.iter().copied())
        .env(
            crate::plan::PREPARE_ROOT_ENV.0,
            crate::plan::PREPARE_ROOT_ENV.1,
        );
    // SAFETY: between fork and exec only chroot(2) and chdir(2), on memory prepared before.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::chroot(root_c.as_c_str())?;
            rustix::process::chdir(c"/")?;
            Ok(())
        });
    }
    let check = "its output above: prepare-root is NixOS's stage-2 script run with \
                 IN_NIXOS_SYSTEMD_STAGE1=true (activation); the same closure's boot with \
                 NixOS's own initrd would fail the same way";
    let status = cmd
        .spawn()
        .and_then(|mut child| child.wait())
        .map_err(|e| {
            Failure::new(step, format!("cannot run {prepare}: {e}"))
                .tried(format!("chroot {new_root} {prepare}"))
                .check(check)
        })?;
    if status.success() {
        Ok(format!("{prepare} finished"))
    } else {
        use std::os::unix::process::ExitStatusExt;
        let how = match (status.code(), status.signal()) {
            (Some(c), _) => format!("exited with status {c}"),
            (_, Some(s)) => format!("was killed by signal {s}"),
            _ => "failed".to_string(),
        };
        Err(Failure::new(step, format!("{prepare} {how}"))
            .tried(format!(
                "chroot {new_root} {prepare} with {}={}",
                crate::plan::PREPARE_ROOT_ENV.0,
                crate::plan::PREPARE_ROOT_ENV.1
            ))
            .check(check))
    }
}

/// The interpreter of a `#!` line.
fn shebang(header: &[u8]) -> Option<String> {
    let rest = header.strip_prefix(b"#!")?;
    let line = rest.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    line.split_whitespace().next().map(str::to_string)
}

/// Moves /dev, /proc, /sys, /run into the new root (they stay mounted: see plan.rs).
pub fn move_special_mounts(
    step: &'static str,
    new_root: &str,
    mounts: &[String],
) -> Result<(), Failure> {
    for m in mounts {
        let target = format!("{new_root}{m}");
        if let Err((dir, e)) = mounts::mkdir_p(&target) {
            return Err(Failure::new(
                step,
                format!("cannot create {dir} in the new root: {}", errno(e)),
            )
            .check("is the new root read-only (ro) without this directory?"));
        }
        rustix::mount::mount_move(m.as_str(), target.as_str()).map_err(|e| {
            Failure::new(
                step,
                format!("mount --move {m} {target} failed: {}", errno(e)),
            )
        })?;
    }
    Ok(())
}

/// What freeing the initramfs did.
#[derive(Debug, Default)]
struct Freed {
    removed: u32,
    kept_mount_points: u32,
    errors: u32,
}

/// Frees the initramfs and makes `new_root` the root. On return the process is chrooted
/// into the new root with `/` as working directory, ready to exec.
pub fn switch_root(step: &'static str, new_root: &str) -> Result<(), Failure> {
    // Only ever delete a RAM filesystem: run by mistake on a disk root this would wipe it.
    let fs = rustix::fs::statfs("/")
        .map_err(|e| Failure::new(step, format!("statfs(/) failed: {}", errno(e))))?;
    let magic = fs.f_type as u64;
    if magic != RAMFS_MAGIC && magic != TMPFS_MAGIC {
        return Err(Failure::new(
            step,
            format!("/ is not the initramfs (filesystem magic {magic:#x}); refusing to delete it"),
        ));
    }
    let root_dir = rustix::fs::open(
        "/",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Failure::new(step, format!("cannot open /: {}", errno(e))))?;
    let root_dev = rustix::fs::fstat(&root_dir)
        .map_err(|e| Failure::new(step, format!("stat(/) failed: {}", errno(e))))?
        .st_dev;
    // The new root must be a mount point of its own, or it would be deleted with the rest.
    let new_dev = rustix::fs::stat(new_root)
        .map_err(|e| Failure::new(step, format!("stat({new_root}) failed: {}", errno(e))))?
        .st_dev;
    if new_dev == root_dev {
        return Err(Failure::new(
            step,
            format!("{new_root} is not a mount point; refusing to switch into the initramfs"),
        ));
    }

    let mut freed = Freed::default();
    delete_contents(&root_dir, root_dev, &mut freed);
    drop(root_dir);
    report::log(
        step,
        &format!(
            "freed the initramfs: {} entries removed, {} mount point(s) kept, {} error(s)",
            freed.removed, freed.kept_mount_points, freed.errors
        ),
    );

    // The classic sequence: chdir into the new root, move it over /, chroot to the moved
    // mount ("." still refers to it), and chdir to the new / .
    let sys = |what: &str, r: rustix::io::Result<()>| {
        r.map_err(|e| Failure::new(step, format!("{what} failed: {}", errno(e))))
    };
    sys(
        &format!("chdir({new_root})"),
        rustix::process::chdir(new_root),
    )?;
    sys("mount --move . /", rustix::mount::mount_move(".", "/"))?;
    sys("chroot(.)", rustix::process::chroot("."))?;
    sys("chdir(/)", rustix::process::chdir("/"))?;
    Ok(())
}

/// Deletes everything below `dir` that lives on `root_dev`, without following symlinks and
/// without entering other filesystems (their mount points are kept). Errors are counted, not
/// fatal: a leftover file costs some RAM, stopping the boot here would cost the machine.
fn delete_contents(dir: &OwnedFd, root_dev: u64, freed: &mut Freed) {
    // Names first, then deletions: no unlinking under a directory stream being read.
    let mut names: Vec<CString> = Vec::new();
    match rustix::fs::Dir::read_from(dir) {
        Ok(mut entries) => {
            while let Some(entry) = entries.read() {
                match entry {
                    Ok(e) => {
                        let n = e.file_name();
                        if n.to_bytes() != b"." && n.to_bytes() != b".." {
                            names.push(n.to_owned());
                        }
                    }
                    Err(_) => {
                        freed.errors += 1;
                        break;
                    }
                }
            }
        }
        Err(_) => {
            freed.errors += 1;
            return;
        }
    }
    for name in names {
        let Ok(st) = rustix::fs::statat(dir.as_fd(), name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
        else {
            freed.errors += 1;
            continue;
        };
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        if is_dir {
            if st.st_dev != root_dev {
                freed.kept_mount_points += 1;
                continue;
            }
            match rustix::fs::openat(
                dir.as_fd(),
                name.as_c_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(sub) => delete_contents(&sub, root_dev, freed),
                Err(_) => freed.errors += 1,
            }
        }
        let flags = if is_dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        match rustix::fs::unlinkat(dir.as_fd(), name.as_c_str(), flags) {
            Ok(()) => freed.removed += 1,
            Err(_) => freed.errors += 1,
        }
    }
}

/// Execs the next init. Returns only on failure.
pub fn exec(step: &'static str, e: &Exec) -> Failure {
    let mut cmd = std::process::Command::new(&e.path);
    if let Some((arg0, rest)) = e.argv.split_first() {
        cmd.arg0(arg0).args(rest);
    }
    cmd.env_clear().envs(e.env.iter().map(|(k, v)| (k, v)));
    let err = cmd.exec();
    let why = match err.raw_os_error() {
        Some(raw) => errno(Errno::from_raw_os_error(raw)),
        None => err.to_string(),
    };
    Failure::new(step, format!("execve({}) failed: {why}", e.path))
        .tried(format!(
            "execve({}, {:?}, {:?}) in the new root, after the switch",
            e.path, e.argv, e.env
        ))
        .check(
            "ENOENT: the file, its #! interpreter or its ELF loader is missing; \
         ENOEXEC: not an executable for this machine",
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shebang_lines() {
        assert_eq!(
            shebang(b"#!/nix/store/b-busybox/bin/busybox sh\nexec x\n").as_deref(),
            Some("/nix/store/b-busybox/bin/busybox")
        );
        assert_eq!(shebang(b"#! /bin/sh").as_deref(), Some("/bin/sh"));
        assert_eq!(shebang(b"\x7fELF..."), None);
        assert_eq!(shebang(b"#!\n"), None);
    }
}
