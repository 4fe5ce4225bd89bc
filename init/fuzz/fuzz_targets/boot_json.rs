//! Any boot.json: parsing never panics; an org.nixos.nixos-init.v1 that parses decides the
//! nixos-init flavour (with nixos-version) and plans a preparation that checks every input
//! before it changes the root.
#![no_main]

use init::nixos::flavour::{decide, Facts, Flavour, PrepareRoot};
use init::nixos::nixos_init::{plan, Action};
use libfuzzer_sys::fuzz_target;
use nixboot_protocol::bootspec::BootJson;

const INIT: &str = "/nix/store/abc-nixos-system-x/init";

fuzz_target!(|data: &[u8]| {
    let Ok(Some(ext)) = BootJson::parse(data).and_then(|d| d.nixos_init()) else {
        return;
    };
    let facts = Facts {
        init: INIT.into(),
        init_is_script: false,
        prepare_root: PrepareRoot::Absent,
        nixos_init: Some(ext.clone()),
        has_nixos_version: true,
    };
    assert!(matches!(decide(facts), Flavour::NixosInit { .. }));
    let Ok(actions) = plan("/sysroot", "/nix/store/abc-nixos-system-x", &ext, "6.12.0") else {
        return;
    };
    let is_check = |a: &Action| {
        matches!(
            a,
            Action::Warn(_)
                | Action::CheckErofs { .. }
                | Action::CheckDir { .. }
                | Action::RequireKernel { .. }
        )
    };
    let first_change = actions.iter().position(|a| !is_check(a)).unwrap_or(actions.len());
    assert!(actions[first_change..].iter().all(|a| !is_check(a)));
});
