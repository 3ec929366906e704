//! Spin's runtime configuration file, as spin-operator gives it to an app: a Secret mounted at
//! `/runtime-config.toml`, read by the host, never by guests. What it configures here: the key-value
//! stores (`[key_value_store.<name>]`, Spin's own SQLite type). Its other tables (SQLite
//! databases, LLM, variables providers, outbound networking) configure interfaces this node does
//! not have yet and are not read.

use serde::Deserialize;
use std::collections::BTreeMap;

/// Where spin-operator mounts the file, and containerd-shim-spin reads it.
pub const PATH: &str = "/runtime-config.toml";
/// The most the file may be.
pub const MAX_BYTES: u64 = 1 << 20;

/// A runtime configuration file could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeConfigError {
    /// It is not Spin's runtime configuration.
    #[error("the runtime configuration ({PATH}) is not valid: {0}")]
    Invalid(String),
    /// A store of a type this node does not have.
    #[error(
        "the runtime configuration ({PATH}) gives key-value store {name:?} type {kind:?}; this node has only Spin's own SQLite stores (type \"spin\")"
    )]
    UnsupportedStore {
        /// The store.
        name: String,
        /// Its type.
        kind: String,
    },
}

/// What the runtime configuration says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// The key-value stores it defines, by name.
    pub key_value_stores: BTreeMap<String, StoreLocation>,
}

/// Where a key-value store is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// In a SQLite file at this path of the container's filesystem.
    File(String),
    /// In memory, for the life of the container (a `spin` store without a path).
    Memory,
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    key_value_store: BTreeMap<String, StoreTable>,
}

#[derive(Deserialize)]
struct StoreTable {
    #[serde(rename = "type")]
    kind: String,
    path: Option<String>,
}

impl RuntimeConfig {
    /// Reads the file's `text`.
    pub fn parse(text: &str) -> Result<Self, RuntimeConfigError> {
        let file: File =
            toml::from_str(text).map_err(|e| RuntimeConfigError::Invalid(e.to_string()))?;
        let key_value_stores = file
            .key_value_store
            .into_iter()
            .map(|(name, table)| {
                if table.kind != "spin" {
                    return Err(RuntimeConfigError::UnsupportedStore {
                        name,
                        kind: table.kind,
                    });
                }
                let location = match table.path {
                    // Relative to the file's directory, the container's root.
                    Some(path) => StoreLocation::File(format!("/{}", path.trim_start_matches('/'))),
                    None => StoreLocation::Memory,
                };
                Ok((name, location))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { key_value_stores })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spin_stores_are_read_and_other_tables_left_alone() {
        let config = RuntimeConfig::parse(
            r#"
[key_value_store.default]
type = "spin"
path = "/data/kv.db"

[key_value_store.cache]
type = "spin"

[key_value_store.relative]
type = "spin"
path = "data/other.db"

[sqlite_database.default]
type = "spin"
path = "/data/sqlite.db"
"#,
        )
        .unwrap();
        assert_eq!(
            config.key_value_stores,
            BTreeMap::from([
                ("default".into(), StoreLocation::File("/data/kv.db".into())),
                ("cache".into(), StoreLocation::Memory),
                (
                    "relative".into(),
                    StoreLocation::File("/data/other.db".into())
                ),
            ])
        );
    }

    #[test]
    fn a_store_of_another_type_or_a_bad_file_is_named() {
        assert_eq!(
            RuntimeConfig::parse(
                "[key_value_store.shared]\ntype = \"redis\"\nurl = \"redis://x\"\n"
            ),
            Err(RuntimeConfigError::UnsupportedStore {
                name: "shared".into(),
                kind: "redis".into()
            })
        );
        assert!(matches!(
            RuntimeConfig::parse("[key_value_store.x]\npath = 3\n"),
            Err(RuntimeConfigError::Invalid(_))
        ));
    }
}
