//! Loop devices (linux/loop.h): a file attached read-only to a free loop device, so a
//! filesystem image (the etc overlay's erofs metadata) can be mounted from it.

use crate::failure::Failure;
use crate::log::errno;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

const LOOP_SET_FD: u32 = 0x4C00;
const LOOP_SET_STATUS64: u32 = 0x4C04;
const LOOP_CONFIGURE: u32 = 0x4C0A;
const LOOP_CTL_GET_FREE: u32 = 0x4C82;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// An ioctl whose argument is a pointer or an integer and whose result is the return value.
struct Raw {
    opcode: rustix::ioctl::Opcode,
    arg: *mut std::ffi::c_void,
}

// SAFETY: each use below passes the argument type its opcode expects (linux/loop.h).
unsafe impl rustix::ioctl::Ioctl for Raw {
    type Output = i32;
    const IS_MUTATING: bool = false;
    fn opcode(&self) -> rustix::ioctl::Opcode {
        self.opcode
    }
    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        self.arg
    }
    unsafe fn output_from_ptr(
        out: rustix::ioctl::IoctlOutput,
        _: *mut std::ffi::c_void,
    ) -> rustix::io::Result<i32> {
        Ok(out)
    }
}

pub(crate) fn ioctl(fd: impl AsFd, opcode: u32, arg: *mut std::ffi::c_void) -> Result<i32, Errno> {
    // SAFETY: see `Raw`; the pointers outlive the call.
    unsafe {
        rustix::ioctl::ioctl(
            fd,
            Raw {
                opcode: opcode as _,
                arg,
            },
        )
    }
}

/// Attaches `image` read-only (autoclear) to a free loop device of `dev` (the new root's
/// /dev); returns the device's path and an open fd (closing it before something else
/// holds the device detaches it).
pub fn attach_read_only(
    step: &'static str,
    dev: &str,
    image: &str,
) -> Result<(String, OwnedFd), Failure> {
    let tried = format!("LOOP_CTL_GET_FREE on {dev}/loop-control, LOOP_CONFIGURE (or LOOP_SET_FD + LOOP_SET_STATUS64) read-only with {image}");
    let fail = |what: String, e: Errno| {
        Failure::new(step, format!("{what}: {}", errno(e)))
            .tried(tried.clone())
            .check("is the loop driver in the kernel or the initrd (mkinitrd --module loop)?")
    };
    let open = |p: &str, flags: OFlags| rustix::fs::open(p, flags | OFlags::CLOEXEC, Mode::empty());
    let file = open(image, OFlags::RDONLY).map_err(|e| fail(format!("open {image}"), e))?;
    let ctl_path = format!("{dev}/loop-control");
    let ctl = open(&ctl_path, OFlags::RDWR).map_err(|e| fail(format!("open {ctl_path}"), e))?;
    // Another process may take the free device first: a few tries.
    let mut last = Errno::BUSY;
    for _ in 0..8 {
        let n = ioctl(&ctl, LOOP_CTL_GET_FREE, std::ptr::null_mut())
            .map_err(|e| fail("LOOP_CTL_GET_FREE".into(), e))?;
        let node = format!("{dev}/loop{n}");
        let lo = open(&node, OFlags::RDONLY).map_err(|e| fail(format!("open {node}"), e))?;
        match configure(&lo, &file) {
            Ok(()) => return Ok((node, lo)),
            Err(Errno::BUSY) => last = Errno::BUSY,
            Err(e) => return Err(fail(format!("attach {image} to {node}"), e)),
        }
    }
    Err(fail("no free loop device after 8 tries".into(), last))
}

fn configure(lo: &OwnedFd, file: &OwnedFd) -> Result<(), Errno> {
    use rustix::fd::AsRawFd;
    let mut info = LoopInfo64 {
        device: 0,
        inode: 0,
        rdevice: 0,
        offset: 0,
        sizelimit: 0,
        number: 0,
        encrypt_type: 0,
        encrypt_key_size: 0,
        flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
        file_name: [0; 64],
        crypt_name: [0; 64],
        encrypt_key: [0; 32],
        init: [0; 2],
    };
    let mut cfg = LoopConfig {
        fd: file.as_raw_fd() as u32,
        block_size: 0,
        info,
        reserved: [0; 8],
    };
    match ioctl(lo, LOOP_CONFIGURE, (&mut cfg as *mut LoopConfig).cast()) {
        Ok(_) => return Ok(()),
        // Before Linux 5.8: the two-call way.
        Err(Errno::INVAL) | Err(Errno::NOTTY) => {}
        Err(e) => return Err(e),
    }
    ioctl(
        lo,
        LOOP_SET_FD,
        file.as_raw_fd() as usize as *mut std::ffi::c_void,
    )?;
    ioctl(lo, LOOP_SET_STATUS64, (&mut info as *mut LoopInfo64).cast()).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_structs_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }
}
