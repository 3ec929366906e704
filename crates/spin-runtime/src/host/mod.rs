//! Spin's host interfaces, added to a component linker for any store whose data can give a
//! component's [`SpinContext`] (as wasmtime-wasi's interfaces are added for any `WasiView`).
//! Variables (`variables`): `fermyon:spin/variables@2.0.0`, Spin 1's `fermyon:spin/config`
//! and `wasi:config/store`. Key-value: `fermyon:spin/key-value@2.0.0` (`key_value`) and
//! `wasi:keyvalue`'s draft (`wasi_keyvalue`), over the same stores.

mod key_value;
mod variables;
mod wasi_keyvalue;

use crate::app::Component;
use crate::key_value::KeyValueStores;
use crate::variables::{Values, VariableError};
use std::sync::Arc;
use wasmtime::component::{Linker, ResourceTable};

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
}

/// What Spin's host interfaces see of an instance's store data: its [`SpinContext`] (`None`:
/// the instance is not a Spin component, and every call is an error) and its resource table.
pub struct SpinView<'a> {
    /// The component's context.
    pub context: Option<&'a SpinContext>,
    /// The instance's resources (open key-value stores among them).
    pub table: &'a mut ResourceTable,
}

/// Every interface name this module provides (for telling a missing one from one we have).
pub const INTERFACES: &[&str] = &[
    variables::VARIABLES,
    variables::CONFIG,
    variables::WASI_CONFIG,
    key_value::KEY_VALUE,
    wasi_keyvalue::STORE,
    wasi_keyvalue::ATOMICS,
    wasi_keyvalue::BATCH,
];

/// Adds Spin's host interfaces to `linker`; `view` finds an instance's [`SpinView`].
pub fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> SpinView<'_>,
) -> wasmtime::Result<()> {
    variables::add_to_linker(linker, view)?;
    key_value::add_to_linker(linker, view)?;
    wasi_keyvalue::add_to_linker(linker, view)
}

/// What a call from an instance that is not a Spin component is told.
fn not_spin() -> String {
    "not a Spin component".to_owned()
}
