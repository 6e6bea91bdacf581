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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::mailbox::{Mailbox, MailboxLimits};
use crate::session::SessionState;
use crate::types::{ClientId, ConnId};

#[derive(Debug)]
struct Claim {
    /// The newest connection that claimed the slot.
    latest: ConnId,
    /// Cancels the connection that owns the slot now.
    owner_token: Option<CancellationToken>,
}

#[derive(Debug)]
pub struct SessionSlot {
    pub client_id: ClientId,
    pub mailbox: Mailbox,
    /// The last owner asked for a persistent session (clean session 0).
    persistent: AtomicBool,
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
            overflow_logged: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            ownership: Semaphore::new(1),
            claim: Mutex::new(Claim {
                latest: conn_id,
                owner_token: None,
            }),
            parked: Mutex::new(None),
        }
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
    /// dormitory. Returns whether there was an owner.
    fn claim(&self, conn_id: ConnId) -> bool {
        let owner_token = {
            let mut claim = lock(&self.claim);
            claim.latest = conn_id;
            claim.owner_token.take()
        };
        if let Some(token) = &owner_token {
            token.cancel();
        }
        let rested = self.mailbox.ring_alarm();
        owner_token.is_some() || rested
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

#[derive(Debug)]
pub struct Registry {
    slots: DashMap<ClientId, Arc<SessionSlot>>,
    mailbox_limits: MailboxLimits,
}

impl Registry {
    pub fn new(mailbox_limits: impl Into<MailboxLimits>) -> Registry {
        Registry {
            slots: DashMap::new(),
            mailbox_limits: mailbox_limits.into(),
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

    fn claim(&self, client_id: &ClientId, conn_id: ConnId) -> (Arc<SessionSlot>, bool) {
        let entry = self.slots.entry(client_id.clone()).or_insert_with(|| {
            Arc::new(SessionSlot::new(
                client_id.clone(),
                conn_id,
                self.mailbox_limits.clone(),
            ))
        });
        let slot = Arc::clone(entry.value());
        let took_over = slot.claim(conn_id);
        (slot, took_over)
    }

    /// Forgets a session whose owner `conn_id` ends it for good (clean
    /// session), unless a newer connection has claimed it.
    pub fn remove(&self, slot: &Arc<SessionSlot>, conn_id: ConnId) -> bool {
        self.slots
            .remove_if(&slot.client_id, |_, current| {
                Arc::ptr_eq(current, slot) && current.is_latest(conn_id)
            })
            .is_some()
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

    #[tokio::test]
    async fn mqtt_3_1_4_2_a_new_claim_cancels_the_owner_and_waits_for_it() {
        let registry = Arc::new(Registry::new(10));
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
    async fn removal_is_refused_when_a_newer_connection_claimed() {
        let registry = Registry::new(10);
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
