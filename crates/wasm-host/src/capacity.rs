//! How many guests this machine can run at once: past `vm.max_map_count` the kernel refuses
//! new mappings, an allocation fails and the process aborts. So guests are set up to take as
//! few mappings as they safely can ([`dense_config`]), the node's pod capacity is capped at
//! what the limit holds ([`guests`]), and every guest and every further linear memory is
//! charged to one budget for the whole process ([`MappingBudget`]), so that guests with many
//! memories or pods with many containers get a clear error instead of taking the node down.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use wasmtime::Config;

/// Mappings one linear memory of a [`dense_config`] engine takes: its accessible part and
/// the reservation with its guard regions before and after.
pub const MAPPINGS_PER_MEMORY: usize = 3;
/// Mappings a guest takes beside its memories: its async stack and the stack's guard page.
const MAPPINGS_PER_STACK: usize = 2;
/// Memory mappings one running guest (one memory) takes at most; BENCHMARKS.md measured 4.9.
pub const MAPPINGS_PER_GUEST: usize = MAPPINGS_PER_MEMORY + MAPPINGS_PER_STACK;
/// Mappings left for the agent itself (its heap, threads, libraries, compiled code).
const MAPPINGS_RESERVED: usize = 4096;

/// The configuration of an engine whose guests are instantiated one per container and live
/// long: a guest's initial memory is copied in at instantiation rather than mapped
/// copy-on-write from the module's image. That saves a mapping per guest (so more guests fit
/// under `vm.max_map_count`) for some microseconds more per instantiation; guard regions stay
/// as wasmtime sets them.
pub fn dense_config() -> Config {
    let mut config = Config::new();
    config.memory_init_cow(false);
    config
}

/// The kernel's `vm.max_map_count`, when it can be read.
fn max_map_count() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The guests that fit under the kernel's map count, when it can be read.
pub fn guests() -> Option<usize> {
    Some(max_map_count()?.saturating_sub(MAPPINGS_RESERVED) / MAPPINGS_PER_GUEST)
}

/// The memory mappings guests may still take in this process.
#[derive(Debug)]
pub struct MappingBudget {
    left: AtomicUsize,
    max_map_count: Option<usize>,
}

/// Mappings could not be taken: the guests already hold all the kernel allows.
#[derive(Debug, thiserror::Error)]
#[error(
    "this node cannot map another WebAssembly memory: its guests hold all the memory mappings the kernel allows ({}); raise it on the node (sysctl -w vm.max_map_count=262144) or run the pod on another node",
    .max_map_count.map_or("vm.max_map_count".to_string(), |n| format!("vm.max_map_count {n}"))
)]
pub struct MappingsExhausted {
    max_map_count: Option<usize>,
}

impl MappingBudget {
    /// A budget of `mappings`, under a kernel limit of `max_map_count` (for messages).
    pub fn new(mappings: usize, max_map_count: Option<usize>) -> Self {
        Self {
            left: AtomicUsize::new(mappings),
            max_map_count,
        }
    }

    /// The budget of this process: the kernel's limit less what the agent keeps for itself
    /// (unbounded when the limit cannot be read).
    pub fn process() -> Arc<Self> {
        static PROCESS: LazyLock<Arc<MappingBudget>> = LazyLock::new(|| {
            let limit = max_map_count();
            let mappings = limit.map_or(usize::MAX, |n| n.saturating_sub(MAPPINGS_RESERVED));
            Arc::new(MappingBudget::new(mappings, limit))
        });
        PROCESS.clone()
    }

    /// Takes `n` mappings, to be given back with [`Self::give_back`].
    pub fn take(&self, n: usize) -> Result<(), MappingsExhausted> {
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(n)
            })
            .map(drop)
            .map_err(|_| MappingsExhausted {
                max_map_count: self.max_map_count,
            })
    }

    /// Gives back `n` mappings taken before.
    pub fn give_back(&self, n: usize) {
        self.left.fetch_add(n, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_are_taken_until_none_are_left_and_can_be_given_back() {
        let budget = MappingBudget::new(8, Some(65530));
        budget.take(5).unwrap();
        budget.take(3).unwrap();
        let refused = budget.take(3).unwrap_err().to_string();
        assert!(refused.contains("vm.max_map_count 65530"), "{refused}");
        assert!(refused.contains("sysctl -w vm.max_map_count="), "{refused}");
        budget.give_back(3);
        budget.take(3).unwrap();
    }
}
