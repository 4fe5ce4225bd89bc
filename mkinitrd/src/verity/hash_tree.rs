//! The dm-verity hash tree and superblock, in the format `veritysetup format` writes
//! (cryptsetup's lib/verity, hash type 1, the kernel's Documentation/admin-guide/
//! device-mapper/verity.rst): SHA-256 over 4096-byte blocks, the salt hashed first, each
//! hash block holding 128 digests zero-padded to the block, the levels stored top level
//! first; the root hash is the digest of the top level's one block. Pure: bytes in, bytes out.

use sha2::{Digest, Sha256};

/// Data and hash block size (the page size; what veritysetup uses by default).
pub const BLOCK: usize = 4096;
/// SHA-256.
pub const DIGEST: usize = 32;
/// Digests per hash block.
const PER_BLOCK: usize = BLOCK / DIGEST;
/// The longest salt the superblock has room for.
pub use nixboot_protocol::verity::MAX_SALT;

/// What a hash tree was built from and its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    pub data_blocks: u64,
    pub salt: Vec<u8>,
    /// The hash blocks, top level first (what follows the superblock on disk).
    pub hash: Vec<u8>,
    pub root: [u8; DIGEST],
}

/// Why a tree cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("the data is {0} bytes, not a whole number of {BLOCK}-byte blocks")]
    NotBlockAligned(usize),
    #[error("the data is empty: dm-verity needs at least one block")]
    Empty,
    #[error("the salt is {0} bytes; the verity superblock holds at most {MAX_SALT}")]
    SaltTooLong(usize),
}

fn salted(salt: &[u8], block: &[u8]) -> [u8; DIGEST] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// The kernel's level count: the least n with ceil(blocks / 128^n) == 1.
fn levels(data_blocks: u64) -> u32 {
    let mut n = 0;
    while (data_blocks - 1) >> (7 * n) > 0 {
        n += 1;
    }
    n
}

/// The digests of `below`'s blocks, 128 to a hash block, each block zero-padded.
fn hash_level(below: &[u8], salt: &[u8]) -> Vec<u8> {
    let blocks = below.len() / BLOCK;
    let mut out = Vec::with_capacity(blocks.div_ceil(PER_BLOCK) * BLOCK);
    for group in below.chunks(PER_BLOCK * BLOCK) {
        for b in group.chunks(BLOCK) {
            out.extend_from_slice(&salted(salt, b));
        }
        out.resize(out.len().next_multiple_of(BLOCK), 0);
    }
    out
}

/// Builds the tree of `data` (a whole number of blocks) with `salt`.
pub fn build(data: &[u8], salt: &[u8]) -> Result<Tree, TreeError> {
    if data.is_empty() {
        return Err(TreeError::Empty);
    }
    if data.len() & (BLOCK - 1) != 0 {
        return Err(TreeError::NotBlockAligned(data.len()));
    }
    if salt.len() > MAX_SALT {
        return Err(TreeError::SaltTooLong(salt.len()));
    }
    let data_blocks = (data.len() / BLOCK) as u64;
    // Each level's blocks, bottom (the digests of the data) first.
    let mut stored: Vec<Vec<u8>> = Vec::new();
    for _ in 0..levels(data_blocks) {
        let below = stored.last().map_or(data, Vec::as_slice);
        stored.push(hash_level(below, salt));
    }
    // The top level is one block (or, with no levels, the only data block).
    let top = stored.last().map_or(data, Vec::as_slice);
    let root = salted(salt, &top[..BLOCK]);
    let hash = stored.iter().rev().flatten().copied().collect();
    Ok(Tree {
        data_blocks,
        salt: salt.to_vec(),
        hash,
        root,
    })
}

/// The data's own digest: the default salt and UUID derive from it, so the same image
/// always gets the same tree (reproducible) and two images never share a salt.
pub fn fingerprint(data: &[u8]) -> [u8; DIGEST] {
    Sha256::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_counts_follow_the_kernel() {
        assert_eq!(levels(1), 0);
        assert_eq!(levels(2), 1);
        assert_eq!(levels(128), 1);
        assert_eq!(levels(129), 2);
        assert_eq!(levels(128 * 128), 2);
        assert_eq!(levels(128 * 128 + 1), 3);
    }

    #[test]
    fn one_block_is_its_own_root() {
        let data = vec![7u8; BLOCK];
        let t = build(&data, b"s").unwrap();
        assert!(t.hash.is_empty());
        assert_eq!(t.root, salted(b"s", &data));
    }

    #[test]
    fn two_levels_are_stored_top_first() {
        // 130 blocks: level 0 has two blocks (128 + 2 digests), level 1 one block.
        let data: Vec<u8> = (0..130 * BLOCK).map(|i| (i / BLOCK) as u8).collect();
        let t = build(&data, &[]).unwrap();
        assert_eq!(t.hash.len(), 3 * BLOCK);
        let bottom = &t.hash[BLOCK..];
        assert_eq!(&bottom[..DIGEST], salted(&[], &data[..BLOCK]));
        let last = 129 * DIGEST;
        assert_eq!(
            &bottom[last..last + DIGEST],
            salted(&[], &data[129 * BLOCK..])
        );
        assert!(bottom[last + DIGEST..].iter().all(|b| *b == 0));
        let top = &t.hash[..BLOCK];
        assert_eq!(&top[..DIGEST], salted(&[], &bottom[..BLOCK]));
        assert_eq!(&top[DIGEST..2 * DIGEST], salted(&[], &bottom[BLOCK..]));
        assert_eq!(t.root, salted(&[], top));
    }

    #[test]
    fn bad_input_is_refused() {
        assert_eq!(build(&[], b""), Err(TreeError::Empty));
        assert_eq!(build(&[0; 100], b""), Err(TreeError::NotBlockAligned(100)));
        assert_eq!(
            build(&[0; BLOCK], &[0; 257]),
            Err(TreeError::SaltTooLong(257))
        );
    }

    /// Vectors from `veritysetup format DATA HASH --salt=abcd|- --uuid=0...0` (cryptsetup
    /// 2.6.1): the root hash, and for two of them the SHA-256 of the whole hash file
    /// (superblock + tree), so the tree's bytes are checked, not only its root.
    fn vector_data(name: &str) -> Vec<u8> {
        match name {
            "one" => vec![7; BLOCK],
            "d130" => (0..130u32).flat_map(|i| [i as u8; BLOCK]).collect(),
            _ => (0..128 * 128 + 1u32)
                .flat_map(|i| i.to_le_bytes().repeat(BLOCK / 4))
                .collect(),
        }
    }

    const VECTORS: &[(&str, &str, &str, Option<&str>)] = &[
        (
            "one",
            "abcd",
            "0019204d8631d683bde4e02274cfb0d89af69bcb7e486a0146ed2f64baeb93ed",
            None,
        ),
        (
            "one",
            "",
            "c9ac7b0624824f844f6c7f3d50fab9741a8914e878467e8daaedca143a34d90b",
            None,
        ),
        (
            "d130",
            "abcd",
            "7ec50101de53e855fd92dbe95c0a10052e603fc424cd6495f9fee35192998647",
            Some("8a55ede7fb346218629346b2c019c0cf5cf9e417894ff51fb555c6c9fed35f11"),
        ),
        (
            "d130",
            "",
            "592946db708a82ad1ee8b1a6b3d2ee3f93e9809710c8743937be43fe0212954a",
            None,
        ),
        (
            "d16385",
            "abcd",
            "9b4c1ad52f33959155efab58c6f748756d377da0a79915feb4437199047a7ffc",
            Some("3decbbfae8b808201f28c5d127b908cd7941918138d365ed12c0514861ff33d6"),
        ),
        (
            "d16385",
            "",
            "2c20621eda9e8f8d6c656754f361b140237ed7cff790e8d67981fbb9bd3b7ced",
            None,
        ),
    ];

    #[test]
    fn veritysetup_vectors() {
        use nixboot_protocol::verity::{hex, Superblock};
        for (name, salt, root, file) in VECTORS {
            let salt: Vec<u8> = if salt.is_empty() {
                vec![]
            } else {
                vec![0xab, 0xcd]
            };
            let t = build(&vector_data(name), &salt).unwrap();
            assert_eq!(hex(&t.root), *root, "{name} salt {salt:?}");
            if let Some(file) = file {
                let mut bytes = Superblock {
                    uuid: [0; 16],
                    data_blocks: t.data_blocks,
                    salt: salt.clone(),
                }
                .encode();
                bytes.extend_from_slice(&t.hash);
                assert_eq!(hex(&fingerprint(&bytes)), *file, "{name}");
            }
        }
    }
}
