//! `boot.json` (NixOS bootspec v1, RFC 0125) and the kernel command line the launcher
//! boots with.

use crate::{Error, Result};
use std::path::{Component, Path, PathBuf};

use nixboot_protocol::bootspec::BootJson;
/// Where the guest sees the store, whatever directory the host shares.
pub const GUEST_STORE: &str = "/nix/store";

/// The parts of a bootspec v1 document the launcher uses. Paths are as written in the
/// document, i.e. guest (`/nix/store/...`) paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSpec {
    pub init: String,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub kernel_params: Vec<String>,
    pub label: Option<String>,
    pub toplevel: Option<String>,
}

impl BootSpec {
    pub fn load(path: &Path) -> Result<BootSpec> {
        let bytes =
            std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        BootSpec::parse(&bytes).map_err(|reason| Error::BootSpec {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Through the one boot.json reader (nixboot_protocol::bootspec); the launcher keeps
    /// only what it boots with.
    pub fn parse(bytes: &[u8]) -> std::result::Result<BootSpec, String> {
        let v1 = BootJson::parse(bytes).map_err(|e| e.to_string())?.v1;
        Ok(BootSpec {
            init: v1.init,
            kernel: v1.kernel,
            initrd: v1.initrd,
            kernel_params: v1.kernel_params,
            label: v1.label,
            toplevel: v1.toplevel,
        })
    }
}

/// Kernel parameters every guest of this launcher gets (tests and benchmark included).
/// The machine's own (`pci=noacpi pci=nomsi` on `pc` with one vCPU) are added by the
/// launcher with the machine: `crate::machine::Machine::kernel_params`.
///
/// `cryptomgr.notests`: the kernel's crypto self-tests check its own algorithm
/// implementations against test vectors at every boot; a throwaway VM learns nothing from
/// them, and under TCG they cost 0.16-0.25 s of each boot (Debian 6.1, `nixboot-qemu
/// --exec`: "Run /init" at 1.22 s -> 1.06 s). libguestfs passes it to its appliance for the
/// same reason (the flag was added for it). `fips=1` ignores it; a later
/// `cryptomgr.notests=0` (`--append`) brings the tests back.
pub const BASE_PARAMS: [&str; 3] = ["console=ttyS0,115200", "panic=-1", "cryptomgr.notests"];

/// The kernel command line: fixed base, then the closure's params, then the user's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelCmdline {
    /// The guest path of the next init (`init=`).
    pub init: Option<String>,
    /// From boot.json's `kernelParams`.
    pub kernel_params: Vec<String>,
    /// Free text from the user (`--append`).
    pub append: Option<String>,
    /// Handed to the init's argv after ` -- `.
    pub init_args: Vec<String>,
}

impl KernelCmdline {
    pub fn render(&self) -> String {
        // panic=-1 (in BASE_PARAMS): the guest reboots on panic, and QEMU's -no-reboot turns
        // that into an exit.
        let mut parts: Vec<String> = BASE_PARAMS.iter().map(|p| p.to_string()).collect();
        parts.push("root=tmpfs".into());
        if let Some(init) = &self.init {
            parts.push(format!("init={init}"));
        }
        parts.extend(self.kernel_params.iter().cloned());
        if let Some(a) = self.append.as_deref().map(str::trim) {
            if !a.is_empty() {
                parts.push(a.to_string());
            }
        }
        if !self.init_args.is_empty() {
            parts.push("--".into());
            // The kernel splits on spaces but honours double quotes.
            parts.extend(self.init_args.iter().map(|a| {
                if a.is_empty() || a.contains([' ', '\t']) {
                    format!("\"{a}\"")
                } else {
                    a.clone()
                }
            }));
        }
        parts.join(" ")
    }
}

/// Maps a host path inside `store_dir` (the shared directory) to the guest's `/nix/store`
/// path, following symlinks such as `./result`.
pub fn guest_store_path(host: &Path, store_dir: &Path) -> Result<String> {
    let host_c = host
        .canonicalize()
        .map_err(|e| Error::io(format!("resolving {}", host.display()), e))?;
    let store_c = store_dir
        .canonicalize()
        .map_err(|e| Error::io(format!("resolving store {}", store_dir.display()), e))?;
    let rel = host_c.strip_prefix(&store_c).map_err(|_| {
        Error::Config(format!(
            "{} (-> {}) is not inside the shared store {}",
            host.display(),
            host_c.display(),
            store_c.display()
        ))
    })?;
    let rel = rel
        .to_str()
        .ok_or_else(|| Error::Config(format!("{} is not valid UTF-8", host_c.display())))?;
    Ok(if rel.is_empty() {
        GUEST_STORE.to_string()
    } else {
        format!("{GUEST_STORE}/{rel}")
    })
}

/// The inverse: where a `/nix/store/...` path from boot.json lives on the host when the
/// shared store is `store_dir`. Other paths are taken as host paths unchanged.
pub fn host_store_path(guest: &str, store_dir: &Path) -> PathBuf {
    match Path::new(guest).strip_prefix(GUEST_STORE) {
        Ok(rel) if rel.components().all(|c| matches!(c, Component::Normal(_))) => {
            store_dir.join(rel)
        }
        _ => PathBuf::from(guest),
    }
}

/// Which directory to share as tag `modules`: accepts a `lib/modules` directory or one
/// kernel's `lib/modules/<version>` (recognised by `modules.order` or `kernel/`), in which
/// case its parent is shared so the guest sees `/lib/modules/<version>`.
pub fn modules_share_dir(dir: &Path) -> Result<PathBuf> {
    let looks_versioned = |d: &Path| d.join("modules.order").is_file() || d.join("kernel").is_dir();
    if !dir.is_dir() {
        return Err(Error::Config(format!(
            "--modules {}: not a directory",
            dir.display()
        )));
    }
    let dir = dir
        .canonicalize()
        .map_err(|e| Error::io(format!("resolving {}", dir.display()), e))?;
    if looks_versioned(&dir) {
        return dir
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| Error::Config(format!("--modules {}: has no parent", dir.display())));
    }
    let entries =
        std::fs::read_dir(&dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    for e in entries.flatten() {
        if looks_versioned(&e.path()) {
            return Ok(dir);
        }
    }
    Err(Error::Config(format!(
        "--modules {}: neither a lib/modules directory nor lib/modules/<version> \
         (no modules.order or kernel/ found)",
        dir.display()
    )))
}

/// The kernel versions under a shared `lib/modules` directory that have modules but no
/// `modules.dep`. An unpacked kernel .deb is such a tree (its postinst runs depmod): the
/// init loads the modules it needs without the index, but in the guest udev cannot load a
/// driver by alias nor `modprobe` a module by name, so a disk or `loop` goes missing later.
pub fn unindexed_versions(share_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(share_dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|v| v.join("kernel").is_dir() && !v.join("modules.dep").is_file())
        .filter_map(|v| v.file_name()?.to_str().map(str::to_owned))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
      "org.nixos.bootspec.v1": {
        "init": "/nix/store/6gkx1xz9dwizfa7x0pjfpsdgi0jyxxqk-nixos-system-demo-24.05/init",
        "initrd": "/nix/store/0w5mdkjm3l6rqcx2i6q4g1lqh1ljz3vm-initrd-linux-6.1/initrd",
        "kernel": "/nix/store/7x0kfbxcpd3ibb4k2d1pjvqdbgqzfq5n-linux-6.1/bzImage",
        "kernelParams": ["loglevel=4", "nixboot.debug"],
        "label": "NixOS 24.05 (Linux 6.1)",
        "system": "x86_64-linux",
        "toplevel": "/nix/store/6gkx1xz9dwizfa7x0pjfpsdgi0jyxxqk-nixos-system-demo-24.05"
      },
      "org.nixos.specialisation.v1": {},
      "org.example.extension": {"x": 1}
    }"#;

    #[test]
    fn bootspec_v1_sample() {
        let b = BootSpec::parse(SAMPLE.as_bytes()).unwrap();
        assert!(b.init.ends_with("-nixos-system-demo-24.05/init"));
        assert!(b.initrd.as_deref().unwrap().ends_with("/initrd"));
        assert!(b.kernel.as_deref().unwrap().ends_with("/bzImage"));
        assert_eq!(b.kernel_params, ["loglevel=4", "nixboot.debug"]);
    }

    #[test]
    fn bootspec_errors() {
        assert!(BootSpec::parse(b"{}")
            .unwrap_err()
            .contains("org.nixos.bootspec.v1: missing"));
        assert!(BootSpec::parse(br#"{"org.nixos.bootspec.v1":{}}"#)
            .unwrap_err()
            .contains("org.nixos.bootspec.v1.init: missing"));
        assert!(
            BootSpec::parse(br#"{"org.nixos.bootspec.v1":{"init":"/x","kernelParams":"a"}}"#)
                .is_err()
        );
        // initrd is optional (absent when boot.initrd.enable = false).
        let b = BootSpec::parse(br#"{"org.nixos.bootspec.v1":{"init":"/x"}}"#).unwrap();
        assert_eq!(b.initrd, None);
    }

    #[test]
    fn cmdline_from_bootspec() {
        let b = BootSpec::parse(SAMPLE.as_bytes()).unwrap();
        let c = KernelCmdline {
            init: Some(b.init.clone()),
            kernel_params: b.kernel_params.clone(),
            append: Some(" rd.timeout=3 ".into()),
            init_args: vec!["alpha".into(), "beta gamma".into()],
        };
        assert_eq!(
            c.render(),
            format!(
                "console=ttyS0,115200 panic=-1 cryptomgr.notests root=tmpfs init={} loglevel=4 \
                 nixboot.debug \
                 rd.timeout=3 -- alpha \"beta gamma\"",
                b.init
            )
        );
        let bare = KernelCmdline::default().render();
        assert_eq!(
            bare,
            "console=ttyS0,115200 panic=-1 cryptomgr.notests root=tmpfs"
        );
    }

    #[test]
    fn store_path_mapping() {
        let t = tempfile::tempdir().unwrap();
        let store = t.path().join("store");
        std::fs::create_dir_all(store.join("abc-sys")).unwrap();
        std::os::unix::fs::symlink(store.join("abc-sys"), t.path().join("result")).unwrap();
        assert_eq!(
            guest_store_path(&t.path().join("result"), &store).unwrap(),
            "/nix/store/abc-sys"
        );
        assert!(guest_store_path(t.path(), &store).is_err());
        assert_eq!(
            host_store_path("/nix/store/abc-sys/init", &store),
            store.join("abc-sys/init")
        );
        assert_eq!(
            host_store_path("/boot/vmlinuz", &store),
            PathBuf::from("/boot/vmlinuz")
        );
        assert_eq!(
            host_store_path("/nix/store/../etc", &store),
            PathBuf::from("/nix/store/../etc")
        );
    }

    #[test]
    fn modules_dir_detection() {
        let t = tempfile::tempdir().unwrap();
        let lib_modules = t.path().join("lib/modules");
        let v = lib_modules.join("6.1.0-test");
        std::fs::create_dir_all(v.join("kernel/fs")).unwrap();
        let canon = lib_modules.canonicalize().unwrap();
        assert_eq!(modules_share_dir(&v).unwrap(), canon);
        assert_eq!(modules_share_dir(&lib_modules).unwrap(), canon);

        // modules.order alone is enough to recognise a version directory.
        let v2 = t.path().join("other/6.2");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("modules.order"), "").unwrap();
        assert_eq!(
            modules_share_dir(&v2).unwrap(),
            t.path().join("other").canonicalize().unwrap()
        );

        assert!(modules_share_dir(t.path()).is_err());
        assert!(modules_share_dir(&t.path().join("missing")).is_err());
    }

    #[test]
    fn versions_without_depmod_indexes_are_named() {
        let t = tempfile::tempdir().unwrap();
        for v in ["6.1.0-a", "6.12.0-b"] {
            std::fs::create_dir_all(t.path().join(v).join("kernel")).unwrap();
        }
        std::fs::write(t.path().join("6.1.0-a/modules.dep"), "").unwrap();
        // Not a kernel's directory: no kernel/ inside, so not named.
        std::fs::create_dir_all(t.path().join("extra")).unwrap();
        assert_eq!(unindexed_versions(t.path()), vec!["6.12.0-b".to_string()]);
        std::fs::write(t.path().join("6.12.0-b/modules.dep"), "").unwrap();
        assert!(unindexed_versions(t.path()).is_empty());
    }
}
