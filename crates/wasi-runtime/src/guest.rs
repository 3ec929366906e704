//! What one container's guests get: argv, environment, preopened directories, log streams,
//! limits and network policy, turned into a wasmtime store for a preview 1 module or a
//! component (one store per command run, one per HTTP request).

use crate::dns::{LookupState, LookupView, PodResolver};
use crate::open_files::{HoldsOpenFiles, OpenFiles};
use crate::outbound::OutboundPolicy;
use kubelet::logs::LogWriter;
use kubelet::netns::PodNetns;
use kubelet::runtime::{ContainerRun, Exit, Limits, Mount, StartError, Usage, Warnings};
use std::sync::Arc;
use wasm_host::descriptors::{ContainerDescriptors, DescriptorBudget};
use wasm_host::failures::FailureReport;
use wasm_host::limits::{ContainerCpu, GuestLimits};
use wasm_host::store::{Limited, limited_store};
use wasmtime::component::{ResourceTable, ResourceTableError};
use wasmtime::{Engine, Store};
use wasmtime_wasi::cli::AsyncStdoutStream;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::sockets::WasiSocketsView;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Bytes a guest may have buffered towards its log before its writes wait.
const OUTPUT_BUDGET: usize = 64 * 1024;

/// Everything a container's stores are made from.
pub struct GuestSetup {
    args: Vec<String>,
    env: Vec<(String, String)>,
    mounts: Vec<Mount>,
    /// The container's log streams; each store writes through a writer of its own.
    stdout: LogWriter,
    stderr: LogWriter,
    limits: Limits,
    usage: Arc<Usage>,
    /// The container's CPU share, charged by all its stores together.
    cpu: ContainerCpu,
    outbound: OutboundPolicy,
    warnings: Warnings,
    /// The pod's network namespace, when it has one of its own.
    netns: Option<Arc<PodNetns>>,
    /// The container's share of the runtime's file descriptors.
    descriptors: Arc<ContainerDescriptors>,
    /// WASI handles one instance may hold at once (`--max-guest-handles`).
    max_handles: usize,
    /// CPU time one HTTP request's instance may use (`--http-request-cpu-time`).
    request_cpu_time: std::time::Duration,
}

/// Store state of a preview 1 module.
pub struct ModuleState {
    wasi: WasiP1Ctx,
    limits: GuestLimits,
    files: OpenFiles,
}

/// Store state of a component: WASI preview 2 and wasi-http, and Spin's host interfaces for a
/// Spin app's component.
pub struct ComponentState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    outbound: OutboundPolicy,
    limits: GuestLimits,
    spin: Option<spin_runtime::host::SpinContext>,
    files: OpenFiles,
}

/// What one component of a Spin app sees instead of its container's own: no argv, its
/// environment and files as the app gives them, and its variables.
pub struct ComponentGuest {
    /// Its environment variables (`environment` in `spin.toml`).
    pub env: Vec<(String, String)>,
    /// Its files, read-only at `/`, when it has any.
    pub files: Option<Mount>,
    /// Its variables and grants.
    pub spin: spin_runtime::host::SpinContext,
    /// What each of its instances may hold of memory by itself (`SPIN_MAX_INSTANCE_MEMORY`).
    pub max_instance_memory: Option<u64>,
}

/// Memory a container holds outside its guests' linear memories (a WAGI request's buffered
/// body and output), charged to its usage and memory limit until dropped.
pub struct HeldMemory {
    usage: Arc<Usage>,
    bytes: u64,
}

impl Drop for HeldMemory {
    fn drop(&mut self) {
        self.usage.release_memory(self.bytes);
    }
}

impl ComponentState {
    /// What Spin's host interfaces see: a Spin app's component's context, and the resources.
    pub fn spin(&mut self) -> spin_runtime::host::SpinView<'_> {
        spin_runtime::host::SpinView {
            context: self.spin.as_ref(),
            table: &mut self.table,
        }
    }
}

impl ModuleState {
    /// The module's WASI context, for the preview 1 linker.
    pub fn wasi(&mut self) -> &mut WasiP1Ctx {
        &mut self.wasi
    }

    /// The module's WASI context and the descriptors it holds, together.
    pub fn split(&mut self) -> (&mut WasiP1Ctx, &mut OpenFiles) {
        (&mut self.wasi, &mut self.files)
    }
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            hooks: &mut self.outbound,
            table: &mut self.table,
            ctx: &mut self.http,
        }
    }
}

impl LookupState for ComponentState {
    fn lookups(&mut self) -> LookupView<'_> {
        let allowed = self.outbound.allows_name_lookup();
        let resolver = self.outbound.resolver().clone();
        LookupView {
            sockets: WasiSocketsView::sockets(self),
            allowed,
            resolver,
        }
    }
}

impl HoldsOpenFiles for ModuleState {
    fn open_files(&mut self) -> &mut OpenFiles {
        &mut self.files
    }
}

impl HoldsOpenFiles for ComponentState {
    fn open_files(&mut self) -> &mut OpenFiles {
        &mut self.files
    }
}

impl Limited for ModuleState {
    fn limits(&mut self) -> &mut GuestLimits {
        &mut self.limits
    }
}

impl Limited for ComponentState {
    fn limits(&mut self) -> &mut GuestLimits {
        &mut self.limits
    }
}

impl GuestSetup {
    /// The setup for `run` (its log writers become the container's shared streams); the
    /// pod's network namespace, if it has one, is opened. Its guests hold what `bounds` allow
    /// of WASI handles, name lookups and outgoing connections, and its share of `descriptors`
    /// (reserved now: refused when the runtime cannot guarantee it).
    pub fn new(
        run: ContainerRun,
        bounds: &crate::Bounds,
        descriptors: &Arc<DescriptorBudget>,
    ) -> Result<Self, StartError> {
        let descriptors = descriptors
            .reserve()
            .map_err(|e| StartError::Full(e.to_string()))?;
        let netns = wasm_host::ports::pod_netns(&run.network)?;
        Ok(Self {
            args: run.args,
            env: run.env,
            mounts: run.mounts,
            stdout: run.stdout,
            stderr: run.stderr,
            limits: run.limits,
            cpu: ContainerCpu::new(run.limits.cpu_cores),
            usage: run.usage,
            outbound: OutboundPolicy::new(
                &run.network.allowed_outbound,
                netns.clone(),
                PodResolver::new(
                    run.network.dns,
                    netns.clone(),
                    bounds.lookups_per_container,
                    descriptors.clone(),
                ),
                bounds.outgoing_connections_per_container,
                descriptors.clone(),
            ),
            warnings: run.warnings,
            netns,
            descriptors,
            max_handles: bounds.handles_per_instance,
            request_cpu_time: bounds.request_deadlines.cpu_time,
        })
    }

    /// The pod's network namespace, which the guest's work runs in; `None`: the node's network.
    pub fn netns(&self) -> Option<Arc<PodNetns>> {
        self.netns.clone()
    }

    /// Holds `bytes` of the container's memory (its limit counts all its instances and this
    /// together); `None` when that would take it past its limit.
    pub fn hold_memory(&self, bytes: u64) -> Option<HeldMemory> {
        self.usage
            .try_grow_memory(bytes, self.limits.memory_bytes)
            .then(|| HeldMemory {
                usage: self.usage.clone(),
                bytes,
            })
    }

    /// The container's share of the runtime's file descriptors.
    pub fn descriptors(&self) -> &Arc<ContainerDescriptors> {
        &self.descriptors
    }

    /// What a new instance with `mounts` preopened holds of the container's descriptors.
    fn open_files(&self, mounts: &[Mount]) -> Result<OpenFiles, StartError> {
        OpenFiles::new(self.descriptors.clone(), mounts.len())
            .map_err(|e| StartError::Full(e.to_string()))
    }

    /// Where the container's failed requests are reported.
    pub fn failures(&self) -> FailureReport {
        FailureReport::new(self.stderr.another(), self.warnings.clone())
    }

    fn wasi(&self) -> Result<WasiCtxBuilder, StartError> {
        self.wasi_with(&self.args, &self.env, &self.mounts)
    }

    /// The container's WASI context with `args`, `env` and `mounts` of a guest's own.
    fn wasi_with(
        &self,
        args: &[String],
        env: &[(String, String)],
        mounts: &[Mount],
    ) -> Result<WasiCtxBuilder, StartError> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.args(args).envs(env);
        // A stream per store: instances serving requests side by side never share one (a
        // stream refuses a write while another is in progress, which trapped the guest).
        wasi.stdout(AsyncStdoutStream::new(OUTPUT_BUDGET, self.stdout.another()))
            .stderr(AsyncStdoutStream::new(OUTPUT_BUDGET, self.stderr.another()));
        for mount in mounts {
            if mount.host_path.is_file() {
                return Err(StartError::Invalid(format!(
                    "the volume mounted at {} is a file; a WASI guest can only be given directories, so mount the directory that holds it",
                    mount.guest_path
                )));
            }
            let perms = if mount.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            wasi.preopened_dir(&mount.host_path, &mount.guest_path, perms)
                .map_err(|e| {
                    StartError::node(
                        format!(
                            "opening {} for {}",
                            mount.host_path.display(),
                            mount.guest_path
                        ),
                        e,
                    )
                })?;
        }
        if self.outbound.allows_any() {
            let policy = self.outbound.clone();
            wasi.allow_tcp(true)
                .allow_udp(true)
                .allow_ip_name_lookup(policy.allows_name_lookup())
                .socket_addr_check(move |addr, usage| {
                    let permitted = policy.permits_socket(addr, usage);
                    Box::pin(async move { permitted })
                });
        }
        Ok(wasi)
    }

    /// The limits of one request's instance of a Spin app's component `guest`.
    fn guest_limits(&self, guest: &ComponentGuest) -> Result<GuestLimits, StartError> {
        let limits = self.limits()?.with_cpu_time(self.request_cpu_time);
        Ok(match guest.max_instance_memory {
            Some(bytes) => limits.with_instance_memory(bytes),
            None => limits,
        })
    }

    fn limits(&self) -> Result<GuestLimits, StartError> {
        GuestLimits::sharing(self.limits, self.usage.clone(), self.cpu.clone())
            .map_err(|e| StartError::node("reserving the guest's memory", e))
    }

    /// A store for one run of a preview 1 module.
    pub fn module_store(&self, engine: &Engine) -> Result<Store<ModuleState>, StartError> {
        let files = self.open_files(&self.mounts)?;
        let mut wasi = self.wasi()?.build_p1();
        wasi.ctx().table.set_max_capacity(self.max_handles);
        let state = ModuleState {
            wasi,
            limits: self.limits()?,
            files,
        };
        Ok(limited_store(engine, state))
    }

    /// A store for one run of a command component.
    pub fn component_store(&self, engine: &Engine) -> Result<Store<ComponentState>, StartError> {
        let files = self.open_files(&self.mounts)?;
        self.component_store_limited(engine, self.limits()?, self.wasi()?, files, None)
    }

    /// A store for one HTTP request's instance: the container's limits, and at most its CPU
    /// time per request.
    pub fn request_store(&self, engine: &Engine) -> Result<Store<ComponentState>, StartError> {
        let limits = self.limits()?.with_cpu_time(self.request_cpu_time);
        let files = self.open_files(&self.mounts)?;
        self.component_store_limited(engine, limits, self.wasi()?, files, None)
    }

    /// A store for one HTTP request's instance of a Spin app's component: the container's
    /// limits, network and logs, and what `guest` sees instead of the container's argv,
    /// environment and mounts.
    pub fn spin_request_store(
        &self,
        engine: &Engine,
        guest: &ComponentGuest,
    ) -> Result<Store<ComponentState>, StartError> {
        let limits = self.guest_limits(guest)?;
        let files = self.open_files(guest.files.as_slice())?;
        let wasi = self.wasi_with(&[], &guest.env, guest.files.as_slice())?;
        self.component_store_limited(engine, limits, wasi, files, Some(guest.spin.clone()))
    }

    /// A store for one WAGI run of a Spin app's component: as [`Self::spin_request_store`],
    /// with `args`, the CGI variables in `cgi_env` besides the component's own, the request's
    /// body on stdin and stdout into `stdout`.
    pub fn wagi_request_store(
        &self,
        engine: &Engine,
        guest: &ComponentGuest,
        args: &[String],
        cgi_env: Vec<(String, String)>,
        stdin: bytes::Bytes,
        stdout: wasmtime_wasi::p2::pipe::MemoryOutputPipe,
    ) -> Result<Store<ComponentState>, StartError> {
        let limits = self.guest_limits(guest)?;
        let mut env = guest.env.clone();
        env.extend(cgi_env);
        let files = self.open_files(guest.files.as_slice())?;
        let mut wasi = self.wasi_with(args, &env, guest.files.as_slice())?;
        wasi.stdin(wasmtime_wasi::p2::pipe::MemoryInputPipe::new(stdin))
            .stdout(stdout);
        self.component_store_limited(engine, limits, wasi, files, Some(guest.spin.clone()))
    }

    fn component_store_limited(
        &self,
        engine: &Engine,
        limits: GuestLimits,
        mut wasi: WasiCtxBuilder,
        files: OpenFiles,
        spin: Option<spin_runtime::host::SpinContext>,
    ) -> Result<Store<ComponentState>, StartError> {
        let mut table = ResourceTable::new();
        table.set_max_capacity(self.max_handles);
        let state = ComponentState {
            wasi: wasi.build(),
            table,
            http: WasiHttpCtx::new(),
            outbound: self.outbound.clone(),
            limits,
            spin,
            files,
        };
        Ok(limited_store(engine, state))
    }
}

/// How a guest's run ended: `outcome` is its exit code, or the error that ended it (a WASI
/// `proc_exit` arrives as an error carrying the code).
pub fn exit<T: Limited>(store: &mut Store<T>, outcome: &wasmtime::Result<i32>) -> Exit {
    let exited = outcome
        .as_ref()
        .err()
        .and_then(|e| e.downcast_ref::<wasmtime_wasi::I32Exit>());
    let out_of_handles = outcome.as_ref().err().is_some_and(|e| {
        e.chain()
            .any(|cause| cause.downcast_ref::<ResourceTableError>().is_some())
    });
    let mut exit = match exited {
        Some(exit) => wasm_host::store::exit(store, &Ok(exit.0)),
        None => wasm_host::store::exit(store, outcome),
    };
    if out_of_handles && exit.reason.is_none() {
        exit.message = Some(
            "the guest opened more WASI handles (files, sockets, streams) than one instance may \
             hold at once (--max-guest-handles); it was stopped"
                .into(),
        );
    }
    exit
}
