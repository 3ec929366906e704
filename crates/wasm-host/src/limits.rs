//! What a guest may use: a memory cap checked as wasmtime grows its memories and tables (and
//! the process's memory mappings charged as it creates memories), and a CPU share enforced at
//! the epoch ticks where a running guest yields.

use crate::capacity::{MAPPINGS_PER_GUEST, MAPPINGS_PER_MEMORY, MappingBudget, MappingsExhausted};
use kubelet::runtime::{Limits, Usage};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::ResourceLimiter;

/// Bytes charged per table element (a function reference is a pointer on the host).
const TABLE_ELEMENT_BYTES: u64 = 8;
/// The accounting period of a CPU share, as the Linux CFS quota's default.
const CPU_PERIOD: Duration = Duration::from_millis(100);
/// The most run time one tick can charge: a longer gap means the guest was blocked in a host
/// call (sleeping, waiting for input), not computing.
const MAX_SLICE: Duration = Duration::from_millis(20);

/// What one store's guest may use and has used; its memory is accounted to the container's
/// [`Usage`] while the store lives.
#[derive(Debug)]
pub struct GuestLimits {
    memory: MemoryLimit,
    cpu: ContainerCpu,
    cpu_time: Option<CpuTime>,
    usage: Arc<Usage>,
    resumed: Instant,
}

/// The CPU time one store may use in all (an HTTP request's instance): what it may, and what it
/// has used.
#[derive(Debug, Clone, Copy)]
struct CpuTime {
    limit: Duration,
    used: Duration,
}

/// A store used all the CPU time it may.
#[derive(Debug, thiserror::Error)]
#[error(
    "the instance used {limit:?} of CPU time, the most one request may (--http-request-cpu-time); it was stopped"
)]
pub struct CpuTimeExhausted {
    limit: Duration,
}

impl GuestLimits {
    /// Limits for the one store of a container with `limits`, accounting to `usage`; fails
    /// when the process's mapping budget has no room for another guest.
    pub fn new(limits: Limits, usage: Arc<Usage>) -> Result<Self, MappingsExhausted> {
        Self::sharing(limits, usage, ContainerCpu::new(limits.cpu_cores))
    }

    /// Limits for one of the stores of a container with `limits` (an HTTP request's instance),
    /// accounting to `usage` and charging `cpu`, the container's CPU share, with its other
    /// stores.
    pub fn sharing(
        limits: Limits,
        usage: Arc<Usage>,
        cpu: ContainerCpu,
    ) -> Result<Self, MappingsExhausted> {
        Ok(Self {
            memory: MemoryLimit::new(limits.memory_bytes, usage.clone(), MappingBudget::process())?,
            cpu,
            cpu_time: None,
            usage,
            resumed: Instant::now(),
        })
    }

    /// The memory cap, for the store's limiter.
    pub fn memory(&mut self) -> &mut MemoryLimit {
        &mut self.memory
    }

    /// These limits, and at most `limit` bytes of memories and tables for this store's
    /// instance (Spin's `SPIN_MAX_INSTANCE_MEMORY`), within the container's.
    pub fn with_instance_memory(mut self, limit: u64) -> Self {
        self.memory.instance_limit = Some(limit);
        self
    }

    /// These limits, and at most `limit` of CPU time for the store in all.
    pub fn with_cpu_time(mut self, limit: Duration) -> Self {
        self.cpu_time = Some(CpuTime {
            limit,
            used: Duration::ZERO,
        });
        self
    }

    /// At an epoch tick: charges the run since the guest last resumed; returns how long it
    /// must now pause to stay within its CPU share, or that it has used all its CPU time.
    pub fn tick(&mut self) -> Result<Duration, CpuTimeExhausted> {
        let now = Instant::now();
        let slice = now.saturating_duration_since(self.resumed).min(MAX_SLICE);
        self.usage.add_cpu(slice);
        if let Some(time) = &mut self.cpu_time {
            time.used = time.used.saturating_add(slice);
            if time.used > time.limit {
                return Err(CpuTimeExhausted { limit: time.limit });
            }
        }
        let pause = self.cpu.charge(slice, now);
        self.resumed = now + pause;
        Ok(pause)
    }
}

/// The memory a guest may hold: its linear memories and tables, with those of every other
/// instance of its container (the limit is the container's); and the mappings it takes from
/// the process's budget (a guest's worth up front, then each memory past its first).
#[derive(Debug)]
pub struct MemoryLimit {
    limit: Option<u64>,
    /// What this store's instance may hold by itself, when that is less than the container.
    instance_limit: Option<u64>,
    used: u64,
    exceeded: bool,
    usage: Arc<Usage>,
    budget: Arc<MappingBudget>,
    mappings: usize,
    memories: usize,
}

impl Drop for MemoryLimit {
    fn drop(&mut self) {
        self.usage.release_memory(self.used);
        self.budget.give_back(self.mappings);
    }
}

impl MemoryLimit {
    /// A cap of `limit` bytes, or none; takes a guest's mappings (its stack and first memory)
    /// from `budget`, or fails when they are not there.
    pub fn new(
        limit: Option<u64>,
        usage: Arc<Usage>,
        budget: Arc<MappingBudget>,
    ) -> Result<Self, MappingsExhausted> {
        budget.take(MAPPINGS_PER_GUEST)?;
        Ok(Self {
            limit,
            instance_limit: None,
            used: 0,
            exceeded: false,
            usage,
            budget,
            mappings: MAPPINGS_PER_GUEST,
            memories: 0,
        })
    }

    /// Counts a new memory (wasmtime asks to grow from 0 when it creates one; a memory
    /// declared empty counts again at its first growth, which errs on the safe side) and
    /// charges its mappings past the first, which [`Self::new`] paid for.
    fn map_memory(&mut self) -> wasmtime::Result<()> {
        if self.memories > 0 {
            self.budget.take(MAPPINGS_PER_MEMORY)?;
            self.mappings += MAPPINGS_PER_MEMORY;
        }
        self.memories += 1;
        Ok(())
    }

    /// The limit, when the guest tried to grow past it.
    pub fn exceeded(&self) -> Option<u64> {
        self.limit.filter(|_| self.exceeded)
    }

    /// Charges `bytes` to the container: the limit counts every instance it holds at once (a
    /// server's requests, each with an instance of its own, share their container's limit, as
    /// a container's processes share its cgroup's).
    fn grow(&mut self, bytes: u64) -> wasmtime::Result<bool> {
        if let Some(limit) = self.instance_limit
            && self.used.saturating_add(bytes) > limit
        {
            wasmtime::bail!(
                "the instance's memory limit of {limit} bytes (SPIN_MAX_INSTANCE_MEMORY) is exhausted"
            );
        }
        if !self.usage.try_grow_memory(bytes, self.limit) {
            self.exceeded = true;
            wasmtime::bail!(
                "the container's memory limit of {} bytes (all its instances together) is exhausted",
                self.limit.unwrap_or_default()
            );
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
        if current == 0 {
            self.map_memory()?;
        }
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

/// A container's share of one core (`resources.limits.cpu` below a core), charged by all its
/// stores together: an HTTP container's concurrent instances share one quota, as a container's
/// processes share its CFS quota. Cheap to clone; clones share the quota.
#[derive(Debug, Clone, Default)]
pub struct ContainerCpu(Option<Arc<std::sync::Mutex<CpuShare>>>);

impl ContainerCpu {
    /// The share of `cores` (none for a whole core or more, or no limit).
    pub fn new(cores: Option<f64>) -> Self {
        Self(
            cores
                .and_then(CpuShare::new)
                .map(|share| Arc::new(std::sync::Mutex::new(share))),
        )
    }

    /// Charges `slice` of run time at `now`; returns how long the store must now pause.
    fn charge(&self, slice: Duration, now: Instant) -> Duration {
        self.0.as_ref().map_or(Duration::ZERO, |share| {
            share
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .charge(slice, now)
        })
    }
}

/// A share of one core: within each 100 ms period the guests of a container run at most its
/// quota together, then each waits for the period's end (as a CFS quota throttles a container).
#[derive(Debug)]
pub struct CpuShare {
    quota: Duration,
    period_end: Instant,
    used: Duration,
}

impl CpuShare {
    /// A share of `cores` of one core; `None` when that is a whole core or more, which a
    /// single-threaded guest cannot exceed.
    pub fn new(cores: f64) -> Option<Self> {
        if !(cores > 0.0 && cores < 1.0) {
            return None;
        }
        Some(Self {
            quota: CPU_PERIOD.mul_f64(cores),
            period_end: Instant::now() + CPU_PERIOD,
            used: Duration::ZERO,
        })
    }

    /// Charges `slice` of run time at `now`; returns how long the guest must now pause: until
    /// the period's end once the quota is used. What the container ran past its quota (its
    /// stores each run to their next tick before they see it used) is a debt the next periods
    /// pay first, as a CFS quota's runtime goes negative: over time it gets its share, however
    /// many stores it runs at once.
    pub fn charge(&mut self, slice: Duration, now: Instant) -> Duration {
        if now >= self.period_end {
            let periods = now.saturating_duration_since(self.period_end).as_nanos()
                / CPU_PERIOD.as_nanos()
                + 1;
            let periods = u32::try_from(periods).unwrap_or(u32::MAX);
            self.period_end += CPU_PERIOD.saturating_mul(periods);
            self.used = self.used.saturating_sub(self.quota.saturating_mul(periods));
        }
        self.used = self.used.saturating_add(slice);
        if self.used < self.quota {
            return Duration::ZERO;
        }
        // Until the end of this period, and of as many more as the debt takes to pay: a store
        // resumed earlier would run a whole tick before it saw the debt.
        let owed = (self.used - self.quota).as_nanos() / self.quota.as_nanos().max(1);
        let owed = u32::try_from(owed).unwrap_or(u32::MAX);
        self.period_end
            .saturating_duration_since(now)
            .saturating_add(CPU_PERIOD.saturating_mul(owed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unbounded() -> Arc<MappingBudget> {
        Arc::new(MappingBudget::new(usize::MAX, None))
    }

    /// A module with `n` memories of one page each.
    fn module_with_memories(n: usize) -> Vec<u8> {
        let mut memories = wasm_encoder::MemorySection::new();
        for _ in 0..n {
            memories.memory(wasm_encoder::MemoryType {
                minimum: 1,
                maximum: None,
                memory64: false,
                shared: false,
                page_size_log2: None,
            });
        }
        let mut module = wasm_encoder::Module::new();
        module.section(&memories);
        module.finish()
    }

    #[test]
    fn an_instance_holds_at_most_its_own_limit_within_the_containers() {
        use wasmtime::{Engine, Instance, Module, Store};
        let engine = Engine::new(&crate::capacity::dense_config()).unwrap();
        let usage = Arc::new(Usage::default());
        let instantiate = |instance_limit: Option<u64>| {
            let mut limit = MemoryLimit::new(Some(1 << 20), usage.clone(), unbounded()).unwrap();
            limit.instance_limit = instance_limit;
            let module = Module::new(&engine, module_with_memories(2)).unwrap();
            let mut store = Store::new(&engine, limit);
            store.limiter(|limit| limit);
            Instance::new(&mut store, &module, &[]).map(|_| store)
        };
        // Two pages: within the container's 1 MiB, past an instance's one page.
        assert!(instantiate(None).is_ok());
        let Err(refused) = instantiate(Some(65536)) else {
            panic!("a second page does not fit the instance");
        };
        assert!(
            format!("{refused:#}").contains("SPIN_MAX_INSTANCE_MEMORY"),
            "{refused:#}"
        );
        // What the refused instance took is given back with it.
        assert_eq!(usage.memory_bytes(), 0);
    }

    #[test]
    fn guests_and_memories_past_the_mapping_budget_are_refused_with_a_clear_error() {
        use wasmtime::{Engine, Instance, Module, Store};
        let engine = Engine::new(&crate::capacity::dense_config()).unwrap();
        let budget = Arc::new(MappingBudget::new(
            MAPPINGS_PER_GUEST + MAPPINGS_PER_MEMORY,
            Some(65530),
        ));
        let guest = || MemoryLimit::new(None, Arc::default(), budget.clone());
        let instantiate = |limit, memories| {
            let module = Module::new(&engine, module_with_memories(memories)).unwrap();
            let mut store = Store::new(&engine, limit);
            store.limiter(|limit| limit);
            Instance::new(&mut store, &module, &[]).map(|_| store)
        };
        let Err(refused) = instantiate(guest().unwrap(), 3) else {
            panic!("a third memory does not fit");
        };
        let refused = format!("{refused:#}");
        assert!(refused.contains("vm.max_map_count 65530"), "{refused}");
        let two = instantiate(guest().unwrap(), 2).expect("the refused guest gave its share back");
        let refused = guest().expect_err("no room is left for another guest");
        assert!(refused.to_string().contains("sysctl -w"), "{refused}");
        drop(two);
        instantiate(guest().unwrap(), 2).expect("a dropped store gives its mappings back");
    }

    #[test]
    fn memory_growth_past_the_limit_fails_and_is_remembered() {
        let usage = Arc::new(Usage::default());
        let mut limit = MemoryLimit::new(Some(100 * 65536), usage.clone(), unbounded()).unwrap();
        assert!(limit.memory_growing(0, 17 * 65536, None).unwrap());
        assert_eq!(limit.exceeded(), None);
        assert!(limit.memory_growing(17 * 65536, 101 * 65536, None).is_err());
        assert_eq!(limit.exceeded(), Some(100 * 65536));
        assert_eq!(usage.memory_bytes(), 17 * 65536);
        drop(limit);
        assert_eq!(
            usage.memory_bytes(),
            0,
            "a dropped store gives its memory back"
        );
    }

    #[test]
    fn tables_count_towards_the_limit() {
        let mut limit = MemoryLimit::new(Some(800), Arc::default(), unbounded()).unwrap();
        assert!(limit.table_growing(0, 100, None).unwrap());
        assert!(limit.table_growing(100, 101, None).is_err());
    }

    #[test]
    fn no_limit_grows_freely() {
        let mut limit = MemoryLimit::new(None, Arc::default(), unbounded()).unwrap();
        assert!(limit.memory_growing(0, 1 << 32, None).unwrap());
        assert_eq!(limit.exceeded(), None);
    }

    #[test]
    fn a_containers_stores_share_one_quota() {
        let cpu = ContainerCpu::new(Some(0.2));
        let now = Instant::now();
        // Two stores of the container run 10 ms each: its 20 ms quota is used.
        assert_eq!(
            cpu.clone().charge(Duration::from_millis(10), now),
            Duration::ZERO
        );
        let pause = cpu.charge(Duration::from_millis(10), now);
        assert!(pause > Duration::from_millis(50), "paused only {pause:?}");
        // Either store ticking again in the period waits for its end too.
        assert!(
            cpu.clone()
                .charge(Duration::ZERO, now + Duration::from_millis(1))
                > Duration::ZERO
        );
        // The next period starts afresh.
        assert_eq!(
            cpu.charge(Duration::from_millis(5), now + CPU_PERIOD * 2),
            Duration::ZERO
        );
        assert_eq!(
            ContainerCpu::new(None).charge(Duration::from_secs(1), now),
            Duration::ZERO
        );
    }

    #[test]
    fn what_a_container_ran_past_its_quota_is_paid_by_the_next_periods() {
        let mut share = CpuShare::new(0.2).expect("a fraction of a core");
        let start = Instant::now();
        // Four stores resumed together each ran a 10 ms tick: twice the 20 ms quota. The last
        // pauses past this period's end and the next one, which pays the debt.
        let mut pause = Duration::ZERO;
        for _ in 0..4 {
            pause = share.charge(Duration::from_millis(10), start);
        }
        assert!(pause > CPU_PERIOD, "paused only {pause:?}");
        // The next period is spent paying the debt...
        let next = start + CPU_PERIOD + Duration::from_millis(1);
        assert!(share.charge(Duration::ZERO, next) > Duration::ZERO);
        // ...and the one after it runs again.
        let after = start + CPU_PERIOD * 2 + Duration::from_millis(1);
        assert_eq!(
            share.charge(Duration::from_millis(1), after),
            Duration::ZERO
        );
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
        // The guest ran 15 ms, more than its 10 ms quota.
        let pause = share.charge(Duration::from_millis(15), Instant::now());
        assert!(pause > Duration::from_millis(50), "paused only {pause:?}");
        assert!(pause <= CPU_PERIOD);
    }

    #[test]
    fn a_containers_instances_share_its_memory_limit() {
        let usage = Arc::new(Usage::default());
        let limit = Some(100 << 10);
        let budget = MappingBudget::process();
        let mut first = MemoryLimit::new(limit, usage.clone(), budget.clone()).unwrap();
        let mut second = MemoryLimit::new(limit, usage.clone(), budget).unwrap();
        assert!(first.memory_growing(0, 64 << 10, None).unwrap());
        // Alone it would fit; beside the first it does not.
        assert!(second.memory_growing(0, 64 << 10, None).is_err());
        assert_eq!(second.exceeded(), Some(100 << 10));
        assert_eq!(first.exceeded(), None);
        assert_eq!(usage.memory_bytes(), 64 << 10);
        // The first instance ends: its memory is the container's again.
        drop(first);
        assert_eq!(usage.memory_bytes(), 0);
        let mut third = MemoryLimit::new(limit, usage.clone(), MappingBudget::process()).unwrap();
        assert!(third.memory_growing(0, 64 << 10, None).unwrap());
    }

    #[test]
    fn a_blocked_guest_is_charged_one_slice_at_most() {
        let usage = Arc::new(Usage::default());
        let limits = Limits {
            memory_bytes: None,
            cpu_cores: Some(0.5),
        };
        let mut guest = GuestLimits::new(limits, usage.clone()).unwrap();
        guest.resumed -= Duration::from_secs(5);
        assert_eq!(guest.tick().unwrap(), Duration::ZERO);
        assert_eq!(usage.cpu_nanos(), MAX_SLICE.as_nanos() as u64);
    }

    #[test]
    fn a_store_past_its_cpu_time_is_told_so() {
        let limits = Limits {
            memory_bytes: None,
            cpu_cores: None,
        };
        let mut guest = GuestLimits::new(limits, Arc::default())
            .unwrap()
            .with_cpu_time(MAX_SLICE * 2);
        for _ in 0..2 {
            guest.resumed -= MAX_SLICE;
            assert!(guest.tick().is_ok());
        }
        guest.resumed -= MAX_SLICE;
        let stopped = guest.tick().unwrap_err().to_string();
        assert!(stopped.contains("--http-request-cpu-time"), "{stopped}");
    }
}
