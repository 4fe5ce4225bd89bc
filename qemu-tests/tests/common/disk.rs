//! Raw disk images made at test time: an ext4 filesystem from a directory (mkfs.ext4 -d),
//! placed bare, behind an MBR, or in a GPT (written here, CRCs included, both copies: the
//! kernel checks them).

use std::path::Path;
use std::process::Command;

const SECTOR: usize = 512;
/// Partitions start at 1 MiB, as partitioning tools align them.
const FIRST: usize = 2048;

/// An ext4 image of `size_mb` MiB holding `tree`, with this label and UUID.
pub fn ext4(tree: &Path, label: &str, uuid: &str, size_mb: u32, scratch: &Path) -> Vec<u8> {
    let out = scratch.join(format!("{label}.ext4"));
    let _ = std::fs::remove_file(&out);
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", label, "-U", uuid, "-d"])
        .arg(tree)
        .arg(&out)
        .arg(format!("{size_mb}M"))
        .status()
        .expect("mkfs.ext4 (apt-get install e2fsprogs)");
    assert!(status.success(), "mkfs.ext4 failed: {status}");
    std::fs::read(&out).unwrap()
}

/// The CRC-32 GPT uses (IEEE 802.3, reflected).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A GUID's text form in GPT's on-disk byte order (first three fields little-endian).
pub fn guid_bytes(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    assert_eq!(hex.len(), 32, "{text}");
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    b
}

/// "Linux filesystem data".
const LINUX_FS: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";

/// One partition to lay out.
pub struct Part<'a> {
    pub name: &'a str,
    pub guid: &'a str,
    pub data: &'a [u8],
}

fn sectors(len: usize) -> usize {
    len.div_ceil(SECTOR)
}

fn protective_or_mbr(img: &mut [u8], signature: u32, entries: &[(u8, usize, usize)]) {
    img[440..444].copy_from_slice(&signature.to_le_bytes());
    for (i, (kind, start, count)) in entries.iter().enumerate() {
        let e = 446 + 16 * i;
        img[e + 4] = *kind;
        img[e + 8..e + 12].copy_from_slice(&(*start as u32).to_le_bytes());
        img[e + 12..e + 16].copy_from_slice(&(*count as u32).to_le_bytes());
    }
    img[510] = 0x55;
    img[511] = 0xaa;
}

/// A GPT disk with the partitions one after another from 1 MiB.
pub fn gpt(disk_guid: &str, parts: &[Part<'_>]) -> Vec<u8> {
    let entries_sectors = 32; // 128 entries of 128 bytes
    let mut next = FIRST;
    let mut layout = Vec::new();
    for p in parts {
        let n = sectors(p.data.len());
        layout.push((next, n));
        next += n.div_ceil(FIRST) * FIRST;
    }
    let total = next + FIRST; // room for the backup table
    let last = total - 1;
    let mut img = vec![0u8; total * SECTOR];
    protective_or_mbr(&mut img, 0, &[(0xee, 1, last)]);

    let mut table = vec![0u8; entries_sectors * SECTOR];
    for (i, (p, (start, n))) in parts.iter().zip(&layout).enumerate() {
        let e = &mut table[128 * i..128 * (i + 1)];
        e[0..16].copy_from_slice(&guid_bytes(LINUX_FS));
        e[16..32].copy_from_slice(&guid_bytes(p.guid));
        e[32..40].copy_from_slice(&(*start as u64).to_le_bytes());
        e[40..48].copy_from_slice(&((start + n - 1) as u64).to_le_bytes());
        for (j, u) in p.name.encode_utf16().enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
        }
        img[start * SECTOR..start * SECTOR + p.data.len()].copy_from_slice(p.data);
    }
    let table_crc = crc32(&table);
    let header = |my: usize, alt: usize, entries_at: usize| {
        let mut h = vec![0u8; 92];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&(my as u64).to_le_bytes());
        h[32..40].copy_from_slice(&(alt as u64).to_le_bytes());
        h[40..48].copy_from_slice(&(2 + entries_sectors as u64).to_le_bytes());
        h[48..56].copy_from_slice(&((last - 1 - entries_sectors) as u64).to_le_bytes());
        h[56..72].copy_from_slice(&guid_bytes(disk_guid));
        h[72..80].copy_from_slice(&(entries_at as u64).to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&table_crc.to_le_bytes());
        let crc = crc32(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    let backup_entries = last - entries_sectors;
    img[SECTOR..SECTOR + 92].copy_from_slice(&header(1, last, 2));
    img[2 * SECTOR..2 * SECTOR + table.len()].copy_from_slice(&table);
    img[backup_entries * SECTOR..backup_entries * SECTOR + table.len()].copy_from_slice(&table);
    img[last * SECTOR..last * SECTOR + 92].copy_from_slice(&header(last, 1, backup_entries));
    img
}

/// An MBR disk with one Linux partition from 1 MiB.
pub fn mbr(signature: u32, data: &[u8]) -> Vec<u8> {
    let n = sectors(data.len());
    let mut img = vec![0u8; (FIRST + n) * SECTOR];
    protective_or_mbr(&mut img, signature, &[(0x83, FIRST, n)]);
    img[FIRST * SECTOR..FIRST * SECTOR + data.len()].copy_from_slice(data);
    img
}

/// The directory tree of a disk root: the store with the probe system, and the mount
/// points a NixOS root has (so a read-only root needs no mkdir).
pub fn root_tree(at: &Path, store: &Path) {
    for d in ["dev", "proc", "sys", "run", "nix"] {
        std::fs::create_dir_all(at.join(d)).unwrap();
    }
    let status = Command::new("cp")
        .arg("-a")
        .arg(store)
        .arg(at.join("nix/store"))
        .status()
        .unwrap();
    assert!(status.success());
}
