//! `nixboot-kexec`: boot another NixOS generation without the firmware, from its bootspec
//! (`boot.json`): its kernel, initrd and `init=` plus kernelParams, as the boot loader
//! entries say. This module decides (pure, unit-tested); the binary
//! (`src/bin/nixboot-kexec.rs`) opens the files, calls kexec_file_load(2) and, with
//! `--now`, reboot(LINUX_REBOOT_CMD_KEXEC).
//!
//! Exit codes (docs/modes/verified.md): 0 loaded (or never returns with `--now`),
//! [`EXIT_USAGE`], [`EXIT_BAD_GENERATION`], [`EXIT_LOAD`], [`EXIT_REBOOT`]. Every check of
//! the input happens before anything is loaded: a bad generation leaves no image loaded.

use nixboot_protocol::bootspec::BootJson;
use std::path::{Path, PathBuf};

/// Wrong arguments.
pub const EXIT_USAGE: i32 = 2;
/// The generation or its boot.json cannot be used (missing, unreadable, no kernel, a file
/// it names is missing). Nothing was loaded.
pub const EXIT_BAD_GENERATION: i32 = 3;
/// The kernel refused the image (kexec_file_load failed). Nothing is loaded.
pub const EXIT_LOAD: i32 = 4;
/// `--now`: reboot(KEXEC) failed; the loaded image was unloaded again.
pub const EXIT_REBOOT: i32 = 5;

/// Where NixOS keeps the system profile's generations (`system-N-link`).
pub const PROFILES_DIR: &str = "/nix/var/nix/profiles";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// A generation number, a toplevel directory, or a boot.json file.
    pub target: String,
    pub specialisation: Option<String>,
    /// Appended to the generation's kernel parameters.
    pub append: Vec<String>,
    /// Reboot into it right away (else load only; `systemctl kexec` does the rest).
    pub now: bool,
}

pub const USAGE: &str = "usage: nixboot-kexec [--now] [--specialisation NAME] [--append PARAMS] \
                         GENERATION|TOPLEVEL|BOOT_JSON";

/// Parses the arguments after the program name.
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Args, String> {
    let mut it = args.into_iter();
    let (mut target, mut specialisation, mut append, mut now) = (None, None, Vec::new(), false);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--now" => now = true,
            "--specialisation" => {
                specialisation = Some(it.next().ok_or("--specialisation needs a name")?)
            }
            "--append" => append.push(it.next().ok_or("--append needs parameters")?),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            _ if target.is_some() => return Err(format!("a second target {a:?}")),
            _ => target = Some(a),
        }
    }
    Ok(Args {
        target: target.ok_or("no generation given")?,
        specialisation,
        append,
        now,
    })
}

/// What kexec_file_load gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KexecPlan {
    pub boot_json: PathBuf,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
}

/// The boot.json `target` means: a number is a generation of the system profile under
/// `profiles`, a directory a toplevel, anything else the file itself. A missing one is an
/// error naming the generations that exist.
pub fn resolve(target: &str, profiles: &Path) -> Result<PathBuf, String> {
    let path = if !target.is_empty() && target.bytes().all(|b| b.is_ascii_digit()) {
        let link = profiles.join(format!("system-{target}-link"));
        if !link.exists() {
            return Err(format!(
                "generation {target}: {} does not exist (generations: {})",
                link.display(),
                generations(profiles)
            ));
        }
        link.join("boot.json")
    } else if Path::new(target).is_dir() {
        Path::new(target).join("boot.json")
    } else {
        PathBuf::from(target)
    };
    if !path.is_file() {
        return Err(format!("{}: no such file", path.display()));
    }
    Ok(path)
}

/// The profile's generation numbers, sorted, for an error message.
fn generations(profiles: &Path) -> String {
    let mut n: Vec<u64> = std::fs::read_dir(profiles)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("system-")?
                .strip_suffix("-link")?
                .parse()
                .ok()
        })
        .collect();
    n.sort_unstable();
    if n.is_empty() {
        return format!("none in {}", profiles.display());
    }
    n.iter().map(u64::to_string).collect::<Vec<_>>().join(" ")
}

/// The plan from a boot.json's bytes: kernel (required), initrd (optional: a system built
/// without one), `init=` first and then kernelParams and `append`, as NixOS's boot loader
/// entries write them. `exists` checks the files (the real filesystem in the binary).
pub fn plan(
    boot_json: &Path,
    bytes: &[u8],
    specialisation: Option<&str>,
    append: &[String],
    exists: &dyn Fn(&Path) -> bool,
) -> Result<KexecPlan, String> {
    let where_ = boot_json.display();
    let doc = BootJson::parse(bytes).map_err(|e| format!("{where_}: {e}"))?;
    let v1 = match specialisation {
        None => doc.v1,
        Some(name) => match doc.specialisations.get(name) {
            Some(s) => s.v1.clone(),
            None => {
                let known: Vec<&str> = doc.specialisations.keys().map(String::as_str).collect();
                return Err(format!(
                    "{where_}: no specialisation {name:?} (has: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(" ")
                    }
                ));
            }
        },
    };
    let kernel = v1.kernel.ok_or_else(|| {
        format!("{where_}: org.nixos.bootspec.v1.kernel: missing (nothing to kexec)")
    })?;
    let files =
        std::iter::once(("kernel", &kernel)).chain(v1.initrd.as_ref().map(|i| ("initrd", i)));
    for (what, f) in files {
        if !exists(Path::new(f)) {
            return Err(format!("{where_}: its {what} {f} does not exist"));
        }
    }
    if v1.init.is_empty() {
        return Err(format!("{where_}: org.nixos.bootspec.v1.init: empty"));
    }
    let mut params = vec![format!("init={}", v1.init)];
    params.extend(v1.kernel_params);
    params.extend(append.iter().filter(|a| !a.trim().is_empty()).cloned());
    Ok(KexecPlan {
        boot_json: boot_json.to_path_buf(),
        kernel: kernel.into(),
        initrd: v1.initrd.map(PathBuf::from),
        cmdline: params.join(" "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<Args, String> {
        parse_args(a.iter().map(|s| s.to_string()))
    }

    #[test]
    fn arguments() {
        let a = args(&["--now", "--append", "x=1", "7"]).unwrap();
        assert_eq!(
            (a.target.as_str(), a.now, a.append),
            ("7", true, vec!["x=1".into()])
        );
        assert!(!args(&["/b.json"]).unwrap().now);
        assert_eq!(args(&[]).unwrap_err(), "no generation given");
        assert!(args(&["1", "2"]).unwrap_err().contains("second target"));
        assert!(args(&["--bogus", "1"])
            .unwrap_err()
            .contains("unknown option"));
        assert!(args(&["--append"]).is_err());
    }

    const DOC: &str = r#"{"org.nixos.bootspec.v1": {"init": "/nix/store/s/init",
        "initrd": "/nix/store/i/initrd", "kernel": "/nix/store/k/bzImage",
        "kernelParams": ["console=ttyS0", "quiet"]},
        "org.nixos.specialisation.v1": {"debug": {"org.nixos.bootspec.v1": {
        "init": "/nix/store/d/init", "kernel": "/nix/store/k/bzImage", "kernelParams": []}}}}"#;

    fn plan_of(doc: &str, spec: Option<&str>, exists: bool) -> Result<KexecPlan, String> {
        plan(
            Path::new("/b.json"),
            doc.as_bytes(),
            spec,
            &["x=1".into()],
            &|_| exists,
        )
    }

    #[test]
    fn plan_takes_init_params_and_append_in_order() {
        let p = plan_of(DOC, None, true).unwrap();
        assert_eq!(p.kernel, Path::new("/nix/store/k/bzImage"));
        assert_eq!(p.initrd.as_deref(), Some(Path::new("/nix/store/i/initrd")));
        assert_eq!(p.cmdline, "init=/nix/store/s/init console=ttyS0 quiet x=1");
        let d = plan_of(DOC, Some("debug"), true).unwrap();
        assert_eq!(
            (d.initrd, d.cmdline.as_str()),
            (None, "init=/nix/store/d/init x=1")
        );
    }

    #[test]
    fn bad_boot_json_is_refused_with_where() {
        let no_kernel = r#"{"org.nixos.bootspec.v1": {"init": "/i", "kernelParams": []}}"#;
        let e = plan_of(no_kernel, None, true).unwrap_err();
        assert!(
            e.contains("/b.json") && e.contains("kernel: missing"),
            "{e}"
        );
        let e = plan_of(DOC, None, false).unwrap_err();
        assert!(
            e.contains("kernel /nix/store/k/bzImage does not exist"),
            "{e}"
        );
        let e = plan_of(DOC, Some("nope"), true).unwrap_err();
        assert!(e.contains("no specialisation \"nope\" (has: debug)"), "{e}");
        assert!(plan_of("{", None, true).unwrap_err().contains("not JSON"));
    }

    #[test]
    fn resolve_generations_toplevels_and_files() {
        let d = tempfile::tempdir().unwrap();
        let top = d.path().join("system-4-link");
        std::fs::create_dir(&top).unwrap();
        std::fs::write(top.join("boot.json"), DOC).unwrap();
        std::fs::create_dir(d.path().join("system-2-link")).unwrap();
        assert_eq!(resolve("4", d.path()).unwrap(), top.join("boot.json"));
        assert_eq!(
            resolve(top.to_str().unwrap(), d.path()).unwrap(),
            top.join("boot.json")
        );
        let e = resolve("9", d.path()).unwrap_err();
        assert!(
            e.contains("generation 9") && e.ends_with("(generations: 2 4)"),
            "{e}"
        );
        let e = resolve("2", d.path()).unwrap_err();
        assert!(e.contains("system-2-link/boot.json: no such file"), "{e}");
        assert!(resolve("/nonexistent.json", d.path()).is_err());
    }
}
