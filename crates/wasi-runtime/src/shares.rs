//! The pooling allocator's instances, shared among a runtime's wasi-http containers so that
//! none can starve another. A request takes a fixed number of the pool's slots (its
//! component's core instances, memories or tables, whichever are most: [`RequestCost`]). Each
//! container reserves its guaranteed requests' worth when it starts, and is refused when the
//! pool cannot hold that (the runtime serves no more HTTP containers than it can guarantee);
//! requests past its guarantee borrow from what no container reserved, up to the container's
//! own cap. So no set of pods at their caps can keep a pod from its guaranteed requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmparser::{Parser, Payload};

/// What one request's instance takes of each of the pool's kinds of slot, at most: a
/// component instance and a stack, and this many core instances, memories and tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestCost(u32);

impl RequestCost {
    /// The cost of an instance of the component `bytes`: its core module instantiations, or
    /// the memories or tables its modules define, whichever are most (at least one). Bytes that
    /// cannot be read cost one (compiling them says what is wrong).
    pub fn of_component(bytes: &[u8]) -> Self {
        let (mut instances, mut memories, mut tables) = (0u32, 0u32, 0u32);
        for payload in Parser::new(0).parse_all(bytes) {
            match payload {
                Ok(Payload::InstanceSection(section)) => {
                    let instantiations = section.into_iter().filter(|instance| {
                        matches!(instance, Ok(wasmparser::Instance::Instantiate { .. }))
                    });
                    instances = instances.saturating_add(count(instantiations.count()));
                }
                Ok(Payload::MemorySection(section)) => {
                    memories = memories.saturating_add(section.count());
                }
                Ok(Payload::TableSection(section)) => {
                    tables = tables.saturating_add(section.count());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        Self(instances.max(memories).max(tables).max(1))
    }

    /// The slots it takes.
    pub fn slots(self) -> u32 {
        self.0
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// How long a container that the pool can guarantee waits for the slots other containers'
/// requests borrowed to come back. While it waits, slots given back go to it first, so bursts
/// elsewhere cannot keep it out.
pub const RESERVATION_WAIT: Duration = Duration::from_secs(10);

/// A runtime's pool of HTTP instance slots and what each container is guaranteed of it.
#[derive(Debug)]
pub struct InstancePool {
    /// The slots no container has reserved and no borrowed request holds.
    unreserved: Arc<Semaphore>,
    /// The slots containers' guarantees take together (whether reserved yet or waiting).
    promised: Arc<AtomicU32>,
    size: u32,
    guaranteed_requests: u32,
}

/// A container's guarantee could not be reserved.
#[derive(Debug, thiserror::Error)]
pub enum PoolFull {
    /// The pool is promised to other containers.
    #[error(
        "this runtime's pool of {size} HTTP instances has {left} not promised to other containers, and this one needs {needed} for the {guaranteed} request(s) every container is guaranteed at once ({cost} instance(s) each, --http-guaranteed-requests-per-container); the node serves no more HTTP containers than it can guarantee: run the pod on another node, or give this one a larger --http-pool-instances or more --runtime-workers"
    )]
    Promised {
        /// The pool's slots.
        size: u32,
        /// Those not promised.
        left: u32,
        /// Those the container needs.
        needed: u32,
        /// The requests it would be guaranteed.
        guaranteed: u32,
        /// What one request takes.
        cost: u32,
    },
    /// Other containers' requests held the slots it needs for longer than it may wait.
    #[error(
        "other pods' requests held the {needed} HTTP instances this container is to be guaranteed for {wait:?}; it is started again shortly"
    )]
    Lent {
        /// Those the container needs.
        needed: u32,
        /// How long it waited.
        wait: Duration,
    },
}

impl InstancePool {
    /// A pool of `size` slots, of which every container is guaranteed `guaranteed_requests`
    /// requests' worth (at least one).
    pub fn new(size: u32, guaranteed_requests: u32) -> Arc<Self> {
        Arc::new(Self {
            unreserved: Arc::new(Semaphore::new(size as usize)),
            promised: Arc::default(),
            size,
            guaranteed_requests: guaranteed_requests.max(1),
        })
    }

    /// Reserves the guarantee of a container whose requests cost `cost` each and of which at
    /// most `max_in_flight` may be in flight: refused at once when the pool is promised to
    /// others, else waits up to `wait` for slots other containers' requests borrowed. The
    /// reservation lasts as long as the share.
    pub async fn reserve(
        self: &Arc<Self>,
        cost: RequestCost,
        max_in_flight: usize,
        wait: Duration,
    ) -> Result<ContainerShare, PoolFull> {
        let max_in_flight = max_in_flight.max(1);
        let guaranteed = count(max_in_flight).min(self.guaranteed_requests);
        let needed = guaranteed.saturating_mul(cost.slots());
        let size = self.size;
        let promise = self
            .promised
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |promised| {
                promised.checked_add(needed).filter(|total| *total <= size)
            })
            .map(|_| Promise {
                promised: self.promised.clone(),
                slots: needed,
            })
            .map_err(|promised| PoolFull::Promised {
                size,
                left: size.saturating_sub(promised),
                needed,
                guaranteed,
                cost: cost.slots(),
            })?;
        let reservation =
            tokio::time::timeout(wait, self.unreserved.clone().acquire_many_owned(needed))
                .await
                .map_err(|_| PoolFull::Lent { needed, wait })?
                .expect("the pool's semaphore is never closed");
        Ok(ContainerShare {
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            guaranteed: Arc::new(Semaphore::new(guaranteed as usize)),
            guaranteed_requests: guaranteed,
            unreserved: self.unreserved.clone(),
            cost,
            _reservation: reservation,
            _promise: promise,
        })
    }
}

/// A container's place among the pool's guarantees, given up when dropped.
#[derive(Debug)]
struct Promise {
    promised: Arc<AtomicU32>,
    slots: u32,
}

impl Drop for Promise {
    fn drop(&mut self) {
        self.promised.fetch_sub(self.slots, Ordering::AcqRel);
    }
}

/// What one container holds of its runtime's pool: its guaranteed requests, reserved for it
/// alone, and the right to borrow unreserved slots up to its cap.
#[derive(Debug)]
pub struct ContainerShare {
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    guaranteed: Arc<Semaphore>,
    guaranteed_requests: u32,
    unreserved: Arc<Semaphore>,
    cost: RequestCost,
    _reservation: OwnedSemaphorePermit,
    _promise: Promise,
}

/// A request's place: held by its instance until it ends, then given back.
#[derive(Debug)]
pub struct RequestSlot {
    _in_flight: OwnedSemaphorePermit,
    _slots: OwnedSemaphorePermit,
}

/// Why a request found no place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoSlot {
    /// The container has as many requests in flight as it may.
    #[error(
        "this container has {0} requests in flight, the most it may (--max-http-requests-per-container); try again"
    )]
    ContainerCap(usize),
    /// Its guaranteed requests are in flight and other containers' requests hold every slot
    /// it could borrow.
    #[error(
        "this container's {0} guaranteed request(s) are in flight and other pods' requests hold every instance this node could lend it (--http-pool-instances); try again"
    )]
    PoolBusy(u32),
}

impl ContainerShare {
    /// A place for one more request, from the container's guarantee first, then borrowed.
    pub fn try_take(&self) -> Result<RequestSlot, NoSlot> {
        let in_flight = self
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| NoSlot::ContainerCap(self.max_in_flight))?;
        let slots = match self.guaranteed.clone().try_acquire_owned() {
            Ok(own) => own,
            Err(_) => self
                .unreserved
                .clone()
                .try_acquire_many_owned(self.cost.slots())
                .map_err(|_| NoSlot::PoolBusy(self.guaranteed_requests))?,
        };
        Ok(RequestSlot {
            _in_flight: in_flight,
            _slots: slots,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_WAIT: Duration = Duration::ZERO;

    #[tokio::test]
    async fn a_container_keeps_its_guarantee_whatever_its_neighbours_take() {
        let pool = InstancePool::new(12, 1);
        let cost = RequestCost(3);
        let noisy = pool.reserve(cost, 100, NO_WAIT).await.unwrap();
        let quiet = pool.reserve(cost, 100, NO_WAIT).await.unwrap();
        // The noisy one takes its guarantee and borrows all that is unreserved (12 - 6 = 6).
        let held: Vec<_> = (0..3).map(|_| noisy.try_take().unwrap()).collect();
        assert_eq!(noisy.try_take().unwrap_err(), NoSlot::PoolBusy(1));
        // The quiet one still has its own.
        let own = quiet.try_take().unwrap();
        assert_eq!(quiet.try_take().unwrap_err(), NoSlot::PoolBusy(1));
        drop(own);
        quiet.try_take().unwrap();
        drop(held);
        noisy.try_take().unwrap();
    }

    #[tokio::test]
    async fn containers_past_what_the_pool_can_guarantee_are_refused_until_one_goes() {
        let pool = InstancePool::new(10, 2);
        let first = pool.reserve(RequestCost(2), 100, NO_WAIT).await.unwrap();
        let _second = pool.reserve(RequestCost(2), 100, NO_WAIT).await.unwrap();
        let refused = pool
            .reserve(RequestCost(2), 100, NO_WAIT)
            .await
            .unwrap_err();
        let refused = refused.to_string();
        assert!(refused.contains("has 2 not promised"), "{refused}");
        assert!(refused.contains("needs 4"), "{refused}");
        assert!(refused.contains("--http-pool-instances"), "{refused}");
        drop(first);
        pool.reserve(RequestCost(2), 100, NO_WAIT).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_guaranteed_container_waits_for_lent_slots_and_gets_them_first() {
        let pool = InstancePool::new(6, 1);
        let noisy = pool.reserve(RequestCost(2), 100, NO_WAIT).await.unwrap();
        // The noisy one borrows every slot not reserved.
        let mut held: Vec<_> = (0..3).map(|_| noisy.try_take().unwrap()).collect();
        let refused = pool
            .reserve(RequestCost(2), 100, NO_WAIT)
            .await
            .unwrap_err();
        assert!(
            matches!(refused, PoolFull::Lent { needed: 2, .. }),
            "{refused}"
        );
        // A new container waits; what is given back goes to it, not to more borrowing.
        let waiting = tokio::spawn({
            let pool = pool.clone();
            async move { pool.reserve(RequestCost(2), 100, RESERVATION_WAIT).await }
        });
        tokio::task::yield_now().await;
        // One borrowed request ends (the first held its own guaranteed place): its slots go to
        // the waiting container, none to the noisy one.
        held.truncate(2);
        let quiet = waiting.await.unwrap().unwrap();
        assert_eq!(noisy.try_take().unwrap_err(), NoSlot::PoolBusy(1));
        quiet.try_take().unwrap();
    }

    #[tokio::test]
    async fn the_container_cap_bounds_its_requests_and_its_guarantee() {
        let pool = InstancePool::new(100, 4);
        let share = pool.reserve(RequestCost(1), 2, NO_WAIT).await.unwrap();
        let _a = share.try_take().unwrap();
        let _b = share.try_take().unwrap();
        assert_eq!(share.try_take().unwrap_err(), NoSlot::ContainerCap(2));
        // Only its cap was reserved.
        assert_eq!(pool.unreserved.available_permits(), 98);
    }

    #[test]
    fn a_component_costs_its_core_instances_and_garbage_one() {
        let http = std::fs::read(testkit::fixtures::wasm_component("http_probe").unwrap()).unwrap();
        assert_eq!(RequestCost::of_component(&http).slots(), 3);
        assert_eq!(RequestCost::of_component(b"not wasm").slots(), 1);
    }
}
