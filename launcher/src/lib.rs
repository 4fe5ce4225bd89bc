//! Boots a kernel + initrd in QEMU with the Nix store (and optionally kernel modules)
//! shared over virtiofs, and reads back what happened from the serial console.
//!
//! Used by the `nixboot-qemu` binary (what users run), the QEMU boot tests and the benchmark.
//!
//! - [`virtiofsd`]: one virtiofsd process per [`Share`], killed when dropped.
//! - [`accel`]: KVM when it really works on this host, else TCG.
//! - [`machine`]: the machine type (`pc`, `q35`, `microvm`) and what goes with it.
//! - [`qemu`]: assembles the QEMU command line, streams and captures the console.
//! - [`console`]: parses the init's status line, the probe's result, kernel panics.
//! - [`exec`]: command mode's virtio-serial ports (`--exec`).
//! - [`bootspec`]: reads `boot.json` and assembles the kernel command line.

pub mod accel;
pub mod bootspec;
pub mod console;
pub mod disk;
pub mod exec;
pub mod machine;
pub mod qemu;
pub mod virtiofsd;

pub use accel::{Accel, AccelChoice};
pub use bootspec::{BootSpec, KernelCmdline};
pub use console::{ConsoleFacts, Status, StatusLine};
pub use machine::Machine;
pub use qemu::{Outcome, VmConfig};
pub use virtiofsd::Share;

use std::path::PathBuf;

/// Why the launcher could not do its job (as opposed to the guest failing to boot, which
/// is reported in an [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid share {0:?}: {1}")]
    BadShare(String, String),
    #[error("virtiofsd for tag {tag:?} ({dir}) failed to start: {reason}{}", log_suffix(.log))]
    VirtiofsdStart {
        tag: String,
        dir: PathBuf,
        reason: String,
        log: String,
    },
    #[error("{path}: {reason}")]
    BootSpec { path: PathBuf, reason: String },
    #[error("{0}")]
    Config(String),
}

fn log_suffix(log: &str) -> String {
    let log = log.trim();
    if log.is_empty() {
        String::new()
    } else {
        format!("\n--- its output ---\n{log}")
    }
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error's chain on one line, leaving out a cause that an outer message already
/// quotes (io errors are often both in the message and its source): what the binaries
/// (`nixboot-qemu`, `nixboot-bench`) print after "error: ".
pub fn said_once(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Children die with the thread that started them, so a killed test or launcher does not
/// leave QEMU or virtiofsd behind (the starting thread outlives both on the normal path).
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{said_once, Error};
    use anyhow::Context;

    #[test]
    fn said_once_joins_the_chain_and_skips_quoted_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let quoted = Error::io("opening x", io);
        let e = Err::<(), _>(quoted)
            .context("reading the spec")
            .unwrap_err();
        // The io error's text is already in "opening x: no such file".
        assert_eq!(said_once(&e), "reading the spec: opening x: no such file");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(said_once(&e), "outer: inner");
    }
}
