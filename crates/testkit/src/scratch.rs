//! Scratch directories named after the test process that owns them.
//!
//! A test binary's shared registry and API server live in statics, which Rust never drops, so
//! their directories outlive the process. Each directory's name carries its owner's pid, and
//! making one first removes those whose owner has exited.

use std::path::Path;
use tempfile::TempDir;

/// Makes `<tmp>/<prefix>-<pid>-XXXXXX` after removing this prefix's directories of dead
/// processes.
pub fn tempdir(prefix: &str) -> std::io::Result<TempDir> {
    remove_orphans(prefix);
    tempfile::Builder::new()
        .prefix(&format!("{prefix}-{}-", std::process::id()))
        .tempdir()
}

/// Removes `<tmp>/<prefix>-<pid>-*` whose process no longer exists.
fn remove_orphans(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix)?.strip_prefix('-'))
            .and_then(|rest| rest.split('-').next()?.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{owner}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphans_of_dead_processes_are_removed_and_live_ones_kept() {
        let prefix = "krustlet-scratch-test";
        // pid_max is at most 2^22 on Linux, so this owner cannot be alive.
        let orphan = std::env::temp_dir().join(format!("{prefix}-4194305-abc"));
        std::fs::create_dir_all(&orphan).unwrap();
        let first = tempdir(prefix).unwrap();
        assert!(!orphan.exists(), "the dead process's directory is removed");
        let second = tempdir(prefix).unwrap();
        assert!(first.path().exists(), "a live process's directory is kept");
        assert_ne!(first.path(), second.path());
    }
}
