//! How many guests this machine can run at once: past `vm.max_map_count` the kernel refuses
//! new mappings, an allocation fails and the process aborts. So guests are set up to take as
//! few mappings as they safely can ([`dense_config`]), and the node's pod capacity is capped
//! at what the limit holds ([`guests`]).

use wasmtime::Config;

/// Memory mappings one running guest of a [`dense_config`] engine takes at most: its linear
/// memory (the accessible part, the reservation with its guard regions) and its async stack
/// (the stack and its guard page); measured in BENCHMARKS.md.
const MAPPINGS_PER_GUEST: usize = 5;
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

/// The guests that fit under the kernel's map count, when it can be read.
pub fn guests() -> Option<usize> {
    let limit: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(limit.saturating_sub(MAPPINGS_RESERVED) / MAPPINGS_PER_GUEST)
}
