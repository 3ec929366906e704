//! Key-value: `fermyon:spin/key-value@2.0.0`, the stores the component's manifest grants, kept
//! in the container's file.

use super::{SpinContext, SpinView, not_spin};
use crate::key_value::{Database, KeyValueError, KeyValueStores};
use std::sync::Arc;
use wasmtime::component::{ComponentType, Linker, LinkerInstance, Lower, Resource, ResourceType};

/// `fermyon:spin/key-value@2.0.0`.
pub(super) const KEY_VALUE: &str = "fermyon:spin/key-value@2.0.0";

impl SpinContext {
    /// The store `label`, if the component may open it and it exists.
    pub(super) fn open_store(&self, label: &str) -> Result<OpenStore, KeyValueError> {
        if !self.component.key_value_stores.iter().any(|s| s == label) {
            return Err(KeyValueError::AccessDenied(label.to_owned()));
        }
        self.key_value.database(label)?;
        Ok(OpenStore {
            label: label.to_owned(),
            stores: self.key_value.clone(),
        })
    }
}

/// A key-value store a guest opened (`fermyon:spin/key-value`'s `store`).
#[derive(Clone)]
pub struct OpenStore {
    label: String,
    stores: Arc<KeyValueStores>,
}

impl OpenStore {
    /// Runs `op` on the store's database, with the store's name.
    pub(super) fn run<R>(
        &self,
        op: impl FnOnce(&Database, &str) -> Result<R, KeyValueError>,
    ) -> Result<R, KeyValueError> {
        op(self.stores.database(&self.label)?, &self.label)
    }
}

/// `fermyon:spin/key-value@2.0.0`'s `error`.
#[derive(ComponentType, Lower)]
#[component(variant)]
enum KvError {
    #[component(name = "store-table-full")]
    #[expect(
        dead_code,
        reason = "a case of the interface's type that this host never returns: open stores are bounded by the instance's handles"
    )]
    StoreTableFull,
    #[component(name = "no-such-store")]
    NoSuchStore,
    #[component(name = "access-denied")]
    AccessDenied,
    #[component(name = "other")]
    Other(String),
}

impl From<String> for KvError {
    fn from(message: String) -> Self {
        Self::Other(message)
    }
}

impl From<KeyValueError> for KvError {
    fn from(error: KeyValueError) -> Self {
        match error {
            KeyValueError::NoSuchStore(_) => Self::NoSuchStore,
            KeyValueError::AccessDenied(_) => Self::AccessDenied,
            other => Self::Other(other.to_string()),
        }
    }
}

/// A guest's handle to an open store: `fermyon:spin/key-value`'s `store`, `wasi:keyvalue`'s
/// `bucket`.
pub(super) trait StoreHandle: Send + Sync + 'static {
    /// The store it opened.
    fn open(&self) -> &OpenStore;
    /// A handle to `store`.
    fn new(store: OpenStore) -> Self;
}

impl StoreHandle for OpenStore {
    fn open(&self) -> &OpenStore {
        self
    }

    fn new(store: OpenStore) -> Self {
        store
    }
}

/// Runs `op` on the store behind handle `this`, its errors as the interface's `E`.
pub(super) fn on<H: StoreHandle, E: From<KeyValueError>, R>(
    view: SpinView<'_>,
    this: &Resource<H>,
    op: impl FnOnce(&Database, &str) -> Result<R, KeyValueError>,
) -> wasmtime::Result<Result<R, E>> {
    Ok(view.table.get(this)?.open().run(op).map_err(E::from))
}

/// Defines the handle resource `name` (of type `H`), its opening function `open` and its
/// methods `get`, `set`, `delete` and `exists`, which both interfaces have alike, answering
/// errors as `E`.
pub(super) fn add_store<T: 'static, H: StoreHandle, E>(
    instance: &mut LinkerInstance<'_, T>,
    (name, open): (&str, &str),
    view: fn(&mut T) -> SpinView<'_>,
) -> wasmtime::Result<()>
where
    E: From<KeyValueError> + From<String> + ComponentType + Lower + Send + Sync + 'static,
{
    instance.resource(name, ResourceType::host::<H>(), move |mut store, rep| {
        view(store.data_mut())
            .table
            .delete(Resource::<H>::new_own(rep))?;
        Ok(())
    })?;
    instance.func_wrap(open, move |mut store, (label,): (String,)| {
        let view = view(store.data_mut());
        let opened = match view.context {
            None => Err(E::from(not_spin())),
            Some(spin) => spin.open_store(&label).map_err(E::from),
        };
        let result = match opened {
            Ok(open) => Ok(view.table.push(H::new(open))?),
            Err(e) => Err(e),
        };
        Ok((result,))
    })?;
    instance.func_wrap(
        &format!("[method]{name}.get"),
        move |mut store, (this, key): (Resource<H>, String)| {
            Ok((on::<H, E, _>(
                view(store.data_mut()),
                &this,
                |db, label| db.get(label, &key),
            )?,))
        },
    )?;
    instance.func_wrap(
        &format!("[method]{name}.set"),
        move |mut store, (this, key, value): (Resource<H>, String, Vec<u8>)| {
            Ok((on::<H, E, _>(
                view(store.data_mut()),
                &this,
                |db, label| db.set(label, &key, &value),
            )?,))
        },
    )?;
    instance.func_wrap(
        &format!("[method]{name}.delete"),
        move |mut store, (this, key): (Resource<H>, String)| {
            Ok((on::<H, E, _>(
                view(store.data_mut()),
                &this,
                |db, label| db.delete(label, &key),
            )?,))
        },
    )?;
    instance.func_wrap(
        &format!("[method]{name}.exists"),
        move |mut store, (this, key): (Resource<H>, String)| {
            Ok((on::<H, E, _>(
                view(store.data_mut()),
                &this,
                |db, label| db.exists(label, &key),
            )?,))
        },
    )?;
    Ok(())
}

/// Adds `fermyon:spin/key-value@2.0.0` to `linker`.
pub(super) fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> SpinView<'_>,
) -> wasmtime::Result<()> {
    let mut kv = linker.instance(KEY_VALUE)?;
    add_store::<T, OpenStore, KvError>(&mut kv, ("store", "[static]store.open"), view)?;
    kv.func_wrap(
        "[method]store.get-keys",
        move |mut store, (this,): (Resource<OpenStore>,)| {
            Ok((on::<_, KvError, _>(
                view(store.data_mut()),
                &this,
                |db, label| db.keys(label),
            )?,))
        },
    )?;
    Ok(())
}
