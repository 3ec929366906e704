//! Compiled modules and components by digest: in memory, then on disk (precompiled artifacts,
//! valid only for this wasmtime build and configuration), then compiled with Cranelift. Pods
//! asking for the same digest at once share one compilation.

use kubelet::runtime::{ModuleBytes, PrepareError};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;
use wasmtime::component::Component;
use wasmtime::{Engine, Module, Precompiled};

/// A compiled guest: a core module (WASI preview 1) or a component (WASI preview 2).
#[derive(Clone)]
pub enum Compiled {
    /// A core WebAssembly module.
    Module(Module),
    /// A WebAssembly component.
    Component(Component),
}

impl Compiled {
    fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        match self {
            Self::Module(m) => m.serialize(),
            Self::Component(c) => c.serialize(),
        }
    }
}

/// What the bytes hold, from the WebAssembly header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Module,
    Component,
}

/// The wasmtime version this runtime is built with.
pub const WASMTIME_VERSION: &str = "48";

/// The compiled-module cache.
pub struct ModuleCache {
    engine: Engine,
    dir: PathBuf,
    /// One cell per digest: the first caller compiles, the others wait for its result; a
    /// failure leaves the cell empty for the next caller to try again.
    memory: Mutex<HashMap<String, Arc<OnceCell<Compiled>>>>,
}

impl ModuleCache {
    /// A cache storing artifacts under `dir`.
    pub fn new(engine: Engine, dir: PathBuf) -> Self {
        Self {
            engine,
            dir,
            memory: Mutex::default(),
        }
    }

    fn artifact_path(&self, digest: &str) -> PathBuf {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        self.dir.join(format!(
            "{}-{:016x}.cwasm",
            digest.replace(':', "-"),
            hasher.finish()
        ))
    }

    /// Drops the compiled module `digest` from memory and disk.
    pub fn forget(&self, digest: &str) {
        self.memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(digest);
        let prefix = format!("{}-", digest.replace(':', "-"));
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// The compiled module or component for `module`.
    pub async fn get(&self, module: &ModuleBytes) -> Result<Compiled, PrepareError> {
        let cell = self
            .memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(module.digest.clone())
            .or_default()
            .clone();
        cell.get_or_try_init(|| self.compile(module)).await.cloned()
    }

    /// Loads `module`'s artifact from disk, or compiles it and writes the artifact.
    async fn compile(&self, module: &ModuleBytes) -> Result<Compiled, PrepareError> {
        let kind = kind(&module.bytes)?;
        let path = self.artifact_path(&module.digest);
        let engine = self.engine.clone();
        let bytes = module.bytes.clone();
        tokio::task::spawn_blocking(move || -> Result<Compiled, PrepareError> {
            if let Some(cached) = load(&engine, &path, kind) {
                return Ok(cached);
            }
            let compiled = match kind {
                Kind::Module => Module::new(&engine, &bytes).map(Compiled::Module),
                Kind::Component => Component::new(&engine, &bytes).map(Compiled::Component),
            }
            .map_err(|e| compile_failure(kind, &e))?;
            if let Ok(artifact) = compiled.serialize()
                && let Err(e) = kubelet::images::write_atomic(&path, &artifact)
            {
                tracing::warn!(error = %e, "caching the compiled module failed; it will be compiled again next time");
            }
            Ok(compiled)
        })
        .await
        .map_err(|e| PrepareError::refused(format!("compiling the module failed: {e}")))?
    }
}

/// A precompiled artifact from an earlier run, when it is there and of the expected kind.
fn load(engine: &Engine, path: &std::path::Path, kind: Kind) -> Option<Compiled> {
    let found = Engine::detect_precompiled_file(path).ok().flatten()?;
    // SAFETY: the artifact was written by `serialize` of this same engine configuration (the
    // file name carries its compatibility hash) into the node's own data dir; wasmtime checks
    // the header and version again on load.
    unsafe {
        match (kind, found) {
            (Kind::Module, Precompiled::Module) => Module::deserialize_file(engine, path)
                .ok()
                .map(Compiled::Module),
            (Kind::Component, Precompiled::Component) => Component::deserialize_file(engine, path)
                .ok()
                .map(Compiled::Component),
            _ => None,
        }
    }
}

fn kind(bytes: &[u8]) -> Result<Kind, PrepareError> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Ok(Kind::Module),
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => Ok(Kind::Component),
        _ => Err(PrepareError::not_runnable(
            "the image's content is not WebAssembly (it does not start with the \\0asm header)",
        )),
    }
}

/// Why `kind` could not be compiled, for the container's status: a feature this node's engine
/// does not have (named as the validator names it), or bytes that are not valid.
fn compile_failure(kind: Kind, error: &wasmtime::Error) -> PrepareError {
    let detail = format!("{error:#}");
    let needs_feature = detail.contains("feature") || detail.contains("is not enabled");
    let what = match kind {
        Kind::Module => "module",
        Kind::Component => "component",
    };
    PrepareError::not_runnable(if !needs_feature {
        match kind {
            Kind::Module => format!("the module is not valid WebAssembly: {detail}"),
            Kind::Component => format!("the image is not a valid WebAssembly component: {detail}"),
        }
    } else if kind == Kind::Component && detail.contains("async") {
        format!(
            "the image is a WebAssembly component that uses the component model's async ABI (WASI 0.3), which this node does not run yet: {detail}"
        )
    } else {
        format!(
            "the image is a WebAssembly {what} that needs a feature this node does not run: {detail}"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_component_needing_a_feature_the_node_lacks_is_named_a_component_and_the_feature() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ModuleCache::new(Engine::default(), dir.path().into());
        // The smallest component of the async ABI: one `backpressure.inc`.
        let mut canon = wasm_encoder::CanonicalFunctionSection::new();
        canon.backpressure_inc();
        let mut component = wasm_encoder::Component::new();
        component.section(&canon);
        let bytes = component.finish();
        let refused = cache
            .get(&ModuleBytes {
                digest: "sha256:async".into(),
                bytes: Arc::from(bytes),
            })
            .await
            .err()
            .expect("refused");
        assert_eq!(refused.kind, kubelet::runtime::PrepareFailure::NotRunnable);
        assert!(
            refused.message.contains("WebAssembly component"),
            "{}",
            refused.message
        );
        assert!(refused.message.contains("WASI 0.3"), "{}", refused.message);
        assert!(refused.message.contains("async"), "{}", refused.message);
        assert!(
            !refused.message.contains("not valid"),
            "{}",
            refused.message
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pods_asking_at_once_share_one_compilation() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(ModuleCache::new(Engine::default(), dir.path().into()));
        let module = ModuleBytes {
            digest: "sha256:empty".into(),
            bytes: Arc::from(&b"\0asm\x01\0\0\0"[..]),
        };
        let asks: Vec<_> = (0..8)
            .map(|_| {
                let (cache, module) = (cache.clone(), module.clone());
                tokio::spawn(async move { cache.get(&module).await })
            })
            .collect();
        let mut compiled = Vec::new();
        for ask in asks {
            let Ok(Compiled::Module(m)) = ask.await.unwrap() else {
                panic!("a module");
            };
            compiled.push(m);
        }
        assert!(compiled.iter().all(|m| Module::same(m, &compiled[0])));

        let garbage = ModuleBytes {
            digest: "sha256:garbage".into(),
            bytes: Arc::from(&b"\0asm\x01\0\0\0\xff"[..]),
        };
        assert!(cache.get(&garbage).await.is_err());
        assert!(
            cache.get(&garbage).await.is_err(),
            "a failure is not cached"
        );
    }
}
