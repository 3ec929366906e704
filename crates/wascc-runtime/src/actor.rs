//! One running actor: instantiated once, initialised (`_start`, `wapc_init`), then handed
//! calls one at a time (as waSCC did) until the container is stopped. A trap ends the
//! container, as a crash ends a process; its restart policy decides what follows.

use crate::capabilities::Delivery;
use crate::wapc::ActorState;
use kubelet::runtime::Exit;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;
use wasmtime::{InstancePre, Store, TypedFunc};

/// The functions a waPC guest may export to initialise itself, called in this order.
const INITIALISERS: [&str; 2] = ["_start", "wapc_init"];

/// Runs the actor: instantiates it in `store`, then handles `deliveries` until the task is
/// aborted (which also stops `server`) or the actor traps.
pub async fn run(
    mut store: Store<ActorState>,
    pre: InstancePre<ActorState>,
    mut deliveries: mpsc::Receiver<Delivery>,
    server: Option<AbortOnDropHandle<()>>,
) -> Exit {
    let exit = serve(&mut store, &pre, &mut deliveries).await;
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
) -> Exit {
    let guest_call = match instantiate(store, pre).await {
        Ok(guest_call) => guest_call,
        Err(e) => return wasm_host::store::exit(store, Err(e)),
    };
    while let Some(delivery) = deliveries.recv().await {
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
    Exit::killed()
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
