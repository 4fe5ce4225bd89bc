//! The NixOS side of the switch: is the next init there and runnable ([`check_init`]), what
//! kind of closure it belongs to ([`flavour`]), and what that flavour needs done in the new
//! root before the exec ([`prepare_root`]). Files are looked up inside the new root
//! ([`resolve`]).

pub mod check_init;
pub mod flavour;
pub mod nixos_init;
pub mod prepare_root;
pub mod resolve;

use crate::failure::Failure;
use crate::log;
use flavour::Flavour;

/// The prepare-root step: detects the flavour, does what it needs; `Ok` is the log line.
pub fn prepare(step: &'static str, new_root: &str, init: &str) -> Result<String, Failure> {
    // HOOK (issue 9): the nixos-init flavour (c) is detected and prepared here for now.
    if let Some(done) = nixos_init::prepare(step, new_root, init)? {
        return Ok(done);
    }
    match flavour::detect(step, new_root, init)? {
        Flavour::Stage2 { note } => Ok(note),
        Flavour::SystemdPrepareRoot { prepare } => {
            log::log(
                step,
                &format!(
                    "{init} comes with {prepare} (NixOS with the systemd initrd): running it \
                     in {new_root}"
                ),
            );
            prepare_root::run(step, new_root, &prepare)
        }
    }
}
