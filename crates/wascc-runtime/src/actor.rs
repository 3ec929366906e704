//! One running actor: instantiated once, initialised (`_start`, `wapc_init`), then handed
//! calls one at a time (as waSCC did) until the container is stopped (gracefully when asked:
//! the requests in flight are answered first). A trap ends the
//! container, as a crash ends a process; its restart policy decides what follows.

use crate::capabilities::Delivery;
use crate::wapc::ActorState;
use kubelet::runtime::Exit;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use wasmtime::{InstancePre, Store, TypedFunc};

/// The functions a waPC guest may export to initialise itself, called in this order.
const INITIALISERS: [&str; 2] = ["_start", "wapc_init"];

/// Runs the actor: instantiates it in `store`, then handles `deliveries` until the actor
/// traps, the task is aborted (which also stops `server`), or `stop` is cancelled: then the
/// server stops accepting, the requests in flight are handled, and the run ends.
pub async fn run(
    mut store: Store<ActorState>,
    pre: InstancePre<ActorState>,
    mut deliveries: mpsc::Receiver<Delivery>,
    mut server: Option<AbortOnDropHandle<()>>,
    stop: CancellationToken,
) -> Exit {
    let exit = serve(&mut store, &pre, &mut deliveries, &mut server, &stop).await;
    // The ports are free again before the container counts as ended (a restart binds them).
    if let Some(server) = server {
        server.abort();
        let _ = server.await;
    }
    exit
}

async fn serve(
    store: &mut Store<ActorState>,
    pre: &InstancePre<ActorState>,
    deliveries: &mut mpsc::Receiver<Delivery>,
    server: &mut Option<AbortOnDropHandle<()>>,
    stop: &CancellationToken,
) -> Exit {
    let guest_call = match instantiate(store, pre).await {
        Ok(guest_call) => guest_call,
        Err(e) => return wasm_host::store::exit(store, Err(e)),
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
                let exit = wasm_host::store::exit(store, Err(e));
                if let Some(reply) = delivery.reply {
                    let _ = reply.send(Err(format!(
                        "the actor trapped handling {operation}: {}",
                        exit.message.as_deref().unwrap_or("out of memory")
                    )));
                }
                return exit;
            }
        }
    }
}

/// Completes once the actor was asked to stop and its server (if any) has finished the
/// requests in flight.
async fn drained(server: &mut Option<AbortOnDropHandle<()>>, stop: &CancellationToken) {
    stop.cancelled().await;
    if let Some(server) = server {
        let _ = server.await;
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
