//! What a guest may use: a memory cap checked as wasmtime grows its memories and tables, and a
//! CPU share enforced at the epoch ticks where a running guest yields.

use std::time::{Duration, Instant};
use wasmtime::ResourceLimiter;

/// Bytes charged per table element (a function reference is a pointer on the host).
const TABLE_ELEMENT_BYTES: u64 = 8;
/// The accounting period of a CPU share, as the Linux CFS quota's default.
const CPU_PERIOD: Duration = Duration::from_millis(100);
/// The most run time one tick can charge: a longer gap means the guest was blocked in a host
/// call (sleeping, waiting for input), not computing.
const MAX_SLICE: Duration = Duration::from_millis(20);

/// The memory a guest may hold: its linear memories and tables together.
#[derive(Debug, Default)]
pub struct MemoryLimit {
    limit: Option<u64>,
    used: u64,
    exceeded: bool,
}

impl MemoryLimit {
    /// A cap of `limit` bytes, or none.
    pub fn new(limit: Option<u64>) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    /// The limit, when the guest tried to grow past it.
    pub fn exceeded(&self) -> Option<u64> {
        self.limit.filter(|_| self.exceeded)
    }

    fn grow(&mut self, bytes: u64) -> wasmtime::Result<bool> {
        if let Some(limit) = self.limit
            && self.used.saturating_add(bytes) > limit
        {
            self.exceeded = true;
            wasmtime::bail!("the guest's memory limit of {limit} bytes is exhausted");
        }
        self.used = self.used.saturating_add(bytes);
        Ok(true)
    }
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(desired.saturating_sub(current) as u64)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(desired.saturating_sub(current) as u64 * TABLE_ELEMENT_BYTES)
    }
}

/// A share of one core: within each 100 ms period the guest runs at most its quota, then waits
/// for the next period (as a CFS quota throttles a container).
#[derive(Debug)]
pub struct CpuShare {
    quota: Duration,
    period_end: Instant,
    used: Duration,
    resumed: Instant,
}

impl CpuShare {
    /// A share of `cores` of one core; `None` when that is a whole core or more, which a
    /// single-threaded guest cannot exceed.
    pub fn new(cores: f64) -> Option<Self> {
        if !(cores > 0.0 && cores < 1.0) {
            return None;
        }
        let now = Instant::now();
        Some(Self {
            quota: CPU_PERIOD.mul_f64(cores),
            period_end: now + CPU_PERIOD,
            used: Duration::ZERO,
            resumed: now,
        })
    }

    /// Charges the run since the last tick; returns how long the guest must now pause.
    pub fn tick(&mut self) -> Duration {
        let now = Instant::now();
        let slice = now.saturating_duration_since(self.resumed).min(MAX_SLICE);
        if now >= self.period_end {
            self.period_end = now + CPU_PERIOD;
            self.used = slice;
        } else {
            self.used += slice;
        }
        let pause = if self.used >= self.quota {
            let pause = self.period_end.saturating_duration_since(now);
            self.period_end += CPU_PERIOD;
            self.used = Duration::ZERO;
            pause
        } else {
            Duration::ZERO
        };
        self.resumed = now + pause;
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_growth_past_the_limit_fails_and_is_remembered() {
        let mut limit = MemoryLimit::new(Some(100 * 65536));
        assert!(limit.memory_growing(0, 17 * 65536, None).unwrap());
        assert_eq!(limit.exceeded(), None);
        assert!(limit.memory_growing(17 * 65536, 101 * 65536, None).is_err());
        assert_eq!(limit.exceeded(), Some(100 * 65536));
    }

    #[test]
    fn tables_count_towards_the_limit() {
        let mut limit = MemoryLimit::new(Some(800));
        assert!(limit.table_growing(0, 100, None).unwrap());
        assert!(limit.table_growing(100, 101, None).is_err());
    }

    #[test]
    fn no_limit_grows_freely() {
        let mut limit = MemoryLimit::new(None);
        assert!(limit.memory_growing(0, 1 << 32, None).unwrap());
        assert_eq!(limit.exceeded(), None);
    }

    #[test]
    fn whole_cores_are_not_throttled() {
        assert!(CpuShare::new(1.0).is_none());
        assert!(CpuShare::new(2.5).is_none());
        assert!(CpuShare::new(0.0).is_none());
    }

    #[test]
    fn a_share_pauses_once_its_quota_is_used() {
        let mut share = CpuShare::new(0.1).expect("a fraction of a core");
        // Pretend the guest ran 15 ms (more than the 10 ms quota) since it resumed.
        share.resumed -= Duration::from_millis(15);
        let pause = share.tick();
        assert!(pause > Duration::from_millis(50), "paused only {pause:?}");
        assert!(pause <= CPU_PERIOD);
    }

    #[test]
    fn a_blocked_guest_is_charged_one_slice_at_most() {
        let mut share = CpuShare::new(0.5).expect("a fraction of a core");
        share.resumed -= Duration::from_secs(5);
        assert_eq!(share.tick(), Duration::ZERO);
    }
}
