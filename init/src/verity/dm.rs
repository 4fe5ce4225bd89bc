//! Device-mapper ioctls (linux/dm-ioctl.h), hand-written: create a device, load one target,
//! resume it, remove it. The `devicemapper` crate does this too, but brings nix, bitflags,
//! semver, serde and a logging stack into a static PID 1 for four ioctls on one struct;
//! these are the same calls libdevmapper makes, on /dev/mapper/control.

use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

pub const CONTROL: &str = "/dev/mapper/control";
const NAME_LEN: usize = 128;
/// `sizeof(struct dm_ioctl)`.
const IOCTL_SIZE: usize = 312;
/// `sizeof(struct dm_target_spec)`.
const SPEC_SIZE: usize = 40;
const READONLY_FLAG: u32 = 1;

/// The commands used (their numbers in dm-ioctl.h).
#[derive(Debug, Clone, Copy)]
enum Cmd {
    Create = 3,
    Remove = 4,
    /// Without DM_SUSPEND_FLAG: resume, i.e. make the loaded table live.
    Suspend = 6,
    TableLoad = 9,
}

/// `_IOWR(0xfd, nr, struct dm_ioctl)`.
fn opcode(cmd: Cmd) -> u32 {
    (3 << 30) | ((IOCTL_SIZE as u32) << 16) | (0xfd << 8) | cmd as u32
}

/// A `struct dm_ioctl` header for `name`, followed by `payload` (8-byte aligned).
fn request(name: &str, flags: u32, targets: u32, payload: &[u8]) -> Vec<u8> {
    let size = (IOCTL_SIZE + payload.len()).next_multiple_of(8);
    let mut b = vec![0u8; size];
    let mut put = |at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    // version 4.0.0: the kernel accepts any minor up to its own.
    put(0, 4);
    put(12, size as u32); // data_size
    put(16, IOCTL_SIZE as u32); // data_start
    put(20, targets);
    put(28, flags);
    let n = name.len().min(NAME_LEN - 1);
    b[48..48 + n].copy_from_slice(&name.as_bytes()[..n]);
    b[IOCTL_SIZE..IOCTL_SIZE + payload.len()].copy_from_slice(payload);
    b
}

/// One `struct dm_target_spec` and its parameter string.
fn target(sectors: u64, kind: &str, params: &str) -> Vec<u8> {
    let mut t = vec![0u8; SPEC_SIZE];
    t[8..16].copy_from_slice(&sectors.to_ne_bytes());
    let k = kind.len().min(15);
    t[24..24 + k].copy_from_slice(&kind.as_bytes()[..k]);
    t.extend_from_slice(params.as_bytes());
    t.push(0);
    t.resize(t.len().next_multiple_of(8), 0);
    let next = t.len() as u32;
    t[20..24].copy_from_slice(&next.to_ne_bytes());
    t
}

fn call(ctl: &OwnedFd, cmd: Cmd, buf: &mut [u8]) -> Result<(), Errno> {
    // `buf` starts with a struct dm_ioctl whose data_size is buf's length: the kernel
    // reads and writes within it.
    crate::loop_device::ioctl(ctl, opcode(cmd), buf.as_mut_ptr().cast()).map(|_| ())
}

/// `dev` of a dm_ioctl reply (the kernel's huge_encode_dev) as (major, minor).
fn decode_dev(dev: u64) -> (u32, u32) {
    let dev = dev as u32;
    ((dev & 0xfff00) >> 8, (dev & 0xff) | ((dev >> 12) & 0xfff00))
}

/// A device-mapper device made here: its name and number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub major: u32,
    pub minor: u32,
}

/// What failed, for the caller's Failure.
#[derive(Debug)]
pub struct DmError {
    pub what: &'static str,
    pub errno: Errno,
}

pub fn open_control() -> Result<OwnedFd, DmError> {
    rustix::fs::open(CONTROL, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).map_err(|errno| {
        DmError {
            what: "open /dev/mapper/control",
            errno,
        }
    })
}

/// Creates `name` with one read-only target and resumes it. On any failure after the
/// creation the device is removed again: nothing half-made is left.
pub fn create_read_only(
    ctl: &OwnedFd,
    name: &str,
    sectors: u64,
    kind: &str,
    params: &str,
) -> Result<Device, DmError> {
    let err = |what, errno| DmError { what, errno };
    let mut create = request(name, 0, 0, &[]);
    call(ctl, Cmd::Create, &mut create).map_err(|e| err("DM_DEV_CREATE", e))?;
    let mut dev = [0u8; 8];
    dev.copy_from_slice(&create[40..48]);
    let (major, minor) = decode_dev(u64::from_ne_bytes(dev));
    let mut load = request(name, READONLY_FLAG, 1, &target(sectors, kind, params));
    let loaded = call(ctl, Cmd::TableLoad, &mut load).map_err(|e| err("DM_TABLE_LOAD", e));
    let resumed = loaded.and_then(|()| {
        let mut resume = request(name, 0, 0, &[]);
        call(ctl, Cmd::Suspend, &mut resume).map_err(|e| err("DM_DEV_SUSPEND (resume)", e))
    });
    match resumed {
        Ok(()) => Ok(Device {
            name: name.to_string(),
            major,
            minor,
        }),
        Err(e) => {
            let _ = remove(ctl, name);
            Err(e)
        }
    }
}

/// Removes `name` (the device must not be open).
pub fn remove(ctl: &OwnedFd, name: &str) -> Result<(), Errno> {
    let mut req = request(name, 0, 0, &[]);
    call(ctl, Cmd::Remove, &mut req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes_match_dm_ioctl_h() {
        // DM_DEV_CREATE and DM_TABLE_LOAD as strace prints them on x86_64.
        assert_eq!(opcode(Cmd::Create), 0xc138_fd03);
        assert_eq!(opcode(Cmd::TableLoad), 0xc138_fd09);
        assert_eq!(opcode(Cmd::Suspend), 0xc138_fd06);
        assert_eq!(opcode(Cmd::Remove), 0xc138_fd04);
    }

    #[test]
    fn request_layout() {
        let t = target(16, "verity", "1 2 3");
        assert_eq!(t.len(), 48);
        assert_eq!(&t[24..30], b"verity");
        assert_eq!(&t[SPEC_SIZE..SPEC_SIZE + 6], b"1 2 3\0");
        let r = request("nixboot-store", READONLY_FLAG, 1, &t);
        assert_eq!(r.len(), IOCTL_SIZE + 48);
        assert_eq!(u32::from_ne_bytes(r[12..16].try_into().unwrap()), 360);
        assert_eq!(u32::from_ne_bytes(r[16..20].try_into().unwrap()), 312);
        assert_eq!(&r[48..61], b"nixboot-store");
        assert_eq!(r[61], 0);
        assert_eq!(&r[IOCTL_SIZE + 24..IOCTL_SIZE + 30], b"verity");
    }

    #[test]
    fn device_numbers_decode_like_the_kernel() {
        // huge_encode_dev(MKDEV(254, 0)) and MKDEV(254, 300).
        assert_eq!(decode_dev(254 << 8), (254, 0));
        assert_eq!(decode_dev((254 << 8) | 44 | (256 << 12)), (254, 300));
    }
}
