//! nixos-init's activate.rs: the system links, the kernel's helper paths, /usr/bin/env and
//! /bin/sh; and the `special_filesystems` it mounts when nothing is there yet.

use crate::failure::Failure;
use crate::log::errno;
use crate::mounts::{self, mount_options};
use rustix::io::Errno;
use rustix::mount::MountFlags;

/// `ln -sfn target link`.
pub fn symlink(step: &'static str, target: &str, link: &str) -> Result<String, Failure> {
    atomic_symlink(target, link).map_err(|e| sys(step, format!("ln -sfn {target} {link}"), e))?;
    Ok(format!("{link} -> {target}"))
}

/// Written only when the file exists (the kernel may lack the parameter).
pub fn write_if_exists(step: &'static str, path: &str, value: &str) -> Result<String, Failure> {
    if rustix::fs::access(path, rustix::fs::Access::EXISTS).is_err() {
        return Ok(format!("{path} does not exist; not written"));
    }
    std::fs::write(path, value)
        .map_err(|e| Failure::new(step, format!("cannot write {value} to {path}: {e}")))?;
    Ok(format!("{path} = {value}"))
}

/// `mkdir -p dir`, then the link removed if present.
pub fn remove_link(step: &'static str, dir: &str, link: &str) -> Result<String, Failure> {
    mounts::mkdir_p(dir).map_err(|(d, e)| sys(step, format!("mkdir {d}"), e))?;
    match rustix::fs::unlink(link) {
        Ok(()) | Err(Errno::NOENT) => Ok(format!("{link} removed ({dir} kept)")),
        Err(e) => Err(sys(step, format!("rm {link}"), e)),
    }
}

/// `mkdir -p dir`, then `ln -sfn target link`.
pub fn mkdir_symlink(
    step: &'static str,
    dir: &str,
    link: &str,
    target: &str,
) -> Result<String, Failure> {
    mounts::mkdir_p(dir).map_err(|(d, e)| sys(step, format!("mkdir {d}"), e))?;
    symlink(step, target, link)
}

fn sys(step: &'static str, what: String, e: Errno) -> Failure {
    Failure::new(step, format!("{what}: {}", errno(e)))
}

/// A special filesystem nothing is mounted on yet; what happened, for the log.
pub fn mount_special(
    new_root: &str,
    device: &str,
    target: &str,
    fstype: &str,
    options: &str,
) -> String {
    let info =
        std::fs::read_to_string(format!("{new_root}/proc/self/mountinfo")).unwrap_or_default();
    if mount_options(&info, target).is_some() {
        return format!("{target} is mounted already");
    }
    let (mut flags, ro, data) = crate::plan::split_mount_options(options);
    flags.set(MountFlags::RDONLY, ro == Some(true));
    let cmd = mounts::command(device, target, fstype, flags, &data);
    if let Err((d, e)) = mounts::mkdir_p(target) {
        return format!("WARNING: {cmd}: cannot create {d}: {}", errno(e));
    }
    match mounts::mount(device, target, fstype, flags, &data) {
        Ok(()) => format!(
            "{fstype} on {target} ({})",
            crate::plan::options(flags, &data)
        ),
        Err(e) => format!("WARNING: {cmd} failed: {}", errno(e)),
    }
}

/// `ln -sfn`: a temporary link renamed over the old one.
fn atomic_symlink(target: &str, link: &str) -> Result<(), Errno> {
    let tmp = format!("{link}.nixboot-tmp");
    let _ = rustix::fs::unlink(tmp.as_str());
    rustix::fs::symlink(target, tmp.as_str())?;
    rustix::fs::rename(tmp.as_str(), link)
}
