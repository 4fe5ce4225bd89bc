//! The store as nixos-init leaves it: owner and mode, and the mount options boot.json asks
//! for (`nix_store_mount_opts`) added to the mount by a bind remount.

use crate::failure::Failure;
use crate::log::{self, errno};
use crate::mounts::mount_options;
use rustix::fs::Mode;
use rustix::io::Errno;
use rustix::mount::MountFlags;

/// chown 0:0 + chmod; failures are logged, not fatal (nixos-init ignores them: a read-only
/// store keeps its owner and mode).
pub fn owner_mode(store: &str, mode: u32) -> String {
    let own = rustix::fs::chown(
        store,
        Some(rustix::fs::Uid::ROOT),
        Some(rustix::fs::Gid::ROOT),
    );
    let chmod = rustix::fs::chmod(store, Mode::from_raw_mode(mode));
    match (own, chmod) {
        (Ok(()), Ok(())) => format!("{store} 0:0 mode {mode:04o}"),
        (o, c) => format!(
            "{store} left as it is (chown: {}, chmod: {}; ignored, as nixos-init does)",
            o.map_or_else(errno, |_| "ok".into()),
            c.map_or_else(errno, |_| "ok".into())
        ),
    }
}

/// The options of `wanted` that `current` (comma-separated) lacks.
pub fn missing_options(current: &str, wanted: &[String]) -> Vec<String> {
    let have: Vec<&str> = current.split(',').collect();
    wanted
        .iter()
        .filter(|w| !have.contains(&w.as_str()))
        .cloned()
        .collect()
}

/// Per-mount flags for a bind remount: what the mount has plus what is missing, the way
/// mount(8) merges `remount` options. Options that are not per-mount flags are returned.
pub fn remount_flags(current: &str, missing: &[String]) -> (MountFlags, Vec<String>) {
    let mut flags = MountFlags::empty();
    let mut unknown = Vec::new();
    let table = [
        ("ro", MountFlags::RDONLY),
        ("nosuid", MountFlags::NOSUID),
        ("nodev", MountFlags::NODEV),
        ("noexec", MountFlags::NOEXEC),
        ("noatime", MountFlags::NOATIME),
        ("nodiratime", MountFlags::NODIRATIME),
        ("strictatime", MountFlags::STRICTATIME),
    ];
    let keep = ["rw", "relatime", "suid", "dev", "exec"];
    let all = current
        .split(',')
        .map(str::to_string)
        .chain(missing.iter().cloned());
    for (i, o) in all.enumerate() {
        match table.iter().find(|(n, _)| *n == o) {
            Some((_, f)) => flags |= *f,
            None if keep.contains(&o.as_str()) || o.is_empty() => {}
            // Only the wanted ones are worth a warning; the mount's own are its business.
            None if i >= current.split(',').count() => unknown.push(o),
            None => {}
        }
    }
    (flags, unknown)
}

/// bind + remount,bind with the options of `wanted` the store's mount lacks.
pub fn remount(
    step: &'static str,
    new_root: &str,
    store: &str,
    wanted: &[String],
) -> Result<String, Failure> {
    let info = std::fs::read_to_string(format!("{new_root}/proc/self/mountinfo"))
        .or_else(|_| std::fs::read_to_string("/proc/self/mountinfo"))
        .map_err(|e| Failure::new(step, format!("cannot read mountinfo: {e}")))?;
    let (current, missing) = match mount_options(&info, store) {
        Some(c) => (c, missing_options(c, wanted)),
        None => ("", wanted.to_vec()),
    };
    if missing.is_empty() {
        return Ok(format!("{store} already has {}", wanted.join(",")));
    }
    let (flags, unknown) = remount_flags(current, &missing);
    for u in &unknown {
        log::notice(
            step,
            &format!("WARNING: nix_store_mount_opts {u} is not a per-mount flag; not applied"),
        );
    }
    let tried = format!(
        "mount --bind {store} {store}; mount -o remount,bind,{} {store}",
        missing.join(",")
    );
    let fail = |what: &str, e: Errno| {
        Failure::new(step, format!("{what} {store}: {}", errno(e)))
            .tried(tried.clone())
            .check("the store's mount (mountinfo above); nix_store_mount_opts in boot.json")
    };
    rustix::mount::mount_bind(store, store).map_err(|e| fail("bind mount", e))?;
    rustix::mount::mount_remount(store, flags | MountFlags::BIND, "")
        .map_err(|e| fail("remount", e))?;
    Ok(format!(
        "{store} remounted with {} (had {current})",
        missing.join(",")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_options() {
        let info = "22 1 0:21 / / rw - tmpfs none rw\n\
                    30 22 0:40 / /sysroot/nix/store ro,relatime - virtiofs store rw\n";
        assert_eq!(
            mount_options(info, "/sysroot/nix/store"),
            Some("ro,relatime")
        );
        assert_eq!(mount_options(info, "/nix/store"), None);
        let wanted: Vec<String> = ["ro", "nosuid", "nodev"].map(String::from).to_vec();
        let missing = missing_options("ro,relatime", &wanted);
        assert_eq!(missing, ["nosuid", "nodev"]);
        let (flags, unknown) = remount_flags("ro,relatime", &missing);
        assert_eq!(
            flags,
            MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV
        );
        assert!(unknown.is_empty());
        let (_, unknown) = remount_flags("rw", &["x-weird".to_string()]);
        assert_eq!(unknown, ["x-weird"]);
    }
}
