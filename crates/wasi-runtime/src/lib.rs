//! Runs WASI preview 1 modules for the node agent with wasmtime: one shared engine, modules
//! compiled once per digest and cached in memory and on disk, each container in its own store
//! with only the argv, environment and directories its pod spec grants.

mod cache;

use kubelet::runtime::{
    ContainerRun, Exit, ModuleBytes, PrepareError, RunningContainer, Runtime, StartError,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{Config, Engine, InstancePre, Linker, Store};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// How often running guests yield to the scheduler (and can be stopped).
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Bytes a guest may have buffered towards its log before its writes wait.
const OUTPUT_BUDGET: usize = 64 * 1024;
/// Exit code for a trap, as the wasmtime CLI reports it (128 + SIGABRT).
const TRAP_EXIT_CODE: i32 = 134;

/// A module compiled and linked against WASI preview 1, ready to instantiate.
#[derive(Clone)]
pub struct Prepared {
    pre: InstancePre<WasiP1Ctx>,
}

/// The `wasm32-wasi` runtime.
pub struct WasiRuntime {
    engine: Engine,
    linker: Arc<Linker<WasiP1Ctx>>,
    cache: cache::ModuleCache,
    stop_ticker: Arc<std::sync::atomic::AtomicBool>,
}

/// The runtime could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("setting up wasmtime: {0}")]
pub struct SetupError(String);

impl WasiRuntime {
    /// A runtime caching compiled modules under `cache_dir`.
    pub fn new(cache_dir: PathBuf) -> Result<Self, SetupError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| SetupError(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |ctx| ctx)
            .map_err(|e| SetupError(e.to_string()))?;
        let stop_ticker = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The epoch ticker thread ends at the first tick after the runtime is dropped.
        {
            let engine = engine.clone();
            let stop = stop_ticker.clone();
            std::thread::Builder::new()
                .name("wasm-epoch".into())
                .spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| SetupError(e.to_string()))?;
        }
        let cache = cache::ModuleCache::new(engine.clone(), cache_dir);
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            cache,
            stop_ticker,
        })
    }
}

impl Drop for WasiRuntime {
    fn drop(&mut self) {
        self.stop_ticker
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Runtime for WasiRuntime {
    type Prepared = Prepared;

    fn arch(&self) -> &str {
        "wasm32-wasi"
    }

    fn version(&self) -> String {
        format!("wasmtime://{}", cache::WASMTIME_VERSION)
    }

    async fn prepare(&self, module: ModuleBytes) -> Result<Prepared, PrepareError> {
        let compiled = self.cache.get(&module).await?;
        let pre = self.linker.instantiate_pre(&compiled).map_err(|e| {
            PrepareError(format!(
                "the module needs imports this node does not provide: {e:#}"
            ))
        })?;
        Ok(Prepared { pre })
    }

    async fn start(
        &self,
        prepared: &Prepared,
        run: ContainerRun,
    ) -> Result<RunningContainer, StartError> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.args(&run.args).envs(&run.env);
        wasi.stdout(wasmtime_wasi::cli::AsyncStdoutStream::new(
            OUTPUT_BUDGET,
            run.stdout,
        ));
        wasi.stderr(wasmtime_wasi::cli::AsyncStdoutStream::new(
            OUTPUT_BUDGET,
            run.stderr,
        ));
        for mount in &run.mounts {
            let perms = if mount.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            wasi.preopened_dir(&mount.host_path, &mount.guest_path, perms)
                .map_err(|e| {
                    StartError(format!(
                        "opening {} for {}: {e}",
                        mount.host_path.display(),
                        mount.guest_path
                    ))
                })?;
        }
        let mut store = Store::new(&self.engine, wasi.build_p1());
        store.epoch_deadline_async_yield_and_update(1);
        let pre = prepared.pre.clone();
        let task = tokio::spawn(async move { run_to_exit(store, pre).await });
        Ok(RunningContainer::new(task))
    }
}

async fn run_to_exit(mut store: Store<WasiP1Ctx>, pre: InstancePre<WasiP1Ctx>) -> Exit {
    let outcome = async {
        let instance = pre.instantiate_async(&mut store).await?;
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        start.call_async(&mut store, ()).await
    }
    .await;
    match outcome {
        Ok(()) => Exit {
            code: 0,
            reason: None,
            message: None,
        },
        Err(e) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(exit) => Exit {
                code: exit.0,
                reason: None,
                message: None,
            },
            None => Exit {
                code: TRAP_EXIT_CODE,
                reason: None,
                message: Some(format!("{e:#}")),
            },
        },
    }
}
