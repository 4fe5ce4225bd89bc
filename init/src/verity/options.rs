//! `nixboot.verity.*` on the command line (pure). systemd's `usrhash=`/`roothash=` name
//! the hash of /usr or /, not of a store mounted on /nix/store, so these live under
//! `nixboot.`, with systemd's words: `roothash` (its `roothash=`), `hashoffset` (its
//! `systemd.verity_root_options=hash-offset=`).
//!
//! - `nixboot.verity.store=DEVICE|PATH`: the image `mkinitrd verity` wrote: a block device
//!   named as `root=` names one (`LABEL=`, `PARTUUID=`, `/dev/vdb`, ...), or an absolute
//!   path of a file in the initramfs (a store path of an embedded store), attached to a
//!   loop device.
//! - `nixboot.verity.roothash=HEX`: the root hash it printed (64 hex digits).
//! - `nixboot.verity.hashoffset=BYTES`: where its verity superblock is (it printed it).
//! - `nixboot.verity.check=first|full`: read the first block (default: proves the root
//!   hash before anything is mounted) or every block (a changed byte anywhere stops the
//!   boot in the initrd rather than when the file is read; costs one read of the image).

use crate::cmdline::{BlockSpec, Root};

/// Where the verified image is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Block(BlockSpec),
    /// A file in the initramfs, by absolute path.
    File(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Block(b) => Root::Block(b.clone()).fmt(f),
            Source::File(p) => write!(f, "file {p}"),
        }
    }
}

/// How much is read before the store is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Check {
    #[default]
    First,
    Full,
}

/// What the command line says; the plan checks that it is complete.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerityOptions {
    pub store: Option<Source>,
    pub root_hash: Option<[u8; 32]>,
    pub hash_offset: Option<u64>,
    pub check: Check,
}

impl VerityOptions {
    /// Whether any verity option was given (then the boot must be verified or not happen).
    pub fn asked(&self) -> bool {
        self.store.is_some() || self.root_hash.is_some() || self.hash_offset.is_some()
    }
}

pub const KEYS: &[&str] = &[
    "nixboot.verity.store",
    "nixboot.verity.roothash",
    "nixboot.verity.hashoffset",
    "nixboot.verity.check",
];

/// Applies one `nixboot.verity.` key; `Err` is the warning (the value is ignored). A
/// malformed root hash is ignored here and then refused by the plan as missing: the boot
/// never goes on unverified.
pub fn apply(o: &mut VerityOptions, key: &str, value: Option<&str>) -> Result<(), String> {
    let shown = value.unwrap_or("");
    match key {
        "nixboot.verity.store" => o.store = Some(parse_source(shown)?),
        "nixboot.verity.roothash" => match nixboot_protocol::verity::parse_root_hash(shown) {
            Some(h) => o.root_hash = Some(h),
            None => return Err(format!("{shown:?} is not 64 hex digits, ignored")),
        },
        "nixboot.verity.hashoffset" => match shown.parse::<u64>() {
            Ok(n) => o.hash_offset = Some(n),
            Err(_) => return Err(format!("{shown:?} is not a number of bytes, ignored")),
        },
        "nixboot.verity.check" => match shown {
            "first" => o.check = Check::First,
            "full" => o.check = Check::Full,
            _ => return Err(format!("{shown:?} is not first or full, ignored")),
        },
        _ => {
            return Err(format!(
                "unknown option (known: {}), ignored",
                KEYS.join(", ")
            ))
        }
    }
    Ok(())
}

fn parse_source(v: &str) -> Result<Source, String> {
    if v.starts_with('/') && !v.starts_with("/dev/") {
        if v.len() < 2 || v.contains('\0') {
            return Err(format!("{v:?} is not a file path, ignored"));
        }
        return Ok(Source::File(v.to_string()));
    }
    match crate::cmdline::parse_root(v)? {
        Root::Block(b) => Ok(Source::Block(b)),
        _ => Err(format!(
            "{v:?} is not a block device or a file (LABEL=, PARTUUID=, /dev/vdb, /nix/store/...), ignored"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key() {
        let mut o = VerityOptions::default();
        let h = "ab".repeat(32);
        apply(&mut o, "nixboot.verity.store", Some("PARTUUID=1234")).unwrap();
        apply(&mut o, "nixboot.verity.roothash", Some(&h)).unwrap();
        apply(&mut o, "nixboot.verity.hashoffset", Some("8192")).unwrap();
        apply(&mut o, "nixboot.verity.check", Some("full")).unwrap();
        assert_eq!(
            o,
            VerityOptions {
                store: Some(Source::Block(BlockSpec::PartUuid("1234".into()))),
                root_hash: Some([0xab; 32]),
                hash_offset: Some(8192),
                check: Check::Full,
            }
        );
        apply(
            &mut o,
            "nixboot.verity.store",
            Some("/nix/store/x-store.img"),
        )
        .unwrap();
        assert_eq!(o.store, Some(Source::File("/nix/store/x-store.img".into())));
        apply(&mut o, "nixboot.verity.store", Some("/dev/vdb")).unwrap();
        assert_eq!(
            o.store,
            Some(Source::Block(BlockSpec::Path("/dev/vdb".into())))
        );
    }

    #[test]
    fn bad_values_warn_and_keep_the_previous() {
        let mut o = VerityOptions::default();
        for (k, v) in [
            ("nixboot.verity.roothash", Some("abc")),
            ("nixboot.verity.roothash", None),
            ("nixboot.verity.hashoffset", Some("-1")),
            ("nixboot.verity.check", Some("some")),
            ("nixboot.verity.store", Some("tmpfs")),
            ("nixboot.verity.store", Some("virtiofs:x")),
            ("nixboot.verity.store", None),
            ("nixboot.verity.hash", Some("x")),
        ] {
            assert!(apply(&mut o, k, v).is_err(), "{k}={v:?}");
        }
        assert_eq!(o, VerityOptions::default());
        assert!(!o.asked());
    }
}
