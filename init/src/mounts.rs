//! Mount helpers. Every error names source, target, fstype, options and errno, written as
//! the `mount` command a user would type to try it by hand.

use crate::failure::Failure;
use crate::log::errno;
use crate::plan::options;
use rustix::io::Errno;
use rustix::mount::MountFlags;
use std::ffi::CString;

/// `mkdir -p` with mode 0755; an existing directory is fine.
pub fn mkdir_p(path: &str) -> Result<(), (String, Errno)> {
    let mut prefix = String::with_capacity(path.len());
    for part in path.split('/').filter(|p| !p.is_empty()) {
        prefix.push('/');
        prefix.push_str(part);
        match rustix::fs::mkdir(prefix.as_str(), rustix::fs::Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err((prefix, e)),
        }
    }
    Ok(())
}

/// The mount as a command line, for messages.
pub fn command(source: &str, target: &str, fstype: &str, flags: MountFlags, data: &str) -> String {
    format!(
        "mount -t {fstype} -o {} {source} {target}",
        options(flags, data)
    )
}

/// The per-mount options of the last mount at `mountpoint` in /proc/self/mountinfo.
pub fn mount_options<'a>(mountinfo: &'a str, mountpoint: &str) -> Option<&'a str> {
    mountinfo.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&mountpoint))
            .then(|| f.get(5).copied())
            .flatten()
    })
}

/// One mount(2) call; the target must exist.
pub fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MountFlags,
    data: &str,
) -> Result<(), Errno> {
    // A NUL inside an option string cannot be passed to the kernel.
    let data = CString::new(data).map_err(|_| Errno::INVAL)?;
    let data = if data.as_bytes().is_empty() {
        None
    } else {
        Some(data.as_c_str())
    };
    rustix::mount::mount(source, target, fstype, flags, data)
}

/// Creates the target and mounts; the error is a full [`Failure`] for `step`.
pub fn mount_step(
    step: &'static str,
    source: &str,
    target: &str,
    fstype: &str,
    flags: MountFlags,
    data: &str,
) -> Result<(), Failure> {
    let cmd = command(source, target, fstype, flags, data);
    if let Err((dir, e)) = mkdir_p(target) {
        return Err(Failure::new(
            step,
            format!("cannot create mount point {dir}: {}", errno(e)),
        )
        .tried(format!("mkdir -p {target}, then {cmd}")));
    }
    mount(source, target, fstype, flags, data).map_err(|e| {
        let hint = match e {
            Errno::NODEV => "the kernel does not know this filesystem type (module not loaded?)",
            Errno::INVAL => "bad mount options, or the source is not a valid filesystem",
            Errno::BUSY => "something is already mounted there",
            _ => "see mount(2) for this error",
        };
        Failure::new(step, format!("{cmd} failed: {}", errno(e)))
            .tried(cmd)
            .check(hint)
    })
}

/// `mount -o remount,ro TARGET`.
pub fn remount_read_only(step: &'static str, target: &str) -> Result<(), Failure> {
    rustix::mount::mount_remount(target, MountFlags::RDONLY, "").map_err(|e| {
        Failure::new(
            step,
            format!("mount -o remount,ro {target} failed: {}", errno(e)),
        )
    })
}

/// Whether the running kernel has a filesystem type (`/proc/filesystems`); `None` when the
/// list cannot be read.
pub fn filesystem_known(fstype: &str) -> Option<bool> {
    let list = std::fs::read_to_string("/proc/filesystems").ok()?;
    Some(
        list.lines()
            .any(|l| l.split_whitespace().last() == Some(fstype)),
    )
}

/// The store overlay: `upper` and `work` are created (on the upper tmpfs), then
/// `mount -t overlay -o lowerdir=,upperdir=,workdir= overlay TARGET`.
pub fn mount_overlay(
    step: &'static str,
    target: &str,
    lower: &str,
    upper: &str,
    work: &str,
) -> Result<(), Failure> {
    if filesystem_known("overlay") == Some(false) {
        return Err(Failure::new(step, "the kernel has no overlay filesystem")
            .tried("looked for overlay in /proc/filesystems")
            .check(
                "put the overlay module in the initrd (mkinitrd --module overlay), or drop \
                 nixboot.store_overlay",
            ));
    }
    for dir in [upper, work, target] {
        if let Err((d, e)) = mkdir_p(dir) {
            return Err(Failure::new(
                step,
                format!("cannot create {d}: {}", errno(e)),
            ));
        }
    }
    let data = format!("lowerdir={lower},upperdir={upper},workdir={work}");
    mount_step(
        step,
        "overlay",
        target,
        "overlay",
        MountFlags::empty(),
        &data,
    )
}
