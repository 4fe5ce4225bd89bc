//! Both shapes of a NixOS closure, as synthetic closures: `init` is the stage-2 script
//! (NixOS without the systemd initrd), or `init` is systemd with `prepare-root` beside it
//! (the systemd initrd, the default from NixOS 26.05). Busybox stands in for the scripts'
//! shell and the probe for systemd; the scripts write what they saw under
//! /run/nixboot-test, which the probe reports.
//!
//! Guest kernels: every (tests/run.sh boots it again on 6.12).

mod common;

use common::{assert_booted, kit, step_lines, timed_steps, Boot, Kit, VIRTIOFS_MODULES};
use qemu_tests::artifacts::fake_store_name;
use std::path::{Path, PathBuf};

/// A store with a busybox, and its `sh` for `#!` lines.
struct Store {
    dir: PathBuf,
    sh: String,
    bin: String,
}

fn store_with_busybox(kit: &Kit) -> Store {
    let dir = kit.path("store");
    let name = fake_store_name(&kit.test, "busybox");
    let bin = dir.join(&name).join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(kit.busybox(), bin.join("busybox")).unwrap();
    for applet in ["sh", "mkdir", "ln", "pwd"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    Store {
        dir,
        sh: format!("/nix/store/{name}/bin/sh"),
        bin: format!("/nix/store/{name}/bin"),
    }
}

fn script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    common::chmod(path, 0o755);
}

/// What both scripts record: who they are, what they were given, where they run.
fn record(sh: &str, bin: &str, file: &str) -> String {
    format!(
        r#"#!{sh}
env_seen="HOME=$HOME TERM=$TERM IN_NIXOS_SYSTEMD_STAGE1=${{IN_NIXOS_SYSTEMD_STAGE1-unset}}"
export PATH={bin}
mkdir -p /run/nixboot-test
{{
  echo "pid=$$"
  echo "env=$env_seen"
  [ -e /proc/1 ] && echo "proc=mounted"
  [ -e /sysroot ] && echo "sysroot=visible" || echo "sysroot=absent"
  echo "cwd=$(pwd)"
}} > /run/nixboot-test/{file}
"#
    )
}

fn boot(kit: &Kit, store: &Store, init: &str) -> nixboot_launcher::Outcome {
    let initrd = kit.initrd(None, VIRTIOFS_MODULES);
    let initrd = kit.write_initrd("initrd", &initrd.bytes);
    common::boot(
        kit,
        &initrd,
        Boot::params(&[&format!("init={init}")])
            .share("store", &store.dir, true)
            .modules_share(&kit.env)
            .args(&["stage2-arg"]),
    )
}

#[test]
fn scripted_closure_execs_the_stage2_script() {
    let Some(kit) = kit("scripted_closure_execs_the_stage2_script") else {
        return;
    };
    let store = store_with_busybox(&kit);
    let name = fake_store_name(&kit.test, "nixos-system-scripted");
    let system = store.dir.join(&name);
    std::fs::create_dir_all(&system).unwrap();
    let config = format!("/nix/store/{name}");
    // Like stage-2-init.sh: relies on stage 1's mounts, links /run/booted-system, execs
    // systemd (here the probe) with its own arguments.
    script(
        &system.join("init"),
        &format!(
            "{}ln -sfn {config} /run/booted-system\nexec {config}/systemd \"$@\"\n",
            record(&store.sh, &store.bin, "stage-2")
        ),
    );
    std::fs::copy(&kit.bins.probe, system.join("systemd")).unwrap();

    let o = boot(&kit, &store, &format!("{config}/init"));
    let p = assert_booted(&o);
    assert_eq!(
        p.argv,
        [format!("{config}/systemd"), "stage2-arg".to_string()],
        "{p}"
    );
    let seen = p.test_files.get("stage-2").expect("stage-2 record");
    // PID 1 itself, with exactly the environment the kernel would give an init, the
    // special filesystems already mounted (so stage-2-init.sh skips its own), in /.
    assert!(seen.contains("pid=1\n"), "{seen}");
    assert!(
        seen.contains("env=HOME=/ TERM=linux IN_NIXOS_SYSTEMD_STAGE1=unset\n"),
        "{seen}"
    );
    assert!(seen.contains("proc=mounted\n"), "{seen}");
    assert!(seen.contains("sysroot=absent\n"), "{seen}");
    assert!(seen.contains("cwd=/\n"), "{seen}");
    assert_eq!(p.booted_system.as_deref(), Some(config.as_str()), "{p}");
    assert!(!p.test_files.contains_key("prepare-root"), "{p}");
    let prepared = step_lines(&o, "prepare-root");
    assert!(
        prepared
            .iter()
            .any(|l| l.contains(&format!("no prepare-root beside {config}/init"))),
        "{prepared:?}"
    );
}

#[test]
fn systemd_closure_runs_prepare_root_then_execs_init() {
    let Some(kit) = kit("systemd_closure_runs_prepare_root_then_execs_init") else {
        return;
    };
    let store = store_with_busybox(&kit);
    let name = fake_store_name(&kit.test, "nixos-system-systemd");
    let system = store.dir.join(&name);
    std::fs::create_dir_all(&system).unwrap();
    let config = format!("/nix/store/{name}");
    // init is "systemd" (the probe); prepare-root is the stage-2 script, which under
    // IN_NIXOS_SYSTEMD_STAGE1=true activates and links /run/booted-system, then returns.
    std::fs::copy(&kit.bins.probe, system.join("init")).unwrap();
    script(
        &system.join("prepare-root"),
        &format!(
            "{}ln -sfn {config} /run/booted-system\n",
            record(&store.sh, &store.bin, "prepare-root")
        ),
    );
    // Boot through a symlink, as a profile link would be: NixOS's initrd takes the closure
    // from realpath(init=), and so must we to find prepare-root.
    let link = fake_store_name(&kit.test, "profile");
    std::os::unix::fs::symlink(&config, store.dir.join(&link)).unwrap();
    let init = format!("/nix/store/{link}/init");

    let o = boot(&kit, &store, &init);
    let p = assert_booted(&o);
    assert_eq!(p.argv, [init.as_str(), "stage2-arg"], "{p}");
    let seen = p
        .test_files
        .get("prepare-root")
        .expect("prepare-root record");
    // A child of the init, chrooted into the new root (no /sysroot there), with NixOS's
    // variable, /proc already there, /run shared with what the init hands over.
    assert!(!seen.contains("pid=1\n"), "{seen}");
    assert!(
        seen.contains("env=HOME=/ TERM=linux IN_NIXOS_SYSTEMD_STAGE1=true\n"),
        "{seen}"
    );
    assert!(seen.contains("proc=mounted\n"), "{seen}");
    assert!(seen.contains("sysroot=absent\n"), "{seen}");
    assert!(seen.contains("cwd=/\n"), "{seen}");
    assert_eq!(p.booted_system.as_deref(), Some(config.as_str()), "{p}");
    // systemd gets the plain environment, not prepare-root's variable.
    assert_eq!(p.env, ["HOME=/", "TERM=linux"], "{p}");
    let prepared = step_lines(&o, "prepare-root");
    assert!(
        prepared
            .iter()
            .any(|l| l.contains(&format!("{config}/prepare-root finished"))),
        "{prepared:?}"
    );
    assert!(timed_steps(&p).iter().any(|s| s == "prepare-root"));
}
