//! What the machine is: cores, memory, disk, kernel and OS, read fresh for the node status.

use std::path::Path;

/// Facts about this machine for the Node's capacity and nodeInfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Logical CPUs.
    pub cpus: usize,
    /// Total memory in KiB.
    pub memory_kib: u64,
    /// Size of the filesystem holding the data dir, in bytes.
    pub storage_bytes: u64,
    /// Bytes still free on it.
    pub storage_free_bytes: u64,
    /// `uname -r`.
    pub kernel: String,
    /// `PRETTY_NAME` from /etc/os-release.
    pub os_image: String,
    /// /etc/machine-id.
    pub machine_id: String,
    /// The kernel's boot id.
    pub boot_id: String,
    /// MemAvailable in KiB.
    pub memory_available_kib: u64,
}

/// Memory as /proc/meminfo says now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// MemTotal in KiB.
    pub total_kib: u64,
    /// MemAvailable in KiB.
    pub available_kib: u64,
}

impl Memory {
    /// Reads /proc/meminfo (zeros where it cannot be read).
    pub fn read() -> Self {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let field = |key: &str| {
            meminfo
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Self {
            total_kib: field("MemTotal:"),
            available_kib: field("MemAvailable:"),
        }
    }
}

impl Machine {
    /// Reads the machine; `data_dir` decides which filesystem counts as ephemeral storage.
    pub fn read(data_dir: &Path) -> Self {
        let memory = Memory::read();
        let (storage_bytes, storage_free_bytes) = rustix::fs::statvfs(data_dir)
            .map(|s| (s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize))
            .unwrap_or((0, 0));
        let text = |path: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let os_release = text("/etc/os-release");
        let os_image = os_release
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| "Linux".into());
        Self {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_kib: memory.total_kib,
            memory_available_kib: memory.available_kib,
            storage_bytes,
            storage_free_bytes,
            kernel: rustix::system::uname()
                .release()
                .to_string_lossy()
                .into_owned(),
            os_image,
            machine_id: text("/etc/machine-id"),
            boot_id: text("/proc/sys/kernel/random/boot_id"),
        }
    }
}
