//! One running actor: instantiated once, initialised (`_start`, `wapc_init`), then handed
//! calls one at a time (as waSCC did) until the container is stopped (gracefully when asked:
//! the requests in flight are answered first). A trap ends the
//! container, as a crash ends a process; its restart policy decides what follows.

use crate::capabilities::Delivery;
use crate::wapc::ActorState;
use kubelet::runtime::Exit;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use wasmtime::{InstancePre, Store, TypedFunc};

/// The functions a waPC guest may export to initialise itself, called in this order.
const INITIALISERS: [&str; 2] = ["_start", "wapc_init"];

/// How long the answers already given (such as the 500 of the request that trapped) may take
/// to reach their clients once the actor is gone, before their connections are cut.
const WIND_DOWN: Duration = Duration::from_secs(2);

/// The actor's HTTP server: its task, and the token (a child of the container's) that stops
/// it accepting.
pub struct Server {
    /// The serving task; aborting it closes every connection.
    pub task: AbortOnDropHandle<()>,
    /// Cancelled, the server closes its ports and finishes the exchanges in flight.
    pub stop: CancellationToken,
}

impl Server {
    /// Closes the ports, gives the exchanges in flight [`WIND_DOWN`] to finish, then cuts them.
    async fn wind_down(mut self) {
        self.stop.cancel();
        if tokio::time::timeout(WIND_DOWN, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
            let _ = self.task.await;
        }
    }
}

/// Runs the actor: instantiates it in `store`, then handles `deliveries` until the actor
/// traps, the task is aborted (which also stops `server`), or `stop` is cancelled: then the
/// server stops accepting, the requests in flight are handled, and the run ends.
pub async fn run(
    mut store: Store<ActorState>,
    pre: InstancePre<ActorState>,
    mut deliveries: mpsc::Receiver<Delivery>,
    mut server: Option<Server>,
    stop: CancellationToken,
) -> Exit {
    let exit = serve(&mut store, &pre, &mut deliveries, &mut server, &stop).await;
    // Calls still queued are answered "unavailable": nothing will handle them.
    drop(deliveries);
    // The ports are free again before the container counts as ended (a restart binds them).
    if let Some(server) = server {
        server.wind_down().await;
    }
    exit
}

async fn serve(
    store: &mut Store<ActorState>,
    pre: &InstancePre<ActorState>,
    deliveries: &mut mpsc::Receiver<Delivery>,
    server: &mut Option<Server>,
    stop: &CancellationToken,
) -> Exit {
    let guest_call = match instantiate(store, pre).await {
        Ok(guest_call) => guest_call,
        Err(e) => return wasm_host::store::exit(store, &Err(e)),
    };
    loop {
        let delivery = tokio::select! {
            delivery = deliveries.recv() => delivery,
            () = drained(server, stop) => {
                *server = None;
                return Exit::stopped();
            }
        };
        let Some(delivery) = delivery else {
            return Exit::killed();
        };
        let operation = delivery.operation.clone();
        store
            .data_mut()
            .begin_call(&delivery.operation, delivery.payload);
        let len = |bytes: usize| i32::try_from(bytes).unwrap_or(i32::MAX);
        let op_len = len(operation.len());
        let msg_len = len(store.data().request_len());
        match guest_call.call_async(&mut *store, (op_len, msg_len)).await {
            Ok(status) => {
                let answer = store.data_mut().end_call(status == 1);
                if let Err(error) = &answer {
                    tracing::debug!(%operation, %error, "the actor answered with an error");
                }
                if let Some(reply) = delivery.reply {
                    let _ = reply.send(answer);
                }
            }
            Err(e) => {
                // In full (backtrace included) in the actor's log, as a crashing process
                // leaves its last words on stderr; in one line to whoever waits.
                let details = format!("{e:?}");
                let cause = e.root_cause().to_string();
                let exit = wasm_host::store::exit(store, &Err(e));
                let cause = match &exit.reason {
                    Some(reason) => format!("{reason}: {}", exit.message.as_deref().unwrap_or("")),
                    None => cause,
                };
                store
                    .data_mut()
                    .host_mut()
                    .log_error(&format!(
                        "the actor trapped handling {operation}: {details}"
                    ))
                    .await;
                if let Some(reply) = delivery.reply {
                    let _ = reply.send(Err(format!(
                        "the actor trapped handling {operation}: {cause}"
                    )));
                }
                return exit;
            }
        }
    }
}

/// Completes once the actor was asked to stop and its server (if any) has finished the
/// requests in flight.
async fn drained(server: &mut Option<Server>, stop: &CancellationToken) {
    stop.cancelled().await;
    if let Some(server) = server {
        let _ = (&mut server.task).await;
    }
}

async fn instantiate(
    store: &mut Store<ActorState>,
    pre: &InstancePre<ActorState>,
) -> wasmtime::Result<TypedFunc<(i32, i32), i32>> {
    let instance = pre.instantiate_async(&mut *store).await?;
    for name in INITIALISERS {
        if let Some(init) = instance.get_func(&mut *store, name) {
            init.typed::<(), ()>(&*store)?
                .call_async(&mut *store, ())
                .await?;
        }
    }
    instance.get_typed_func::<(i32, i32), i32>(&mut *store, "__guest_call")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::{Host, http_server};
    use kubelet::logs::LogFiles;
    use kubelet::runtime::{Limits, Usage, Warnings};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use wasm_host::failures::FailureReport;
    use wasm_host::limits::GuestLimits;
    use wasmtime::{Linker, Module};

    /// A waPC actor whose every call traps (`unreachable`).
    fn trapping_actor() -> Vec<u8> {
        use wasm_encoder::{
            CodeSection, ExportKind, ExportSection, Function, FunctionSection, Instruction,
            MemorySection, MemoryType, TypeSection, ValType,
        };
        let mut types = TypeSection::new();
        types
            .ty()
            .function([ValType::I32, ValType::I32], [ValType::I32]);
        let mut functions = FunctionSection::new();
        functions.function(0);
        let mut memories = MemorySection::new();
        memories.memory(MemoryType {
            minimum: 1,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        let mut exports = ExportSection::new();
        exports.export("__guest_call", ExportKind::Func, 0);
        exports.export("memory", ExportKind::Memory, 0);
        let mut body = Function::new([]);
        body.instruction(&Instruction::Unreachable);
        body.instruction(&Instruction::End);
        let mut code = CodeSection::new();
        code.function(&body);
        let mut module = wasm_encoder::Module::new();
        module
            .section(&types)
            .section(&functions)
            .section(&memories)
            .section(&exports)
            .section(&code);
        module.finish()
    }

    /// The exchange of one `GET` on a fresh connection to `addr`, as the client reads it.
    async fn exchange(addr: std::net::SocketAddr) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /trap HTTP/1.1\r\nHost: actor\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        String::from_utf8_lossy(&response).into_owned()
    }

    // The agent's kind of runtime. Whether a server cut at once as the actor ends loses the
    // answer depends on which task a worker polls first (the e2e test lost it under CI load);
    // winding down gives the answer time whatever the order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_request_that_traps_the_actor_is_answered_before_the_port_closes() {
        let engine = wasm_host::TickingEngine::new(wasm_host::capacity::dense_config()).unwrap();
        let mut linker = Linker::new(engine.engine());
        crate::wapc::add_to_linker(&mut linker).unwrap();
        let module = Module::new(engine.engine(), trapping_actor()).unwrap();
        let pre = linker.instantiate_pre(&module).unwrap();

        let logs = tempfile::tempdir().unwrap();
        let log = LogFiles::default()
            .create(&logs.path().join("actor.log"))
            .unwrap();
        let (sender, deliveries) = mpsc::channel(8);
        let (warnings_tx, mut warnings) = mpsc::channel(8);
        let host = Host::new(
            "trapper".into(),
            Default::default(),
            (log.writer("stdout"), log.writer("stderr")),
            Warnings::new("trapper", warnings_tx.clone()),
            None,
            sender.clone(),
        );
        let limits = GuestLimits::new(Limits::default(), Arc::new(Usage::default())).unwrap();
        let store = wasm_host::store::limited_store(engine.engine(), ActorState::new(limits, host));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server_stop = stop.child_token();
        let server = Server {
            task: AbortOnDropHandle::new(tokio::spawn(http_server::serve(
                vec![listener],
                kubelet::runtime::ServeLimits::default(),
                wasm_host::descriptors::DescriptorBudget::new(Default::default())
                    .reserve()
                    .unwrap(),
                sender,
                FailureReport::new(log.writer("stderr"), Warnings::new("trapper", warnings_tx)),
                server_stop.clone(),
            ))),
            stop: server_stop,
        };
        let actor = tokio::spawn(run(store, pre, deliveries, Some(server), stop));

        let response = tokio::time::timeout(Duration::from_secs(10), exchange(addr))
            .await
            .expect("an answer within 10 s");
        assert!(response.starts_with("HTTP/1.1 500"), "{response:?}");
        assert!(
            response.ends_with("\r\n\r\ninternal server error\n"),
            "the client gets a generic body, not the actor's insides: {response:?}"
        );
        let exit = actor.await.unwrap();
        assert_eq!(exit.code, 134, "{exit:?}");
        let warning = warnings
            .try_recv()
            .expect("the failed request is a warning");
        assert!(
            warning
                .message
                .contains("the actor trapped handling HandleRequest: wasm trap"),
            "{warning:?}"
        );
        assert!(!warning.message.contains('\n'), "one line: {warning:?}");
        drop(log);
        let written = std::fs::read_to_string(logs.path().join("actor.log")).unwrap();
        assert!(
            written.contains(" stderr F the actor trapped handling HandleRequest: ")
                && written.contains("wasm backtrace"),
            "the actor's log has the trap in full: {written}"
        );
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the port is closed once the actor has ended"
        );
    }
}
