//! Variables: `fermyon:spin/variables@2.0.0`, Spin 1's `fermyon:spin/config` and
//! `wasi:config/store` (its 2024-09-27 draft, which Spin 3 exports).

use super::{SpinView, not_spin};
use crate::variables::VariableError;
use wasmtime::component::{ComponentType, Linker, Lower};

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
pub(super) const VARIABLES: &str = "fermyon:spin/variables@2.0.0";
pub(super) const CONFIG: &str = "fermyon:spin/config";
pub(super) const WASI_CONFIG: &str = "wasi:config/store@0.2.0-draft-2024-09-27";

/// Adds the variables interfaces to `linker`.
pub(super) fn add_to_linker<T: 'static>(
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
