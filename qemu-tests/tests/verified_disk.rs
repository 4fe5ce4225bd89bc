//! nixos/make-verified-disk.sh end to end: the probe closure becomes one GPT disk (an ESP
//! with the UKI as EFI/BOOT/BOOTX64.EFI, store slots A and B, the dm-verity image in A) that
//! OVMF boots to the probe's stage 2 with /nix/store on dm-verity from partition A, named in
//! the UKI's .cmdline by PARTUUID with the root hash the verity step printed; the next
//! generation's disk (`--slot B`) boots from partition B; the same disk signed with our key
//! (the same bytes twice) boots under Secure Boot with that key enrolled. Without QEMU: two
//! runs give the same bytes, slot A holds the image (verity-check), `--slot B` puts it in B
//! under the same PARTUUIDs, and bad input (a missing closure, a key that is not the
//! certificate's, an ESP too small, a directory as output) exits 1 with one message and
//! leaves nothing behind.
//!
//! Guest kernels: 6.1 only (firmware: the verified disk under OVMF and Secure Boot).

mod common;

use common::firmware::{self, FirmwareBoot, OVMF_CODE, OVMF_CODE_SECBOOT, OVMF_VARS};
use common::firmware::{sh, OVMF_VARS_MS};
use common::{assert_booted, context, kit, step_lines, Kit, ProbeStore};
use nixboot_launcher::qemu::Outcome;
use qemu_tests::artifacts::{self, require_file, require_tool};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The initrd's modules: the disk, dm-verity and erofs (mkinitrd adds their dependencies).
const MODULES: &[&str] = &["virtio_pci", "virtio_blk", "dm-verity", "erofs"];
/// Small enough to keep the disk small, large enough for the probe's UKI.
const ESP_MIB: &str = "32";

struct Disk {
    kit: Kit,
    probe: ProbeStore,
    mkinitrd: PathBuf,
}

/// The kit and every tool the script and a firmware boot need, or `None` after a loud SKIP.
fn disk_kit(test: &str, code: &str, vars: &str) -> Option<Disk> {
    let kit = kit(test)?;
    common::firmware::require_firmware(test, code, vars)?;
    for tool in ["sfdisk", "mkfs.erofs", "openssl"] {
        require_tool(test, tool)?;
    }
    let probe = kit.probe_store("store");
    let mkinitrd = artifacts::host_binary("mkinitrd", "mkinitrd").expect("building mkinitrd");
    Some(Disk {
        kit,
        probe,
        mkinitrd,
    })
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../nixos/make-verified-disk.sh")
}

impl Disk {
    /// Runs the script on the probe closure writing `out`, with `extra` options.
    fn run(&self, out: &Path, extra: &[&str]) -> Output {
        let cmdline = format!(
            "console=ttyS0,115200 panic=-1 root=tmpfs init={} nixboot.modules=none rd.timeout=15",
            self.probe.init
        );
        let mut cmd = Command::new("bash");
        cmd.arg(script())
            .arg("--closure")
            .arg(&self.probe.system)
            .arg("--store-dir")
            .arg(&self.probe.store)
            .arg("--kernel")
            .arg(&self.kit.env.kernel)
            .arg("--init")
            .arg(&self.kit.bins.init)
            .arg("--kernel-modules")
            .arg(&self.kit.env.modules)
            .args(MODULES.iter().flat_map(|m| ["--module", m]))
            .args(["--cmdline", &cmdline, "--esp-size", ESP_MIB, "--output"])
            .arg(out)
            .args(extra)
            .env("MKINITRD", &self.mkinitrd)
            .env_remove("SOURCE_DATE_EPOCH");
        cmd.output().unwrap()
    }

    /// [`Disk::run`] that must succeed; its `key=value` report.
    fn build(&self, out: &Path, extra: &[&str]) -> BTreeMap<String, String> {
        let o = self.run(out, extra);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success(),
            "make-verified-disk: {}\n{err}",
            o.status
        );
        eprintln!("{}: {}", self.kit.test, err.lines().last().unwrap_or(""));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

/// The probe ran on the tmpfs root with /nix/store the erofs on dm-verity over the slot the
/// script filled (A: vda2, B: vda3), attached with the root hash the script printed.
fn assert_verified_boot(d: &Disk, o: &Outcome, report: &BTreeMap<String, String>) {
    let ctx = context(o);
    let (key, dev, label) = match report["slot"].as_str() {
        "A" => ("store_a", "vda2", "nixboot-store-a"),
        _ => ("store_b", "vda3", "nixboot-store-b"),
    };
    assert!(o.stopped.is_none(), "{:?}{ctx}", o.stopped);
    let p = assert_booted(o);
    assert_eq!(p.argv, [d.probe.init.as_str()], "{p}");
    assert_eq!(p.store_fstype.as_deref(), Some("erofs"), "{p}");
    assert!(o.console.contains("BdsDxe: starting"), "not OVMF{ctx}");
    // The kernel got the UKI's .cmdline, naming the slot and the printed root hash.
    let cmdline = p.cmdline.clone().unwrap_or_default();
    let store = format!("nixboot.verity.store={}", report[key]);
    let hash = format!("nixboot.verity.roothash={}", report["root_hash"]);
    assert!(
        cmdline.contains(&store) && cmdline.contains(&hash),
        "{cmdline}{ctx}"
    );
    let wait = step_lines(o, "wait-store");
    assert!(
        wait.iter()
            .any(|l| l.contains(&format!("is {dev}")) && l.contains(&format!("PARTLABEL={label}"))),
        "{wait:?}{ctx}"
    );
    let verity = step_lines(o, "verity");
    assert!(
        verity
            .iter()
            .any(|l| l.contains("/dev/mapper/nixboot-store")
                && l.contains(&report["root_hash"])
                && l.contains(&format!("verifies /dev/{dev}"))),
        "{verity:?}{ctx}"
    );
    let mounted = step_lines(o, "mount-store");
    assert!(
        mounted
            .iter()
            .any(|l| l.contains("/dev/mapper/nixboot-store on /sysroot/nix/store type erofs")),
        "{mounted:?}{ctx}"
    );
}

/// Builds the disk with its image in `slot` and boots it under OVMF.
fn boot_slot(test: &str, slot: &str) {
    let Some(d) = disk_kit(test, OVMF_CODE, OVMF_VARS) else {
        return;
    };
    let disk = d.kit.path("disk.img");
    let report = d.build(&disk, &["--slot", slot]);
    assert_eq!(report["slot"], slot);
    let o = firmware::boot(
        &d.kit,
        &FirmwareBoot::new(Path::new(OVMF_CODE), Path::new(OVMF_VARS), &disk),
    );
    eprintln!(
        "{test}: QEMU start -> kernel {:?}, -> probe {:?}, total {:?}",
        o.kernel_started_at, o.probe_at, o.elapsed
    );
    assert_verified_boot(&d, &o, &report);
}

#[test]
fn verified_disk_boots_under_ovmf_with_the_store_on_dm_verity_from_slot_a() {
    boot_slot(
        "verified_disk_boots_under_ovmf_with_the_store_on_dm_verity_from_slot_a",
        "A",
    );
}

/// The next generation's disk (`--slot B`: the image in B, the UKI naming B's PARTUUID, A
/// left empty) boots from B: what an A/B update writes is what the firmware then runs.
#[test]
fn the_next_generation_boots_from_slot_b() {
    boot_slot("the_next_generation_boots_from_slot_b", "B");
}

#[test]
fn signed_verified_disk_boots_under_secure_boot_with_our_key_enrolled() {
    let test = "signed_verified_disk_boots_under_secure_boot_with_our_key_enrolled";
    let Some(d) = disk_kit(test, OVMF_CODE_SECBOOT, OVMF_VARS_MS) else {
        return;
    };
    for tool in ["osslsigncode", "sbverify"] {
        let Some(_) = require_tool(test, tool) else {
            return;
        };
    }
    let Some(virt_fw_vars) = require_file(test, &firmware::virt_fw_vars(), "virt-firmware (PyPI)")
    else {
        return;
    };
    let (key, cert, vars) =
        firmware::enroll_test_keys(&d.kit, Path::new(OVMF_VARS_MS), &virt_fw_vars);
    let disk = d.kit.path("signed.img");
    let signing = [
        "--key",
        key.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
    ];
    let report = d.build(&disk, &signing);
    // Signed, the same bytes too: the signing time is SOURCE_DATE_EPOCH, not the clock's
    // (a second apart at least, so a clock's time would differ).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let again = d.kit.path("signed-again.img");
    assert_eq!(d.build(&again, &signing), report);
    assert!(
        std::fs::read(&disk).unwrap() == std::fs::read(&again).unwrap(),
        "two signed runs, two disks"
    );
    std::fs::remove_file(&again).unwrap();
    let o = firmware::boot(
        &d.kit,
        &FirmwareBoot {
            secure: true,
            ..FirmwareBoot::new(Path::new(OVMF_CODE_SECBOOT), &vars, &disk)
        },
    );
    eprintln!(
        "{test}: kernel at {:?}, probe at {:?}, total {:?}",
        o.kernel_started_at, o.probe_at, o.elapsed
    );
    assert!(
        o.console.contains("Secure Boot is enabled"),
        "Secure Boot off?{}",
        context(&o)
    );
    assert_verified_boot(&d, &o, &report);
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Partition `n`'s bytes, as sfdisk places it.
fn partition(disk: &Path, n: usize) -> Vec<u8> {
    let dump = sh(Command::new("sfdisk").arg("--json").arg(disk));
    let table: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let part = &table["partitiontable"]["partitions"][n - 1];
    let (start, size) = (
        part["start"].as_u64().unwrap(),
        part["size"].as_u64().unwrap(),
    );
    let bytes = std::fs::read(disk).unwrap();
    bytes[(start * 512) as usize..((start + size) * 512) as usize].to_vec()
}

#[test]
fn verified_disk_is_reproducible_and_refuses_bad_input_leaving_nothing() {
    let test = "verified_disk_is_reproducible_and_refuses_bad_input_leaving_nothing";
    let Some(d) = disk_kit(test, OVMF_CODE, OVMF_VARS) else {
        return;
    };
    let dir = d.kit.path("out");
    std::fs::create_dir(&dir).unwrap();
    let (a, b) = (dir.join("a.img"), dir.join("b.img"));
    let report = d.build(&a, &[]);
    assert_eq!(d.build(&b, &[]), report);
    let bytes = std::fs::read(&a).unwrap();
    assert!(bytes == std::fs::read(&b).unwrap(), "two runs, two disks");

    // Slot A holds an image with the printed root hash at the printed offset; B is empty.
    let slot_a = dir.join("slot-a");
    std::fs::write(&slot_a, partition(&a, 2)).unwrap();
    sh(Command::new(&d.mkinitrd)
        .args(["verity-check", "--root-hash", &report["root_hash"]])
        .args(["--hash-offset", &report["hash_offset"]])
        .arg(&slot_a));
    std::fs::remove_file(&slot_a).unwrap();
    assert!(partition(&a, 3).iter().all(|&x| x == 0), "slot B written");
    // The next generation for slot B: same PARTUUIDs (same disk id), its image in
    // partition 3, its UKI naming B; A left empty in that image.
    let next = dir.join("next.img");
    let rb = d.build(&next, &["--slot", "B"]);
    assert_eq!(
        (&rb["store_a"], &rb["store_b"]),
        (&report["store_a"], &report["store_b"])
    );
    assert!(
        rb["cmdline"].contains(&format!("nixboot.verity.store={}", rb["store_b"])),
        "{rb:?}"
    );
    std::fs::write(&slot_a, partition(&next, 3)).unwrap();
    sh(Command::new(&d.mkinitrd)
        .args(["verity-check", "--root-hash", &rb["root_hash"]])
        .arg(&slot_a));
    assert!(
        partition(&next, 2).iter().all(|&x| x == 0),
        "slot A written"
    );
    std::fs::remove_file(&slot_a).unwrap();
    std::fs::remove_file(&next).unwrap();
    let labels = sh(Command::new("sfdisk").arg("--json").arg(&a));
    for name in ["\"ESP\"", "\"nixboot-store-a\"", "\"nixboot-store-b\""] {
        assert!(labels.contains(name), "{name}: {labels}");
    }

    // Bad input: exit 1, one line naming the cause, b.img as it was, no temporary left.
    let other = |n: &str| {
        let k = dir.join(format!("{n}.key"));
        let c = dir.join(format!("{n}.crt"));
        sh(Command::new("openssl")
            .args(["req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes"])
            .args(["-subj", "/CN=x/", "-keyout"])
            .arg(&k)
            .arg("-out")
            .arg(&c));
        (
            k.to_str().unwrap().to_owned(),
            c.to_str().unwrap().to_owned(),
        )
    };
    let (k1, _) = other("one");
    let (_, c2) = other("two");
    let missing = d.kit.path("no-such-system");
    let cases: [(&[&str], &Path, &str); 4] = [
        (
            &["--closure", missing.to_str().unwrap()],
            &b,
            "does not exist",
        ),
        (
            &["--key", &k1, "--cert", &c2],
            &b,
            "does not match certificate",
        ),
        (&["--esp-size", "8"], &b, "no room in the ESP"),
        (&[], &dir, "is not a regular file"),
    ];
    let before = listing(&dir);
    for (extra, out, says) in cases {
        let o = d.run(out, extra);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {err}");
        let last = err.lines().last().unwrap_or("");
        assert!(
            last.starts_with("make-verified-disk: error: ") && last.contains(says),
            "{extra:?}: {err}"
        );
        assert!(
            std::fs::read(&b).unwrap() == bytes,
            "{extra:?} touched b.img"
        );
        assert_eq!(listing(&dir), before, "{extra:?} left something");
    }
}
