//! Key-value: `fermyon:spin/key-value@2.0.0`, the stores the component's manifest grants, kept
//! in the container's file.

use super::{SpinContext, SpinView, not_spin};
use crate::key_value::{Database, KeyValueError, KeyValueStores};
use std::sync::Arc;
use wasmtime::component::{ComponentType, Linker, Lower, Resource, ResourceType};

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

impl From<KeyValueError> for KvError {
    fn from(error: KeyValueError) -> Self {
        match error {
            KeyValueError::NoSuchStore(_) => Self::NoSuchStore,
            KeyValueError::AccessDenied(_) => Self::AccessDenied,
            other => Self::Other(other.to_string()),
        }
    }
}

/// Adds the key-value interfaces to `linker`.
pub(super) fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> SpinView<'_>,
) -> wasmtime::Result<()> {
    let mut kv = linker.instance(KEY_VALUE)?;
    kv.resource(
        "store",
        ResourceType::host::<OpenStore>(),
        move |mut store, rep| {
            view(store.data_mut())
                .table
                .delete(Resource::<OpenStore>::new_own(rep))?;
            Ok(())
        },
    )?;
    kv.func_wrap(
        "[static]store.open",
        move |mut store, (label,): (String,)| {
            let view = view(store.data_mut());
            let opened = match view.context {
                None => Err(KvError::Other(not_spin())),
                Some(spin) => spin.open_store(&label).map_err(KvError::from),
            };
            let result = match opened {
                Ok(open) => Ok(view.table.push(open)?),
                Err(e) => Err(e),
            };
            Ok((result,))
        },
    )?;
    /// Runs `op` on the open store `this`.
    fn on<R>(
        view: SpinView<'_>,
        this: &Resource<OpenStore>,
        op: impl FnOnce(&Database, &str) -> Result<R, KeyValueError>,
    ) -> wasmtime::Result<Result<R, KvError>> {
        Ok(view.table.get(this)?.run(op).map_err(KvError::from))
    }
    kv.func_wrap(
        "[method]store.get",
        move |mut store, (this, key): (Resource<OpenStore>, String)| {
            Ok((on(
                view(store.data_mut()),
                &this,
                |s: &Database, label: &str| s.get(label, &key),
            )?,))
        },
    )?;
    kv.func_wrap(
        "[method]store.set",
        move |mut store, (this, key, value): (Resource<OpenStore>, String, Vec<u8>)| {
            Ok((on(
                view(store.data_mut()),
                &this,
                |s: &Database, label: &str| s.set(label, &key, &value),
            )?,))
        },
    )?;
    kv.func_wrap(
        "[method]store.delete",
        move |mut store, (this, key): (Resource<OpenStore>, String)| {
            Ok((on(
                view(store.data_mut()),
                &this,
                |s: &Database, label: &str| s.delete(label, &key),
            )?,))
        },
    )?;
    kv.func_wrap(
        "[method]store.exists",
        move |mut store, (this, key): (Resource<OpenStore>, String)| {
            Ok((on(
                view(store.data_mut()),
                &this,
                |s: &Database, label: &str| s.exists(label, &key),
            )?,))
        },
    )?;
    kv.func_wrap(
        "[method]store.get-keys",
        move |mut store, (this,): (Resource<OpenStore>,)| {
            Ok((on(
                view(store.data_mut()),
                &this,
                |s: &Database, label: &str| s.keys(label),
            )?,))
        },
    )?;
    Ok(())
}
