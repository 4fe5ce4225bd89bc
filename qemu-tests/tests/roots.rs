//! Every kind of root the init mounts, booted for real (the imageless tmpfs root is in
//! imageless.rs): a whole-root virtiofs share; ext4 block roots named by path, LABEL=,
//! UUID=, PARTUUID= (GPT and MBR), with rootfstype=, rootflags=, ro; a store embedded in
//! the initramfs; a writable store overlay.
//!
//! Guest kernels: every (tests/run.sh boots it again on 6.12).

mod common;

use common::disk::{self, Part};
use common::{
    assert_booted, assert_special_mounts, kit, step_lines, timed_steps, Boot, Kit, ProbeStore,
};
use common::{BLOCK_MODULES, VIRTIOFS_MODULES};
use nixboot_protocol::probe::ProbeReport;
use nixboot_protocol::InitrdConfig;
use std::path::PathBuf;

const ROOT_LABEL: &str = "nixroot";
const FS_UUID: &str = "3f5ad593-4546-4a94-a374-bcfb68aa11f7";
const PART_GUID: &str = "9b1c27d4-5e3a-4f8b-a7c6-0123456789ab";
const DISK_GUID: &str = "d1b2c3a4-0000-4000-8000-00000000d15c";
const MBR_SIG: u32 = 0x5eed_f00d;

/// A probe store, an ext4 filesystem holding it as a NixOS root would, and an initrd that
/// can reach a virtio disk.
struct DiskRoot {
    kit: Kit,
    probe: ProbeStore,
    fs: Vec<u8>,
    initrd: PathBuf,
}

fn disk_root(test: &str) -> Option<DiskRoot> {
    let kit = kit(test)?;
    let probe = kit.probe_store("store");
    let tree = kit.path("root");
    disk::root_tree(&tree, &probe.store);
    let fs = disk::ext4(&tree, ROOT_LABEL, FS_UUID, 32, kit.tmp.path());
    let initrd = kit.initrd(None, BLOCK_MODULES);
    let initrd = kit.write_initrd("initrd", &initrd.bytes);
    Some(DiskRoot {
        kit,
        probe,
        fs,
        initrd,
    })
}

impl DiskRoot {
    fn image(&self, bytes: &[u8]) -> PathBuf {
        let p = self.kit.path("disk.raw");
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn gpt(&self) -> PathBuf {
        let esp = vec![0u8; 1 << 20];
        self.image(&disk::gpt(
            DISK_GUID,
            &[
                Part {
                    name: "esp",
                    guid: "0a0a0a0a-0000-4000-8000-000000000001",
                    data: &esp,
                },
                Part {
                    name: "nixos",
                    guid: PART_GUID,
                    data: &self.fs,
                },
            ],
        ))
    }

    fn boot(&self, image: PathBuf, readonly: bool, params: &[&str]) -> nixboot_launcher::Outcome {
        let mut all = vec![format!("init={}", self.probe.init)];
        all.extend(params.iter().map(|s| s.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        common::boot(
            &self.kit,
            &self.initrd,
            Boot::params(&all)
                .disk(&image, readonly)
                .args(&[&format!("stat:{}", self.probe.init)]),
        )
    }
}

/// What every block root shares: ext4 on `/`, the store is the disk's (no share), the
/// special mounts moved in, the initramfs freed, the wait and the mount timed.
fn assert_block_root(o: &nixboot_launcher::Outcome, node: &str) -> ProbeReport {
    let p = assert_booted(o);
    assert_eq!(p.root_fstype.as_deref(), Some("ext4"), "{p}");
    assert_eq!(p.store_fstype, None, "{p}");
    assert_eq!(p.modules_fstype, None, "{p}");
    assert_special_mounts(&p);
    let left = p.initramfs_leftovers.as_ref().expect("leftovers");
    assert!(left.iter().all(|n| n == "sysroot"), "{p}");
    assert!(p.stats.values().all(|s| s.kind == "file"), "{p}");
    let mounted = step_lines(o, "mount-root");
    assert!(
        mounted
            .iter()
            .any(|l| l.contains(&format!("{node} on /sysroot type ext4"))),
        "{mounted:?}{}",
        common::context(o)
    );
    let steps = timed_steps(&p);
    for s in [
        "load-module virtio_blk",
        "wait-root",
        "mount-root",
        "switch-root",
    ] {
        assert!(steps.iter().any(|x| x == s), "{s} not timed: {steps:?}");
    }
    p
}

#[test]
fn block_root_by_label_on_gpt_with_autodetected_type() {
    let Some(d) = disk_root("block_root_by_label_on_gpt_with_autodetected_type") else {
        return;
    };
    let o = d.boot(d.gpt(), false, &[&format!("root=LABEL={ROOT_LABEL}")]);
    let p = assert_block_root(&o, "/dev/vda2");
    assert_eq!(p.root_readonly, Some(false), "{p}");
    let waited = step_lines(&o, "wait-root");
    assert!(
        waited
            .iter()
            .any(|l| l.contains("LABEL=nixroot is vda2") && l.contains(FS_UUID)),
        "{waited:?}"
    );
}

#[test]
fn block_root_by_gpt_partuuid_read_only() {
    let Some(d) = disk_root("block_root_by_gpt_partuuid_read_only") else {
        return;
    };
    // Upper case: PARTUUIDs compare without regard to case.
    let o = d.boot(
        d.gpt(),
        true,
        &[
            &format!("root=PARTUUID={}", PART_GUID.to_uppercase()),
            "rootfstype=ext4",
            "ro",
        ],
    );
    let p = assert_block_root(&o, "/dev/vda2");
    // Mounted read-only from the start (the disk itself is read-only here: a write would
    // fail the mount), and /run still took the timings.
    assert_eq!(p.root_readonly, Some(true), "{p}");
    assert!(p.timings.is_some(), "{p}");
}

#[test]
fn block_root_by_path_on_mbr_with_rootflags() {
    let Some(d) = disk_root("block_root_by_path_on_mbr_with_rootflags") else {
        return;
    };
    let o = d.boot(
        d.image(&disk::mbr(MBR_SIG, &d.fs)),
        false,
        &[
            "root=/dev/vda1",
            "rootfstype=ext4",
            "rootflags=noatime,errors=remount-ro,defaults",
            "rw",
        ],
    );
    let p = assert_block_root(&o, "/dev/vda1");
    let opts = p.root_options.as_deref().unwrap_or("");
    assert!(
        opts.starts_with("rw,noatime") && opts.contains("errors=remount-ro"),
        "{opts}"
    );
}

/// The libvirt mode's disk: a read-only qcow2 base (the image in the store) under a
/// per-VM qcow2 overlay, root on /dev/vda1 ext4.
#[test]
fn block_root_on_a_qcow2_overlay_as_libvirt_guests_have() {
    let test = "block_root_on_a_qcow2_overlay_as_libvirt_guests_have";
    let Some(d) = disk_root(test) else {
        return;
    };
    let Some(qemu_img) = qemu_tests::artifacts::require_tool(test, "qemu-img") else {
        return;
    };
    let raw = d.image(&disk::mbr(MBR_SIG, &d.fs));
    let base = d.kit.path("base.qcow2");
    let overlay = d.kit.path("vm-overlay.qcow2");
    let run = |args: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new(&qemu_img)
            .args(args)
            .output()
            .expect("qemu-img");
        assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
    };
    run(&[
        "convert".as_ref(),
        "-O".as_ref(),
        "qcow2".as_ref(),
        raw.as_os_str(),
        base.as_os_str(),
    ]);
    common::chmod(&base, 0o444);
    run(&[
        "create".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-b".as_ref(),
        base.as_os_str(),
        "-F".as_ref(),
        "qcow2".as_ref(),
        overlay.as_os_str(),
    ]);
    assert_eq!(common::disk_format(&overlay), "qcow2");
    let o = d.boot(overlay, false, &["root=/dev/vda1", "rw"]);
    let p = assert_block_root(&o, "/dev/vda1");
    assert!(
        p.root_options.as_deref().unwrap_or("").starts_with("rw"),
        "{p}"
    );
}

#[test]
fn block_root_by_mbr_partuuid_as_a_udev_path() {
    let Some(d) = disk_root("block_root_by_mbr_partuuid_as_a_udev_path") else {
        return;
    };
    let partuuid = format!("{MBR_SIG:08x}-01");
    let o = d.boot(
        d.image(&disk::mbr(MBR_SIG, &d.fs)),
        false,
        &[&format!("root=/dev/disk/by-partuuid/{partuuid}")],
    );
    assert_block_root(&o, "/dev/vda1");
    let waited = step_lines(&o, "wait-root");
    assert!(
        waited
            .iter()
            .any(|l| l.contains(&format!("PARTUUID={partuuid}"))),
        "{waited:?}"
    );
}

#[test]
fn block_root_by_uuid_on_a_whole_disk() {
    let Some(d) = disk_root("block_root_by_uuid_on_a_whole_disk") else {
        return;
    };
    let o = d.boot(d.image(&d.fs), false, &[&format!("root=UUID={FS_UUID}")]);
    assert_block_root(&o, "/dev/vda");
}

#[test]
fn virtiofs_share_is_the_whole_root() {
    let test = "virtiofs_share_is_the_whole_root";
    let Some(kit) = kit(test) else { return };
    let probe = kit.probe_store("store");
    // A root directory with its own store inside (nothing else shared).
    let root = kit.path("rootfs");
    disk::root_tree(&root, &probe.store);
    let initrd = kit.initrd(None, VIRTIOFS_MODULES);
    let initrd = kit.write_initrd("initrd", &initrd.bytes);
    let o = common::boot(
        &kit,
        &initrd,
        Boot::params(&[
            "root=virtiofs:rootfs",
            "nixboot.store=none",
            "nixboot.modules=none",
            &format!("init={}", probe.init),
        ])
        .share("rootfs", &root, false),
    );
    let p = assert_booted(&o);
    assert_eq!(p.root_fstype.as_deref(), Some("virtiofs"), "{p}");
    assert_eq!(p.root_readonly, Some(false), "{p}");
    assert_eq!(p.store_fstype, None, "{p}");
    assert_special_mounts(&p);
    let left = p.initramfs_leftovers.as_ref().expect("leftovers");
    assert!(left.iter().all(|n| n == "sysroot"), "{p}");
}

#[test]
fn embedded_store_moves_into_the_tmpfs_root() {
    let test = "embedded_store_moves_into_the_tmpfs_root";
    let Some(kit) = kit(test) else { return };
    let probe = kit.probe_store("store");
    // A second store path with what a real one has: read-only modes, a symlink into the
    // store, nested directories.
    let data_name = qemu_tests::artifacts::fake_store_name(test, "data");
    let data = probe.store.join(&data_name);
    std::fs::create_dir_all(data.join("share/doc")).unwrap();
    std::fs::write(data.join("share/doc/README"), "embedded\n").unwrap();
    common::chmod(&data.join("share/doc/README"), 0o444);
    std::os::unix::fs::symlink(format!("/nix/store/{data_name}"), probe.system.join("sw")).unwrap();
    for d in [data.join("share/doc"), data.join("share"), data.clone()] {
        common::chmod(&d, 0o555);
    }

    // What mkinitrd --embed-store produces: the store under /nix/store and the flag.
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
    let readme = format!("/nix/store/{data_name}/share/doc/README");
    let sw = probe.init.replace("/init", "/sw");
    // No init= and no shares at all: the default init from the initrd, the store inside it.
    let o = common::boot(
        &kit,
        &initrd,
        Boot::params(&[]).args(&[
            &format!("stat:{readme}"),
            &format!("stat:{sw}"),
            &format!("stat:/nix/store/{data_name}"),
            &format!("stat:{}", probe.init),
        ]),
    );
    let p = assert_booted(&o);
    assert_eq!(p.argv[0], probe.init, "{p}");
    assert_eq!(p.root_fstype.as_deref(), Some("tmpfs"), "{p}");
    assert_eq!(p.store_fstype, None, "{p}");
    let st = &p.stats;
    assert_eq!(st[&readme].kind, "file", "{p}");
    assert_eq!(st[&readme].mode.as_deref(), Some("0444"), "{p}");
    assert_eq!(st[&readme].size, Some(9), "{p}");
    // The archive's mtime (1, as in a Nix store) survives the copy.
    assert_eq!(st[&readme].mtime, Some(1), "{p}");
    assert_eq!(st[&sw].kind, "symlink", "{p}");
    assert_eq!(
        st[&sw].target.as_deref(),
        Some(format!("/nix/store/{data_name}").as_str()),
        "{p}"
    );
    assert_eq!(
        st[&format!("/nix/store/{data_name}")].mode.as_deref(),
        Some("0555"),
        "{p}"
    );
    assert_eq!(st[&probe.init].mode.as_deref(), Some("0755"), "{p}");
    // Moved, not copied: nothing of the store is left in the old initramfs.
    let left = p.initramfs_leftovers.as_ref().expect("leftovers");
    assert!(left.iter().all(|n| n == "sysroot"), "{p}");
    let copied = step_lines(&o, "copy-store");
    assert!(
        copied
            .iter()
            .any(|l| l
                .contains("/nix/store -> /sysroot/nix/store: 2 files, 1 symlinks, 4 directories")),
        "{copied:?}"
    );
    assert!(step_lines(&o, "mount-store").is_empty());
}

#[test]
fn kexec_carry_files_reach_the_booted_systems_run() {
    let test = "kexec_carry_files_reach_the_booted_systems_run";
    let Some(kit) = kit(test) else { return };
    let probe = kit.probe_store("store");
    // The kexec image: an embedded store (no shares), as nixos/modules/baremetal builds it.
    let base = kit.initrd(Some(&probe.system), &[]);
    let config = InitrdConfig {
        embedded_store: Some("/nix/store".into()),
        ..base.config.clone()
    };
    let mut bytes = base.append(|a| {
        common::add_tree(a, &probe.store, "nix/store");
        a.file(nixboot_protocol::CONFIG_PATH, 0o644, config.to_bytes())
            .unwrap();
    });
    // What kexec-run.sh appends at kexec time: GNU cpio of etc/nixboot/carry, after 4 to 7
    // NULs (4-byte alignment, and the 4 an lz4 stream needs after it).
    let root = kit.tmp.path().join("carry-root");
    let carry = root.join("etc/nixboot/carry");
    std::fs::create_dir_all(carry.join("ssh")).unwrap();
    std::fs::write(carry.join("ssh/ssh_host_ed25519_key"), "SECRET\n").unwrap();
    common::chmod(&carry.join("ssh/ssh_host_ed25519_key"), 0o600);
    std::fs::write(carry.join("addrs.json"), "[]\n").unwrap();
    let cpio = std::process::Command::new("sh")
        .arg("-c")
        .arg("find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0")
        .current_dir(&root)
        .output()
        .expect("GNU cpio");
    assert!(cpio.status.success(), "cpio: {cpio:?}");
    bytes.resize(4 + bytes.len().div_ceil(4) * 4, 0);
    bytes.extend_from_slice(&cpio.stdout);
    let initrd = kit.write_initrd("initrd", &bytes);

    let key = "/run/nixboot/carry/ssh/ssh_host_ed25519_key";
    let o = common::boot(
        &kit,
        &initrd,
        Boot::params(&[]).args(&[
            &format!("stat:{key}"),
            "stat:/run/nixboot/carry",
            "stat:/run/nixboot/carry/addrs.json",
        ]),
    );
    let p = assert_booted(&o);
    let st = &p.stats;
    assert_eq!(st[key].kind, "file", "{p}");
    assert_eq!(st[key].size, Some(7), "{p}");
    assert_eq!(st[key].mode.as_deref(), Some("0600"), "{p}");
    assert_eq!(st["/run/nixboot/carry/addrs.json"].kind, "file", "{p}");
    // Host keys inside: the directory is root's only, whatever the archive said.
    assert_eq!(
        st["/run/nixboot/carry"].mode.as_deref(),
        Some("0700"),
        "{p}"
    );
    let left = p.initramfs_leftovers.as_ref().expect("leftovers");
    assert!(left.iter().all(|n| n == "sysroot"), "{p}");
    let lines = step_lines(&o, "carry");
    assert!(lines.iter().any(|l| l.contains("2 files")), "{lines:?}");
}

#[test]
fn store_overlay_makes_the_store_writable() {
    let test = "store_overlay_makes_the_store_writable";
    let Some(kit) = kit(test) else { return };
    let probe = kit.probe_store("store");
    let mut modules = VIRTIOFS_MODULES.to_vec();
    modules.push("overlay");
    let initrd = kit.initrd(None, &modules);
    let initrd = kit.write_initrd("initrd", &initrd.bytes);
    let before = std::fs::read_dir(&probe.store).unwrap().count();
    let o = common::boot(
        &kit,
        &initrd,
        Boot::params(&[&format!("init={}", probe.init), "nixboot.store_overlay"])
            .share("store", &probe.store, true)
            .modules_share(&kit.env),
    );
    let p = assert_booted(&o);
    assert_eq!(p.store_fstype.as_deref(), Some("overlay"), "{p}");
    assert_eq!(p.store_readonly, Some(false), "{p}");
    assert_eq!(p.store_writable, Some(true), "{p}");
    assert_eq!(p.modules_fstype.as_deref(), Some("virtiofs"), "{p}");
    // The writes went to the tmpfs, not to the host's store.
    assert_eq!(std::fs::read_dir(&probe.store).unwrap().count(), before);
    let steps = timed_steps(&p);
    for s in ["mount-store", "mount-store-upper", "mount-store-overlay"] {
        assert!(steps.iter().any(|x| x == s), "{s} not timed: {steps:?}");
    }
}

#[test]
fn gpt_writer_checks() {
    assert_eq!(disk::crc32(b"123456789"), 0xcbf4_3926);
    assert_eq!(
        disk::guid_bytes("0fc63daf-8483-4772-8e79-3d69d8477de4")[..4],
        [0xaf, 0x3d, 0xc6, 0x0f]
    );
}
