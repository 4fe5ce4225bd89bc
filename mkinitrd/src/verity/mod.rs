//! `mkinitrd verity`: a closure's store paths as a read-only erofs image with a dm-verity
//! hash tree appended, the whole disk the init attaches (`nixboot.verity.*`), and its check.
//!
//! A subcommand of mkinitrd rather than a binary of its own: it takes the closure the same
//! way `--embed-store` does (the same `store::resolve`), writes its output the same way
//! (`output::write_atomically`) and reports errors with the same rules and exit codes.
//!
//! Layout of the image (one file, a whole virtio disk):
//! `[erofs, padded to 4096][verity superblock, one block][hash tree, top level first]`;
//! the hash offset is the padded erofs size. `veritysetup verify IMAGE IMAGE ROOT
//! --hash-offset=N` reads it as it reads its own.
//!
//! Reproducible: mkfs.erofs gets a fixed timestamp (`-T`, SOURCE_DATE_EPOCH or 0), a UUID
//! derived from the store path names, `--all-root`, no xattrs (`-x-1`: the build host's
//! labels are not the image's); the salt and the verity UUID derive from the image's bytes.

pub mod hash_tree;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use nixboot_protocol::verity::{hex, Superblock, BLOCK};

use crate::store::{self, EmbedStore, StoreError};
use hash_tree::{fingerprint, TreeError};

const BLOCK_USIZE: usize = BLOCK as usize;

/// What `mkinitrd verity` was given.
#[derive(Debug, Clone)]
pub struct VerityOptions {
    pub store: EmbedStore,
    pub closure: Option<PathBuf>,
    pub output: PathBuf,
    /// The salt [default: the SHA-256 of the erofs image].
    pub salt: Option<Vec<u8>>,
    /// The timestamp of every file in the image.
    pub timestamp: u64,
    /// The mkfs.erofs to run.
    pub mkfs_erofs: PathBuf,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityImage {
    pub root_hash: [u8; 32],
    pub salt: Vec<u8>,
    pub data_blocks: u64,
    /// Where the superblock is (the hash tree follows one block later).
    pub hash_offset: u64,
    pub size: u64,
    pub store_paths: usize,
}

impl VerityImage {
    /// The kernel command line that attaches it (the device is the caller's to name).
    pub fn cmdline(&self, device: &str) -> String {
        format!(
            "nixboot.verity.store={device} nixboot.verity.roothash={} nixboot.verity.hashoffset={}",
            hex(&self.root_hash),
            self.hash_offset
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot stage {path} for mkfs.erofs: {source}")]
    Stage { path: PathBuf, source: io::Error },
    #[error("cannot run {mkfs}: {source} (install erofs-utils)")]
    Spawn { mkfs: PathBuf, source: io::Error },
    #[error("{mkfs} failed ({status}): {stderr}")]
    Mkfs {
        mkfs: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("hash tree: {0}")]
    Tree(#[from] TreeError),
    #[error("{path}: {what}")]
    Mismatch { path: PathBuf, what: String },
}

/// Builds the image and writes it atomically to `opts.output`.
pub fn build(opts: &VerityOptions) -> Result<VerityImage, VerityError> {
    let (paths, _notes) = store::resolve(&opts.store, opts.closure.as_deref())?;
    let scratch = tempfile::tempdir().map_err(|source| VerityError::Stage {
        path: std::env::temp_dir(),
        source,
    })?;
    let stage = scratch.path().join("store");
    let stage_err = |path: &Path| {
        let path = path.to_owned();
        move |source| VerityError::Stage { path, source }
    };
    fs::create_dir(&stage).map_err(stage_err(&stage))?;
    for p in &paths {
        let to = stage.join(&p.name);
        copy_tree(&p.host, &to).map_err(stage_err(&p.host))?;
    }
    let names: Vec<&str> = paths.iter().map(|p| p.name.as_str()).collect();
    let erofs = scratch.path().join("store.erofs");
    mkfs_erofs(opts, &names, &stage, &erofs)?;
    let mut data = fs::read(&erofs).map_err(|source| VerityError::Read {
        path: erofs.clone(),
        source,
    })?;
    data.resize(data.len().next_multiple_of(BLOCK_USIZE), 0);
    let digest = fingerprint(&data);
    let salt = opts.salt.clone().unwrap_or_else(|| digest.to_vec());
    let tree = hash_tree::build(&data, &salt)?;
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&fingerprint(&digest)[..16]);
    let sb = Superblock {
        uuid,
        data_blocks: tree.data_blocks,
        salt: salt.clone(),
    };
    let sb = sb.encode();
    crate::output::write_atomically(&opts.output, |w: &mut dyn Write| {
        w.write_all(&data)?;
        w.write_all(&sb)?;
        w.write_all(&tree.hash)
    })
    .map_err(|source| VerityError::Write {
        path: opts.output.clone(),
        source,
    })?;
    Ok(VerityImage {
        root_hash: tree.root,
        salt,
        data_blocks: tree.data_blocks,
        hash_offset: data.len() as u64,
        size: (data.len() + sb.len() + tree.hash.len()) as u64,
        store_paths: paths.len(),
    })
}

/// Runs mkfs.erofs with the flags that make it reproducible.
fn mkfs_erofs(
    opts: &VerityOptions,
    names: &[&str],
    stage: &Path,
    out: &Path,
) -> Result<(), VerityError> {
    let id = fingerprint(names.join("\n").as_bytes());
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        hex(&id[0..4]),
        hex(&id[4..6]),
        hex(&id[6..8]),
        hex(&id[8..10]),
        hex(&id[10..16])
    );
    let output = Command::new(&opts.mkfs_erofs)
        .arg("--quiet")
        .arg("--all-root")
        .arg("-x-1")
        .arg(format!("-T{}", opts.timestamp))
        .arg(format!("-U{uuid}"))
        .arg(out)
        .arg(stage)
        .output()
        .map_err(|source| VerityError::Spawn {
            mkfs: opts.mkfs_erofs.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(VerityError::Mkfs {
            mkfs: opts.mkfs_erofs.clone(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// A copy of `from` at `to`: files hard-linked where they can be (else copied), symlinks
/// kept, modes kept (mkfs.erofs then pins owners and times).
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    if meta.file_type().is_symlink() {
        return std::os::unix::fs::symlink(fs::read_link(from)?, to);
    }
    if meta.is_file() {
        if fs::hard_link(from, to).is_err() {
            fs::copy(from, to)?;
        }
        return Ok(());
    }
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "neither a file, a directory nor a symlink (a store holds no such thing)",
        ));
    }
    fs::create_dir(to)?;
    let mut entries: Vec<_> = fs::read_dir(from)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        copy_tree(&e.path(), &to.join(e.file_name()))?;
    }
    fs::set_permissions(to, meta.permissions())
}

/// What a check of an image found: its superblock and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub hash_offset: u64,
    pub superblock: Superblock,
}

/// Checks `image` against `root_hash`: the superblock at `hash_offset` (default: the first
/// block-aligned offset holding one that describes the data before it), the stored tree
/// against the data, the root. Errors name the first difference.
pub fn check(
    image: &Path,
    root_hash: &[u8; 32],
    hash_offset: Option<u64>,
) -> Result<Checked, VerityError> {
    let bytes = fs::read(image).map_err(|source| VerityError::Read {
        path: image.to_owned(),
        source,
    })?;
    let mismatch = |what: String| VerityError::Mismatch {
        path: image.to_owned(),
        what,
    };
    let (offset, sb) = find_superblock(&bytes, hash_offset).map_err(mismatch)?;
    let data = &bytes[..(sb.data_blocks as usize) * BLOCK_USIZE];
    let tree = hash_tree::build(data, &sb.salt)?;
    let stored = &bytes[(offset as usize + BLOCK_USIZE).min(bytes.len())..];
    if stored.len() < tree.hash.len() {
        return Err(mismatch(format!(
            "the hash tree is cut short: {} bytes after the superblock, {} needed",
            stored.len(),
            tree.hash.len()
        )));
    }
    let first_bad = tree
        .hash
        .chunks(BLOCK_USIZE)
        .zip(stored.chunks(BLOCK_USIZE))
        .position(|(a, b)| a != b);
    if let Some(i) = first_bad {
        return Err(mismatch(format!(
            "the hash tree does not match the data: hash block {i} (byte {} of the image) \
             differs from the one computed from the data (the data or the tree was changed \
             after `mkinitrd verity` wrote them)",
            offset + BLOCK as u64 * (i as u64 + 1)
        )));
    }
    if &tree.root != root_hash {
        return Err(mismatch(format!(
            "root hash {} does not match the image's {}",
            hex(root_hash),
            hex(&tree.root)
        )));
    }
    Ok(Checked {
        hash_offset: offset,
        superblock: sb,
    })
}

fn find_superblock(bytes: &[u8], hash_offset: Option<u64>) -> Result<(u64, Superblock), String> {
    let at = |o: u64| -> Result<Superblock, String> {
        let sb = bytes
            .get(o as usize..)
            .ok_or_else(|| format!("hash offset {o} is past the end ({} bytes)", bytes.len()))
            .and_then(|b| Superblock::parse(b).map_err(|e| format!("at hash offset {o}: {e}")))?;
        if sb.data_blocks.checked_mul(BLOCK as u64) > Some(o) {
            return Err(format!(
                "the superblock at {o} covers {} data blocks, more than lie before it",
                sb.data_blocks
            ));
        }
        Ok(sb)
    };
    if let Some(o) = hash_offset {
        return at(o).map(|sb| (o, sb));
    }
    (BLOCK as u64..bytes.len() as u64)
        .step_by(BLOCK_USIZE)
        .find_map(|o| {
            at(o)
                .ok()
                .filter(|sb| sb.data_blocks * BLOCK as u64 == o)
                .map(|sb| (o, sb))
        })
        .ok_or_else(|| "no verity superblock after the data (pass --hash-offset)".to_string())
}
