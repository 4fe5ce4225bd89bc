//! Real stage 2: a NixOS-shaped closure made of parts no one here wrote (Debian 12's
//! systemd 252 as store paths, a stage-2 script modelled on nixpkgs' stage-2-init.sh run by
//! Debian's static bash; see `qemu_tests::nixos_closure`), booted imageless (tmpfs root, the
//! store and the modules over virtiofs, an initrd from mkinitrd) in each closure flavour to
//! multi-user.target. A report unit prints what systemd's system looks like, then powers off.
//!
//! The contract asserted for every flavour: systemd is PID 1, no failed unit (the system is
//! "running"), journald is active, / is tmpfs, /nix/store is virtiofs with ro,nosuid,nodev,
//! /run/booted-system points at the closure; stage 2's own log line reaches the kernel log
//! (scripted: through its process substitution, which needs /dev/fd from stage 1;
//! prepare-root: its output as the systemd initrd's journal would forward it); nixos-init:
//! /etc is the overlay of the erofs metadata image and /run/current-system is linked.
//!
//! Needs `.ci/setup-real-parts` (NIXBOOT_DEBIAN_ROOT, patchelf, mkfs.erofs, bash-static).
//! Runs on whichever kernel NIXBOOT_KERNEL/NIXBOOT_MODULES name (Debian's 6.1 or 6.12;
//! `NIXBOOT_KERNEL=$NIXBOOT_KERNEL_612 NIXBOOT_MODULES=$NIXBOOT_MODULES_612` for the latter).
//! The nixos-init tests need overlayfs data-only layers (Linux 6.5+): on 6.1 they say SKIP.
//! The store is shared with virtiofsd `--cache=always` (it is built once, never changed under
//! a guest): with `--cache=never` a boot to multi-user took several times longer under TCG.
//!
//! Guest kernels: every (tests/run.sh boots it again on 6.12).

mod common;

use common::{context, kit, Kit};
use nixboot_launcher::bootspec::{self, KernelCmdline};
use nixboot_launcher::qemu::{self, Outcome};
use nixboot_launcher::Share;
use qemu_tests::artifacts;
use qemu_tests::nixos_closure::{self, Flavour, NixosStore, RealParts, Report};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// Under TCG a boot to multi-user takes 26-48 s on an idle machine, minutes on 2 cores
/// shared with other builds and boots. Bounded all the same: a hang must fail the test.
const TIMEOUT: Duration = Duration::from_secs(300);
/// What the virtiofs store needs (mkinitrd adds dependencies, skips built-ins).
const STORE_MODULES: &[&str] = &["virtio_pci", "virtiofs"];
/// What nixos-init's /etc needs besides (boot.initrd.availableKernelModules of the etc
/// overlay, nixos/modules/system/etc/etc-activation.nix).
const ETC_OVERLAY_MODULES: &[&str] = &["loop", "erofs", "overlay"];

fn cache_dir() -> PathBuf {
    std::env::var_os("NIXBOOT_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/nixboot")))
        .unwrap_or_else(|| std::env::temp_dir().join("nixboot-cache"))
}

/// The store, built once per test process (and cached across processes by content).
fn nixos_store(test: &str) -> Option<&'static NixosStore> {
    static CELL: OnceLock<Result<NixosStore, String>> = OnceLock::new();
    let built = CELL.get_or_init(|| {
        let parts = RealParts::from_env()?;
        nixos_closure::build(&parts, &cache_dir())
    });
    match built {
        Ok(s) => Some(s),
        // A missing real part is a missing prerequisite (loud SKIP, or a failure in CI); a
        // build error is a failure.
        Err(e)
            if e.contains("not set") || e.contains("not installed") || e.contains("is missing") =>
        {
            if std::env::var(artifacts::REQUIRE_ENV).is_ok_and(|v| v == "1") {
                panic!("{test}: {e} (and {}=1)", artifacts::REQUIRE_ENV);
            }
            artifacts::skip(test, e);
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

/// `6.12.117+deb13-cloud-amd64` -> (6, 12).
fn kernel_version(kit: &Kit) -> (u32, u32) {
    let name = kit
        .env
        .modules
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    let mut it = name.split(['.', '-', '+']).map(|p| p.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

fn boot(kit: &Kit, store: &NixosStore, f: Flavour, init: String) -> Outcome {
    let mut modules = STORE_MODULES.to_vec();
    if f == Flavour::NixosInit {
        modules.extend(ETC_OVERLAY_MODULES);
    }
    let initrd = kit.initrd(None, &modules);
    let initrd = kit.write_initrd("initrd", &initrd.bytes);
    let cmdline = KernelCmdline {
        init: Some(init),
        // systemd's animated status lines cost much on a TCG serial console; failures still show.
        // PID 1's own log on the console (it goes to the journal alone once journald runs):
        // a stuck boot must be readable from the test's output.
        // multi-user.target by name: Debian's default.target is graphical.target, and an
        // alias reached through /etc/static links is loaded under its own name.
        kernel_params: vec![
            "systemd.show_status=error".into(),
            "systemd.log_target=kmsg".into(),
            "systemd.unit=multi-user.target".into(),
        ],
        ..Default::default()
    }
    .render();
    let mut cfg = kit.env.vm(&initrd, cmdline);
    cfg.timeout = Some(TIMEOUT);
    cfg.quiet = true;
    cfg.shares
        .push(Share::new("store", &store.dir).unwrap().immutable());
    let modules_dir = bootspec::modules_share_dir(&kit.env.modules).unwrap();
    cfg.shares
        .push(Share::new("modules", modules_dir).unwrap().readonly());
    let o = qemu::run(&cfg).expect("launcher");
    if std::env::var_os("NIXBOOT_TEST_CONSOLE").is_some() {
        eprintln!("--- {} console ---\n{}", kit.test, o.console);
    }
    o
}

/// Boots one flavour (through `init`, the closure's own by default) and checks the whole
/// contract, listing every broken clause at once.
fn check_flavour(test: &str, f: Flavour, init: Option<String>) {
    let Some(kit) = kit(test) else { return };
    let Some(store) = nixos_store(test) else {
        return;
    };
    if f == Flavour::NixosInit && kernel_version(&kit) < (6, 5) {
        // nixos-init's /etc is `lowerdir=METADATA::BASEDIR`: data-only lower layers came in
        // Linux 6.5. Not a missing prerequisite of the host: this kernel cannot do it.
        artifacts::skip(
            test,
            &format!(
                "kernel {} has no overlayfs data-only layers (Linux 6.5+); run with NIXBOOT_KERNEL/NIXBOOT_MODULES = the 6.12 ones",
                kit.env.modules.display()
            ),
        );
        return;
    }
    let toplevel = store.toplevel(f);
    let init = init.unwrap_or_else(|| store.init(f));
    let o = boot(&kit, store, f, init);
    let ctx = context(&o);
    let report = Report::find(&o.console);
    eprintln!(
        "{test}: kernel {}; accel {}; QEMU ran {:?}; uptime at multi-user {}s (report {}s); systemd {:?}",
        kit.env
            .modules
            .file_name()
            .unwrap_or_default()
            .to_string_lossy(),
        o.accel.accel,
        o.elapsed,
        report.as_ref().map_or("-", |r| r.get("multi_user_uptime")),
        report.as_ref().map_or("-", |r| r.get("uptime")),
        report.as_ref().map_or("-", |r| r.get("systemd")),
    );
    assert!(!o.timed_out, "timed out after {TIMEOUT:?}{ctx}");
    assert!(!o.panicked, "kernel panic{ctx}");
    let r =
        report.unwrap_or_else(|| panic!("no `{}` report line{ctx}", nixos_closure::REPORT_MARKER));
    eprintln!("{test}: report {:?}", r.fields);

    let mut broken = contract(&r, &toplevel, f);
    if console_has(&o, "/dev/fd/63: No such file or directory") {
        broken.push(
            "stage 2 printed `/dev/fd/63: No such file or directory` (no /dev/fd from stage 1)"
                .into(),
        );
    }
    if !o.powered_off || !o.qemu_clean_exit() {
        broken.push(format!(
            "did not power off cleanly (QEMU exit {})",
            o.qemu_exit
        ));
    }
    assert!(
        broken.is_empty(),
        "{test}: the contract is broken:\n  - {}\nreport: {:?}{ctx}",
        broken.join("\n  - "),
        r.fields
    );
}

/// Every clause of the hand-off contract the report shows broken.
fn contract(r: &Report, toplevel: &str, f: Flavour) -> Vec<String> {
    let mut broken = Vec::new();
    let mut want = |ok: bool, what: &str, key: &str| {
        if !ok {
            broken.push(format!("{what} ({key}={})", r.get(key)));
        }
    };
    want(
        r.get("pid1_comm") == "systemd",
        "systemd is PID 1",
        "pid1_comm",
    );
    want(
        r.get("state") == "running",
        "the system is running",
        "state",
    );
    want(r.get("failed") == "-", "no failed unit", "failed");
    want(
        r.get("journald") == "active",
        "journald is active",
        "journald",
    );
    want(r.get("root_fstype") == "tmpfs", "/ is tmpfs", "root_fstype");
    want(
        r.get("store_fstype") == "virtiofs",
        "/nix/store is virtiofs",
        "store_fstype",
    );
    let opts: Vec<&str> = r.get("store_options").split(',').collect();
    want(
        ["ro", "nosuid", "nodev"].iter().all(|o| opts.contains(o)),
        "/nix/store is ro,nosuid,nodev",
        "store_options",
    );
    want(
        r.get("booted_system") == toplevel,
        "/run/booted-system is the closure",
        "booted_system",
    );
    want(
        r.get("current_system") == toplevel,
        "/run/current-system is the closure",
        "current_system",
    );
    let count = |key: &str| r.get(key).parse::<u32>().unwrap_or(0);
    match f {
        Flavour::Scripted => want(
            count("kmsg_stage2_log") > 0,
            "stage 2's own log line (`stage-2-init: running activation script...`) is in the kernel log",
            "kmsg_stage2_log",
        ),
        Flavour::PrepareRoot => want(
            count("kmsg_activation") > 0,
            "prepare-root's own log line (`running activation script...`) is in the kernel log",
            "kmsg_activation",
        ),
        Flavour::NixosInit => want(r.get("etc_fstype") == "overlay", "/etc is the etc overlay", "etc_fstype"),
    }
    broken
}

fn console_has(o: &Outcome, text: &str) -> bool {
    o.console.contains(text)
}

#[test]
fn scripted_closure_boots_real_systemd_to_multi_user() {
    check_flavour(
        "scripted_closure_boots_real_systemd_to_multi_user",
        Flavour::Scripted,
        None,
    );
}

#[test]
fn prepare_root_closure_boots_real_systemd_to_multi_user() {
    check_flavour(
        "prepare_root_closure_boots_real_systemd_to_multi_user",
        Flavour::PrepareRoot,
        None,
    );
}

#[test]
fn nixos_init_closure_boots_real_systemd_to_multi_user() {
    check_flavour(
        "nixos_init_closure_boots_real_systemd_to_multi_user",
        Flavour::NixosInit,
        None,
    );
}

/// The nixos-init closure itself is bootable: a script doing initrd-init's steps (the etc
/// overlay of the erofs image, the /run links, the store's options) runs after stage 1 and
/// execs its systemd. Tells a broken closure from an init that does not handle it.
#[test]
fn nixos_init_closure_boots_through_a_stand_in_for_initrd_init() {
    let test = "nixos_init_closure_boots_through_a_stand_in_for_initrd_init";
    let Some(store) = nixos_store(test) else {
        return;
    };
    check_flavour(test, Flavour::NixosInit, Some(store.stand_in_init()));
}
