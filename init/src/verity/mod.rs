//! A verified store: the erofs image `mkinitrd verity` wrote, behind a dm-verity target
//! the init sets up itself, mounted read-only on /nix/store. Three phases of one plan step
//! (`Step::MountVerity`): find the image ([`find`]: a block device, or a file of the
//! initramfs on a loop device), set up the target and read through it ([`attach`]), mount
//! it ([`mount`]).
//!
//! How a bad image becomes visible: dm-verity answers a read of a block whose hash does
//! not match with EIO, never with the data. The `verity` phase reads the first block
//! through the target (so a wrong root hash is refused before anything is mounted: every
//! read fails), or every block with `nixboot.verity.check=full` (so one changed byte
//! anywhere stops the boot here, naming the block). Without the full check, a changed
//! block in a file is an EIO for whoever reads that file (check-init and the exec of the
//! next init, for its first block), and the kernel logs `verity: ... data block N is
//! corrupted`.

pub mod dm;
pub mod options;

use crate::failure::Failure;
use crate::log::errno;
use crate::mounts;
use nixboot_protocol::verity::{hex, Superblock, BLOCK};
use options::{Check, Source};
use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::MountFlags;
use std::time::Duration;

/// The phase that sets up the target and reads through it.
pub const STEP: &str = "verity";
/// The device-mapper name (`/dev/mapper/nixboot-store`).
pub const DM_NAME: &str = "nixboot-store";
const BLOCK_U64: u64 = BLOCK as u64;

/// The first phase's name: how the image is found.
pub fn source_phase(s: &Source) -> &'static str {
    match s {
        Source::Block(_) => "wait-store",
        Source::File(_) => "loop-store",
    }
}

/// The image's device: its node, and for a loop device the fd that keeps it attached
/// until the verity target holds it.
pub struct Image {
    pub node: String,
    _loop: Option<OwnedFd>,
}

/// Finds the image: the bounded wait for its block device, or its file on a loop device.
pub fn find(
    step: &'static str,
    source: &Source,
    timeout: Duration,
    debug: bool,
) -> Result<(Image, String), Failure> {
    match source {
        Source::Block(spec) => {
            let found = crate::block::wait::wait_block(step, spec, timeout, debug)?;
            let done = format!(
                "{source} is {}",
                crate::block::probe::describe(&found.candidate)
            );
            let image = Image {
                node: found.node,
                _loop: None,
            };
            Ok((image, done))
        }
        Source::File(path) => {
            let (node, fd) = crate::loop_device::attach_read_only(step, "/dev", path)?;
            let done = format!("{path} on {node}, read-only");
            let image = Image {
                node,
                _loop: Some(fd),
            };
            Ok((image, done))
        }
    }
}

/// Reads exactly `len` bytes at `offset`; the errno of the first failed read.
fn read_at(fd: &OwnedFd, offset: u64, len: usize) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let at = offset.checked_add(got as u64).ok_or(Errno::INVAL)?;
        match rustix::io::pread(fd, &mut buf[got..], at) {
            Ok(0) => return Err(Errno::NXIO),
            Ok(n) => got += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf)
}

fn open_ro(node: &str) -> Result<OwnedFd, Errno> {
    rustix::fs::open(node, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
}

/// What the plan says about the image.
pub struct Expected<'a> {
    pub source: &'a Source,
    pub root_hash: &'a [u8; 32],
    pub hash_offset: u64,
    pub check: Check,
}

/// The verity superblock at the hash offset, checked against what lies before it.
fn superblock(step: &'static str, node: &str, e: &Expected<'_>) -> Result<Superblock, Failure> {
    let check = format!(
        "nixboot.verity.hashoffset= must be the hash offset `mkinitrd verity` printed for \
         this image; is {} the image it wrote?",
        e.source
    );
    let fail = |error: String| {
        Failure::new(step, error)
            .tried(format!(
                "read the verity superblock at byte {} of {node}",
                e.hash_offset
            ))
            .check(check.clone())
    };
    let fd = open_ro(node).map_err(|er| fail(format!("cannot open {node}: {}", errno(er))))?;
    let bytes = read_at(&fd, e.hash_offset, nixboot_protocol::verity::SIZE).map_err(|er| {
        fail(format!(
            "cannot read byte {} of {node}: {}",
            e.hash_offset,
            errno(er)
        ))
    })?;
    let sb = Superblock::parse(&bytes).map_err(|er| {
        fail(format!(
            "{node} at byte {}: {er} (this is not a verity image's hash area)",
            e.hash_offset
        ))
    })?;
    if sb.data_blocks.checked_mul(BLOCK_U64) > Some(e.hash_offset) {
        return Err(fail(format!(
            "{node}: the superblock at byte {} covers {} data blocks, more than lie before it",
            e.hash_offset, sb.data_blocks
        )));
    }
    Ok(sb)
}

/// Sets up the verity target on the image and reads through it (see the module
/// documentation). Returns the verified device's node and what was done.
pub fn attach(
    step: &'static str,
    image: Image,
    e: &Expected<'_>,
) -> Result<(String, String), Failure> {
    let node = image.node.as_str();
    let sb = superblock(step, node, e)?;
    let st = rustix::fs::stat(node)
        .map_err(|er| Failure::new(step, format!("cannot stat {node}: {}", errno(er))))?;
    let dev = format!(
        "{}:{}",
        rustix::fs::major(st.st_rdev),
        rustix::fs::minor(st.st_rdev)
    );
    let params = format!(
        "1 {dev} {dev} {BLOCK} {BLOCK} {} {} sha256 {} {}",
        sb.data_blocks,
        e.hash_offset / BLOCK_U64 + 1,
        hex(e.root_hash),
        hex(&sb.salt)
    );
    let table = format!("0 {} verity {params}", sb.data_blocks * 8);
    let ctl = dm::open_control().map_err(|er| dm_failed(step, &er, &table))?;
    let device = dm::create_read_only(&ctl, DM_NAME, sb.data_blocks * 8, "verity", &params)
        .map_err(|er| dm_failed(step, &er, &table))?;
    let dm_node = format!("/dev/mapper/{DM_NAME}");
    let made = rustix::fs::mknodat(
        rustix::fs::CWD,
        dm_node.as_str(),
        rustix::fs::FileType::BlockDevice,
        Mode::from_raw_mode(0o600),
        rustix::fs::makedev(device.major, device.minor),
    );
    if let Err(er) = made.or_else(|er| if er == Errno::EXIST { Ok(()) } else { Err(er) }) {
        let _ = dm::remove(&ctl, DM_NAME);
        return Err(Failure::new(
            step,
            format!("mknod {dm_node}: {}", errno(er)),
        ));
    }
    if let Err(f) = read_through(step, &dm_node, node, &sb, e) {
        let _ = dm::remove(&ctl, DM_NAME);
        let _ = rustix::fs::unlink(dm_node.as_str());
        return Err(f);
    }
    let reads = match e.check {
        Check::First => "its first block",
        Check::Full => "all its blocks",
    };
    let done = format!(
        "{dm_node} ({}:{}) verifies {node}: {} data blocks, root hash {}, {reads} read",
        device.major,
        device.minor,
        sb.data_blocks,
        hex(e.root_hash)
    );
    Ok((dm_node, done))
}

fn dm_failed(step: &'static str, er: &dm::DmError, table: &str) -> Failure {
    Failure::new(step, format!("{}: {}", er.what, errno(er.errno)))
        .tried(format!("device-mapper table {table}"))
        .check(
            "are dm-mod and dm-verity in the initrd (mkinitrd --module dm-verity) and loaded \
             above? on EINVAL the kernel's `device-mapper: verity` line above says why \
             (a device too small for its hash tree, a bad table)",
        )
}

/// Reads the first block, or every block, through the verity target; dm-verity's EIO
/// becomes a failure naming the block.
fn read_through(
    step: &'static str,
    dm_node: &str,
    node: &str,
    sb: &Superblock,
    e: &Expected<'_>,
) -> Result<(), Failure> {
    let fd = open_ro(dm_node)
        .map_err(|er| Failure::new(step, format!("cannot open {dm_node}: {}", errno(er))))?;
    let blocks = match e.check {
        Check::First => 1,
        Check::Full => sb.data_blocks,
    };
    // 256 blocks (1 MiB) a read; the block of a failed read is found one block at a time.
    let chunk = 256u64;
    let mut at = 0u64;
    while at < blocks {
        let n = chunk.min(blocks - at);
        if read_at(&fd, at * BLOCK_U64, (n * BLOCK_U64) as usize).is_ok() {
            at += n;
            continue;
        }
        let (bad, er) = (at..at + n)
            .find_map(|b| {
                read_at(&fd, b * BLOCK_U64, BLOCK as usize)
                    .err()
                    .map(|er| (b, er))
            })
            .unwrap_or((at, Errno::IO));
        return Err(unverified(step, dm_node, node, bad, er, e));
    }
    Ok(())
}

fn unverified(
    step: &'static str,
    dm_node: &str,
    node: &str,
    block: u64,
    er: Errno,
    e: &Expected<'_>,
) -> Failure {
    let error = if block == 0 {
        format!(
            "{node}: block 0 does not verify against nixboot.verity.roothash= ({} from \
             dm-verity): a wrong root hash, or the image was changed",
            errno(er)
        )
    } else {
        format!(
            "{node}: data block {block} (byte {}) does not match its hash ({} from \
             dm-verity): the data or the hash tree was changed after the image was built",
            block * BLOCK_U64,
            errno(er)
        )
    };
    Failure::new(step, error)
        .tried(format!(
            "read {} through {dm_node}, root hash {}",
            match e.check {
                Check::First => "the first block",
                Check::Full => "every block",
            },
            hex(e.root_hash)
        ))
        .check(format!(
            "nixboot.verity.roothash= must be the root hash `mkinitrd verity` printed for \
             the image on {}; `mkinitrd verity-check --root-hash HEX IMAGE` on the host \
             names the first difference; nothing was mounted",
            e.source
        ))
}

/// Mounts the verified device's erofs read-only on `target`.
pub fn mount(step: &'static str, dm_node: &str, target: &str) -> Result<String, Failure> {
    if let Err((dir, er)) = mounts::mkdir_p(target) {
        return Err(Failure::new(
            step,
            format!("cannot create mount point {dir}: {}", errno(er)),
        ));
    }
    let flags = MountFlags::RDONLY;
    mounts::mount(dm_node, target, "erofs", flags, "").map_err(|er| {
        Failure::new(
            step,
            format!("mount {dm_node} on {target} (erofs): {}", errno(er)),
        )
        .tried(mounts::command(dm_node, target, "erofs", flags, ""))
        .check(
            "is erofs in the initrd (mkinitrd --module erofs) and loaded above? the image \
             must be what `mkinitrd verity` wrote (an erofs filesystem)",
        )
    })?;
    Ok(crate::plan::step::mount_text(
        dm_node, target, "erofs", flags, "",
    ))
}
