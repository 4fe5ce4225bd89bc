//! Generations with boot counting and rollback, booted for real: OVMF runs systemd-boot
//! (Debian's systemd-boot-efi) from a FAT ESP image holding two Boot Loader Specification
//! entries named as the NixOS module names them (nixos/modules/generations/install-hook.sh)
//! and its loader.conf default: generation 2 with `+TRIES` whose init fails (a missing
//! init=, the init's failure action `reboot`), generation 1 `+TRIES` good. QEMU may reboot:
//! systemd-boot decrements the counter on each try (renaming the entry file on the ESP),
//! sorts the exhausted entry last, and the good generation boots. Its stage 2 (a busybox
//! script standing in for systemd reaching nixboot-boot-health.target) runs the module's
//! bless-boot.sh on the ESP with the real LoaderBootCountPath systemd-boot set, then execs
//! the probe. The host counts the init's status lines (one per boot, naming why each
//! failed), reads which generation each kernel was told to start, and reads the entries
//! back from the ESP with mtools: generation 2 `+0-TRIES`, generation 1 blessed.
//!
//! Guest kernels: 6.1 only (firmware: systemd-boot's boot counting under OVMF).

mod common;

use common::{kit, Kit, ProbeStore};
use nixboot_launcher::qemu::Outcome;
use nixboot_protocol::console::{StatusLine, STATUS_MARKER};
use nixboot_protocol::probe::ProbeReport;
use qemu_tests::artifacts::{self, fake_store_name};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Tries per counted entry. The module's default `nixboot.bootCounting.tries` is 3; 2 shows
/// the same counting with one firmware boot (about a minute under TCG) less.
const TRIES: usize = 2;
/// Three firmware boots (two failing) on a loaded machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(420);
use common::firmware::{self, FirmwareBoot, OVMF_CODE, OVMF_VARS};
const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// The firmware parts and mtools, or `None` after a loud SKIP.
fn firmware_parts(test: &str) -> Option<()> {
    for p in [OVMF_CODE, OVMF_VARS, SYSTEMD_BOOT] {
        if !Path::new(p).is_file() {
            artifacts::skip(
                test,
                &format!(
                    "{p} is missing (.ci/setup-real-parts' step `firmware, ESP and kexec tools`)"
                ),
            );
            return None;
        }
    }
    for tool in ["mkfs.vfat", "mcopy", "mmd", "mdir", "mtype"] {
        artifacts::require_tool(test, tool)?;
    }
    Some(())
}

/// Runs an mtools command on `image` (`::/path` names), failing the test on error.
fn mtools(tool: &str, image: &Path, args: &[&str]) -> String {
    let out = Command::new(tool)
        .arg("-i")
        .arg(image)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A BLS type #1 entry as the module writes it: the kernel and initrd on the ESP, the
/// generation's init and a marker after `--` (the probe reports its argv).
fn entry(generation: u32, init: &str) -> String {
    format!(
        "title NixOS (Generation {generation})\nversion Generation {generation}\n\
         linux /EFI/nixos/kernel\ninitrd /EFI/nixos/initrd\n\
         options console=ttyS0,115200 panic=-1 root=tmpfs rd.emergency=reboot rd.timeout=10 \
         init={init} -- generation-{generation}\n"
    )
}

/// A 64 MiB FAT ESP with systemd-boot as the removable-media loader, `loader.conf` as the
/// module rewrites it, the kernel and initrd, and `entries` (file name, text).
fn make_esp(kit: &Kit, initrd: &Path, entries: &[(String, String)]) -> PathBuf {
    let esp = kit.path("esp.img");
    let st = Command::new("mkfs.vfat")
        .args(["-F", "32", "-n", "ESP", "-C"])
        .arg(&esp)
        .arg("65536")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "mkfs.vfat");
    for d in [
        "::/EFI",
        "::/EFI/BOOT",
        "::/EFI/nixos",
        "::/loader",
        "::/loader/entries",
    ] {
        mtools("mmd", &esp, &[d]);
    }
    let put = |host: &Path, to: &str| mtools("mcopy", &esp, &[host.to_str().unwrap(), to]);
    put(Path::new(SYSTEMD_BOOT), "::/EFI/BOOT/BOOTX64.EFI");
    put(&kit.env.kernel, "::/EFI/nixos/kernel");
    put(initrd, "::/EFI/nixos/initrd");
    let loader = kit.path("loader.conf");
    fs::write(&loader, "timeout 0\ndefault nixos-generation-*\n").unwrap();
    put(&loader, "::/loader/loader.conf");
    for (name, text) in entries {
        let p = kit.path(name);
        fs::write(&p, text).unwrap();
        put(&p, &format!("::/loader/entries/{name}"));
    }
    esp
}

/// Boots OVMF with `esp` as a virtio disk, rebooting allowed, until the guest powers off
/// (QEMU exits), [`RUN_TIMEOUT`], or more boots than the counters allow (a runaway loop).
fn run_firmware(kit: &Kit, esp: &Path) -> Outcome {
    let runaway = |text: &str| {
        (status_lines(text).len() > TRIES + 2).then(|| format!("more than {} boots", TRIES + 2))
    };
    firmware::boot(
        kit,
        &FirmwareBoot {
            reboot: true,
            timeout: Some(RUN_TIMEOUT),
            stop: Some(&runaway),
            ..FirmwareBoot::new(Path::new(OVMF_CODE), Path::new(OVMF_VARS), esp)
        },
    )
}

/// Every `nixboot-status:` line (one per boot that reached the init), in order.
fn status_lines(console: &str) -> Vec<StatusLine> {
    console
        .lines()
        .filter_map(|l| l.find(STATUS_MARKER).map(|i| &l[i..]))
        .filter_map(|l| StatusLine::parse(l.trim_end()).ok())
        .collect()
}

/// The generation marker of each kernel's `Command line:` (one per boot), in order.
fn booted_generations(console: &str) -> Vec<String> {
    console
        .lines()
        .filter(|l| l.contains("Command line:"))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("generation-")))
        .map(str::to_string)
        .collect()
}

/// The entry file names in the ESP's loader/entries, sorted.
fn entry_names(esp: &Path) -> Vec<String> {
    let out = mtools("mdir", esp, &["-b", "::/loader/entries"]);
    let mut names: Vec<String> = out
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .filter(|n| n.ends_with(".conf"))
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

#[test]
fn broken_generation_is_tried_then_rolled_back() {
    let test = "broken_generation_is_tried_then_rolled_back";
    let Some(kit) = kit(test) else { return };
    let Some(()) = firmware_parts(test) else {
        return;
    };
    if !Path::new(BASH_STATIC).is_file() {
        let why = format!("{BASH_STATIC} is missing (.ci/setup-real-parts installs bash-static)");
        return artifacts::skip(test, &why);
    }
    let probe = kit.probe_store("store");
    let good_init = healthy_generation_1(&kit, test, &probe);
    let initrd = embedded_initrd(&kit, &probe, &good_init);
    // Generation 2's toplevel is not in this store: its init= names a missing path, as a
    // generation whose stage 2 cannot start.
    let broken_init = format!("/nix/store/{}/init", fake_store_name(test, "generation-2"));
    let good = format!("nixos-generation-1+{TRIES}.conf");
    let bad = format!("nixos-generation-2+{TRIES}.conf");
    let esp = make_esp(
        &kit,
        &initrd,
        &[
            (good.clone(), entry(1, &good_init)),
            (bad.clone(), entry(2, &broken_init)),
        ],
    );
    assert_eq!(entry_names(&esp), [good, bad]);

    let run = run_firmware(&kit, &esp);
    if std::env::var_os("NIXBOOT_TEST_CONSOLE").is_some() {
        eprintln!("--- {test} console ---\n{}", run.console);
    }
    assert_tried_then_rolled_back(test, &run, &broken_init, &good_init, &probe.init);
    let blessed = format!(
        "nixos-generation-1+{}-1.conf -> nixos-generation-1.conf",
        TRIES - 1
    );
    assert!(
        run.console.contains(&blessed),
        "no `{blessed}` on the console"
    );

    // Generation 2 spent (0 left, TRIES done); generation 1 tried once, then blessed.
    let names = entry_names(&esp);
    eprintln!("{test}: ESP entries afterwards: {names:?}");
    assert_eq!(
        names,
        [
            "nixos-generation-1.conf".to_string(),
            format!("nixos-generation-2+0-{TRIES}.conf"),
        ]
    );
    // Renamed, not rewritten: the entry still names the broken init.
    let text = mtools("mtype", &esp, &[&format!("::/loader/entries/{}", names[1])]);
    assert!(text.contains(&broken_init), "{text}");
}

/// Debian's static bash, for the module's bless-boot.sh (the guest has no libc).
const BASH_STATIC: &str = "/bin/bash-static";

/// Generation 1's toplevel: a stage 2 that mounts efivarfs and the ESP (a bare FAT on the
/// first virtio disk), runs the module's bless-boot.sh with busybox's tools, unmounts, and
/// execs the probe (`generation-1` as its argument). Returns its init's guest path.
fn healthy_generation_1(kit: &Kit, test: &str, probe: &ProbeStore) -> String {
    let name = fake_store_name(test, "generation-1");
    let dir = probe.store.join(&name);
    fs::create_dir_all(&dir).unwrap();
    fs::copy(kit.busybox(), dir.join("busybox")).unwrap();
    fs::copy(BASH_STATIC, dir.join("bash")).unwrap();
    let bless = artifacts::workspace_root().join("nixos/modules/generations/bless-boot.sh");
    fs::copy(bless, dir.join("bless-boot.sh")).unwrap();
    let g = format!("/nix/store/{name}");
    let script = format!(
        "#!{g}/busybox sh\n\
         {g}/busybox mkdir -p /bin /boot && {g}/busybox --install -s /bin\n\
         export PATH=/bin\n\
         mount -t efivarfs efivarfs /sys/firmware/efi/efivars\n\
         i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done\n\
         mount -t vfat /dev/vda /boot && ESP=/boot {g}/bash {g}/bless-boot.sh\n\
         echo \"BLESS-EXIT $?\"; umount /boot\n\
         exec {} generation-1\n",
        probe.init
    );
    fs::write(dir.join("init"), script).unwrap();
    common::chmod(&dir.join("init"), 0o755);
    format!("{g}/init")
}

/// An initrd with the store inside (the probe and generation 1: no virtiofs), the modules
/// for the ESP on a virtio disk and for efivarfs.
fn embedded_initrd(kit: &Kit, probe: &ProbeStore, good_init: &str) -> PathBuf {
    let list = kit.path("store-paths");
    let system = probe.system.file_name().unwrap().to_str().unwrap();
    let g1 = Path::new(good_init).parent().unwrap();
    fs::write(&list, format!("/nix/store/{system}\n{}\n", g1.display())).unwrap();
    let modules = [
        "virtio_pci",
        "virtio_blk",
        "vfat",
        "nls_cp437",
        "nls_ascii",
        "efivarfs",
    ];
    let opts = mkinitrd::BuildOptions {
        closure: Some(probe.store.join(g1.file_name().unwrap())),
        output: kit.path("initrd"),
        init: Some(kit.bins.init.clone()),
        kernel_modules: Some(kit.env.modules.clone()),
        modules: modules.iter().map(|m| m.to_string()).collect(),
        embed_store: Some(mkinitrd::EmbedStore {
            store_paths: Some(list),
            store_dir: Some(probe.store.clone()),
        }),
        ..Default::default()
    };
    mkinitrd::build(&opts).expect("mkinitrd");
    opts.output
}

/// Generation 2 started exactly [`TRIES`] times, each failing with the init's reboot and
/// naming the missing init, then generation 1 blessed its entry and reached the probe.
fn assert_tried_then_rolled_back(
    test: &str,
    run: &Outcome,
    broken_init: &str,
    good: &str,
    probe: &str,
) {
    let tail: Vec<&str> = run.console.lines().rev().take(60).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    let ctx = format!("\n--- console tail ---\n{}", tail.join("\n"));
    assert!(
        !run.timed_out && run.stopped.is_none(),
        "no power off within {RUN_TIMEOUT:?} / {TRIES} tries ({:?}){ctx}",
        run.stopped
    );
    let gens = booted_generations(&run.console);
    let statuses = status_lines(&run.console);
    eprintln!("{test}: {:?}; kernels started with {gens:?}", run.elapsed);
    for s in &statuses {
        eprintln!("{test}: {s}");
    }
    let mut want = vec!["generation-2".to_string(); TRIES];
    want.push("generation-1".into());
    assert_eq!(gens, want, "{ctx}");
    assert_eq!(statuses.len(), TRIES + 1, "{ctx}");
    for s in &statuses[..TRIES] {
        assert_eq!(s.get("status"), Some("failed"), "{s}");
        assert_eq!(s.get("action"), Some("reboot"), "{s}");
        assert!(s.error().unwrap_or("").contains(broken_init), "{s}");
    }
    let last = &statuses[TRIES];
    assert_eq!(
        (last.get("status"), last.get("init")),
        (Some("ok"), Some(good))
    );
    let report = probe_report(&run.console).unwrap_or_else(|| panic!("no probe report{ctx}"));
    assert_eq!(report.argv, [probe, "generation-1"], "{report}");
    assert!(
        run.console.contains("BLESS-EXIT 0"),
        "bless-boot.sh failed{ctx}"
    );
}

/// The probe's report from a multi-boot console (the launcher's parser wants one boot).
fn probe_report(console: &str) -> Option<ProbeReport> {
    let facts = nixboot_launcher::console::ConsoleFacts::parse(console);
    facts.probe.and_then(|v| ProbeReport::from_value(&v).ok())
}
