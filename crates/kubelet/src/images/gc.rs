//! Image garbage collection as the kubelet does it: images no pod on the node uses, unused for
//! at least the minimum age, are removed oldest-use first while the image filesystem is above
//! the high threshold, until it is below the low one; and any image unused for longer than the
//! maximum age (when set) goes regardless of disk use.

use std::time::Duration;

/// The image GC policy (`--image-gc-high-threshold`, `--image-gc-low-threshold`,
/// `--image-minimum-gc-age`, `--image-maximum-gc-age`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GcPolicy {
    /// Disk use, in percent, above which images are collected.
    pub high_threshold: u8,
    /// Disk use, in percent, collection brings the disk down to.
    pub low_threshold: u8,
    /// How long an image must be unused before it may be collected.
    pub minimum_age: Duration,
    /// Unused longer than this, an image is collected whatever the disk use (zero: never).
    pub maximum_age: Duration,
}

impl Default for GcPolicy {
    /// The kubelet's defaults.
    fn default() -> Self {
        Self {
            high_threshold: 85,
            low_threshold: 80,
            minimum_age: Duration::from_secs(120),
            maximum_age: Duration::ZERO,
        }
    }
}

/// An image that no pod uses: how long since it was last used, and its size.
#[derive(Debug, Clone, PartialEq)]
pub struct Unused<K> {
    /// What identifies it.
    pub key: K,
    /// Time since its last use.
    pub idle: Duration,
    /// Bytes it holds.
    pub bytes: u64,
}

/// The disk the images live on: total and used bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disk {
    /// Capacity in bytes.
    pub capacity: u64,
    /// Bytes in use.
    pub used: u64,
}

impl GcPolicy {
    /// Which of the `unused` images to remove, given the disk's state.
    pub fn select<K: Clone>(&self, mut unused: Vec<Unused<K>>, disk: Disk) -> Vec<K> {
        unused.retain(|image| image.idle >= self.minimum_age);
        // Longest idle first, as the kubelet frees least recently used images first.
        unused.sort_by_key(|image| std::cmp::Reverse(image.idle));
        let mut chosen = Vec::new();
        let mut used = disk.used;
        let percent = |bytes: u64| bytes.saturating_mul(100) / disk.capacity.max(1);
        let over_high = percent(used) > u64::from(self.high_threshold);
        let low_bytes = disk.capacity / 100 * u64::from(self.low_threshold);
        for image in unused {
            let too_old = !self.maximum_age.is_zero() && image.idle > self.maximum_age;
            let needs_space = over_high && used > low_bytes;
            if too_old || needs_space {
                used = used.saturating_sub(image.bytes);
                chosen.push(image.key);
            }
        }
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(key: &'static str, idle_secs: u64, bytes: u64) -> Unused<&'static str> {
        Unused {
            key,
            idle: Duration::from_secs(idle_secs),
            bytes,
        }
    }

    #[test]
    fn below_the_high_threshold_nothing_goes() {
        let policy = GcPolicy::default();
        let disk = Disk {
            capacity: 1000,
            used: 850,
        };
        assert!(policy.select(vec![image("a", 600, 100)], disk).is_empty());
    }

    #[test]
    fn above_it_the_oldest_go_until_below_the_low_threshold() {
        let policy = GcPolicy::default();
        let disk = Disk {
            capacity: 1000,
            used: 900,
        };
        let unused = vec![
            image("recent", 10, 500),
            image("old", 900, 60),
            image("older", 1000, 30),
            image("middle", 300, 50),
        ];
        // 900 -> 870 (older) -> 810 (old) -> 760 (middle) is below 800; "recent" is too young.
        assert_eq!(policy.select(unused, disk), ["older", "old", "middle"]);
    }

    #[test]
    fn the_maximum_age_collects_whatever_the_disk() {
        let policy = GcPolicy {
            maximum_age: Duration::from_secs(60),
            minimum_age: Duration::ZERO,
            ..GcPolicy::default()
        };
        let disk = Disk {
            capacity: 1000,
            used: 10,
        };
        assert_eq!(
            policy.select(vec![image("idle", 120, 5), image("fresh", 5, 5)], disk),
            ["idle"]
        );
    }
}
