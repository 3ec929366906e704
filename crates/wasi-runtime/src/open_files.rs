//! The files, directories and sockets guests open, charged to their container's descriptors
//! (`wasm_host::descriptors`): one container's guests, however many instances it has, hold at
//! most `--max-open-files-per-container`, and all containers together no more than their
//! runtime's budget.
//!
//! wasmtime-wasi has no hook where a guest opens a descriptor, so the few functions that make
//! one are put in its place in the linkers: they take a descriptor of the container first, call
//! wasmtime-wasi's own implementation, and keep the descriptor by the new resource (or preview 1
//! fd) until the guest drops or closes it. Past the cap, the call fails as the operating system
//! would fail it (`EMFILE` for preview 1, `new-socket-limit` for sockets; preview 2's filesystem
//! has no code for it, so `insufficient-memory`), and the guest goes on.

use crate::guest::{ComponentState, ModuleState};
use std::collections::HashMap;
use std::sync::Arc;
use wasm_host::descriptors::{ContainerDescriptors, DescriptorPermit, DescriptorsExhausted};
use wasmtime::component::{Resource, ResourceType};
use wasmtime::{AsContextMut, Caller, Extern, Linker};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p1::wasi_snapshot_preview1::{self as preview1, WasiSnapshotPreview1};
use wasmtime_wasi::p2::bindings::filesystem::types::{
    self as fs, DescriptorFlags, HostDescriptor, HostDirectoryEntryStream, OpenFlags, PathFlags,
};
use wasmtime_wasi::p2::bindings::sockets::network::{self, IpAddressFamily};
use wasmtime_wasi::p2::bindings::sockets::{tcp, tcp_create_socket, udp, udp_create_socket};
use wasmtime_wasi::p2::{ReaddirIterator, TcpSocket, UdpSocket};
use wasmtime_wasi::sockets::WasiSocketsView;
use wasmtime_wasi_io::streams::{DynInputStream, DynOutputStream};
use wiggle::{GuestMemory, GuestPtr};

/// The interfaces of the functions that open descriptors, as wasmtime-wasi links them.
const FILESYSTEM: &str = "wasi:filesystem/types@0.2.12";
const TCP: &str = "wasi:sockets/tcp@0.2.12";
const TCP_CREATE: &str = "wasi:sockets/tcp-create-socket@0.2.12";
const UDP: &str = "wasi:sockets/udp@0.2.12";
const UDP_CREATE: &str = "wasi:sockets/udp-create-socket@0.2.12";

/// Preview 1's module.
const PREVIEW1: &str = "wasi_snapshot_preview1";

/// Preview 1's `EMFILE` ("too many open files").
const ERRNO_MFILE: i32 = 33;

/// What one guest instance holds of its container's descriptors: its preopened directories,
/// and each descriptor it opened, by resource (or preview 1 fd).
pub struct OpenFiles {
    descriptors: Arc<ContainerDescriptors>,
    held: HashMap<u32, DescriptorPermit>,
    _preopens: Vec<DescriptorPermit>,
}

impl OpenFiles {
    /// An instance's share of `descriptors`, with `preopens` directories open; refused when
    /// the container cannot hold them.
    pub fn new(
        descriptors: Arc<ContainerDescriptors>,
        preopens: usize,
    ) -> Result<Self, DescriptorsExhausted> {
        let preopens = (0..preopens)
            .map(|_| descriptors.try_open_file())
            .collect::<Result<_, _>>()?;
        Ok(Self {
            descriptors,
            held: HashMap::new(),
            _preopens: preopens,
        })
    }

    fn open(&self) -> Result<DescriptorPermit, DescriptorsExhausted> {
        self.descriptors.try_open_file().inspect_err(|e| {
            tracing::debug!(error = %e, "a guest's open was refused");
        })
    }
}

/// Something whose store state holds an [`OpenFiles`].
pub trait HoldsOpenFiles {
    /// The instance's open files.
    fn open_files(&mut self) -> &mut OpenFiles;
}

/// Puts the component functions that open descriptors, and the destructors that close them,
/// in place of wasmtime-wasi's (which must be linked already).
pub fn add_to_component_linker(
    linker: &mut wasmtime::component::Linker<ComponentState>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut types = linker.instance(FILESYSTEM)?;
    types.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store,
         (dir, path_flags, path, open_flags, flags): (
            Resource<Descriptor>,
            PathFlags,
            String,
            OpenFlags,
            DescriptorFlags,
        )| {
            Box::new(async move {
                let state = store.data_mut();
                let Ok(permit) = state.open_files().open() else {
                    return Ok((Err(fs::ErrorCode::InsufficientMemory),));
                };
                let opened = HostDescriptor::open_at(
                    &mut state.filesystem(),
                    dir,
                    path_flags,
                    path,
                    open_flags,
                    flags,
                )
                .await;
                Ok((keep(state, opened.map_err(|e| e.downcast()), permit)?,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.read-directory",
        |mut store, (dir,): (Resource<Descriptor>,)| {
            Box::new(async move {
                let state = store.data_mut();
                let Ok(permit) = state.open_files().open() else {
                    return Ok((Err(fs::ErrorCode::InsufficientMemory),));
                };
                let opened = HostDescriptor::read_directory(&mut state.filesystem(), dir).await;
                Ok((keep(state, opened.map_err(|e| e.downcast()), permit)?,))
            })
        },
    )?;
    types.resource(
        "descriptor",
        ResourceType::host::<Descriptor>(),
        |mut store, rep| {
            let state = store.data_mut();
            state.open_files().held.remove(&rep);
            HostDescriptor::drop(&mut state.filesystem(), Resource::new_own(rep))
        },
    )?;
    types.resource(
        "directory-entry-stream",
        ResourceType::host::<ReaddirIterator>(),
        |mut store, rep| {
            let state = store.data_mut();
            state.open_files().held.remove(&rep);
            HostDirectoryEntryStream::drop(&mut state.filesystem(), Resource::new_own(rep))
        },
    )?;

    linker.instance(TCP_CREATE)?.func_wrap(
        "create-tcp-socket",
        |mut store, (family,): (IpAddressFamily,)| {
            let state = store.data_mut();
            let Ok(permit) = state.open_files().open() else {
                return Ok((Err(network::ErrorCode::NewSocketLimit),));
            };
            let created = tcp_create_socket::Host::create_tcp_socket(&mut state.sockets(), family);
            Ok((keep(state, created.map_err(|e| e.downcast()), permit)?,))
        },
    )?;
    linker.instance(UDP_CREATE)?.func_wrap_async(
        "create-udp-socket",
        |mut store, (family,): (IpAddressFamily,)| {
            Box::new(async move {
                let state = store.data_mut();
                let Ok(permit) = state.open_files().open() else {
                    return Ok((Err(network::ErrorCode::NewSocketLimit),));
                };
                let created =
                    udp_create_socket::Host::create_udp_socket(&mut state.sockets(), family).await;
                Ok((keep(state, created.map_err(|e| e.downcast()), permit)?,))
            })
        },
    )?;
    let mut tcp = linker.instance(TCP)?;
    tcp.func_wrap(
        "[method]tcp-socket.accept",
        |mut store, (listener,): (Resource<TcpSocket>,)| {
            let state = store.data_mut();
            let Ok(permit) = state.open_files().open() else {
                return Ok((Err(network::ErrorCode::NewSocketLimit),));
            };
            let accepted: Result<
                (
                    Resource<TcpSocket>,
                    Resource<DynInputStream>,
                    Resource<DynOutputStream>,
                ),
                _,
            > = tcp::HostTcpSocket::accept(&mut state.sockets(), listener);
            let accepted = match accepted.map_err(|e| e.downcast()) {
                Ok(streams) => {
                    state.open_files().held.insert(streams.0.rep(), permit);
                    Ok(streams)
                }
                Err(code) => Err(code?),
            };
            Ok((accepted,))
        },
    )?;
    tcp.resource(
        "tcp-socket",
        ResourceType::host::<TcpSocket>(),
        |mut store, rep| {
            let state = store.data_mut();
            state.open_files().held.remove(&rep);
            tcp::HostTcpSocket::drop(&mut state.sockets(), Resource::new_own(rep))
        },
    )?;
    linker.instance(UDP)?.resource(
        "udp-socket",
        ResourceType::host::<UdpSocket>(),
        |mut store, rep| {
            let state = store.data_mut();
            state.open_files().held.remove(&rep);
            udp::HostUdpSocket::drop(&mut state.sockets(), Resource::new_own(rep))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Keeps `permit` by the resource `opened` when it was opened; an error code goes back to
/// the guest (and `permit` with it), anything else traps.
fn keep<T: 'static, E>(
    state: &mut ComponentState,
    opened: Result<Resource<T>, wasmtime::Result<E>>,
    permit: DescriptorPermit,
) -> wasmtime::Result<Result<Resource<T>, E>> {
    match opened {
        Ok(resource) => {
            state.open_files().held.insert(resource.rep(), permit);
            Ok(Ok(resource))
        }
        Err(code) => Ok(Err(code?)),
    }
}

/// Puts preview 1's functions that open and close descriptors (`path_open`, `fd_close`,
/// `fd_renumber`) in place of wasmtime-wasi's; they call wasmtime-wasi's own implementations of
/// them, as its linker does.
pub fn add_to_module_linker(linker: &mut Linker<ModuleState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap_async(
        PREVIEW1,
        "path_open",
        |mut caller: Caller<'_, ModuleState>,
         (dir, lookup, path, path_len, open, base, inheriting, flags, opened_at): (
            i32,
            i32,
            i32,
            i32,
            i32,
            i64,
            i64,
            i32,
            i32,
        )| {
            Box::new(async move {
                let (wasi, files, mut bytes) = preview1_call(&mut caller)?;
                let Ok(permit) = files.open() else {
                    return Ok(ERRNO_MFILE);
                };
                let errno = preview1::path_open(
                    wasi, &mut bytes, dir, lookup, path, path_len, open, base, inheriting, flags,
                    opened_at,
                )
                .await?;
                if errno == 0 {
                    let fd = bytes.read(GuestPtr::<u32>::new(opened_at as u32))?;
                    files.held.insert(fd, permit);
                }
                Ok(errno)
            })
        },
    )?;
    linker.func_wrap_async(
        PREVIEW1,
        "fd_close",
        |mut caller: Caller<'_, ModuleState>, (fd,): (i32,)| {
            Box::new(async move {
                let (wasi, files, mut bytes) = preview1_call(&mut caller)?;
                let errno = preview1::fd_close(wasi, &mut bytes, fd).await?;
                if errno == 0 {
                    files.held.remove(&(fd as u32));
                }
                Ok(errno)
            })
        },
    )?;
    linker.func_wrap_async(
        PREVIEW1,
        "fd_renumber",
        |mut caller: Caller<'_, ModuleState>, (from, to): (i32, i32)| {
            Box::new(async move {
                let (wasi, files, mut bytes) = preview1_call(&mut caller)?;
                let errno = preview1::fd_renumber(wasi, &mut bytes, from, to).await?;
                if errno == 0 && from != to {
                    // `to` was closed, and `from` is known as `to` now.
                    files.held.remove(&(to as u32));
                    if let Some(permit) = files.held.remove(&(from as u32)) {
                        files.held.insert(to as u32, permit);
                    }
                }
                Ok(errno)
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// What a call of wasmtime-wasi's preview 1 functions takes, found as its own linker finds it:
/// the module's WASI context (given the call's fuel) and the calling module's memory; and the
/// descriptors the module holds.
fn preview1_call<'a>(
    caller: &'a mut Caller<'_, ModuleState>,
) -> wasmtime::Result<(&'a mut WasiP1Ctx, &'a mut OpenFiles, GuestMemory<'a>)> {
    let fuel = caller.as_context_mut().hostcall_fuel();
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        wasmtime::bail!("missing required memory export");
    };
    let (bytes, state) = memory.data_and_store_mut(caller);
    let (wasi, files) = state.split();
    wasi.set_hostcall_fuel(fuel);
    Ok((wasi, files, GuestMemory::Unshared(bytes)))
}
