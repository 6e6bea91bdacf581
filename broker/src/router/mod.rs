//! The router: the only owner of subscriptions and retained messages, and the
//! fan-out from one published message to every matching session's mailbox.
//!
//! Sessions talk to it through a bounded channel (`limits.router_queue`; a
//! publisher waits when it is full). Its logic is the synchronous
//! [`Router::handle`]; the task around it only receives. It never waits on a
//! session: a delivery is offered to the session's mailbox, which queues it,
//! holds it with the publisher's receipt (QoS 1/2 beyond the limit of an
//! online session: the publisher's acknowledgement waits,
//! `held_for_slow_subscribers`) or drops it (`dropped_qos0_offline`,
//! `dropped_queue_full`). See `mailbox` for the table.
//!
//! Its work per request is bounded by the request, never by the whole
//! store: a SUBSCRIBE is handled once per distinct filter however often a
//! filter repeats in the packet; the retained messages of a new
//! subscription are found by walking the retained trie with the filter and
//! handed over a batch at a time ([`RetainedCursor`], pulled by the session
//! as its mailbox drains). Its limits (`RouterLimits`): subscriptions per
//! client, topic levels and length of a filter, retained count and bytes.

mod persist;
pub mod query;
mod retain;
pub mod shared;
mod subs;

use std::collections::{HashMap, HashSet};

use foldhash::fast::RandomState;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tidemq_protocol::{QoS, ReasonCode, RetainHandling, SubscriptionOptions, TopicFilter};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::budget::Budget;
use crate::config::Settings;
use crate::mailbox::{Limit, Offered, DELIVERY_COST};
use crate::metrics::Metrics;
use crate::registry::SessionSlot;
use crate::store::Store;
use crate::throttle::LogThrottle;
use crate::types::{ClientId, Delivery, DeliveryExtra, Message, Receipt, RetainedCursor};

pub use persist::Hold;
pub use retain::{Retained, Update};
pub use subs::{Subscriber, Subscriptions};

/// What sessions ask of the router.
#[derive(Debug)]
pub enum RouterMsg {
    Publish {
        message: Arc<Message>,
        /// Present for QoS 1/2 from a client: gates its acknowledgement.
        receipt: Option<Receipt>,
        /// A persistent publisher's QoS 2 packet id, written with the
        /// message.
        hold: Option<Hold>,
    },
    /// A session the store recovered at start: its subscriptions, put back
    /// without retained messages and without writing them again.
    Restore {
        slot: Arc<SessionSlot>,
        subscriptions: Vec<(TopicFilter, SubscriptionOptions, Option<u32>)>,
        done: oneshot::Sender<()>,
    },
    /// Retained messages the store recovered at start.
    RestoreRetained {
        messages: Vec<Arc<Message>>,
        done: oneshot::Sender<()>,
    },
    Subscribe {
        slot: Arc<SessionSlot>,
        request: SubscribeRequest,
        /// Answered after the subscriptions are in place and the first batch
        /// of retained messages is in the mailbox, so SUBACK precedes them
        /// on the wire.
        done: oneshot::Sender<Subscribed>,
    },
    /// The next batch of a new subscription's retained messages, into the
    /// session's mailbox; answered with the cursor when more may follow.
    Retained {
        slot: Arc<SessionSlot>,
        cursor: RetainedCursor,
        max: usize,
        done: oneshot::Sender<Option<RetainedCursor>>,
    },
    /// Answered with whether each filter was subscribed, in order.
    Unsubscribe {
        client_id: ClientId,
        filters: Vec<TopicFilter>,
        done: oneshot::Sender<Vec<bool>>,
    },
    /// Messages a departed member of a shared subscription had not
    /// acknowledged: each goes to another member of its group, if any.
    Redeliver {
        shared: Vec<(TopicFilter, Arc<Message>, QoS)>,
    },
    /// Forget every subscription of a client (clean session start or end).
    /// Answered once done, so no delivery under the old subscriptions can
    /// follow the answer.
    DropSession {
        client_id: ClientId,
        done: oneshot::Sender<()>,
    },
    /// What the admin API asks (see `query`).
    Query(query::Query),
    /// Caps reloaded on SIGHUP (all but the shared subscription strategy).
    Limits(RouterLimits),
}

/// Senders' side of the router channel.
#[derive(Debug, Clone)]
pub struct RouterHandle {
    tx: mpsc::Sender<RouterMsg>,
}

/// The router task has ended (the broker is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the router has stopped")]
pub struct RouterGone;

impl RouterHandle {
    pub async fn send(&self, msg: RouterMsg) -> Result<(), RouterGone> {
        self.tx.send(msg).await.map_err(|_| RouterGone)
    }

    /// Waits for room in the queue; the permit then sends one message
    /// without waiting. Cancel-safe: a caller that gives up has given the
    /// router nothing, and still holds what it meant to send.
    pub async fn reserve(&self) -> Result<mpsc::Permit<'_, RouterMsg>, RouterGone> {
        self.tx.reserve().await.map_err(|_| RouterGone)
    }

    pub async fn publish(
        &self,
        message: Message,
        receipt: Option<Receipt>,
    ) -> Result<(), RouterGone> {
        self.publish_held(message, receipt, None).await
    }

    /// Publishes, writing a persistent publisher's QoS 2 packet id with the
    /// message (see `persist`).
    pub async fn publish_held(
        &self,
        message: Message,
        receipt: Option<Receipt>,
        hold: Option<Hold>,
    ) -> Result<(), RouterGone> {
        let message = Arc::new(message);
        self.send(RouterMsg::Publish {
            message,
            receipt,
            hold,
        })
        .await
    }

    /// Sends `msg` and waits for its `done` answer.
    pub async fn ask<T>(
        &self,
        msg: impl FnOnce(oneshot::Sender<T>) -> RouterMsg,
    ) -> Result<T, RouterGone> {
        let (done, answer) = oneshot::channel();
        self.send(msg(done)).await?;
        answer.await.map_err(|_| RouterGone)
    }

    pub async fn subscribe(
        &self,
        slot: Arc<SessionSlot>,
        request: SubscribeRequest,
    ) -> Result<Subscribed, RouterGone> {
        self.ask(|done| RouterMsg::Subscribe {
            slot,
            request,
            done,
        })
        .await
    }

    /// Queues the next batch of a cursor's retained messages (at most
    /// `max`) in the session's mailbox; returns the cursor if more may follow.
    pub async fn retained(
        &self,
        slot: Arc<SessionSlot>,
        cursor: RetainedCursor,
        max: usize,
    ) -> Result<Option<RetainedCursor>, RouterGone> {
        self.ask(|done| RouterMsg::Retained {
            slot,
            cursor,
            max,
            done,
        })
        .await
    }

    /// Removes subscriptions; answers whether each filter was subscribed.
    pub async fn unsubscribe(
        &self,
        client_id: ClientId,
        filters: Vec<TopicFilter>,
    ) -> Result<Vec<bool>, RouterGone> {
        self.ask(|done| RouterMsg::Unsubscribe {
            client_id,
            filters,
            done,
        })
        .await
    }
}

/// One SUBSCRIBE packet's filters, as the router takes them.
#[derive(Debug, Clone)]
pub struct SubscribeRequest {
    pub filters: Vec<(TopicFilter, SubscriptionOptions)>,
    /// MQTT 5 Subscription Identifier, for every filter of the packet.
    pub subscription_id: Option<u32>,
    /// Whether the client speaks MQTT 5 (its refusals have more codes).
    pub v5: bool,
}

impl SubscribeRequest {
    /// 3.1.1-style filters with a QoS each (tests, benches).
    pub fn qos(filters: Vec<(TopicFilter, QoS)>) -> SubscribeRequest {
        SubscribeRequest {
            filters: filters
                .into_iter()
                .map(|(filter, qos)| (filter, SubscriptionOptions::qos(qos)))
                .collect(),
            subscription_id: None,
            v5: false,
        }
    }
}

/// The answer to a SUBSCRIBE: a reason code per filter, in order (the
/// granted QoS, or a refusal), and the cursors of the new subscriptions
/// whose retained messages did not all fit in the first batch.
#[derive(Debug, Default)]
pub struct Subscribed {
    pub codes: Vec<ReasonCode>,
    pub cursors: Vec<RetainedCursor>,
}

/// Most router messages handled per wake-up.
const BATCH: usize = 256;

/// Retained messages queued for one SUBSCRIBE before its SUBACK; the rest
/// follow a batch at a time as the session pulls them.
pub const RETAINED_BATCH: usize = 256;

/// The router's caps, from `[limits]`.
#[derive(Debug, Clone)]
pub struct RouterLimits {
    pub max_subscriptions_per_client: usize,
    pub max_topic_levels: usize,
    pub max_topic_len: usize,
    pub max_retained_messages: usize,
    pub max_retained_bytes: usize,
    /// Which member of a shared subscription's group gets a message.
    pub shared_strategy: shared::Strategy,
}

impl RouterLimits {
    pub fn from_settings(settings: &Settings) -> RouterLimits {
        let limits = &settings.limits;
        RouterLimits {
            max_subscriptions_per_client: limits.max_subscriptions_per_client,
            max_topic_levels: limits.max_topic_levels,
            max_topic_len: limits.max_topic_len,
            max_retained_messages: limits.max_retained_messages,
            max_retained_bytes: limits.max_retained_bytes,
            shared_strategy: limits.shared_subscription_strategy,
        }
    }

    /// No caps beyond MQTT's own (tests and benches).
    pub fn unlimited() -> RouterLimits {
        RouterLimits {
            max_subscriptions_per_client: usize::MAX,
            max_topic_levels: usize::MAX,
            max_topic_len: usize::MAX,
            max_retained_messages: usize::MAX,
            max_retained_bytes: usize::MAX,
            shared_strategy: shared::Strategy::RoundRobin,
        }
    }

    /// Whether a topic name or filter is within the level and length caps.
    pub fn topic_fits(&self, topic: &str) -> bool {
        topic_fits(topic, self.max_topic_levels, self.max_topic_len)
    }
}

fn topic_fits(topic: &str, max_levels: usize, max_len: usize) -> bool {
    topic.len() <= max_len && topic.bytes().filter(|&b| b == b'/').count() < max_levels
}

/// The topic caps sessions check before anything reaches the router
/// (`max_topic_levels`, `max_topic_len`): atomics, so a reload changes them
/// for every connection at once, at the cost of two relaxed loads a check.
#[derive(Debug)]
pub struct TopicCaps {
    levels: AtomicUsize,
    len: AtomicUsize,
}

impl TopicCaps {
    pub fn new(limits: &RouterLimits) -> TopicCaps {
        TopicCaps {
            levels: AtomicUsize::new(limits.max_topic_levels),
            len: AtomicUsize::new(limits.max_topic_len),
        }
    }

    pub fn set(&self, limits: &RouterLimits) {
        self.levels
            .store(limits.max_topic_levels, Ordering::Relaxed);
        self.len.store(limits.max_topic_len, Ordering::Relaxed);
    }

    /// Whether a topic name or filter is within the caps.
    pub fn fits(&self, topic: &str) -> bool {
        let levels = self.levels.load(Ordering::Relaxed);
        topic_fits(topic, levels, self.len.load(Ordering::Relaxed))
    }
}

/// Starts the router task; it ends when every handle is dropped.
pub fn spawn(
    queue: usize,
    metrics: Arc<Metrics>,
    limits: RouterLimits,
    store: Option<Store>,
) -> (RouterHandle, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel(queue);
    let task = tokio::spawn(async move {
        let mut router = Router::new(metrics, limits);
        router.store = store;
        let mut batch = Vec::with_capacity(BATCH);
        while rx.recv_many(&mut batch, BATCH).await > 0 {
            for msg in batch.drain(..) {
                router.handle(msg);
            }
        }
    });
    (RouterHandle { tx }, task)
}

#[derive(Debug)]
pub struct Router {
    subscriptions: Subscriptions,
    /// Every filter of each client, to drop a session's subscriptions.
    filters_by_client: HashMap<ClientId, HashSet<TopicFilter, RandomState>, RandomState>,
    retained: Retained,
    /// Chooses the member of a shared subscription's group.
    picker: shared::Picker,
    limits: RouterLimits,
    metrics: Arc<Metrics>,
    /// Reused per publish: every matching subscription.
    scratch: Vec<Match>,
    /// Reused per retained batch.
    retained_scratch: Vec<Arc<Message>>,
    subscriptions_refused: LogThrottle,
    retained_refused: LogThrottle,
    /// Charged for queued deliveries; the limit itself is checked where
    /// messages come in, never here.
    budget: Budget,
    /// Where QoS 1/2 messages for persistent sessions and retained
    /// messages are written (`storage.enabled`).
    store: Option<Store>,
}

impl Router {
    pub fn new(metrics: Arc<Metrics>, limits: RouterLimits) -> Router {
        Router {
            subscriptions: Subscriptions::default(),
            filters_by_client: HashMap::default(),
            retained: Retained::new(limits.max_retained_messages, limits.max_retained_bytes),
            picker: shared::Picker::new(limits.shared_strategy),
            limits,
            scratch: Vec::new(),
            retained_scratch: Vec::new(),
            subscriptions_refused: LogThrottle::default(),
            retained_refused: LogThrottle::default(),
            budget: Budget::new(Arc::clone(&metrics), u64::MAX),
            metrics,
            store: None,
        }
    }

    pub fn handle(&mut self, msg: RouterMsg) {
        match msg {
            RouterMsg::Publish {
                message,
                receipt,
                hold,
            } => self.publish(message, receipt.as_ref(), hold),
            RouterMsg::Restore {
                slot,
                subscriptions,
                done,
            } => {
                slot.mark_subscribed();
                for (filter, options, id) in subscriptions {
                    let _ = self.subscribe_one(&slot, &filter, options, id, true);
                }
                self.count_subscriptions();
                let _ = done.send(());
            }
            RouterMsg::RestoreRetained { messages, done } => {
                for message in &messages {
                    self.retain(message);
                }
                let _ = done.send(());
            }
            RouterMsg::Subscribe {
                slot,
                request,
                done,
            } => {
                let subscribed = self.subscribe(&slot, request);
                // The session may have ended meanwhile; nothing to answer then.
                let _ = done.send(subscribed);
            }
            RouterMsg::Retained {
                slot,
                mut cursor,
                max,
                done,
            } => {
                let (_, more) = self.send_retained(&slot, &mut cursor, max);
                let _ = done.send(more.then_some(cursor));
            }
            RouterMsg::Unsubscribe {
                client_id,
                filters,
                done,
            } => {
                let existed = filters
                    .iter()
                    .map(|filter| self.unsubscribe(&client_id, filter))
                    .collect();
                self.count_subscriptions();
                let _ = done.send(existed);
            }
            RouterMsg::Redeliver { shared } => {
                for (filter, message, qos) in shared {
                    self.redeliver(&filter, message, qos);
                }
            }
            RouterMsg::DropSession { client_id, done } => {
                self.drop_session(&client_id);
                self.count_subscriptions();
                let _ = done.send(());
            }
            RouterMsg::Query(query) => self.query(query),
            RouterMsg::Limits(limits) => {
                self.retained
                    .set_caps(limits.max_retained_messages, limits.max_retained_bytes);
                // The strategy stays: groups' positions belong to it.
                self.limits = RouterLimits {
                    shared_strategy: self.limits.shared_strategy,
                    ..limits
                };
            }
        }
    }

    /// Fans a message out: one delivery per client at the highest QoS of its
    /// matching subscriptions, downgraded to the message's QoS; none to its
    /// publisher's subscriptions with No Local [MQTT-3.8.3-3]. With a store,
    /// what must survive a restart is written first (see `persist`).
    fn publish(
        &mut self,
        mut message: Arc<Message>,
        receipt: Option<&Receipt>,
        hold: Option<Hold>,
    ) {
        if let Some(store) = &self.store {
            persist::number(store, &mut message);
        }
        let retained = message.retain.then(|| self.retain(&message));
        let scratch = &mut self.scratch;
        self.subscriptions
            .for_each_delivery(&message, &self.picker, |client_id, sub| {
                if sub.options.no_local && message.published_by(client_id) {
                    return;
                }
                scratch.push(Match::new(sub));
            });
        merge_overlapping(scratch);
        if let (Some(receipt), false) = (receipt, scratch.is_empty()) {
            receipt.matched();
        }
        let full = self.store.as_ref().is_some_and(Store::is_full);
        if let Some(store) = &self.store {
            let metrics = &self.metrics;
            let (scratch, hold) = (&self.scratch, hold.as_ref());
            persist::write_publish(
                store, &message, scratch, retained, hold, receipt, full, metrics,
            );
        }
        // Charged before any session can take (and release) a delivery.
        let offered = self.scratch.len();
        self.charge_deliveries(offered);
        let mut queued = 0;
        let mut not_kept = Vec::new();
        for found in self.scratch.drain(..) {
            let kept = self.store.is_some() && persist::is_kept(&found, &message);
            if kept && full {
                Metrics::incr(&self.metrics.dropped_storage_full);
                continue;
            }
            let slot = Arc::clone(&found.slot);
            let delivery = Delivery {
                message: Arc::clone(&message),
                qos: found.qos.min(message.qos),
                // [MQTT-3.3.1-9]: established subscriptions get RETAIN 0,
                // unless MQTT 5's Retain As Published [MQTT-3.3.1-13].
                retain: found.retain_as_published && message.retain,
                extra: found.extra,
            };
            let taken = offer(&slot, delivery, Limit::Enforced, receipt, &self.metrics);
            queued += usize::from(taken);
            if kept && !taken {
                not_kept.push(slot);
            }
        }
        self.refund_deliveries(offered - queued);
        if let (Some(store), false) = (&self.store, not_kept.is_empty()) {
            // Dropped at a full mailbox after all: not to be redelivered.
            store.commit(None, |w| {
                for slot in &not_kept {
                    w.done(slot.client_id.as_str(), message.stored_id);
                }
            });
        }
    }

    /// Gives a shared subscription's message to another member of its
    /// group [MQTT-4.8.2-?]; dropped (and counted) when none is left.
    fn redeliver(&mut self, filter: &TopicFilter, message: Arc<Message>, qos: QoS) {
        let member = self
            .subscriptions
            .group(filter)
            .and_then(|group| group.pick(&self.picker, &message));
        let Some((_, member)) = member else {
            Metrics::incr(&self.metrics.dropped_shared_no_member);
            return;
        };
        let slot = Arc::clone(&member.slot);
        let delivery = Delivery {
            qos: qos.min(member.options.qos),
            message,
            retain: false,
            extra: DeliveryExtra::boxed(member.id().into_iter().collect(), Some(filter.clone())),
        };
        Metrics::incr(&self.metrics.shared_redelivered);
        if let (Some(store), true) = (&self.store, slot.is_persistent()) {
            let kept = delivery.message.stored_id != 0 && delivery.qos != QoS::AtMostOnce;
            if kept {
                let message = &delivery.message;
                let (id, qos) = (message.stored_id, delivery.qos);
                store.commit(None, |w| {
                    persist::write_message(w, message);
                    w.queue(
                        slot.client_id.as_str(),
                        id,
                        qos,
                        false,
                        delivery.subscription_ids(),
                    );
                });
            }
        }
        self.charge_deliveries(1);
        if !offer(&slot, delivery, Limit::Enforced, None, &self.metrics) {
            self.refund_deliveries(1);
        }
    }

    /// Charges the memory budget for the deliveries of one message before
    /// they are offered (a session may take one, and give its share back,
    /// before the router is done), once per message rather than once per
    /// delivery: a counter shared by every core, added to per delivery, cost
    /// fan-out a tenth of its throughput. Each mailbox gives its share back
    /// as its session takes them; `refund_deliveries` what was not queued.
    fn charge_deliveries(&self, deliveries: usize) {
        if deliveries > 0 {
            self.budget.charge(deliveries as u64 * DELIVERY_COST);
        }
    }

    fn refund_deliveries(&self, deliveries: usize) {
        if deliveries > 0 {
            self.budget.release(deliveries as u64 * DELIVERY_COST);
        }
    }

    /// Stores a retained message within the caps; beyond them it is still
    /// delivered to current subscribers, just not kept.
    fn retain(&mut self, message: &Arc<Message>) -> Update {
        let update = self.retained.update(message);
        if update == Update::Refused {
            if let Some(suppressed) = self
                .retained_refused
                .count(&self.metrics.retained_refused_limit)
            {
                warn!(
                    topic = %message.topic,
                    stored = self.retained.len(),
                    bytes = self.retained.bytes(),
                    suppressed,
                    "retained message not stored: max_retained_messages or max_retained_bytes reached"
                );
            }
        }
        Metrics::set(
            &self.metrics.retained_messages_current,
            self.retained.len() as u64,
        );
        Metrics::set(
            &self.metrics.retained_bytes_current,
            self.retained.bytes() as u64,
        );
        update
    }

    /// Adds the filters of one SUBSCRIBE. A filter repeated in the packet is
    /// subscribed once, with the options of its last occurrence (as handling
    /// them one after the other would leave it), and its retained messages
    /// are sent once; every occurrence still gets its reason code, in order.
    fn subscribe(&mut self, slot: &Arc<SessionSlot>, request: SubscribeRequest) -> Subscribed {
        slot.mark_subscribed();
        let filters = &request.filters;
        // Filter -> (index of its last occurrence, its reason code).
        let mut fate: HashMap<&TopicFilter, (usize, ReasonCode), RandomState> = HashMap::default();
        for (index, (filter, _)) in filters.iter().enumerate() {
            fate.insert(filter, (index, ReasonCode::UNSPECIFIED_ERROR));
        }
        let mut cursors = Vec::new();
        for (index, (filter, options)) in filters.iter().enumerate() {
            let Some((last, code)) = fate.get_mut(filter) else {
                continue;
            };
            if *last != index {
                continue;
            }
            let id = request.subscription_id;
            match self.subscribe_one(slot, filter, *options, id, request.v5) {
                Ok(new) => {
                    *code = ReasonCode(options.qos as u8);
                    // [MQTT-3.3.1-9], [MQTT-3.3.1-10], [MQTT-3.3.1-11];
                    // none for a shared subscription [MQTT-4.8.2-?].
                    let send_retained = !shared::is_shared(filter)
                        && match options.retain_handling {
                            RetainHandling::OnSubscribe => true,
                            RetainHandling::OnNewSubscription => new,
                            RetainHandling::Never => false,
                        };
                    if send_retained {
                        cursors.push(RetainedCursor::for_subscription(
                            filter.clone(),
                            *options,
                            id,
                        ));
                    }
                }
                Err(refused) => *code = refused,
            }
        }
        // Each occurrence is answered with its own QoS when granted.
        let codes = filters
            .iter()
            .map(|(filter, options)| match fate.get(filter) {
                Some((_, code)) if code.is_failure() => *code,
                Some(_) => ReasonCode(options.qos as u8),
                None => ReasonCode::UNSPECIFIED_ERROR,
            })
            .collect();
        self.count_subscriptions();
        let cursors = self.first_retained(slot, cursors);
        Subscribed { codes, cursors }
    }

    /// Subscribes one filter within the caps [MQTT-3.8.4-3]: replacing an
    /// existing subscription always works. `Ok(true)` for a new
    /// subscription, `Ok(false)` for a replaced one.
    fn subscribe_one(
        &mut self,
        slot: &Arc<SessionSlot>,
        filter: &TopicFilter,
        options: SubscriptionOptions,
        id: Option<u32>,
        v5: bool,
    ) -> Result<bool, ReasonCode> {
        let client_id = &slot.client_id;
        if let Some(Err(shared::BadShareName)) = shared::split(filter) {
            return Err(ReasonCode::TOPIC_FILTER_INVALID.v3_or(v5));
        }
        if !self.limits.topic_fits(filter.as_str()) {
            let counter = &self.metrics.topics_refused_limit;
            self.refused(
                counter,
                client_id,
                "filter over max_topic_levels or max_topic_len",
            );
            return Err(ReasonCode::QUOTA_EXCEEDED.v3_or(v5));
        }
        let known = self.filters_by_client.entry(client_id.clone()).or_default();
        if !known.contains(filter) && known.len() >= self.limits.max_subscriptions_per_client {
            let counter = &self.metrics.subscriptions_refused_limit;
            self.refused(counter, client_id, "max_subscriptions_per_client reached");
            return Err(ReasonCode::QUOTA_EXCEEDED.v3_or(v5));
        }
        known.insert(filter.clone());
        let subscriber = Subscriber {
            options,
            extra: DeliveryExtra::boxed(
                id.into_iter().collect(),
                shared::is_shared(filter).then(|| filter.clone()),
            ),
            slot: Arc::clone(slot),
        };
        Ok(self.subscriptions.insert(filter, client_id, subscriber))
    }

    /// Counts a filter refused with 0x80 and logs it, at most once a second.
    fn refused(&self, counter: &AtomicU64, client_id: &ClientId, why: &'static str) {
        if let Some(suppressed) = self.subscriptions_refused.count(counter) {
            warn!(%client_id, suppressed, "SUBACK 0x80: {why}");
        }
    }

    /// Queues the first `RETAINED_BATCH` retained messages of a SUBSCRIBE's
    /// new subscriptions if the mailbox is empty; returns the cursors that
    /// have more. A mailbox with mail waits for its session to pull, so a
    /// client repeating SUBSCRIBEs without reading adds nothing to it.
    fn first_retained(
        &mut self,
        slot: &SessionSlot,
        cursors: Vec<RetainedCursor>,
    ) -> Vec<RetainedCursor> {
        let mut room = if slot.mailbox.is_empty() {
            RETAINED_BATCH
        } else {
            0
        };
        let mut left = Vec::new();
        for mut cursor in cursors {
            if room > 0 {
                let (sent, more) = self.send_retained(slot, &mut cursor, room);
                room -= sent.min(room);
                if !more {
                    continue;
                }
            }
            left.push(cursor);
        }
        left
    }

    /// Queues up to `max` of a cursor's retained messages in the session's
    /// mailbox [MQTT-3.3.1-6], [MQTT-3.3.1-8]; returns whether more may
    /// follow, and how many were sent. Only ever offered to an empty mailbox
    /// (on SUBSCRIBE, or when the session pulls), so they go beyond the
    /// mailbox's limit by one batch at most.
    fn send_retained(
        &mut self,
        slot: &SessionSlot,
        cursor: &mut RetainedCursor,
        max: usize,
    ) -> (usize, bool) {
        let mut batch = std::mem::take(&mut self.retained_scratch);
        batch.clear();
        let more = self.retained.next_batch(cursor, max, &mut batch);
        let sent = batch.len();
        self.charge_deliveries(sent);
        let mut queued = 0;
        for message in batch.drain(..) {
            let delivery = Delivery {
                qos: cursor.qos.min(message.qos),
                message,
                retain: true,
                extra: DeliveryExtra::boxed(cursor.subscription_id.into_iter().collect(), None),
            };
            queued += usize::from(offer(slot, delivery, Limit::Waived, None, &self.metrics));
        }
        self.refund_deliveries(sent - queued);
        self.retained_scratch = batch;
        (sent, more)
    }

    fn count_subscriptions(&self) {
        Metrics::set(
            &self.metrics.subscriptions_current,
            self.subscriptions.len() as u64,
        );
    }

    /// Removes one subscription; `true` if it existed.
    fn unsubscribe(&mut self, client_id: &ClientId, filter: &TopicFilter) -> bool {
        let existed = self.subscriptions.remove(filter, client_id);
        if let Some(known) = self.filters_by_client.get_mut(client_id) {
            known.remove(filter);
            if known.is_empty() {
                self.filters_by_client.remove(client_id);
            }
        }
        existed
    }

    fn drop_session(&mut self, client_id: &ClientId) {
        for filter in self.filters_by_client.remove(client_id).unwrap_or_default() {
            self.subscriptions.remove(&filter, client_id);
        }
    }

    /// Calls `visit` for every subscription matching `topic`.
    pub fn for_each_match(
        &self,
        topic: &tidemq_protocol::TopicName,
        visit: impl FnMut(&ClientId, &Subscriber),
    ) {
        self.subscriptions.for_each_match(topic, visit);
    }

    #[cfg(test)]
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    #[cfg(test)]
    pub fn retained_count(&self) -> usize {
        self.retained.len()
    }
}

/// One matching subscription, as a publish gathers them.
#[derive(Debug)]
pub struct Match {
    /// The slot's address: sorts and dedups without hashing.
    address: usize,
    qos: QoS,
    retain_as_published: bool,
    slot: Arc<SessionSlot>,
    /// Subscription identifiers, the shared subscription that chose this
    /// session: `None` for most (and small, as publishes sort these).
    extra: Option<Box<DeliveryExtra>>,
}

impl Match {
    fn new(sub: &Subscriber) -> Match {
        Match {
            address: Arc::as_ptr(&sub.slot) as usize,
            qos: sub.options.qos,
            retain_as_published: sub.options.retain_as_published,
            slot: Arc::clone(&sub.slot),
            extra: sub.extra.clone(),
        }
    }
}

/// Leaves one entry per session (one copy per client [MQTT-3.3.5-1]) at the
/// highest QoS of its matching subscriptions, carrying the identifiers of
/// all of them [MQTT-3.3.4-3] and Retain As Published if any has it.
/// Sorting by address avoids hashing on the common single-match path.
fn merge_overlapping(matches: &mut Vec<Match>) {
    if matches.len() < 2 {
        return;
    }
    // Highest QoS first within a session, so the kept entry has it.
    matches.sort_unstable_by(|a, b| a.address.cmp(&b.address).then(b.qos.cmp(&a.qos)));
    matches.dedup_by(|later, kept| {
        if later.address != kept.address {
            return false;
        }
        kept.retain_as_published |= later.retain_as_published;
        if let Some(mut more) = later.extra.take() {
            let extra = kept.extra.get_or_insert_with(Box::default);
            extra.subscription_ids.append(&mut more.subscription_ids);
            // One copy for the session: it answers for the shared
            // subscription if one chose it.
            if extra.shared.is_none() {
                extra.shared = more.shared.take();
            }
        }
        true
    });
}

/// Offers a delivery to a session's mailbox, and counts what was not
/// queued. Returns whether it was queued.
fn offer(
    slot: &SessionSlot,
    delivery: Delivery,
    limit: Limit,
    receipt: Option<&Receipt>,
    metrics: &Metrics,
) -> bool {
    let offered = slot.mailbox.offer(delivery, limit, receipt);
    if offered == Offered::Held {
        Metrics::incr(&metrics.held_for_slow_subscribers);
    }
    if offered == Offered::DroppedOffline {
        Metrics::incr(&metrics.dropped_qos0_offline);
    }
    if offered == Offered::DroppedFull {
        Metrics::incr(&metrics.dropped_queue_full);
        if slot.first_overflow() {
            warn!(client_id = %slot.client_id, "mailbox full: dropping messages for this session");
        } else {
            debug!(client_id = %slot.client_id, "mailbox full: message dropped");
        }
    }
    matches!(offered, Offered::Queued | Offered::Held)
}

#[cfg(test)]
mod tests;
