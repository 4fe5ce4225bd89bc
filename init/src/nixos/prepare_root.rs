//! Running a closure's `prepare-root` the way NixOS's systemd initrd does.

use crate::failure::Failure;
use std::ffi::CString;
use std::os::unix::process::CommandExt;

/// What NixOS's systemd initrd sets for prepare-root (boot/systemd/initrd.nix).
pub const PREPARE_ROOT_ENV: (&str, &str) = ("IN_NIXOS_SYSTEMD_STAGE1", "true");

/// Runs `prepare` chrooted into the new root, /run shared, `IN_NIXOS_SYSTEMD_STAGE1=true`;
/// `Ok` is the line for the log.
pub fn run(step: &'static str, new_root: &str, prepare: &str) -> Result<String, Failure> {
    let root_c = CString::new(new_root).map_err(|_| Failure::new(step, "NUL in the root path"))?;
    let mut cmd = std::process::Command::new(prepare);
    cmd.arg0(prepare)
        .env_clear()
        .envs(crate::plan::NEXT_INIT_ENV.iter().copied())
        .env(PREPARE_ROOT_ENV.0, PREPARE_ROOT_ENV.1);
    // SAFETY: between fork and exec only chroot(2) and chdir(2), on memory prepared before.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::chroot(root_c.as_c_str())?;
            rustix::process::chdir(c"/")?;
            Ok(())
        });
    }
    let check = "its output above: prepare-root is NixOS's stage-2 script run with \
                 IN_NIXOS_SYSTEMD_STAGE1=true (activation); the same closure's boot with \
                 NixOS's own initrd would fail the same way";
    let status = cmd
        .spawn()
        .and_then(|mut child| child.wait())
        .map_err(|e| {
            Failure::new(step, format!("cannot run {prepare}: {e}"))
                .tried(format!("chroot {new_root} {prepare}"))
                .check(check)
        })?;
    if status.success() {
        Ok(format!("{prepare} finished"))
    } else {
        use std::os::unix::process::ExitStatusExt;
        let how = match (status.code(), status.signal()) {
            (Some(c), _) => format!("exited with status {c}"),
            (_, Some(s)) => format!("was killed by signal {s}"),
            _ => "failed".to_string(),
        };
        Err(Failure::new(step, format!("{prepare} {how}"))
            .tried(format!(
                "chroot {new_root} {prepare} with {}={}",
                PREPARE_ROOT_ENV.0, PREPARE_ROOT_ENV.1
            ))
            .check(check))
    }
}
