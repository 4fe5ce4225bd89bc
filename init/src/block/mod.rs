//! Block roots: what is on a disk ([`probe`]: superblocks, GPT/MBR; pure and fuzzed), the
//! bounded wait for the device `root=` names ([`wait`]), and its mount ([`mount`]).
//!
//! The wait and the mount are one step of the plan: the device the wait finds is handed to
//! the mount as a value ([`wait::Found`]), never through state shared between steps.

pub mod mount;
pub mod probe;
pub mod wait;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

/// A reader of `len` bytes at `offset` of a device node (`None` if short or unreadable);
/// `None` when the node cannot be opened (yet): nothing is learnt, so nothing is cached.
fn read_node(node: &str) -> Option<impl FnMut(u64, usize) -> Option<Vec<u8>>> {
    let fd = rustix::fs::open(node, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    Some(move |offset: u64, len: usize| {
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match rustix::io::pread(&fd, &mut buf[got..], offset.checked_add(got as u64)?) {
                Ok(0) => return None,
                Ok(n) => got += n,
                Err(Errno::INTR) => {}
                Err(_) => return None,
            }
        }
        Some(buf)
    })
}
