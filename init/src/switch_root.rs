//! Leaving the initramfs: the busybox `switch_root` / booster sequence, done by hand.
//!
//! rootfs cannot be pivot_root'ed away from, so: free its contents (the RAM is only given
//! back if the files are deleted), move the new root over `/`, chroot into it, exec.

use crate::failure::Failure;
use crate::log::{self, errno};
use crate::mounts;
use crate::plan::Exec;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use std::ffi::CString;
use std::os::unix::process::CommandExt;

const RAMFS_MAGIC: u64 = 0x8584_58f6;
const TMPFS_MAGIC: u64 = 0x0102_1994;

/// Moves /dev, /proc, /sys, /run into the new root (they stay mounted: see plan/mod.rs).
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

/// Makes each `dir/NAME -> TARGET` link (stage 1's /dev links) unless the name exists;
/// one that cannot be made is a warning. Returns the line for the log.
pub fn link_devices(step: &'static str, dir: &str, links: &[(String, String)]) -> String {
    let mut made = Vec::new();
    for (name, target) in links {
        let link = format!("{dir}/{name}");
        match rustix::fs::symlink(target.as_str(), link.as_str()) {
            Ok(()) => made.push(format!("{name} -> {target}")),
            Err(Errno::EXIST) => made.push(format!("{name} (there already)")),
            Err(e) => log::notice(
                step,
                &format!("WARNING: cannot link {link} -> {target}: {}", errno(e)),
            ),
        }
    }
    format!("{} in {dir}", made.join(", "))
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
    log::log(
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
