//! Failures a host can see: one boot per kind of failure, each asserting the step, the
//! error text, that the init said what it tried or what to check, and the action taken
//! (power off, reboot, an emergency shell), within a bound and without a kernel panic.
//! The missing virtiofs tag is in imageless.rs.
//!
//! Guest kernels: every (tests/run.sh boots it again on 6.12).

mod common;

use common::disk;
use common::{assert_failed, kit, step_lines, Action, Boot, Kit, ProbeStore};
use common::{BLOCK_MODULES, VIRTIOFS_MODULES};
use nixboot_protocol::InitrdConfig;
use std::path::PathBuf;

/// An imageless boot of `init` with the store and modules shared, plus `params`.
fn imageless(
    kit: &Kit,
    probe: &ProbeStore,
    initrd: &[u8],
    init: &str,
    params: &[&str],
) -> nixboot_launcher::Outcome {
    let initrd = kit.write_initrd("initrd", initrd);
    let mut all = vec![format!("init={init}")];
    all.extend(params.iter().map(|s| s.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    common::boot(
        kit,
        &initrd,
        Boot::params(&all)
            .share("store", &probe.store, true)
            .modules_share(&kit.env),
    )
}

#[test]
fn next_init_missing() {
    let Some(kit) = kit("next_init_missing") else {
        return;
    };
    let probe = kit.probe_store("store");
    let initrd = kit.initrd(None, VIRTIOFS_MODULES);
    let missing = probe.init.replace("probe-system", "not-there");
    let o = imageless(&kit, &probe, &initrd.bytes, &missing, &[]);
    assert_failed(
        &o,
        "check-init",
        &format!("next init {missing} is not usable in the new root: ENOENT"),
        Action::PowerOff,
    );
}

#[test]
fn next_init_not_executable_reboots() {
    let Some(kit) = kit("next_init_not_executable_reboots") else {
        return;
    };
    let probe = kit.probe_store("store");
    common::chmod(&probe.system.join("init"), 0o644);
    let initrd = kit.initrd(None, VIRTIOFS_MODULES);
    let o = imageless(
        &kit,
        &probe,
        &initrd.bytes,
        &probe.init,
        &["rd.emergency=reboot"],
    );
    assert_failed(
        &o,
        "check-init",
        "is not usable in the new root: not executable (mode 0644)",
        Action::Reboot,
    );
}

/// A dynamically linked next init whose loader is not in the new root (the host's own
/// `/bin/true`: its `/lib64/ld-linux-x86-64.so.2` is not in an imageless root): execve
/// would fail with ENOENT after the initramfs is gone, so check-init reads PT_INTERP (from
/// the page it already read) and names the loader first.
#[test]
fn next_init_without_its_loader() {
    let Some(kit) = kit("next_init_without_its_loader") else {
        return;
    };
    let probe = kit.probe_store("store");
    let init = probe.system.join("init");
    std::fs::remove_file(&init).unwrap();
    std::fs::copy("/bin/true", &init).unwrap();
    let loader = "/lib64/ld-linux-x86-64.so.2";
    let initrd = kit.initrd(None, VIRTIOFS_MODULES);
    let o = imageless(&kit, &probe, &initrd.bytes, &probe.init, &[]);
    assert_failed(
        &o,
        "check-init",
        &format!(
            "next init {} needs the loader {loader}, which is not usable: ENOENT",
            probe.init
        ),
        Action::PowerOff,
    );
}

/// A valid ELF header for another machine (aarch64): it passes the init's checks, and
/// execve refuses it, after the initramfs is gone and the ok line is out.
fn foreign_elf() -> Vec<u8> {
    let mut b = vec![0u8; 64];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2; // 64-bit
    b[5] = 1; // little-endian
    b[6] = 1; // version
    b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    b[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    b
}

#[test]
fn exec_failing_after_the_ok_line_is_reported_last() {
    let Some(kit) = kit("exec_failing_after_the_ok_line_is_reported_last") else {
        return;
    };
    let probe = kit.probe_store("store");
    std::fs::write(probe.system.join("init"), foreign_elf()).unwrap();
    let initrd = kit.initrd(None, VIRTIOFS_MODULES);
    let o = imageless(&kit, &probe, &initrd.bytes, &probe.init, &[]);
    // The last status line counts (docs/contracts-internal.md).
    assert_failed(&o, "exec", "ENOEXEC", Action::PowerOff);
    let lines: Vec<&str> = o
        .console
        .lines()
        .filter(|l| l.contains("nixboot-status:"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains("status=ok step=exec"), "{lines:?}");
    assert!(o.warnings.is_empty(), "{:?}", o.warnings);
}

/// A config whose module list was edited by `edit`, appended over mkinitrd's.
fn edited_config(kit: &Kit, edit: impl FnOnce(&mut InitrdConfig)) -> common::Initrd {
    let base = kit.initrd(None, VIRTIOFS_MODULES);
    let mut config = base.config.clone();
    edit(&mut config);
    common::Initrd {
        bytes: base.with_config(&config),
        config,
    }
}

#[test]
fn module_file_missing_starts_the_emergency_shell() {
    let Some(kit) = kit("module_file_missing_starts_the_emergency_shell") else {
        return;
    };
    if common::needs_virtiofs_modules("module_file_missing_starts_the_emergency_shell").is_none() {
        return;
    }
    let probe = kit.probe_store("store");
    let initrd = edited_config(&kit, |c| {
        let fuse = c.modules.iter_mut().find(|m| m.name == "fuse").unwrap();
        fuse.path = fuse.path.replace("fuse.ko", "fuse-gone.ko");
    });
    // What `mkinitrd --include` of a busybox gives: a shell at /bin/sh.
    let busybox = std::fs::read(kit.busybox()).unwrap();
    let bytes = initrd.append(|a| a.file("bin/sh", 0o755, busybox).unwrap());
    let initrd_path = kit.write_initrd("initrd", &bytes);
    let o = common::boot(
        &kit,
        &initrd_path,
        Boot::params(&[&format!("init={}", probe.init), "rd.emergency=shell"])
            .share("store", &probe.store, true)
            .modules_share(&kit.env)
            // The prompt the init sets for the shell; $((6*7)) shows the shell ran it.
            .reply("nixboot# ", "echo SHELL-$((6*7)); exit\n"),
    );
    assert_failed(&o, "load-module", "module fuse: cannot open", Action::Shell);
    assert!(
        o.console.contains("SHELL-42"),
        "the shell did not run{}",
        common::context(&o)
    );
    let tried = step_lines(&o, "load-module");
    assert!(
        tried.iter().any(|l| l.contains("tried: finit_module(")),
        "{tried:?}"
    );
}

#[test]
fn module_failing_to_load() {
    let Some(kit) = kit("module_failing_to_load") else {
        return;
    };
    if common::needs_virtiofs_modules("module_failing_to_load").is_none() {
        return;
    }
    let probe = kit.probe_store("store");
    // virtiofs without fuse, which it needs: the kernel refuses it (unknown symbols).
    let initrd = edited_config(&kit, |c| c.modules.retain(|m| m.name != "fuse"));
    // Under the kernel's `quiet` the failure must still say everything.
    let o = imageless(&kit, &probe, &initrd.bytes, &probe.init, &["quiet"]);
    assert_failed(
        &o,
        "load-module",
        "failed to load: ENOENT",
        Action::PowerOff,
    );
    let s = o.status.as_ref().unwrap();
    assert!(s.error().unwrap().contains("module virtiofs"), "{s}");
    let lines = step_lines(&o, "load-module");
    assert!(
        lines.iter().any(|l| l.contains("check: unknown symbol")),
        "{lines:?}"
    );
    // ... while the steps that went well are not logged (imageless.rs sees them without it).
    assert!(
        !lines.iter().any(|l| l.contains("virtio_ring loaded")),
        "quiet still logged the steps: {lines:?}"
    );
}

#[test]
fn corrupt_initrd_configuration() {
    let Some(kit) = kit("corrupt_initrd_configuration") else {
        return;
    };
    let probe = kit.probe_store("store");
    let base = kit.initrd(None, VIRTIOFS_MODULES);
    let bytes = base.append(|a| {
        a.file(
            nixboot_protocol::CONFIG_PATH,
            0o644,
            br#"{"version": 1, "modules": [{"name": "fuse""#.to_vec(),
        )
        .unwrap()
    });
    let o = imageless(&kit, &probe, &bytes, &probe.init, &[]);
    assert_failed(
        &o,
        "config",
        "malformed initrd configuration",
        Action::PowerOff,
    );
}

/// A block-root boot of a probe store's init with `params`, and maybe a disk.
fn block(kit: &Kit, disk: Option<PathBuf>, params: &[&str]) -> nixboot_launcher::Outcome {
    let initrd = kit.initrd(None, BLOCK_MODULES);
    let initrd = kit.write_initrd("initrd", &initrd.bytes);
    let mut b = Boot::params(params);
    if let Some(d) = disk {
        b = b.disk(&d, false);
    }
    common::boot(kit, &initrd, b)
}

#[test]
fn root_device_never_appears() {
    let Some(kit) = kit("root_device_never_appears") else {
        return;
    };
    let o = block(
        &kit,
        None,
        &[
            "root=LABEL=nothere",
            "rd.timeout=3",
            "init=/nix/store/x/init",
        ],
    );
    assert_failed(
        &o,
        "wait-root",
        "no block device LABEL=nothere appeared within 3s",
        Action::PowerOff,
    );
    let lines = step_lines(&o, "wait-root");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("tried: block devices present: none")),
        "{lines:?}"
    );
}

#[test]
fn filesystem_type_unknown_to_the_kernel() {
    let Some(kit) = kit("filesystem_type_unknown_to_the_kernel") else {
        return;
    };
    let probe = kit.probe_store("store");
    let tree = kit.path("root");
    disk::root_tree(&tree, &probe.store);
    let image = kit.path("disk.raw");
    std::fs::write(
        &image,
        disk::ext4(
            &tree,
            "nixroot",
            "5ca1ab1e-0000-4000-8000-000000000001",
            32,
            kit.tmp.path(),
        ),
    )
    .unwrap();
    // xfs is a module of this kernel, and not in the initrd.
    let o = block(
        &kit,
        Some(image),
        &[
            "root=/dev/vda",
            "rootfstype=xfs",
            &format!("init={}", probe.init),
        ],
    );
    assert_failed(
        &o,
        "mount-root",
        "the kernel does not know filesystem type xfs (rootfstype=)",
        Action::PowerOff,
    );
    let lines = step_lines(&o, "mount-root");
    assert!(
        lines.iter().any(|l| l.contains("mkinitrd --module xfs")),
        "{lines:?}"
    );
}

#[test]
fn no_filesystem_on_the_root_device() {
    let Some(kit) = kit("no_filesystem_on_the_root_device") else {
        return;
    };
    let image = kit.path("zeros.raw");
    std::fs::write(&image, vec![0u8; 8 << 20]).unwrap();
    let o = block(
        &kit,
        Some(image),
        &["root=/dev/vda", "init=/nix/store/x/init"],
    );
    assert_failed(
        &o,
        "mount-root",
        "no filesystem recognised on /dev/vda",
        Action::PowerOff,
    );
}

#[test]
fn embedded_store_larger_than_the_tmpfs_root() {
    let Some(kit) = kit("embedded_store_larger_than_the_tmpfs_root") else {
        return;
    };
    let probe = kit.probe_store("store");
    let big = probe
        .store
        .join(qemu_tests::artifacts::fake_store_name(&kit.test, "big"));
    std::fs::create_dir_all(&big).unwrap();
    // Pseudo-random, so nothing along the way can make it smaller.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let blob: Vec<u8> = (0..24 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(big.join("blob"), blob).unwrap();
    let base = kit.initrd(Some(&probe.system), &[]);
    let config = InitrdConfig {
        embedded_store: Some("/nix/store".into()),
        ..base.config.clone()
    };
    let bytes = base.append(|a| {
        common::add_tree(a, &probe.store, "nix/store");
        a.file(nixboot_protocol::CONFIG_PATH, 0o644, config.to_bytes())
            .unwrap();
    });
    let initrd = kit.write_initrd("initrd", &bytes);
    let o = common::boot(&kit, &initrd, Boot::params(&["nixboot.tmpfs_size=8m"]));
    assert_failed(
        &o,
        "copy-store",
        "the new root is full: the store embedded in the initrd does not fit in the tmpfs \
         root (nixboot.tmpfs_size=8m)",
        Action::PowerOff,
    );
    let lines = step_lines(&o, "copy-store");
    assert!(lines.iter().any(|l| l.contains("ENOSPC")), "{lines:?}");
}
