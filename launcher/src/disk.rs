//! `--disk FILE[,serial=NAME][,sector=512|4096]`: extra virtio-blk disks, as kdevops gives
//! its guests scratch devices (fstests' TEST_DEV and SCRATCH_DEV). The serial is what udev
//! names the guest's `/dev/disk/by-id/virtio-NAME` link after; the sector size is the disk's
//! logical and physical block size (fstests and blktests run on both 512 and 4096).

use crate::machine::Machine;
use std::path::{Path, PathBuf};

/// virtio-blk carries at most 20 bytes of serial (VIRTIO_BLK_ID_BYTES).
const SERIAL_MAX: usize = 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    pub file: PathBuf,
    pub serial: String,
    pub sector: u32,
}

/// Parses one `--disk` value. The serial defaults to the file's stem (cut to 20 bytes).
pub fn parse(spec: &str) -> Result<Disk, String> {
    let mut parts = spec.split(',');
    let file = parts.next().filter(|f| !f.is_empty()).ok_or("no file")?;
    let mut disk = Disk {
        file: PathBuf::from(file),
        serial: default_serial(Path::new(file)),
        sector: 512,
    };
    for part in parts {
        match part.split_once('=') {
            Some(("serial", s)) => disk.serial = s.to_string(),
            Some(("sector", n)) => {
                disk.sector = match n {
                    "512" => 512,
                    "4096" => 4096,
                    _ => return Err(format!("sector={n}: 512 or 4096")),
                }
            }
            _ => return Err(format!("{part:?}: expected serial=NAME or sector=512|4096")),
        }
    }
    check_serial(&disk.serial)?;
    Ok(disk)
}

/// What udev puts in a by-id link name without escaping.
fn serial_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn default_serial(file: &Path) -> String {
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("disk");
    let clean: String = stem
        .chars()
        .filter(|&c| serial_char(c))
        .take(SERIAL_MAX)
        .collect();
    if clean.is_empty() {
        "disk".into()
    } else {
        clean
    }
}

/// What fits the device and names a link as it is.
fn check_serial(serial: &str) -> Result<(), String> {
    if serial.is_empty() || serial.len() > SERIAL_MAX {
        return Err(format!("serial={serial}: 1 to {SERIAL_MAX} bytes"));
    }
    if !serial.chars().all(serial_char) {
        return Err(format!("serial={serial}: letters, digits, - _ . only"));
    }
    Ok(())
}

/// The disks as a whole: two with one serial would give the guest one by-id link.
pub fn check_all(disks: &[Disk]) -> Result<(), String> {
    for (i, d) in disks.iter().enumerate() {
        if disks[..i].iter().any(|o| o.serial == d.serial) {
            return Err(format!("two disks with serial {}", d.serial));
        }
    }
    Ok(())
}

/// The image format QEMU should read, from the file's first bytes: qcow2 by its magic,
/// raw otherwise (named, so QEMU neither guesses nor warns).
pub fn format_of(head: &[u8]) -> &'static str {
    if head.starts_with(b"QFI\xfb") {
        "qcow2"
    } else {
        "raw"
    }
}

/// [`format_of`] an image file's first bytes (fewer when it is shorter).
pub fn image_format(file: &Path) -> std::io::Result<&'static str> {
    let mut head = [0u8; 4];
    let n = std::io::Read::read(&mut std::fs::File::open(file)?, &mut head)?;
    Ok(format_of(&head[..n]))
}

/// QEMU's arguments for the disks; `formats[i]` is disk i's image format.
pub fn qemu_args(disks: &[Disk], formats: &[&str], machine: Machine) -> Vec<String> {
    let mut a = Vec::new();
    for (i, (d, format)) in disks.iter().zip(formats).enumerate() {
        a.push("-drive".into());
        a.push(format!(
            "if=none,id=disk{i},format={format},file={}",
            crate::qemu::qemu_escape(&d.file.display().to_string())
        ));
        a.push("-device".into());
        a.push(format!(
            "{},drive=disk{i},serial={},logical_block_size={s},physical_block_size={s}",
            machine.virtio_device("virtio-blk"),
            d.serial,
            s = d.sector
        ));
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_spec_gives_file_serial_and_sector() {
        let d = parse("/tmp/scratch,one.img,serial=test,sector=4096");
        assert!(d.is_err(), "a comma in the file name is not a file: {d:?}");
        let d = parse("/tmp/scratch.qcow2,sector=4096").unwrap();
        assert_eq!((d.serial.as_str(), d.sector), ("scratch", 4096));
        let d = parse("/tmp/a.img,serial=nbt-test").unwrap();
        assert_eq!((d.serial.as_str(), d.sector), ("nbt-test", 512));
        let long = parse("/tmp/a-very-long-name-of-a-disk-image.img").unwrap();
        assert_eq!(long.serial, "a-very-long-name-of-");
    }

    #[test]
    fn bad_specs_are_refused() {
        for bad in [
            "",
            "/tmp/a,sector=1024",
            "/tmp/a,serial=",
            "/tmp/a,serial=a b",
            "/tmp/a,serial=123456789012345678901",
            "/tmp/a,size=1G",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let a = parse("/tmp/a,serial=x").unwrap();
        let b = parse("/tmp/b,serial=x").unwrap();
        assert!(check_all(&[a.clone(), b]).unwrap_err().contains("serial x"));
        assert!(check_all(&[a]).is_ok());
    }

    #[test]
    fn qemu_gets_a_virtio_blk_device_per_disk() {
        let d = parse("/i/s,1.img,serial=s1,sector=4096");
        assert!(d.is_err());
        let d = parse("/i/s1.img,sector=4096").unwrap();
        let a = qemu_args(&[d], &["qcow2"], Machine::Pc);
        assert_eq!(
            a,
            [
                "-drive",
                "if=none,id=disk0,format=qcow2,file=/i/s1.img",
                "-device",
                "virtio-blk-pci,drive=disk0,serial=s1,logical_block_size=4096,physical_block_size=4096"
            ]
        );
        assert_eq!(format_of(b"QFI\xfb\0\0\0\x03"), "qcow2");
        assert_eq!(format_of(b"\0\0\0\0"), "raw");
    }
}
