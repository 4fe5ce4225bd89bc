//! NixOS-specific parts of the hand-off to stage 2.

pub mod nixos_init;
