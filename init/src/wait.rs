//! Bounded waits. One mechanism for everything: a deadline plus a poll interval that starts
//! short (devices usually show up within milliseconds) and grows to a cap (so a long wait
//! does not spin).

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
