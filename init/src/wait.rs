//! Bounded waits. One mechanism for everything: a deadline plus a poll interval that starts
//! short (devices usually show up within milliseconds) and grows to a cap (so a long wait
//! does not spin).

use crate::failure::Failure;
use crate::mounts;
use crate::plan::Flags;
use crate::report::{self, errno};
use rustix::io::Errno;
use std::time::{Duration, Instant};

const FIRST_INTERVAL: Duration = Duration::from_millis(1);
const MAX_INTERVAL: Duration = Duration::from_millis(20);

/// 1 ms, 2 ms, 4 ms, ... capped at 20 ms.
pub fn next_interval(current: Duration) -> Duration {
    (current * 2).min(MAX_INTERVAL)
}

/// The result of one attempt.
pub enum Try<T, E> {
    Ready(T),
    /// Not there yet; the reason is kept for the timeout message.
    NotYet(E),
    /// Will not get better by waiting.
    Fatal(E),
}

/// A successful wait.
#[derive(Debug)]
pub struct Ready<T> {
    // Unit for virtiofs; the block-device wait (next) returns the device found.
    #[allow(dead_code)]
    pub value: T,
    pub attempts: u32,
    pub waited: Duration,
}

/// An unsuccessful wait.
#[derive(Debug, PartialEq, Eq)]
pub enum WaitError<E> {
    Fatal { error: E, attempts: u32 },
    TimedOut { last: E, attempts: u32 },
}

/// Calls `attempt` until it is ready, fails for good, or `bound` has passed. There is
/// always at least one attempt, and one last attempt at the deadline.
pub fn poll<T, E>(
    bound: Duration,
    mut attempt: impl FnMut() -> Try<T, E>,
) -> Result<Ready<T>, WaitError<E>> {
    let start = Instant::now();
    // A bound too large to add (rd.timeout=huge) means no deadline, not a panic.
    let deadline = start.checked_add(bound);
    let mut interval = FIRST_INTERVAL;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let last = match attempt() {
            Try::Ready(value) => {
                return Ok(Ready {
                    value,
                    attempts,
                    waited: start.elapsed(),
                })
            }
            Try::Fatal(error) => return Err(WaitError::Fatal { error, attempts }),
            Try::NotYet(e) => e,
        };
        let now = Instant::now();
        let left = deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(now));
        if left.is_zero() {
            return Err(WaitError::TimedOut { last, attempts });
        }
        std::thread::sleep(interval.min(left));
        interval = next_interval(interval);
    }
}

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
    flags: Flags,
    data: &str,
    bound: Duration,
    debug: bool,
) -> Result<(), Failure> {
    let start = Instant::now();
    let cmd = mounts::command(tag, target, "virtiofs", flags, data);
    let within = format!(
        "virtiofs tag {tag:?} did not appear within {}s",
        bound.as_secs()
    );
    let check = format!(
        "is a vhost-user-fs-pci device with tag={tag} attached? is its virtiofsd running \
         (socket path = the device's chardev)? did virtio_pci, fuse and virtiofs load above?"
    );

    // Without the filesystem type every mount fails with ENODEV forever: say so now
    // instead of after the whole timeout.
    if mounts::filesystem_known("virtiofs") == Some(false) {
        return Err(Failure::new(step, "the kernel has no virtiofs filesystem")
            .tried("looked for virtiofs in /proc/filesystems")
            .check("is virtiofs (with fuse) built in, or in the initrd's module list and loaded above?"));
    }
    if let Err((dir, e)) = mounts::mkdir_p(target) {
        return Err(Failure::new(
            step,
            format!("cannot create mount point {dir}: {}", errno(e)),
        ));
    }

    let mut tried = Vec::new();
    let mut tag_seen = false;
    if sysfs_virtiofs_tags().is_some() {
        let watched = poll(bound, || match sysfs_virtiofs_tags() {
            Some(tags) if tags.iter().any(|t| t == tag) => Try::Ready(()),
            Some(tags) => Try::NotYet(tags),
            None => Try::NotYet(Vec::new()),
        });
        match watched {
            Ok(r) => {
                tag_seen = true;
                if debug {
                    report::log(
                        step,
                        &format!(
                            "tag {tag} listed in /sys/fs/virtiofs after {:.1} ms ({} polls)",
                            r.waited.as_secs_f64() * 1000.0,
                            r.attempts
                        ),
                    );
                }
                tried.push(format!("watched /sys/fs/virtiofs/*/tag: {tag} appeared"));
            }
            Err(
                WaitError::TimedOut { last, attempts }
                | WaitError::Fatal {
                    error: last,
                    attempts,
                },
            ) => {
                return Err(Failure::new(step, within)
                    .tried(format!(
                        "watched /sys/fs/virtiofs/*/tag for {:.1}s ({attempts} polls); tags present: {}",
                        start.elapsed().as_secs_f64(),
                        list(&last)
                    ))
                    .check(check));
            }
        }
    }

    let remaining = bound.saturating_sub(start.elapsed());
    let mounted = poll(remaining, || {
        match mounts::mount(tag, target, "virtiofs", flags, data) {
            Ok(()) => Try::Ready(()),
            Err(e @ (Errno::NOENT | Errno::NODEV | Errno::INVAL)) => Try::NotYet(e),
            Err(e) => Try::Fatal(e),
        }
    });
    match mounted {
        Ok(r) => {
            if debug {
                report::log(
                    step,
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
                Failure::new(step, format!("{cmd} failed: {}", errno(error)))
                    .tried(tried.join("\n"))
                    .check(check),
            )
        }
        Err(WaitError::TimedOut { last, attempts }) => {
            tried.push(format!(
                "{cmd}: {attempts} attempt(s) over {:.1}s, last error {}",
                start.elapsed().as_secs_f64(),
                errno(last)
            ));
            if !tag_seen {
                tried.push(format!(
                    "virtio-fs devices present: {} (this kernel does not show their tags)",
                    list(&virtio_fs_devices())
                ));
            }
            let error = if tag_seen {
                format!(
                    "virtiofs tag {tag:?} is listed but mounting it kept failing for {}s",
                    bound.as_secs()
                )
            } else {
                within
            };
            Err(Failure::new(step, error)
                .tried(tried.join("\n"))
                .check(check))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_grows_to_the_cap() {
        let mut i = FIRST_INTERVAL;
        let mut seen = vec![i];
        for _ in 0..7 {
            i = next_interval(i);
            seen.push(i);
        }
        let ms: Vec<u128> = seen.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [1, 2, 4, 8, 16, 20, 20, 20]);
    }

    #[test]
    fn ready_after_a_few_attempts() {
        let mut n = 0;
        let r = poll(Duration::from_secs(5), || {
            n += 1;
            if n < 4 {
                Try::NotYet(n)
            } else {
                Try::Ready("up")
            }
        })
        .unwrap();
        assert_eq!((r.value, r.attempts), ("up", 4));
        assert!(r.waited < Duration::from_secs(1));
    }

    #[test]
    fn zero_bound_tries_exactly_once() {
        let mut n = 0;
        let e = poll(Duration::ZERO, || -> Try<(), u32> {
            n += 1;
            Try::NotYet(n)
        })
        .unwrap_err();
        assert_eq!(
            e,
            WaitError::TimedOut {
                last: 1,
                attempts: 1
            }
        );
    }

    #[test]
    fn times_out_near_the_bound_and_keeps_the_last_reason() {
        let start = Instant::now();
        let mut n = 0;
        let e = poll(Duration::from_millis(60), || -> Try<(), u32> {
            n += 1;
            Try::NotYet(n)
        })
        .unwrap_err();
        let took = start.elapsed();
        // The upper bound is loose: a loaded CI machine may oversleep a lot.
        assert!(
            took >= Duration::from_millis(60) && took < Duration::from_secs(5),
            "{took:?}"
        );
        match e {
            WaitError::TimedOut { last, attempts } => {
                assert_eq!(last, attempts);
                // 1+2+4+8+16+20... ms: a handful of attempts, not a spin (fewer when
                // sleeps overrun on a loaded machine).
                assert!((2..=12).contains(&attempts), "{attempts}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn huge_bound_does_not_overflow() {
        let mut n = 0;
        let r = poll(Duration::MAX, || {
            n += 1;
            if n < 3 {
                Try::NotYet(())
            } else {
                Try::Ready(())
            }
        });
        assert_eq!(r.map(|r| r.attempts).ok(), Some(3));
    }

    #[test]
    fn fatal_stops_at_once() {
        let e = poll(Duration::from_secs(5), || -> Try<(), &str> {
            Try::Fatal("no")
        })
        .unwrap_err();
        assert_eq!(
            e,
            WaitError::Fatal {
                error: "no",
                attempts: 1
            }
        );
    }
}
