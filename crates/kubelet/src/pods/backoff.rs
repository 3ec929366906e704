//! The kubelet's restart and image-pull backoff: 10 s doubling to 5 minutes, reset after a
//! container has run cleanly for 10 minutes.

use std::time::Duration;

const INITIAL: Duration = Duration::from_secs(10);
const MAX: Duration = Duration::from_secs(300);
const RESET_AFTER: Duration = Duration::from_secs(600);

/// One container's (or one pod's) backoff between failed attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The delay after the first failure.
    first: Duration,
    /// The delay given last; `None` before any failure (or after a reset).
    current: Option<Duration>,
}

impl Backoff {
    /// Restarts of a container: the first is immediate, then 10 s doubling to 5 minutes.
    pub fn restarts() -> Self {
        Self {
            first: Duration::ZERO,
            current: None,
        }
    }

    /// Image pulls: 10 s after the first failure, doubling to 5 minutes.
    pub fn pulls() -> Self {
        Self {
            first: INITIAL,
            current: None,
        }
    }

    /// The delay before the next attempt after a failure of an attempt that ran for `ran_for`
    /// (a run of 10 minutes or more starts the back-off over).
    pub fn next(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= RESET_AFTER {
            self.current = None;
        }
        let delay = match self.current {
            None => self.first,
            Some(d) if d.is_zero() => INITIAL,
            Some(d) => (d * 2).min(MAX),
        };
        self.current = Some(delay);
        delay
    }

    /// Whether an attempt failed since the last reset.
    pub fn is_backing_off(&self) -> bool {
        self.current.is_some()
    }

    /// An attempt succeeded: the next failure starts over.
    pub fn reset(&mut self) {
        self.current = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_double_to_five_minutes_and_reset_after_a_long_run() {
        let mut b = Backoff::restarts();
        let delays: Vec<u64> = (0..8)
            .map(|_| b.next(Duration::from_secs(1)).as_secs())
            .collect();
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.next(Duration::from_secs(601)), Duration::ZERO);
    }

    #[test]
    fn pulls_wait_ten_seconds_first_and_start_over_after_a_success() {
        let mut b = Backoff::pulls();
        assert!(!b.is_backing_off());
        let delays: Vec<u64> = (0..7).map(|_| b.next(Duration::ZERO).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300]);
        assert!(b.is_backing_off());
        b.reset();
        assert_eq!(b.next(Duration::ZERO).as_secs(), 10);
    }
}
