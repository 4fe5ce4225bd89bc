//! The early mounts: a fixed table, done before anything else (even before the console
//! exists), so it does not depend on the command line, which lives in /proc.

use rustix::mount::MountFlags;

/// One early mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarlyMount {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MountFlags,
    pub data: &'static str,
}

const NOSUID_NODEV: MountFlags = MountFlags::NOSUID.union(MountFlags::NODEV);

/// Options as NixOS's stage 1 mounts them (/run size 25% is its `boot.runSize` default).
pub const EARLY_MOUNTS: &[EarlyMount] = &[
    EarlyMount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MountFlags::NOSUID,
        data: "mode=0755",
    },
    EarlyMount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV.union(MountFlags::NOEXEC),
        data: "",
    },
    EarlyMount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV.union(MountFlags::NOEXEC),
        data: "",
    },
    EarlyMount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=0755,size=25%",
    },
];

/// The links NixOS's stage 1 leaves in /dev for every flavour (stage-1-init.sh:
/// `ln -sfn /proc/self/fd /dev/fd` ...): stage-2-init.sh's `exec > >(tee ...)` opens
/// /dev/fd/N. Made in the devtmpfs once it has moved into the new root (step `dev-links`),
/// so they are there after the switch; an existing entry is left alone.
pub const DEV_LINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];
