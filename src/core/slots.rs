//! Delivery slots: how many deliveries may be in progress, and waiting, per provider and per
//! endpoint host.
//!
//! One push service that accepts connections and never answers (a tarpit) used to hold every
//! in-flight slot for the whole publish timeout, so healthy devices waited behind it. Now each
//! host gets a few slots and a short queue of its own; a delivery that finds both full is
//! answered "later" at once. The host slot is taken before the provider slot, so deliveries
//! queued for a slow host never hold a slot that others could use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pushgate_providers::ProviderId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Above this many hosts, hosts with nothing in progress or waiting are forgotten.
const PRUNE_HOSTS_ABOVE: usize = 4096;

/// Slots in progress and the length of the queue behind them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    pub concurrency: usize,
    pub queue: usize,
}

/// Why a delivery could not get a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    Provider,
    Host,
}

impl Full {
    pub fn label(self) -> &'static str {
        match self {
            Full::Provider => "provider",
            Full::Host => "host",
        }
    }
}

/// Held while a delivery is in progress; dropping it frees the slots.
pub struct Pass {
    _host: Option<OwnedSemaphorePermit>,
    _provider: OwnedSemaphorePermit,
}

struct Queue {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    bound: Bound,
}

impl Queue {
    fn new(bound: Bound) -> Arc<Self> {
        Arc::new(Queue {
            slots: Arc::new(Semaphore::new(bound.concurrency)),
            waiting: AtomicUsize::new(0),
            bound,
        })
    }

    /// A slot, at once or after waiting in the queue; `None` when the queue is full too.
    async fn enter(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Some(permit);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.bound.queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        // Leaves the queue however the wait ends, the caller's deadline included.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _waiting = Waiting(&self.waiting);
        self.slots.clone().acquire_owned().await.ok()
    }

    fn idle(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) == 1
            && self.waiting.load(Ordering::Acquire) == 0
            && self.slots.available_permits() == self.bound.concurrency
    }
}

pub struct Slots {
    provider_bound: Bound,
    host_bound: Bound,
    providers: Mutex<HashMap<ProviderId, Arc<Queue>>>,
    hosts: Mutex<HashMap<String, Arc<Queue>>>,
}

impl Slots {
    pub fn new(provider_bound: Bound, host_bound: Bound) -> Self {
        Slots {
            provider_bound,
            host_bound,
            providers: Mutex::new(HashMap::new()),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for a slot of `host` (if the delivery goes to a host of its own) and then of
    /// `provider`. The caller bounds the wait with its deadline.
    pub async fn enter(&self, provider: &ProviderId, host: Option<&str>) -> Result<Pass, Full> {
        let host_permit = match host {
            Some(host) => Some(self.host(host).enter().await.ok_or(Full::Host)?),
            None => None,
        };
        let provider_permit = self
            .provider(provider)
            .enter()
            .await
            .ok_or(Full::Provider)?;
        Ok(Pass {
            _host: host_permit,
            _provider: provider_permit,
        })
    }

    fn provider(&self, id: &ProviderId) -> Arc<Queue> {
        // A poisoned lock only means a panic elsewhere mid-insert; the map is still usable.
        let mut map = self.providers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = map.get(id) {
            return q.clone();
        }
        let q = Queue::new(self.provider_bound);
        map.insert(id.clone(), q.clone());
        q
    }

    fn host(&self, host: &str) -> Arc<Queue> {
        let mut map = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = map.get(host) {
            return q.clone();
        }
        if map.len() >= PRUNE_HOSTS_ABOVE {
            map.retain(|_, q| !q.idle());
        }
        let q = Queue::new(self.host_bound);
        map.insert(host.to_owned(), q.clone());
        q
    }

    /// Hosts currently tracked (for tests).
    pub fn hosts_tracked(&self) -> usize {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn slots(host_concurrency: usize, host_queue: usize) -> Slots {
        Slots::new(
            Bound {
                concurrency: 4,
                queue: 4,
            },
            Bound {
                concurrency: host_concurrency,
                queue: host_queue,
            },
        )
    }

    #[tokio::test]
    async fn a_full_host_does_not_block_another() {
        let s = slots(1, 1);
        let p = ProviderId::new("webpush");
        let _busy = s.enter(&p, Some("tarpit.example")).await.unwrap();
        // One may wait behind it...
        let waiter = tokio::time::timeout(
            Duration::from_millis(50),
            s.enter(&p, Some("tarpit.example")),
        );
        // ...while another host goes straight through, and a third delivery to the tarpit is
        // refused at once because the queue is full.
        let (waited, other, refused) =
            tokio::join!(waiter, s.enter(&p, Some("healthy.example")), async {
                tokio::task::yield_now().await;
                s.enter(&p, Some("tarpit.example")).await
            });
        assert!(
            waited.is_err(),
            "the waiter is still waiting at its deadline"
        );
        assert!(other.is_ok());
        assert_eq!(refused.err(), Some(Full::Host));
    }

    #[tokio::test]
    async fn a_cancelled_wait_leaves_the_queue() {
        let s = slots(1, 1);
        let p = ProviderId::new("webpush");
        let busy = s.enter(&p, Some("h")).await.unwrap();
        let _ = tokio::time::timeout(Duration::from_millis(10), s.enter(&p, Some("h"))).await;
        // The queue has room again; freeing the slot lets the next one through.
        drop(busy);
        assert!(s.enter(&p, Some("h")).await.is_ok());
    }

    #[tokio::test]
    async fn provider_slots_bound_everything_of_that_provider() {
        let s = Slots::new(
            Bound {
                concurrency: 1,
                queue: 0,
            },
            Bound {
                concurrency: 8,
                queue: 8,
            },
        );
        let apns = ProviderId::new("apns");
        let _busy = s.enter(&apns, None).await.unwrap();
        assert_eq!(s.enter(&apns, None).await.err(), Some(Full::Provider));
        assert!(s.enter(&ProviderId::new("fcm"), None).await.is_ok());
    }

    #[tokio::test]
    async fn idle_hosts_are_forgotten() {
        let s = slots(1, 1);
        let p = ProviderId::new("webpush");
        for i in 0..(PRUNE_HOSTS_ABOVE + 10) {
            drop(s.enter(&p, Some(&format!("h{i}.example"))).await.unwrap());
        }
        assert!(
            s.hosts_tracked() <= PRUNE_HOSTS_ABOVE,
            "{}",
            s.hosts_tracked()
        );
    }
}
