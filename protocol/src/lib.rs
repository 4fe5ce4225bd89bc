//! The host/guest contract: every format that one nixboot program writes and another reads,
//! with its one writer and its one reader.
//!
//! - [`bootspec`]: `toplevel/boot.json` (NixOS bootspec v1 and its extensions), read by
//!   mkinitrd, the launcher and the init.
//! - [`initrd`]: `/etc/nixboot/initrd.json`, written by mkinitrd, read by the init.
//! - [`console`]: the init's console log lines and its `nixboot-status:` line, written by
//!   the init, read by the launcher, the tests and the bench.
//! - [`timings`]: `/run/nixboot/timings.json`, written by the init, read through the probe
//!   by the tests and the bench.
//! - [`exec`]: command mode: `nixboot.exec=` on the kernel command line (written by the
//!   launcher, read by the init's runner and the NixOS agent) and the virtio-serial ports
//!   carrying the command's output and status back.
//! - [`probe`]: the probe's `PROBE-RESULT {json}` report, written by the probe (the
//!   synthetic stage 2), read by the launcher and the tests.

pub mod bootspec;
pub mod console;
pub mod exec;
pub mod initrd;
pub mod probe;
pub mod timings;
pub mod verity;

pub use initrd::*;
