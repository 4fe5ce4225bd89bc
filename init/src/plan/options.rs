//! Mount options as mount(8) reads `-o`, and the same text back for messages. Flags are
//! rustix's [`MountFlags`] (the MS_* bits), plain values in pure code and tests.

use rustix::mount::MountFlags;

/// The per-mount flags `-o` can name, in the order messages list them.
const NAMED: [(MountFlags, &str); 6] = [
    (MountFlags::NOSUID, "nosuid"),
    (MountFlags::NODEV, "nodev"),
    (MountFlags::NOEXEC, "noexec"),
    (MountFlags::NOATIME, "noatime"),
    (MountFlags::NODIRATIME, "nodiratime"),
    (MountFlags::STRICTATIME, "strictatime"),
];

/// Splits mount(8)-style options into per-mount flags and the filesystem's data string.
/// `ro`/`rw` are returned apart (`None` when absent) so the caller can let the command
/// line's `ro`/`rw` win. Options that only restate a default (`defaults`, `relatime`,
/// `suid`, `dev`, `exec`, `atime`, `diratime`) are dropped: mount(2) refuses them as data.
pub fn split_mount_options(s: &str) -> (MountFlags, Option<bool>, String) {
    let mut f = MountFlags::empty();
    let mut ro = None;
    let mut data: Vec<&str> = Vec::new();
    for o in s.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => ro = Some(true),
            "rw" => ro = Some(false),
            "suid" => f.remove(MountFlags::NOSUID),
            "dev" => f.remove(MountFlags::NODEV),
            "exec" => f.remove(MountFlags::NOEXEC),
            "atime" => f.remove(MountFlags::NOATIME),
            "diratime" => f.remove(MountFlags::NODIRATIME),
            "defaults" | "relatime" => {}
            other => match NAMED.iter().find(|(_, name)| *name == other) {
                Some((flag, _)) => f.insert(*flag),
                None => data.push(other),
            },
        }
    }
    (f, ro, data.join(","))
}

/// `mount -o` style text of flags + data, for messages.
pub fn options(flags: MountFlags, data: &str) -> String {
    let mut o = vec![if flags.contains(MountFlags::RDONLY) {
        "ro"
    } else {
        "rw"
    }];
    o.extend(
        NAMED
            .iter()
            .filter(|(flag, _)| flags.contains(*flag))
            .map(|(_, name)| *name),
    );
    if !data.is_empty() {
        o.push(data);
    }
    o.join(",")
}
