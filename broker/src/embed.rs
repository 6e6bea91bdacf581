//! Embedding: an application that runs tidemq in its own process publishes
//! and subscribes from its own code, through the router like any client.
//!
//! [`Broker::publish`] hands a message to the router as a client's PUBLISH
//! does. [`Broker::subscribe`] opens an in-process session: a slot in the
//! registry, under a client id of its own, with a mailbox bounded like any
//! session's (`limits.max_queued_messages`, `limits.max_queued_bytes`),
//! subscribed through the router; [`Subscription::recv`] drains the mailbox,
//! as a connection's session task would. This module owns nothing shared:
//! the router keeps the subscriptions, the registry the slot, and the
//! [`Subscription`] (the application's task) is the slot's only owner.
//!
//! |                       | an MQTT client               | an embedded session                    |
//! |-----------------------|------------------------------|----------------------------------------|
//! | client id             | its own                      | `$embedded-<n>`, refused to MQTT clients at CONNECT (0x02 / 0x85) |
//! | ACL                   | its listener's               | none: trusted, as the application's own code |
//! | QoS 1/2 publish       | PUBACK / PUBREC once routed  | `publish` returns at the same point: every subscriber's session took it, and with a store it is on disk |
//! | QoS 1/2 delivery      | acknowledged by the client   | acknowledged when `recv` returns it     |
//! | retained messages     | on SUBSCRIBE, in batches     | the same, pulled as `recv` drains       |
//! | mailbox full          | QoS 0 dropped, QoS 1/2 from clients held (their publishers wait) | the same |
//! | subscriber too slow   | disconnected after `slow_subscriber_timeout_ms` | never: drop the [`Subscription`] to stop |
//! | session               | clean or persistent          | clean, ends with the [`Subscription`]   |
//!
//! An embedded session counts in `sessions_current`, not in
//! `connections_current`; its deliveries are not PUBLISH packets and count
//! in no packet counter.
//!
//! A bridge's local session is the one persistent kind (`crate::bridge`):
//! `$embedded-bridge/<name>`, under the same reserved prefix, opened with
//! [`Subscription::open_bridge`]. It never expires and is kept as a
//! persistent client session is (with a store: its settings, subscriptions
//! and queued QoS 1/2 deliveries are written, and recovered at start):
//!
//! | event                        | the session                                                |
//! |------------------------------|------------------------------------------------------------|
//! | `open_bridge`, none known    | made, online                                               |
//! | `open_bridge`, one offline   | resumed: what was parked in flight is handed back first, then its queue |
//! | [`Subscription::park`] (or dropped) | offline: subscriptions and queue kept (QoS 0 no longer queued), the deliveries passed in parked in flight, as a client's unacknowledged ones are |
//! | [`discard_bridge`]           | gone: subscriptions, queue, parked state and store records  |
//! | a delivery finished          | the bridge writes it done ([`record_done`]), as a PUBACK would |

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tidemq_protocol::{
    QoS, ReasonCode, SpecViolation, SubscriptionOptions, TopicFilter, TopicName,
};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::connection::Context;
use crate::metrics::Metrics;
use crate::registry::{Opened, Ownership, SessionSlot};
use crate::router::{RouterMsg, SubscribeRequest, Subscribed, RETAINED_BATCH};
use crate::server::Broker;
use crate::session::SessionState;
use crate::store::Record;
use crate::types::{ClientId, ConnId, Delivery, Receipt, RetainedCursor};

/// The start of every embedded session's client id. No MQTT client can
/// take one: the handshake refuses such ids, so an embedded session is
/// never taken over.
pub const RESERVED_PREFIX: &str = "$embedded-";

/// The start of a bridge's session id, `$embedded-bridge/<name>`: under
/// [`RESERVED_PREFIX`], so reserved the same way, and never a number.
pub const BRIDGE_PREFIX: &str = "$embedded-bridge/";

/// The client id of the local session of the bridge named `name`.
pub(crate) fn bridge_client_id(name: &str) -> ClientId {
    ClientId::new(&format!("{BRIDGE_PREFIX}{name}"))
}

/// Numbers embedded sessions, process-wide.
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// Why an embedded publish or subscribe did not happen.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("invalid topic or filter: {0}")]
    Topic(#[from] SpecViolation),
    #[error("the topic or filter breaks limits.max_topic_levels or limits.max_topic_len")]
    TopicLimit,
    #[error("the broker is over limits.memory_limit_mb")]
    MemoryLimit,
    #[error("subscription refused: {0}")]
    Refused(ReasonCode),
    #[error("the broker has stopped")]
    Stopped,
}

/// A message delivered to an embedded subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    /// The QoS it was delivered at: the lower of the publisher's and the
    /// subscription's.
    pub qos: QoS,
    /// Set for retained messages sent because the subscription is new
    /// [MQTT-3.3.1-8], clear for those published afterwards [MQTT-3.3.1-9].
    pub retain: bool,
}

impl Broker {
    /// Publishes as a client's PUBLISH would (but without ACL checks): QoS 0
    /// returns once the router has the message; QoS 1/2 once every matching
    /// session has taken it (a subscriber over its queue limit holds it back,
    /// as it holds back a PUBACK), and with `storage.enabled` once it is on
    /// disk. An empty retained payload clears the topic's retained message.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Result<(), EmbedError> {
        publish(self.context(), topic, payload.into(), qos, retain).await
    }

    /// Opens an embedded session subscribed to `filter` (wildcards and
    /// `$share/...` work as for any client) at `qos`: the stream of what it
    /// matches, retained messages first. See [`Subscription`].
    pub async fn subscribe(&self, filter: &str, qos: QoS) -> Result<Subscription, EmbedError> {
        let mut subscription = Subscription::open(self.context()).await?;
        subscription.subscribe(filter, qos).await?;
        Ok(subscription)
    }
}

/// Routes a message from the embedding application (also what the admin
/// API can publish with).
pub(crate) async fn publish(
    ctx: &Context,
    topic: &str,
    payload: Bytes,
    qos: QoS,
    retain: bool,
) -> Result<(), EmbedError> {
    publish_from(ctx, topic, payload, qos, retain, None).await
}

/// As [`publish`], tagged with the client id of the embedded session that
/// published it, so that session's No Local subscriptions skip it (the
/// bridge's loop guard).
pub(crate) async fn publish_from(
    ctx: &Context,
    topic: &str,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    origin: Option<ClientId>,
) -> Result<(), EmbedError> {
    let topic = TopicName::new(topic)?;
    if !ctx.topic_caps.fits(topic.as_str()) {
        return Err(EmbedError::TopicLimit);
    }
    // Clearing a retained message frees memory, so it is always let in.
    if ctx.budget.is_over() && !(retain && payload.is_empty()) {
        Metrics::incr(&ctx.metrics.memory_limit_refusals);
        return Err(EmbedError::MemoryLimit);
    }
    let mut message = crate::types::Message::charged(topic, payload, qos, retain, &ctx.budget);
    if let Some(origin) = origin {
        message = message.published_by_client(origin);
    }
    if qos == QoS::AtMostOnce {
        return ctx
            .router
            .publish(message, None)
            .await
            .map_err(|_| EmbedError::Stopped);
    }
    // The receipt resolves when the last held delivery (and the store's
    // commit) lets go of it: when a PUBACK would go out.
    let (receipt, taken) = Receipt::new();
    ctx.router
        .publish(message, Some(receipt))
        .await
        .map_err(|_| EmbedError::Stopped)?;
    taken.await.map_err(|_| EmbedError::Stopped)?;
    Ok(())
}

/// An embedded session: the messages its subscriptions match, in order.
/// Dropping it ends the session (its subscriptions and whatever is still
/// queued go); [`Subscription::close`] does the same and waits for it.
#[derive(Debug)]
pub struct Subscription {
    ctx: Arc<Context>,
    /// `None` once closed.
    ownership: Option<Ownership>,
    conn_id: ConnId,
    /// Cancelled at shutdown.
    token: CancellationToken,
    /// New subscriptions whose retained messages did not all fit in the
    /// first batch; the next batch is asked for once the mailbox is empty.
    cursors: VecDeque<RetainedCursor>,
    /// The router's answer to a batch asked for: kept across `recv` calls,
    /// so a `recv` cancelled while waiting loses nothing.
    retained_answer: Option<oneshot::Receiver<Option<RetainedCursor>>>,
    /// A bridge's session: outlives this value (see the module's table).
    persistent: bool,
}

impl Subscription {
    /// Claims a slot under a fresh reserved client id, online, with no
    /// subscription yet.
    async fn open(ctx: &Arc<Context>) -> Result<Subscription, EmbedError> {
        let n = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
        let client_id = ClientId::new(&format!("{RESERVED_PREFIX}{n}"));
        let subscription = Subscription::claim(ctx, &client_id, false).await?;
        if let Some(ownership) = &subscription.ownership {
            ownership.slot.set_online(true);
        }
        Ok(subscription)
    }

    /// Claims the slot of `client_id`, waiting until an owner still
    /// holding it lets go (a stopping bridge).
    async fn claim(
        ctx: &Arc<Context>,
        client_id: &ClientId,
        persistent: bool,
    ) -> Result<Subscription, EmbedError> {
        let conn_id = ctx.next_conn_id();
        let token = ctx.shutdown.child_token();
        let opened = ctx.registry.open(client_id, conn_id, token.clone()).await;
        // Nobody else can claim a reserved id, so it is never superseded.
        let Opened::Owned { ownership, .. } = opened else {
            return Err(EmbedError::Stopped);
        };
        Ok(Subscription {
            ctx: Arc::clone(ctx),
            ownership: Some(ownership),
            conn_id,
            token,
            cursors: VecDeque::new(),
            retained_answer: None,
            persistent,
        })
    }

    /// Opens the persistent session of the bridge named `name`, or resumes
    /// it: online, with the deliveries it had in flight when it was parked
    /// (in sending order, to be sent before what is queued). With a store,
    /// its settings are written (never expires, online).
    pub(crate) async fn open_bridge(
        ctx: &Arc<Context>,
        name: &str,
    ) -> Result<(Subscription, Vec<Delivery>), EmbedError> {
        let client_id = bridge_client_id(name);
        let subscription = Subscription::claim(ctx, &client_id, true).await?;
        let Some(ownership) = &subscription.ownership else {
            return Err(EmbedError::Stopped);
        };
        let slot = &ownership.slot;
        let unacked = slot
            .take_parked()
            .map_or_else(Vec::new, |mut state| state.outbound.take_unacked());
        slot.set_persistent(true);
        slot.set_online(true);
        slot.reset_overflow();
        slot.set_in_flight(0);
        if let Some(store) = &ctx.store {
            slot.mark_stored();
            let settings = crate::connection::stored_settings(&client_id, None, None, false);
            store.commit(None, |w| w.record(&Record::Session(settings)));
        }
        Ok((subscription, unacked))
    }

    /// The session's client id (`$embedded-<n>`, or a bridge's
    /// `$embedded-bridge/<name>`), as logs and the admin API name it.
    pub fn client_id(&self) -> &str {
        self.ownership
            .as_ref()
            .map_or("", |ownership| ownership.slot.client_id.as_str())
    }

    /// Adds a filter to this session, into the same stream; subscribing
    /// to a filter again replaces its QoS.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), EmbedError> {
        self.subscribe_with(filter, SubscriptionOptions::qos(qos))
            .await
    }

    /// As [`Subscription::subscribe`], with MQTT 5 options (No Local).
    pub(crate) async fn subscribe_with(
        &mut self,
        filter: &str,
        options: SubscriptionOptions,
    ) -> Result<(), EmbedError> {
        let filter = TopicFilter::new(filter)?;
        let Some(ownership) = &self.ownership else {
            return Err(EmbedError::Stopped);
        };
        let request = SubscribeRequest {
            filters: vec![(filter.clone(), options)],
            subscription_id: None,
            v5: false,
        };
        let router = &self.ctx.router;
        let Subscribed { codes, cursors } = router
            .subscribe(Arc::clone(&ownership.slot), request)
            .await
            .map_err(|_| EmbedError::Stopped)?;
        self.cursors.extend(cursors);
        match codes.first() {
            Some(code) if code.is_failure() => Err(EmbedError::Refused(*code)),
            Some(_) => {
                self.record_subscription(filter, options).await;
                Ok(())
            }
            None => Err(EmbedError::Stopped),
        }
    }

    /// A persistent session's new subscription, written and durable before
    /// the subscribe returns (as a SUBACK waits for it).
    async fn record_subscription(&self, filter: TopicFilter, options: SubscriptionOptions) {
        let (Some(store), true) = (&self.ctx.store, self.persistent) else {
            return;
        };
        let client = self.client_id().to_owned();
        let (receipt, durable) = Receipt::new();
        store.commit(Some(&receipt), |w| {
            w.record(&Record::Subscribe {
                client,
                filter,
                options,
                subscription_id: None,
            });
        });
        drop(receipt);
        let _ = durable.await;
    }

    /// Removes every subscription of this session whose filter is not in
    /// `keep` (a bridge resumed with other `out` lines); with a store, the
    /// removals are written.
    pub(crate) async fn unsubscribe_all_but(&mut self, keep: &[String]) -> Result<(), EmbedError> {
        let client_id = ClientId::new(self.client_id());
        let router = &self.ctx.router;
        let current = router
            .subscriptions_of(client_id.clone())
            .await
            .map_err(|_| EmbedError::Stopped)?;
        let stale: Vec<TopicFilter> = current
            .into_iter()
            .map(|sub| sub.filter)
            .filter(|filter| !keep.iter().any(|kept| kept == filter.as_str()))
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        router
            .unsubscribe(client_id.clone(), stale.clone())
            .await
            .map_err(|_| EmbedError::Stopped)?;
        if let (Some(store), true) = (&self.ctx.store, self.persistent) {
            store.commit(None, |w| {
                for filter in stale {
                    let client = client_id.to_string();
                    w.record(&Record::Unsubscribe { client, filter });
                }
            });
        }
        Ok(())
    }

    /// The next message; `None` once the broker shuts down (after what was
    /// already queued). Taking a QoS 1/2 message acknowledges it.
    /// Cancel-safe: a message is taken only when it is returned.
    pub async fn recv(&mut self) -> Option<Message> {
        // Dropping the delivery here releases a publisher's receipt it
        // held: the acknowledgement.
        let delivery = self.recv_delivery().await?;
        Some(Message {
            topic: delivery.message.topic.as_str().to_owned(),
            payload: delivery.message.payload.clone(),
            qos: delivery.qos,
            retain: delivery.retain,
        })
    }

    /// This subscription as a [`Stream`](futures_util::Stream) of its
    /// messages, for code written against streams (`StreamExt::next`,
    /// combinators); it ends when the broker shuts down. Each item is
    /// [`Subscription::recv`]'s, with the same acknowledgement rules;
    /// dropping the stream drops the subscription.
    pub fn into_stream(self) -> impl futures_util::Stream<Item = Message> + Send {
        futures_util::stream::unfold(self, |mut subscription| async move {
            let message = subscription.recv().await?;
            Some((message, subscription))
        })
    }

    /// The next delivery itself: whoever holds it holds the publisher's
    /// receipt it may carry, until it is dropped. Cancel-safe.
    pub(crate) async fn recv_delivery(&mut self) -> Option<Delivery> {
        loop {
            let slot = Arc::clone(&self.ownership.as_ref()?.slot);
            if let Some(delivery) = slot.mailbox.pop_if(|_| true) {
                let expired = delivery
                    .message
                    .expires_at()
                    .is_some_and(|at| at <= Instant::now());
                if expired {
                    Metrics::incr(&self.ctx.metrics.messages_expired);
                    if self.persistent {
                        record_done(&self.ctx, &slot.client_id, &delivery);
                    }
                    continue;
                }
                return Some(delivery);
            }
            if let Some(answer) = &mut self.retained_answer {
                let more = answer.await;
                self.retained_answer = None;
                if let Ok(Some(cursor)) = more {
                    self.cursors.push_front(cursor);
                }
                continue;
            }
            if !self.cursors.is_empty() {
                self.ask_retained(slot).await?;
                continue;
            }
            tokio::select! {
                _ = self.token.cancelled() => return None,
                _ = slot.mailbox.notified() => {}
            }
        }
    }

    /// Asks the router for the next batch of the first cursor's retained
    /// messages. The cursor leaves `cursors` only once the request is sent.
    async fn ask_retained(&mut self, slot: Arc<SessionSlot>) -> Option<()> {
        let permit = tokio::select! {
            _ = self.token.cancelled() => return None,
            permit = self.ctx.router.reserve() => permit.ok()?,
        };
        let cursor = self.cursors.pop_front()?;
        let max = RETAINED_BATCH.min(self.ctx.live.get().limits.max_queued_messages);
        let (done, answer) = oneshot::channel();
        permit.send(RouterMsg::Retained {
            slot,
            cursor,
            max,
            done,
        });
        self.retained_answer = Some(answer);
        Some(())
    }

    /// Ends the session and waits until its subscriptions are gone; a
    /// bridge's is parked instead, as [`Subscription::park`] with nothing
    /// in flight.
    pub async fn close(mut self) {
        if let Some(ownership) = self.ownership.take() {
            if self.persistent {
                park(&self.ctx, ownership, self.conn_id, Vec::new());
            } else {
                end(&self.ctx, ownership, self.conn_id).await;
            }
        }
    }

    /// Records the deliveries in flight, as a connection does for the
    /// admin API and the in-flight gauges.
    pub(crate) fn set_in_flight(&self, in_flight: usize) {
        if let Some(ownership) = &self.ownership {
            ownership.slot.set_in_flight(in_flight);
        }
    }

    /// Takes a bridge's session offline, keeping its subscriptions and its
    /// queue: `unacked` (taken, not finished, in sending order) is parked
    /// in flight, handed back first by the next [`Subscription::open_bridge`].
    pub(crate) fn park(mut self, unacked: Vec<Delivery>) {
        if let Some(ownership) = self.ownership.take() {
            park(&self.ctx, ownership, self.conn_id, unacked);
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(ownership) = self.ownership.take() else {
            return;
        };
        if self.persistent {
            // What the owner had in flight went with it; a store still
            // holds it (not written done) for the next start.
            park(&self.ctx, ownership, self.conn_id, Vec::new());
            return;
        }
        // At once: no more QoS 0 is queued, and held publishers go on.
        ownership.slot.set_online(false);
        let ctx = Arc::clone(&self.ctx);
        let conn_id = self.conn_id;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { end(&ctx, ownership, conn_id).await });
            }
            // No runtime left: the broker's router has gone with it.
            Err(_) => {
                ctx.registry.remove(&ownership.slot, conn_id);
            }
        }
    }
}

/// What a persistent session's client leaving does (see
/// `connection::close`): offline at once (held publishers go on), the
/// state parked with `unacked` in flight, the slot let go of, then marked
/// offline in the registry (never expiring) and, with a store, written so.
fn park(ctx: &Context, ownership: Ownership, conn_id: ConnId, unacked: Vec<Delivery>) {
    let slot = Arc::clone(&ownership.slot);
    slot.set_online(false);
    slot.release_owner(conn_id);
    let mut state = SessionState::new(ctx.live.get().limits.max_inflight);
    for delivery in &unacked {
        state.outbound.send(delivery);
    }
    slot.set_in_flight(state.outbound.in_flight());
    if let Some(store) = &ctx.store {
        let settings = crate::connection::stored_settings(&slot.client_id, None, None, true);
        store.commit(None, |w| w.record(&Record::Session(settings)));
    }
    slot.park(state);
    // Let go first, so a claim that comes next finds the slot free.
    drop(ownership);
    ctx.registry.went_offline(&slot, conn_id, None, None);
}

/// Writes a persistent session's stored delivery done (the remote
/// acknowledged it, or it is given up), as a PUBACK from a client would:
/// not redelivered after a restart. Nothing waits for it.
pub(crate) fn record_done(ctx: &Context, client_id: &ClientId, delivery: &Delivery) {
    let stored_id = delivery.message.stored_id;
    // The router wrote a queue entry only for these (`router::persist`).
    let kept = stored_id != 0 && delivery.qos != QoS::AtMostOnce;
    if let (Some(store), true) = (&ctx.store, kept) {
        store.commit(None, |w| w.done(client_id.as_str(), stored_id));
    }
}

/// Ends the session of the bridge named `name` for good (the bridge was
/// removed): its subscriptions, queue and parked state go, and with a store
/// its records. Waits for a bridge task still holding it to let go.
pub(crate) async fn discard_bridge(ctx: &Arc<Context>, name: &str) {
    let client_id = bridge_client_id(name);
    if ctx.registry.slot(&client_id).is_none() {
        return;
    }
    if let Ok(mut subscription) = Subscription::claim(ctx, &client_id, false).await {
        if let Some(ownership) = subscription.ownership.take() {
            end(ctx, ownership, subscription.conn_id).await;
        }
    }
}

/// The names of the bridges whose sessions the registry holds (recovered
/// from the store, or left by a bridge that stopped).
pub(crate) fn bridge_sessions(ctx: &Context) -> Vec<String> {
    ctx.registry
        .clients(BRIDGE_PREFIX, 0, usize::MAX)
        .clients
        .into_iter()
        .filter_map(|info| {
            let name = info.client_id.as_str().strip_prefix(BRIDGE_PREFIX)?;
            Some(name.to_owned())
        })
        .collect()
}

/// What a clean session's end does (see `connection::close`): the router
/// forgets its subscriptions, its mailbox is emptied, the registry forgets
/// the slot.
async fn end(ctx: &Context, ownership: Ownership, conn_id: ConnId) {
    let slot = &ownership.slot;
    slot.set_online(false);
    slot.release_owner(conn_id);
    crate::connection::forget_session(ctx, slot).await;
    ctx.registry.remove(slot, conn_id);
}
