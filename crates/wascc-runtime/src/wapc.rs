//! The waPC host ABI on wasmtime. The host hands the guest an operation and a payload
//! (`__guest_call(op_len, req_len)`, then the guest copies them in with `__guest_request`); the
//! guest answers with `__guest_response` or `__guest_error`, and may call the host meanwhile
//! (`__host_call`, whose result it reads with `__host_response*` / `__host_error*`). Every
//! access to guest memory is bounds-checked: a bad pointer traps the guest, never the host.

use crate::capabilities::Host;
use wasm_host::limits::GuestLimits;
use wasm_host::store::Limited;
use wasmtime::{Caller, Extern, Linker, Memory};

/// The import module of the waPC host functions.
const WAPC: &str = "wapc";

/// The buffers of one exchange between host and guest.
#[derive(Debug, Default)]
struct Exchange {
    operation: Vec<u8>,
    request: Vec<u8>,
    response: Option<Vec<u8>>,
    error: Option<String>,
    host_response: Vec<u8>,
    host_error: String,
}

/// Store state of an actor instance.
pub struct ActorState {
    exchange: Exchange,
    limits: GuestLimits,
    host: Host,
}

impl Limited for ActorState {
    fn limits(&mut self) -> &mut GuestLimits {
        &mut self.limits
    }
}

impl ActorState {
    /// The state of an actor with `limits` whose host calls go to `host`.
    pub fn new(limits: GuestLimits, host: Host) -> Self {
        Self {
            exchange: Exchange::default(),
            limits,
            host,
        }
    }

    /// The actor's host: its capabilities and its log.
    pub fn host_mut(&mut self) -> &mut Host {
        &mut self.host
    }

    /// Prepares the exchange for a guest call of `operation` with `payload`.
    pub fn begin_call(&mut self, operation: &str, payload: Vec<u8>) {
        self.exchange = Exchange {
            operation: operation.as_bytes().to_vec(),
            request: payload,
            ..Exchange::default()
        };
    }

    /// The length of the pending call's payload.
    pub fn request_len(&self) -> usize {
        self.exchange.request.len()
    }

    /// What the guest answered to the call: its response, or its error.
    pub fn end_call(&mut self, succeeded: bool) -> Result<Vec<u8>, String> {
        let exchange = std::mem::take(&mut self.exchange);
        match (succeeded, exchange.response, exchange.error) {
            (true, Some(response), _) => Ok(response),
            (true, None, _) => Ok(Vec::new()),
            (false, _, Some(error)) => Err(error),
            (false, _, None) => Err("the actor reported a failure without a message".into()),
        }
    }
}

/// Adds the waPC host functions to `linker`.
pub fn add_to_linker(linker: &mut Linker<ActorState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        WAPC,
        "__guest_request",
        |mut caller: Caller<'_, ActorState>, op_ptr: i32, ptr: i32| {
            let operation = std::mem::take(&mut caller.data_mut().exchange.operation);
            let request = std::mem::take(&mut caller.data_mut().exchange.request);
            write(&mut caller, op_ptr, &operation)?;
            write(&mut caller, ptr, &request)?;
            caller.data_mut().exchange.operation = operation;
            caller.data_mut().exchange.request = request;
            Ok(())
        },
    )?;
    linker.func_wrap(
        WAPC,
        "__guest_response",
        |mut caller: Caller<'_, ActorState>, ptr: i32, len: i32| {
            let response = read(&mut caller, ptr, len)?;
            caller.data_mut().exchange.response = Some(response);
            Ok(())
        },
    )?;
    linker.func_wrap(
        WAPC,
        "__guest_error",
        |mut caller: Caller<'_, ActorState>, ptr: i32, len: i32| {
            let error = read(&mut caller, ptr, len)?;
            caller.data_mut().exchange.error = Some(String::from_utf8_lossy(&error).into_owned());
            Ok(())
        },
    )?;
    linker.func_wrap(
        WAPC,
        "__host_response",
        |mut caller: Caller<'_, ActorState>, ptr: i32| {
            let response = std::mem::take(&mut caller.data_mut().exchange.host_response);
            write(&mut caller, ptr, &response)?;
            caller.data_mut().exchange.host_response = response;
            Ok(())
        },
    )?;
    linker.func_wrap(
        WAPC,
        "__host_response_len",
        |caller: Caller<'_, ActorState>| -> i32 {
            len_i32(caller.data().exchange.host_response.len())
        },
    )?;
    linker.func_wrap(
        WAPC,
        "__host_error",
        |mut caller: Caller<'_, ActorState>, ptr: i32| {
            let error = std::mem::take(&mut caller.data_mut().exchange.host_error);
            write(&mut caller, ptr, error.as_bytes())?;
            caller.data_mut().exchange.host_error = error;
            Ok(())
        },
    )?;
    linker.func_wrap(
        WAPC,
        "__host_error_len",
        |caller: Caller<'_, ActorState>| -> i32 {
            len_i32(caller.data().exchange.host_error.len())
        },
    )?;
    linker.func_wrap_async(
        WAPC,
        "__console_log",
        |mut caller: Caller<'_, ActorState>, (ptr, len): (i32, i32)| {
            Box::new(async move {
                let text = read(&mut caller, ptr, len)?;
                caller
                    .data_mut()
                    .host
                    .console_log(&String::from_utf8_lossy(&text))
                    .await;
                Ok(())
            })
        },
    )?;
    linker.func_wrap_async(
        WAPC,
        "__host_call",
        |mut caller: Caller<'_, ActorState>,
         (bd_ptr, bd_len, ns_ptr, ns_len, op_ptr, op_len, ptr, len): (
            i32,
            i32,
            i32,
            i32,
            i32,
            i32,
            i32,
            i32,
        )| {
            Box::new(async move {
                let binding = read_string(&mut caller, bd_ptr, bd_len)?;
                let namespace = read_string(&mut caller, ns_ptr, ns_len)?;
                let operation = read_string(&mut caller, op_ptr, op_len)?;
                let payload = read(&mut caller, ptr, len)?;
                let state = caller.data_mut();
                let outcome = state
                    .host
                    .call(&binding, &namespace, &operation, payload)
                    .await;
                Ok(match outcome {
                    Ok(response) => {
                        state.exchange.host_response = response;
                        state.exchange.host_error.clear();
                        1
                    }
                    Err(error) => {
                        state.exchange.host_response.clear();
                        state.exchange.host_error = error;
                        0
                    }
                })
            })
        },
    )?;
    Ok(())
}

fn len_i32(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(i32::MAX)
}

fn memory(caller: &mut Caller<'_, ActorState>) -> wasmtime::Result<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => Ok(memory),
        _ => wasmtime::bail!("the actor exports no memory named `memory`, which waPC needs"),
    }
}

/// Reads `len` bytes at `ptr` of the guest's memory; out of bounds traps the guest. The bounds
/// are checked before anything is allocated, so a guest can make the host copy at most what
/// its own memory holds.
fn read(caller: &mut Caller<'_, ActorState>, ptr: i32, len: i32) -> wasmtime::Result<Vec<u8>> {
    let memory = memory(caller)?;
    let start = ptr as u32 as usize;
    let end = start.saturating_add(len as u32 as usize);
    memory
        .data(&caller)
        .get(start..end)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| wasmtime::format_err!("the actor passed a buffer outside its memory"))
}

fn read_string(
    caller: &mut Caller<'_, ActorState>,
    ptr: i32,
    len: i32,
) -> wasmtime::Result<String> {
    String::from_utf8(read(caller, ptr, len)?)
        .map_err(|_| wasmtime::format_err!("the actor passed a name that is not UTF-8"))
}

/// Writes `bytes` at `ptr` of the guest's memory; out of bounds traps the guest.
fn write(caller: &mut Caller<'_, ActorState>, ptr: i32, bytes: &[u8]) -> wasmtime::Result<()> {
    let memory = memory(caller)?;
    memory
        .write(caller, ptr as u32 as usize, bytes)
        .map_err(|_| wasmtime::format_err!("the actor passed a buffer outside its memory"))
}
