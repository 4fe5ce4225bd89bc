//! virtiofs shares: which tags the kernel lists, and the bounded wait-and-mount of one.
//!
//! A share is waited for and mounted in one step: on kernels without /sys/fs/virtiofs (6.1)
//! the only way to know a tag is there is to mount it.

use crate::failure::Failure;
use crate::log::{self, errno};
use crate::mounts;
use crate::wait::{poll, Try, WaitError};
use rustix::io::Errno;
use rustix::mount::MountFlags;
use std::time::{Duration, Instant};

/// virtiofs tags the kernel lists (`/sys/fs/virtiofs/*/tag`, kernels since 2024); `None`
/// when this kernel has no such list.
pub fn sysfs_virtiofs_tags() -> Option<Vec<String>> {
    let dir = std::fs::read_dir("/sys/fs/virtiofs").ok()?;
    let mut tags: Vec<String> = dir
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("tag")).ok())
        .map(|t| t.trim_end().to_string())
        .collect();
    tags.sort();
    Some(tags)
}

/// virtio devices of type virtio-fs (device id 26): on kernels without the sysfs tag list
/// this at least tells whether any virtiofs device exists.
fn virtio_fs_devices() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/sys/bus/virtio/devices") else {
        return Vec::new();
    };
    let mut devs: Vec<String> = dir
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("device")).is_ok_and(|id| id.trim() == "0x001a")
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    devs.sort();
    devs
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// Waits (bounded) for virtiofs `tag` and mounts it on `target`.
///
/// With /sys/fs/virtiofs we watch the tag list, then mount. Without it (6.1) the mount is
/// the only probe: until the device is probed, mounting an unknown tag fails with EINVAL
/// (6.1; ENOENT/ENODEV on others), so those errors are retried until the deadline.
pub fn mount_virtiofs(
    step: &'static str,
    tag: &str,
    target: &str,
    flags: MountFlags,
    data: &str,
    bound: Duration,
    debug: bool,
) -> Result<(), Failure> {
    let share = Share {
        step,
        tag,
        target,
        flags,
        data,
        bound,
        debug,
        start: Instant::now(),
    };
    share.prepare()?;
    let mut tried = Vec::new();
    let tag_seen = sysfs_virtiofs_tags().is_some();
    if tag_seen {
        tried.push(share.watch_tag()?);
    }
    share.mount(tag_seen, tried)
}

/// One bounded wait-and-mount of a share, and the words its failures use.
struct Share<'a> {
    step: &'static str,
    tag: &'a str,
    target: &'a str,
    flags: MountFlags,
    data: &'a str,
    bound: Duration,
    debug: bool,
    start: Instant,
}

impl Share<'_> {
    fn within(&self) -> String {
        format!(
            "virtiofs tag {:?} did not appear within {}s",
            self.tag,
            self.bound.as_secs()
        )
    }

    fn check(&self) -> String {
        format!(
            "is a vhost-user-fs-pci device with tag={} attached? is its virtiofsd running \
             (socket path = the device's chardev)? did virtio_pci, fuse and virtiofs load above?",
            self.tag
        )
    }

    /// Without the filesystem type every mount fails with ENODEV forever: say so now
    /// instead of after the whole timeout.
    fn prepare(&self) -> Result<(), Failure> {
        let step = self.step;
        if mounts::filesystem_known("virtiofs") == Some(false) {
            return Err(Failure::new(step, "the kernel has no virtiofs filesystem")
                .tried("looked for virtiofs in /proc/filesystems")
                .check("is virtiofs (with fuse) built in, or in the initrd's module list and loaded above?"));
        }
        mounts::mkdir_p(self.target).map_err(|(dir, e)| {
            Failure::new(
                step,
                format!("cannot create mount point {dir}: {}", errno(e)),
            )
        })
    }

    /// Watches /sys/fs/virtiofs until the tag is listed; `Ok` is the line for `tried`.
    fn watch_tag(&self) -> Result<String, Failure> {
        let tag = self.tag;
        let watched = poll(self.bound, || match sysfs_virtiofs_tags() {
            Some(tags) if tags.iter().any(|t| t == tag) => Try::Ready(()),
            Some(tags) => Try::NotYet(tags),
            None => Try::NotYet(Vec::new()),
        });
        match watched {
            Ok(r) => {
                if self.debug {
                    log::log(
                        self.step,
                        &format!(
                            "tag {tag} listed in /sys/fs/virtiofs after {:.1} ms ({} polls)",
                            r.waited.as_secs_f64() * 1000.0,
                            r.attempts
                        ),
                    );
                }
                Ok(format!("watched /sys/fs/virtiofs/*/tag: {tag} appeared"))
            }
            Err(
                WaitError::TimedOut { last, attempts }
                | WaitError::Fatal {
                    error: last,
                    attempts,
                },
            ) => Err(Failure::new(self.step, self.within())
                .tried(format!(
                    "watched /sys/fs/virtiofs/*/tag for {:.1}s ({attempts} polls); tags present: {}",
                    self.start.elapsed().as_secs_f64(),
                    list(&last)
                ))
                .check(self.check())),
        }
    }

    /// Mounts, retrying the errors an unprobed tag gives until the deadline.
    fn mount(&self, tag_seen: bool, mut tried: Vec<String>) -> Result<(), Failure> {
        let (tag, target, flags, data) = (self.tag, self.target, self.flags, self.data);
        let cmd = mounts::command(tag, target, "virtiofs", flags, data);
        let remaining = self.bound.saturating_sub(self.start.elapsed());
        let mounted = poll(remaining, || {
            match mounts::mount(tag, target, "virtiofs", flags, data) {
                Ok(()) => Try::Ready(()),
                Err(e @ (Errno::NOENT | Errno::NODEV | Errno::INVAL)) => Try::NotYet(e),
                Err(e) => Try::Fatal(e),
            }
        });
        match mounted {
            Ok(r) => {
                if self.debug {
                    log::log(
                        self.step,
                        &format!(
                            "mounted after {} attempt(s), {:.1} ms",
                            r.attempts,
                            r.waited.as_secs_f64() * 1000.0
                        ),
                    );
                }
                Ok(())
            }
            Err(WaitError::Fatal { error, .. }) => {
                tried.push(cmd.clone());
                Err(
                    Failure::new(self.step, format!("{cmd} failed: {}", errno(error)))
                        .tried(tried.join("\n"))
                        .check(self.check()),
                )
            }
            Err(WaitError::TimedOut { last, attempts }) => {
                tried.push(format!(
                    "{cmd}: {attempts} attempt(s) over {:.1}s, last error {}",
                    self.start.elapsed().as_secs_f64(),
                    errno(last)
                ));
                Err(self.timed_out(tag_seen, tried))
            }
        }
    }

    fn timed_out(&self, tag_seen: bool, mut tried: Vec<String>) -> Failure {
        if !tag_seen {
            tried.push(format!(
                "virtio-fs devices present: {} (this kernel does not show their tags)",
                list(&virtio_fs_devices())
            ));
        }
        let error = if tag_seen {
            format!(
                "virtiofs tag {:?} is listed but mounting it kept failing for {}s",
                self.tag,
                self.bound.as_secs()
            )
        } else {
            self.within()
        };
        Failure::new(self.step, error)
            .tried(tried.join("\n"))
            .check(self.check())
    }
}
