//! `wasi:keyvalue` as Spin 3 exports it (its `0.2.0-draft2`): `store` (buckets are the stores
//! the component's manifest grants), `atomics` (increment, compare-and-swap) and `batch`, over
//! the same stores as `fermyon:spin/key-value`.

use super::SpinView;
use super::key_value::{OpenStore, StoreHandle, add_store, on};
use crate::key_value::{Database, KeyValueError};
use wasmtime::component::{ComponentType, Linker, Lower, Resource, ResourceType};

/// The interfaces.
pub(super) const STORE: &str = "wasi:keyvalue/store@0.2.0-draft2";
pub(super) const ATOMICS: &str = "wasi:keyvalue/atomics@0.2.0-draft2";
pub(super) const BATCH: &str = "wasi:keyvalue/batch@0.2.0-draft2";

/// An open bucket (`wasi:keyvalue/store`'s `bucket`).
pub struct Bucket(OpenStore);

/// A compare-and-swap in progress (`wasi:keyvalue/atomics`'s `cas`): the value its key held
/// when it began.
pub struct Cas {
    store: OpenStore,
    key: String,
    seen: Option<Vec<u8>>,
}

/// `wasi:keyvalue/store`'s `error`.
#[derive(ComponentType, Lower)]
#[component(variant)]
enum Error {
    #[component(name = "no-such-store")]
    NoSuchStore,
    #[component(name = "access-denied")]
    AccessDenied,
    #[component(name = "other")]
    Other(String),
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Self::Other(message)
    }
}

impl StoreHandle for Bucket {
    fn open(&self) -> &OpenStore {
        &self.0
    }

    fn new(store: OpenStore) -> Self {
        Self(store)
    }
}

impl From<KeyValueError> for Error {
    fn from(error: KeyValueError) -> Self {
        match error {
            KeyValueError::NoSuchStore(_) => Self::NoSuchStore,
            KeyValueError::AccessDenied(_) => Self::AccessDenied,
            other => Self::Other(other.to_string()),
        }
    }
}

/// `wasi:keyvalue/store`'s `key-response`: every key at once, so no cursor.
#[derive(ComponentType, Lower)]
#[component(record)]
struct KeyResponse {
    keys: Vec<String>,
    cursor: Option<String>,
}

/// `wasi:keyvalue/atomics`'s `cas-error`.
#[derive(ComponentType, Lower)]
#[component(variant)]
enum CasError {
    #[component(name = "store-error")]
    StoreError(Error),
    #[component(name = "cas-failed")]
    CasFailed(Resource<Cas>),
}

/// Adds `wasi:keyvalue`'s `store`, `atomics` and `batch` to `linker`.
pub(super) fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> SpinView<'_>,
) -> wasmtime::Result<()> {
    let mut store = linker.instance(STORE)?;
    add_store::<T, Bucket, Error>(&mut store, ("bucket", "open"), view)?;
    store.func_wrap(
        "[method]bucket.list-keys",
        move |mut cx, (this, _cursor): (Resource<Bucket>, Option<String>)| {
            Ok((on::<_, Error, _>(
                view(cx.data_mut()),
                &this,
                |s: &Database, label: &str| {
                    Ok(KeyResponse {
                        keys: s.keys(label)?,
                        cursor: None,
                    })
                },
            )?,))
        },
    )?;

    let mut atomics = linker.instance(ATOMICS)?;
    atomics.resource("cas", ResourceType::host::<Cas>(), move |mut cx, rep| {
        view(cx.data_mut())
            .table
            .delete(Resource::<Cas>::new_own(rep))?;
        Ok(())
    })?;
    atomics.func_wrap(
        "increment",
        move |mut cx, (bucket, key, delta): (Resource<Bucket>, String, i64)| {
            Ok((on::<_, Error, _>(
                view(cx.data_mut()),
                &bucket,
                |s: &Database, label: &str| s.increment(label, &key, delta),
            )?,))
        },
    )?;
    atomics.func_wrap(
        "[static]cas.new",
        move |mut cx, (bucket, key): (Resource<Bucket>, String)| {
            let view = view(cx.data_mut());
            let Bucket(open) = view.table.get(&bucket)?;
            let store = open.clone();
            let result = match store.run(|db: &Database, label: &str| db.get(label, &key)) {
                Ok(seen) => Ok(view.table.push(Cas { store, key, seen })?),
                Err(e) => Err(Error::from(e)),
            };
            Ok((result,))
        },
    )?;
    atomics.func_wrap(
        "[method]cas.current",
        move |mut cx, (this,): (Resource<Cas>,)| {
            let cas = view(cx.data_mut()).table.get(&this)?;
            Ok((cas
                .store
                .run(|db: &Database, label: &str| db.get(label, &cas.key))
                .map_err(Error::from),))
        },
    )?;
    atomics.func_wrap(
        "swap",
        move |mut cx, (this, value): (Resource<Cas>, Vec<u8>)| {
            let view = view(cx.data_mut());
            let cas = view.table.get(&this)?;
            let swapped = cas.store.run(|db: &Database, label: &str| {
                db.compare_and_swap(label, &cas.key, cas.seen.as_deref(), &value)
            });
            let result = match swapped {
                Ok(true) => {
                    view.table.delete(this)?;
                    Ok(())
                }
                // The caller gets its cas back, to try again.
                Ok(false) => Err(CasError::CasFailed(this)),
                Err(e) => {
                    view.table.delete(this)?;
                    Err(CasError::StoreError(e.into()))
                }
            };
            Ok((result,))
        },
    )?;

    let mut batch = linker.instance(BATCH)?;
    batch.func_wrap(
        "get-many",
        move |mut cx, (bucket, keys): (Resource<Bucket>, Vec<String>)| {
            Ok((on::<_, Error, _>(
                view(cx.data_mut()),
                &bucket,
                |s: &Database, label: &str| {
                    keys.into_iter()
                        .map(|key| {
                            let value = s.get(label, &key)?;
                            Ok((key, value))
                        })
                        .collect::<Result<Vec<(String, Option<Vec<u8>>)>, KeyValueError>>()
                },
            )?,))
        },
    )?;
    batch.func_wrap(
        "set-many",
        move |mut cx, (bucket, entries): (Resource<Bucket>, Vec<(String, Vec<u8>)>)| {
            Ok((on::<_, Error, _>(
                view(cx.data_mut()),
                &bucket,
                |s: &Database, label: &str| {
                    entries
                        .iter()
                        .try_for_each(|(key, value)| s.set(label, key, value))
                },
            )?,))
        },
    )?;
    batch.func_wrap(
        "delete-many",
        move |mut cx, (bucket, keys): (Resource<Bucket>, Vec<String>)| {
            Ok((on::<_, Error, _>(
                view(cx.data_mut()),
                &bucket,
                |s: &Database, label: &str| keys.iter().try_for_each(|key| s.delete(label, key)),
            )?,))
        },
    )?;
    Ok(())
}
