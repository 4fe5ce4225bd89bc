//! The NixOS side of the switch: is the next init there and runnable ([`check_init`]), what
//! kind of closure it belongs to ([`flavour`]), and what that flavour needs done in the new
//! root before the exec: its `prepare-root` run ([`prepare_root`]), or nixos-init's
//! preparation done ([`nixos_init`]). Files are looked up inside the new root ([`resolve`]).

pub mod check_init;
pub mod flavour;
pub mod nixos_init;
pub mod prepare_root;
pub mod resolve;

use crate::failure::Failure;
use crate::log;
use flavour::Flavour;

/// The phase that prepares the root (a, b and plain closures: nothing, or prepare-root).
pub const STEP_PREPARE_ROOT: &str = "prepare-root";

/// The name of the phase preparing the root for `flavour` (log, status line, timings).
pub fn prepare_phase(flavour: &Flavour) -> &'static str {
    match flavour {
        Flavour::NixosInit { .. } => nixos_init::STEP_NIXOS_INIT,
        _ => STEP_PREPARE_ROOT,
    }
}

/// Does what `flavour` needs done in `new_root` before the exec; `Ok` is the log line. A
/// failure goes to the failure policy: the root is never handed on half-prepared.
pub fn prepare(step: &'static str, new_root: &str, flavour: &Flavour) -> Result<String, Failure> {
    match flavour {
        Flavour::Stage2Script { init } => Ok(format!(
            "no prepare-root beside {init}: the stage-2 script, exec'd as is"
        )),
        Flavour::Plain { note } => Ok(note.clone()),
        Flavour::SystemdPrepareRoot { prepare } => {
            log::log(
                step,
                &format!("{prepare} (NixOS with the systemd initrd): running it in {new_root}"),
            );
            prepare_root::run(step, new_root, prepare)
        }
        Flavour::NixosInit { toplevel, ext } => nixos_init::prepare(new_root, toplevel, ext),
    }
}
