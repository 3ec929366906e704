//! How many guests this machine can run at once: past `vm.max_map_count` the kernel refuses
//! new mappings, an allocation fails and the process aborts.

/// Memory mappings one running guest takes (the linear memory's reservation and accessible
/// part, the async stack and its guard...), measured in BENCHMARKS.md.
const MAPPINGS_PER_GUEST: usize = 7;
/// Mappings left for the agent itself (its heap, threads, libraries, compiled code).
const MAPPINGS_RESERVED: usize = 4096;

/// The guests that fit under the kernel's map count, when it can be read.
pub fn guests() -> Option<usize> {
    let limit: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(limit.saturating_sub(MAPPINGS_RESERVED) / MAPPINGS_PER_GUEST)
}
