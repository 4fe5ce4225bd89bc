//! What the QEMU boot tests and the benchmark need besides the launcher
//! (`nixboot-launcher`): the prerequisites (kernel, modules, virtiofsd, QEMU) and the static
//! guest binaries. The boot tests' one harness (VM slots, timeout, fixtures, assertions) is
//! `tests/common`, which builds initrds with the mkinitrd library (a dev-dependency, so the
//! benchmark does not link mkinitrd).
//!
//! - [`artifacts`]: prerequisites, static guest binaries, fake store names.
//! - [`nixos_closure`]: a NixOS-shaped closure of real parts (Debian's systemd) for real stage-2 boots.

pub mod artifacts;
pub mod nixos_closure;
