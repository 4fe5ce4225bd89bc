//! The closure flavours: what kind of system the next init belongs to, read from the files
//! beside it once the new root is mounted, and so what is done before exec'ing it.

use super::resolve::{open_in_root, open_root, resolve_in_root, Unusable};
use crate::failure::Failure;
use crate::log::errno;
use rustix::io::Errno;

/// What kind of closure `init=` belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flavour {
    /// A stage-2 init (NixOS's scripted stage 2, or any other init): exec'd as is. `note`
    /// says why, for the log (no prepare-root beside it, or one that cannot be run).
    Stage2 { note: String },
    /// NixOS built with the systemd initrd: `init` is systemd, and `prepare` (the stage-2
    /// script run with `IN_NIXOS_SYSTEMD_STAGE1=true`) is run before it.
    SystemdPrepareRoot { prepare: String },
    // New flavours (NixOS's nixos-init: nixos_init.rs) are a variant here, recognised in
    // `detect`, prepared in `super::prepare`.
}

/// Looks beside the next init (symlinks resolved, in the new root) for what it needs.
pub fn detect(step: &'static str, new_root: &str, init: &str) -> Result<Flavour, Failure> {
    let resolved = resolve_in_root(new_root, init).map_err(|e| {
        Failure::new(
            step,
            format!("cannot resolve {init} in the new root: {}", errno(e)),
        )
    })?;
    let prepare = prepare_root_path(&resolved);
    let root = open_root(step, new_root)?;
    Ok(match open_in_root(&root, &prepare) {
        Ok(_) => Flavour::SystemdPrepareRoot { prepare },
        Err(Unusable::Sys(Errno::NOENT)) => Flavour::Stage2 {
            note: format!(
                "no prepare-root beside {resolved}: a stage-2 init (scripted NixOS or other), \
                 exec'd as is"
            ),
        },
        // NixOS's initrd tests `[ -x prepare-root ]` and skips activation too.
        Err(e) => Flavour::Stage2 {
            note: format!(
                "WARNING: {prepare} is not usable ({e}); not running it (as NixOS's initrd \
                 would not), exec'ing {init} as is"
            ),
        },
    })
}

/// The directory of the closure whose `init` is `init_in_root` (a path in the new root,
/// symlinks resolved), and where its `prepare-root` would be: NixOS's systemd initrd takes
/// `dirname(realpath(init=))` as the closure.
pub fn prepare_root_path(init_resolved: &str) -> String {
    let dir = match init_resolved.rfind('/') {
        Some(0) | None => "",
        Some(i) => &init_resolved[..i],
    };
    format!("{dir}/prepare-root")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_root_sits_beside_the_resolved_init() {
        assert_eq!(
            prepare_root_path("/nix/store/abc-nixos-system-x/init"),
            "/nix/store/abc-nixos-system-x/prepare-root"
        );
        assert_eq!(prepare_root_path("/init"), "/prepare-root");
        assert_eq!(prepare_root_path("init"), "/prepare-root");
    }
}
