//! Spin's host interfaces, added to a component linker for any store whose data can give a
//! component's [`SpinContext`] (as wasmtime-wasi's interfaces are added for any `WasiView`).
//! Variables today: `fermyon:spin/variables@2.0.0`, Spin 1's `fermyon:spin/config` and
//! `wasi:config/store` (its 2024-09-27 draft, which Spin 3 exports).

use crate::app::Component;
use crate::variables::{Values, VariableError};
use std::sync::Arc;
use wasmtime::component::{ComponentType, Linker, Lower};

/// What one component's instances may ask of Spin's host interfaces.
#[derive(Debug, Clone)]
pub struct SpinContext {
    component: Arc<Component>,
    values: Arc<Values>,
}

impl SpinContext {
    /// The context of `component`, its variables taking `values`.
    pub fn new(component: Arc<Component>, values: Arc<Values>) -> Self {
        Self { component, values }
    }

    fn variable(&self, name: &str) -> Result<String, VariableError> {
        self.values.get(&self.component, name)
    }
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

/// The interfaces, versions as components import them.
const VARIABLES: &str = "fermyon:spin/variables@2.0.0";
const CONFIG: &str = "fermyon:spin/config";
const WASI_CONFIG: &str = "wasi:config/store@0.2.0-draft-2024-09-27";

/// Every interface name this module provides (for telling a missing one from one we have).
pub const INTERFACES: &[&str] = &[VARIABLES, CONFIG, WASI_CONFIG];

/// Adds Spin's host interfaces to `linker`; `context` finds an instance's [`SpinContext`]
/// (`None`: the instance is not a Spin component, and every call is an error).
pub fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    context: fn(&T) -> Option<&SpinContext>,
) -> wasmtime::Result<()> {
    let missing = || "not a Spin component".to_owned();
    linker
        .instance(VARIABLES)?
        .func_wrap("get", move |store, (name,): (String,)| {
            let result = match context(store.data()) {
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
        .func_wrap("get-config", move |store, (key,): (String,)| {
            let result = match context(store.data()) {
                None => Err(ConfigError::Other(missing())),
                Some(spin) => spin.variable(&key).map_err(|e| match e {
                    VariableError::InvalidName(m) => ConfigError::InvalidKey(m),
                    other => ConfigError::Provider(other.to_string()),
                }),
            };
            Ok((result,))
        })?;
    let mut store_interface = linker.instance(WASI_CONFIG)?;
    store_interface.func_wrap("get", move |store, (key,): (String,)| {
        let result = match context(store.data()) {
            None => Err(StoreError::Upstream(missing())),
            Some(spin) => match spin.variable(&key) {
                Ok(value) => Ok(Some(value)),
                Err(VariableError::Undefined(_) | VariableError::InvalidName(_)) => Ok(None),
                Err(other) => Err(StoreError::Upstream(other.to_string())),
            },
        };
        Ok((result,))
    })?;
    store_interface.func_wrap("get-all", move |store, (): ()| {
        let result = match context(store.data()) {
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
