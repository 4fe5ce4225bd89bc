//! The switch: which init comes next, the steps from checking it to writing the timings,
//! and the exec.

use super::{Exec, PlanError, Step, DEV_LINKS, EARLY_MOUNTS, NEW_ROOT};
use crate::cmdline::Options;
use nixboot_protocol::InitrdConfig;

/// Where phase timings are written (in the new root, after the switch).
pub use nixboot_protocol::timings::TIMINGS_PATH;
/// Environment of the next init (see the module documentation).
pub const NEXT_INIT_ENV: &[(&str, &str)] = &[("HOME", "/"), ("TERM", "linux")];
/// Where `kexec-run.sh` (nixos/modules/baremetal) puts files for the next system, in the
/// initramfs, and where that system's `nixboot-carry` service reads them.
pub const CARRY_FROM: &str = "/etc/nixboot/carry";
pub const CARRY_TO: &str = "/run/nixboot/carry";

/// `init=`, else the initrd's default init (noted).
pub fn next_init(
    opts: &Options,
    config: &InitrdConfig,
    notes: &mut Vec<String>,
) -> Result<String, PlanError> {
    match (&opts.init, &config.default_init) {
        (Some(i), _) => Ok(i.clone()),
        (None, Some(d)) => {
            notes.push(format!(
                "no init= on the command line, using the initrd's default {d}"
            ));
            Ok(d.clone())
        }
        (None, None) => Err(PlanError {
            error: "no init= on the command line and the initrd names no default init".into(),
            check: "add init=/nix/store/...-nixos-system-.../init to the kernel command line, \
                    or build the initrd with a default init"
                .into(),
        }),
    }
}

/// From check-init to write-timings.
pub fn plan(init: &str, remount_read_only: bool) -> Vec<Step> {
    let mut steps = vec![
        Step::CheckInit {
            new_root: NEW_ROOT.into(),
            path: init.to_string(),
        },
        Step::MoveSpecialMounts {
            new_root: NEW_ROOT.into(),
            mounts: EARLY_MOUNTS.iter().map(|m| m.target.to_string()).collect(),
        },
        // In the devtmpfs that moved: stage 2 finds them, whatever the flavour.
        Step::DeviceLinks {
            dir: format!("{NEW_ROOT}/dev"),
            links: DEV_LINKS
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect(),
        },
        // After the move: /run is the new root's now, and stays the booted system's.
        Step::CarryFiles {
            from: CARRY_FROM.into(),
            to: format!("{NEW_ROOT}{CARRY_TO}"),
        },
        Step::PrepareRoot {
            new_root: NEW_ROOT.into(),
            init: init.to_string(),
        },
    ];
    // Last, once every mount point in it (including /dev, /proc, /sys, /run) exists and
    // prepare-root has written its /etc.
    if remount_read_only {
        steps.push(Step::RemountReadOnly {
            target: NEW_ROOT.into(),
        });
    }
    steps.push(Step::SwitchRoot {
        new_root: NEW_ROOT.into(),
    });
    steps.push(Step::WriteTimings {
        path: TIMINGS_PATH.into(),
    });
    steps
}

/// The next init with the words after `--`, and the kernel's environment for an init.
pub fn exec(init: String, opts: &Options) -> Exec {
    let mut argv = vec![init.clone()];
    argv.extend(opts.init_args.iter().cloned());
    Exec {
        path: init,
        argv,
        env: NEXT_INIT_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}
