//! The steps of a plan, their names (log lines, `step=` of the status line, timings) and
//! their text: what each will do, for the debug dump of the plan, from the same functions
//! the executors use to say what each did.

use super::options::options;
use crate::cmdline::{describe_timeout, BlockSpec, Root};
use crate::verity::options::{Check, Source};
use rustix::mount::MountFlags;
use std::time::Duration;

/// What a mount is for; names the step in logs and in the status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Root,
    Store,
    /// The tmpfs holding the upper layer of a store overlay.
    StoreUpper,
    /// The overlay itself on /nix/store.
    StoreOverlay,
    Modules,
    /// The host's working directory (`nixboot.cwd=`).
    Cwd,
}

impl Role {
    pub fn step_name(self) -> &'static str {
        match self {
            Role::Root => "mount-root",
            Role::Store => "mount-store",
            Role::StoreUpper => "mount-store-upper",
            Role::StoreOverlay => "mount-store-overlay",
            Role::Modules => "mount-modules",
            Role::Cwd => "mount-cwd",
        }
    }

    /// The name of the wait for a block device before its mount.
    pub fn wait_name(self) -> &'static str {
        match self {
            Role::Root => "wait-root",
            _ => "wait-device",
        }
    }
}

/// One step of the boot, executed in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// finit_module of a `.ko` packed in the initramfs.
    LoadModule {
        name: String,
        path: String,
        params: String,
    },
    /// A filesystem that is there when asked (tmpfs).
    Mount {
        role: Role,
        source: String,
        target: String,
        fstype: String,
        flags: MountFlags,
        data: String,
    },
    /// A virtiofs share: wait for the tag (bounded), then mount it.
    MountVirtiofs {
        role: Role,
        tag: String,
        target: String,
        flags: MountFlags,
        data: String,
        timeout: Duration,
    },
    /// Wait (bounded) until a block device matching `spec` shows up in /sys/class/block,
    /// then mount it: one step, two phases timed apart (`wait-root`, `mount-root`); the
    /// device found goes from the wait to the mount as a value. `fstypes` empty: the type
    /// is read from the superblock; else they are tried in order (`rootfstype=a,b`).
    MountBlock {
        role: Role,
        spec: BlockSpec,
        timeout: Duration,
        target: String,
        fstypes: Vec<String>,
        flags: MountFlags,
        data: String,
    },
    /// A dm-verity store (`nixboot.verity.*`, verity/): find the image (phase `wait-store`:
    /// the bounded wait for its block device, or `loop-store`: its initramfs file on a loop
    /// device), set up the verity target and read through it (phase `verity`), mount its
    /// erofs read-only on `target` (phase `mount-store`). The device goes from phase to
    /// phase as a value.
    MountVerity {
        source: Source,
        root_hash: [u8; 32],
        hash_offset: u64,
        check: Check,
        timeout: Duration,
        target: String,
    },
    /// Bring the store packed in the initramfs into the new root (copy, unlink each source).
    CopyEmbeddedStore { from: String, to: String },
    /// overlay on `target`: `lower` read-only, `upper`/`work` created on the upper tmpfs.
    MountOverlay {
        role: Role,
        target: String,
        lower: String,
        upper: String,
        work: String,
    },
    /// `mount -o remount,ro` (the `ro` command-line flag).
    RemountReadOnly { target: String },
    /// Refuse to switch unless the next init exists in the new root: after the switch the
    /// initramfs is gone and nothing can be repaired.
    CheckInit { new_root: String, path: String },
    /// Move /dev, /proc, /sys, /run into the new root.
    MoveSpecialMounts {
        new_root: String,
        mounts: Vec<String>,
    },
    /// Symlinks `dir/NAME -> TARGET` (stage 1's /dev links); one that cannot be made is a
    /// warning (stage 2 boots without it, only its process substitution fails).
    DeviceLinks {
        dir: String,
        links: Vec<(String, String)>,
    },
    /// Move files carried into the initramfs (kexec: ssh host keys, addresses) from `from`
    /// to `to` in the new root's /run, when `from` exists. The kexec script appends them as
    /// one more archive at kexec time, so the initrd's configuration cannot name them.
    CarryFiles { from: String, to: String },
    /// Detect the closure's flavour (phase `flavour`), then prepare the new root for it
    /// (phase `prepare-root`: run the `prepare-root` beside `init`, when there is one; or
    /// phase `nixos-init`: what nixos-init's initrd-init does). Two phases of one step: the
    /// flavour goes from one to the other as a value.
    PrepareRoot { new_root: String, init: String },
    /// Free the initramfs, make the new root `/`.
    SwitchRoot { new_root: String },
    /// Write the phase timings (after the switch: into the booted system's /run).
    WriteTimings { path: String },
}

/// `SOURCE on TARGET type FSTYPE (OPTIONS)`: a mount, planned or done.
pub fn mount_text(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MountFlags,
    data: &str,
) -> String {
    format!(
        "{source} on {target} type {fstype} ({})",
        options(flags, data)
    )
}

/// `virtiofs tag TAG on TARGET (OPTIONS)`.
pub fn virtiofs_text(tag: &str, target: &str, flags: MountFlags, data: &str) -> String {
    format!("virtiofs tag {tag} on {target} ({})", options(flags, data))
}

/// `overlay on TARGET (lower L, upper U[, work W])`: the plan names the work directory too.
pub fn overlay_text(target: &str, lower: &str, upper: &str, work: Option<&str>) -> String {
    let work = work.map(|w| format!(", work {w}")).unwrap_or_default();
    format!("overlay on {target} (lower {lower}, upper {upper}{work})")
}

/// `FROM -> TO`: files brought into the new root.
pub fn copy_text(from: &str, to: &str) -> String {
    format!("{from} -> {to}")
}

/// `fd -> /proc/self/fd, ... in DIR`: links made.
pub fn links_text(dir: &str, links: &[(String, String)]) -> String {
    let each: Vec<String> = links.iter().map(|(n, t)| format!("{n} -> {t}")).collect();
    format!("{} in {dir}", each.join(", "))
}

impl Step {
    /// The name of the step's (first) phase, in log lines and in `step=` of the status line.
    pub fn name(&self) -> &'static str {
        match self {
            Step::LoadModule { .. } => "load-module",
            Step::Mount { role, .. }
            | Step::MountVirtiofs { role, .. }
            | Step::MountOverlay { role, .. } => role.step_name(),
            Step::MountBlock { role, .. } => role.wait_name(),
            Step::MountVerity { source, .. } => crate::verity::source_phase(source),
            Step::CopyEmbeddedStore { .. } => "copy-store",
            Step::RemountReadOnly { .. } => "remount-root-ro",
            Step::CheckInit { .. } => "check-init",
            Step::MoveSpecialMounts { .. } => "move-mounts",
            Step::CarryFiles { .. } => "carry",
            Step::DeviceLinks { .. } => "dev-links",
            Step::PrepareRoot { .. } => "flavour",
            Step::SwitchRoot { .. } => "switch-root",
            Step::WriteTimings { .. } => "write-timings",
        }
    }

    /// The step's phases, in order: each one's name and what it will do. A block mount has
    /// two (the wait and the mount), and so has the root's preparation (the flavour, then
    /// what it needs).
    pub fn phases(&self) -> Vec<(&'static str, String)> {
        let one = |text: String| vec![(self.name(), text)];
        match self {
            Step::LoadModule { name, path, params } if params.is_empty() => {
                one(format!("{name} from {path}"))
            }
            Step::LoadModule { name, path, params } => {
                one(format!("{name} from {path} ({params})"))
            }
            Step::Mount {
                source,
                target,
                fstype,
                flags,
                data,
                ..
            } => one(mount_text(source, target, fstype, *flags, data)),
            Step::MountVirtiofs {
                tag,
                target,
                flags,
                data,
                timeout,
                ..
            } => one(format!(
                "{}, waiting up to {}",
                virtiofs_text(tag, target, *flags, data),
                describe_timeout(*timeout)
            )),
            Step::MountBlock { .. } => self.block_phases(),
            Step::MountVerity { .. } => self.verity_phases(),
            Step::CopyEmbeddedStore { from, to } => one(copy_text(from, to)),
            Step::MountOverlay {
                target,
                lower,
                upper,
                work,
                ..
            } => one(overlay_text(target, lower, upper, Some(work))),
            Step::RemountReadOnly { target } => one(format!("{target} read-only")),
            Step::CheckInit { new_root, path } => one(format!("{path} in {new_root}")),
            Step::MoveSpecialMounts { new_root, mounts } => {
                one(format!("{} -> {new_root}", mounts.join(" ")))
            }
            Step::CarryFiles { from, to } => one(format!("{}, if any", copy_text(from, to))),
            Step::DeviceLinks { dir, links } => one(links_text(dir, links)),
            Step::PrepareRoot { new_root, init } => vec![
                (
                    self.name(),
                    format!(
                        "of the closure of {init} in {new_root}: (a) a #! stage-2 script, \
                         (b) prepare-root beside it, (c) nixos-init, or none"
                    ),
                ),
                (
                    "prepare-root",
                    "what the flavour needs: prepare-root run, or nixos-init's preparation \
                     (phase nixos-init), or nothing"
                        .to_string(),
                ),
            ],
            Step::SwitchRoot { new_root } => one(format!("{new_root} becomes /")),
            Step::WriteTimings { path } => one(path.clone()),
        }
    }

    fn verity_phases(&self) -> Vec<(&'static str, String)> {
        let Step::MountVerity {
            source,
            root_hash,
            hash_offset,
            check,
            timeout,
            target,
        } = self
        else {
            return Vec::new();
        };
        let find = match source {
            Source::Block(_) => format!(
                "block device {source}, waiting up to {}",
                describe_timeout(*timeout)
            ),
            Source::File(p) => format!("{p} on a loop device, read-only"),
        };
        let reads = match check {
            Check::First => "the first block",
            Check::Full => "every block",
        };
        vec![
            (self.name(), find),
            (
                crate::verity::STEP,
                format!(
                    "dm-verity target on that device, root hash {}, hash tree at byte \
                     {hash_offset}; {reads} read through it",
                    nixboot_protocol::verity::hex(root_hash)
                ),
            ),
            (
                Role::Store.step_name(),
                mount_text("the verity device", target, "erofs", MountFlags::RDONLY, ""),
            ),
        ]
    }

    fn block_phases(&self) -> Vec<(&'static str, String)> {
        let Step::MountBlock {
            role,
            spec,
            timeout,
            target,
            fstypes,
            flags,
            data,
        } = self
        else {
            return Vec::new();
        };
        let types = if fstypes.is_empty() {
            "from its superblock".to_string()
        } else {
            fstypes.join(" or ")
        };
        vec![
            (
                role.wait_name(),
                format!(
                    "block device {}, waiting up to {}",
                    Root::Block(spec.clone()),
                    describe_timeout(*timeout)
                ),
            ),
            (
                role.step_name(),
                mount_text("that device", target, &types, *flags, data),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_mount_is_two_phases_described_once_each() {
        let step = Step::MountBlock {
            role: Role::Root,
            spec: BlockSpec::Label("nixos".into()),
            timeout: Duration::from_secs(7),
            target: "/sysroot".into(),
            fstypes: vec!["ext4".into(), "btrfs".into()],
            flags: MountFlags::RDONLY | MountFlags::NOATIME,
            data: "errors=remount-ro".into(),
        };
        assert_eq!(step.name(), "wait-root");
        assert_eq!(
            step.phases(),
            [
                (
                    "wait-root",
                    "block device LABEL=nixos, waiting up to 7s".to_string()
                ),
                (
                    "mount-root",
                    "that device on /sysroot type ext4 or btrfs (ro,noatime,errors=remount-ro)"
                        .to_string()
                ),
            ]
        );
    }

    #[test]
    fn the_plan_text_and_the_done_text_share_their_words() {
        let mount = Step::Mount {
            role: Role::StoreUpper,
            source: "tmpfs".into(),
            target: "/sysroot/nix/.rw-store".into(),
            fstype: "tmpfs".into(),
            flags: MountFlags::empty(),
            data: "mode=0755".into(),
        };
        let done = mount_text(
            "tmpfs",
            "/sysroot/nix/.rw-store",
            "tmpfs",
            MountFlags::empty(),
            "mode=0755",
        );
        assert_eq!(mount.phases(), [("mount-store-upper", done)]);
        let overlay = Step::MountOverlay {
            role: Role::StoreOverlay,
            target: "/n".into(),
            lower: "/l".into(),
            upper: "/u".into(),
            work: "/w".into(),
        };
        assert_eq!(
            overlay.phases()[0].1,
            "overlay on /n (lower /l, upper /u, work /w)"
        );
        assert_eq!(
            overlay_text("/n", "/l", "/u", None),
            "overlay on /n (lower /l, upper /u)"
        );
    }
}
