//! The root: a tmpfs, a virtiofs share, or a block device, mounted on [`NEW_ROOT`] with
//! `rootflags=`, `rootfstype=` and `ro`/`rw`.

use super::options::split_mount_options;
use super::{PlanError, Role, Step, NEW_ROOT};
use crate::cmdline::{BlockSpec, Options, Root};
use rustix::mount::MountFlags;

/// The root's step, and whether it is to be remounted read-only right before the switch.
pub struct RootPlan {
    pub step: Step,
    pub remount_read_only: bool,
}

pub fn plan(opts: &Options, notes: &mut Vec<String>) -> Result<RootPlan, PlanError> {
    let (mut flags, flags_ro, data) = split_mount_options(opts.rootflags.as_deref().unwrap_or(""));
    // The command line's ro/rw wins over an ro/rw inside rootflags=.
    let read_only = opts.read_only.or(flags_ro).unwrap_or(false);
    let step = match &opts.root {
        Root::Tmpfs => {
            if let Some(t) = opts.rootfstype.as_deref().filter(|t| *t != "tmpfs") {
                notes.push(format!("rootfstype={t} ignored: root=tmpfs"));
            }
            let base = format!("mode=0755,size={}", opts.tmpfs_size);
            Step::Mount {
                role: Role::Root,
                source: "tmpfs".into(),
                target: NEW_ROOT.into(),
                fstype: "tmpfs".into(),
                flags,
                data: if data.is_empty() {
                    base
                } else {
                    format!("{base},{data}")
                },
            }
        }
        Root::Virtiofs(tag) => {
            if let Some(t) = opts.rootfstype.as_deref().filter(|t| *t != "virtiofs") {
                notes.push(format!("rootfstype={t} ignored: root=virtiofs:{tag}"));
            }
            Step::MountVirtiofs {
                role: Role::Root,
                tag: tag.clone(),
                target: NEW_ROOT.into(),
                flags,
                data,
                timeout: opts.timeout,
            }
        }
        Root::Block(spec) => {
            flags.set(MountFlags::RDONLY, read_only);
            block(opts, spec, flags, data)?
        }
    };
    Ok(RootPlan {
        step,
        // A block root is mounted read-only from the start.
        remount_read_only: read_only && !matches!(opts.root, Root::Block(_)),
    })
}

fn block(
    opts: &Options,
    spec: &BlockSpec,
    flags: MountFlags,
    data: String,
) -> Result<Step, PlanError> {
    if let BlockSpec::Other(v) = spec {
        return Err(PlanError {
            error: format!("root={v}: this form of root= is not supported"),
            check: "use root=/dev/NAME, LABEL=, UUID=, PARTUUID=, PARTLABEL=, MAJ:MIN, \
                    /dev/disk/by-{label,uuid,partuuid,partlabel}/..., tmpfs or \
                    virtiofs:TAG (there is no udev in this initrd, so no other \
                    /dev/disk or /dev/mapper names)"
                .into(),
        });
    }
    Ok(Step::MountBlock {
        role: Role::Root,
        spec: spec.clone(),
        timeout: opts.timeout,
        target: NEW_ROOT.into(),
        fstypes: opts
            .rootfstype
            .as_deref()
            .unwrap_or("")
            .split(',')
            .filter(|t| !t.is_empty() && *t != "auto")
            .map(str::to_string)
            .collect(),
        flags,
        data,
    })
}
