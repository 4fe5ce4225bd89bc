//! nixboot's PID 1 for the initramfs, as a library: the binary (`main.rs`) only calls
//! [`run`]; the fuzz targets (`init/fuzz`) and tests reach the pure parts directly.
//!
//! Deciding is apart from doing. Pure, unit-tested and fuzzed: [`cmdline`] (the kernel
//! command line), [`plan`] (what the boot will do), [`blockdev`] (superblocks, partition
//! tables), [`elf`] (a binary's loader), [`report`] (console and timings formats). Doing:
//! [`boot`] executes the plan with [`modules`], [`mounts`], [`wait`], [`devices`],
//! [`store`], [`switch_root`]; [`failure`] is the failure policy.

pub mod blockdev;
pub mod boot;
pub mod cmdline;
pub mod devices;
pub mod elf;
pub mod failure;
pub mod modules;
pub mod mounts;
pub mod nixos;
pub mod plan;
pub mod report;
pub mod store;
pub mod switch_root;
pub mod wait;

pub use boot::run;
