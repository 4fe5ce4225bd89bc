//! `mkinitrd --uki`: one PE file (systemd-stub with .osrel, .cmdline, .initrd and .linux)
//! that OVMF boots from an ESP, with no -kernel/-initrd/-append: the probe closure travels
//! in the UKI's initrd (--embed-store) and must reach stage 2. Under Secure Boot with our
//! own keys enrolled (virt-firmware), the sbsign-signed UKI boots and an unsigned or
//! tampered one is refused by the firmware. Also: two runs give the same bytes, and bad
//! inputs (no kernel, a kernel or stub that is not what it must be) write nothing.
//!
//! Guest kernels: 6.1 only (firmware: the UKI under OVMF and Secure Boot).

mod common;

use common::firmware::{self, sh, FirmwareBoot};
use common::firmware::{OVMF_CODE, OVMF_CODE_SECBOOT, OVMF_VARS, OVMF_VARS_MS};
use common::{assert_booted, context, kit, Kit, ProbeStore};
use nixboot_launcher::qemu::Outcome;
use qemu_tests::artifacts::{self, require_file, require_tool};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A [`Kit`] with what a firmware boot needs.
struct Uki {
    kit: Kit,
    probe: ProbeStore,
    code: PathBuf,
    vars: PathBuf,
}

/// The kit, OVMF, the stub and the FAT tools, or `None` after a loud SKIP.
fn uki_kit(test: &str, code: &str, vars: &str) -> Option<Uki> {
    let kit = kit(test)?;
    let (code, vars) = common::firmware::require_firmware(test, code, vars)?;
    let probe = kit.probe_store("store");
    Some(Uki {
        kit,
        probe,
        code,
        vars,
    })
}

impl Uki {
    /// The UKI of the probe closure, its store embedded: nothing to share, no modules.
    fn build(&self, name: &str) -> PathBuf {
        self.build_with_init(name, &self.probe.init)
    }

    /// [`Uki::build`] with another next init (a guest path in the probe's store).
    fn build_with_init(&self, name: &str, init: &str) -> PathBuf {
        let build = mkinitrd::BuildOptions {
            closure: Some(self.probe.system.clone()),
            output: self.kit.path("unused"),
            init: Some(self.kit.bins.init.clone()),
            embed_store: Some(mkinitrd::EmbedStore {
                store_paths: None,
                store_dir: Some(self.probe.store.clone()),
            }),
            ..Default::default()
        };
        let cmdline = cmdline(init);
        let uki = mkinitrd::uki::UkiOptions {
            output: self.kit.path(name),
            stub: mkinitrd::uki::DEFAULT_STUB.into(),
            linux: self.kit.env.kernel.clone(),
            initrd: None,
            cmdline: Some(mkinitrd::uki::Text::Inline(cmdline)),
            os_release: None,
            ucode: None,
        };
        let report = mkinitrd::uki::build(&build, &uki).expect("mkinitrd --uki");
        eprintln!(
            "{}: UKI {} bytes {:?}",
            self.kit.test, report.size, report.sections
        );
        uki.output
    }

    /// A FAT ESP holding `efi` as the removable-media path EFI/BOOT/BOOTX64.EFI, which
    /// OVMF boots with no boot entry.
    fn esp(&self, efi: &Path, name: &str) -> PathBuf {
        let img = self.kit.path(name);
        let kib = std::fs::metadata(efi).unwrap().len() / 1024 + 8192;
        sh(Command::new("mkfs.vfat")
            .arg("-C")
            .arg(&img)
            .arg(kib.to_string()));
        sh(Command::new("mmd")
            .arg("-i")
            .arg(&img)
            .args(["::/EFI", "::/EFI/BOOT"]));
        sh(Command::new("mcopy")
            .arg("-i")
            .arg(&img)
            .arg(efi)
            .arg("::/EFI/BOOT/BOOTX64.EFI"));
        img
    }

    /// Boots the ESP under OVMF (q35; with SMM and a secure flash for Secure Boot) with a
    /// copy of `vars`; stops at the firmware's refusal or when no kernel started within
    /// `bound` (a refused image leaves OVMF waiting at its menu); else the harness's
    /// BOOT_TIMEOUT bounds it.
    fn boot(&self, esp: &Path, vars: &Path, secure: bool, bound: Option<Duration>) -> Outcome {
        self.boot_with(esp, vars, secure, bound, &[])
    }

    /// [`Uki::boot`] with more QEMU arguments (a TPM).
    fn boot_with(
        &self,
        esp: &Path,
        vars: &Path,
        secure: bool,
        bound: Option<Duration>,
        extra: &[String],
    ) -> Outcome {
        firmware::boot(
            &self.kit,
            &FirmwareBoot {
                secure,
                bound,
                extra,
                ..FirmwareBoot::new(&self.code, vars, esp)
            },
        )
    }
}

/// `.cmdline`: `init` as the next init, two arguments for it; no `pci=noacpi` (q35 with
/// OVMF has ACPI).
fn cmdline(init: &str) -> String {
    format!("console=ttyS0,115200 panic=-1 root=tmpfs init={init} -- alpha beta")
}

/// The probe ran as PID 1 on the tmpfs root, its store the embedded one, after the
/// firmware loaded the UKI (no -kernel: the stub handed the kernel its initrd).
fn assert_uki_booted(u: &Uki, o: &Outcome) {
    let ctx = context(o);
    assert!(o.stopped.is_none(), "{:?}{ctx}", o.stopped);
    let p = assert_booted(o);
    assert_eq!(p.argv, [u.probe.init.as_str(), "alpha", "beta"], "{p}");
    assert_eq!(p.root_fstype.as_deref(), Some("tmpfs"), "{p}");
    assert!(
        o.console.contains("BdsDxe: starting"),
        "not booted by OVMF{ctx}"
    );
}

#[test]
fn uki_boots_under_ovmf_from_an_esp() {
    let test = "uki_boots_under_ovmf_from_an_esp";
    let Some(u) = uki_kit(test, OVMF_CODE, OVMF_VARS) else {
        return;
    };
    let efi = u.build("uki.efi");
    let esp = u.esp(&efi, "esp.img");
    let o = u.boot(&esp, &u.vars, false, None);
    eprintln!(
        "{test}: QEMU start -> kernel {:?}, -> probe {:?}, total {:?}",
        o.kernel_started_at, o.probe_at, o.elapsed
    );
    assert_uki_booted(&u, &o);
}

/// `efi` with one byte of its `.cmdline` changed (`console=` -> `Console=`): the
/// command line is found as the one place the file holds it (the initrd is compressed).
fn tamper(efi: &Path, out: &Path, cmdline: &str) {
    let mut bytes = std::fs::read(efi).unwrap();
    let needle = cmdline.as_bytes();
    let hits: Vec<usize> = (0..bytes.len() - needle.len())
        .filter(|&i| bytes[i..i + needle.len()] == *needle)
        .collect();
    assert_eq!(hits.len(), 1, "the command line is not in one place");
    bytes[hits[0]] = b'C';
    std::fs::write(out, bytes).unwrap();
}

#[test]
fn secure_boot_takes_the_signed_uki_and_refuses_unsigned_or_tampered_ones() {
    let test = "secure_boot_takes_the_signed_uki_and_refuses_unsigned_or_tampered_ones";
    let Some(u) = uki_kit(test, OVMF_CODE_SECBOOT, OVMF_VARS_MS) else {
        return;
    };
    let Some(sbsign) = require_tool(test, "sbsign") else {
        return;
    };
    let Some(virt_fw_vars) = require_file(test, &firmware::virt_fw_vars(), "virt-firmware (PyPI)")
    else {
        return;
    };
    let (key, cert, vars) = firmware::enroll_test_keys(&u.kit, &u.vars, &virt_fw_vars);
    let unsigned = u.build("unsigned.efi");
    let signed = u.kit.path("signed.efi");
    sh(Command::new(sbsign)
        .arg("--key")
        .arg(&key)
        .arg("--cert")
        .arg(&cert)
        .arg("--output")
        .arg(&signed)
        .arg(&unsigned));
    let tampered = u.kit.path("tampered.efi");
    tamper(&signed, &tampered, &cmdline(&u.probe.init));

    let o = u.boot(&u.esp(&signed, "signed.img"), &vars, true, None);
    eprintln!(
        "{test}: signed: kernel at {:?}, total {:?}",
        o.kernel_started_at, o.elapsed
    );
    assert!(
        o.console.contains("Secure Boot is enabled"),
        "SB off?{}",
        context(&o)
    );
    assert_uki_booted(&u, &o);
    for (what, efi) in [("unsigned", &unsigned), ("tampered", &tampered)] {
        // The refusal is printed within seconds of the firmware's start; the bound only
        // catches a firmware that would say nothing.
        let bound = Some(Duration::from_secs(150));
        let o = u.boot(&u.esp(efi, &format!("{what}.img")), &vars, true, bound);
        let ctx = context(&o);
        eprintln!("{test}: {what}: {:?} after {:?}", o.stopped, o.elapsed);
        assert!(
            o.stopped.as_deref().is_some_and(|s| s.contains("refused")),
            "{what}: {:?}{ctx}",
            o.stopped
        );
        assert!(!o.console.contains("Linux version"), "{what} ran{ctx}");
        assert!(o.status.is_none() && o.probe.is_none(), "{what} ran{ctx}");
    }
}

/// The mkinitrd program, as users run it.
fn mkinitrd_cli() -> PathBuf {
    artifacts::host_binary("mkinitrd", "mkinitrd").expect("building mkinitrd")
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn uki_cli_is_reproducible_and_refuses_bad_input_writing_nothing() {
    let test = "uki_cli_is_reproducible_and_refuses_bad_input_writing_nothing";
    let Some(u) = uki_kit(test, OVMF_CODE, OVMF_VARS) else {
        return;
    };
    let cli = mkinitrd_cli();
    let dir = u.kit.path("out");
    std::fs::create_dir(&dir).unwrap();
    let run = |extra: &[&str], out: &Path| {
        let mut cmd = Command::new(&cli);
        cmd.arg("--closure")
            .arg(&u.probe.system)
            .arg("--init")
            .arg(&u.kit.bins.init)
            .arg("--uki")
            .arg(out)
            .args(extra)
            .env_remove("SOURCE_DATE_EPOCH");
        cmd.output().unwrap()
    };
    let kernel = u.kit.env.kernel.to_str().unwrap();
    let (a, b) = (dir.join("a.efi"), dir.join("b.efi"));
    for out in [&a, &b] {
        let o = run(&["--linux", kernel], out);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let bytes = std::fs::read(&a).unwrap();
    assert!(
        bytes == std::fs::read(&b).unwrap(),
        "two runs, different UKIs"
    );
    assert!(
        mkinitrd::uki::check_bzimage(&bytes).is_err(),
        "a UKI is not a bzImage"
    );

    // Bad input: usage error 2 without a kernel, 1 for a kernel or stub of the wrong kind;
    // the existing output stays as it was and no temporary file is left.
    let out = dir.join("b.efi");
    let text = dir.join("text");
    std::fs::write(&text, "not a PE file").unwrap();
    let init = u.kit.bins.init.to_str().unwrap();
    let stub = mkinitrd::uki::DEFAULT_STUB;
    let cases: [(&[&str], i32, &str); 4] = [
        (&[], 2, "--linux"),
        (&["--linux", stub], 1, "not an x86 bzImage"),
        (&["--linux", init], 1, "not an x86 bzImage"),
        (
            &["--linux", kernel, "--stub", text.to_str().unwrap()],
            1,
            "not a PE image",
        ),
    ];
    for (extra, code, says) in cases {
        let o = run(extra, &out);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{extra:?}: {err}");
        assert!(err.contains(says), "{extra:?}: {err}");
        assert!(
            std::fs::read(&out).unwrap() == bytes,
            "{extra:?} touched the output"
        );
        assert_eq!(listing(&dir), ["a.efi", "b.efi", "text"], "{extra:?}");
    }
}

/// A software TPM 2.0 (swtpm) on a socket, stopped when dropped.
struct Swtpm {
    child: std::process::Child,
    socket: PathBuf,
}

impl Swtpm {
    fn start(u: &Uki, swtpm: &Path) -> Swtpm {
        let state = u.kit.path("tpm-state");
        std::fs::create_dir(&state).unwrap();
        let socket = u.kit.path("swtpm.sock");
        let child = Command::new(swtpm)
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", state.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", socket.display()))
            .spawn()
            .expect("swtpm");
        let mut t = Swtpm { child, socket };
        for _ in 0..100 {
            if t.socket.exists() {
                return t;
            }
            assert!(t.child.try_wait().unwrap().is_none(), "swtpm exited");
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("swtpm made no socket in 10 s");
    }

    /// QEMU's TPM TIS device backed by this swtpm.
    fn qemu_args(&self) -> Vec<String> {
        vec![
            "-chardev".into(),
            format!("socket,id=chrtpm,path={}", self.socket.display()),
            "-tpmdev".into(),
            "emulator,id=tpm0,chardev=chrtpm".into(),
            "-device".into(),
            "tpm-tis,tpmdev=tpm0".into(),
        ]
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-binary"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success() && out.stdout.len() == 32);
    out.stdout
}

/// PCR 11 (SHA-256 bank) as systemd-stub 252 leaves it: for each section of its table
/// present in the image, in the table's order (.linux first, whatever the file order), its
/// name with the NUL, then its bytes in memory (VirtualSize, so the kernel's zero-filled
/// tail too), each hashed and extended into a PCR that starts at zero.
fn expected_pcr11(efi: &[u8]) -> String {
    let sections = mkinitrd::uki::pe::sections_in_memory(efi).unwrap();
    let mut pcr = vec![0u8; 32];
    for name in [
        ".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey",
    ] {
        let Some((_, data)) = sections.iter().find(|(n, _)| n == name) else {
            continue;
        };
        let label = format!("{name}\0");
        for event in [label.as_bytes(), data] {
            pcr.extend(sha256(event));
            pcr = sha256(&pcr);
        }
    }
    pcr.iter().map(|b| format!("{b:02X}")).collect()
}

#[test]
fn systemd_stub_measures_the_uki_into_pcr_11() {
    let test = "systemd_stub_measures_the_uki_into_pcr_11";
    let Some(u) = uki_kit(test, OVMF_CODE, OVMF_VARS) else {
        return;
    };
    let Some(swtpm) = require_tool(test, "swtpm") else {
        return;
    };
    // Stage 2: copy PCRs 11 and 12 where the probe reports test files, then the probe.
    let sys = u.probe.system.file_name().unwrap().to_str().unwrap();
    std::fs::copy(u.kit.busybox(), u.probe.system.join("busybox")).unwrap();
    let script = u.probe.system.join("pcr-init");
    std::fs::write(
        &script,
        format!(
            "#!/nix/store/{sys}/busybox sh\nB=/nix/store/{sys}/busybox\n$B mkdir -p /run/nixboot-test\n\
             for i in 11 12; do $B cat /sys/class/tpm/tpm0/pcr-sha256/$i > /run/nixboot-test/pcr$i 2>&1; done\n\
             exec {} \"$@\"\n",
            u.probe.init
        ),
    )
    .unwrap();
    common::chmod(&script, 0o755);
    let efi = u.build_with_init("uki.efi", &format!("/nix/store/{sys}/pcr-init"));
    let expected = expected_pcr11(&std::fs::read(&efi).unwrap());
    let tpm = Swtpm::start(&u, &swtpm);
    let esp = u.esp(&efi, "esp.img");
    let o = u.boot_with(&esp, &u.vars, false, None, &tpm.qemu_args());
    drop(tpm);
    assert_uki_booted(&u, &o);
    let p = common::probe(&o).unwrap();
    let got = |i: u32| {
        p.test_files
            .get(&format!("pcr{i}"))
            .map(|s| s.trim().to_owned())
    };
    eprintln!(
        "{test}: PCR 11 {:?} (expected {expected}), PCR 12 {:?}",
        got(11),
        got(12)
    );
    assert_eq!(got(11), Some(expected), "{p}");
    // Nothing is measured into PCR 12 here: the command line is the UKI's own (252 measures
    // only one given by the boot loader), and there are no credentials or sysexts.
    assert_eq!(got(12), Some("0".repeat(64)), "{p}");
}
