//! The nixos-init flavour (c): `init` is a program (the probe stands in for systemd), no
//! prepare-root beside it, boot.json carries `org.nixos.nixos-init.v1`, the toplevel has
//! `nixos-version`. The init prepares the root as nixos-init's initrd-init would, or fails at
//! the step whose input is bad, before touching the root.
//!
//! Guest kernels: every (tests/run.sh boots it again on 6.12).

mod common;

use common::{
    assert_booted, assert_failed, kit, step_lines, timed_steps, Action, Boot, Kit, VIRTIOFS_MODULES,
};
use qemu_tests::artifacts::fake_store_name;
use std::path::{Path, PathBuf};

/// What the /etc overlay needs besides virtiofs (modules in Debian's kernels).
const ETC_MODULES: &[&str] = &["loop", "erofs", "overlay"];

/// Paths the probe is asked to lstat.
const STATS: &[&str] = &[
    "stat:/run/current-system",
    "stat:/bin/sh",
    "stat:/usr/bin",
    "stat:/usr/bin/env",
    "stat:/dev/fd",
    "stat:/dev/stderr",
    "stat:/etc/hello",
    "stat:/run/nixos-etc-metadata",
    "stat:/run/keys",
];

struct System {
    store: PathBuf,
    dir: PathBuf,
    /// Guest path of the toplevel.
    toplevel: String,
}

/// A toplevel whose init is the probe, with nixos-version and the boot.json `boot_json`
/// returns for its guest path.
fn system(kit: &Kit, boot_json: impl FnOnce(&str) -> String) -> System {
    let store = kit.path("store");
    let name = fake_store_name(&kit.test, "nixos-system-nixos-init");
    let dir = store.join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&kit.bins.probe, dir.join("init")).unwrap();
    std::fs::write(dir.join("nixos-version"), "26.05").unwrap();
    let toplevel = format!("/nix/store/{name}");
    std::fs::write(dir.join("boot.json"), boot_json(&toplevel)).unwrap();
    System {
        store,
        dir,
        toplevel,
    }
}

/// boot.json with the extension's fields `ext` (a JSON object's inside).
fn boot_json(toplevel: &str, ext: &str) -> String {
    format!(
        r#"{{"org.nixos.bootspec.v1": {{"init": "{toplevel}/init", "kernelParams": [],
             "label": "NixOS 26.05", "system": "x86_64-linux", "toplevel": "{toplevel}"}},
           "org.nixos.nixos-init.v1": {{{ext}}}}}"#
    )
}

const BASIC_EXT: &str = r#""firmware": "/nix/store/f-firmware/lib/firmware",
    "modprobe_binary": "/nix/store/k-kmod/bin/modprobe",
    "nix_store_mount_opts": ["ro", "nosuid", "nodev"],
    "sh_binary": "/nix/store/b-bash/bin/sh", "env_binary": "",
    "special_filesystems": [
        {"mountpoint": "/proc", "device": "proc", "fstype": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"mountpoint": "/run/keys", "device": "ramfs", "fstype": "ramfs", "options": ["nosuid", "nodev", "mode=750"]}],
    "future_knob": 1"#;

/// A store path holding an erofs image of a small /etc, and an etc basedir beside it.
fn etc_paths(kit: &Kit, store: &Path, image_bytes: Option<&[u8]>) -> (String, String) {
    let image = fake_store_name(&kit.test, "etc-metadata.erofs");
    let basedir = fake_store_name(&kit.test, "etc");
    std::fs::create_dir_all(store.join(&basedir)).unwrap();
    std::fs::write(store.join(&basedir).join("data-only"), "basedir\n").unwrap();
    match image_bytes {
        Some(b) => std::fs::write(store.join(&image), b).unwrap(),
        None => {
            let tree = kit.path("etc-tree");
            std::fs::create_dir_all(&tree).unwrap();
            std::fs::write(tree.join("hello"), "from the erofs image\n").unwrap();
            let st = std::process::Command::new("mkfs.erofs")
                .arg(store.join(&image))
                .arg(&tree)
                .output()
                .expect("mkfs.erofs (apt-get install erofs-utils)");
            assert!(st.status.success(), "{st:?}");
        }
    }
    (
        format!("/nix/store/{image}"),
        format!("/nix/store/{basedir}"),
    )
}

fn boot(kit: &Kit, s: &System, modules: &[&str]) -> nixboot_launcher::Outcome {
    let initrd = kit.initrd(None, modules);
    let initrd = kit.write_initrd("initrd", &initrd.bytes);
    common::boot(
        kit,
        &initrd,
        Boot::params(&[&format!("init={}/init", s.toplevel)])
            .share("store", &s.store, true)
            .modules_share(&kit.env)
            .args(STATS),
    )
}

/// `major.minor` of the test kernel, from its modules directory's name.
fn kernel(kit: &Kit) -> (u32, u32) {
    let release = kit.env.modules.file_name().unwrap().to_str().unwrap();
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let mut n = || it.next().unwrap().parse().unwrap();
    (n(), n())
}

fn any_line(o: &nixboot_launcher::Outcome, step: &str, text: &str) -> bool {
    step_lines(o, step).iter().any(|l| l.contains(text))
}

#[test]
fn nixos_init_closure_is_prepared_before_systemd() {
    let Some(kit) = kit("nixos_init_closure_is_prepared_before_systemd") else {
        return;
    };
    let s = system(&kit, |t| boot_json(t, BASIC_EXT));
    let o = boot(&kit, &s, VIRTIOFS_MODULES);
    let p = assert_booted(&o);
    let ctx = common::context(&o);
    assert!(any_line(&o, "flavour", "(c) nixos-init"), "{ctx}");
    // Told once, then prepared in a phase of its own, timed apart from prepare-root.
    assert_eq!(step_lines(&o, "flavour").len(), 1, "{ctx}");
    let timed = timed_steps(&p);
    assert!(timed.iter().any(|t| t == "nixos-init"), "{timed:?}");
    assert!(!timed.iter().any(|t| t == "prepare-root"), "{timed:?}");
    assert!(any_line(&o, "dev-links", "fd -> /proc/self/fd"), "{ctx}");
    assert_eq!(p.booted_system.as_deref(), Some(s.toplevel.as_str()), "{p}");
    let kind = |path: &str| {
        p.stats
            .get(path)
            .map(|st| st.kind.clone())
            .unwrap_or_default()
    };
    let link = |path: &str, target: &str| {
        assert_eq!(kind(path), "symlink", "{path}: {p}");
        assert_eq!(p.stats[path].target.as_deref(), Some(target), "{path}: {p}");
    };
    link("/run/current-system", &s.toplevel);
    link("/bin/sh", "/nix/store/b-bash/bin/sh");
    link("/dev/fd", "/proc/self/fd");
    link("/dev/stderr", "/proc/self/fd/2");
    // env_binary "": no /usr/bin/env, but /usr/bin kept (systemd refuses an empty /usr).
    assert_eq!(kind("/usr/bin"), "dir", "{p}");
    assert_eq!(kind("/usr/bin/env"), "missing", "{p}");
    // The store share lacked nosuid,nodev: bind + remount added them; still read-only.
    assert!(
        any_line(&o, "nixos-init-store", "remounted with nosuid,nodev"),
        "{ctx}"
    );
    assert_eq!(p.store_readonly, Some(true), "{p}");
    // Owner/mode: on a read-only share, left as it is, as nixos-init ignores it.
    assert!(
        any_line(&o, "nixos-init-store", "/sysroot/nix/store"),
        "{ctx}"
    );
    assert!(
        any_line(
            &o,
            "nixos-init-kernel",
            "/proc/sys/kernel/modprobe = /nix/store/k-kmod"
        ),
        "{ctx}"
    );
    assert!(
        any_line(&o, "boot-json", "future_knob is not known"),
        "{ctx}"
    );
    assert!(any_line(&o, "boot-json", "no etc_metadata_image"), "{ctx}");
    let _ = &s.dir;
}

#[test]
fn nixos_init_mounts_etc_or_refuses_an_old_kernel() {
    let Some(kit) = kit("nixos_init_mounts_etc_or_refuses_an_old_kernel") else {
        return;
    };
    let store = kit.path("store");
    let (image, basedir) = etc_paths(&kit, &store, None);
    let ext =
        format!(r#"{BASIC_EXT}, "etc_metadata_image": "{image}", "etc_basedir": "{basedir}""#);
    let s = system(&kit, |t| boot_json(t, &ext));
    let modules: Vec<&str> = VIRTIOFS_MODULES
        .iter()
        .chain(ETC_MODULES)
        .copied()
        .collect();
    let o = boot(&kit, &s, &modules);
    let ctx = common::context(&o);
    // Inputs are checked first, whatever the kernel.
    assert!(any_line(&o, "etc-image", "is an erofs image"), "{ctx}");
    assert!(any_line(&o, "etc-basedir", "is a directory"), "{ctx}");
    if kernel(&kit) < (6, 5) {
        // No data-only layers before 6.5; NixOS asserts >= 6.6 and has no fallback.
        assert_failed(&o, "etc-overlay", "needs Linux 6.5", Action::PowerOff);
        assert!(
            step_lines(&o, "nixos-init-links").is_empty(),
            "touched{ctx}"
        );
        return;
    }
    let p = assert_booted(&o);
    let hello = p.stats.get("/etc/hello").cloned().unwrap_or_default();
    assert_eq!((hello.kind.as_str(), hello.size), ("file", Some(21)), "{p}");
    let meta = p
        .stats
        .get("/run/nixos-etc-metadata")
        .cloned()
        .unwrap_or_default();
    assert_eq!(meta.kind, "dir", "{p}");
}

#[test]
fn boot_json_not_json_fails_at_its_step() {
    let Some(kit) = kit("boot_json_not_json_fails_at_its_step") else {
        return;
    };
    let s = system(&kit, |_| "{\"org.nixos.bootspec.v1\": {".to_string());
    let o = boot(&kit, &s, VIRTIOFS_MODULES);
    assert_failed(&o, "boot-json", "not JSON", Action::PowerOff);
}

#[test]
fn wrong_typed_field_fails_at_its_step() {
    let Some(kit) = kit("wrong_typed_field_fails_at_its_step") else {
        return;
    };
    let s = system(&kit, |t| {
        boot_json(t, r#""nix_store_mount_opts": "ro,nosuid""#)
    });
    let o = boot(&kit, &s, VIRTIOFS_MODULES);
    assert_failed(
        &o,
        "boot-json",
        "org.nixos.nixos-init.v1.nix_store_mount_opts: invalid type",
        Action::PowerOff,
    );
}

#[test]
fn etc_image_not_erofs_fails_at_its_step() {
    let Some(kit) = kit("etc_image_not_erofs_fails_at_its_step") else {
        return;
    };
    let store = kit.path("store");
    let (image, basedir) = etc_paths(&kit, &store, Some(&[0x55; 8192]));
    let ext =
        format!(r#"{BASIC_EXT}, "etc_metadata_image": "{image}", "etc_basedir": "{basedir}""#);
    let s = system(&kit, |t| boot_json(t, &ext));
    let o = boot(&kit, &s, VIRTIOFS_MODULES);
    assert_failed(&o, "etc-image", "is not an erofs image", Action::PowerOff);
    let ctx = common::context(&o);
    assert!(
        step_lines(&o, "nixos-init-links").is_empty(),
        "touched{ctx}"
    );
}

/// Stage 1's /dev links, for the scripted flavour (a): stage-2-init.sh logs through process
/// substitution, which bash opens as /dev/fd/N. The real bash (Debian's bash-static) reads
/// from `<(...)`; without /dev/fd it prints `/dev/fd/63: No such file or directory`.
#[test]
fn stage2_script_process_substitution_works() {
    let Some(kit) = kit("stage2_script_process_substitution_works") else {
        return;
    };
    let store = kit.path("store");
    let tools = fake_store_name(&kit.test, "tools");
    std::fs::create_dir_all(store.join(&tools)).unwrap();
    std::fs::copy("/bin/bash-static", store.join(&tools).join("bash"))
        .expect("bash-static (apt-get install bash-static)");
    std::fs::copy(kit.busybox(), store.join(&tools).join("busybox")).unwrap();
    let name = fake_store_name(&kit.test, "nixos-system-scripted");
    let dir = store.join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&kit.bins.probe, dir.join("systemd")).unwrap();
    let (t, config) = (format!("/nix/store/{tools}"), format!("/nix/store/{name}"));
    let script = format!(
        "#!{t}/bash\n{t}/busybox mkdir -p /run/nixboot-test\n\
         if read -r line < <(echo via-dev-fd); then r=$line; else r=failed; fi\n\
         echo \"procsub=$r\" > /run/nixboot-test/stage-2\n\
         exec {config}/systemd \"$@\"\n"
    );
    std::fs::write(dir.join("init"), script).unwrap();
    common::chmod(&dir.join("init"), 0o755);
    let s = System {
        store,
        dir,
        toplevel: config,
    };
    let o = boot(&kit, &s, VIRTIOFS_MODULES);
    let p = assert_booted(&o);
    assert_eq!(
        p.test_files.get("stage-2").map(String::as_str),
        Some("procsub=via-dev-fd\n"),
        "{p}"
    );
    let ctx = common::context(&o);
    assert!(
        any_line(&o, "flavour", "(a) init is the stage-2 script"),
        "{ctx}"
    );
    // The /dev links are stage 1's for every flavour, not the nixos-init preparation's.
    assert!(step_lines(&o, "nixos-init").is_empty(), "{ctx}");
    assert!(
        any_line(&o, "dev-links", "stderr -> /proc/self/fd/2"),
        "{ctx}"
    );
}
