//! Booting through UEFI firmware: OVMF's files, a copy of its variable store per boot,
//! Secure Boot (SMM, secure flash) with our own test key enrolled by virt-firmware, and a
//! watched run that stops at the firmware's refusal of an image.

use super::{run_watched, Kit};
use nixboot_launcher::qemu::{Outcome, VmConfig};
use nixboot_launcher::Machine;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// Secure Boot variables with Microsoft's keys; ours are enrolled into a copy.
pub const OVMF_VARS_MS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";
/// Where `.ci/setup` says it installed virt-firmware's `virt-fw-vars` (a venv in its cache).
const VIRT_FW_VARS_ENV: &str = "NIXBOOT_VIRT_FW_VARS";
/// What OVMF's boot manager prints when an image fails verification: `Access Denied` for
/// an unsigned or unknown image, `Security Violation` for a bad signature.
pub const REFUSALS: [&str; 2] = ["Access Denied", "Security Violation"];

/// Given the console so far, a reason to stop the run (or `None` to go on).
pub type StopWhen<'a> = &'a dyn Fn(&str) -> Option<String>;

/// One firmware boot: OVMF's code, the variables to copy, the disk, Secure Boot or not.
pub struct FirmwareBoot<'a> {
    pub code: &'a Path,
    pub vars: &'a Path,
    pub disk: &'a Path,
    pub secure: bool,
    /// Stop when no kernel started within this bound (a refused image leaves OVMF waiting
    /// at its menu); else the harness's BOOT_TIMEOUT bounds it.
    pub bound: Option<Duration>,
    /// More QEMU arguments (a TPM).
    pub extra: &'a [String],
    /// Let the guest reboot (boot counting: several boots in one run, until it powers off).
    pub reboot: bool,
    /// The whole run's limit (default: the harness's BOOT_TIMEOUT).
    pub timeout: Option<Duration>,
    /// Stops the run when it returns a reason, given the console so far (a runaway loop).
    pub stop: Option<StopWhen<'a>>,
}

impl<'a> FirmwareBoot<'a> {
    /// A plain boot of `disk`: no Secure Boot, no reboots, the harness's limits.
    pub fn new(code: &'a Path, vars: &'a Path, disk: &'a Path) -> Self {
        FirmwareBoot {
            code,
            vars,
            disk,
            secure: false,
            bound: None,
            extra: &[],
            reboot: false,
            timeout: None,
            stop: None,
        }
    }
}

/// Boots `b.disk` under OVMF (q35; with SMM and a secure flash for Secure Boot) with a copy
/// of `b.vars`; stops at the firmware's refusal, at `b.bound` or when `b.stop` says so.
pub fn boot(kit: &Kit, b: &FirmwareBoot) -> Outcome {
    let copy = kit.path(&format!(
        "{}.vars",
        b.disk.file_name().unwrap().to_str().unwrap()
    ));
    std::fs::copy(b.vars, &copy).unwrap();
    let mut cfg = VmConfig::new(&kit.env.kernel, None, String::new());
    cfg.qemu = kit.env.qemu.clone();
    cfg.firmware_boot = true;
    cfg.reboot = b.reboot;
    cfg.timeout = b.timeout;
    let console = kit.path("console.log");
    cfg.console_file = Some(console.clone());
    // OVMF's Secure Boot build needs SMM, which only q35 has. QEMU merges `-machine smm=on`
    // into the launcher's own `-machine q35,...`.
    cfg.machine = Machine::Q35;
    let mut args = Vec::new();
    if b.secure {
        args.extend([
            "-machine".into(),
            "smm=on".into(),
            "-global".into(),
            "driver=cfi.pflash01,property=secure,value=on".into(),
        ]);
    }
    args.extend([
        "-drive".into(),
        format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            b.code.display()
        ),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=1,file={}", copy.display()),
        "-drive".into(),
        format!("file={},format=raw,if=virtio", b.disk.display()),
    ]);
    args.extend(b.extra.iter().cloned());
    cfg.extra_qemu_args = args;
    let bound = b.bound;
    run_watched(&kit.test, cfg, &mut |elapsed| {
        let text = std::fs::read(&console).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        if let Some(r) = REFUSALS.iter().find(|r| text.contains(*r)) {
            return Some(format!("the firmware refused the image: {r}"));
        }
        if let Some(why) = b.stop.and_then(|stop| stop(&text)) {
            return Some(why);
        }
        let late = bound.is_some_and(|b| elapsed > b);
        (late && !text.contains("Linux version")).then(|| format!("no kernel within {bound:?}"))
    })
}

/// `$NIXBOOT_VIRT_FW_VARS`, else where `.ci/setup` puts it by default.
pub fn virt_fw_vars() -> PathBuf {
    if let Some(p) = std::env::var_os(VIRT_FW_VARS_ENV).filter(|v| !v.is_empty()) {
        return p.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    let cache = std::env::var_os("NIXBOOT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&home).join(".cache/nixboot"));
    cache.join("virt-firmware-26.10/bin/virt-fw-vars")
}

/// Runs `cmd`, panicking with its stderr unless it succeeds; its stdout.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One key pair (`openssl req -x509`), enrolled as PK, KEK and db into a copy of OVMF's
/// Secure Boot variables `vars`, Secure Boot on; returns (key, cert, enrolled vars).
pub fn enroll_test_keys(
    kit: &Kit,
    vars: &Path,
    virt_fw_vars: &Path,
) -> (PathBuf, PathBuf, PathBuf) {
    let key = kit.path("db.key");
    let cert = kit.path("db.crt");
    sh(Command::new("openssl")
        .args([
            "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
        ])
        .args(["-subj", "/CN=nixboot test Secure Boot key/", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    let enrolled = kit.path("secure.vars");
    let owner = "a0baa8a3-041d-48a8-bc87-c36d121b5e3d";
    let mut cmd = Command::new(virt_fw_vars);
    cmd.arg("-i").arg(vars);
    for opt in ["--set-pk", "--add-kek", "--add-db"] {
        cmd.args([opt, owner]).arg(&cert);
    }
    sh(cmd.arg("--secure-boot").arg("-o").arg(&enrolled));
    (key, cert, enrolled)
}

/// systemd-stub, OVMF's `code` and `vars` and the FAT tools a firmware boot's ESP needs, or
/// `None` after a recorded skip naming the missing package. Returns the code and vars paths.
pub fn require_firmware(test: &str, code: &str, vars: &str) -> Option<(PathBuf, PathBuf)> {
    use qemu_tests::artifacts::{require_file, require_tool};
    require_file(
        test,
        Path::new(mkinitrd::uki::DEFAULT_STUB),
        "systemd-boot-efi",
    )?;
    let code = require_file(test, Path::new(code), "ovmf")?;
    let vars = require_file(test, Path::new(vars), "ovmf")?;
    for tool in ["mkfs.vfat", "mmd", "mcopy"] {
        require_tool(test, tool)?;
    }
    Some((code, vars))
}
