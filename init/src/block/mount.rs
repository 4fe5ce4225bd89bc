//! Mounting the block device a wait found, with the filesystem type from `rootfstype=` or
//! its superblock.

use super::probe as blockdev;
use super::read_node;
use super::wait::Found;
use crate::failure::Failure;
use crate::log::errno;
use crate::mounts;
use rustix::io::Errno;
use rustix::mount::MountFlags;

/// Mounts the device a wait found; returns the filesystem type used.
pub fn mount_block(
    step: &'static str,
    found: &Found,
    target: &str,
    fstypes: &[String],
    flags: MountFlags,
    data: &str,
) -> Result<String, Failure> {
    let node = &found.node;
    let types = types_to_try(step, found, fstypes)?;
    if let Err((dir, e)) = mounts::mkdir_p(target) {
        return Err(Failure::new(
            step,
            format!("cannot create mount point {dir}: {}", errno(e)),
        ));
    }
    let mut tried = Vec::new();
    let mut last_err = None;
    for t in &types {
        let cmd = mounts::command(node, target, t, flags, data);
        if mounts::filesystem_known(t) == Some(false) {
            tried.push(format!("{t}: not in /proc/filesystems"));
            continue;
        }
        match mounts::mount(node, target, t, flags, data) {
            Ok(()) => return Ok(t.clone()),
            Err(e) => {
                tried.push(format!("{cmd}: {}", errno(e)));
                last_err = Some((cmd, e));
            }
        }
    }
    Err(failed(step, node, fstypes, &types, tried, last_err))
}

/// `rootfstype=`'s types in order, or else the one the superblock names.
fn types_to_try(
    step: &'static str,
    found: &Found,
    fstypes: &[String],
) -> Result<Vec<String>, Failure> {
    if !fstypes.is_empty() {
        return Ok(fstypes.to_vec());
    }
    let node = &found.node;
    let detected = found
        .candidate
        .fs
        .clone()
        .or_else(|| read_node(node).and_then(|mut read| blockdev::probe_fs(&mut read)));
    match detected {
        Some(fs) => Ok(vec![fs.fstype.to_string()]),
        None => Err(
            Failure::new(step, format!("no filesystem recognised on {node}"))
                .tried(format!(
                    "read the superblocks of {} on {node}",
                    blockdev::KNOWN_FILESYSTEMS
                ))
                .check(
                    "is root= the right device (the partition, not the whole disk)? for another \
             filesystem type, name it with rootfstype= (and put its module in the initrd)",
                ),
        ),
    }
}

/// Why no type mounted: none known to the kernel, or the last mount(2) error.
fn failed(
    step: &'static str,
    node: &str,
    fstypes: &[String],
    types: &[String],
    tried: Vec<String>,
    last_err: Option<(String, Errno)>,
) -> Failure {
    let how = if fstypes.is_empty() {
        format!("{} (from the superblock of {node})", types.join(""))
    } else {
        format!("{} (rootfstype=)", types.join(", "))
    };
    match last_err {
        None => Failure::new(
            step,
            format!("the kernel does not know filesystem type {how}"),
        )
        .tried(tried.join("\n"))
        .check(format!(
            "put the filesystem's module in the initrd (mkinitrd --module {}) or build it into \
             the kernel; is rootfstype= spelled right?",
            types.first().map_or("TYPE", String::as_str)
        )),
        Some((cmd, e)) => {
            let hint = match e {
                Errno::INVAL => {
                    "not a filesystem of this type, or an option in rootflags= it does not take \
                     (the kernel log names it)"
                }
                Errno::ROFS | Errno::ACCESS => "the device is read-only: add ro",
                Errno::NXIO | Errno::NOENT => "the device went away",
                _ => "the kernel log (dmesg) has the details",
            };
            Failure::new(step, format!("{cmd} failed: {}", errno(e)))
                .tried(tried.join("\n"))
                .check(hint)
        }
    }
}
