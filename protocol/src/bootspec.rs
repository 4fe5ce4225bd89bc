//! `toplevel/boot.json`: NixOS's bootspec (RFC 0125; nixos/modules/system/activation/
//! bootspec.nix), read by mkinitrd, the launcher and the init, written by our NixOS module.
//!
//! One document: `org.nixos.bootspec.v1` (typed), `org.nixos.specialisation.v1` (a map of
//! documents of the same shape, no nesting), and every other key an extension, kept as JSON
//! so that a writer round-trips what it did not understand. `org.nixos.nixos-init.v1`
//! (nixos/modules/system/boot/nixos-init.nix) is typed on request ([`BootJson::nixos_init`]),
//! its unknown fields collected so that the init can name each in a warning.
//!
//! Why not the `bootspec` crate (DeterminateSystems, 2.0): its v1 type requires every RFC
//! field (`kernel`, `label`, `system`, `toplevel`), which test closures and hand-made
//! boot.json files omit and none of our readers need; its errors are serde_json's, which do
//! not say which field was wrong-typed; and it does not type nixos-init's extension, which
//! the init must read with field paths and unknown-field reports anyway. Reading per field
//! here gives every error its path (`org.nixos.nixos-init.v1.nix_store_mount_opts`).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub const BOOTSPEC_V1: &str = "org.nixos.bootspec.v1";
pub const SPECIALISATION_V1: &str = "org.nixos.specialisation.v1";
pub const NIXOS_INIT_V1: &str = "org.nixos.nixos-init.v1";

/// Why a boot.json (or a part of it) cannot be used. Every variant names where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootspecError {
    #[error("not JSON (line {line}, column {column}): {cause}")]
    NotJson {
        line: usize,
        column: usize,
        cause: String,
    },
    #[error("{path}: missing")]
    Missing { path: String },
    #[error("{path}: {cause}")]
    WrongType { path: String, cause: String },
}

/// `org.nixos.bootspec.v1`. The RFC requires `system`, `kernel`, `label` and `toplevel`
/// too; they are optional here because no reader of ours needs them and synthetic closures
/// leave them out. Unknown keys are kept in `extra` (written back as they were).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootSpecV1 {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The next init (`$toplevel/init`).
    pub init: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_secrets: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default)]
    pub kernel_params: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toplevel: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// One specialisation: the same document without its own specialisations.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Specialisation {
    #[serde(rename = "org.nixos.bootspec.v1")]
    pub v1: BootSpecV1,
    #[serde(flatten)]
    pub extensions: BTreeMap<String, Value>,
}

/// A whole boot.json.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BootJson {
    #[serde(rename = "org.nixos.bootspec.v1")]
    pub v1: BootSpecV1,
    #[serde(
        rename = "org.nixos.specialisation.v1",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub specialisations: BTreeMap<String, Specialisation>,
    /// Every other key, as written (`org.nixos.nixos-init.v1`, `org.nixos.systemd-boot`, ...).
    #[serde(flatten)]
    pub extensions: BTreeMap<String, Value>,
}

/// `/etc` as a systemd-confext image (`system.etc.confext`), as nixos-init's config.rs
/// reads it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EtcConfext {
    pub name: String,
    pub image: String,
    pub targets: String,
    pub flags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutable_directory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper_directory: Option<String>,
}

/// One of `special_filesystems` (newer nixpkgs: `boot.specialFileSystems`, sorted).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SpecialFs {
    pub mountpoint: String,
    pub device: String,
    pub fstype: String,
    #[serde(default)]
    pub options: Vec<String>,
}

/// `org.nixos.nixos-init.v1`. 26.05 writes `firmware`, `modprobe_binary` and
/// `nix_store_mount_opts` always; newer trees only when the kernel / modprobe config is
/// enabled, hence optional (nixos-init's activate.rs skips a missing one). An empty
/// `sh_binary` / `env_binary` means "remove the link" (activate.rs).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct NixosInitV1 {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modprobe_binary: Option<String>,
    pub nix_store_mount_opts: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sh_binary: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env_binary: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etc_metadata_image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etc_basedir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etc_confext: Option<EtcConfext>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub special_filesystems: Option<Vec<SpecialFs>>,
    /// Fields this reader does not know, by name: the init warns about each.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
}

/// A JSON object being read field by field, so that each error carries its path.
struct Fields<'a> {
    path: &'a str,
    map: Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn new(path: &'a str, v: Value) -> Result<Self, BootspecError> {
        match v {
            Value::Object(map) => Ok(Fields { path, map }),
            other => Err(BootspecError::WrongType {
                path: path.to_string(),
                cause: format!("expected an object, found {}", kind(&other)),
            }),
        }
    }

    /// Takes `key` out; absent and `null` are `None`.
    fn opt<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, BootspecError> {
        match self.map.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| BootspecError::WrongType {
                    path: format!("{}.{key}", self.path),
                    cause: e.to_string(),
                }),
        }
    }

    fn req<T: DeserializeOwned>(&mut self, key: &str) -> Result<T, BootspecError> {
        self.opt(key)?.ok_or_else(|| BootspecError::Missing {
            path: format!("{}.{key}", self.path),
        })
    }

    /// What was not taken.
    fn rest(self) -> BTreeMap<String, Value> {
        self.map.into_iter().collect()
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn read_v1(path: &str, v: Value) -> Result<BootSpecV1, BootspecError> {
    let mut f = Fields::new(path, v)?;
    Ok(BootSpecV1 {
        system: f.opt("system")?,
        init: f.req("init")?,
        initrd: f.opt("initrd")?,
        initrd_secrets: f.opt("initrdSecrets")?,
        kernel: f.opt("kernel")?,
        kernel_params: f.opt("kernelParams")?.unwrap_or_default(),
        label: f.opt("label")?,
        toplevel: f.opt("toplevel")?,
        extra: f.rest(),
    })
}

impl BootJson {
    /// Parses a whole document. Extensions are kept as JSON, not checked.
    pub fn parse(bytes: &[u8]) -> Result<BootJson, BootspecError> {
        let doc: Value = serde_json::from_slice(bytes).map_err(|e| BootspecError::NotJson {
            line: e.line(),
            column: e.column(),
            cause: e.to_string(),
        })?;
        let mut top = Fields::new("boot.json", doc)?;
        let v1 = top
            .map
            .remove(BOOTSPEC_V1)
            .ok_or_else(|| BootspecError::Missing {
                path: BOOTSPEC_V1.into(),
            })?;
        let v1 = read_v1(BOOTSPEC_V1, v1)?;
        let mut specialisations = BTreeMap::new();
        if let Some(s) = top.map.remove(SPECIALISATION_V1) {
            for (name, doc) in Fields::new(SPECIALISATION_V1, s)?.rest() {
                let path = format!("{SPECIALISATION_V1}.{name}");
                let mut f = Fields::new(&path, doc)?;
                let v1 = f.map.remove(BOOTSPEC_V1).ok_or(BootspecError::Missing {
                    path: format!("{path}.{BOOTSPEC_V1}"),
                })?;
                let v1 = read_v1(&format!("{path}.{BOOTSPEC_V1}"), v1)?;
                let extensions = f.rest();
                specialisations.insert(name, Specialisation { v1, extensions });
            }
        }
        Ok(BootJson {
            v1,
            specialisations,
            extensions: top.rest(),
        })
    }

    /// The document as JSON (extensions as they were read).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// `org.nixos.nixos-init.v1`, typed; `None` when the document has none.
    pub fn nixos_init(&self) -> Result<Option<NixosInitV1>, BootspecError> {
        self.extensions
            .get(NIXOS_INIT_V1)
            .map(|v| NixosInitV1::from_value(v.clone()))
            .transpose()
    }
}

impl NixosInitV1 {
    /// Reads the extension's object; unknown fields land in `unknown`.
    pub fn from_value(v: Value) -> Result<NixosInitV1, BootspecError> {
        let mut f = Fields::new(NIXOS_INIT_V1, v)?;
        Ok(NixosInitV1 {
            firmware: f.opt("firmware")?,
            modprobe_binary: f.opt("modprobe_binary")?,
            nix_store_mount_opts: f.req("nix_store_mount_opts")?,
            sh_binary: f.opt("sh_binary")?,
            env_binary: f.opt("env_binary")?,
            etc_metadata_image: f.opt("etc_metadata_image")?,
            etc_basedir: f.opt("etc_basedir")?,
            etc_confext: f.opt("etc_confext")?,
            special_filesystems: f.opt("special_filesystems")?,
            unknown: f.rest(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
      "org.nixos.bootspec.v1": {
        "init": "/nix/store/s-sys/init", "initrd": "/nix/store/i-initrd/initrd",
        "kernel": "/nix/store/k-linux/bzImage", "kernelParams": ["loglevel=4"],
        "label": "NixOS", "system": "x86_64-linux", "toplevel": "/nix/store/s-sys",
        "futureField": 7
      },
      "org.nixos.specialisation.v1": {
        "debug": {"org.nixos.bootspec.v1": {"init": "/nix/store/d-sys/init", "kernelParams": []},
                  "org.nixos.systemd-boot": {"sortKey": "b"}}
      },
      "org.nixos.systemd-boot": {"sortKey": "nixos"},
      "org.nixos.nixos-init.v1": {
        "firmware": "/nix/store/f-firmware/lib/firmware",
        "modprobe_binary": "/nix/store/m-kmod/bin/modprobe",
        "nix_store_mount_opts": ["ro", "nosuid", "nodev"],
        "sh_binary": "/nix/store/b-bash/bin/sh",
        "etc_metadata_image": "/nix/store/e-etc-metadata.erofs",
        "etc_basedir": "/nix/store/b-etc",
        "future_knob": true
      }
    }"#;

    #[test]
    fn reads_v1_specialisations_and_keeps_extensions() {
        let d = BootJson::parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(d.v1.init, "/nix/store/s-sys/init");
        assert_eq!(d.v1.kernel_params, ["loglevel=4"]);
        assert_eq!(d.v1.toplevel.as_deref(), Some("/nix/store/s-sys"));
        assert_eq!(d.v1.extra["futureField"], 7);
        assert_eq!(d.specialisations["debug"].v1.init, "/nix/store/d-sys/init");
        assert!(d.extensions.contains_key("org.nixos.systemd-boot"));
        assert!(d.extensions.contains_key(NIXOS_INIT_V1));
    }

    #[test]
    fn round_trips_every_key() {
        let d = BootJson::parse(SAMPLE.as_bytes()).unwrap();
        let again: Value = serde_json::from_str(&d.to_json()).unwrap();
        let orig: Value = serde_json::from_str(SAMPLE).unwrap();
        assert_eq!(again, orig);
        assert_eq!(BootJson::parse(d.to_json().as_bytes()).unwrap(), d);
    }

    #[test]
    fn nixos_init_typed_with_unknown_fields_named() {
        let n = BootJson::parse(SAMPLE.as_bytes())
            .unwrap()
            .nixos_init()
            .unwrap()
            .unwrap();
        assert_eq!(n.nix_store_mount_opts, ["ro", "nosuid", "nodev"]);
        assert_eq!(n.etc_basedir.as_deref(), Some("/nix/store/b-etc"));
        assert_eq!(n.env_binary, None);
        assert_eq!(n.unknown.keys().collect::<Vec<_>>(), ["future_knob"]);
        let without = BootJson::parse(br#"{"org.nixos.bootspec.v1":{"init":"/x"}}"#).unwrap();
        assert_eq!(without.nixos_init().unwrap(), None);
    }

    #[test]
    fn errors_carry_path_and_cause() {
        let e = BootJson::parse(b"{\"org.nixos.bootspec.v1\": ").unwrap_err();
        assert!(matches!(e, BootspecError::NotJson { line: 1, .. }), "{e}");
        let e = BootJson::parse(b"[]").unwrap_err();
        assert_eq!(
            e.to_string(),
            "boot.json: expected an object, found an array"
        );
        let e = BootJson::parse(b"{}").unwrap_err();
        assert_eq!(e.to_string(), "org.nixos.bootspec.v1: missing");
        let e = BootJson::parse(br#"{"org.nixos.bootspec.v1":{"init":5}}"#).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("org.nixos.bootspec.v1.init: invalid type: integer"),
            "{e}"
        );
        let e = BootJson::parse(br#"{"org.nixos.bootspec.v1":{"init":"/x","kernelParams":"a"}}"#)
            .unwrap_err();
        assert!(
            e.to_string().contains("kernelParams: invalid type: string"),
            "{e}"
        );
        let doc = br#"{"org.nixos.bootspec.v1":{"init":"/x"},
            "org.nixos.nixos-init.v1":{"nix_store_mount_opts":"ro"}}"#;
        let e = BootJson::parse(doc).unwrap().nixos_init().unwrap_err();
        assert!(
            e.to_string()
                .starts_with("org.nixos.nixos-init.v1.nix_store_mount_opts: invalid type: string"),
            "{e}"
        );
        let doc = br#"{"org.nixos.bootspec.v1":{"init":"/x"},"org.nixos.nixos-init.v1":{}}"#;
        let e = BootJson::parse(doc).unwrap().nixos_init().unwrap_err();
        assert_eq!(
            e.to_string(),
            "org.nixos.nixos-init.v1.nix_store_mount_opts: missing"
        );
        let doc = br#"{"org.nixos.bootspec.v1":{"init":"/x"},
            "org.nixos.specialisation.v1":{"a":{"org.nixos.bootspec.v1":{}}}}"#;
        let e = BootJson::parse(doc).unwrap_err();
        assert_eq!(
            e.to_string(),
            "org.nixos.specialisation.v1.a.org.nixos.bootspec.v1.init: missing"
        );
    }
}
