//! Start-up recovery: turns what the store held ([`Image`]) back into the
//! broker's state before the listeners accept: retained messages into the
//! router, each persistent session into the registry (offline, with its
//! expiry running from when its connection ended), its subscriptions into
//! the router, its queue into its mailbox, its in-flight messages and QoS 2
//! ids into its parked state, and its will, which goes when due.
//!
//! A session whose connection the crash cut (no "offline since" on disk) is
//! taken to be offline from this start: its expiry and its will's delay run
//! from now, never early. Expired sessions and messages are dropped (and
//! written so); clean sessions that had a will publish it and are gone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use tidemq_protocol::{LastWill, PacketId};
use tokio::time::Instant;
use tracing::info;

use crate::budget::Budget;
use crate::connection::{delay_will, publish_will, Context};
use crate::metrics::Metrics;
use crate::router::RouterMsg;
use crate::session::{RestoredInflight, SessionState};
use crate::store::{
    unix_ms_now, unix_ms_to_instant, Image, Reader, Record, Recovered, SessionImage, Store,
    StoredMessage, StoredSession, StoredWill,
};
use crate::types::{ClientId, Delivery, DeliveryExtra, Message, MessageExtra};

/// What recovery put back, for the log line.
#[derive(Debug, Default)]
struct Counts {
    sessions: usize,
    queued: usize,
    inflight: usize,
    retained: usize,
    expired_sessions: usize,
    expired_messages: usize,
    wills: usize,
}

/// Restores `recovered` into the broker of `ctx`, logging what and how long.
pub async fn restore(ctx: &Arc<Context>, store: &Store, recovered: Recovered) {
    let started = StdInstant::now();
    let mut counts = Counts::default();
    let image = recovered.image;
    let mut messages = Messages::new(&image, &ctx.budget);
    let retained: Vec<Arc<Message>> = image
        .retained
        .values()
        .filter_map(|id| messages.get(*id))
        .collect();
    counts.retained = retained.len();
    let _ = ctx
        .router
        .ask(|done| RouterMsg::RestoreRetained {
            messages: retained,
            done,
        })
        .await;
    // Wills go only once every session and subscription is back: one
    // published earlier would miss the subscribers restored after it.
    let mut wills = Vec::new();
    for (client, session) in image.sessions {
        let will = restore_session(ctx, store, client, session, &mut messages, &mut counts).await;
        wills.extend(will);
    }
    counts.wills = wills.len();
    for will in wills {
        match will {
            DueWill::Now(will) => publish_will(ctx, will).await,
            // Due already: out before the listeners accept, like the
            // wills of ended sessions.
            DueWill::Later {
                will, left, after, ..
            } if left.is_zero() => {
                publish_will(ctx, will).await;
                if let Some(after) = after {
                    store.commit(None, |w| w.record(&Record::Session(after)));
                }
            }
            DueWill::Later {
                slot,
                will,
                left,
                after,
            } => {
                let timer = delay_will(ctx, will, left, after);
                ctx.registry.arm_will(&slot, timer);
            }
        }
    }
    counts.expired_messages = messages.expired;
    Metrics::add(
        &ctx.metrics.storage_recovered_messages,
        (counts.queued + counts.inflight) as u64,
    );
    let elapsed = recovered.elapsed + started.elapsed();
    info!(
        sessions = counts.sessions,
        queued = counts.queued,
        inflight = counts.inflight,
        retained = counts.retained,
        expired_sessions = counts.expired_sessions,
        expired_messages = counts.expired_messages,
        wills = counts.wills,
        frames = recovered.frames,
        torn_bytes = recovered.torn_bytes,
        bytes = recovered.file_bytes,
        elapsed_ms = elapsed.as_millis() as u64,
        "store recovered"
    );
}

/// The stored messages as the broker's, each built once and shared by every
/// session that has it; expired ones are left out.
struct Messages {
    budget: Arc<Budget>,
    stored: HashMap<u64, StoredMessage>,
    built: HashMap<u64, Arc<Message>>,
    now_ms: u64,
    expired: usize,
}

impl Messages {
    fn new(image: &Image, budget: &Arc<Budget>) -> Messages {
        Messages {
            budget: Arc::clone(budget),
            stored: image
                .messages
                .iter()
                .filter_map(|(id, (raw, _))| match Reader::new(raw.clone()).record() {
                    Ok(Record::Message(message)) => Some((*id, message)),
                    // Validated when the log was replayed.
                    _ => None,
                })
                .collect(),
            built: HashMap::new(),
            now_ms: unix_ms_now(),
            expired: 0,
        }
    }

    fn get(&mut self, id: u64) -> Option<Arc<Message>> {
        if let Some(message) = self.built.get(&id) {
            return Some(Arc::clone(message));
        }
        let stored = self.stored.remove(&id)?;
        if stored.expires_at_ms.is_some_and(|at| at <= self.now_ms) {
            self.expired += 1;
            return None;
        }
        let message = Arc::new(to_message(stored, &self.budget));
        self.built.insert(id, Arc::clone(&message));
        Some(message)
    }
}

/// A stored message, counted in the memory budget like a published one.
fn to_message(stored: StoredMessage, budget: &Arc<Budget>) -> Message {
    let (topic, payload) = (stored.topic, stored.payload);
    let mut message = Message::charged(topic, payload, stored.qos, stored.retain, budget);
    message.stored_id = stored.id;
    let expires_at = stored.expires_at_ms.map(unix_ms_to_instant);
    if stored.properties.is_some() || expires_at.is_some() {
        message = message.with_extra(MessageExtra {
            properties: stored.properties.map(|p| *p).unwrap_or_default(),
            expires_at,
        });
    }
    message
}

fn to_will(stored: StoredWill) -> LastWill {
    LastWill {
        topic: stored.topic,
        payload: stored.payload,
        qos: stored.qos,
        retain: stored.retain,
        delay_interval: stored.delay_secs,
        properties: stored.properties,
    }
}

/// When a session's connection ended, as a monotonic instant (now if the
/// crash cut it, or the clock went back).
fn offline_since(settings: Option<&StoredSession>) -> Instant {
    let now = Instant::now();
    let ago = settings
        .and_then(|s| s.offline_at_ms)
        .map_or(0, |at| unix_ms_now().saturating_sub(at));
    now.checked_sub(Duration::from_millis(ago)).unwrap_or(now)
}

/// A will recovery found due, published or armed after every session is
/// back.
enum DueWill {
    Now(LastWill),
    Later {
        slot: Arc<crate::registry::SessionSlot>,
        will: LastWill,
        left: Duration,
        /// The session's settings to write once it is out.
        after: Option<StoredSession>,
    },
}

async fn restore_session(
    ctx: &Arc<Context>,
    store: &Store,
    client: String,
    session: SessionImage,
    messages: &mut Messages,
    counts: &mut Counts,
) -> Option<DueWill> {
    let client_id = ClientId::new(&client);
    let since = offline_since(session.settings.as_ref());
    let expiry = match &session.settings {
        Some(settings) => settings
            .expiry_secs
            .map(|s| Duration::from_secs(u64::from(s))),
        None => ctx.registry.default_expiry(),
    };
    let will = session.settings.as_ref().and_then(|s| s.will.clone());
    let ends_at = expiry.and_then(|expiry| since.checked_add(expiry));
    if ends_at.is_some_and(|at| at <= Instant::now()) {
        // Expired while the broker was down (or a clean session's will).
        if expiry != Some(Duration::ZERO) {
            counts.expired_sessions += 1;
            Metrics::incr(&ctx.metrics.sessions_expired);
        }
        store.commit(None, |w| w.record(&Record::SessionGone { client }));
        return will.map(|will| DueWill::Now(to_will(will)));
    }
    let due_will = will.map(|will| {
        let due = Duration::from_secs(u64::from(will.delay_secs));
        let due = expiry.map_or(due, |expiry| due.min(expiry));
        let left = (since + due).saturating_duration_since(Instant::now());
        let after = session.settings.clone().map(|s| StoredSession {
            will: None,
            offline_at_ms: Some(s.offline_at_ms.unwrap_or_else(unix_ms_now)),
            ..s
        });
        (to_will(will), left, after)
    });
    let mut state = SessionState::new(ctx.settings.limits.max_inflight);
    let mut inflight = Vec::new();
    let mut queued = Vec::new();
    for (id, entry) in session.queue {
        let Some(message) = messages.get(id) else {
            continue;
        };
        let delivery = Delivery {
            message,
            qos: entry.qos,
            retain: entry.retain,
            extra: DeliveryExtra::boxed(entry.subscription_ids, None),
        };
        match entry.packet_id.and_then(PacketId::new) {
            Some(id) => inflight.push(RestoredInflight {
                id,
                delivery,
                released: entry.released,
            }),
            None => queued.push(delivery),
        }
    }
    counts.sessions += 1;
    counts.inflight += inflight.len();
    counts.queued += queued.len();
    state.outbound.restore(inflight);
    state
        .inbound
        .restore(session.held.into_iter().filter_map(PacketId::new));
    let slot = ctx.registry.restore(&client_id, state, expiry, since);
    // Charged as the router charges what it queues; the mailbox gives it
    // back as the session takes them.
    ctx.budget
        .charge(queued.len() as u64 * crate::mailbox::DELIVERY_COST);
    for delivery in queued {
        slot.mailbox
            .offer(delivery, crate::mailbox::Limit::Waived, None);
    }
    let subscriptions = session
        .subscriptions
        .into_iter()
        .map(|(filter, (options, id))| (filter, options, id))
        .collect();
    let _ = ctx
        .router
        .ask(|done| RouterMsg::Restore {
            slot: Arc::clone(&slot),
            subscriptions,
            done,
        })
        .await;
    due_will.map(|(will, left, after)| DueWill::Later {
        slot,
        will,
        left,
        after,
    })
}
