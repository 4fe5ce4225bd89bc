//! The closure flavours: what kind of system the next init belongs to, told from what the
//! closure holds once the new root is mounted ([`detect`] gathers the facts, [`decide`]
//! decides, pure), and so what is done before exec'ing it (`super::prepare`).
//!
//! Every 26.05 toplevel's boot.json carries `org.nixos.nixos-init.v1`, whatever its
//! initrd, so the extension alone says nothing. In order:
//! - (b) a usable `prepare-root` beside `init`: NixOS built with the systemd initrd, whose
//!   initrd runs it whenever it is `-x`, whatever `init` is;
//! - (a) `init` is a `#!` script: NixOS's stage-2 script (scripted initrd);
//! - (c) neither, boot.json has `org.nixos.nixos-init.v1` and the toplevel has
//!   `nixos-version` (nixos-init's `verify_init_is_nixos`): `system.nixos-init.enable`,
//!   prepared as nixos-init's `initrd-init` would (`super::nixos_init`);
//! - else a plain init, exec'd as is.

use super::resolve::Unusable;
use super::resolve::{exists_in_root, open_in_root, open_root, read_in_root, resolve_in_root};
use crate::failure::Failure;
use crate::log::errno;
use nixboot_protocol::bootspec::{BootJson, BootspecError, NixosInitV1};
use rustix::fd::OwnedFd;
use rustix::io::Errno;

/// The detection's phase name; boot.json's reading fails under its own.
pub const STEP_FLAVOUR: &str = "flavour";
pub const STEP_BOOT_JSON: &str = "boot-json";

/// What kind of closure `init=` belongs to, with what its preparation needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Flavour {
    /// (a) NixOS's scripted stage 2: exec'd as is. `init` is resolved in the new root.
    Stage2Script { init: String },
    /// (b) `init` is systemd, and `prepare` (the stage-2 script run with
    /// `IN_NIXOS_SYSTEMD_STAGE1=true`) is run before it.
    SystemdPrepareRoot { prepare: String },
    /// (c) nixos-init: the toplevel and its boot.json extension.
    NixosInit {
        toplevel: String,
        ext: Box<NixosInitV1>,
    },
    /// None of the three: exec'd as is; `note` says why, for the log.
    Plain { note: String },
}

impl Flavour {
    /// The flavour, for its one log line.
    pub fn describe(&self) -> &'static str {
        match self {
            Flavour::Stage2Script { .. } => "(a) init is the stage-2 script",
            Flavour::SystemdPrepareRoot { .. } => "(b) init is systemd with prepare-root beside it",
            Flavour::NixosInit { .. } => "(c) nixos-init: boot.json has org.nixos.nixos-init.v1",
            Flavour::Plain { .. } => "no NixOS preparation recognised",
        }
    }
}

/// A `prepare-root` beside the next init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrepareRoot {
    Absent,
    Usable,
    /// There but not runnable: NixOS's initrd tests `[ -x prepare-root ]` and skips it.
    Unusable(Unusable),
}

/// What the closure holds, as far as the flavour goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    /// `init=` resolved in the new root.
    pub init: String,
    pub init_is_script: bool,
    pub prepare_root: PrepareRoot,
    /// boot.json's nixos-init extension (read only when neither (a) nor (b)).
    pub nixos_init: Option<NixosInitV1>,
    pub has_nixos_version: bool,
}

/// The flavour, from what the closure holds (pure).
pub fn decide(f: Facts) -> Flavour {
    let prepare = prepare_root_path(&f.init);
    let toplevel = toplevel(&f.init);
    match (f.prepare_root, f.init_is_script, f.nixos_init) {
        (PrepareRoot::Usable, _, _) => Flavour::SystemdPrepareRoot { prepare },
        (PrepareRoot::Unusable(e), _, _) => Flavour::Plain {
            note: format!(
                "WARNING: {prepare} is not usable ({e}); not running it (as NixOS's initrd \
                 would not), exec'ing {} as is",
                f.init
            ),
        },
        (PrepareRoot::Absent, true, _) => Flavour::Stage2Script { init: f.init },
        (PrepareRoot::Absent, false, Some(ext)) if f.has_nixos_version => Flavour::NixosInit {
            toplevel,
            ext: Box::new(ext),
        },
        (PrepareRoot::Absent, false, Some(_)) => Flavour::Plain {
            note: format!(
                "{toplevel} has no nixos-version: not a NixOS toplevel, not initialised \
                 (as nixos-init), exec'ing {} as is",
                f.init
            ),
        },
        (PrepareRoot::Absent, false, None) => Flavour::Plain {
            note: format!("no prepare-root beside {}: an init exec'd as is", f.init),
        },
    }
}

/// Reads what the closure of `init` holds (symlinks resolved in the new root) and decides;
/// `Ok` is the flavour and its log line.
pub fn detect(
    step: &'static str,
    new_root: &str,
    init: &str,
) -> Result<(Flavour, String), Failure> {
    let resolved = resolve_in_root(new_root, init).map_err(|e| {
        Failure::new(
            step,
            format!("cannot resolve {init} in the new root: {}", errno(e)),
        )
    })?;
    let root = open_root(step, new_root)?;
    let prepare_root = match open_in_root(&root, &prepare_root_path(&resolved)) {
        Ok(_) => PrepareRoot::Usable,
        Err(Unusable::Sys(Errno::NOENT)) => PrepareRoot::Absent,
        Err(e) => PrepareRoot::Unusable(e),
    };
    let init_is_script = open_in_root(&root, &resolved).is_ok_and(|h| h.starts_with(b"#!"));
    let dir = toplevel(&resolved);
    let mut facts = Facts {
        init: resolved,
        init_is_script,
        prepare_root,
        nixos_init: None,
        has_nixos_version: false,
    };
    if prepare_root == PrepareRoot::Absent && !init_is_script {
        let inside = |name: &str| format!("{}/{name}", dir.trim_end_matches('/'));
        facts.nixos_init = read_extension(&root, &inside("boot.json"))?;
        facts.has_nixos_version = exists_in_root(&root, &inside("nixos-version"));
    }
    let flavour = decide(facts);
    let line = format!("{dir}: {}", flavour.describe());
    Ok((flavour, line))
}

/// boot.json's nixos-init extension; `None` without boot.json or without the extension.
fn read_extension(root: &OwnedFd, path: &str) -> Result<Option<NixosInitV1>, Failure> {
    let check = "the closure's boot.json (nixos/modules/system/activation/bootspec.nix \
                 writes it; nixos-init.nix its org.nixos.nixos-init.v1)";
    let bytes = match read_in_root(root, path) {
        Ok(b) => b,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => {
            return Err(
                Failure::new(STEP_BOOT_JSON, format!("cannot read {path}: {}", errno(e)))
                    .check(check),
            )
        }
    };
    let bad = |e: BootspecError| {
        Failure::new(STEP_BOOT_JSON, format!("{path}: {e}"))
            .tried(format!("parse {path} ({} bytes) as bootspec", bytes.len()))
            .check(check)
    };
    BootJson::parse(&bytes)
        .and_then(|d| d.nixos_init())
        .map_err(bad)
}

/// The closure of an `init` (a path in the new root, symlinks resolved): NixOS's systemd
/// initrd takes `dirname(realpath(init=))`.
pub fn toplevel(init_resolved: &str) -> String {
    match init_resolved.rfind('/') {
        Some(0) | None => "/".to_string(),
        Some(i) => init_resolved[..i].to_string(),
    }
}

/// Where the closure's `prepare-root` would be.
pub fn prepare_root_path(init_resolved: &str) -> String {
    format!(
        "{}/prepare-root",
        toplevel(init_resolved).trim_end_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const INIT: &str = "/nix/store/abc-nixos-system-x/init";

    fn ext() -> NixosInitV1 {
        let doc = r#"{"org.nixos.bootspec.v1":{"init":"/x"},
            "org.nixos.nixos-init.v1":{"nix_store_mount_opts":["ro"]}}"#;
        BootJson::parse(doc.as_bytes())
            .unwrap()
            .nixos_init()
            .unwrap()
            .unwrap()
    }

    fn facts(script: bool, prepare: PrepareRoot, ext_: bool, version: bool) -> Facts {
        Facts {
            init: INIT.into(),
            init_is_script: script,
            prepare_root: prepare,
            nixos_init: ext_.then(ext),
            has_nixos_version: version,
        }
    }

    fn name(f: &Flavour) -> &'static str {
        &f.describe()[..3]
    }

    #[test]
    fn flavours_from_what_the_closure_holds() {
        use PrepareRoot::{Absent, Usable};
        // Every 26.05 toplevel has the extension: it never decides against (a) or (b).
        assert_eq!(name(&decide(facts(true, Absent, true, true))), "(a)");
        assert_eq!(name(&decide(facts(false, Usable, true, true))), "(b)");
        // NixOS's systemd initrd runs an executable prepare-root whatever init is.
        assert_eq!(name(&decide(facts(true, Usable, false, false))), "(b)");
        assert_eq!(
            decide(facts(false, Absent, true, true)),
            Flavour::NixosInit {
                toplevel: "/nix/store/abc-nixos-system-x".into(),
                ext: Box::new(ext())
            }
        );
        // nixos-init's verify_init_is_nixos: no nixos-version, no initialisation.
        let f = decide(facts(false, Absent, true, false));
        assert_eq!(name(&f), "no ");
        assert!(format!("{f:?}").contains("has no nixos-version"), "{f:?}");
        let f = decide(facts(false, Absent, false, true));
        assert!(format!("{f:?}").contains("no prepare-root beside"), "{f:?}");
    }

    #[test]
    fn an_unusable_prepare_root_is_warned_about_and_skipped() {
        let p = PrepareRoot::Unusable(Unusable::NotExecutable(0o644));
        match decide(facts(false, p, true, true)) {
            Flavour::Plain { note } => {
                assert!(note.starts_with("WARNING:"), "{note}");
                assert!(note.contains("not executable (mode 0644)"), "{note}");
            }
            f => panic!("{f:?}"),
        }
    }

    #[test]
    fn prepare_root_sits_beside_the_resolved_init() {
        assert_eq!(
            prepare_root_path(INIT),
            "/nix/store/abc-nixos-system-x/prepare-root"
        );
        assert_eq!(prepare_root_path("/init"), "/prepare-root");
        assert_eq!(prepare_root_path("init"), "/prepare-root");
        assert_eq!(toplevel("/init"), "/");
    }
}
