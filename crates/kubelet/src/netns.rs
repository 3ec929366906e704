//! Network namespaces of pods, as files: made by the agent (a new namespace bind-mounted on a
//! file, as `ip netns add` and containerd do), opened by whichever process runs the pod's
//! guests, and entered by the thread doing the guest's work for exactly as long as that work
//! takes, so that every socket a guest or its host code makes lands in its pod's network.
//!
//! A socket belongs to the network namespace of the thread that creates it. Guests run on
//! threads every pod shares, so a pod's work is wrapped in [`InNetns`]: each poll enters the
//! pod's namespace and leaves it again before returning, and nothing else ever runs on the
//! thread in between. Sockets made inside keep their namespace (an accepted connection takes
//! its listener's), so connecting, sending and accepting later need no entering.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use rustix::fs::{Mode, OFlags};
use rustix::thread::LinkNameSpaceType;

/// Makes a new network namespace and pins it at `path` (a new empty file, bind-mounted with
/// the namespace); it lives until [`remove`]. An existing namespace file at `path` is kept.
pub fn create(path: &Path) -> io::Result<()> {
    if is_namespace(path) {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let target = path.to_path_buf();
    // A thread of its own unshares its network namespace, pins it and ends: no other work
    // ever runs in it, and the process's other threads are untouched.
    let pinned = std::thread::Builder::new()
        .name("netns-create".into())
        .spawn(move || -> io::Result<()> {
            // SAFETY: only the network namespace is unshared (not the file table), so no
            // thread observes file descriptors from another table.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }?;
            rustix::mount::mount_bind("/proc/thread-self/ns/net", &target)?;
            Ok(())
        })?
        .join()
        .map_err(|_| io::Error::other("the thread making a network namespace panicked"))?;
    if let Err(e) = pinned {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// Whether `path` is a pinned network namespace (a bind mount of one).
pub fn is_namespace(path: &Path) -> bool {
    // A pinned namespace lives on the nsfs file system, unlike the empty file beneath it.
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    // `f_type` is a different integer type on different architectures.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type as i64 == NSFS_MAGIC)
}

/// Unpins the namespace at `path` and removes the file. The namespace ends once nothing uses it
/// any more (its sockets and interfaces go with it). A missing file is no error.
pub fn remove(path: &Path) -> io::Result<()> {
    while is_namespace(path) {
        rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The namespace of the process's own network (the node's), which threads return to.
fn node_namespace() -> io::Result<&'static OwnedFd> {
    static NODE: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(fd) = NODE.get() {
        return Ok(fd);
    }
    // Opened before any thread first enters a pod's namespace (an entered thread always
    // leaves before doing anything else), so this is the node's.
    let fd = open_namespace(Path::new("/proc/thread-self/ns/net"))?;
    Ok(NODE.get_or_init(|| fd))
}

fn open_namespace(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

thread_local! {
    /// Whether this thread is inside a pod's namespace right now.
    static ENTERED: Cell<bool> = const { Cell::new(false) };
}

/// A pod's network namespace, open: entering it needs no path lookup, and the namespace lives
/// at least as long as this.
#[derive(Debug)]
pub struct PodNetns {
    fd: OwnedFd,
    path: PathBuf,
}

impl PodNetns {
    /// Opens the pinned namespace at `path`.
    pub fn open(path: &Path) -> io::Result<Arc<Self>> {
        node_namespace()?;
        if !is_namespace(path) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not a network namespace", path.display()),
            ));
        }
        Ok(Arc::new(Self {
            fd: open_namespace(path)?,
            path: path.to_path_buf(),
        }))
    }

    /// Where the namespace is pinned.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` on this thread inside the namespace, then returns the thread to the node's
    /// network. Fails (without running `work`) when the namespace cannot be entered.
    ///
    /// # Panics
    /// Aborts the process when the thread cannot return to the node's network: it would
    /// otherwise go on to run other pods' work inside this pod's network.
    pub fn enter<T>(&self, work: impl FnOnce() -> T) -> io::Result<T> {
        if ENTERED.get() {
            // Work nested in this pod's own entered work.
            return Ok(work());
        }
        let node = node_namespace()?;
        rustix::thread::move_into_link_name_space(
            self.fd.as_fd(),
            Some(LinkNameSpaceType::Network),
        )?;
        ENTERED.set(true);
        struct Leave(&'static OwnedFd);
        impl Drop for Leave {
            fn drop(&mut self) {
                ENTERED.set(false);
                if let Err(e) = rustix::thread::move_into_link_name_space(
                    self.0.as_fd(),
                    Some(LinkNameSpaceType::Network),
                ) {
                    eprintln!("a thread could not leave a pod's network namespace ({e}); stopping");
                    std::process::abort();
                }
            }
        }
        let _leave = Leave(node);
        Ok(work())
    }
}

pin_project_lite::pin_project! {
    /// A future whose every poll runs inside a pod's network namespace (or, without one, in
    /// the node's network, as before, at no cost).
    pub struct InNetns<F> {
        netns: Option<Arc<PodNetns>>,
        #[pin]
        inner: F,
    }
}

impl<F: Future> InNetns<F> {
    /// `inner`, polled inside `netns` when there is one.
    pub fn new(netns: Option<Arc<PodNetns>>, inner: F) -> Self {
        Self { netns, inner }
    }
}

impl<F: Future> Future for InNetns<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let Some(netns) = this.netns.as_ref() else {
            return this.inner.poll(cx);
        };
        let inner = this.inner;
        match netns.enter(|| inner.poll(cx)) {
            Ok(polled) => polled,
            // Running the guest's work in the node's network instead would hand it the
            // node's; its task ends here, which its container reports as a failure.
            Err(e) => panic!(
                "entering the pod's network namespace {} failed: {e}",
                netns.path().display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn can_make_namespaces() -> bool {
        rustix::process::geteuid().is_root()
    }

    #[test]
    fn sockets_made_inside_belong_to_the_pod() {
        if !can_make_namespaces() {
            eprintln!("skipped: making network namespaces needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pod");
        // Unpinned also when an assertion fails.
        struct Pinned(PathBuf);
        impl Drop for Pinned {
            fn drop(&mut self) {
                let _ = remove(&self.0);
            }
        }
        let _pinned = Pinned(path.clone());
        create(&path).unwrap();
        create(&path).unwrap();
        assert!(is_namespace(&path));
        let netns = PodNetns::open(&path).unwrap();
        let current = || std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let node = current();
        let inside = netns.enter(current).unwrap();
        assert_ne!(inside, node, "the work ran in the pod's namespace");
        assert_eq!(current(), node, "the thread is back in the node's");
        // A listener made inside is not reachable from the node's loopback.
        let listener = netns
            .enter(|| std::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap()
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
        // And a future polled in it runs there at every poll.
        let polled = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(InNetns::new(Some(netns.clone()), async move {
                tokio::task::yield_now().await;
                current()
            }));
        assert_eq!(polled, inside);
        assert_eq!(current(), node);
        drop(netns);
        remove(&path).unwrap();
        assert!(!path.exists());
        remove(&path).unwrap();
    }
}
