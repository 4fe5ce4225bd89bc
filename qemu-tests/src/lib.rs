//! The QEMU boot tests' harness: what every boot test needs besides the launcher
//! (`nixboot-launcher`): the prerequisites (kernel, modules, virtiofsd, QEMU) and the static
//! guest binaries.
//!
//! - [`artifacts`]: prerequisites, static guest binaries, fake store names.
//! - [`nixos_closure`]: a NixOS-shaped closure of real parts (Debian's systemd) for real stage-2 boots.

pub mod artifacts;
pub mod nixos_closure;
