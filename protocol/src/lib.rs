//! The host/guest contract: every format that one nixboot program writes and another reads,
//! with its one writer and its one reader.
//!
//! - [`bootspec`]: `toplevel/boot.json` (NixOS bootspec v1 and its extensions), read by
//!   mkinitrd, the launcher and the init.
//! - [`initrd`]: `/etc/nixboot/initrd.json`, written by mkinitrd, read by the init.

pub mod bootspec;
pub mod initrd;

pub use initrd::*;
