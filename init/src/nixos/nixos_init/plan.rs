//! The pure planner of (c): everything done to the new root, inputs checked first.

use super::{Action, DATA_ONLY_LAYERS, ETC_METADATA, STEP_ETC_BASEDIR, STEP_ETC_IMAGE};
use crate::failure::Failure;
use nixboot_protocol::bootspec::{NixosInitV1, NIXOS_INIT_V1};

/// The warnings for what boot.json holds that we do not act on.
fn warnings(ext: &NixosInitV1) -> Vec<Action> {
    let mut out = Vec::new();
    for k in ext.unknown.keys() {
        out.push(Action::Warn(format!(
            "WARNING: {NIXOS_INIT_V1}.{k} is not known to this init; ignored"
        )));
    }
    if let Some(c) = &ext.etc_confext {
        out.push(Action::Warn(format!(
            "WARNING: {NIXOS_INIT_V1}.etc_confext ({} from {}) is NOT merged: this init does \
             not run systemd-confext; /etc lacks what that image provides",
            c.name, c.image
        )));
    }
    out
}

/// The etc overlay's inputs (in the initramfs's view), `None` without an etc overlay; one
/// without the other fails at the missing one's step.
fn etc_inputs(
    r: &dyn Fn(&str) -> String,
    toplevel: &str,
    ext: &NixosInitV1,
    out: &mut Vec<Action>,
) -> Result<Option<(String, String)>, Failure> {
    let (step, missing, have) = match (&ext.etc_metadata_image, &ext.etc_basedir) {
        (Some(image), Some(basedir)) => return Ok(Some((r(image), r(basedir)))),
        (None, None) => {
            out.push(Action::Warn(format!(
                "WARNING: {NIXOS_INIT_V1} has no etc_metadata_image/etc_basedir \
                 (system.etc.overlay disabled?): /etc is left as the root has it"
            )));
            return Ok(None);
        }
        (None, have) => (STEP_ETC_IMAGE, "etc_metadata_image", have),
        (have, None) => (STEP_ETC_BASEDIR, "etc_basedir", have),
    };
    Err(Failure::new(
        step,
        format!("{NIXOS_INIT_V1}.{missing} is missing beside {have:?}"),
    )
    .tried(format!("read {toplevel}/boot.json"))
    .check("the closure's boot.json: nixos-init.nix writes both or neither"))
}

/// Everything (c) does to `new_root` for `toplevel`, inputs checked first (pure).
pub fn plan(
    new_root: &str,
    toplevel: &str,
    ext: &NixosInitV1,
    kernel_release: &str,
) -> Result<Vec<Action>, Failure> {
    let r = |p: &str| format!("{new_root}{p}");
    let mut out = warnings(ext);
    let etc = etc_inputs(&r, toplevel, ext, &mut out)?;
    if let Some((image, basedir)) = &etc {
        out.push(Action::CheckErofs {
            image: image.clone(),
        });
        out.push(Action::CheckDir {
            path: basedir.clone(),
        });
        out.push(Action::RequireKernel {
            min: DATA_ONLY_LAYERS,
            release: kernel_release.to_string(),
        });
    }
    out.push(Action::StoreOwnerMode {
        store: r("/nix/store"),
        mode: 0o1775,
    });
    out.push(Action::RemountStore {
        store: r("/nix/store"),
        wanted: ext.nix_store_mount_opts.clone(),
    });
    for f in ext.special_filesystems.iter().flatten() {
        out.push(Action::MountSpecial {
            device: f.device.clone(),
            target: r(&f.mountpoint),
            fstype: f.fstype.clone(),
            options: f.options.join(","),
        });
    }
    activation(&r, toplevel, ext, &mut out);
    if let Some((image, basedir)) = etc {
        out.push(Action::MountEtc {
            image,
            basedir,
            metadata: r(ETC_METADATA),
            target: r("/etc"),
        });
    }
    Ok(out)
}

/// nixos-init's activate.rs: system links, kernel paths, /usr/bin/env and /bin/sh.
fn activation(
    r: &dyn Fn(&str) -> String,
    toplevel: &str,
    ext: &NixosInitV1,
    out: &mut Vec<Action>,
) {
    for link in ["/run/booted-system", "/run/current-system"] {
        out.push(Action::Symlink {
            link: r(link),
            target: toplevel.to_string(),
        });
    }
    for (value, path) in [
        (&ext.modprobe_binary, "/proc/sys/kernel/modprobe"),
        (&ext.firmware, "/sys/module/firmware_class/parameters/path"),
    ] {
        if let Some(v) = value {
            out.push(Action::WriteIfExists {
                path: r(path),
                value: v.clone(),
            });
        }
    }
    for (value, dir, name) in [
        (&ext.env_binary, "/usr/bin", "env"),
        (&ext.sh_binary, "/bin", "sh"),
    ] {
        let link = r(&format!("{dir}/{name}"));
        match value.as_deref() {
            None => {}
            Some("") => out.push(Action::RemoveLink { dir: r(dir), link }),
            Some(t) => out.push(Action::MkdirSymlink {
                dir: r(dir),
                link,
                target: t.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nixboot_protocol::bootspec::BootJson;

    fn ext(json: &str) -> NixosInitV1 {
        let doc =
            format!(r#"{{"org.nixos.bootspec.v1":{{"init":"/x"}},"{NIXOS_INIT_V1}":{json}}}"#);
        BootJson::parse(doc.as_bytes())
            .unwrap()
            .nixos_init()
            .unwrap()
            .unwrap()
    }

    const FULL: &str = r#"{"firmware": "/nix/store/f-fw/lib/firmware",
        "modprobe_binary": "/nix/store/k-kmod/bin/modprobe",
        "nix_store_mount_opts": ["ro", "nosuid", "nodev"],
        "sh_binary": "/nix/store/b-bash/bin/sh", "env_binary": "",
        "etc_metadata_image": "/nix/store/m-etc-metadata.erofs", "etc_basedir": "/nix/store/e-etc"}"#;

    #[test]
    fn plan_checks_inputs_before_touching_the_root() {
        let a = plan(
            "/sysroot",
            "/nix/store/s-sys",
            &ext(FULL),
            "6.12.0-1-cloud-amd64",
        )
        .unwrap();
        let first_change = a
            .iter()
            .position(|x| matches!(x, Action::StoreOwnerMode { .. }))
            .unwrap();
        for (i, x) in a.iter().enumerate() {
            let check = matches!(
                x,
                Action::CheckErofs { .. }
                    | Action::CheckDir { .. }
                    | Action::RequireKernel { .. }
                    | Action::Warn(_)
            );
            assert_eq!(check, i < first_change, "{i}: {x:?}");
        }
        assert!(a.contains(&Action::CheckErofs {
            image: "/sysroot/nix/store/m-etc-metadata.erofs".into()
        }));
        assert!(a.contains(&Action::CheckDir {
            path: "/sysroot/nix/store/e-etc".into()
        }));
        assert!(
            matches!(a.last(), Some(Action::MountEtc { target, metadata, .. })
            if target == "/sysroot/etc" && metadata == "/sysroot/run/nixos-etc-metadata")
        );
    }

    #[test]
    fn plan_does_what_initrd_init_does() {
        let a = plan("/sysroot", "/nix/store/s-sys", &ext(FULL), "6.12.0").unwrap();
        for link in ["/sysroot/run/booted-system", "/sysroot/run/current-system"] {
            assert!(a.contains(&Action::Symlink {
                link: link.into(),
                target: "/nix/store/s-sys".into()
            }));
        }
        assert!(a.contains(&Action::StoreOwnerMode {
            store: "/sysroot/nix/store".into(),
            mode: 0o1775
        }));
        assert!(a.contains(&Action::RemountStore {
            store: "/sysroot/nix/store".into(),
            wanted: vec!["ro".into(), "nosuid".into(), "nodev".into()]
        }));
        assert!(a.contains(&Action::WriteIfExists {
            path: "/sysroot/proc/sys/kernel/modprobe".into(),
            value: "/nix/store/k-kmod/bin/modprobe".into()
        }));
        assert!(a.contains(&Action::WriteIfExists {
            path: "/sysroot/sys/module/firmware_class/parameters/path".into(),
            value: "/nix/store/f-fw/lib/firmware".into()
        }));
        assert!(a.contains(&Action::MkdirSymlink {
            dir: "/sysroot/bin".into(),
            link: "/sysroot/bin/sh".into(),
            target: "/nix/store/b-bash/bin/sh".into()
        }));
        // Empty env_binary: the link goes, /usr/bin stays.
        assert!(a.contains(&Action::RemoveLink {
            dir: "/sysroot/usr/bin".into(),
            link: "/sysroot/usr/bin/env".into()
        }));
    }

    #[test]
    fn unhandled_fields_are_named() {
        let e = ext(r#"{"nix_store_mount_opts": [], "new_knob": 1,
            "etc_confext": {"name": "nixos", "image": "/nix/store/c.raw", "targets": "/nix/store/t", "flags": []}}"#);
        let a = plan("/sysroot", "/nix/store/s", &e, "6.12").unwrap();
        let warns: Vec<&String> = a
            .iter()
            .filter_map(|x| match x {
                Action::Warn(w) => Some(w),
                _ => None,
            })
            .collect();
        assert!(
            warns
                .iter()
                .any(|w| w.contains("org.nixos.nixos-init.v1.new_knob")),
            "{warns:?}"
        );
        assert!(
            warns
                .iter()
                .any(|w| w.contains("etc_confext") && w.contains("/nix/store/c.raw")),
            "{warns:?}"
        );
        assert!(
            warns.iter().any(|w| w.contains("no etc_metadata_image")),
            "{warns:?}"
        );
        assert!(!a.iter().any(|x| matches!(x, Action::MountEtc { .. })));
    }

    #[test]
    fn special_filesystems_are_planned() {
        let e = ext(r#"{"nix_store_mount_opts": [], "special_filesystems": [
            {"mountpoint": "/run/keys", "device": "ramfs", "fstype": "ramfs", "options": ["nosuid", "nodev", "mode=750"]}]}"#);
        let a = plan("/sysroot", "/nix/store/s", &e, "6.12").unwrap();
        assert!(a.contains(&Action::MountSpecial {
            device: "ramfs".into(),
            target: "/sysroot/run/keys".into(),
            fstype: "ramfs".into(),
            options: "nosuid,nodev,mode=750".into()
        }));
    }

    #[test]
    fn half_an_etc_overlay_fails_at_its_step() {
        let e = ext(r#"{"nix_store_mount_opts": [], "etc_metadata_image": "/nix/store/m.erofs"}"#);
        let f = plan("/sysroot", "/nix/store/s", &e, "6.12").unwrap_err();
        assert_eq!(f.step, STEP_ETC_BASEDIR);
        assert!(f.error.contains("etc_basedir is missing"), "{}", f.error);
        let e = ext(r#"{"nix_store_mount_opts": [], "etc_basedir": "/nix/store/e"}"#);
        assert_eq!(
            plan("/sysroot", "/nix/store/s", &e, "6.12")
                .unwrap_err()
                .step,
            STEP_ETC_IMAGE
        );
    }
}
