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

/// The file beside a closure's `init` saying that the closure's own agent (a systemd unit,
/// nixos/exec-agent.sh) runs `nixboot.exec=` commands; without it the init runs them.
pub const EXEC_AGENT_MARKER: &str = "nixboot-exec-agent";

/// Command mode (`nixboot.exec=`): after the switch, unless the closure has an agent, the
/// init (still PID 1) runs the command itself with a shell of the closure instead of
/// exec'ing the next init, then powers off (exec.rs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCommand {
    pub command: String,
    /// When this file exists (after the switch), the next init is exec'd as usual.
    pub agent_marker: String,
    /// The first of these that is an executable file runs `sh -l -c COMMAND`.
    pub shells: Vec<String>,
    /// The command's whole environment (a root login's); HOME is also its directory.
    pub env: Vec<(String, String)>,
    /// Bound of the wait for the virtio-serial ports.
    pub ports_timeout: std::time::Duration,
    /// Where the command runs: the shared working directory (`nixboot.cwd=`), else HOME.
    pub cwd: Option<String>,
}

/// The command's runner, in command mode: `init`'s directory is the closure; its `sw/bin`
/// comes first, then NixOS's and the FHS places.
pub fn run_command(init: &str, opts: &Options) -> Option<RunCommand> {
    let command = opts.exec.clone()?;
    let closure = match init.rfind('/') {
        Some(0) | None => "",
        Some(i) => &init[..i],
    };
    let bins = [
        format!("{closure}/sw/bin"),
        "/run/current-system/sw/bin".into(),
        "/bin".into(),
        "/usr/bin".into(),
    ];
    let path = [&bins[..], &["/sbin".into(), "/usr/sbin".into()]].concat();
    let shells: Vec<String> = bins.iter().map(|b| format!("{b}/sh")).collect();
    let env = [
        ("HOME", "/root"),
        ("USER", "root"),
        ("LOGNAME", "root"),
        ("SHELL", shells[0].as_str()),
        ("TERM", "dumb"),
        ("PATH", &path.join(":")),
    ];
    Some(RunCommand {
        command,
        agent_marker: format!("{closure}/{EXEC_AGENT_MARKER}"),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        shells,
        ports_timeout: opts.timeout,
        cwd: opts.cwd.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdline::parse;

    #[test]
    fn command_mode_uses_the_closures_shell_first() {
        let init = "/nix/store/abc-system/init";
        assert_eq!(run_command(init, &parse("init=/x")), None);
        let param = nixboot_protocol::exec::cmdline_param("uname -r");
        let r = run_command(init, &parse(&format!("init=/x rd.timeout=7 {param}"))).unwrap();
        assert_eq!(r.command, "uname -r");
        assert_eq!(r.agent_marker, "/nix/store/abc-system/nixboot-exec-agent");
        assert_eq!(r.shells[0], "/nix/store/abc-system/sw/bin/sh");
        assert!(r.shells.contains(&"/bin/sh".to_string()));
        let path = &r.env.iter().find(|(k, _)| k == "PATH").unwrap().1;
        assert!(path.starts_with("/nix/store/abc-system/sw/bin:"), "{path}");
        assert_eq!(r.ports_timeout, std::time::Duration::from_secs(7));
    }
}
