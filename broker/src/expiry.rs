//! Session expiry: removes an offline persistent session (clean session 0,
//! its client gone) once it has been offline for `limits.session_expiry_secs`
//! — its registry slot, its subscriptions, its queued messages and its parked
//! state — and counts it in `sessions_expired`.
//!
//! The registry records when a slot goes offline and puts one entry per
//! offline slot in [`Deadlines`], keyed by (deadline, generation); a claim
//! by a returning client takes the entry out again. The task in [`run`]
//! (spawned by `Broker::start`, ended by the shutdown token) sleeps until the
//! earliest deadline, never waking more than once per [`TICK`], so expiring
//! N sessions costs O(N log N) however many sessions there are, and no scan
//! of the registry ever runs. Parked sessions need these timers of their own:
//! the dormitory's deadline heap covers sockets only.
//!
//! Removal races with a client coming back at the same moment. The task
//! takes the session's ownership, as a connection would, but only while the
//! slot is still offline in the same generation (checked under the slot's
//! claim lock): a returning client then waits for the permit, as it waits
//! for a closing connection, and finds an empty session (session present 0).
//! The slot leaves the registry only if nobody claimed it meanwhile (under
//! the map's shard lock). See `Registry::claim_expired`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::info;

use crate::connection::{self, sleep_until_option, Context};
use crate::registry::{lock, SessionSlot};

/// Shortest gap between two wake-ups of the expiry task: sessions whose
/// deadlines fall within one tick are removed together, at most this late.
pub const TICK: Duration = Duration::from_millis(250);

/// Where an offline session's deadline sits in [`Deadlines`]: the generation
/// (unique per offline stretch, broker-wide) breaks ties and tells a stale
/// entry from the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeadlineKey {
    pub at: Instant,
    pub generation: u64,
}

/// The deadlines of offline persistent sessions, earliest first: at most one
/// entry per offline slot. A weak reference, so an entry never keeps a
/// removed session's memory alive.
#[derive(Debug, Default)]
pub struct Deadlines {
    queue: Mutex<BTreeMap<DeadlineKey, Weak<SessionSlot>>>,
    /// Wakes the task when a deadline earlier than every other one arrives.
    added: Notify,
}

impl Deadlines {
    pub fn insert(&self, key: DeadlineKey, slot: Weak<SessionSlot>) {
        let earliest = {
            let mut queue = lock(&self.queue);
            queue.insert(key, slot);
            queue.first_key_value().map(|(first, _)| *first) == Some(key)
        };
        if earliest {
            // Stored as a permit if the task is busy: no wake-up is lost.
            self.added.notify_one();
        }
    }

    pub fn remove(&self, key: &DeadlineKey) {
        lock(&self.queue).remove(key);
    }

    /// Moves every entry due by `now` into `due`; returns the next deadline.
    pub fn take_due(
        &self,
        now: Instant,
        due: &mut Vec<(DeadlineKey, Weak<SessionSlot>)>,
    ) -> Option<Instant> {
        let mut queue = lock(&self.queue);
        while let Some(entry) = queue.first_entry() {
            if entry.key().at > now {
                return Some(entry.key().at);
            }
            due.push(entry.remove_entry());
        }
        None
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.queue).len()
    }
}

/// The expiry task: sleeps until the earliest deadline (or a new earlier
/// one), removes every session due, and ends at shutdown. Runs even with
/// `session_expiry_secs = 0`: an MQTT 5 client sets its own expiry.
pub async fn run(ctx: Arc<Context>) {
    let deadlines = ctx.registry.deadlines();
    let mut due = Vec::new();
    loop {
        let woke = Instant::now();
        let next = deadlines.take_due(woke, &mut due);
        for (key, slot) in due.drain(..) {
            if let Some(slot) = slot.upgrade() {
                expire(&ctx, slot, key).await;
            }
        }
        let wake_at = next.map(|at| at.max(woke + TICK));
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = deadlines.added.notified() => {
                // Coalesce bursts of new sessions into one wake-up a tick.
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(woke + TICK) => {}
                }
            }
            _ = sleep_until_option(wake_at) => {}
        }
    }
}

/// Removes one session if it is still offline in the generation its
/// deadline was set for.
async fn expire(ctx: &Context, slot: Arc<SessionSlot>, key: DeadlineKey) {
    let Some(expiring) = ctx.registry.claim_expired(&slot, key) else {
        return;
    };
    // The task owns the session now: nobody else touches it until the
    // ownership is dropped below.
    connection::forget_session(ctx, &expiring.ownership.slot).await;
    ctx.registry.remove_expired(&expiring);
    if let Some(suppressed) = ctx
        .throttles
        .session_expired
        .count(&ctx.metrics.sessions_expired)
    {
        info!(
            client_id = %slot.client_id,
            suppressed,
            "offline session expired after session_expiry_secs"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(at: Instant, generation: u64) -> DeadlineKey {
        DeadlineKey { at, generation }
    }

    #[tokio::test(start_paused = true)]
    async fn due_entries_come_out_earliest_first_and_the_rest_wait() {
        let deadlines = Deadlines::default();
        let now = Instant::now();
        let s = Duration::from_secs(1);
        deadlines.insert(key(now + 3 * s, 3), Weak::new());
        deadlines.insert(key(now + s, 2), Weak::new());
        deadlines.insert(key(now + s, 1), Weak::new());
        deadlines.insert(key(now + 2 * s, 4), Weak::new());
        let mut due = Vec::new();
        assert_eq!(deadlines.take_due(now, &mut due), Some(now + s));
        assert!(due.is_empty());
        let next = deadlines.take_due(now + 2 * s, &mut due);
        let generations: Vec<u64> = due.iter().map(|(k, _)| k.generation).collect();
        assert_eq!(generations, [1, 2, 4]);
        assert_eq!(next, Some(now + 3 * s));
        deadlines.remove(&key(now + 3 * s, 3));
        due.clear();
        assert_eq!(deadlines.take_due(now + 9 * s, &mut due), None);
        assert!(due.is_empty());
        assert_eq!(deadlines.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_new_earliest_deadline_wakes_the_task() {
        let deadlines = Deadlines::default();
        let now = Instant::now();
        deadlines.insert(key(now + Duration::from_secs(5), 1), Weak::new());
        // The permit stored by the first insert.
        tokio::time::timeout(Duration::from_millis(1), deadlines.added.notified())
            .await
            .unwrap();
        deadlines.insert(key(now + Duration::from_secs(9), 2), Weak::new());
        let woken = tokio::time::timeout(Duration::from_millis(1), deadlines.added.notified());
        assert!(woken.await.is_err(), "a later deadline does not wake");
        deadlines.insert(key(now + Duration::from_secs(1), 3), Weak::new());
        tokio::time::timeout(Duration::from_millis(1), deadlines.added.notified())
            .await
            .unwrap();
    }
}
