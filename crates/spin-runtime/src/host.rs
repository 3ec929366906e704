//! Spin's host interfaces, added to a component linker for any store whose data can give a
//! component's [`SpinContext`] (as wasmtime-wasi's interfaces are added for any `WasiView`).
//! Variables: `fermyon:spin/variables@2.0.0`, Spin 1's `fermyon:spin/config` and
//! `wasi:config/store` (its 2024-09-27 draft, which Spin 3 exports). Key-value:
//! `fermyon:spin/key-value@2.0.0`.

use crate::app::Component;
use crate::key_value::{DEFAULT_STORE, KeyValueError, KeyValueStores};
use crate::variables::{Values, VariableError};
use std::sync::Arc;
use wasmtime::component::{ComponentType, Linker, Lower, Resource, ResourceTable, ResourceType};

/// What one component's instances may ask of Spin's host interfaces.
#[derive(Debug, Clone)]
pub struct SpinContext {
    component: Arc<Component>,
    values: Arc<Values>,
    key_value: Arc<KeyValueStores>,
}

impl SpinContext {
    /// The context of `component`, its variables taking `values`, its key-value stores kept
    /// in `key_value` (the container's).
    pub fn new(
        component: Arc<Component>,
        values: Arc<Values>,
        key_value: Arc<KeyValueStores>,
    ) -> Self {
        Self {
            component,
            values,
            key_value,
        }
    }

    fn variable(&self, name: &str) -> Result<String, VariableError> {
        self.values.get(&self.component, name)
    }

    /// The store `label`, if the component may open it and it exists.
    fn open_store(&self, label: &str) -> Result<OpenStore, KeyValueError> {
        if !self.component.key_value_stores.iter().any(|s| s == label) {
            return Err(KeyValueError::AccessDenied(label.to_owned()));
        }
        if label != DEFAULT_STORE {
            return Err(KeyValueError::NoSuchStore(label.to_owned()));
        }
        Ok(OpenStore {
            label: label.to_owned(),
            stores: self.key_value.clone(),
        })
    }
}

/// What Spin's host interfaces see of an instance's store data: its [`SpinContext`] (`None`:
/// the instance is not a Spin component, and every call is an error) and its resource table.
pub struct SpinView<'a> {
    /// The component's context.
    pub context: Option<&'a SpinContext>,
    /// The instance's resources (open key-value stores among them).
    pub table: &'a mut ResourceTable,
}

/// A key-value store a guest opened (`fermyon:spin/key-value`'s `store`).
pub struct OpenStore {
    label: String,
    stores: Arc<KeyValueStores>,
}

/// `fermyon:spin/variables@2.0.0`'s `error`.
#[derive(ComponentType, Lower)]
#[component(variant)]
enum VariablesError {
    #[component(name = "invalid-name")]
    InvalidName(String),
    #[component(name = "undefined")]
    Undefined(String),
    #[component(name = "provider")]
    Provider(String),
    #[component(name = "other")]
    Other(String),
}

/// Spin 1's `fermyon:spin/config` `error`.
#[derive(ComponentType, Lower)]
#[component(variant)]
enum ConfigError {
    #[component(name = "provider")]
    Provider(String),
    #[component(name = "invalid-key")]
    InvalidKey(String),
    #[component(name = "invalid-schema")]
    #[expect(
        dead_code,
        reason = "a case of the interface's type that this host never returns"
    )]
    InvalidSchema(String),
    #[component(name = "other")]
    Other(String),
}

/// `wasi:config/store`'s `error`.
#[derive(ComponentType, Lower)]
#[component(variant)]
enum StoreError {
    #[component(name = "upstream")]
    Upstream(String),
    #[component(name = "io")]
    #[expect(
        dead_code,
        reason = "a case of the interface's type that this host never returns"
    )]
    Io(String),
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

/// The interfaces, versions as components import them.
const VARIABLES: &str = "fermyon:spin/variables@2.0.0";
const CONFIG: &str = "fermyon:spin/config";
const WASI_CONFIG: &str = "wasi:config/store@0.2.0-draft-2024-09-27";
const KEY_VALUE: &str = "fermyon:spin/key-value@2.0.0";

/// Every interface name this module provides (for telling a missing one from one we have).
pub const INTERFACES: &[&str] = &[VARIABLES, CONFIG, WASI_CONFIG, KEY_VALUE];

/// Adds Spin's host interfaces to `linker`; `view` finds an instance's [`SpinView`].
pub fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> SpinView<'_>,
) -> wasmtime::Result<()> {
    add_variables(linker, view)?;
    add_key_value(linker, view)
}

/// What a call from an instance that is not a Spin component is told.
fn not_spin() -> String {
    "not a Spin component".to_owned()
}

fn add_variables<T: 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> SpinView<'_>,
) -> wasmtime::Result<()> {
    let missing = not_spin;
    linker
        .instance(VARIABLES)?
        .func_wrap("get", move |mut store, (name,): (String,)| {
            let result = match view(store.data_mut()).context {
                None => Err(VariablesError::Other(missing())),
                Some(spin) => spin.variable(&name).map_err(|e| match e {
                    VariableError::InvalidName(m) => VariablesError::InvalidName(m),
                    VariableError::Undefined(m) => VariablesError::Undefined(m),
                    other => VariablesError::Provider(other.to_string()),
                }),
            };
            Ok((result,))
        })?;
    linker
        .instance(CONFIG)?
        .func_wrap("get-config", move |mut store, (key,): (String,)| {
            let result = match view(store.data_mut()).context {
                None => Err(ConfigError::Other(missing())),
                Some(spin) => spin.variable(&key).map_err(|e| match e {
                    VariableError::InvalidName(m) => ConfigError::InvalidKey(m),
                    other => ConfigError::Provider(other.to_string()),
                }),
            };
            Ok((result,))
        })?;
    let mut store_interface = linker.instance(WASI_CONFIG)?;
    store_interface.func_wrap("get", move |mut store, (key,): (String,)| {
        let result = match view(store.data_mut()).context {
            None => Err(StoreError::Upstream(missing())),
            Some(spin) => match spin.variable(&key) {
                Ok(value) => Ok(Some(value)),
                Err(VariableError::Undefined(_) | VariableError::InvalidName(_)) => Ok(None),
                Err(other) => Err(StoreError::Upstream(other.to_string())),
            },
        };
        Ok((result,))
    })?;
    store_interface.func_wrap("get-all", move |mut store, (): ()| {
        let result = match view(store.data_mut()).context {
            None => Err(StoreError::Upstream(missing())),
            Some(spin) => spin
                .component
                .variables
                .keys()
                .map(|name| Ok((name.clone(), spin.variable(name)?)))
                .collect::<Result<Vec<(String, String)>, VariableError>>()
                .map_err(|e| StoreError::Upstream(e.to_string())),
        };
        Ok((result,))
    })?;
    Ok(())
}

/// `fermyon:spin/key-value@2.0.0`: the stores the component's manifest grants, kept in the
/// container's file.
fn add_key_value<T: 'static>(
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
        op: impl FnOnce(&KeyValueStores, &str) -> Result<R, KeyValueError>,
    ) -> wasmtime::Result<Result<R, KvError>> {
        let open = view.table.get(this)?;
        Ok(op(&open.stores, &open.label).map_err(KvError::from))
    }
    kv.func_wrap(
        "[method]store.get",
        move |mut store, (this, key): (Resource<OpenStore>, String)| {
            Ok((on(
                view(store.data_mut()),
                &this,
                |s: &KeyValueStores, label: &str| s.get(label, &key),
            )?,))
        },
    )?;
    kv.func_wrap(
        "[method]store.set",
        move |mut store, (this, key, value): (Resource<OpenStore>, String, Vec<u8>)| {
            Ok((on(
                view(store.data_mut()),
                &this,
                |s: &KeyValueStores, label: &str| s.set(label, &key, &value),
            )?,))
        },
    )?;
    kv.func_wrap(
        "[method]store.delete",
        move |mut store, (this, key): (Resource<OpenStore>, String)| {
            Ok((on(
                view(store.data_mut()),
                &this,
                |s: &KeyValueStores, label: &str| s.delete(label, &key),
            )?,))
        },
    )?;
    kv.func_wrap(
        "[method]store.exists",
        move |mut store, (this, key): (Resource<OpenStore>, String)| {
            Ok((on(
                view(store.data_mut()),
                &this,
                |s: &KeyValueStores, label: &str| s.exists(label, &key),
            )?,))
        },
    )?;
    kv.func_wrap(
        "[method]store.get-keys",
        move |mut store, (this,): (Resource<OpenStore>,)| {
            Ok((on(
                view(store.data_mut()),
                &this,
                |s: &KeyValueStores, label: &str| s.keys(label),
            )?,))
        },
    )?;
    Ok(())
}
