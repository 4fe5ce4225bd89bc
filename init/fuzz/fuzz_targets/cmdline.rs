//! Any kernel command line: the parser never panics, and whatever it returns can be planned
//! with, giving either an error for the user or a plan with the invariants below.
#![no_main]

use init::cmdline;
use init::plan::{self, Step};
use nixboot_protocol::InitrdConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // /proc/cmdline is read as lossy UTF-8 by the init, so the same here.
    let text = String::from_utf8_lossy(data);
    let opts = cmdline::parse(&text);
    let (params, _) = cmdline::tokenize(&text);
    assert!(params.len() <= text.len());

    let mut with_default = InitrdConfig::new();
    with_default.default_init = Some("/nix/store/x-system/init".into());
    let mut embedded = with_default.clone();
    embedded.embedded_store = Some("/nix/store".into());
    for config in [InitrdConfig::new(), with_default, embedded] {
        let Ok(p) = plan::build(&opts, &config) else {
            continue;
        };
        // Every plan ends by switching and writing the timings, then execs an absolute
        // path with that path as argv[0].
        let n = p.steps.len();
        assert!(n >= 2);
        assert!(matches!(p.steps[n - 2], Step::SwitchRoot { .. }));
        assert!(matches!(p.steps[n - 1], Step::WriteTimings { .. }));
        assert!(p.exec.path.starts_with('/'));
        assert_eq!(p.exec.argv.first(), Some(&p.exec.path));
        // The init is checked before anything is moved, and moved before prepare-root.
        let at = |f: fn(&Step) -> bool| p.steps.iter().position(f);
        let check = at(|s| matches!(s, Step::CheckInit { .. }));
        let moved = at(|s| matches!(s, Step::MoveSpecialMounts { .. }));
        let prepare = at(|s| matches!(s, Step::PrepareRoot { .. }));
        assert!(check < moved && moved < prepare);
        // A block mount is its wait and its mount, one step; a verity store is its image,
        // its target and its mount; every other step is one phase.
        for s in &p.steps {
            let phases = s.phases();
            let expected = match s {
                Step::MountBlock { .. } => 2,
                Step::MountVerity { .. } => 3,
                _ => 1,
            };
            assert_eq!(phases.len(), expected);
            assert_eq!(phases[0].0, s.name());
        }
        // A verity store is never mounted over by a share or an embedded copy.
        if p.steps.iter().any(|s| matches!(s, Step::MountVerity { .. })) {
            assert!(!p.steps.iter().any(|s| matches!(
                s,
                Step::CopyEmbeddedStore { .. } | Step::MountOverlay { .. }
            )));
        }
    }
});
