//! Stores that enforce a container's limits: the memory cap through wasmtime's resource
//! limiter, the CPU share and cooperative scheduling at every epoch tick.

use crate::limits::GuestLimits;
use kubelet::runtime::Exit;
use wasmtime::{Engine, Store, UpdateDeadline};

/// Exit code for a trap, as the wasmtime CLI reports it (128 + SIGABRT).
pub const TRAP_EXIT_CODE: i32 = 134;

/// Store state that carries a guest's limits.
pub trait Limited: Send + 'static {
    /// The store's limits.
    fn limits(&mut self) -> &mut GuestLimits;
}

/// A store that enforces its state's limits and yields to other tasks at every epoch tick.
pub fn limited_store<T: Limited>(engine: &Engine, state: T) -> Store<T> {
    let mut store = Store::new(engine, state);
    store.limiter(|state| state.limits().memory());
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut cx| {
        let pause = cx.data_mut().limits().tick()?;
        Ok(if pause.is_zero() {
            UpdateDeadline::Yield(1)
        } else {
            UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep(pause)))
        })
    });
    store
}

/// How a guest's run ended, from its exit code or the error that ended it: a memory limit
/// reached is OOMKilled, any other error a trap with its message.
pub fn exit<T: Limited>(store: &mut Store<T>, outcome: &wasmtime::Result<i32>) -> Exit {
    if let Some(limit) = store.data_mut().limits().memory().exceeded() {
        return Exit::out_of_memory(limit);
    }
    match outcome {
        Ok(code) => Exit {
            code: *code,
            reason: None,
            message: None,
        },
        Err(e) => Exit {
            code: TRAP_EXIT_CODE,
            reason: None,
            message: Some(format!("{e:#}")),
        },
    }
}
