//! One virtiofsd process per shared directory.

use crate::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The virtio-fs device's tag field is 36 bytes.
const MAX_TAG_LEN: usize = 36;

/// A host directory the guest mounts with `mount -t virtiofs TAG DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub tag: String,
    pub dir: PathBuf,
    /// Served with `--readonly`, so even a guest that mounts it rw cannot write the host.
    pub readonly: bool,
    /// Served with `--cache=always`: only for directories nothing changes while a guest runs
    /// (a store built once); a real systemd boots several times faster than with `never`.
    pub immutable: bool,
}

impl Share {
    pub fn new(tag: &str, dir: impl Into<PathBuf>) -> Result<Share> {
        let dir = dir.into();
        // QEMU's option parser treats `,` specially and `=` would be ambiguous in --share.
        if tag.is_empty()
            || tag.len() > MAX_TAG_LEN
            || !tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        {
            return Err(Error::BadShare(
                format!("{tag}={}", dir.display()),
                format!("the tag must be 1-{MAX_TAG_LEN} characters of [A-Za-z0-9_.-]"),
            ));
        }
        if !dir.is_dir() {
            return Err(Error::BadShare(
                format!("{tag}={}", dir.display()),
                "not a directory".into(),
            ));
        }
        Ok(Share {
            tag: tag.to_string(),
            dir,
            readonly: false,
            immutable: false,
        })
    }

    pub fn readonly(mut self) -> Share {
        self.readonly = true;
        self
    }

    /// Read-only, and cached by the guest without revalidation (see [`Share::immutable`]).
    pub fn immutable(mut self) -> Share {
        self.readonly = true;
        self.immutable = true;
        self
    }
}

impl FromStr for Share {
    type Err = Error;

    /// `TAG=DIR`, read-write; `TAG=DIR:ro` read-only (`:rw` says read-write explicitly).
    fn from_str(s: &str) -> Result<Share> {
        let (tag, dir) = s
            .split_once('=')
            .ok_or_else(|| Error::BadShare(s.to_string(), "expected TAG=DIR[:ro]".into()))?;
        match (dir.strip_suffix(":ro"), dir.strip_suffix(":rw")) {
            (Some(d), _) => Ok(Share::new(tag, d)?.readonly()),
            (_, Some(d)) => Share::new(tag, d),
            _ => Share::new(tag, dir),
        }
    }
}

/// A running virtiofsd. Killed (and reaped) on drop, so an early error return or a panic
/// in a test does not leave daemons behind.
pub struct Virtiofsd {
    pub share: Share,
    pub socket: PathBuf,
    child: Option<Child>,
    log: Arc<Mutex<Vec<u8>>>,
    log_thread: Option<JoinHandle<()>>,
}

impl Virtiofsd {
    /// Starts virtiofsd and waits (at most `timeout`) until it listens on `socket`.
    pub fn start(bin: &Path, share: &Share, socket: &Path, timeout: Duration) -> Result<Self> {
        let mut child = command(bin, share, socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                start_error(
                    share,
                    format!("cannot run {}: {e}", bin.display()),
                    String::new(),
                )
            })?;
        let (log, log_thread) = collect_output(&mut child);
        let me = Virtiofsd {
            share: share.clone(),
            socket: socket.to_path_buf(),
            child: Some(child),
            log,
            log_thread: Some(log_thread),
        };
        me.wait_listening(timeout)
    }

    /// Returns `self` once its socket exists; fails (with its output) when it exits first
    /// or `timeout` passes.
    fn wait_listening(mut self, timeout: Duration) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.socket.exists() {
                return Ok(self);
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    self.join_log();
                    let reason = format!("exited with {status}");
                    return Err(start_error(&self.share, reason, self.log()));
                }
            }
            if Instant::now() >= deadline {
                self.stop();
                let reason = format!(
                    "its socket {} did not appear within {timeout:?}",
                    self.socket.display()
                );
                return Err(start_error(&self.share, reason, self.log()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything virtiofsd printed so far.
    pub fn log(&self) -> String {
        let buf = self.log.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Stops the daemon: it normally exits by itself once QEMU disconnects, so give it a
    /// moment after SIGTERM before SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                }
                let deadline = Instant::now() + Duration::from_millis(500);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        self.join_log();
    }

    fn join_log(&mut self) {
        if let Some(t) = self.log_thread.take() {
            let _ = t.join();
        }
    }
}

fn start_error(share: &Share, reason: String, log: String) -> Error {
    Error::VirtiofsdStart {
        tag: share.tag.clone(),
        dir: share.dir.clone(),
        reason,
        log,
    }
}

/// The virtiofsd command line for `share`, listening on `socket`.
fn command(bin: &Path, share: &Share, socket: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--socket-path={}", socket.display()))
        .arg(format!("--shared-dir={}", share.dir.display()))
        // As root without namespaces: the namespace sandbox needs privileges CI
        // containers rarely grant, and the guest is ours anyway.
        .arg("--sandbox=none")
        .arg(cache_arg(share))
        .arg("--log-level=warn");
    if share.readonly {
        cmd.arg("--readonly");
    }
    // Its own process group: a Ctrl-C typed at the launcher's terminal must not kill
    // the daemon under a running guest; we stop it ourselves.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    crate::die_with_parent(&mut cmd);
    cmd
}

/// virtiofsd's `--cache`: how long the guest may trust its page cache, dentries and
/// attributes without asking virtiofsd. It is about coherence with changes made on the
/// host, not about durability: guest writes go through to virtiofsd in every mode (no
/// `--writeback` here), so no mode loses a write. `always` (never revalidate) is for
/// directories nothing changes under a running guest, the store and the modules: the
/// fastest, measured in docs/machines.md (a real systemd reached multi-user.target much
/// sooner than with `never`). Anything else, writable or read-only, may be edited on the
/// host while the guest runs (a developer's tree): `never`, so the guest sees every change
/// at once.
fn cache_arg(share: &Share) -> &'static str {
    if share.immutable {
        "--cache=always"
    } else {
        "--cache=never"
    }
}

/// Collects the child's stdout and stderr into one log; the thread ends when both close.
fn collect_output(child: &mut Child) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let log = Arc::clone(&log);
        threads.push(std::thread::spawn(move || collect(stream, &log)));
    }
    let log_thread = std::thread::spawn(move || {
        for t in threads {
            let _ = t.join();
        }
    });
    (log, log_thread)
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn collect(mut stream: Box<dyn Read + Send>, log: &Mutex<Vec<u8>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        if let Ok(mut l) = log.lock() {
            l.extend_from_slice(&buf[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_immutable_shares_are_cached() {
        let t = tempfile::tempdir().unwrap();
        let rw = Share::new("cwd", t.path()).unwrap();
        assert_eq!(cache_arg(&rw), "--cache=never");
        assert_eq!(cache_arg(&rw.clone().readonly()), "--cache=never");
        let store = rw.immutable();
        assert!(store.readonly);
        assert_eq!(cache_arg(&store), "--cache=always");
    }

    #[test]
    fn share_parsing() {
        let t = tempfile::tempdir().unwrap();
        let s: Share = format!("store={}", t.path().display()).parse().unwrap();
        assert_eq!(s.tag, "store");
        assert_eq!(s.dir, t.path());
        assert!(!s.readonly);
        assert!("store".parse::<Share>().is_err());
        assert!(format!("a,b={}", t.path().display())
            .parse::<Share>()
            .is_err());
        assert!(format!("{}={}", "x".repeat(37), t.path().display())
            .parse::<Share>()
            .is_err());
        assert!("x=/nonexistent/dir".parse::<Share>().is_err());
        let ro: Share = format!("src={}:ro", t.path().display()).parse().unwrap();
        assert_eq!((ro.dir.as_path(), ro.readonly), (t.path(), true));
        let rw: Share = format!("src={}:rw", t.path().display()).parse().unwrap();
        assert_eq!((rw.dir.as_path(), rw.readonly), (t.path(), false));
    }
}
