//! Spin's SDKs build core `wasm32-wasip1` modules whose `component-type` custom sections
//! describe the component they stand for; Spin turns them into components with the WASI
//! preview 1 adapter before running them, and so do we (once per module: the caller caches
//! the result with its compiled code). Components pass through unchanged.

use std::borrow::Cow;
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
    WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};
use wasmparser::{Parser, Payload};

/// A module that cannot be made a component.
#[derive(Debug, thiserror::Error)]
pub enum ComponentizeError {
    /// The bytes are not WebAssembly.
    #[error("the component's source is not WebAssembly: {0}")]
    NotWasm(#[source] wasmparser::BinaryReaderError),
    /// A module neither built by a component-aware SDK nor a command.
    #[error(
        "the module has no component-type section (it was built with Spin 1's SDK or without one) and is not a WASI command: rebuild it with spin-sdk 2 or later, or as a wasm32-wasip2 component"
    )]
    Unadaptable,
    /// The encoder refused the module.
    #[error("the module cannot be made a component with the WASI preview 1 adapter: {0:#}")]
    Encode(#[source] anyhow::Error),
}

/// The kinds of core modules this node adapts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Module {
    /// Built by wit-bindgen 0.5 or later (Spin SDK 2+): a reactor exporting what its
    /// `component-type` section says.
    Bindgen,
    /// A WASI preview 1 command (`_start`), as WAGI components are.
    Command,
}

/// `bytes` as a component: unchanged when it is one, adapted when it is a core module Spin
/// adapts.
pub fn componentize(bytes: &[u8]) -> Result<Cow<'_, [u8]>, ComponentizeError> {
    let adapter = match classify(bytes)? {
        None => return Ok(Cow::Borrowed(bytes)),
        Some(Module::Bindgen) => WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        Some(Module::Command) => WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
    };
    wit_component::ComponentEncoder::default()
        .validate(true)
        .module(bytes)
        .and_then(|encoder| encoder.adapter(WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, adapter))
        .and_then(|mut encoder| encoder.encode())
        .map(Cow::Owned)
        .map_err(ComponentizeError::Encode)
}

/// `None` for a component, else the kind of core module.
fn classify(bytes: &[u8]) -> Result<Option<Module>, ComponentizeError> {
    if Parser::is_component(bytes) {
        return Ok(None);
    }
    let mut has_start = false;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(ComponentizeError::NotWasm)? {
            Payload::CustomSection(section) if section.name().starts_with("component-type") => {
                return Ok(Some(Module::Bindgen));
            }
            Payload::ExportSection(exports) => {
                for export in exports {
                    has_start |= export.map_err(ComponentizeError::NotWasm)?.name == "_start";
                }
            }
            _ => {}
        }
    }
    if has_start {
        Ok(Some(Module::Command))
    } else {
        Err(ComponentizeError::Unadaptable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spin_sdk_modules_become_http_components() {
        let module = std::fs::read(testkit::fixtures::wasm_module("spin_hello").unwrap()).unwrap();
        assert_eq!(classify(&module).unwrap(), Some(Module::Bindgen));
        let component = componentize(&module).unwrap();
        assert!(Parser::is_component(&component));
        let text = String::from_utf8_lossy(&component);
        assert!(text.contains("wasi:http/incoming-handler@0.2.0"));
        assert!(text.contains("fermyon:spin/variables@2.0.0"));
        // Components pass through untouched.
        assert!(matches!(
            componentize(&component).unwrap(),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn commands_get_the_command_adapter_and_other_modules_a_reason() {
        let command = std::fs::read(testkit::fixtures::wasm_module("hello-wasm").unwrap()).unwrap();
        assert_eq!(classify(&command).unwrap(), Some(Module::Command));
        assert!(Parser::is_component(&componentize(&command).unwrap()));
        // A module exporting nothing Spin runs.
        let bare = b"\0asm\x01\0\0\0";
        assert!(matches!(
            componentize(bare),
            Err(ComponentizeError::Unadaptable)
        ));
        assert!(matches!(
            componentize(b"not wasm"),
            Err(ComponentizeError::NotWasm(_))
        ));
    }
}
