//! The file descriptors a runtime's guests and their clients make its process hold: connections
//! to served ports, outgoing connections, name lookups' sockets, and the files, directories and
//! sockets guests open. One process holds many tenants' pods, so every descriptor is charged to
//! the container it serves, and the process's total stays below its open-file limit.
//!
//! A runtime has one [`DescriptorBudget`] of `size` descriptors. Each container reserves its
//! guaranteed share when it starts (a container the budget cannot guarantee is refused, as
//! the node admits no more than it can hold) and borrows beyond it from what no container
//! reserved. The files and sockets its guests open are capped per container as well. So no set
//! of pods, however busy, leaves a pod without its guaranteed descriptors, and none can take the
//! process's: what does not fit fails for the pod that asked.

pub use kubelet::runtime::DescriptorLimits;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// A runtime's descriptors, and what each container is guaranteed of them.
#[derive(Debug)]
pub struct DescriptorBudget {
    /// Descriptors no container has reserved and none borrowed.
    unreserved: Arc<Semaphore>,
    size: u32,
    guaranteed: u32,
    open_files_per_container: u32,
}

/// A descriptor (or a container's guarantee) could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescriptorsExhausted {
    /// The budget is promised to other containers: this one cannot be guaranteed its share.
    #[error(
        "this runtime's {size} file descriptors for pods are promised to other containers or held by them, and this one is guaranteed {guaranteed} (--guaranteed-descriptors-per-container); the node runs no more containers than it can guarantee: run the pod on another node, or give this one a larger --max-pod-descriptors (and open-file limit) or more --runtime-workers"
    )]
    Guarantee {
        /// The runtime's budget.
        size: u32,
        /// What a container is guaranteed.
        guaranteed: u32,
    },
    /// The container's guests hold as many files and sockets as they may.
    #[error(
        "this container's guests have {cap} files and sockets open, the most they may (--max-open-files-per-container): close some, or give the node a larger cap"
    )]
    ContainerFiles {
        /// The per-container cap.
        cap: u32,
    },
    /// The container has used its guarantee and the rest of the budget is held by others.
    #[error(
        "this container holds its {guaranteed} guaranteed file descriptors and all of the {size} this runtime has for pods are held (--max-pod-descriptors): try again when other pods hold fewer, or give the node a larger --max-pod-descriptors (and open-file limit) or more --runtime-workers"
    )]
    Budget {
        /// The runtime's budget.
        size: u32,
        /// What a container is guaranteed.
        guaranteed: u32,
    },
}

impl DescriptorBudget {
    /// A budget within `limits`: of `limits.total` descriptors, or three quarters of the
    /// process's open-file limit (read now, after the node raised it).
    pub fn new(limits: DescriptorLimits) -> Arc<Self> {
        let size = limits
            .total
            .unwrap_or_else(|| default_total(open_files_limit()));
        Arc::new(Self {
            unreserved: Arc::new(Semaphore::new(size as usize)),
            size,
            guaranteed: limits.guaranteed_per_container.min(size),
            open_files_per_container: limits.open_files_per_container.max(1),
        })
    }

    /// The descriptors this budget has for containers.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Reserves a new container's guarantee; refused when the budget cannot hold it beside
    /// everything reserved and borrowed.
    pub fn reserve(self: &Arc<Self>) -> Result<Arc<ContainerDescriptors>, DescriptorsExhausted> {
        let reservation = match self
            .unreserved
            .clone()
            .try_acquire_many_owned(self.guaranteed)
        {
            Ok(permit) => Some(permit),
            Err(TryAcquireError::NoPermits) => {
                return Err(DescriptorsExhausted::Guarantee {
                    size: self.size,
                    guaranteed: self.guaranteed,
                });
            }
            Err(TryAcquireError::Closed) => None,
        };
        Ok(Arc::new(ContainerDescriptors {
            budget: self.clone(),
            _reservation: reservation,
            reserved_free: AtomicU32::new(self.guaranteed),
            open_files: AtomicU32::new(0),
        }))
    }
}

/// Three quarters of `limit`: the rest is the node's own (its API connections, logs, compiled
/// guests' files, the kubelet API's clients).
fn default_total(limit: u64) -> u32 {
    u32::try_from(limit.saturating_mul(3) / 4).unwrap_or(u32::MAX)
}

/// The process's open-file limit (the soft one, which the node raised at its start).
fn open_files_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::from(u32::MAX))
}

/// One container's share of its runtime's descriptors.
#[derive(Debug)]
pub struct ContainerDescriptors {
    budget: Arc<DescriptorBudget>,
    /// The guarantee, given back to the budget when the container ends.
    _reservation: Option<OwnedSemaphorePermit>,
    /// How much of the guarantee is not in use.
    reserved_free: AtomicU32,
    /// Files, directories and sockets the container's guests hold.
    open_files: AtomicU32,
}

/// What a held descriptor (or a few) takes of its container's share; given back when dropped.
#[derive(Debug)]
#[must_use = "the descriptors are given back when this is dropped"]
pub struct DescriptorPermit {
    container: Arc<ContainerDescriptors>,
    count: u32,
    /// Set when they were borrowed beyond the guarantee.
    borrowed: Option<OwnedSemaphorePermit>,
    /// Whether they count among the guests' open files.
    open_file: bool,
}

impl ContainerDescriptors {
    /// Takes `count` descriptors for a connection or a name lookup: from the guarantee while it
    /// lasts, then borrowed from the budget.
    pub fn try_take(
        self: &Arc<Self>,
        count: u32,
    ) -> Result<DescriptorPermit, DescriptorsExhausted> {
        let reserved = self
            .reserved_free
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
                free.checked_sub(count)
            })
            .is_ok();
        let borrowed = if reserved {
            None
        } else {
            let permit = self
                .budget
                .unreserved
                .clone()
                .try_acquire_many_owned(count)
                .map_err(|_| DescriptorsExhausted::Budget {
                    size: self.budget.size,
                    guaranteed: self.budget.guaranteed,
                })?;
            Some(permit)
        };
        Ok(DescriptorPermit {
            container: self.clone(),
            count,
            borrowed,
            open_file: false,
        })
    }

    /// Takes a descriptor for a file, directory or socket a guest opens, within the container's
    /// cap on those.
    pub fn try_open_file(self: &Arc<Self>) -> Result<DescriptorPermit, DescriptorsExhausted> {
        let cap = self.budget.open_files_per_container;
        self.open_files
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < cap).then_some(open + 1)
            })
            .map_err(|_| DescriptorsExhausted::ContainerFiles { cap })?;
        match self.try_take(1) {
            Ok(mut permit) => {
                permit.open_file = true;
                Ok(permit)
            }
            Err(e) => {
                self.open_files.fetch_sub(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    /// Files, directories and sockets the container's guests hold now.
    pub fn open_files(&self) -> u32 {
        self.open_files.load(Ordering::Acquire)
    }
}

impl Drop for DescriptorPermit {
    fn drop(&mut self) {
        if self.open_file {
            self.container.open_files.fetch_sub(1, Ordering::AcqRel);
        }
        if self.borrowed.is_none() {
            self.container
                .reserved_free
                .fetch_add(self.count, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(total: u32, guaranteed: u32, files: u32) -> Arc<DescriptorBudget> {
        DescriptorBudget::new(DescriptorLimits {
            total: Some(total),
            guaranteed_per_container: guaranteed,
            open_files_per_container: files,
        })
    }

    #[test]
    fn a_container_past_its_guarantee_borrows_what_no_one_reserved() {
        let budget = budget(10, 2, 100);
        let noisy = budget.reserve().unwrap();
        let quiet = budget.reserve().unwrap();
        // 6 unreserved: the noisy container takes its 2 and all 6.
        let held: Vec<_> = (0..8).map(|_| noisy.try_take(1).unwrap()).collect();
        assert!(matches!(
            noisy.try_take(1),
            Err(DescriptorsExhausted::Budget {
                size: 10,
                guaranteed: 2
            })
        ));
        // The quiet one still has its guarantee, and no more.
        let a = quiet.try_take(1).unwrap();
        let b = quiet.try_take(1).unwrap();
        assert!(quiet.try_take(1).is_err());
        // A third container cannot be guaranteed anything while all is held.
        assert!(matches!(
            budget.reserve(),
            Err(DescriptorsExhausted::Guarantee { .. })
        ));
        drop(held);
        drop((a, b));
        assert!(budget.reserve().is_ok());
    }

    #[test]
    fn guests_files_are_capped_per_container_and_given_back() {
        let budget = budget(100, 4, 3);
        let container = budget.reserve().unwrap();
        let files: Vec<_> = (0..3).map(|_| container.try_open_file().unwrap()).collect();
        assert_eq!(container.open_files(), 3);
        assert_eq!(
            container.try_open_file().unwrap_err(),
            DescriptorsExhausted::ContainerFiles { cap: 3 }
        );
        // Connections are not files: they still fit.
        let _connection = container.try_take(1).unwrap();
        drop(files);
        assert_eq!(container.open_files(), 0);
        assert!(container.try_open_file().is_ok());
    }

    #[test]
    fn a_refused_file_takes_nothing() {
        let budget = budget(2, 1, 10);
        let a = budget.reserve().unwrap();
        let b = budget.reserve().unwrap();
        let _held = a.try_open_file().unwrap();
        let _held_b = b.try_take(1).unwrap();
        assert!(matches!(
            a.try_open_file(),
            Err(DescriptorsExhausted::Budget { .. })
        ));
        assert_eq!(a.open_files(), 1);
    }

    #[test]
    fn a_container_that_ends_gives_its_guarantee_back() {
        let budget = budget(4, 4, 10);
        let container = budget.reserve().unwrap();
        assert!(budget.reserve().is_err());
        drop(container);
        assert!(budget.reserve().is_ok());
    }

    #[test]
    fn the_default_total_leaves_a_quarter_to_the_node() {
        assert_eq!(default_total(20_000), 15_000);
        assert_eq!(default_total(u64::MAX), u32::MAX);
    }
}
