//! The dm-verity superblock (cryptsetup's `struct verity_sb`, what `veritysetup format`
//! writes at the hash offset): `mkinitrd verity` writes it, the init reads it to build the
//! verity table. 512 bytes, little endian, zero-padded to one hash block on disk; the hash
//! tree starts one hash block after it.
//!
//! Only what nixboot writes is accepted: version 1, hash type 1 (salt first), sha256,
//! 4096-byte data and hash blocks. The salt and the data size come from the disk; they are
//! not trusted on their own: the root hash given on the command line covers both (another
//! salt or size gives another root hash, and the first verified read fails).

/// Signature, size and the only block size used.
pub const SIGNATURE: &[u8; 8] = b"verity\0\0";
pub const SIZE: usize = 512;
pub const BLOCK: u32 = 4096;
pub const ALGORITHM: &str = "sha256";
pub const MAX_SALT: usize = 256;

/// What the superblock says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub uuid: [u8; 16],
    pub data_blocks: u64,
    pub salt: Vec<u8>,
}

/// Why bytes are not a superblock nixboot can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SuperblockError {
    #[error("{0} bytes: a verity superblock is {SIZE}")]
    Short(usize),
    #[error("no verity superblock (the signature \"verity\" is missing)")]
    Signature,
    #[error("verity superblock version {0}, hash type {1}: only version 1, type 1 is read")]
    Version(u32, u32),
    #[error("hash algorithm {0:?}: only sha256 is read")]
    Algorithm(String),
    #[error("block sizes {0}/{1}: only {BLOCK}/{BLOCK} are read")]
    BlockSize(u32, u32),
    #[error("salt of {0} bytes: at most {MAX_SALT}")]
    Salt(usize),
    #[error("zero data blocks")]
    Empty,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

impl Superblock {
    /// The superblock padded to one hash block.
    pub fn encode(&self) -> Vec<u8> {
        let mut sb = Vec::with_capacity(BLOCK as usize);
        sb.extend_from_slice(SIGNATURE);
        sb.extend_from_slice(&1u32.to_le_bytes()); // superblock version
        sb.extend_from_slice(&1u32.to_le_bytes()); // hash type 1 (normal: salt first)
        sb.extend_from_slice(&self.uuid);
        let mut alg = [0u8; 32];
        alg[..ALGORITHM.len()].copy_from_slice(ALGORITHM.as_bytes());
        sb.extend_from_slice(&alg);
        sb.extend_from_slice(&BLOCK.to_le_bytes());
        sb.extend_from_slice(&BLOCK.to_le_bytes());
        sb.extend_from_slice(&self.data_blocks.to_le_bytes());
        let salt_len = self.salt.len().min(MAX_SALT);
        sb.extend_from_slice(&(salt_len as u16).to_le_bytes());
        sb.extend_from_slice(&[0; 6]);
        let mut salt = [0u8; MAX_SALT];
        salt[..salt_len].copy_from_slice(&self.salt[..salt_len]);
        sb.extend_from_slice(&salt);
        sb.resize(BLOCK as usize, 0);
        sb
    }

    /// Reads the first [`SIZE`] bytes of `b`.
    pub fn parse(b: &[u8]) -> Result<Superblock, SuperblockError> {
        if b.len() < SIZE {
            return Err(SuperblockError::Short(b.len()));
        }
        if &b[..8] != SIGNATURE {
            return Err(SuperblockError::Signature);
        }
        let (version, kind) = (u32_at(b, 8), u32_at(b, 12));
        if (version, kind) != (1, 1) {
            return Err(SuperblockError::Version(version, kind));
        }
        let alg = &b[32..64];
        let alg = String::from_utf8_lossy(&alg[..alg.iter().position(|c| *c == 0).unwrap_or(32)]);
        if alg != ALGORITHM {
            return Err(SuperblockError::Algorithm(alg.into_owned()));
        }
        let (data_bs, hash_bs) = (u32_at(b, 64), u32_at(b, 68));
        if (data_bs, hash_bs) != (BLOCK, BLOCK) {
            return Err(SuperblockError::BlockSize(data_bs, hash_bs));
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&b[72..80]);
        let data_blocks = u64::from_le_bytes(n);
        if data_blocks == 0 {
            return Err(SuperblockError::Empty);
        }
        let salt_len = u16::from_le_bytes([b[80], b[81]]) as usize;
        if salt_len > MAX_SALT {
            return Err(SuperblockError::Salt(salt_len));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[16..32]);
        Ok(Superblock {
            uuid,
            data_blocks,
            salt: b[88..88 + salt_len].to_vec(),
        })
    }
}

/// Lower-case hex, as veritysetup prints hashes and salts (`-` for an empty salt).
pub fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "-".into();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A root hash as given on the command line: 64 hex digits.
pub fn parse_root_hash(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_layout() {
        let sb = Superblock {
            uuid: [7; 16],
            data_blocks: 3,
            salt: vec![0xab; 4],
        };
        let b = sb.encode();
        assert_eq!(b.len(), BLOCK as usize);
        assert_eq!(&b[32..38], b"sha256");
        assert_eq!(&b[88..92], &[0xab; 4]);
        assert!(b[SIZE..].iter().all(|x| *x == 0));
        assert_eq!(Superblock::parse(&b), Ok(sb));
    }

    #[test]
    fn what_is_not_ours_is_refused() {
        let good = Superblock {
            uuid: [0; 16],
            data_blocks: 1,
            salt: Vec::new(),
        }
        .encode();
        assert_eq!(
            Superblock::parse(&good[..100]),
            Err(SuperblockError::Short(100))
        );
        let mut b = good.clone();
        b[0] = b'x';
        assert_eq!(Superblock::parse(&b), Err(SuperblockError::Signature));
        let mut b = good.clone();
        b[32..38].copy_from_slice(b"sha512");
        assert_eq!(
            Superblock::parse(&b),
            Err(SuperblockError::Algorithm("sha512".into()))
        );
        let mut b = good.clone();
        b[64..68].copy_from_slice(&512u32.to_le_bytes());
        assert_eq!(
            Superblock::parse(&b),
            Err(SuperblockError::BlockSize(512, 4096))
        );
        let mut b = good.clone();
        b[72..80].copy_from_slice(&[0; 8]);
        assert_eq!(Superblock::parse(&b), Err(SuperblockError::Empty));
        let mut b = good;
        b[80..82].copy_from_slice(&300u16.to_le_bytes());
        assert_eq!(Superblock::parse(&b), Err(SuperblockError::Salt(300)));
    }

    #[test]
    fn root_hashes() {
        let h = "00ff".repeat(16);
        let parsed = parse_root_hash(&h).unwrap();
        assert_eq!(parsed[1], 0xff);
        assert_eq!(hex(&parsed), h);
        assert_eq!(parse_root_hash(&h[..62]), None);
        assert_eq!(parse_root_hash(&format!("{}zz", &h[..62])), None);
        assert_eq!(hex(&[]), "-");
    }
}
