//! What is on a block device, read from its first bytes (pure; no I/O).
//!
//! No udev and no libblkid in the initrd: like booster, we read the few superblock fields
//! and partition-table entries `root=` can name. Everything here parses bytes handed in by
//! a reader callback, so the same code runs on a device and on fuzzer input. Input is
//! untrusted (any disk can be attached): no panics, no unbounded allocations.

use crate::cmdline::BlockSpec;

/// Reads `len` bytes at `offset`; `None` when the device is shorter or unreadable.
pub type ReadAt<'a> = dyn FnMut(u64, usize) -> Option<Vec<u8>> + 'a;

/// A filesystem recognised by its superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    /// The type to hand to mount(2).
    pub fstype: &'static str,
    pub uuid: Option<String>,
    pub label: Option<String>,
}

/// The filesystem types [`probe_fs`] knows, for messages.
pub const KNOWN_FILESYSTEMS: &str = "ext2/3/4, btrfs, xfs, vfat, squashfs, erofs";

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// `0a1b2c3d-...` as blkid prints a big-endian (RFC 4122 byte order) UUID; all-zero is none.
fn uuid_be(b: &[u8]) -> Option<String> {
    let b: &[u8; 16] = b.try_into().ok()?;
    if b.iter().all(|x| *x == 0) {
        return None;
    }
    let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    Some(format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    ))
}

/// A GPT GUID: the first three fields are little-endian.
fn guid_le(b: &[u8]) -> Option<String> {
    let b: &[u8; 16] = b.try_into().ok()?;
    let mut be = *b;
    be[0..4].reverse();
    be[4..6].reverse();
    be[6..8].reverse();
    uuid_be(&be)
}

/// A NUL-padded label; empty is none.
fn label(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|x| *x == 0).unwrap_or(b.len());
    let s = String::from_utf8_lossy(&b[..end]).into_owned();
    (!s.is_empty()).then_some(s)
}

/// Recognises the filesystem on a device from its superblock.
pub fn probe_fs(read: &mut ReadAt<'_>) -> Option<FsInfo> {
    if let Some(sb) = read(1024, 1024) {
        // ext2/3/4: one magic for all; the ext4 driver mounts them all.
        if le16(&sb, 0x38) == Some(0xef53) {
            return Some(FsInfo {
                fstype: "ext4",
                uuid: uuid_be(sb.get(0x68..0x78)?),
                label: label(sb.get(0x78..0x88)?),
            });
        }
        if le32(&sb, 0) == Some(0xe0f5_e1e2) {
            return Some(FsInfo {
                fstype: "erofs",
                uuid: uuid_be(sb.get(0x30..0x40)?),
                label: label(sb.get(0x40..0x50)?),
            });
        }
    }
    if let Some(b) = read(0, 512) {
        if b.starts_with(b"XFSB") {
            return Some(FsInfo {
                fstype: "xfs",
                uuid: uuid_be(b.get(32..48)?),
                label: label(b.get(108..120)?),
            });
        }
        if b.starts_with(b"hsqs") {
            return Some(FsInfo {
                fstype: "squashfs",
                uuid: None,
                label: None,
            });
        }
        if let Some(fat) = probe_fat(&b) {
            return Some(fat);
        }
    }
    if let Some(sb) = read(0x10000, 0x1000) {
        if sb.get(0x40..0x48) == Some(b"_BHRfS_M") {
            return Some(FsInfo {
                fstype: "btrfs",
                uuid: uuid_be(sb.get(0x20..0x30)?),
                label: label(sb.get(0x12b..0x22b)?),
            });
        }
    }
    None
}

/// FAT12/16/32 boot sector: the volume serial is its UUID (`ABCD-1234`, as blkid shows it).
fn probe_fat(b: &[u8]) -> Option<FsInfo> {
    if le16(b, 510) != Some(0xaa55) {
        return None;
    }
    let (serial_at, label_at) = if b.get(0x52..0x57) == Some(b"FAT32") {
        (0x43, 0x47)
    } else if b.get(0x36..0x39) == Some(b"FAT") {
        (0x27, 0x2b)
    } else {
        return None;
    };
    let serial = le32(b, serial_at)?;
    let name = label(b.get(label_at..label_at + 11)?)
        .map(|l| l.trim_end().to_string())
        .filter(|l| !l.is_empty() && l != "NO NAME");
    Some(FsInfo {
        fstype: "vfat",
        uuid: Some(format!("{:04X}-{:04X}", serial >> 16, serial & 0xffff)),
        label: name,
    })
}

/// One GPT partition entry in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptPart {
    /// The kernel's partition number: entry index + 1.
    pub number: u32,
    pub uuid: String,
    pub name: Option<String>,
}

/// The partition table of a whole disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartTable {
    Gpt(Vec<GptPart>),
    /// MBR: partitions are named by the disk signature (`SSSSSSSS-PP`).
    Mbr {
        signature: u32,
    },
    None,
}

/// Bounds the entry array a header may ask us to read (the usual one is 16 KiB).
const MAX_GPT_ENTRIES_BYTES: u64 = 1 << 20;

/// Reads the partition table of a whole disk: GPT at LBA 1 (512- or 4096-byte sectors),
/// else an MBR signature. CRCs are not checked: a damaged table still names its partitions,
/// and the kernel, which did the partitioning, has checked what it uses.
pub fn probe_table(read: &mut ReadAt<'_>) -> PartTable {
    for sector in [512u64, 4096] {
        let Some(h) = read(sector, 92) else { continue };
        if !h.starts_with(b"EFI PART") {
            continue;
        }
        let (Some(lba), Some(count), Some(size)) = (le64(&h, 72), le32(&h, 80), le32(&h, 84))
        else {
            continue;
        };
        let total = u64::from(count) * u64::from(size);
        if size < 128 || total > MAX_GPT_ENTRIES_BYTES {
            continue;
        }
        let Some(at) = lba.checked_mul(sector) else {
            continue;
        };
        let Some(entries) = read(at, total as usize) else {
            continue;
        };
        let mut parts = Vec::new();
        for (i, e) in entries.chunks_exact(size as usize).enumerate() {
            if e[..16].iter().all(|b| *b == 0) {
                continue; // unused entry
            }
            let Some(uuid) = guid_le(&e[16..32]) else {
                continue;
            };
            parts.push(GptPart {
                number: i as u32 + 1,
                uuid,
                name: utf16_name(&e[56..128]),
            });
        }
        return PartTable::Gpt(parts);
    }
    match read(0, 512) {
        Some(b) if le16(&b, 510) == Some(0xaa55) && !is_fat_or_protective(&b) => PartTable::Mbr {
            signature: le32(&b, 440).unwrap_or(0),
        },
        _ => PartTable::None,
    }
}

/// A FAT boot sector also ends in 55AA; a protective MBR (type EE) means a GPT we could not
/// read. Neither is an MBR partition table.
fn is_fat_or_protective(b: &[u8]) -> bool {
    probe_fat(b).is_some() || (0..4).any(|i| b.get(446 + 16 * i + 4) == Some(&0xee))
}

/// A GPT partition name: UTF-16LE, NUL-padded.
fn utf16_name(b: &[u8]) -> Option<String> {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .collect();
    let s = String::from_utf16_lossy(&units);
    (!s.is_empty()).then_some(s)
}

/// The kernel's PARTUUID of MBR partition `number`.
pub fn mbr_partuuid(signature: u32, number: u32) -> String {
    format!("{signature:08x}-{number:02x}")
}

/// One block device as the wait sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Candidate {
    /// The kernel's name (`vda1`); the node is `/dev/<name>`.
    pub name: String,
    pub dev: (u32, u32),
    /// Filled in only when the spec needs it (reading superblocks costs I/O).
    pub fs: Option<FsInfo>,
    pub part_uuid: Option<String>,
    pub part_label: Option<String>,
}

/// What must be read from a device to match `spec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Name or number is enough.
    Nothing,
    Superblock,
    PartitionTable,
}

pub fn needs(spec: &BlockSpec) -> Needs {
    match spec {
        BlockSpec::Label(_) | BlockSpec::Uuid(_) => Needs::Superblock,
        BlockSpec::PartUuid(_) | BlockSpec::PartLabel(_) => Needs::PartitionTable,
        BlockSpec::Path(_) | BlockSpec::DevNum(..) | BlockSpec::Other(_) => Needs::Nothing,
    }
}

/// Whether `c` is the device `spec` names. UUIDs compare without regard to case (blkid
/// prints lower case, FAT serials are upper case, users type either); labels exactly.
pub fn matches(spec: &BlockSpec, c: &Candidate) -> bool {
    let fs = c.fs.as_ref();
    match spec {
        BlockSpec::Label(l) => fs.and_then(|f| f.label.as_deref()) == Some(l.as_str()),
        BlockSpec::Uuid(u) => fs
            .and_then(|f| f.uuid.as_deref())
            .is_some_and(|x| x.eq_ignore_ascii_case(u)),
        BlockSpec::PartUuid(u) => c
            .part_uuid
            .as_deref()
            .is_some_and(|x| x.eq_ignore_ascii_case(u)),
        BlockSpec::PartLabel(l) => c.part_label.as_deref() == Some(l.as_str()),
        BlockSpec::Path(p) => p.strip_prefix("/dev/") == Some(c.name.as_str()),
        BlockSpec::DevNum(ma, mi) => c.dev == (*ma, *mi),
        BlockSpec::Other(_) => false,
    }
}

/// `vda1 (254:1, ext4 LABEL=nixroot UUID=...)`, for the list in a timeout message.
pub fn describe(c: &Candidate) -> String {
    let mut s = format!("{} ({}:{}", c.name, c.dev.0, c.dev.1);
    if let Some(f) = &c.fs {
        s.push_str(&format!(", {}", f.fstype));
        if let Some(l) = &f.label {
            s.push_str(&format!(" LABEL={l}"));
        }
        if let Some(u) = &f.uuid {
            s.push_str(&format!(" UUID={u}"));
        }
    }
    if let Some(u) = &c.part_uuid {
        s.push_str(&format!(" PARTUUID={u}"));
    }
    if let Some(l) = &c.part_label {
        s.push_str(&format!(" PARTLABEL={l}"));
    }
    s.push(')');
    s
}

/// Parses `MAJ:MIN` as sysfs writes it in `dev`.
pub fn parse_dev(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// `DEVNAME=` of a sysfs `uevent` file: the node's path below /dev.
pub fn uevent_devname(uevent: &str) -> Option<&str> {
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .filter(|n| !n.is_empty() && !n.split('/').any(|c| c == ".." || c.is_empty()))
}

/// A reader over an in-memory image (tests, fuzzing).
pub fn slice_reader(img: &[u8]) -> impl FnMut(u64, usize) -> Option<Vec<u8>> + '_ {
    move |off, len| {
        let start = usize::try_from(off).ok()?;
        let end = start.checked_add(len)?;
        img.get(start..end).map(<[u8]>::to_vec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(img: &mut [u8], at: usize, bytes: &[u8]) {
        img[at..at + bytes.len()].copy_from_slice(bytes);
    }

    const UUID: [u8; 16] = [
        0x3f, 0x5a, 0xd5, 0x93, 0x45, 0x46, 0x4a, 0x94, 0xa3, 0x74, 0xbc, 0xfb, 0x68, 0xaa, 0x11,
        0xf7,
    ];
    const UUID_TEXT: &str = "3f5ad593-4546-4a94-a374-bcfb68aa11f7";

    fn probe(img: &[u8]) -> Option<FsInfo> {
        probe_fs(&mut slice_reader(img))
    }

    #[test]
    fn ext4() {
        let mut img = vec![0u8; 4096];
        put(&mut img, 1024 + 0x38, &0xef53u16.to_le_bytes());
        put(&mut img, 1024 + 0x68, &UUID);
        put(&mut img, 1024 + 0x78, b"nixroot");
        assert_eq!(
            probe(&img),
            Some(FsInfo {
                fstype: "ext4",
                uuid: Some(UUID_TEXT.into()),
                label: Some("nixroot".into())
            })
        );
        // No label, no UUID.
        put(&mut img, 1024 + 0x68, &[0; 32]);
        assert_eq!(probe(&img).unwrap().label, None);
        assert_eq!(probe(&img).unwrap().uuid, None);
    }

    #[test]
    fn btrfs_xfs_erofs_squashfs() {
        let mut img = vec![0u8; 0x11000];
        put(&mut img, 0x10040, b"_BHRfS_M");
        put(&mut img, 0x10020, &UUID);
        put(&mut img, 0x1012b, b"data");
        let f = probe(&img).unwrap();
        assert_eq!(
            (f.fstype, f.uuid.as_deref(), f.label.as_deref()),
            ("btrfs", Some(UUID_TEXT), Some("data"))
        );

        let mut img = vec![0u8; 4096];
        put(&mut img, 0, b"XFSB");
        put(&mut img, 32, &UUID);
        put(&mut img, 108, b"twelve-chars");
        let f = probe(&img).unwrap();
        assert_eq!(
            (f.fstype, f.label.as_deref()),
            ("xfs", Some("twelve-chars"))
        );

        let mut img = vec![0u8; 4096];
        put(&mut img, 1024, &0xe0f5_e1e2u32.to_le_bytes());
        put(&mut img, 1024 + 0x30, &UUID);
        put(&mut img, 1024 + 0x40, b"ro-root");
        let f = probe(&img).unwrap();
        assert_eq!((f.fstype, f.label.as_deref()), ("erofs", Some("ro-root")));

        let mut img = vec![0u8; 4096];
        put(&mut img, 0, b"hsqs");
        assert_eq!(probe(&img).unwrap().fstype, "squashfs");
    }

    #[test]
    fn vfat() {
        let mut img = vec![0u8; 4096];
        put(&mut img, 510, &[0x55, 0xaa]);
        put(&mut img, 0x52, b"FAT32   ");
        put(&mut img, 0x43, &0x1234_abcdu32.to_le_bytes());
        put(&mut img, 0x47, b"ESP        ");
        assert_eq!(
            probe(&img),
            Some(FsInfo {
                fstype: "vfat",
                uuid: Some("1234-ABCD".into()),
                label: Some("ESP".into())
            })
        );
        let mut img = vec![0u8; 4096];
        put(&mut img, 510, &[0x55, 0xaa]);
        put(&mut img, 0x36, b"FAT16   ");
        put(&mut img, 0x2b, b"NO NAME    ");
        assert_eq!(probe(&img).unwrap().label, None);
    }

    #[test]
    fn nothing_recognised_in_zeros_or_short_devices() {
        assert_eq!(probe(&[0u8; 0x20000]), None);
        assert_eq!(probe(&[]), None);
        assert_eq!(probe(&[0xffu8; 700]), None);
    }

    fn gpt(sector: usize, parts: &[(u32, [u8; 16], &str)]) -> Vec<u8> {
        let mut img = vec![0u8; sector * 40];
        // Protective MBR.
        put(&mut img, 446 + 4, &[0xee]);
        put(&mut img, 510, &[0x55, 0xaa]);
        put(&mut img, sector, b"EFI PART");
        put(&mut img, sector + 72, &2u64.to_le_bytes());
        put(&mut img, sector + 80, &128u32.to_le_bytes());
        put(&mut img, sector + 84, &128u32.to_le_bytes());
        for (index, guid, name) in parts {
            let e = 2 * sector + 128 * (*index as usize);
            put(&mut img, e, &[0xaf; 16]); // any type GUID
            put(&mut img, e + 16, guid);
            for (i, u) in name.encode_utf16().enumerate() {
                put(&mut img, e + 56 + 2 * i, &u.to_le_bytes());
            }
        }
        img
    }

    #[test]
    fn gpt_partitions_by_index_with_mixed_endian_guids() {
        for sector in [512, 4096] {
            let img = gpt(sector, &[(0, UUID, "esp"), (2, [0x11; 16], "nixos")]);
            assert_eq!(
                probe_table(&mut slice_reader(&img)),
                PartTable::Gpt(vec![
                    GptPart {
                        number: 1,
                        uuid: "93d55a3f-4645-944a-a374-bcfb68aa11f7".into(),
                        name: Some("esp".into())
                    },
                    GptPart {
                        number: 3,
                        uuid: "11111111-1111-1111-1111-111111111111".into(),
                        name: Some("nixos".into())
                    },
                ]),
                "sector {sector}"
            );
        }
    }

    #[test]
    fn gpt_headers_asking_for_too_much_are_ignored() {
        let mut img = gpt(512, &[(0, UUID, "x")]);
        put(&mut img, 512 + 80, &u32::MAX.to_le_bytes());
        // Falls back to the protective MBR, which is not an MBR table.
        assert_eq!(probe_table(&mut slice_reader(&img)), PartTable::None);
        let mut img = gpt(512, &[(0, UUID, "x")]);
        put(&mut img, 512 + 72, &u64::MAX.to_le_bytes());
        assert_eq!(probe_table(&mut slice_reader(&img)), PartTable::None);
    }

    #[test]
    fn mbr_signature_and_partuuid() {
        let mut img = vec![0u8; 1024];
        put(&mut img, 440, &0x0a1b_2c3du32.to_le_bytes());
        put(&mut img, 446 + 4, &[0x83]);
        put(&mut img, 510, &[0x55, 0xaa]);
        assert_eq!(
            probe_table(&mut slice_reader(&img)),
            PartTable::Mbr {
                signature: 0x0a1b_2c3d
            }
        );
        assert_eq!(mbr_partuuid(0x0a1b_2c3d, 1), "0a1b2c3d-01");
        assert_eq!(mbr_partuuid(0xdeadbeef, 17), "deadbeef-11");
        assert_eq!(probe_table(&mut slice_reader(&[0u8; 512])), PartTable::None);
    }

    #[test]
    fn matching() {
        let c = Candidate {
            name: "vda2".into(),
            dev: (254, 2),
            fs: Some(FsInfo {
                fstype: "vfat",
                uuid: Some("1234-ABCD".into()),
                label: Some("ESP".into()),
            }),
            part_uuid: Some("0a1b2c3d-02".into()),
            part_label: Some("boot".into()),
        };
        let yes = [
            BlockSpec::Label("ESP".into()),
            BlockSpec::Uuid("1234-abcd".into()),
            BlockSpec::PartUuid("0A1B2C3D-02".into()),
            BlockSpec::PartLabel("boot".into()),
            BlockSpec::Path("/dev/vda2".into()),
            BlockSpec::DevNum(254, 2),
        ];
        for s in &yes {
            assert!(matches(s, &c), "{s:?}");
        }
        let no = [
            BlockSpec::Label("esp".into()),
            BlockSpec::Uuid("1234-abce".into()),
            BlockSpec::Path("/dev/vda".into()),
            BlockSpec::DevNum(254, 0),
            BlockSpec::Other("vda2".into()),
        ];
        for s in &no {
            assert!(!matches(s, &c), "{s:?}");
        }
        assert!(!matches(
            &BlockSpec::Label("x".into()),
            &Candidate::default()
        ));
        assert_eq!(
            describe(&c),
            "vda2 (254:2, vfat LABEL=ESP UUID=1234-ABCD PARTUUID=0a1b2c3d-02 PARTLABEL=boot)"
        );
    }

    #[test]
    fn sysfs_fields() {
        assert_eq!(parse_dev("254:1\n"), Some((254, 1)));
        assert_eq!(parse_dev("x"), None);
        assert_eq!(
            uevent_devname("MAJOR=254\nMINOR=1\nDEVNAME=vda1\nDEVTYPE=partition\n"),
            Some("vda1")
        );
        assert_eq!(uevent_devname("DEVNAME=../etc\n"), None);
        assert_eq!(uevent_devname("MAJOR=1\n"), None);
    }
}
