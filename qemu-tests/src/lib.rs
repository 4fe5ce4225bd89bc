//! The QEMU boot tests' harness: what every boot test needs besides the launcher
//! (`nixboot-launcher`): the prerequisites (kernel, modules, virtiofsd, QEMU) and the static
//! guest binaries.
//!
//! - [`artifacts`]: prerequisites, static guest binaries, fake store names.

pub mod artifacts;
