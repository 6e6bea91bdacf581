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

mod retain;
mod subs;

use std::collections::{HashMap, HashSet};

use foldhash::fast::RandomState;
use std::sync::Arc;

use tidemq_protocol::{QoS, SubAckCode, TopicFilter};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::mailbox::{Limit, Offered};
use crate::metrics::Metrics;
use crate::registry::SessionSlot;
use crate::types::{ClientId, Delivery, Message, Receipt};

pub use retain::Retained;
pub use subs::{Subscriber, Subscriptions};

/// What sessions ask of the router.
#[derive(Debug)]
pub enum RouterMsg {
    Publish {
        message: Arc<Message>,
        /// Present for QoS 1/2 from a client: gates its acknowledgement.
        receipt: Option<Receipt>,
    },
    Subscribe {
        slot: Arc<SessionSlot>,
        filters: Vec<(TopicFilter, QoS)>,
        /// Answered after the subscriptions are in place and the retained
        /// messages are in the mailbox, so SUBACK precedes them on the wire.
        done: oneshot::Sender<Vec<SubAckCode>>,
    },
    Unsubscribe {
        client_id: ClientId,
        filters: Vec<TopicFilter>,
        done: oneshot::Sender<()>,
    },
    /// Forget every subscription of a client (clean session start or end).
    /// Answered once done, so no delivery under the old subscriptions can
    /// follow the answer.
    DropSession {
        client_id: ClientId,
        done: oneshot::Sender<()>,
    },
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

    pub async fn publish(
        &self,
        message: Message,
        receipt: Option<Receipt>,
    ) -> Result<(), RouterGone> {
        let message = Arc::new(message);
        self.send(RouterMsg::Publish { message, receipt }).await
    }

    pub async fn subscribe(
        &self,
        slot: Arc<SessionSlot>,
        filters: Vec<(TopicFilter, QoS)>,
    ) -> Result<Vec<SubAckCode>, RouterGone> {
        let (done, answer) = oneshot::channel();
        self.send(RouterMsg::Subscribe {
            slot,
            filters,
            done,
        })
        .await?;
        answer.await.map_err(|_| RouterGone)
    }

    pub async fn unsubscribe(
        &self,
        client_id: ClientId,
        filters: Vec<TopicFilter>,
    ) -> Result<(), RouterGone> {
        let (done, answer) = oneshot::channel();
        self.send(RouterMsg::Unsubscribe {
            client_id,
            filters,
            done,
        })
        .await?;
        answer.await.map_err(|_| RouterGone)
    }
}

/// Most router messages handled per wake-up.
const BATCH: usize = 256;

/// Starts the router task; it ends when every handle is dropped.
pub fn spawn(queue: usize, metrics: Arc<Metrics>) -> (RouterHandle, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel(queue);
    let task = tokio::spawn(async move {
        let mut router = Router::new(metrics);
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
    metrics: Arc<Metrics>,
    /// Reused per publish: matching client -> (highest QoS, slot).
    /// Reused per publish: (slot address, QoS, slot) of every match.
    scratch: Vec<(usize, QoS, Arc<SessionSlot>)>,
}

impl Router {
    pub fn new(metrics: Arc<Metrics>) -> Router {
        Router {
            subscriptions: Subscriptions::default(),
            filters_by_client: HashMap::default(),
            retained: Retained::default(),
            metrics,
            scratch: Vec::new(),
        }
    }

    pub fn handle(&mut self, msg: RouterMsg) {
        match msg {
            RouterMsg::Publish { message, receipt } => self.publish(&message, receipt.as_ref()),
            RouterMsg::Subscribe {
                slot,
                filters,
                done,
            } => {
                let codes = self.subscribe(&slot, filters);
                // The session may have ended meanwhile; nothing to answer then.
                let _ = done.send(codes);
            }
            RouterMsg::Unsubscribe {
                client_id,
                filters,
                done,
            } => {
                for filter in &filters {
                    self.unsubscribe(&client_id, filter);
                }
                let _ = done.send(());
            }
            RouterMsg::DropSession { client_id, done } => {
                self.drop_session(&client_id);
                let _ = done.send(());
            }
        }
    }

    /// Fans a message out: one delivery per client at the highest QoS of its
    /// matching subscriptions, downgraded to the message's QoS.
    fn publish(&mut self, message: &Arc<Message>, receipt: Option<&Receipt>) {
        if message.retain {
            self.retained.update(message);
        }
        let scratch = &mut self.scratch;
        self.subscriptions.for_each_match(&message.topic, |_, sub| {
            let address = Arc::as_ptr(&sub.slot) as usize;
            scratch.push((address, sub.qos, Arc::clone(&sub.slot)));
        });
        merge_overlapping(scratch);
        for (_, sub_qos, slot) in scratch.drain(..) {
            let delivery = Delivery {
                message: Arc::clone(message),
                qos: sub_qos.min(message.qos),
                // [MQTT-3.3.1-9]: established subscriptions get RETAIN 0.
                retain: false,
                receipt: None,
            };
            offer(&slot, delivery, Limit::Enforced, receipt, &self.metrics);
        }
    }

    fn subscribe(
        &mut self,
        slot: &Arc<SessionSlot>,
        filters: Vec<(TopicFilter, QoS)>,
    ) -> Vec<SubAckCode> {
        let client_id = &slot.client_id;
        slot.mark_subscribed();
        let mut codes = Vec::with_capacity(filters.len());
        for (filter, qos) in filters {
            let subscriber = Subscriber {
                qos,
                slot: Arc::clone(slot),
            };
            self.subscriptions.insert(&filter, client_id, subscriber);
            self.filters_by_client
                .entry(client_id.clone())
                .or_default()
                .insert(filter.clone());
            // [MQTT-3.3.1-6], [MQTT-3.3.1-8]: retained messages go to the new
            // subscription with RETAIN 1.
            for message in self.retained.matching(&filter) {
                let delivery = Delivery {
                    message: Arc::clone(message),
                    qos: qos.min(message.qos),
                    retain: true,
                    receipt: None,
                };
                // [MQTT-3.3.1-6]: retained messages go to a new subscription
                // even beyond the limit (bounded by the retained store).
                offer(slot, delivery, Limit::Waived, None, &self.metrics);
            }
            codes.push(SubAckCode::Granted(qos));
        }
        codes
    }

    fn unsubscribe(&mut self, client_id: &ClientId, filter: &TopicFilter) {
        self.subscriptions.remove(filter, client_id);
        if let Some(known) = self.filters_by_client.get_mut(client_id) {
            known.remove(filter);
            if known.is_empty() {
                self.filters_by_client.remove(client_id);
            }
        }
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

/// Leaves one entry per session, at the highest QoS of its matching
/// subscriptions (one copy per client [MQTT-3.3.5-1]). Sorting by address
/// avoids hashing on the common single-match path.
fn merge_overlapping(matches: &mut Vec<(usize, QoS, Arc<SessionSlot>)>) {
    if matches.len() < 2 {
        return;
    }
    // Highest QoS first within a session, so dedup keeps it.
    matches.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    matches.dedup_by_key(|entry| entry.0);
}

/// Offers a delivery to a session's mailbox, and counts what was not queued.
fn offer(
    slot: &SessionSlot,
    delivery: Delivery,
    limit: Limit,
    receipt: Option<&Receipt>,
    metrics: &Metrics,
) {
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
}

#[cfg(test)]
mod tests;
