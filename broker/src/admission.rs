//! Admission: which sockets the broker keeps open, and what each one holds
//! of the broker's capacity while it lives.
//!
//! A socket passes through two stages, each with its own cap:
//!
//! | stage          | cap (`connections.`) | when full                                    |
//! |----------------|-------------------|----------------------------------------------|
//! | before CONNECT | `max_pending`     | the oldest pending closed (`pending_evicted`)|
//! | past CONNECT   | `max_connections` | CONNACK 0x03 (`connections_refused_limit`)   |
//!
//! and across both, `connections.max_connections_per_address` per source IP
//! (0: off), checked at accept (`connections_refused_per_address`).
//!
//! So a flood of sockets that never send CONNECT only ever competes with
//! other pending sockets, and evicting the oldest one means a client that
//! sends its CONNECT at once always gets through. The [`Gate`] is shared by
//! the accept loops (which call only its synchronous [`Gate::admit`]) and
//! the connections; an [`Admission`] is what one connection holds, resting
//! or not, and gives everything back when it drops. Locks here are held
//! for a few lines and never across an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

use crate::config::ConnectionSettings;
use crate::metrics::Metrics;

/// The broker's capacity for sockets; one per broker.
#[derive(Debug)]
pub struct Gate {
    metrics: Arc<Metrics>,
    /// Connections past CONNECT holding one of `connections.max_connections`,
    /// resting ones included.
    open: AtomicUsize,
    /// `connections.max_connections`; a reload may lower it below `open`,
    /// which then refuses new CONNECTs until enough have ended.
    max_connections: AtomicUsize,
    pending: Mutex<PendingSet>,
    /// `connections.max_connections_per_address`; 0: no limit.
    per_address_cap: AtomicUsize,
    per_address: Mutex<HashMap<IpAddr, usize>>,
}

/// Why the accept loop closes a socket at once.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its address already has `max_connections_per_address` open.
    PerAddress,
}

/// What [`Gate::admit`] did to make room: the pending socket it evicted.
#[derive(Debug, PartialEq, Eq)]
pub struct Evicted;

impl Gate {
    pub fn new(listener: &ConnectionSettings, metrics: Arc<Metrics>) -> Gate {
        Gate {
            metrics,
            open: AtomicUsize::new(0),
            max_connections: AtomicUsize::new(listener.max_connections),
            pending: Mutex::new(PendingSet::new(listener.max_pending)),
            per_address_cap: AtomicUsize::new(listener.max_connections_per_address),
            per_address: Mutex::new(HashMap::new()),
        }
    }

    /// Applies reloaded caps. Nothing admitted is closed: with caps lowered
    /// below what is open, new sockets and CONNECTs are refused (and the
    /// oldest pending sockets evicted as new ones come) until enough end.
    pub fn update(&self, settings: &ConnectionSettings) {
        self.max_connections
            .store(settings.max_connections, Ordering::Relaxed);
        self.per_address_cap
            .store(settings.max_connections_per_address, Ordering::Relaxed);
        lock(&self.pending).cap = settings.max_pending;
    }

    /// Admits a socket just accepted from `addr` as pending, evicting the
    /// oldest pending socket when `max_pending` are. Synchronous: the accept
    /// loop never waits here.
    #[cfg(test)]
    pub fn admit(self: &Arc<Gate>, addr: IpAddr) -> Result<(Admission, Option<Evicted>), Refused> {
        self.admit_on(addr, None)
    }

    /// As [`Gate::admit`], for a listener with a cap of its own.
    pub fn admit_on(
        self: &Arc<Gate>,
        addr: IpAddr,
        listener: Option<Arc<ListenerSlots>>,
    ) -> Result<(Admission, Option<Evicted>), Refused> {
        let cap = self.per_address_cap.load(Ordering::Relaxed);
        let addr = if cap > 0 {
            let mut counts = lock(&self.per_address);
            let count = counts.entry(addr).or_insert(0);
            if *count >= cap {
                return Err(Refused::PerAddress);
            }
            *count += 1;
            Some(Box::new(addr))
        } else {
            None
        };
        let token = CancellationToken::new();
        let (id, evicted) = {
            let mut pending = lock(&self.pending);
            let admitted = pending.insert(token.clone());
            Metrics::set(&self.metrics.pending_current, pending.len() as u64);
            admitted
        };
        let evicted = evicted.map(|oldest| {
            oldest.cancel();
            Metrics::incr(&self.metrics.pending_evicted);
            Evicted
        });
        let admission = Admission {
            gate: Arc::clone(self),
            addr,
            pending: Some(Box::new((id, token))),
            connected: false,
            listener,
        };
        Ok((admission, evicted))
    }

    /// Connections holding a `max_connections` slot now.
    pub fn connected(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Takes a `max_connections` slot if one is free.
    fn take_slot(&self) -> bool {
        let max = self.max_connections.load(Ordering::Relaxed);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |open| {
                (open < max).then_some(open + 1)
            })
            .is_ok()
    }

    fn leave_pending(&self, id: u64) {
        let mut pending = lock(&self.pending);
        pending.remove(id);
        Metrics::set(&self.metrics.pending_current, pending.len() as u64);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its map consistent.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What one connection holds of the [`Gate`] for as long as it lives,
/// resting or not: its place among the pending sockets until its CONNECT is
/// accepted, then its `max_connections` slot; its share of its address's
/// count throughout. All given back on drop.
///
/// It lives in every resting connection, so it is kept small: what only a
/// pending socket or a per-address count needs is boxed, and the slot is a
/// flag (`Gate::open` counts it: raised when taken, lowered on drop).
#[derive(Debug)]
pub struct Admission {
    gate: Arc<Gate>,
    /// Counted under `max_connections_per_address`.
    addr: Option<Box<IpAddr>>,
    /// Its entry in the pending set, and the token that evicts it.
    pending: Option<Box<(u64, CancellationToken)>>,
    /// Holds one of `max_connections`.
    connected: bool,
    /// Its listener's own cap, if it has one (held once `connected`).
    listener: Option<Arc<ListenerSlots>>,
}

/// A `[[listener]]`'s own `max_connections`: connections past CONNECT on it.
#[derive(Debug)]
pub struct ListenerSlots {
    cap: usize,
    open: AtomicUsize,
}

impl ListenerSlots {
    pub fn new(cap: usize) -> ListenerSlots {
        ListenerSlots {
            cap,
            open: AtomicUsize::new(0),
        }
    }

    fn take(&self) -> bool {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.cap).then_some(open + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    /// Cancelled when the socket is evicted to make room for a newer one; a
    /// connection past CONNECT is never evicted.
    pub fn eviction(&self) -> CancellationToken {
        match &self.pending {
            Some(pending) => pending.1.clone(),
            None => CancellationToken::new(),
        }
    }

    /// The CONNECT was accepted: leaves the pending set and takes a
    /// `max_connections` slot. `false` when none is free.
    pub fn connect(&mut self) -> bool {
        if let Some(pending) = self.pending.take() {
            self.gate.leave_pending(pending.0);
        }
        if self.connected {
            return true;
        }
        if let Some(listener) = &self.listener {
            if !listener.take() {
                return false;
            }
        }
        if self.gate.take_slot() {
            // Given back in `drop`.
            self.connected = true;
            let metrics = &self.gate.metrics;
            let open = metrics.connections_current.fetch_add(1, Ordering::Relaxed) + 1;
            Metrics::raise(&metrics.connections_max, open);
            true
        } else {
            if let Some(listener) = &self.listener {
                listener.give_back();
            }
            false
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            self.gate.leave_pending(pending.0);
        }
        // The address's count first: whoever sees the gauge below go down
        // may connect again from the same address at once.
        if let Some(addr) = self.addr.take() {
            let mut counts = lock(&self.gate.per_address);
            if let Some(count) = counts.get_mut(&*addr) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    counts.remove(&*addr);
                }
            }
        }
        if std::mem::take(&mut self.connected) {
            if let Some(listener) = &self.listener {
                listener.give_back();
            }
            self.gate.open.fetch_sub(1, Ordering::AcqRel);
            Metrics::decr(&self.gate.metrics.connections_current);
        }
    }
}

/// The sockets that have not finished CONNECT, oldest first (ids grow with
/// every admission), each with the token that closes it.
#[derive(Debug)]
struct PendingSet {
    cap: usize,
    next_id: u64,
    sockets: BTreeMap<u64, CancellationToken>,
}

impl PendingSet {
    fn new(cap: usize) -> PendingSet {
        PendingSet {
            cap,
            next_id: 0,
            sockets: BTreeMap::new(),
        }
    }

    /// Adds a socket; when `cap` were pending, the oldest leaves the set
    /// and its token is returned for the caller to cancel.
    fn insert(&mut self, token: CancellationToken) -> (u64, Option<CancellationToken>) {
        let evicted = if self.sockets.len() >= self.cap {
            self.sockets.pop_first().map(|(_, oldest)| oldest)
        } else {
            None
        };
        let id = self.next_id;
        self.next_id += 1;
        self.sockets.insert(id, token);
        (id, evicted)
    }

    fn remove(&mut self, id: u64) {
        self.sockets.remove(&id);
    }

    fn len(&self) -> usize {
        self.sockets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn gate(edit: impl FnOnce(&mut ConnectionSettings)) -> Arc<Gate> {
        let mut settings = Settings::defaults().unwrap();
        settings.storage.enabled = false;
        edit(&mut settings.connections);
        Arc::new(Gate::new(&settings.connections, Arc::default()))
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn lowered_caps_keep_what_is_open_and_refuse_what_comes_next() {
        let gate = gate(|c| {
            c.max_connections = 3;
            // Counted from the start (a cap turned on by a reload counts
            // only the sockets that come after it).
            c.max_connections_per_address = 5;
        });
        let mut open: Vec<Admission> = (1..=3).map(|n| gate.admit(ip(n)).unwrap().0).collect();
        assert!(open.iter_mut().all(Admission::connect));
        let mut lowered = Settings::defaults().unwrap().connections;
        lowered.max_connections = 2;
        lowered.max_connections_per_address = 1;
        gate.update(&lowered);
        assert_eq!(gate.connected(), 3, "nobody is closed");
        let (mut fourth, _) = gate.admit(ip(4)).unwrap();
        assert!(!fourth.connect(), "over the lowered cap");
        assert_eq!(gate.admit(ip(1)).err(), Some(Refused::PerAddress));
        open.truncate(1);
        assert_eq!(gate.connected(), 1);
        assert!(fourth.connect(), "room again under the cap of 2");
    }

    #[test]
    fn the_pending_set_evicts_the_oldest_first() {
        let mut set = PendingSet::new(2);
        let tokens: Vec<_> = (0..4).map(|_| CancellationToken::new()).collect();
        let (a, none) = set.insert(tokens[0].clone());
        assert!(none.is_none());
        let (_, none) = set.insert(tokens[1].clone());
        assert!(none.is_none());
        let (_, evicted) = set.insert(tokens[2].clone());
        evicted.unwrap().cancel();
        assert!(tokens[0].is_cancelled(), "the oldest goes first");
        assert!(!tokens[1].is_cancelled());
        // One that left (CONNECT done) is never evicted later.
        set.remove(a);
        let (_, evicted) = set.insert(tokens[3].clone());
        evicted.unwrap().cancel();
        assert!(tokens[1].is_cancelled());
        assert!(!tokens[2].is_cancelled() && !tokens[3].is_cancelled());
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn max_pending_admitted_then_the_oldest_is_evicted() {
        let gate = gate(|l| l.max_pending = 3);
        let first: Vec<_> = (0..3).map(|_| gate.admit(ip(1)).unwrap()).collect();
        assert!(first.iter().all(|(_, evicted)| evicted.is_none()));
        assert_eq!(gate.metrics.snapshot().pending_current, 3);
        let (_fourth, evicted) = gate.admit(ip(1)).unwrap();
        assert_eq!(evicted, Some(Evicted));
        assert!(first[0].0.eviction().is_cancelled());
        assert!(!first[1].0.eviction().is_cancelled());
        let metrics = gate.metrics.snapshot();
        assert_eq!((metrics.pending_current, metrics.pending_evicted), (3, 1));
    }

    #[test]
    fn a_connected_socket_leaves_pending_and_holds_a_slot() {
        let gate = gate(|l| {
            l.max_pending = 1;
            l.max_connections = 1;
        });
        let (mut a, _) = gate.admit(ip(1)).unwrap();
        assert!(a.connect());
        assert_eq!(gate.connected(), 1);
        // The next pending socket does not evict a connected one.
        let (mut b, evicted) = gate.admit(ip(1)).unwrap();
        assert!(evicted.is_none());
        assert!(!a.eviction().is_cancelled());
        assert!(!b.connect(), "max_connections is full");
        drop(a);
        assert_eq!(gate.connected(), 0);
        assert!(b.connect());
        let metrics = gate.metrics.snapshot();
        assert_eq!(
            (metrics.connections_current, metrics.pending_current),
            (1, 0)
        );
    }

    #[test]
    fn the_per_address_cap_counts_until_drop() {
        let gate = gate(|l| l.max_connections_per_address = 2);
        let (a, _) = gate.admit(ip(1)).unwrap();
        let (mut b, _) = gate.admit(ip(1)).unwrap();
        assert!(b.connect());
        assert_eq!(gate.admit(ip(1)).err(), Some(Refused::PerAddress));
        // Another address is counted apart.
        let _c = gate.admit(ip(2)).unwrap();
        drop(a);
        let (_d, _) = gate.admit(ip(1)).unwrap();
        drop(b);
        drop(_d);
        assert!(lock(&gate.per_address).get(&ip(1)).is_none());
    }
}
