//! Running a closure's `prepare-root` the way NixOS's systemd initrd does.
//!
//! NixOS runs it as a service of the initrd, so its output lands in the journal and stage 2
//! finds it there. We have no journal: its output goes to the console and, line by line, to
//! the kernel log (`prepare-root: ...`), where stage 2's journald reads it.

use crate::failure::Failure;
use rustix::fd::{AsFd, OwnedFd};
use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::process::{Child, ExitStatus, Stdio};

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
    let status = spawn_logged(&mut cmd)
        .and_then(|(child, out)| wait_forwarding(child, out, new_root))
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

/// Spawns `cmd` with stdout and stderr on one pipe; returns the child and the read end.
fn spawn_logged(cmd: &mut std::process::Command) -> std::io::Result<(Child, OwnedFd)> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let write2 = rustix::io::dup(&write)?;
    cmd.stdout(Stdio::from(write)).stderr(Stdio::from(write2));
    let child = cmd.spawn()?;
    // The Command keeps the write ends until it is dropped: ours must be closed for EOF.
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    Ok((child, read))
}

/// Copies the child's output to the console and the kernel log until it exits. A process it
/// left in the background may hold the pipe open: once the child has exited, what is there
/// is drained and the rest ignored, so a daemon cannot stall the boot.
fn wait_forwarding(mut child: Child, out: OwnedFd, new_root: &str) -> std::io::Result<ExitStatus> {
    let kmsg = rustix::fs::open(
        format!("{new_root}/dev/kmsg").as_str(),
        rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok();
    let mut lines = LineForwarder::new(kmsg);
    let mut buf = [0u8; 4096];
    loop {
        let exited = child.try_wait()?;
        let mut fds = [rustix::event::PollFd::new(
            &out,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        let ready = rustix::event::poll(&mut fds, Some(&timeout)).unwrap_or(0);
        if ready > 0 {
            match rustix::io::read(&out, &mut buf) {
                Ok(0) => return lines.finish(child.wait()),
                Ok(n) => lines.push(&buf[..n]),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return lines.finish(Err(e.into())),
            }
            continue;
        }
        if let Some(status) = exited {
            return lines.finish(Ok(status));
        }
    }
}

/// Splits output into lines for the console and `<6>prepare-root: LINE` records for
/// /dev/kmsg (a record is at most about 1 KiB: longer lines are cut into pieces).
struct LineForwarder {
    kmsg: Option<OwnedFd>,
    pending: Vec<u8>,
}

impl LineForwarder {
    fn new(kmsg: Option<OwnedFd>) -> Self {
        LineForwarder {
            kmsg,
            pending: Vec::new(),
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        crate::log::write_console(bytes);
        self.pending.extend_from_slice(bytes);
        while let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=i).collect();
            self.record(&line[..line.len() - 1]);
        }
    }

    fn record(&self, line: &[u8]) {
        let Some(kmsg) = &self.kmsg else { return };
        for piece in kmsg_records(line) {
            let _ = rustix::io::write(kmsg.as_fd(), &piece);
        }
    }

    fn finish<T>(mut self, result: std::io::Result<T>) -> std::io::Result<T> {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.record(&rest);
        }
        result
    }
}

/// The kernel-log records for one line of output: `<6>prepare-root: ` and at most 900 bytes
/// of the line each; empty lines give none.
pub fn kmsg_records(line: &[u8]) -> Vec<Vec<u8>> {
    line.chunks(900)
        .filter(|c| !c.iter().all(|b| b.is_ascii_whitespace()))
        .map(|c| [b"<6>prepare-root: ".as_slice(), c, b"\n"].concat())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmsg_records_prefix_and_cut_long_lines() {
        assert_eq!(
            kmsg_records(b"running activation script..."),
            vec![b"<6>prepare-root: running activation script...\n".to_vec()]
        );
        assert!(kmsg_records(b"  ").is_empty());
        let long = vec![b'x'; 2000];
        let recs = kmsg_records(&long);
        assert_eq!(recs.len(), 3);
        assert!(recs.iter().all(|r| r.len() <= 900 + 18 + 1));
    }
}
