//! A verified store (`mkinitrd verity`, `nixboot.verity.*`): the probe's closure as an erofs
//! image with a dm-verity hash tree, attached by the init from a virtio disk (GPT PARTUUID)
//! or from a file in the initramfs through a loop device, mounted on /nix/store. An intact
//! image boots; a flipped byte in the data stops the boot with a status line naming the
//! step and the device (in the `verity` phase with `nixboot.verity.check=full`, at the
//! first read of the changed file otherwise); a wrong root hash is refused before anything
//! is mounted. Whether veritysetup agrees with the tree is mkinitrd/tests/verity.rs.
//!
//! Guest kernels: every (tests/run.sh boots it again on 6.12).

mod common;

use common::disk::{self, Part};
use common::{assert_booted, assert_failed, context, kit, step_lines, timed_steps, Action};
use common::{Boot, Kit, ProbeStore};
use mkinitrd::verity::{VerityImage, VerityOptions};
use nixboot_launcher::qemu::Outcome;
use nixboot_protocol::verity::hex;
use std::path::PathBuf;

const PART_GUID: &str = "5e1f1ab0-7c1d-4c3e-9a44-000000c0ffee";
const DISK_GUID: &str = "d1b2c3a4-0000-4000-8000-0000000e7f17";
/// The init's modules: the disk, device-mapper's verity target, erofs (mkinitrd adds
/// dm-mod, dm-bufio and the rest of their dependencies), loop for the file case.
const MODULES: &[&str] = &["virtio_pci", "virtio_blk", "dm-verity", "erofs", "loop"];

struct Verified {
    kit: Kit,
    probe: ProbeStore,
    image: VerityImage,
    bytes: Vec<u8>,
    initrd: common::Initrd,
}

fn verified(test: &str) -> Option<Verified> {
    let kit = kit(test)?;
    let probe = kit.probe_store("store");
    let out = kit.path("store.verity");
    let image = mkinitrd::verity::build(&VerityOptions {
        store: mkinitrd::EmbedStore {
            store_paths: None,
            store_dir: Some(probe.store.clone()),
        },
        closure: None,
        output: out.clone(),
        salt: None,
        timestamp: 0,
        mkfs_erofs: "mkfs.erofs".into(),
    })
    .expect("mkinitrd verity");
    let bytes = std::fs::read(&out).unwrap();
    let initrd = kit.initrd(None, MODULES);
    Some(Verified {
        kit,
        probe,
        image,
        bytes,
        initrd,
    })
}

impl Verified {
    /// The image as partition 2 of a GPT disk (PARTUUID is what a NixOS module would name).
    fn disk(&self, bytes: &[u8]) -> PathBuf {
        let esp = vec![0u8; 1 << 20];
        let gpt = disk::gpt(
            DISK_GUID,
            &[
                Part {
                    name: "esp",
                    guid: "0a0a0a0a-0000-4000-8000-000000000001",
                    data: &esp,
                },
                Part {
                    name: "nix-store",
                    guid: PART_GUID,
                    data: bytes,
                },
            ],
        );
        let p = self.kit.path("disk.raw");
        std::fs::write(&p, gpt).unwrap();
        p
    }

    fn params(&self, root_hash: &[u8; 32], extra: &[&str]) -> Vec<String> {
        let mut p = vec![
            format!("init={}", self.probe.init),
            "nixboot.modules=none".into(),
            "rd.timeout=15".into(),
            format!("nixboot.verity.roothash={}", hex(root_hash)),
            format!("nixboot.verity.hashoffset={}", self.image.hash_offset),
        ];
        p.extend(extra.iter().map(|s| s.to_string()));
        p
    }

    /// The image as the whole disk, named by its kernel name.
    fn boot_whole_disk(
        &self,
        bytes: &[u8],
        root_hash: &[u8; 32],
        extra: &[&str],
    ) -> nixboot_launcher::Outcome {
        let initrd = self.kit.write_initrd("initrd", &self.initrd.bytes);
        let disk = self.kit.path("whole.raw");
        std::fs::write(&disk, bytes).unwrap();
        let mut params = self.params(root_hash, extra);
        params.push("nixboot.verity.store=/dev/vda".into());
        let params: Vec<&str> = params.iter().map(String::as_str).collect();
        common::boot(
            &self.kit,
            &initrd,
            Boot::params(&params)
                .disk(&disk, true)
                .args(&[&format!("stat:{}", self.probe.init)]),
        )
    }

    fn boot_disk(
        &self,
        bytes: &[u8],
        root_hash: &[u8; 32],
        extra: &[&str],
    ) -> nixboot_launcher::Outcome {
        let initrd = self.kit.write_initrd("initrd", &self.initrd.bytes);
        let mut params = self.params(root_hash, extra);
        params.push(format!("nixboot.verity.store=PARTUUID={PART_GUID}"));
        let params: Vec<&str> = params.iter().map(String::as_str).collect();
        common::boot(
            &self.kit,
            &initrd,
            Boot::params(&params)
                .disk(&self.disk(bytes), true)
                .args(&[&format!("stat:{}", self.probe.init)]),
        )
    }

    /// The byte offset of the probe's first block in the image (erofs stores a file's
    /// full blocks block-aligned and uncompressed here).
    fn probe_block(&self) -> usize {
        let first = std::fs::read(self.probe.system.join("init")).unwrap();
        let first = &first[..4096];
        (0..self.image.hash_offset as usize)
            .step_by(4096)
            .find(|o| &self.bytes[*o..*o + 4096] == first)
            .expect("the probe's first block in the image")
    }
}

#[test]
fn verity_store_from_a_gpt_partition_boots() {
    let Some(v) = verified("verity_store_from_a_gpt_partition_boots") else {
        return;
    };
    let o = v.boot_disk(&v.bytes, &v.image.root_hash, &[]);
    let p = assert_booted(&o);
    assert_eq!(p.store_fstype.as_deref(), Some("erofs"), "{p}");
    let verity = step_lines(&o, "verity");
    assert!(
        verity
            .iter()
            .any(|l| l.contains("/dev/mapper/nixboot-store")
                && l.contains(&hex(&v.image.root_hash))
                && l.contains("verifies /dev/vda2")),
        "{verity:?}{}",
        context(&o)
    );
    let mounted = step_lines(&o, "mount-store");
    assert!(
        mounted
            .iter()
            .any(|l| l.contains("/dev/mapper/nixboot-store on /sysroot/nix/store type erofs (ro)")),
        "{mounted:?}"
    );
    let steps = timed_steps(&p);
    for s in [
        "load-module dm_verity",
        "wait-store",
        "verity",
        "mount-store",
    ] {
        assert!(steps.iter().any(|x| x == s), "{s} not timed: {steps:?}");
    }
}

#[test]
fn verity_store_from_a_file_in_the_initrd_boots_through_a_loop_device() {
    let test = "verity_store_from_a_file_in_the_initrd_boots_through_a_loop_device";
    let Some(v) = verified(test) else { return };
    let name = qemu_tests::artifacts::fake_store_name(test, "store.verity");
    let path = format!("/nix/store/{name}");
    let initrd = v.initrd.append(|a| {
        a.dir("nix", 0o755).unwrap();
        a.dir("nix/store", 0o755).unwrap();
        a.file(&path[1..], 0o444, v.bytes.clone()).unwrap();
    });
    let initrd = v.kit.write_initrd("initrd-file", &initrd);
    let mut params = v.params(&v.image.root_hash, &[]);
    params.push(format!("nixboot.verity.store={path}"));
    let params: Vec<&str> = params.iter().map(String::as_str).collect();
    let o = common::boot(
        &v.kit,
        &initrd,
        Boot::params(&params).args(&[&format!("stat:{}", v.probe.init)]),
    );
    let p = assert_booted(&o);
    assert_eq!(p.store_fstype.as_deref(), Some("erofs"), "{p}");
    let lo = step_lines(&o, "loop-store");
    assert!(
        lo.iter()
            .any(|l| l.contains(&format!("{path} on /dev/loop"))),
        "{lo:?}{}",
        context(&o)
    );
}

/// The boot stopped in the `verity` phase with `error` (power off), the store not mounted.
fn assert_refused_before_mounting(o: &Outcome, error: &str) {
    assert_failed(o, "verity", error, Action::PowerOff);
    assert!(
        step_lines(o, "mount-store").is_empty(),
        "mounted{}",
        context(o)
    );
}

#[test]
fn verity_wrong_root_hash_is_refused_before_mounting() {
    let Some(v) = verified("verity_wrong_root_hash_is_refused_before_mounting") else {
        return;
    };
    let mut wrong = v.image.root_hash;
    wrong[31] ^= 1;
    let o = v.boot_disk(&v.bytes, &wrong, &[]);
    assert_refused_before_mounting(&o, "/dev/vda2: block 0 does not verify");
    let s = o.status.as_ref().unwrap();
    assert!(s.error().unwrap_or("").contains("wrong root hash"), "{s}");
}

#[test]
fn verity_flipped_data_byte_stops_the_full_check() {
    let Some(v) = verified("verity_flipped_data_byte_stops_the_full_check") else {
        return;
    };
    let at = v.probe_block() + 100;
    let mut bytes = v.bytes.clone();
    bytes[at] ^= 0x40;
    // The image is the whole disk here (the other tests use a GPT partition).
    let o = v.boot_whole_disk(&bytes, &v.image.root_hash, &["nixboot.verity.check=full"]);
    let block = at / 4096;
    assert_refused_before_mounting(
        &o,
        &format!(
            "/dev/vda: data block {block} (byte {}) does not match its hash",
            block * 4096
        ),
    );
}

/// Without the full check the store mounts, and the changed block is an I/O error for its
/// first reader: the init's check of the next init, which stops the boot there.
#[test]
fn verity_flipped_byte_in_the_next_init_stops_the_boot_at_its_first_read() {
    let test = "verity_flipped_byte_in_the_next_init_stops_the_boot_at_its_first_read";
    let Some(v) = verified(test) else { return };
    let mut bytes = v.bytes.clone();
    bytes[v.probe_block() + 7] ^= 0x01;
    let o = v.boot_disk(&bytes, &v.image.root_hash, &[]);
    assert_failed(
        &o,
        "check-init",
        &format!(
            "next init {} is not usable in the new root: EIO",
            v.probe.init
        ),
        Action::PowerOff,
    );
    assert!(
        o.console.contains("is corrupted"),
        "no dm-verity corruption line{}",
        context(&o)
    );
}

/// Bad input: a hash tree that does not match the image (a byte of its top level changed,
/// the level every read goes through) is refused in the `verity` phase, nothing mounted.
#[test]
fn verity_hash_tree_not_matching_the_image_is_refused() {
    let Some(v) = verified("verity_hash_tree_not_matching_the_image_is_refused") else {
        return;
    };
    let mut bytes = v.bytes.clone();
    // The superblock is one block at the hash offset; the top level follows it.
    bytes[v.image.hash_offset as usize + 4096 + 5] ^= 0x80;
    let o = v.boot_disk(&bytes, &v.image.root_hash, &[]);
    assert_refused_before_mounting(
        &o,
        "/dev/vda2: block 0 does not verify against nixboot.verity.roothash=",
    );
}

/// Bad input: a hash offset that is not where the superblock is.
#[test]
fn verity_wrong_hash_offset_finds_no_superblock() {
    let Some(v) = verified("verity_wrong_hash_offset_finds_no_superblock") else {
        return;
    };
    let wrong = format!("nixboot.verity.hashoffset={}", v.image.hash_offset - 4096);
    let o = v.boot_disk(&v.bytes, &v.image.root_hash, &[&wrong]);
    assert_refused_before_mounting(&o, "(this is not a verity image's hash area)");
}
