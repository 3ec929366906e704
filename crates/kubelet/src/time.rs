//! Durations and deadlines from the API. A pod spec may carry any `int64` for a grace period,
//! a deadline or a probe timing; every one saturates here instead of overflowing, so that no
//! value a user can write panics the task that owns a pod.

use std::time::Duration;

/// The longest wait the node schedules (about a century): a longer one from the API behaves the
/// same in practice, and any clock can add it without overflowing.
pub const FOREVER: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Seconds from the API as a duration: negative values are zero, huge ones [`FOREVER`].
pub fn seconds(value: i64) -> Duration {
    Duration::from_secs(u64::try_from(value).unwrap_or(0)).min(FOREVER)
}

/// The instant `after` from now, with `after` capped at [`FOREVER`].
pub fn deadline_in(after: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + after.min(FOREVER)
}

/// The standard-library instant `after` from now, with `after` capped at [`FOREVER`].
pub fn std_deadline_in(after: Duration) -> std::time::Instant {
    std::time::Instant::now() + after.min(FOREVER)
}

/// `timestamp` moved by `seconds`, clamped to the range of timestamps.
pub fn timestamp_plus(timestamp: jiff::Timestamp, seconds: i64) -> jiff::Timestamp {
    let shifted = timestamp.checked_add(jiff::SignedDuration::from_secs(seconds));
    shifted.unwrap_or(if seconds < 0 {
        jiff::Timestamp::MIN
    } else {
        jiff::Timestamp::MAX
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_values_saturate() {
        assert_eq!(seconds(-5), Duration::ZERO);
        assert_eq!(seconds(30), Duration::from_secs(30));
        assert_eq!(seconds(i64::MAX), FOREVER);
        let far = deadline_in(Duration::MAX);
        assert!(far > tokio::time::Instant::now() + Duration::from_secs(86_400 * 365 * 99));
        let _ = std_deadline_in(Duration::MAX);
        let now = jiff::Timestamp::now();
        assert_eq!(timestamp_plus(now, i64::MAX), jiff::Timestamp::MAX);
        assert_eq!(timestamp_plus(now, i64::MIN), jiff::Timestamp::MIN);
        assert_eq!(
            timestamp_plus(now, 60),
            now + jiff::SignedDuration::from_secs(60)
        );
    }
}
