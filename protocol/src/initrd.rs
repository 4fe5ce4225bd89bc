//! The contract between `mkinitrd` (writer) and `init` (reader): one JSON document at
//! [`CONFIG_PATH`] inside the initramfs.
//!
//! Everything that can be decided at build time is decided there (module load order,
//! the default next init) so that PID 1 only executes a list. Unknown fields are ignored
//! so that an older init can boot an initrd from a newer mkinitrd with the same
//! [`FORMAT_VERSION`]; a different version is refused with a clear error.

use serde::{Deserialize, Serialize};

/// Where the configuration lives inside the initramfs.
pub const CONFIG_PATH: &str = "/etc/nixboot/initrd.json";

/// Bumped on any incompatible change of [`InitrdConfig`].
pub const FORMAT_VERSION: u32 = 1;

/// What the init needs to know that the kernel command line does not say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitrdConfig {
    /// Always [`FORMAT_VERSION`] when written by this code.
    pub version: u32,
    /// The kernel release (`uname -r`) the modules were taken from, when modules are packed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
    /// The next init used when the command line carries no `init=` (the closure's `init`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_init: Option<String>,
    /// Modules to load, in load order: every dependency comes before its users.
    #[serde(default)]
    pub modules: Vec<ModuleSpec>,
    /// Set by `mkinitrd --embed-store`: the closure's store paths are packed in the initramfs
    /// under this directory (always `/nix/store`). The init then brings them into the new
    /// root instead of mounting a store share (netboot and kexec images: no disk, no virtiofs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded_store: Option<String>,
}

/// One kernel module packed in the initramfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleSpec {
    /// The module's name as the kernel knows it (underscores, no `.ko`).
    pub name: String,
    /// Absolute path of the uncompressed `.ko` inside the initramfs.
    pub path: String,
    /// Parameters handed to `finit_module` (`key=value key2=value2`), usually empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub params: String,
}

/// Why a configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("malformed initrd configuration: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("initrd configuration has format version {found}, this init reads version {expected}: rebuild the initrd with the matching mkinitrd")]
    Version { found: u32, expected: u32 },
    #[error(
        "initrd configuration lists module {name:?} with a path that is not absolute: {path:?}"
    )]
    RelativeModulePath { name: String, path: String },
    #[error("initrd configuration names an embedded store at {0:?}, which is not an absolute directory below /")]
    BadEmbeddedStore(String),
}

impl InitrdConfig {
    /// An empty configuration of the current format.
    pub fn new() -> Self {
        InitrdConfig {
            version: FORMAT_VERSION,
            kernel_version: None,
            default_init: None,
            modules: Vec::new(),
            embedded_store: None,
        }
    }

    /// Parses and validates a configuration document.
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let config: InitrdConfig = serde_json::from_slice(bytes)?;
        if config.version != FORMAT_VERSION {
            return Err(ConfigError::Version {
                found: config.version,
                expected: FORMAT_VERSION,
            });
        }
        for m in &config.modules {
            if !m.path.starts_with('/') {
                return Err(ConfigError::RelativeModulePath {
                    name: m.name.clone(),
                    path: m.path.clone(),
                });
            }
        }
        // The init copies it to the same path under the new root: / would be everything.
        if let Some(e) = &config.embedded_store {
            if !e.starts_with('/') || e.trim_end_matches('/').is_empty() || e.contains("/../") {
                return Err(ConfigError::BadEmbeddedStore(e.clone()));
            }
        }
        Ok(config)
    }

    /// The canonical serialisation: pretty JSON with a trailing newline, stable field order,
    /// so the same configuration always gives the same bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain strings and integers cannot fail.
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

impl Default for InitrdConfig {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> InitrdConfig {
        InitrdConfig {
            version: FORMAT_VERSION,
            kernel_version: Some("6.1.0-56-cloud-amd64".into()),
            default_init: Some("/nix/store/abc-nixos-system/init".into()),
            modules: vec![ModuleSpec {
                name: "virtio_ring".into(),
                path: "/lib/modules/6.1.0-56-cloud-amd64/kernel/drivers/virtio/virtio_ring.ko"
                    .into(),
                params: String::new(),
            }],
            embedded_store: None,
        }
    }

    #[test]
    fn round_trips_and_is_stable() {
        let c = sample();
        let bytes = c.to_bytes();
        assert_eq!(InitrdConfig::parse(&bytes).unwrap(), c);
        assert_eq!(c.to_bytes(), bytes);
        assert!(bytes.ends_with(b"}\n"));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let c = InitrdConfig::parse(br#"{"version":1,"future":{"x":1}}"#).unwrap();
        assert!(c.modules.is_empty());
        assert_eq!(c.default_init, None);
    }

    #[test]
    fn wrong_version_is_refused() {
        let e = InitrdConfig::parse(br#"{"version":2}"#).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Version {
                    found: 2,
                    expected: 1
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn malformed_and_relative_paths_are_refused() {
        assert!(matches!(
            InitrdConfig::parse(b"{\"version\":1,"),
            Err(ConfigError::Malformed(_))
        ));
        let e = InitrdConfig::parse(
            br#"{"version":1,"modules":[{"name":"fuse","path":"lib/fuse.ko"}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("fuse"), "{e}");
    }

    #[test]
    fn embedded_store_must_be_an_absolute_directory() {
        let ok = InitrdConfig::parse(br#"{"version":1,"embedded_store":"/nix/store"}"#).unwrap();
        assert_eq!(ok.embedded_store.as_deref(), Some("/nix/store"));
        for bad in ["nix/store", "/", "//", "/nix/../etc"] {
            let doc = format!(r#"{{"version":1,"embedded_store":"{bad}"}}"#);
            assert!(
                matches!(
                    InitrdConfig::parse(doc.as_bytes()),
                    Err(ConfigError::BadEmbeddedStore(_))
                ),
                "{bad}"
            );
        }
    }
}
