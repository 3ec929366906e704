//! Spin's key-value stores, kept as Spin keeps them: in SQLite databases, in Spin's own table
//! (`spin_key_value`: store, key, value), so a file from Spin can be used here and the other way
//! round. `default` is a file in the directory the node keeps for the container across its
//! restarts, unless the runtime configuration puts it elsewhere; the runtime configuration's
//! stores are files it names or in memory. Each database is opened at its first use; each store
//! holds at most a configured number of bytes of keys and values together.

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// The only store that exists without a runtime configuration (as on Spin).
pub const DEFAULT_STORE: &str = "default";
/// The file the stores are kept in, in the container's state directory.
pub const FILE_NAME: &str = "key_value.db";
/// How long a write waits for another connection to the same file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A key-value operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyValueError {
    /// The store is not one this node has.
    #[error(
        "there is no key-value store {0:?} (only \"default\" exists without a runtime configuration)"
    )]
    NoSuchStore(String),
    /// The component's manifest does not grant it the store.
    #[error(
        "the component may not open key-value store {0:?} (its key_value_stores do not name it)"
    )]
    AccessDenied(String),
    /// The write would take the store past its size.
    #[error(
        "key-value store {store:?} would hold {would} bytes of keys and values, more than its {limit} (--max-key-value-store-size)"
    )]
    Full {
        /// The store.
        store: String,
        /// What it would hold.
        would: u64,
        /// What it may hold.
        limit: u64,
    },
    /// An increment found a value that is not a number as Spin keeps one.
    #[error("key {key:?} holds {length} bytes, not a number (eight little-endian bytes)")]
    NotANumber {
        /// The key.
        key: String,
        /// How long its value is.
        length: usize,
    },
    /// An increment would overflow.
    #[error("incrementing key {key:?} would overflow a signed 64-bit number")]
    Overflow {
        /// The key.
        key: String,
    },
    /// The file could not be read or written.
    #[error("key-value store file {path}: {message}")]
    Storage {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
}

/// One container's key-value stores, by name.
#[derive(Debug)]
pub struct KeyValueStores {
    databases: HashMap<String, Database>,
}

/// Where a store's database is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file (made, with its directory, when it is not there).
    File(PathBuf),
    /// In memory, for the life of the container.
    Memory,
}

/// The SQLite database one store is kept in.
#[derive(Debug)]
pub struct Database {
    location: Location,
    limit: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The open file; `None` until the first use.
    db: Option<Connection>,
    /// Bytes of keys and values each store holds, counted at its first use.
    sizes: HashMap<String, u64>,
}

impl KeyValueStores {
    /// `default` in a file in `dir` and the `configured` ones (which may place `default`
    /// elsewhere), each holding at most `limit` bytes of keys and values.
    pub fn new(dir: PathBuf, limit: u64, configured: Vec<(String, Location)>) -> Self {
        let mut databases = HashMap::from([(
            DEFAULT_STORE.to_owned(),
            Database::new(Location::File(dir.join(FILE_NAME)), limit),
        )]);
        for (name, location) in configured {
            databases.insert(name, Database::new(location, limit));
        }
        Self { databases }
    }

    /// The database store `name` is kept in.
    pub fn database(&self, name: &str) -> Result<&Database, KeyValueError> {
        self.databases
            .get(name)
            .ok_or_else(|| KeyValueError::NoSuchStore(name.to_owned()))
    }
}

impl Database {
    fn new(location: Location, limit: u64) -> Self {
        Self {
            location,
            limit,
            state: Mutex::default(),
        }
    }

    /// Runs `work` with the open file and the store sizes.
    fn with<R>(
        &self,
        work: impl FnOnce(&Connection, &mut HashMap<String, u64>) -> rusqlite::Result<R>,
    ) -> Result<R, KeyValueError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = &mut *state;
        if state.db.is_none() {
            state.db = Some(self.open()?);
        }
        let db = state.db.as_ref().expect("opened above");
        work(db, &mut state.sizes).map_err(|e| self.storage(e))
    }

    /// Opens the database (a file made with its directory, and Spin's table, when new).
    fn open(&self) -> Result<Connection, KeyValueError> {
        let db = match &self.location {
            Location::File(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| self.storage(e))?;
                }
                // A symbolic link a guest left at the file's place is not followed.
                Connection::open_with_flags(
                    path,
                    OpenFlags::default() | OpenFlags::SQLITE_OPEN_NOFOLLOW,
                )
            }
            Location::Memory => Connection::open_in_memory(),
        }
        .map_err(|e| self.storage(e))?;
        db.busy_timeout(BUSY_TIMEOUT)
            .and_then(|()| {
                db.execute_batch(
                    "CREATE TABLE IF NOT EXISTS spin_key_value (
                        store TEXT NOT NULL,
                        key   TEXT NOT NULL,
                        value BLOB NOT NULL,
                        PRIMARY KEY (store, key)
                    );",
                )
            })
            .map_err(|e| self.storage(e))?;
        Ok(db)
    }

    fn storage(&self, error: impl std::fmt::Display) -> KeyValueError {
        KeyValueError::Storage {
            path: match &self.location {
                Location::File(path) => path.display().to_string(),
                Location::Memory => "(in memory)".to_owned(),
            },
            message: error.to_string(),
        }
    }

    /// The value of `key` in `store`.
    pub fn get(&self, store: &str, key: &str) -> Result<Option<Vec<u8>>, KeyValueError> {
        self.with(|db, _| read(db, store, key))
    }

    /// Sets `key` in `store` to `value`, unless the store would then hold more than its limit.
    pub fn set(&self, store: &str, key: &str, value: &[u8]) -> Result<(), KeyValueError> {
        self.with(|db, sizes| self.put(db, sizes, store, key, value))?
    }

    /// Adds `delta` to the number `key` holds in `store` (0 when absent; kept as Spin keeps it,
    /// eight little-endian bytes) and returns the sum.
    pub fn increment(&self, store: &str, key: &str, delta: i64) -> Result<i64, KeyValueError> {
        self.with(|db, sizes| {
            let current = match read(db, store, key)? {
                None => 0,
                Some(bytes) => match <[u8; 8]>::try_from(bytes.as_slice()) {
                    Ok(number) => i64::from_le_bytes(number),
                    Err(_) => {
                        return Ok(Err(KeyValueError::NotANumber {
                            key: key.to_owned(),
                            length: bytes.len(),
                        }));
                    }
                },
            };
            let Some(sum) = current.checked_add(delta) else {
                return Ok(Err(KeyValueError::Overflow {
                    key: key.to_owned(),
                }));
            };
            Ok(self
                .put(db, sizes, store, key, &sum.to_le_bytes())?
                .map(|()| sum))
        })?
    }

    /// Sets `key` in `store` to `value` if it still holds `expected` (`None`: absent);
    /// whether it did.
    pub fn compare_and_swap(
        &self,
        store: &str,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<bool, KeyValueError> {
        self.with(|db, sizes| {
            if read(db, store, key)?.as_deref() != expected {
                return Ok(Ok(false));
            }
            Ok(self.put(db, sizes, store, key, value)?.map(|()| true))
        })?
    }

    /// Writes `key` in `store` within the store's limit, the file already locked.
    fn put(
        &self,
        db: &Connection,
        sizes: &mut HashMap<String, u64>,
        store: &str,
        key: &str,
        value: &[u8],
    ) -> rusqlite::Result<Result<(), KeyValueError>> {
        let held = size_of(db, sizes, store)?;
        let old = db
            .query_row(
                "SELECT length(value) FROM spin_key_value WHERE store = ?1 AND key = ?2",
                params![store, key],
                |row| row.get::<_, i64>(0),
            )
            .optional()?
            .map(bytes);
        let entry = (key.len() + value.len()) as u64;
        let would = match old {
            Some(old) => held.saturating_sub(key.len() as u64 + old),
            None => held,
        }
        .saturating_add(entry);
        if would > self.limit {
            return Ok(Err(KeyValueError::Full {
                store: store.to_owned(),
                would,
                limit: self.limit,
            }));
        }
        db.execute(
            "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
            params![store, key, value],
        )?;
        sizes.insert(store.to_owned(), would);
        Ok(Ok(()))
    }

    /// Deletes `key` from `store` (nothing when it is not there).
    pub fn delete(&self, store: &str, key: &str) -> Result<(), KeyValueError> {
        self.with(|db, sizes| {
            let held = size_of(db, sizes, store)?;
            let old = db
                .query_row(
                    "DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2 RETURNING length(value)",
                    params![store, key],
                    |row| row.get::<_, i64>(0),
                )
                .optional()?
                .map(bytes);
            if let Some(old) = old {
                sizes.insert(
                    store.to_owned(),
                    held.saturating_sub(key.len() as u64 + old),
                );
            }
            Ok(())
        })
    }

    /// Whether `store` has `key`.
    pub fn exists(&self, store: &str, key: &str) -> Result<bool, KeyValueError> {
        self.with(|db, _| {
            db.query_row(
                "SELECT EXISTS (SELECT 1 FROM spin_key_value WHERE store = ?1 AND key = ?2)",
                params![store, key],
                |row| row.get(0),
            )
        })
    }

    /// Every key of `store` (as many as its size allows).
    pub fn keys(&self, store: &str) -> Result<Vec<String>, KeyValueError> {
        self.with(|db, _| {
            let mut query = db.prepare("SELECT key FROM spin_key_value WHERE store = ?1")?;
            let keys = query
                .query_map(params![store], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(keys)
        })
    }
}

/// The value of `key` in `store`.
fn read(db: &Connection, store: &str, key: &str) -> rusqlite::Result<Option<Vec<u8>>> {
    db.query_row(
        "SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2",
        params![store, key],
        |row| row.get(0),
    )
    .optional()
}

/// Bytes of keys and values `store` holds: counted in the file at its first use, then kept.
fn size_of(
    db: &Connection,
    sizes: &mut HashMap<String, u64>,
    store: &str,
) -> rusqlite::Result<u64> {
    if let Some(size) = sizes.get(store) {
        return Ok(*size);
    }
    let size = bytes(db.query_row(
        "SELECT COALESCE(SUM(length(CAST(key AS BLOB)) + length(value)), 0)
         FROM spin_key_value WHERE store = ?1",
        params![store],
        |row| row.get::<_, i64>(0),
    )?);
    sizes.insert(store.to_owned(), size);
    Ok(size)
}

/// A length SQLite counted (never negative).
fn bytes(length: i64) -> u64 {
    u64::try_from(length).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_kept_in_the_file_and_survive_a_new_opening() {
        let dir = tempfile::tempdir().unwrap();
        let all = KeyValueStores::new(dir.path().join("state"), 1 << 20, Vec::new());
        let stores = all.database("default").unwrap();
        assert_eq!(stores.get("default", "count").unwrap(), None);
        stores.set("default", "count", b"1").unwrap();
        stores.set("default", "count", b"2").unwrap();
        stores.set("other", "count", b"9").unwrap();
        assert_eq!(stores.get("default", "count").unwrap(), Some(b"2".to_vec()));
        assert!(stores.exists("default", "count").unwrap());
        assert_eq!(stores.keys("default").unwrap(), vec!["count".to_owned()]);
        drop(all);
        // A container started again finds what the last one stored.
        let all = KeyValueStores::new(dir.path().join("state"), 1 << 20, Vec::new());
        let stores = all.database("default").unwrap();
        assert_eq!(stores.get("default", "count").unwrap(), Some(b"2".to_vec()));
        stores.delete("default", "count").unwrap();
        stores.delete("default", "never").unwrap();
        assert!(!stores.exists("default", "count").unwrap());
        assert_eq!(stores.get("other", "count").unwrap(), Some(b"9".to_vec()));
    }

    #[test]
    fn configured_stores_are_kept_where_they_say_and_others_do_not_exist() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("volume/kv.db");
        let all = KeyValueStores::new(
            dir.path().join("state"),
            1 << 10,
            vec![
                ("default".into(), Location::File(elsewhere.clone())),
                ("cache".into(), Location::Memory),
            ],
        );
        all.database("default")
            .unwrap()
            .set("default", "k", b"v")
            .unwrap();
        all.database("cache")
            .unwrap()
            .set("cache", "k", b"m")
            .unwrap();
        assert!(elsewhere.is_file());
        assert!(!dir.path().join("state").join(FILE_NAME).exists());
        assert_eq!(
            all.database("cache").unwrap().get("cache", "k").unwrap(),
            Some(b"m".to_vec())
        );
        assert_eq!(
            all.database("nowhere").unwrap_err(),
            KeyValueError::NoSuchStore("nowhere".into())
        );
    }

    #[test]
    fn increments_and_swaps_keep_numbers_as_spin_does() {
        let dir = tempfile::tempdir().unwrap();
        let all = KeyValueStores::new(dir.path().to_path_buf(), 1 << 10, Vec::new());
        let stores = all.database("default").unwrap();
        assert_eq!(stores.increment("default", "n", 5).unwrap(), 5);
        assert_eq!(stores.increment("default", "n", -2).unwrap(), 3);
        assert_eq!(
            stores.get("default", "n").unwrap(),
            Some(3i64.to_le_bytes().to_vec())
        );
        stores.set("default", "text", b"abc").unwrap();
        assert!(matches!(
            stores.increment("default", "text", 1),
            Err(KeyValueError::NotANumber { length: 3, .. })
        ));
        stores
            .set("default", "max", &i64::MAX.to_le_bytes())
            .unwrap();
        assert!(matches!(
            stores.increment("default", "max", 1),
            Err(KeyValueError::Overflow { .. })
        ));
        assert!(
            !stores
                .compare_and_swap("default", "text", Some(b"xyz"), b"new")
                .unwrap()
        );
        assert!(
            stores
                .compare_and_swap("default", "text", Some(b"abc"), b"new")
                .unwrap()
        );
        assert!(
            stores
                .compare_and_swap("default", "absent", None, b"1")
                .unwrap()
        );
        assert_eq!(
            stores.get("default", "text").unwrap(),
            Some(b"new".to_vec())
        );
    }

    #[test]
    fn a_store_holds_at_most_its_limit_and_what_is_freed_counts() {
        let dir = tempfile::tempdir().unwrap();
        let all = KeyValueStores::new(dir.path().to_path_buf(), 10, Vec::new());
        let stores = all.database("default").unwrap();
        stores.set("default", "a", b"1234").unwrap(); // 5 bytes
        stores.set("default", "b", b"1234").unwrap(); // 10 bytes
        assert_eq!(
            stores.set("default", "c", b"1"),
            Err(KeyValueError::Full {
                store: "default".into(),
                would: 12,
                limit: 10
            })
        );
        // Replacing a value counts the difference; deleting frees it.
        stores.set("default", "a", b"12").unwrap();
        stores.set("default", "c", b"1").unwrap();
        stores.delete("default", "b").unwrap();
        stores.set("default", "d", b"123").unwrap();
        // The limit is per store; a new opening counts what the file holds.
        stores.set("other", "x", b"123456789").unwrap();
        drop(all);
        let all = KeyValueStores::new(dir.path().to_path_buf(), 10, Vec::new());
        let stores = all.database("default").unwrap();
        assert!(matches!(
            stores.set("default", "e", b"12"),
            Err(KeyValueError::Full { would: 12, .. })
        ));
    }
}
