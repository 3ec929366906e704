//! Runs waSCC actors for the node agent: wasm modules that speak waPC and carry signed wascap
//! claims. An actor does nothing by itself; the capability providers its claims grant call it
//! (`wascc:http_server` serves the pod's ports) and it calls them back (`wascc:logging`,
//! `wascc:keyvalue`, `wascc:blobstore`). One wasmtime engine with nothing WASI in it; compiled
//! actors cached by digest; one instance per container, in a store with the pod's limits.

#![warn(missing_docs)]

pub mod capabilities;
pub mod claims;
pub mod config;
#[cfg(any(test, fuzzing))]
pub mod fuzzing;

mod actor;
mod wapc;

use capabilities::{Delivery, Host};
use claims::Claims;
use config::ActorConfig;
use kubelet::runtime::{
    ContainerRun, ModuleBytes, PrepareError, RunningContainer, Runtime, StartError,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;
use wapc::ActorState;
use wasm_host::descriptors::DescriptorBudget;
use wasm_host::failures::FailureReport;
use wasm_host::limits::GuestLimits;
use wasm_host::{SetupError, TickingEngine, cache};
use wasmtime::{ExternType, InstancePre, Linker, Module, ValType};

/// Calls that may wait for an actor busy with another.
const PENDING_CALLS: usize = 1024;

/// An actor verified, compiled and linked, ready to instantiate.
#[derive(Clone)]
pub struct Prepared {
    pre: InstancePre<ActorState>,
    claims: Arc<Claims>,
}

/// The `wasm32-wascc` runtime.
pub struct WasccRuntime {
    engine: TickingEngine,
    linker: Linker<ActorState>,
    cache: cache::ModuleCache,
    /// Bounds on the clients of an actor's `http_server` ports.
    serving: kubelet::runtime::ServeLimits,
    /// The file descriptors actors' clients may hold, and each actor's share.
    descriptors: Arc<DescriptorBudget>,
}

impl WasccRuntime {
    /// A runtime caching compiled actors under `cache_dir`, their `http_server` ports served
    /// within `serving` and `descriptors`.
    pub fn new(
        cache_dir: PathBuf,
        serving: kubelet::runtime::ServeLimits,
        descriptors: kubelet::runtime::DescriptorLimits,
    ) -> Result<Self, SetupError> {
        let engine = TickingEngine::new(wasm_host::capacity::dense_config())?;
        let mut linker = Linker::new(engine.engine());
        wapc::add_to_linker(&mut linker)?;
        let cache = cache::ModuleCache::new(engine.engine().clone(), cache_dir);
        Ok(Self {
            engine,
            linker,
            cache,
            serving,
            descriptors: DescriptorBudget::new(descriptors),
        })
    }
}

impl Runtime for WasccRuntime {
    type Prepared = Prepared;

    fn arch(&self) -> &str {
        "wasm32-wascc"
    }

    fn version(&self) -> String {
        format!("wapc+wasmtime://{}", cache::WASMTIME_VERSION)
    }

    fn capacity(&self) -> Option<usize> {
        wasm_host::capacity::guests()
    }

    fn forget(&self, digest: &str) {
        self.cache.forget(digest);
    }

    async fn prepare(&self, module: ModuleBytes) -> Result<Prepared, PrepareError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims =
            claims::verify(&module.bytes, now).map_err(|e| PrepareError::refused(e.to_string()))?;
        let compiled = match self.cache.get(&module).await? {
            cache::Compiled::Module(compiled) => compiled,
            cache::Compiled::Component(_) => {
                return Err(PrepareError::not_runnable(
                    "the image holds a WebAssembly component; a waSCC actor is a core module exporting __guest_call (run components on a wasm32-wasi node)",
                ));
            }
        };
        check_exports(&compiled)?;
        let pre = self.linker.instantiate_pre(&compiled).map_err(|e| {
            PrepareError::not_runnable(format!(
                "the actor imports what a waSCC host does not provide (only the waPC functions of module `wapc`): {e:#}"
            ))
        })?;
        tracing::debug!(actor = %claims.name, issuer = %claims.issuer, "actor claims verified");
        Ok(Prepared {
            pre,
            claims: Arc::new(claims),
        })
    }

    async fn start(
        &self,
        prepared: &Prepared,
        run: ContainerRun,
    ) -> Result<RunningContainer, StartError> {
        let config = ActorConfig::new(&prepared.claims, &run)?;
        let limits = GuestLimits::new(run.limits, run.usage.clone())
            .map_err(|e| StartError::node("reserving the actor's memory", e))?;
        let (sender, receiver) = mpsc::channel::<Delivery>(PENDING_CALLS);
        let server = if config.http_ports.is_empty() {
            None
        } else {
            let addrs: Vec<SocketAddr> = config
                .http_ports
                .iter()
                .map(|port| SocketAddr::new(run.network.listen_ip, *port))
                .collect();
            // An actor makes no connections of its own: only its served ports need to be in
            // its pod's network.
            let netns = wasm_host::ports::pod_netns(&run.network)?;
            let descriptors = self
                .descriptors
                .reserve()
                .map_err(|e| StartError::Full(e.to_string()))?;
            let listeners = wasm_host::ports::bind(&addrs, netns.as_deref())?;
            let stop = run.stop.child_token();
            let task = tokio::spawn(capabilities::http_server::serve(
                listeners,
                self.serving,
                descriptors,
                sender.clone(),
                FailureReport::new(run.stderr.another(), run.warnings.clone()),
                stop.clone(),
            ));
            Some(actor::Server {
                task: AbortOnDropHandle::new(task),
                stop,
            })
        };
        let host = Host::new(
            prepared.claims.name.clone(),
            config.granted,
            (run.stdout, run.stderr),
            run.warnings,
            config.blobstore,
            sender,
        );
        let stop = run.stop.clone();
        let state = ActorState::new(limits, host);
        let store = wasm_host::store::limited_store(self.engine.engine(), state);
        let task = tokio::spawn(actor::run(
            store,
            prepared.pre.clone(),
            receiver,
            server,
            stop,
        ));
        Ok(RunningContainer::graceful(task))
    }
}

/// A waPC guest exports `__guest_call(op_len, req_len) -> i32` and its memory.
fn check_exports(module: &Module) -> Result<(), PrepareError> {
    let guest_call = module.get_export("__guest_call");
    let callable = matches!(&guest_call, Some(ExternType::Func(f))
        if f.params().map(|p| matches!(p, ValType::I32)).eq([true, true])
            && f.results().map(|r| matches!(r, ValType::I32)).eq([true]));
    if !callable {
        return Err(PrepareError::not_runnable(
            "the module is not a waPC actor: it does not export `__guest_call(i32, i32) -> i32` (build it with a waPC guest library such as wapc-guest or wascc-actor)",
        ));
    }
    if !matches!(module.get_export("memory"), Some(ExternType::Memory(_))) {
        return Err(PrepareError::not_runnable(
            "the module is not a waPC actor: it exports no memory named `memory`",
        ));
    }
    Ok(())
}
