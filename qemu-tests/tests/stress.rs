//! N consecutive imageless boots, to catch the rare failure (a virtiofs race, a missed
//! device) a single boot does not show. Off unless asked for, since it takes minutes:
//!
//!     NIXBOOT_STRESS=50 cargo test -p qemu-tests --test stress -- --ignored --nocapture
//!
//! Each failing boot's console is kept in the target directory for a look.
//!
//! Guest kernels: 6.1 only (repetition: the boots themselves run on both kernels in imageless.rs).

mod common;

use common::{kit, Boot, VIRTIOFS_MODULES};
use nixboot_launcher::console::Status;
use std::time::Duration;

// Minutes of boots: not in every run, reported as ignored there instead of passing empty.
#[test]
#[ignore = "stress: run with `cargo test -p qemu-tests --test stress -- --ignored` (NIXBOOT_STRESS=N boots, default 50)"]
fn consecutive_imageless_boots() {
    let test = "consecutive_imageless_boots";
    let n: u32 = match std::env::var("NIXBOOT_STRESS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("NIXBOOT_STRESS={v:?} is not a number of boots")),
        Err(_) => 50,
    };
    let Some(kit) = kit(test) else { return };
    let probe = kit.probe_store("store");
    // The initrd as users get it: zstd, the default.
    let opts = mkinitrd::BuildOptions {
        output: kit.path("initrd.zst"),
        kernel_modules: Some(kit.env.modules.clone()),
        modules: VIRTIOFS_MODULES.iter().map(|m| m.to_string()).collect(),
        init: Some(kit.bins.init.clone()),
        compression: mkinitrd::Compression::Zstd,
        ..Default::default()
    };
    let image = mkinitrd::build_image(&opts, 0).expect("mkinitrd");
    let initrd = kit.write_initrd("initrd.zst", &image.bytes);

    let mut failures = Vec::new();
    let mut to_probe = Vec::new();
    let mut initrd_ms = Vec::new();
    for i in 1..=n {
        let o = common::boot(
            &kit,
            &initrd,
            Boot::params(&[&format!("init={}", probe.init)])
                .share("store", &probe.store, true)
                .modules_share(&kit.env),
        );
        let ok = !o.timed_out
            && !o.panicked
            && o.qemu_clean_exit()
            && o.powered_off
            && o.status.as_ref().is_some_and(|s| s.status() == Status::Ok)
            && common::probe(&o).is_some_and(|p| p.pid == Some(1) && p.errors.is_empty());
        if ok {
            to_probe.extend(o.kernel_to_probe());
            initrd_ms.extend(
                o.status
                    .as_ref()
                    .and_then(|s| s.get("initrd_ms"))
                    .and_then(|v| v.parse::<u64>().ok()),
            );
        } else {
            let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("stress-boot-{i}.log"));
            let _ = std::fs::write(&log, &o.console);
            let why = o.status.as_ref().map_or_else(
                || format!("no status line (timed out: {})", o.timed_out),
                |s| s.to_string(),
            );
            eprintln!(
                "{test}: boot {i}/{n} FAILED: {why}; console in {}",
                log.display()
            );
            failures.push((i, why));
        }
    }
    to_probe.sort();
    initrd_ms.sort();
    let pick = |v: &[Duration], q: usize| v.get(v.len().saturating_sub(1) * q / 100).copied();
    let pick_ms = |v: &[u64], q: usize| v.get(v.len().saturating_sub(1) * q / 100).copied();
    eprintln!(
        "{test}: {n} boots, {} failed; kernel start -> probe: min {:?} median {:?} max {:?}; \
         init's initrd_ms: min {:?} median {:?} max {:?}",
        failures.len(),
        pick(&to_probe, 0),
        pick(&to_probe, 50),
        pick(&to_probe, 100),
        pick_ms(&initrd_ms, 0),
        pick_ms(&initrd_ms, 50),
        pick_ms(&initrd_ms, 100),
    );
    assert!(
        failures.is_empty(),
        "{} of {n} boots failed: {failures:?}",
        failures.len()
    );
}
