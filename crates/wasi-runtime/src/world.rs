//! Which kind of component an image holds, read from its top-level exports before it is
//! compiled: an HTTP handler is compiled only for the pooling engine that serves it, anything
//! else only for the engine of long-lived guests, so no component is compiled twice.

use wasmparser::{Parser, Payload};

/// What a component's top-level exports say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    /// It exports `wasi:cli/run`: a command (even if it also handles HTTP).
    Command,
    /// It exports `wasi:http/incoming-handler` and no `wasi:cli/run`.
    Http,
    /// Neither, or the bytes could not be read (compiling them says what is wrong).
    Other,
}

/// Whether `name` is `interface` at any version (`wasi:cli/run@0.2.3`).
fn names(name: &str, interface: &str) -> bool {
    name.strip_prefix(interface)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('@'))
}

/// The world of the component `bytes`, from the export section of the outermost component
/// (nested modules and components are skipped over).
pub fn of(bytes: &[u8]) -> World {
    let mut depth = 0usize;
    let mut http = false;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload {
            Err(_) => return World::Other,
            Ok(Payload::ModuleSection { .. } | Payload::ComponentSection { .. }) => depth += 1,
            Ok(Payload::End(_)) if depth == 0 => break,
            Ok(Payload::End(_)) => depth -= 1,
            Ok(Payload::ComponentExportSection(exports)) if depth == 0 => {
                for export in exports {
                    let Ok(export) = export else {
                        return World::Other;
                    };
                    if names(export.name.name, "wasi:cli/run") {
                        return World::Command;
                    }
                    http |= names(export.name.name, "wasi:http/incoming-handler");
                }
            }
            Ok(_) => {}
        }
    }
    if http { World::Http } else { World::Other }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_components_are_told_apart() {
        let http = std::fs::read(testkit::fixtures::wasm_component("http_probe").unwrap()).unwrap();
        assert_eq!(of(&http), World::Http);
        let command =
            std::fs::read(testkit::fixtures::wasm_component("wasi-probe").unwrap()).unwrap();
        assert_eq!(of(&command), World::Command);
    }

    #[test]
    fn unreadable_bytes_are_other() {
        assert_eq!(of(b""), World::Other);
        assert_eq!(of(b"\0asm\x0d\0\x01\0\x07\xff"), World::Other);
        assert!(names("wasi:cli/run@0.2.0", "wasi:cli/run"));
        assert!(!names("wasi:cli/runner", "wasi:cli/run"));
    }
}
