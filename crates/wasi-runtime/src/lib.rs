//! Runs WebAssembly for the node agent with wasmtime: WASI preview 1 modules, WASI preview 2
//! command components (`wasi:cli/run`) and wasi-http components
//! (`wasi:http/incoming-handler`, served on the pod's ports). One shared engine; guests
//! compiled once per digest and cached in memory and on disk; each guest in its own store with
//! only the argv, environment, directories, destinations and resources its pod spec grants.

#![warn(missing_docs)]

mod dns;
mod guest;
mod http;
pub use http::RequestDeadlines;
mod open_files;
mod outbound;
mod outgoing;
mod shares;
pub use shares::PoolFull;
mod spin;
mod spin_stores;
mod world;

use guest::{ComponentState, GuestSetup, ModuleState};
use kubelet::netns::InNetns;
use kubelet::runtime::{
    ContainerRun, Exit, ModuleBytes, PrepareError, RunningContainer, Runtime, StartError,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use wasm_host::descriptors::DescriptorBudget;
use wasm_host::{SetupError, TickingEngine, cache};
use wasmtime::component::Component;
use wasmtime::{
    Config, InstanceAllocationStrategy, InstancePre, Linker, PoolingAllocationConfig, Store,
};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// The port a wasi-http component is served on when its container declares none.
const DEFAULT_HTTP_PORT: u16 = 8080;

/// A guest compiled and linked, ready to instantiate.
#[derive(Clone)]
pub struct Prepared(Guest);

#[derive(Clone)]
enum Guest {
    /// A WASI preview 1 command module.
    Module(InstancePre<ModuleState>),
    /// A component exporting `wasi:cli/run`.
    Command(CommandPre<ComponentState>),
    /// A component exporting `wasi:http/incoming-handler`, and what each of its requests
    /// takes of the instance pool.
    Http(ProxyPre<ComponentState>, shares::RequestCost),
    /// A Spin app.
    Spin(Arc<spin::SpinApp>),
}

/// The `wasm32-wasi` runtime.
pub struct WasiRuntime {
    engine: TickingEngine,
    modules: Linker<ModuleState>,
    components: wasmtime::component::Linker<ComponentState>,
    cache: cache::ModuleCache,
    http: HttpEngine,
    /// What one container may hold of what the runtime shares.
    bounds: Bounds,
    /// The file descriptors containers may hold, and each one's share.
    descriptors: Arc<DescriptorBudget>,
    /// The HTTP instance pool's slots, shared among the wasi-http containers.
    pool: std::sync::Arc<shares::InstancePool>,
    /// Spin apps prepared, by their bundle's digest.
    spin_apps: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Arc<spin::SpinApp>>>>>,
    /// Where Spin apps' components' files are written.
    spin_files: PathBuf,
}

/// What one container may hold of what its runtime shares.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Slots of the pooling allocator of wasi-http components (`--http-pool-instances`): of
    /// component instances, core instances, memories, tables and stacks each. A request takes
    /// one of each per core module of its component.
    pub pool_instances: u32,
    /// HTTP requests of one wasi-http container whose instances are reserved for it
    /// (`--http-guaranteed-requests-per-container`): a container is started only when the
    /// pool can hold them beside every other container's.
    pub guaranteed_requests: u32,
    /// HTTP requests in flight to one wasi-http container; more are answered 503.
    pub requests_per_container: usize,
    /// WASI handles (open files, sockets, streams...) one guest instance may hold at once.
    pub handles_per_instance: usize,
    /// Name lookups one container's guests may have asking name servers at once.
    pub lookups_per_container: usize,
    /// Connections one container's outgoing HTTP requests may hold open at once.
    pub outgoing_connections_per_container: usize,
    /// Bytes of a pooled memory or table a finished request's instance leaves resident
    /// (`--http-instance-keep-resident`). The pages it wrote (found with the PAGEMAP_SCAN
    /// ioctl, Linux 6.7 and later) are reset in place up to this much, so the next request in
    /// the slot takes no page faults and the reset no `madvise` (whose TLB shootdowns cost the
    /// node a fifth of its CPU under load, BENCHMARKS.md run F); beyond it, and on older
    /// kernels, pages are given back to the kernel.
    pub keep_resident: usize,
    /// Bounds on the clients of a wasi-http container's ports.
    pub serving: kubelet::runtime::ServeLimits,
    /// How long a request's instance may run, in all and once it has answered, and the CPU
    /// time it may use.
    pub request_deadlines: http::RequestDeadlines,
    /// What the runtime's containers may hold of its file descriptors.
    pub descriptors: kubelet::runtime::DescriptorLimits,
    /// Bytes of keys and values each of a Spin app's key-value stores may hold.
    pub key_value_store_size: u64,
}

/// wasi-http components run on an engine of their own with the pooling allocator, as
/// `wasmtime serve` runs them: an instance per request from pre-allocated slots, no mapping
/// and unmapping of memory per request. Long-lived guests (modules, commands) stay on the
/// on-demand engine, which holds any number of them.
struct HttpEngine {
    engine: TickingEngine,
    linker: wasmtime::component::Linker<ComponentState>,
    cache: cache::ModuleCache,
}

/// A component linker with WASI preview 2 and wasi-http.
fn component_linker(
    engine: &wasmtime::Engine,
) -> wasmtime::Result<wasmtime::component::Linker<ComponentState>> {
    let mut linker = wasmtime::component::Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    dns::add_to_linker(&mut linker)?;
    open_files::add_to_component_linker(&mut linker)?;
    spin_runtime::host::add_to_linker(&mut linker, ComponentState::spin)?;
    Ok(linker)
}

impl WasiRuntime {
    /// A runtime caching compiled guests under `cache_dir`, whose containers stay within
    /// `bounds`.
    pub fn new(cache_dir: PathBuf, bounds: Bounds) -> Result<Self, SetupError> {
        let engine = TickingEngine::new(wasm_host::capacity::dense_config())?;
        let mut modules = Linker::new(engine.engine());
        wasmtime_wasi::p1::add_to_linker_async(&mut modules, ModuleState::wasi)?;
        open_files::add_to_module_linker(&mut modules)?;
        let components = component_linker(engine.engine())?;
        let cache = cache::ModuleCache::new(engine.engine().clone(), cache_dir.clone());
        let pool_instances = bounds.pool_instances.max(1);
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_component_instances(pool_instances)
            .total_core_instances(pool_instances)
            .total_memories(pool_instances)
            .total_tables(pool_instances)
            .total_stacks(pool_instances)
            .linear_memory_keep_resident(bounds.keep_resident)
            .table_keep_resident(bounds.keep_resident)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut http_config = Config::new();
        http_config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let http_engine = TickingEngine::new(http_config)?;
        let http = HttpEngine {
            linker: component_linker(http_engine.engine())?,
            cache: cache::ModuleCache::new(http_engine.engine().clone(), cache_dir.clone()),
            engine: http_engine,
        };
        Ok(Self {
            engine,
            modules,
            components,
            cache,
            http,
            pool: shares::InstancePool::new(pool_instances, bounds.guaranteed_requests),
            descriptors: DescriptorBudget::new(bounds.descriptors),
            spin_apps: Mutex::default(),
            spin_files: cache_dir.join("spin-files"),
            bounds: Bounds {
                pool_instances,
                guaranteed_requests: bounds.guaranteed_requests.max(1),
                requests_per_container: bounds
                    .requests_per_container
                    .clamp(1, pool_instances as usize),
                handles_per_instance: bounds.handles_per_instance.max(1),
                lookups_per_container: bounds.lookups_per_container.max(1),
                outgoing_connections_per_container: bounds
                    .outgoing_connections_per_container
                    .max(1),
                keep_resident: bounds.keep_resident,
                serving: bounds.serving,
                request_deadlines: bounds.request_deadlines,
                descriptors: bounds.descriptors,
                key_value_store_size: bounds.key_value_store_size,
            },
        })
    }

    /// Links a component compiled for the on-demand engine: a command, or (when its exports
    /// were not read right) an HTTP handler, compiled again for the pooling engine.
    async fn prepare_component(
        &self,
        module: &ModuleBytes,
        component: &Component,
    ) -> Result<Guest, PrepareError> {
        let pre = self
            .components
            .instantiate_pre(component)
            .map_err(missing_imports)?;
        if let Ok(command) = CommandPre::new(pre.clone()) {
            return Ok(Guest::Command(command));
        }
        if ProxyPre::new(pre).is_ok() {
            return self.prepare_http(module).await;
        }
        Err(PrepareError::not_runnable(
            "the component exports neither wasi:cli/run (a command) nor wasi:http/incoming-handler (an HTTP handler), so there is nothing to run",
        ))
    }

    /// Compiles (once, then cached) and links an HTTP handler for the pooling engine that
    /// serves it.
    async fn prepare_http(&self, module: &ModuleBytes) -> Result<Guest, PrepareError> {
        let cost = shares::RequestCost::of_component(&module.bytes);
        let proxy = spin::Compile::compile(&self.http, module.clone()).await?;
        Ok(Guest::Http(proxy, cost))
    }

    /// Prepares the Spin app in `module` (a bundle) once; later containers of it share it.
    async fn prepare_spin(&self, module: &ModuleBytes) -> Result<Guest, PrepareError> {
        let cell = self
            .spin_apps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(module.digest.clone())
            .or_default()
            .clone();
        let app = cell
            .get_or_try_init(|| async {
                spin::SpinApp::prepare(module, &self.http, &self.spin_files)
                    .await
                    .map(Arc::new)
            })
            .await?;
        Ok(Guest::Spin(app.clone()))
    }
}

impl HttpEngine {
    /// The component `module`, compiled (once, then cached) for this engine and linked.
    async fn linked(
        &self,
        module: &ModuleBytes,
    ) -> Result<wasmtime::component::InstancePre<ComponentState>, PrepareError> {
        let cache::Compiled::Component(component) = self.cache.get(module).await? else {
            return Err(PrepareError::not_runnable(
                "the component compiled as a core module",
            ));
        };
        self.linker
            .instantiate_pre(&component)
            .map_err(missing_imports)
    }
}

impl spin::Compile for HttpEngine {
    async fn compile(&self, module: ModuleBytes) -> Result<ProxyPre<ComponentState>, PrepareError> {
        ProxyPre::new(self.linked(&module).await?).map_err(|e| {
            PrepareError::not_runnable(format!(
                "the component exports no HTTP handler (wasi:http/incoming-handler): {e:#}"
            ))
        })
    }

    async fn compile_command(
        &self,
        module: ModuleBytes,
    ) -> Result<CommandPre<ComponentState>, PrepareError> {
        CommandPre::new(self.linked(&module).await?).map_err(|e| {
            PrepareError::not_runnable(format!(
                "the component is not a WASI command (wasi:cli/run), as a WAGI component must be: {e:#}"
            ))
        })
    }
}

/// A component's imports cannot all be linked.
fn missing_imports(e: wasmtime::Error) -> PrepareError {
    let message = format!("{e:#}");
    let hint = missing_spin_interface(&message)
        .map(|name| {
            format!(
                "; {name} is one of Spin's host interfaces, which this node does not provide yet (the README's section on Spin applications lists those it has)"
            )
        })
        .unwrap_or_default();
    PrepareError::not_runnable(format!(
        "the component needs imports this node does not provide: {message}{hint}"
    ))
}

/// The Spin interface that wasmtime's linker `message` says is missing, if it is one of
/// Spin's (`fermyon:spin/...`, `spin:...`).
fn missing_spin_interface(message: &str) -> Option<&str> {
    let (_, rest) = message.split_once("imports instance `")?;
    let (name, _) = rest.split_once('`')?;
    (name.starts_with("fermyon:spin/") || name.starts_with("spin:")).then_some(name)
}

impl Runtime for WasiRuntime {
    type Prepared = Prepared;

    fn arch(&self) -> &str {
        "wasm32-wasi"
    }

    fn version(&self) -> String {
        format!("wasmtime://{}", cache::WASMTIME_VERSION)
    }

    fn capacity(&self) -> Option<usize> {
        wasm_host::capacity::guests()
    }

    fn forget(&self, digest: &str) {
        self.cache.forget(digest);
        self.http.cache.forget(digest);
        let spin_app = self
            .spin_apps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(digest);
        if let Some(app) = spin_app.as_ref().and_then(|cell| cell.get()) {
            for component in &app.component_digests {
                self.http.cache.forget(component);
            }
            let _ = std::fs::remove_dir_all(self.spin_files.join(digest.replace(':', "-")));
        }
    }

    async fn prepare(&self, module: ModuleBytes) -> Result<Prepared, PrepareError> {
        if kubelet::images::bundle::is_bundle(&module.bytes) {
            return Ok(Prepared(self.prepare_spin(&module).await?));
        }
        // An HTTP handler is compiled for the engine that serves it, and only for it.
        if world::of(&module.bytes) == world::World::Http {
            return Ok(Prepared(self.prepare_http(&module).await?));
        }
        let guest = match self.cache.get(&module).await? {
            cache::Compiled::Module(compiled) => {
                Guest::Module(self.modules.instantiate_pre(&compiled).map_err(|e| {
                    PrepareError::not_runnable(format!(
                        "the module needs imports this node does not provide: {e:#}"
                    ))
                })?)
            }
            cache::Compiled::Component(component) => {
                self.prepare_component(&module, &component).await?
            }
        };
        Ok(Prepared(guest))
    }

    async fn start(
        &self,
        prepared: &Prepared,
        run: ContainerRun,
    ) -> Result<RunningContainer, StartError> {
        let network = run.network.clone();
        let stop = run.stop.clone();
        let spin = match &prepared.0 {
            Guest::Spin(app) => Some((
                app.start(
                    &run.env,
                    Arc::new(spin_stores::key_value_stores(
                        &run.mounts,
                        &run.state_dir,
                        self.bounds.key_value_store_size,
                    )?),
                )?,
                spin::SpinApp::port(&run.env, &network.ports)?,
            )),
            _ => None,
        };
        let setup = GuestSetup::new(run, &self.bounds, &self.descriptors)?;
        let netns = setup.netns();
        // The guest runs inside its pod's network: every socket it makes is the pod's.
        let task = match &prepared.0 {
            Guest::Module(pre) => {
                let store = setup.module_store(self.engine.engine())?;
                tokio::spawn(InNetns::new(netns, run_module(store, pre.clone())))
            }
            Guest::Command(pre) => {
                let store = setup.component_store(self.engine.engine())?;
                tokio::spawn(InNetns::new(netns, run_command(store, pre.clone())))
            }
            Guest::Http(pre, cost) => {
                let ports = if network.ports.is_empty() {
                    vec![DEFAULT_HTTP_PORT]
                } else {
                    network.ports.clone()
                };
                let handlers = http::Handlers::Component(pre.clone());
                return self
                    .serve(setup, handlers, *cost, &ports, network.listen_ip, stop)
                    .await;
            }
            Guest::Spin(app) => {
                let (serving, port) = spin.expect("a Spin app is started above");
                let handlers = http::Handlers::Spin(serving);
                return self
                    .serve(setup, handlers, app.cost, &[port], network.listen_ip, stop)
                    .await;
            }
        };
        Ok(RunningContainer::new(task))
    }
}

impl WasiRuntime {
    /// Serves `handlers` on `ports` once the container's share of the instance pool (each
    /// request costing `cost`) is reserved.
    async fn serve(
        &self,
        setup: GuestSetup,
        handlers: http::Handlers,
        cost: shares::RequestCost,
        ports: &[u16],
        listen_ip: std::net::IpAddr,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<RunningContainer, StartError> {
        let share = self
            .pool
            .reserve(
                cost,
                self.bounds.requests_per_container,
                shares::RESERVATION_WAIT,
            )
            .await
            .map_err(|e| StartError::Full(e.to_string()))?;
        let addrs: Vec<SocketAddr> = ports
            .iter()
            .map(|port| SocketAddr::new(listen_ip, *port))
            .collect();
        let listeners = wasm_host::ports::bind(&addrs, setup.netns().as_deref())?;
        let server = http::Server::new(
            self.http.engine.engine().clone(),
            handlers,
            setup,
            share,
            self.bounds.request_deadlines,
        );
        Ok(RunningContainer::graceful(tokio::spawn(server.serve(
            listeners,
            self.bounds.serving,
            stop,
        ))))
    }
}

async fn run_module(mut store: Store<ModuleState>, pre: InstancePre<ModuleState>) -> Exit {
    let outcome = async {
        let instance = pre.instantiate_async(&mut store).await?;
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        start.call_async(&mut store, ()).await
    }
    .await;
    guest::exit(&mut store, &outcome.map(|()| 0))
}

async fn run_command(mut store: Store<ComponentState>, pre: CommandPre<ComponentState>) -> Exit {
    let outcome = async {
        let command = pre.instantiate_async(&mut store).await?;
        command.wasi_cli_run().call_run(&mut store).await
    }
    .await;
    guest::exit(&mut store, &outcome.map(|r| i32::from(r.is_err())))
}
