//! The secret an agent proves itself with to its runtime workers. It lives beside their sockets
//! (`<data-dir>/workers/agent.key`, mode 0600), made by whichever of agent or worker comes
//! first; a connection whose greeting does not carry it is refused and closed, so a stray
//! client of a worker's socket can neither displace the agent nor drain the guests.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The key's file in the workers' directory.
pub const KEY_FILE: &str = "agent.key";

/// The agent's key (hex of 32 random bytes); empty in a greeting that carries none.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AgentKey(String);

impl std::fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentKey(..)")
    }
}

impl AgentKey {
    /// The key in `dir`, made there (0600) if there is none yet.
    pub fn load_or_create(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join(KEY_FILE);
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let made = Self(hex::encode(bytes));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut file) => {
                file.write_all(made.0.as_bytes())?;
                file.sync_all()?;
                Ok(made)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let stored = std::fs::read_to_string(&path)?;
                let stored = stored.trim();
                if stored.len() != 64 || !stored.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "{} does not hold a runtime worker key; remove it (the workers then need a restart: drain the node first)",
                            path.display()
                        ),
                    ));
                }
                Ok(Self(stored.to_string()))
            }
            Err(e) => Err(e),
        }
    }

    /// Whether `offered` is this key, compared in constant time; an empty key matches nothing.
    pub fn admits(&self, offered: &AgentKey) -> bool {
        let (ours, theirs) = (self.0.as_bytes(), offered.0.as_bytes());
        !ours.is_empty()
            && ours.len() == theirs.len()
            && ours
                .iter()
                .zip(theirs)
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_kept_private_and_admits_only_itself() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = AgentKey::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = AgentKey::load_or_create(dir.path()).unwrap();
        assert!(key.admits(&again));
        assert!(!key.admits(&AgentKey::default()));
        assert!(!AgentKey::default().admits(&AgentKey::default()));
        assert!(!key.admits(&AgentKey("0".repeat(64))));
        assert_eq!(format!("{key:?}"), "AgentKey(..)");
        std::fs::write(dir.path().join(KEY_FILE), "not a key").unwrap();
        assert!(AgentKey::load_or_create(dir.path()).is_err());
    }
}
