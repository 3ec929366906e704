//! Compiled modules by digest: in memory, then on disk (precompiled artifacts, valid only for
//! this wasmtime build and configuration), then compiled with Cranelift.

use kubelet::runtime::{ModuleBytes, PrepareError};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Mutex;
use wasmtime::{Engine, Module};

/// The wasmtime version this runtime is built with.
pub const WASMTIME_VERSION: &str = "48";

/// The compiled-module cache.
pub struct ModuleCache {
    engine: Engine,
    dir: PathBuf,
    memory: Mutex<HashMap<String, Module>>,
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

    /// The compiled module for `module`.
    pub async fn get(&self, module: &ModuleBytes) -> Result<Module, PrepareError> {
        if let Some(m) = self
            .memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&module.digest)
        {
            return Ok(m.clone());
        }
        check_magic(&module.bytes)?;
        let path = self.artifact_path(&module.digest);
        let engine = self.engine.clone();
        let bytes = module.bytes.clone();
        let compiled = tokio::task::spawn_blocking(move || -> Result<Module, PrepareError> {
            if path.is_file() {
                // SAFETY: the artifact was written by `Module::serialize` of this same engine
                // configuration (the file name carries its compatibility hash) into the node's
                // own data dir; wasmtime checks the header and version again on load.
                if let Ok(m) = unsafe { Module::deserialize_file(&engine, &path) } {
                    return Ok(m);
                }
            }
            let m = Module::new(&engine, &bytes).map_err(|e| PrepareError(format!("the module is not valid WebAssembly: {e:#}")))?;
            if let Ok(artifact) = m.serialize()
                && let Err(e) = kubelet::images::write_atomic(&path, &artifact)
            {
                tracing::warn!(error = %e, "caching the compiled module failed; it will be compiled again next time");
            }
            Ok(m)
        })
        .await
        .map_err(|e| PrepareError(format!("compiling the module failed: {e}")))??;
        self.memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(module.digest.clone(), compiled.clone());
        Ok(compiled)
    }
}

fn check_magic(bytes: &[u8]) -> Result<(), PrepareError> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Ok(()),
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => Err(PrepareError(
            "the image holds a WebAssembly component (WASI preview 2); this node runs WASI preview 1 modules".into(),
        )),
        _ => Err(PrepareError("the image's content is not a WebAssembly module (it does not start with the \\0asm header)".into())),
    }
}
