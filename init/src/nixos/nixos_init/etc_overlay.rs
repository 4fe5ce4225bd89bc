//! /etc as nixos-init mounts it: the erofs metadata image (checked to be erofs) on a loop
//! device, and an overlay with it over `etc_basedir`, checked to be possible first.

use crate::failure::Failure;
use crate::log::errno;
use crate::loop_device;
use rustix::fs::{Mode, OFlags};
use rustix::mount::MountFlags;

const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
const EROFS_SUPER_OFFSET: u64 = 1024;

/// `major.minor` of a kernel release (`6.1.0-31-cloud-amd64` -> (6, 1)).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Whether the bytes at offset 1024 of a file start with erofs's superblock magic.
pub fn is_erofs(at_1k: &[u8]) -> bool {
    at_1k
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        == Some(EROFS_MAGIC)
}

/// The image must start with erofs's superblock (magic at 1 KiB).
pub fn check_erofs(step: &'static str, image: &str) -> Result<String, Failure> {
    let check = "etc_metadata_image must be the erofs image NixOS builds \
                 (system.build.etcMetadataImage); is the store path complete?";
    let fd =
        rustix::fs::open(image, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).map_err(|e| {
            Failure::new(step, format!("etc_metadata_image {image}: {}", errno(e))).check(check)
        })?;
    let mut magic = [0u8; 4];
    let ok =
        crate::elf::ReadAt::read_exact_at(&crate::elf::File(&fd), EROFS_SUPER_OFFSET, &mut magic);
    if ok && is_erofs(&magic) {
        return Ok(format!("{image} is an erofs image"));
    }
    Err(Failure::new(
        step,
        format!("etc_metadata_image {image} is not an erofs image"),
    )
    .tried(format!(
        "read 4 bytes at offset {EROFS_SUPER_OFFSET}: {} (erofs magic {EROFS_MAGIC:#010x})",
        if ok {
            format!("{:#010x}", u32::from_le_bytes(magic))
        } else {
            "short file".into()
        }
    ))
    .check(check))
}

/// The running kernel must be at least `min` (for `lowerdir=a::b`).
pub fn require_kernel(
    step: &'static str,
    min: (u32, u32),
    release: &str,
) -> Result<String, Failure> {
    match kernel_version(release) {
        Some(v) if v >= min => Ok(format!("Linux {release} has overlayfs data-only layers")),
        _ => Err(Failure::new(
            step,
            format!(
                "Linux {release} cannot mount the /etc overlay: lowerdir=METADATA::BASEDIR \
                 (data-only layer) needs Linux {}.{} or later",
                min.0, min.1
            ),
        )
        .tried("nothing yet: checked before touching the root")
        .check(
            "boot a kernel >= 6.6 (NixOS asserts it for system.etc.overlay), or build the \
                system without system.etc.overlay / nixos-init",
        )),
    }
}

/// `etc_basedir` must be a directory.
pub fn check_basedir(step: &'static str, path: &str) -> Result<String, Failure> {
    match rustix::fs::stat(path) {
        Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir() => {
            Ok(format!("{path} is a directory"))
        }
        Ok(_) => Err(
            Failure::new(step, format!("etc_basedir {path} is not a directory"))
                .check("the closure's boot.json etc_basedir and the store's contents"),
        ),
        Err(e) => Err(
            Failure::new(step, format!("etc_basedir {path}: {}", errno(e)))
                .tried(format!("stat {path}"))
                .check("is the etc_basedir store path in the store (copied with the closure)?"),
        ),
    }
}

/// The image on a loop device of `dev` at `metadata`, then the overlay on `target`.
pub fn mount_etc(
    step: &'static str,
    dev: &str,
    image: &str,
    basedir: &str,
    metadata: &str,
    target: &str,
) -> Result<String, Failure> {
    // The loop device's fd is held until erofs holds the device: with autoclear, the last
    // close of an unmounted loop device detaches it.
    let (loopdev, _held) = loop_device::attach_read_only(step, dev, image)?;
    let ro = MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV;
    crate::mounts::mount_step(step, &loopdev, metadata, "erofs", ro, "")?;
    let data = format!("redirect_dir=on,metacopy=on,lowerdir={metadata}::{basedir}");
    crate::mounts::mount_step(step, "overlay", target, "overlay", ro, &data).map_err(|f| {
        f.check("the kernel log (overlayfs says why); overlay, erofs and loop in the initrd")
    })?;
    Ok(format!(
        "{image} on {loopdev} at {metadata}; overlay on {target} (ro,nodev,nosuid,{data})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mounts::mount_options;
    use crate::nixos::nixos_init::DATA_ONLY_LAYERS;

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.1.0-31-cloud-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("6.12.117+deb13-cloud-amd64"), Some((6, 12)));
        assert_eq!(kernel_version("junk"), None);
        assert!(require_kernel("x", DATA_ONLY_LAYERS, "6.1.0-31")
            .unwrap_err()
            .error
            .contains("6.5"));
        assert!(require_kernel("x", DATA_ONLY_LAYERS, "6.5.0").is_ok());
        assert!(require_kernel("x", DATA_ONLY_LAYERS, "10.0").is_ok());
    }

    #[test]
    fn erofs_magic() {
        assert!(is_erofs(&[0xE2, 0xE1, 0xF5, 0xE0]));
        assert!(!is_erofs(b"hsqs"));
        assert!(!is_erofs(&[0xE2]));
    }

    /// The syscall layer on the host's kernel: loop ioctls, erofs and the overlay with a
    /// data-only layer, in a private mount namespace (the test re-runs itself under
    /// `unshare -m`). The boot tests' kernel (6.1) refuses before reaching this code.
    #[test]
    #[ignore = "needs root, /dev/loop-control, mkfs.erofs and Linux >= 6.5 with loop, erofs, overlay; run with --ignored"]
    fn etc_overlay_on_this_kernel() {
        const MARK: &str = "NIXBOOT_TEST_IN_MOUNT_NS";
        if std::env::var_os(MARK).is_none() {
            let st = std::process::Command::new("unshare")
                .args(["-m", "--propagation", "private"])
                .arg(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "nixos::nixos_init::etc_overlay::tests::etc_overlay_on_this_kernel",
                ])
                .args(["--ignored", "--test-threads=1", "--nocapture"])
                .env(MARK, "1")
                .status()
                .unwrap();
            assert!(st.success());
            return;
        }
        // Never a bind mount of /dev under the temporary directory: its removal would
        // delete the host's device links. The loop devices are the host's own /dev ("").
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_str().unwrap();
        for d in ["tree", "nix/store/b-etc", "run/nixos-etc-metadata", "etc"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        std::fs::write(t.path().join("tree/hello"), "from the erofs image\n").unwrap();
        let image = format!("{root}/nix/store/m-etc.erofs");
        let st = std::process::Command::new("mkfs.erofs")
            .args(["--quiet", &image, &format!("{root}/tree")])
            .status()
            .unwrap();
        assert!(st.success());
        assert!(check_erofs("t", &image).is_ok());
        let (meta, etc) = (
            format!("{root}/run/nixos-etc-metadata"),
            format!("{root}/etc"),
        );
        let msg = mount_etc(
            "t",
            "/dev",
            &image,
            &format!("{root}/nix/store/b-etc"),
            &meta,
            &etc,
        )
        .unwrap_or_else(|f| panic!("{f:?}"));
        let hello = std::fs::read_to_string(t.path().join("etc/hello"));
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let write = std::fs::write(t.path().join("etc/x"), "x");
        // Unmounted before anything can fail and the directory is removed.
        for m in [&etc, &meta] {
            rustix::mount::unmount(m.as_str(), rustix::mount::UnmountFlags::DETACH).unwrap();
        }
        assert_eq!(hello.unwrap(), "from the erofs image\n", "{msg}");
        assert_eq!(mount_options(&info, &etc), Some("ro,nosuid,nodev,relatime"));
        assert!(write.is_err(), "/etc is read-only");
    }
}
