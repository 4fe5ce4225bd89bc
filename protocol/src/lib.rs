//! The host/guest contract: every format that one nixboot program writes and another reads,
//! with its one writer and its one reader.
//!
//! - [`initrd`]: `/etc/nixboot/initrd.json`, written by mkinitrd, read by the init.

pub mod initrd;

pub use initrd::*;
