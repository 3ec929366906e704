//! Spin apps, served like wasi-http components: a bundle's components componentized once,
//! compiled for the pooling engine and linked with Spin's host interfaces
//! ([`spin_runtime::host`]); each request routed by the app's routes to a fresh instance of
//! its component, with Spin's request headers and the component's own environment, files and
//! variables. The host answers `/.well-known/spin/health` and `/info`, and 404 when no route
//! matches, as Spin does.

use crate::guest::{ComponentGuest, ComponentState};
use crate::shares::RequestCost;
use kubelet::runtime::{ModuleBytes, Mount, PrepareError, StartError};
use spin_runtime::app::{App, Component, Executor};
use spin_runtime::bundle::Bundle;
use spin_runtime::key_value::KeyValueStores;
use spin_runtime::routes::{RouteMatch, Router, WELL_KNOWN_PREFIX};
use spin_runtime::variables::Values;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// The environment variable naming the components a container runs (comma-separated IDs);
/// spin-operator sets it from a SpinApp's `components`.
const COMPONENTS_TO_RETAIN: &str = "SPIN_COMPONENTS_TO_RETAIN";
/// The environment variable with the address Spin listens on (spin-operator: `0.0.0.0:80`).
const LISTEN_ADDR: &str = "SPIN_HTTP_LISTEN_ADDR";
/// What each instance of a component may hold of memory, in bytes (spin-operator sets it from
/// the SpinApp's executor; Spin's `--max-instance-memory`).
const MAX_INSTANCE_MEMORY: &str = "SPIN_MAX_INSTANCE_MEMORY";
/// The port Spin's HTTP trigger listens on when nothing says otherwise (spin-operator's).
pub const DEFAULT_PORT: u16 = 80;

/// A Spin app compiled and linked, ready to serve in any number of containers.
pub struct SpinApp {
    app: Arc<App>,
    components: BTreeMap<String, PreparedComponent>,
    /// What a request takes of the instance pool at most (its costliest component's).
    pub cost: RequestCost,
    /// The digests the compiled components are cached under.
    pub component_digests: Vec<String>,
}

struct PreparedComponent {
    handler: Handler,
    component: Arc<Component>,
    /// Its files, written once under the runtime's cache directory.
    files: Option<PathBuf>,
}

/// How a component answers its requests.
#[derive(Clone)]
pub enum Handler {
    /// It exports an HTTP handler.
    Http(ProxyPre<ComponentState>),
    /// It is a WAGI command, run once per request with this argv template.
    Wagi(CommandPre<ComponentState>, String),
}

/// Turns a component's source into a compiled, linked guest (the runtime's pooling engine,
/// cache and linker).
pub trait Compile {
    /// Compiles (or finds cached) the component `bytes` and links it as an HTTP handler.
    fn compile(
        &self,
        component: ModuleBytes,
    ) -> impl Future<Output = Result<ProxyPre<ComponentState>, PrepareError>> + Send;

    /// Compiles (or finds cached) the component `bytes` and links it as a command.
    fn compile_command(
        &self,
        component: ModuleBytes,
    ) -> impl Future<Output = Result<CommandPre<ComponentState>, PrepareError>> + Send;
}

impl SpinApp {
    /// Reads the app in `module` (a bundle), componentizes and compiles each component with
    /// `compiler`, and writes each component's files beneath `files_root`.
    pub async fn prepare(
        module: &ModuleBytes,
        compiler: &impl Compile,
        files_root: &Path,
    ) -> Result<Self, PrepareError> {
        let bundle = Bundle::open(module.bytes.clone())
            .map_err(|e| PrepareError::not_runnable(format!("the Spin app cannot run: {e}")))?;
        let app_dir = files_root.join(module.digest.replace(':', "-"));
        let mut components = BTreeMap::new();
        let mut cost = RequestCost::of_component(&[]);
        let mut component_digests = Vec::new();
        for component in &bundle.app.components {
            let (prepared, compiled) =
                prepare_component(&bundle, component, compiler, &app_dir).await?;
            cost = cost.max(RequestCost::of_component(&compiled.bytes));
            component_digests.push(compiled.digest);
            components.insert(component.id.clone(), prepared);
        }
        Ok(Self {
            app: Arc::new(bundle.app),
            components,
            cost,
            component_digests,
        })
    }

    /// The app as one container runs it, with `env` (the container's environment: variables'
    /// values, the components to retain, the listening address) and its key-value stores in
    /// `key_value` (shared by its components, as Spin's stores are by an app's).
    pub fn start(
        &self,
        env: &[(String, String)],
        key_value: Arc<KeyValueStores>,
    ) -> Result<Serving, StartError> {
        let lookup = |name: &str| {
            env.iter()
                .rev()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        let values = Arc::new(
            Values::resolve(&self.app, lookup).map_err(|e| StartError::Invalid(e.to_string()))?,
        );
        let retained: Option<Vec<&str>> = lookup(COMPONENTS_TO_RETAIN).map(|ids| {
            ids.split(',')
                .map(str::trim)
                .filter(|id| !id.is_empty())
                .collect()
        });
        if let Some(unknown) = retained
            .iter()
            .flatten()
            .find(|id| !self.components.contains_key(**id))
        {
            return Err(StartError::Invalid(format!(
                "{COMPONENTS_TO_RETAIN} names component {unknown:?}, which the app does not have"
            )));
        }
        let max_instance_memory = lookup(MAX_INSTANCE_MEMORY)
            .map(|bytes| {
                bytes.trim().parse::<u64>().map_err(|_| {
                    StartError::Invalid(format!(
                        "{MAX_INSTANCE_MEMORY} is {bytes:?}, not a number of bytes"
                    ))
                })
            })
            .transpose()?;
        let keeps = |id: &str| retained.as_ref().is_none_or(|ids| ids.contains(&id));
        let mut app = (*self.app).clone();
        app.http_triggers.retain(|t| keeps(&t.component));
        let router = Router::new(&app).map_err(|e| StartError::Invalid(e.to_string()))?;
        let components = self
            .components
            .iter()
            .filter(|(id, _)| keeps(id))
            .map(|(id, prepared)| {
                let guest = ComponentGuest {
                    env: prepared
                        .component
                        .environment
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    files: prepared.files.as_ref().map(|dir| Mount {
                        host_path: dir.clone(),
                        guest_path: "/".to_owned(),
                        read_only: true,
                    }),
                    spin: spin_runtime::host::SpinContext::new(
                        prepared.component.clone(),
                        values.clone(),
                        key_value.clone(),
                    ),
                    max_instance_memory,
                };
                (
                    id.clone(),
                    ServingComponent {
                        handler: prepared.handler.clone(),
                        guest,
                    },
                )
            })
            .collect();
        let info = serde_json::json!({
            "name": self.app.name,
            "version": (!self.app.version.is_empty()).then_some(&self.app.version),
        });
        Ok(Serving {
            router,
            components,
            info: serde_json::to_string_pretty(&info).unwrap_or_default(),
        })
    }

    /// The port the app listens on: `SPIN_HTTP_LISTEN_ADDR`'s, else the container's first
    /// declared port, else Spin's default as spin-operator sets it.
    pub fn port(env: &[(String, String)], declared: &[u16]) -> Result<u16, StartError> {
        match env.iter().rev().find(|(key, _)| key == LISTEN_ADDR) {
            Some((_, addr)) => addr
                .rsplit_once(':')
                .and_then(|(_, port)| port.parse().ok())
                .ok_or_else(|| {
                    StartError::Invalid(format!(
                        "{LISTEN_ADDR} is {addr:?}, not an address with a port (\"0.0.0.0:80\")"
                    ))
                }),
            None => Ok(declared.first().copied().unwrap_or(DEFAULT_PORT)),
        }
    }
}

/// A Spin app serving in one container.
pub struct Serving {
    router: Router,
    components: BTreeMap<String, ServingComponent>,
    /// `/.well-known/spin/info`'s answer.
    info: String,
}

/// One component as a container serves it.
pub struct ServingComponent {
    /// How it answers.
    pub handler: Handler,
    /// What its instances see.
    pub guest: ComponentGuest,
}

/// Where a request goes.
pub enum Dispatch<'a> {
    /// To an instance of this component, by this match of its routes.
    Component(&'a ServingComponent, RouteMatch<'a>),
    /// The host answers it itself: a status and a body.
    Host(u16, String),
}

impl Serving {
    /// Where a request for `path` goes.
    pub fn dispatch(&self, path: &str) -> Dispatch<'_> {
        if let Some(well_known) = path.strip_prefix(WELL_KNOWN_PREFIX) {
            return match well_known {
                "health" => Dispatch::Host(200, "OK".to_owned()),
                "info" => Dispatch::Host(200, self.info.clone()),
                _ => Dispatch::Host(404, String::new()),
            };
        }
        let Some(found) = self.router.route(path) else {
            return Dispatch::Host(404, String::new());
        };
        match self.components.get(found.component) {
            Some(component) => Dispatch::Component(component, found),
            None => Dispatch::Host(404, String::new()),
        }
    }
}

/// Prepares one component of `bundle`: componentized, compiled and linked for its executor,
/// its files written beneath `app_dir`; also returns the component it compiled.
async fn prepare_component(
    bundle: &Bundle,
    component: &Component,
    compiler: &impl Compile,
    app_dir: &Path,
) -> Result<(PreparedComponent, ModuleBytes), PrepareError> {
    let executor = executor_of(&bundle.app, &component.id)?;
    let not_runnable = |e: &dyn std::fmt::Display| {
        PrepareError::not_runnable(format!(
            "component {:?} of the Spin app cannot run: {e}",
            component.id
        ))
    };
    let source: Arc<[u8]> = Arc::from(bundle.source(component).map_err(|e| not_runnable(&e))?);
    let componentized = tokio::task::spawn_blocking(move || {
        spin_runtime::componentize::componentize(&source).map(|c| Arc::<[u8]>::from(c.as_ref()))
    })
    .await
    .map_err(|e| not_runnable(&e))?
    .map_err(|e| not_runnable(&e))?;
    let compiled = ModuleBytes {
        digest: kubelet::images::digest_of(&componentized),
        bytes: componentized,
    };
    let in_component =
        |e: PrepareError| PrepareError::not_runnable(format!("component {:?}: {e}", component.id));
    let handler = match executor {
        Executor::Http => Handler::Http(
            compiler
                .compile(compiled.clone())
                .await
                .map_err(in_component)?,
        ),
        Executor::Wagi { argv } => Handler::Wagi(
            compiler
                .compile_command(compiled.clone())
                .await
                .map_err(in_component)?,
            argv,
        ),
    };
    let files = bundle.files(component).map_err(|e| not_runnable(&e))?;
    let files = if files.is_empty() {
        None
    } else {
        let dir = app_dir.join(&component.id);
        let owned: Vec<(String, Vec<u8>)> = files
            .into_iter()
            .map(|f| (f.path, f.content.to_vec()))
            .collect();
        let target = dir.clone();
        tokio::task::spawn_blocking(move || write_files_once(&target, &owned))
            .await
            .map_err(|e| not_runnable(&e))?
            .map_err(|e| {
                PrepareError::not_runnable(format!(
                    "writing the files of component {:?} to {}: {e}",
                    component.id,
                    dir.display()
                ))
            })?;
        Some(dir)
    };
    let prepared = PreparedComponent {
        handler,
        component: Arc::new(component.clone()),
        files,
    };
    Ok((prepared, compiled))
}

/// How the app's triggers call component `id`: one executor, or an error when its triggers
/// disagree.
fn executor_of(app: &App, id: &str) -> Result<Executor, PrepareError> {
    let mut executors = app
        .http_triggers
        .iter()
        .filter(|t| t.component == id)
        .map(|t| &t.executor);
    let first = executors.next().cloned().unwrap_or(Executor::Http);
    if executors.any(|other| std::mem::discriminant(other) != std::mem::discriminant(&first)) {
        return Err(PrepareError::not_runnable(format!(
            "component {id:?} is called by both the HTTP and the WAGI executor; give each executor a component of its own"
        )));
    }
    Ok(first)
}

/// Writes `files` (paths relative to `dir`) into `dir` unless an earlier preparation did: into
/// a directory beside it first, renamed into place whole, so a crash leaves no half-written
/// files behind.
fn write_files_once(dir: &Path, files: &[(String, Vec<u8>)]) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let staging = tempfile::tempdir_in(parent)?;
    for (path, content) in files {
        // Paths come from the app, checked to be relative and free of `..` by the loaders.
        let target = staging.path().join(path);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&target, content)?;
    }
    let staged = staging.keep();
    match std::fs::rename(&staged, dir) {
        Ok(()) => Ok(()),
        // Another preparation of the same app got there first.
        Err(_) if dir.is_dir() => std::fs::remove_dir_all(&staged),
        Err(e) => Err(e),
    }
}
