//! Client id -> session slot. The registry decides which connection owns a
//! session: at most one at a time, the newest one wins [MQTT-3.1.4-2].
//!
//! A [`SessionSlot`] outlives connections. It holds the session's mailbox,
//! its parked state while no connection owns it, and the ownership token (a
//! one-permit semaphore). A new connection *claims* the slot, which cancels
//! the current owner, then waits for the permit; the old session parks its
//! state and drops the permit on its way out. Claims and removals happen under
//! the map's shard lock, so a slot is never removed while a newer connection
//! is claiming it. No guard leaves this file.
//!
//! The registry also records when a persistent session went offline (its
//! client gone, its state parked) and gives it a deadline in
//! [`Deadlines`]; the `expiry` task removes it when the deadline passes,
//! unless a client claimed it first. It keeps the gauges `sessions_current`
//! and `sessions_offline_current`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::expiry::{DeadlineKey, Deadlines};
use crate::mailbox::{Mailbox, MailboxLimits};
use crate::metrics::Metrics;
use crate::session::SessionState;
use crate::types::{ClientId, ConnId};

/// What the admin API shows of the connection that owns a session now.
/// Boxed in every online session's slot, so kept to 64 bytes.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub conn_id: ConnId,
    pub peer: SocketAddr,
    /// Its listener (the bound address is known once its loop runs).
    pub listener: Arc<crate::census::ListenerCensus>,
    /// When its CONNECT was accepted, in milliseconds since the Unix epoch.
    pub since_ms: u64,
    pub version: tidemq_protocol::ProtocolVersion,
    pub keep_alive: u16,
}

impl ConnInfo {
    /// Milliseconds since the Unix epoch now, for [`ConnInfo::since_ms`].
    pub fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            })
    }
}

/// One session as the admin API lists it (`GET /api/clients`).
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub client_id: ClientId,
    /// `None` while no connection owns the session (offline).
    pub conn: Option<ConnInfo>,
    pub online: bool,
    /// Its connection rests in the dormitory.
    pub resting: bool,
    pub persistent: bool,
    pub queued: usize,
    pub queued_bytes: usize,
    pub in_flight: u32,
}

/// A page of [`Registry::clients`]: the sessions matching, in client id
/// order, and how many matched in all.
#[derive(Debug, Default)]
pub struct ClientPage {
    pub total: usize,
    pub clients: Vec<ClientInfo>,
}

#[derive(Debug)]
struct Claim {
    /// The newest connection that claimed the slot.
    latest: ConnId,
    /// Cancels the connection that owns the slot now.
    owner_token: Option<CancellationToken>,
    /// Set while a persistent session waits offline for its client; taken
    /// by the next claim.
    /// Boxed: only offline sessions have one, and every slot has the field.
    offline: Option<Box<Offline>>,
}

/// One stretch of time a persistent session spent offline.
#[derive(Debug)]
struct Offline {
    /// When it expires (a far deadline when sessions never expire), and the
    /// generation that tells this stretch from any later one.
    key: DeadlineKey,
    /// The connection whose end left it offline.
    left_by: ConnId,
    /// An MQTT 5 will waiting for its delay: cancelled when a connection
    /// resumes the session (this mark is dropped), published at once when
    /// the session expires first.
    will: Option<WillTimer>,
}

/// The handle of a delayed will's timer task. Dropping it cancels the will;
/// [`WillTimer::fire`] publishes it now.
#[derive(Debug)]
pub struct WillTimer(tokio::sync::oneshot::Sender<()>);

impl WillTimer {
    /// A handle, and what the timer task waits on: `Ok` to publish now,
    /// `Err` (the handle dropped) to give the will up.
    pub fn new() -> (WillTimer, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (WillTimer(tx), rx)
    }

    pub fn fire(self) {
        let _ = self.0.send(());
    }
}

#[derive(Debug)]
pub struct SessionSlot {
    pub client_id: ClientId,
    pub mailbox: Mailbox,
    /// The last owner asked for a persistent session (clean session 0).
    persistent: AtomicBool,
    /// The store may hold records of this session (its settings were
    /// written): its end must be written too.
    stored: AtomicBool,
    /// Set once the mailbox overflowed, so the drop is logged once.
    overflow_logged: AtomicBool,
    /// The router may hold subscriptions of this session (set by the router
    /// on SUBSCRIBE, cleared when they are dropped): a clean session that
    /// never subscribed skips the router round trip on connect and close.
    subscribed: AtomicBool,
    /// One permit: held by the owning connection (see [`Ownership`]).
    ownership: Semaphore,
    claim: Mutex<Claim>,
    /// Boxed: an online session's slot holds only the pointer.
    parked: Mutex<Option<Box<SessionState>>>,
    /// The user its last owner authenticated as: `None` while unknown (a
    /// session restored from the store), `Some(None)` for anonymous.
    owner_user: Mutex<Option<Option<Arc<str>>>>,
    /// Set by the admin API's kick, cleared by the next claim: the owner's
    /// cancellation (or its wake from a rest) ends it as `Kicked`.
    kicked: AtomicBool,
    /// Deliveries in flight at the session's last delivery round (for the
    /// admin API).
    in_flight: AtomicU32,
    /// The owning connection's address, version and start (admin API).
    /// Boxed: an offline session's slot holds only the pointer.
    conn: Mutex<Option<Box<ConnInfo>>>,
}

/// Proof that a connection owns a session slot; dropping it frees the slot.
/// It holds the slot's one permit without a separate allocation: the permit
/// is taken with `forget` and given back on drop.
#[derive(Debug)]
pub struct Ownership {
    pub slot: Arc<SessionSlot>,
}

impl Drop for Ownership {
    fn drop(&mut self) {
        self.slot.ownership.add_permits(1);
    }
}

/// Locks a mutex whose critical sections are each a single update, so a
/// poisoned lock still guards consistent data.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SessionSlot {
    pub(crate) fn new(
        client_id: ClientId,
        conn_id: ConnId,
        mailbox_limits: impl Into<MailboxLimits>,
    ) -> SessionSlot {
        SessionSlot {
            client_id,
            mailbox: Mailbox::new(mailbox_limits),
            persistent: AtomicBool::new(false),
            stored: AtomicBool::new(false),
            overflow_logged: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            ownership: Semaphore::new(1),
            claim: Mutex::new(Claim {
                latest: conn_id,
                owner_token: None,
                offline: None,
            }),
            parked: Mutex::new(None),
            owner_user: Mutex::new(None),
            kicked: AtomicBool::new(false),
            in_flight: AtomicU32::new(0),
            conn: Mutex::new(None),
        }
    }

    /// Records the connection that owns the session now.
    pub fn set_conn(&self, info: ConnInfo) {
        *lock(&self.conn) = Some(Box::new(info));
    }

    /// Forgets the connection `conn_id`, unless a newer one replaced it.
    pub fn clear_conn(&self, conn_id: ConnId) {
        let mut conn = lock(&self.conn);
        if conn.as_ref().is_some_and(|info| info.conn_id == conn_id) {
            *conn = None;
        }
    }

    pub fn set_in_flight(&self, in_flight: usize) {
        let in_flight = u32::try_from(in_flight).unwrap_or(u32::MAX);
        self.in_flight.store(in_flight, Ordering::Relaxed);
    }

    /// Whether the admin API asked to disconnect the session's owner.
    pub fn is_kicked(&self) -> bool {
        self.kicked.load(Ordering::Acquire)
    }

    /// Ends the owning connection (admin API): cancels its token, or rings
    /// its alarm when it rests; it ends as `Kicked`. Returns whether a
    /// connection was online to be ended.
    fn kick(&self) -> bool {
        if !self.mailbox.is_online() {
            return false;
        }
        self.kicked.store(true, Ordering::Release);
        // Cloned out: cancelling runs wakers, not under the lock.
        let token = lock(&self.claim).owner_token.clone();
        if let Some(token) = token {
            token.cancel();
        }
        // A connection on its way to a rest checks the mark before it
        // sleeps (see `connection::rest`).
        self.mailbox.ring_alarm();
        true
    }

    fn info(&self) -> ClientInfo {
        let conn = lock(&self.conn).as_deref().cloned();
        let (queued, queued_bytes, resting) = self.mailbox.depth();
        let online = self.mailbox.is_online();
        ClientInfo {
            client_id: self.client_id.clone(),
            conn: conn.filter(|_| online),
            online,
            resting: resting && online,
            persistent: self.is_persistent(),
            queued,
            queued_bytes,
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }

    /// Records who owns the session now (see `auth.takeover`).
    pub fn set_owner_user(&self, user: Option<Arc<str>>) {
        *lock(&self.owner_user) = Some(user);
    }

    /// Whether a connection is attached (QoS 0 is not queued for offline
    /// sessions).
    pub fn set_online(&self, online: bool) {
        self.mailbox.set_online(online);
    }

    pub fn is_persistent(&self) -> bool {
        self.persistent.load(Ordering::Acquire)
    }

    pub fn set_persistent(&self, persistent: bool) {
        self.persistent.store(persistent, Ordering::Release);
    }

    pub fn mark_stored(&self) {
        self.stored.store(true, Ordering::Release);
    }

    /// Whether the store may hold records of this session, clearing the
    /// mark.
    pub fn take_stored(&self) -> bool {
        self.stored.swap(false, Ordering::AcqRel)
    }

    /// `true` the first time the mailbox overflows since the last reset.
    pub fn first_overflow(&self) -> bool {
        !self.overflow_logged.swap(true, Ordering::Relaxed)
    }

    pub fn reset_overflow(&self) {
        self.overflow_logged.store(false, Ordering::Relaxed);
    }

    /// Forgets the owner's token when `conn_id` lets go of the slot, unless
    /// a newer connection has claimed it since.
    pub fn release_owner(&self, conn_id: ConnId) {
        let mut claim = lock(&self.claim);
        if claim.latest == conn_id {
            claim.owner_token = None;
        }
    }

    pub fn mark_subscribed(&self) {
        self.subscribed.store(true, Ordering::Release);
    }

    /// Whether subscriptions may exist, clearing the mark.
    pub fn take_subscribed(&self) -> bool {
        self.subscribed.swap(false, Ordering::AcqRel)
    }

    pub fn park(&self, state: SessionState) {
        *lock(&self.parked) = Some(Box::new(state));
    }

    pub fn take_parked(&self) -> Option<SessionState> {
        lock(&self.parked).take().map(|state| *state)
    }

    /// Makes `conn_id` the newest claimant and stops the current owner:
    /// cancels its token, or rings its alarm when it rests in the
    /// dormitory. Returns whether there was an owner, and the offline
    /// stretch the claim ends, if any.
    fn claim(&self, conn_id: ConnId) -> (bool, Option<Offline>) {
        let (owner_token, offline) = {
            let mut claim = lock(&self.claim);
            claim.latest = conn_id;
            // A kick was meant for the connection this claim replaces.
            self.kicked.store(false, Ordering::Release);
            (claim.owner_token.take(), claim.offline.take().map(|o| *o))
        };
        if let Some(token) = &owner_token {
            token.cancel();
        }
        let rested = self.mailbox.ring_alarm();
        (owner_token.is_some() || rested, offline)
    }

    /// Whether `conn_id` is still the newest claimant.
    pub fn is_latest(&self, conn_id: ConnId) -> bool {
        lock(&self.claim).latest == conn_id
    }

    /// Completes a claim, or gives a connection waking from a rest its new
    /// token: returns false if a newer connection claimed since.
    pub fn install_owner(&self, conn_id: ConnId, token: CancellationToken) -> bool {
        let mut claim = lock(&self.claim);
        if claim.latest != conn_id {
            return false;
        }
        claim.owner_token = Some(token);
        true
    }
}

/// Outcome of [`Registry::open`].
#[derive(Debug)]
pub enum Opened {
    /// The connection owns the session. `took_over` says whether another
    /// connection held it.
    Owned {
        ownership: Ownership,
        took_over: bool,
    },
    /// A newer connection with the same client id claimed it meanwhile.
    Superseded,
}

/// A session the expiry task took ownership of (see
/// [`Registry::claim_expired`]).
#[derive(Debug)]
pub struct Expiring {
    pub ownership: Ownership,
    left_by: ConnId,
}

/// The connection a session recovered from the store last had: none
/// (connection numbers start at 1).
const RESTORED: ConnId = ConnId(0);

/// How far away "never" is for a session that does not expire: its
/// deadline key is still unique, but it is never queued.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

#[derive(Debug)]
pub struct Registry {
    slots: DashMap<ClientId, Arc<SessionSlot>>,
    /// For sessions made from now on (a reload may change it; a session
    /// keeps the limits it was made with).
    mailbox_limits: Mutex<MailboxLimits>,
    /// `limits.session_expiry_secs`; `None`: offline sessions are kept. The
    /// expiry of 3.1.1 sessions and the cap on MQTT 5 ones; each session's
    /// own is passed to `went_offline`.
    expiry: Mutex<Option<Duration>>,
    deadlines: Deadlines,
    /// Numbers offline stretches, broker-wide.
    generations: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Registry {
    pub fn new(
        mailbox_limits: impl Into<MailboxLimits>,
        expiry: Option<Duration>,
        metrics: Arc<Metrics>,
    ) -> Registry {
        Registry {
            slots: DashMap::new(),
            mailbox_limits: Mutex::new(mailbox_limits.into()),
            expiry: Mutex::new(expiry),
            deadlines: Deadlines::default(),
            generations: AtomicU64::new(1),
            metrics,
        }
    }

    /// See the field.
    pub fn default_expiry(&self) -> Option<Duration> {
        *lock(&self.expiry)
    }

    /// A reloaded `session_expiry_secs`, for sessions whose client connects
    /// from now on (a session keeps the expiry it was given).
    pub fn set_default_expiry(&self, expiry: Option<Duration>) {
        *lock(&self.expiry) = expiry;
    }

    pub fn deadlines(&self) -> &Deadlines {
        &self.deadlines
    }

    /// Whether `user` may take the session of `client_id` over when only
    /// the same user may: true when there is none, its owner is unknown
    /// (restored from the store), or is the same user.
    pub fn same_owner(&self, client_id: &ClientId, user: Option<&str>) -> bool {
        let Some(slot) = self
            .slots
            .get(client_id)
            .map(|entry| Arc::clone(entry.value()))
        else {
            return true;
        };
        let owner = lock(&slot.owner_user);
        match &*owner {
            None => true,
            Some(owner) => owner.as_deref() == user,
        }
    }

    /// Claims the slot of `client_id` (creating it if needed), cancels its
    /// current owner, and waits until that owner has let go. `token` is the
    /// new connection's; a later claim cancels it.
    pub async fn open(
        &self,
        client_id: &ClientId,
        conn_id: ConnId,
        token: CancellationToken,
    ) -> Opened {
        let (slot, took_over) = self.claim(client_id, conn_id);
        let Ok(permit) = slot.ownership.acquire().await else {
            // The semaphore is never closed; treat it as superseded anyway.
            return Opened::Superseded;
        };
        permit.forget();
        let ownership = Ownership { slot };
        if !ownership.slot.install_owner(conn_id, token) {
            return Opened::Superseded;
        }
        Opened::Owned {
            ownership,
            took_over,
        }
    }

    /// Reloaded `max_queued_messages` and `max_queued_bytes`, for sessions
    /// made from now on.
    pub fn set_mailbox_limits(&self, messages: usize, bytes: usize) {
        let mut limits = lock(&self.mailbox_limits);
        limits.messages = messages;
        limits.bytes = bytes;
    }

    fn claim(&self, client_id: &ClientId, conn_id: ConnId) -> (Arc<SessionSlot>, bool) {
        let entry = self.slots.entry(client_id.clone()).or_insert_with(|| {
            Metrics::incr(&self.metrics.sessions_current);
            Arc::new(SessionSlot::new(
                client_id.clone(),
                conn_id,
                lock(&self.mailbox_limits).clone(),
            ))
        });
        let slot = Arc::clone(entry.value());
        let (took_over, offline) = slot.claim(conn_id);
        drop(entry);
        if let Some(offline) = offline {
            // The client came back in time: the session no longer expires.
            self.deadlines.remove(&offline.key);
            Metrics::decr(&self.metrics.sessions_offline_current);
        }
        (slot, took_over)
    }

    /// Forgets a session whose owner `conn_id` ends it for good (clean
    /// session), unless a newer connection has claimed it.
    pub fn remove(&self, slot: &Arc<SessionSlot>, conn_id: ConnId) -> bool {
        let removed = self
            .slots
            .remove_if(&slot.client_id, |_, current| {
                Arc::ptr_eq(current, slot) && current.is_latest(conn_id)
            })
            .is_some();
        if removed {
            Metrics::decr(&self.metrics.sessions_current);
        }
        removed
    }

    /// Records that the persistent session in `slot` went offline when its
    /// owner `conn_id` ended (after it parked its state and let go of the
    /// slot), and queues its expiry. Nothing happens if a newer connection
    /// has claimed it since.
    pub fn went_offline(
        &self,
        slot: &Arc<SessionSlot>,
        conn_id: ConnId,
        expiry: Option<Duration>,
        will: Option<WillTimer>,
    ) {
        self.offline_since(slot, conn_id, expiry, will, Instant::now());
    }

    /// Puts back a persistent session the store recovered at start: offline
    /// since `since`, its state parked (its will is armed afterwards).
    pub fn restore(
        &self,
        client_id: &ClientId,
        state: SessionState,
        expiry: Option<Duration>,
        since: Instant,
    ) -> Arc<SessionSlot> {
        let slot = Arc::new(SessionSlot::new(
            client_id.clone(),
            RESTORED,
            lock(&self.mailbox_limits).clone(),
        ));
        slot.set_persistent(true);
        slot.mark_stored();
        slot.park(state);
        Metrics::incr(&self.metrics.sessions_current);
        self.slots.insert(client_id.clone(), Arc::clone(&slot));
        self.offline_since(&slot, RESTORED, expiry, None, since);
        slot
    }

    /// Gives a recovered offline session its will's timer: a client that
    /// resumed the session meanwhile took the offline mark, and the will is
    /// given up (the timer dropped).
    pub fn arm_will(&self, slot: &SessionSlot, timer: WillTimer) {
        if let Some(offline) = lock(&slot.claim).offline.as_mut() {
            offline.will = Some(timer);
        }
    }

    fn offline_since(
        &self,
        slot: &Arc<SessionSlot>,
        conn_id: ConnId,
        expiry: Option<Duration>,
        will: Option<WillTimer>,
        since: Instant,
    ) {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let at = since
            .checked_add(expiry.unwrap_or(NEVER))
            .unwrap_or(since + NEVER);
        let key = DeadlineKey { at, generation };
        let mut claim = lock(&slot.claim);
        if claim.latest != conn_id || claim.offline.is_some() {
            return;
        }
        claim.offline = Some(Box::new(Offline {
            key,
            left_by: conn_id,
            will,
        }));
        Metrics::incr(&self.metrics.sessions_offline_current);
        if expiry.is_some() {
            // Under the claim lock, so a claim cannot take the offline
            // mark before its deadline is in the queue.
            self.deadlines.insert(key, Arc::downgrade(slot));
        }
    }

    /// Takes ownership of `slot` for the expiry task, if it is still in the
    /// registry and still offline in the stretch `key` was queued for. A
    /// client that claims it from now on waits until the task is done.
    pub fn claim_expired(&self, slot: &Arc<SessionSlot>, key: DeadlineKey) -> Option<Expiring> {
        // Holding the shard lock keeps a claim from starting meanwhile.
        let current = self.slots.get(&slot.client_id)?;
        if !Arc::ptr_eq(current.value(), slot) {
            return None;
        }
        let claim = lock(&slot.claim);
        let offline = claim
            .offline
            .as_deref()
            .filter(|offline| offline.key == key)?;
        // The last owner let go before marking the slot offline, and any
        // later owner claims first, which takes the mark: the permit is free.
        let permit = slot.ownership.try_acquire().ok()?;
        permit.forget();
        Some(Expiring {
            ownership: Ownership {
                slot: Arc::clone(slot),
            },
            left_by: offline.left_by,
        })
    }

    /// Removes an expired session from the registry, unless a client claimed
    /// it while the expiry task emptied it (that client then finds it empty).
    pub fn remove_expired(&self, expiring: &Expiring) -> bool {
        let slot = &expiring.ownership.slot;
        let removed = self.remove(slot, expiring.left_by);
        let offline = lock(&slot.claim).offline.take();
        if let (true, Some(offline)) = (removed, offline) {
            Metrics::decr(&self.metrics.sessions_offline_current);
            // The session ends before the will's delay: it goes now.
            if let Some(will) = offline.will {
                will.fire();
            }
        }
        removed
    }

    /// The sessions whose client id contains `search` (all when empty),
    /// in client id order, `offset` and at most `limit` of them. The slots
    /// are copied out of the map first, so no shard stays locked while the
    /// page is built.
    pub fn clients(&self, search: &str, offset: usize, limit: usize) -> ClientPage {
        let mut slots: Vec<Arc<SessionSlot>> = self
            .slots
            .iter()
            .filter(|entry| entry.key().as_str().contains(search))
            .map(|entry| Arc::clone(entry.value()))
            .collect();
        slots.sort_unstable_by(|a, b| a.client_id.cmp(&b.client_id));
        ClientPage {
            total: slots.len(),
            clients: slots
                .iter()
                .skip(offset)
                .take(limit)
                .map(|slot| slot.info())
                .collect(),
        }
    }

    /// One session's slot, if known.
    pub fn slot(&self, client_id: &ClientId) -> Option<Arc<SessionSlot>> {
        self.slots
            .get(client_id)
            .map(|entry| Arc::clone(entry.value()))
    }

    /// Disconnects the connection that owns `client_id`'s session (admin
    /// API), as a takeover would but naming the end `Kicked` (its will is
    /// published). Returns whether one was connected.
    pub fn kick(&self, client_id: &ClientId) -> bool {
        self.slot(client_id).is_some_and(|slot| slot.kick())
    }

    /// Deliveries waiting in mailboxes, and QoS 1/2 deliveries sent and not
    /// yet acknowledged as each session last recorded them (when it sent a
    /// batch or rested), summed over every session in one pass (for `$SYS`,
    /// every `sys.interval_secs`: a gauge kept per delivery would cost every
    /// fan-out a shared counter).
    pub fn queued_and_in_flight(&self) -> (u64, u64) {
        self.slots
            .iter()
            .fold((0, 0), |(queued, in_flight), entry| {
                let slot = entry.value();
                (
                    queued + slot.mailbox.len() as u64,
                    in_flight + u64::from(slot.in_flight.load(Ordering::Relaxed)),
                )
            })
    }

    /// Sessions known, online or offline.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::expiry::Deadlines;

    fn registry(expiry: Option<Duration>) -> Registry {
        Registry::new(10, expiry, Arc::new(Metrics::default()))
    }

    async fn own(registry: &Registry, id: &ClientId, conn: u64) -> Ownership {
        let opened = registry
            .open(id, ConnId(conn), CancellationToken::new())
            .await;
        let Opened::Owned { ownership, .. } = opened else {
            panic!("must own");
        };
        ownership
    }

    /// Connection `conn` owns the session of `id`, parks it and leaves.
    async fn leave_offline(registry: &Registry, id: &ClientId, conn: u64) -> Arc<SessionSlot> {
        let ownership = own(registry, id, conn).await;
        let slot = Arc::clone(&ownership.slot);
        drop(ownership);
        registry.went_offline(&slot, ConnId(conn), registry.default_expiry(), None);
        slot
    }

    fn due_now(deadlines: &Deadlines) -> Vec<DeadlineKey> {
        let mut due = Vec::new();
        deadlines.take_due(Instant::now(), &mut due);
        due.into_iter().map(|(key, _)| key).collect()
    }

    fn gauges(registry: &Registry) -> (u64, u64) {
        let m = registry.metrics.snapshot();
        (m.sessions_current, m.sessions_offline_current)
    }

    #[tokio::test]
    async fn mqtt_3_1_3_9_resuming_the_session_gives_the_delayed_will_up() {
        let registry = registry(Some(Duration::from_secs(60)));
        let id = ClientId::new("w");
        let ownership = own(&registry, &id, 1).await;
        let slot = Arc::clone(&ownership.slot);
        drop(ownership);
        let (timer, mut fired) = WillTimer::new();
        registry.went_offline(&slot, ConnId(1), registry.default_expiry(), Some(timer));
        assert!(fired
            .try_recv()
            .is_err_and(|e| e == tokio::sync::oneshot::error::TryRecvError::Empty));
        let _back = own(&registry, &id, 2).await;
        assert_eq!(
            fired.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed),
            "the timer's handle was dropped: no will"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn session_expiry_zero_keeps_an_offline_session_forever() {
        let registry = registry(None);
        let id = ClientId::new("c");
        leave_offline(&registry, &id, 1).await;
        tokio::time::advance(Duration::from_secs(10 * 365 * 24 * 3600)).await;
        assert!(due_now(registry.deadlines()).is_empty());
        assert_eq!(registry.deadlines().len(), 0, "nothing was ever queued");
        assert_eq!(registry.len(), 1);
        assert_eq!(gauges(&registry), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_offline_session_is_due_at_its_deadline_and_not_before() {
        let registry = registry(Some(Duration::from_secs(2)));
        let id = ClientId::new("c");
        let slot = leave_offline(&registry, &id, 1).await;
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert!(due_now(registry.deadlines()).is_empty(), "one ms early");
        tokio::time::advance(Duration::from_millis(1)).await;
        let due = due_now(registry.deadlines());
        assert_eq!(due.len(), 1, "due at the limit");
        let expiring = registry
            .claim_expired(&slot, due[0])
            .expect("still offline");
        assert!(registry.remove_expired(&expiring));
        drop(expiring);
        assert_eq!(registry.len(), 0);
        assert_eq!(gauges(&registry), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconnect_just_before_removal_keeps_the_session() {
        let registry = registry(Some(Duration::from_secs(1)));
        let id = ClientId::new("c");
        let slot = leave_offline(&registry, &id, 1).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        // The task took the deadline out; the client comes back before the
        // task gets to the slot.
        let due = due_now(registry.deadlines());
        let ownership = own(&registry, &id, 2).await;
        assert!(registry.claim_expired(&slot, due[0]).is_none());
        assert!(Arc::ptr_eq(&ownership.slot, &slot));
        assert_eq!(registry.len(), 1);
        assert_eq!(gauges(&registry), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconnect_takes_the_deadline_out_of_the_queue() {
        let registry = registry(Some(Duration::from_secs(1)));
        let id = ClientId::new("c");
        leave_offline(&registry, &id, 1).await;
        assert_eq!(registry.deadlines().len(), 1);
        let ownership = own(&registry, &id, 2).await;
        assert_eq!(registry.deadlines().len(), 0);
        // It goes offline again: a new deadline, from now.
        drop(ownership);
        registry.went_offline(
            &registry.slots.get(&id).unwrap().clone(),
            ConnId(2),
            registry.default_expiry(),
            None,
        );
        assert_eq!(registry.deadlines().len(), 1);
        assert_eq!(gauges(&registry), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconnect_during_removal_waits_and_keeps_the_emptied_slot() {
        let registry = Arc::new(registry(Some(Duration::from_secs(1))));
        let id = ClientId::new("c");
        let slot = leave_offline(&registry, &id, 1).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        let due = due_now(registry.deadlines());
        let expiring = registry.claim_expired(&slot, due[0]).expect("offline");
        let reconnect = tokio::spawn({
            let registry = Arc::clone(&registry);
            let id = id.clone();
            async move { own(&registry, &id, 2).await }
        });
        tokio::task::yield_now().await;
        assert!(!reconnect.is_finished(), "waits for the expiry task");
        assert!(!registry.remove_expired(&expiring), "claimed meanwhile");
        drop(expiring);
        let ownership = reconnect.await.unwrap();
        assert!(Arc::ptr_eq(&ownership.slot, &slot));
        assert_eq!(registry.len(), 1);
        assert_eq!(gauges(&registry), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_takeover_does_not_mark_the_session_offline() {
        let registry = registry(Some(Duration::from_secs(1)));
        let id = ClientId::new("c");
        let first = own(&registry, &id, 1).await;
        let slot = Arc::clone(&first.slot);
        let _ = registry.claim(&id, ConnId(2));
        drop(first);
        registry.went_offline(&slot, ConnId(1), registry.default_expiry(), None);
        assert_eq!(registry.deadlines().len(), 0);
        assert_eq!(gauges(&registry), (1, 0));
    }

    #[tokio::test]
    async fn mqtt_3_1_4_2_a_new_claim_cancels_the_owner_and_waits_for_it() {
        let registry = Arc::new(registry(None));
        let id = ClientId::new("c");
        let first_token = CancellationToken::new();
        let Opened::Owned {
            ownership,
            took_over,
        } = registry.open(&id, ConnId(1), first_token.clone()).await
        else {
            panic!("first open must own");
        };
        assert!(!took_over);
        let second = tokio::spawn({
            let registry = registry.clone();
            let id = id.clone();
            async move {
                registry
                    .open(&id, ConnId(2), CancellationToken::new())
                    .await
            }
        });
        tokio::time::timeout(Duration::from_secs(1), first_token.cancelled())
            .await
            .unwrap();
        assert!(!second.is_finished(), "waits until the first owner lets go");
        drop(ownership);
        match second.await.unwrap() {
            Opened::Owned { took_over, .. } => assert!(took_over),
            Opened::Superseded => panic!("second claim must own"),
        }
    }

    #[tokio::test]
    async fn a_kick_cancels_the_online_owner_and_the_next_claim_clears_the_mark() {
        let registry = registry(None);
        let id = ClientId::new("k");
        let token = CancellationToken::new();
        let Opened::Owned { ownership, .. } = registry.open(&id, ConnId(1), token.clone()).await
        else {
            panic!("must own");
        };
        assert!(!registry.kick(&id), "not online yet: nothing to kick");
        ownership.slot.set_online(true);
        assert!(registry.kick(&id));
        assert!(token.is_cancelled());
        assert!(ownership.slot.is_kicked());
        drop(ownership);
        let _next = own(&registry, &id, 2).await;
        let slot = registry.slot(&id).unwrap();
        assert!(!slot.is_kicked(), "the new connection is not kicked");
        assert!(!registry.kick(&ClientId::new("nobody")));
    }

    #[test]
    fn a_connections_admin_info_stays_small() {
        // Boxed in every online session's slot (see `ConnInfo`).
        assert!(std::mem::size_of::<ConnInfo>() <= 64);
    }

    #[tokio::test]
    async fn removal_is_refused_when_a_newer_connection_claimed() {
        let registry = registry(None);
        let id = ClientId::new("c");
        let Opened::Owned { ownership, .. } = registry
            .open(&id, ConnId(1), CancellationToken::new())
            .await
        else {
            panic!("must own");
        };
        let (_, _) = registry.claim(&id, ConnId(2));
        assert!(!registry.remove(&ownership.slot, ConnId(1)));
        assert_eq!(registry.len(), 1);
    }
}
