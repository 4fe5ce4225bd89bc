//! Choosing between KVM and TCG.
//!
//! `/dev/kvm` existing (even opening) is not enough on some hosts: nested KVM can crash
//! QEMU at start ("failed to set MSR") or hang before the kernel prints anything. So in
//! `auto` mode a short trial boot decides, and the verdict is cached per host boot.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Environment variable forcing the choice: `kvm`, `tcg` or `auto` (default).
pub const ACCEL_ENV: &str = "NIXBOOT_ACCEL";
/// How long the trial boot may take to print the kernel's first line.
const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// QEMU arguments selecting the accelerator and a CPU model that suits it.
    pub fn qemu_args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg", "-cpu", "max"],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The accelerator to use and why (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    pub accel: Accel,
    pub reason: String,
}

/// Decides according to [`ACCEL_ENV`]; `kernel` is used for the trial boot.
pub fn choose(qemu: &Path, kernel: &Path) -> AccelChoice {
    let setting = std::env::var(ACCEL_ENV).unwrap_or_default();
    match setting.trim() {
        "kvm" => AccelChoice {
            accel: Accel::Kvm,
            reason: format!("{ACCEL_ENV}=kvm"),
        },
        "tcg" => AccelChoice {
            accel: Accel::Tcg,
            reason: format!("{ACCEL_ENV}=tcg"),
        },
        "" | "auto" => auto(qemu, kernel),
        other => {
            let mut c = auto(qemu, kernel);
            c.reason = format!(
                "{ACCEL_ENV}={other:?} is not kvm|tcg|auto, using auto: {}",
                c.reason
            );
            c
        }
    }
}

/// Serialises trial boots of parallel tests in one process; the second one reads the cache.
static AUTO_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn auto(qemu: &Path, kernel: &Path) -> AccelChoice {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return AccelChoice {
            accel: Accel::Tcg,
            reason: format!("/dev/kvm cannot be opened ({e})"),
        };
    }
    let _guard = AUTO_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let key = cache_key(qemu);
    let cache = cache_file();
    if let Some(c) = read_cache(&cache, &key) {
        return c;
    }
    let choice = match trial_boot(qemu, kernel, PROBE_TIMEOUT) {
        Ok(()) => AccelChoice {
            accel: Accel::Kvm,
            reason: "a trial boot under KVM reached the kernel's first console line".into(),
        },
        Err(why) => AccelChoice {
            accel: Accel::Tcg,
            reason: format!("KVM does not work here: {why}"),
        },
    };
    write_cache(&cache, &key, &choice);
    choice
}

/// Boots `kernel` under KVM without an initrd and waits for "Linux version" on the serial
/// console; whatever happens first (that line, a QEMU error, the timeout) is the verdict.
pub fn trial_boot(qemu: &Path, kernel: &Path, timeout: Duration) -> Result<(), String> {
    let mut cmd = Command::new(qemu);
    crate::die_with_parent(&mut cmd);
    let mut child = cmd
        .args(Accel::Kvm.qemu_args())
        .args(["-m", "256", "-display", "none", "-nodefaults", "-no-reboot"])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
    let (tx, rx) = mpsc::channel::<bool>();
    let mut out = child.stdout.take();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Some(Ok(n)) = out.as_mut().map(|o| o.read(&mut buf)) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(13).any(|w| w == b"Linux version") {
                let _ = tx.send(true);
                return;
            }
        }
        let _ = tx.send(false);
    });
    let mut err = child.stderr.take();
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let start = Instant::now();
    let verdict = match rx.recv_timeout(timeout) {
        Ok(true) => Ok(()),
        Ok(false) => Err(None),
        Err(_) => Err(Some(start.elapsed())),
    };
    let _ = child.kill();
    let status = child.wait();
    let stderr = err_thread.join().unwrap_or_default();
    verdict.map_err(|timed_out| {
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        match timed_out {
            Some(t) => format!("no kernel output within {}s under KVM", t.as_secs()),
            None => format!(
                "QEMU exited ({}) before the kernel printed anything{}",
                status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                if last.is_empty() {
                    String::new()
                } else {
                    format!(": {last}")
                }
            ),
        }
    })
}

/// Identifies this host boot and QEMU build: a verdict is only reused for the same pair.
fn cache_key(qemu: &Path) -> String {
    let version = Command::new(qemu)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default();
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    format!(
        "qemu={} host-kernel={} boot={}",
        version.trim(),
        release,
        boot_id.trim()
    )
}

fn cache_file() -> PathBuf {
    let uid = rustix::process::getuid().as_raw();
    std::env::temp_dir().join(format!("nixboot-accel-verdict.{uid}"))
}

/// Format: key line, accel line, reason line.
fn read_cache(path: &Path, key: &str) -> Option<AccelChoice> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    if lines.next()? != key {
        return None;
    }
    let accel = match lines.next()? {
        "kvm" => Accel::Kvm,
        "tcg" => Accel::Tcg,
        _ => return None,
    };
    let reason = lines.next().unwrap_or("");
    Some(AccelChoice {
        accel,
        reason: format!("{reason} (cached in {})", path.display()),
    })
}

fn write_cache(path: &Path, key: &str, c: &AccelChoice) {
    // Written to a temporary name and renamed so parallel tests never read half a file.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let reason = c.reason.replace('\n', " ");
    if std::fs::write(&tmp, format!("{key}\n{}\n{reason}\n", c.accel)).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_round_trip_and_key_mismatch() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("verdict");
        let c = AccelChoice {
            accel: Accel::Tcg,
            reason: "KVM does not work here: QEMU exited\nbadly".into(),
        };
        write_cache(&p, "k1", &c);
        let r = read_cache(&p, "k1").unwrap();
        assert_eq!(r.accel, Accel::Tcg);
        assert!(r
            .reason
            .starts_with("KVM does not work here: QEMU exited badly (cached"));
        assert!(read_cache(&p, "k2").is_none());
    }
}
