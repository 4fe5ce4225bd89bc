//! The system closure the initrd boots into: a NixOS toplevel (or any directory with an
//! executable `init`), its optional bootspec, and the next init it implies.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The store every guest sees; closures outside it are assumed to be copied there.
pub const STORE_DIR: &str = "/nix/store";

/// Why the closure cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClosureError {
    #[error("closure {path} cannot be read: {source}")]
    Unreadable { path: PathBuf, source: io::Error },
    #[error(
        "closure {path} is not a directory (expected a NixOS system toplevel such as ./result)"
    )]
    NotADirectory { path: PathBuf },
    #[error("closure {path} has no `init` (expected a NixOS system toplevel such as ./result)")]
    NoInit { path: PathBuf },
    #[error("closure init {path} is not an executable file")]
    InitNotExecutable { path: PathBuf },
    #[error("malformed bootspec {path}: {message}")]
    Bootspec { path: PathBuf, message: String },
    #[error("closure path {path} is not valid UTF-8")]
    NonUtf8 { path: PathBuf },
}

/// bootspec v1 (RFC 0125), as the one boot.json reader (nixboot_protocol::bootspec) types it.
pub use nixboot_protocol::bootspec::BootSpecV1 as BootspecV1;

/// The `org.nixos.bootspec.v1` part of a whole `boot.json` document.
fn parse_bootspec(bytes: &[u8]) -> Result<BootspecV1, nixboot_protocol::bootspec::BootspecError> {
    nixboot_protocol::bootspec::BootJson::parse(bytes).map(|d| d.v1)
}

/// A validated closure.
#[derive(Debug, Clone)]
pub struct Closure {
    /// As given.
    pub path: PathBuf,
    /// With symlinks resolved (`./result` -> `/nix/store/...`).
    pub canonical: PathBuf,
    pub bootspec: Option<BootspecV1>,
    /// The next init the initrd execs when the command line has no `init=`.
    pub default_init: String,
}

impl Closure {
    pub fn open(path: &Path) -> Result<Closure, ClosureError> {
        let canonical = fs::canonicalize(path).map_err(|source| ClosureError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
        if !canonical.is_dir() {
            return Err(ClosureError::NotADirectory {
                path: path.to_owned(),
            });
        }
        let init = path.join("init");
        match fs::metadata(&init) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
            Ok(_) => return Err(ClosureError::InitNotExecutable { path: init }),
            // A dangling `init` symlink reads as missing: its target is not here.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ClosureError::NoInit {
                    path: path.to_owned(),
                })
            }
            Err(source) => {
                return Err(ClosureError::Unreadable { path: init, source });
            }
        }
        let boot_json = path.join("boot.json");
        let bootspec = match fs::read(&boot_json) {
            Ok(bytes) => Some(parse_bootspec(&bytes).map_err(|e| ClosureError::Bootspec {
                path: boot_json.clone(),
                message: e.to_string(),
            })?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(ClosureError::Unreadable {
                    path: boot_json,
                    source,
                })
            }
        };
        let default_init = match &bootspec {
            Some(b) => b.init.clone(),
            None => store_init(&canonical)?,
        };
        Ok(Closure {
            path: path.to_owned(),
            canonical,
            bootspec,
            default_init,
        })
    }

    /// The kernel command line an imageless guest needs for this closure.
    pub fn kernel_cmdline(&self) -> String {
        let mut parts = vec![
            "root=tmpfs".to_owned(),
            "console=ttyS0,115200".to_owned(),
            format!("init={}", self.default_init),
        ];
        if let Some(b) = &self.bootspec {
            parts.extend(b.kernel_params.iter().cloned());
        }
        parts.join(" ")
    }
}

/// `<canonical>/init` when the closure is in the store; otherwise where it will be once
/// copied there (`/nix/store/<basename>/init`): synthetic closures built outside the store
/// appear under /nix/store in the guest.
fn store_init(canonical: &Path) -> Result<String, ClosureError> {
    let non_utf8 = || ClosureError::NonUtf8 {
        path: canonical.to_owned(),
    };
    let text = canonical.to_str().ok_or_else(non_utf8)?;
    if canonical.starts_with(STORE_DIR) && canonical != Path::new(STORE_DIR) {
        return Ok(format!("{text}/init"));
    }
    let base = canonical
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(non_utf8)?;
    Ok(format!("{STORE_DIR}/{base}/init"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closure_dir(name: &str) -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(name);
        fs::create_dir(&dir).unwrap();
        let init = dir.join("init");
        fs::write(&init, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&init, fs::Permissions::from_mode(0o755)).unwrap();
        (tmp, dir)
    }

    #[test]
    fn default_init_without_bootspec_uses_basename() {
        let (_t, dir) = closure_dir("abc123-nixos-system-test");
        let c = Closure::open(&dir).unwrap();
        assert_eq!(c.default_init, "/nix/store/abc123-nixos-system-test/init");
        assert_eq!(
            c.kernel_cmdline(),
            "root=tmpfs console=ttyS0,115200 init=/nix/store/abc123-nixos-system-test/init"
        );
        // Through a symlink (like ./result) the target's name counts.
        let link = dir.parent().unwrap().join("result");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert_eq!(Closure::open(&link).unwrap().default_init, c.default_init);
    }

    #[test]
    fn store_paths_keep_their_path() {
        assert_eq!(
            store_init(Path::new("/nix/store/xyz-system")).unwrap(),
            "/nix/store/xyz-system/init"
        );
        assert_eq!(
            store_init(Path::new("/tmp/nix/store/xyz-system")).unwrap(),
            "/nix/store/xyz-system/init"
        );
    }

    #[test]
    fn bootspec_wins_and_adds_params() {
        let (_t, dir) = closure_dir("x-system");
        fs::write(
            dir.join("boot.json"),
            r#"{"org.nixos.bootspec.v1": {"init": "/nix/store/q-sys/init", "kernelParams": ["loglevel=4", "quiet"],
                "kernel": "/nix/store/k/bzImage", "label": "NixOS", "system": "x86_64-linux", "toplevel": "/nix/store/q-sys"},
                "org.nixos.specialisation.v1": {}}"#,
        )
        .unwrap();
        let c = Closure::open(&dir).unwrap();
        assert_eq!(c.default_init, "/nix/store/q-sys/init");
        assert_eq!(
            c.kernel_cmdline(),
            "root=tmpfs console=ttyS0,115200 init=/nix/store/q-sys/init loglevel=4 quiet"
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let e = Closure::open(Path::new("/nonexistent/result")).unwrap_err();
        assert!(
            matches!(e, ClosureError::Unreadable { .. })
                && e.to_string().contains("/nonexistent/result"),
            "{e}"
        );

        let (_t, dir) = closure_dir("y-system");
        fs::set_permissions(dir.join("init"), fs::Permissions::from_mode(0o644)).unwrap();
        let e = Closure::open(&dir).unwrap_err();
        assert!(matches!(e, ClosureError::InitNotExecutable { .. }), "{e}");

        fs::remove_file(dir.join("init")).unwrap();
        let e = Closure::open(&dir).unwrap_err();
        assert!(
            matches!(e, ClosureError::NoInit { .. }) && e.to_string().contains("no `init`"),
            "{e}"
        );

        fs::create_dir(dir.join("init")).unwrap();
        assert!(matches!(
            Closure::open(&dir),
            Err(ClosureError::InitNotExecutable { .. })
        ));

        let (_t2, dir) = closure_dir("z-system");
        for bad in [
            &b"{not json"[..],
            br#"{"other": 1}"#,
            br#"{"org.nixos.bootspec.v1": {"init": 5}}"#,
        ] {
            fs::write(dir.join("boot.json"), bad).unwrap();
            let e = Closure::open(&dir).unwrap_err();
            assert!(
                matches!(e, ClosureError::Bootspec { .. }) && e.to_string().contains("boot.json"),
                "{e}"
            );
        }
    }
}
