//! nixboot's PID 1 for the initramfs, as a library: the binary (`main.rs`) only calls
//! [`run`]; the fuzz targets (`init/fuzz`) and tests reach the pure parts directly.
//!
//! The files are the boot's phases, in order: [`cmdline`], [`plan`] (what the boot will
//! do, one planner per phase), [`modules`], the root and its shares ([`virtiofs`],
//! [`block`], [`store`]), [`nixos`] (check-init, the closure flavours, prepare-root,
//! nixos-init's preparation), then [`switch_root`], and in command mode [`exec`]. [`boot`] runs the plan; [`mounts`],
//! [`loop_device`] and [`wait`] (the one bounded-wait mechanism) serve the phases;
//! [`report`] writes the console and timings; [`failure`] is the failure policy.
//! [`kexec`] is not part of the boot: it plans `nixboot-kexec`, a separate binary that
//! loads another generation from its boot.json.
//!
//! Deciding is apart from doing. Pure, unit-tested and fuzzed: [`cmdline`], [`plan`],
//! [`block::probe`] (superblocks, partition tables), [`elf`] (a binary's loader), the
//! formats in [`report`].

pub mod block;
pub mod boot;
pub mod cmdline;
pub mod elf;
pub mod exec;
pub mod failure;
pub mod kexec;
pub mod log;
pub mod loop_device;
pub mod modules;
pub mod mounts;
pub mod nixos;
pub mod plan;
pub mod store;
pub mod switch_root;
pub mod verity;
pub mod virtiofs;
pub mod wait;

pub use boot::run;
