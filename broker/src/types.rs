//! Small types shared across the broker: identities and the message that
//! travels from a publisher through the router to every subscriber.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use tidemq_protocol::{PublishProperties, QoS, SubscriptionOptions, TopicFilter, TopicName};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::budget::{Budget, Charge};
use crate::latency::Stamp;

/// A client identifier, cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(Arc<str>);

impl ClientId {
    pub fn new(id: &str) -> ClientId {
        ClientId(Arc::from(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One TCP connection's number, never reused while the broker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An application message as published, shared by every delivery of it.
#[derive(Debug, PartialEq, Eq)]
pub struct Message {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Its weight in the broker's memory budget, given back when the last
    /// delivery (or the retained store) lets go of it.
    pub charge: Charge,
    /// What only MQTT 5 publishers set; `None` for most messages.
    pub extra: Option<Box<MessageExtra>>,
    /// The client that published it: set for MQTT 5 publishers (No Local
    /// [MQTT-3.8.3-3]) and for all when shared subscriptions pick members by
    /// publisher. Outside `extra`, so a message without properties needs no
    /// allocation for it.
    pub origin: Option<ClientId>,
    /// Its number in the store once the router wrote it (QoS 1/2 and
    /// retained messages while `storage.enabled`); 0: not written. Sessions
    /// name it when they record a delivery sent, released or done.
    pub stored_id: u64,
    /// When its publisher's session took it, for the one PUBLISH in
    /// `latency::SAMPLE_EVERY` that is sampled; unset for the rest. Sits in
    /// padding beside `qos` and `retain`.
    pub published_at: Stamp,
}

/// The MQTT 5 side of a message: its properties (forwarded unchanged to
/// MQTT 5 subscribers) and when it expires. Boxed in [`Message`], so a
/// message without them pays one word.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MessageExtra {
    /// Without topic alias and subscription identifiers, which belong to
    /// one connection and one subscriber.
    pub properties: PublishProperties,
    /// From the Message Expiry Interval, when it was received.
    pub expires_at: Option<Instant>,
}

/// What a message costs the memory budget besides its topic and payload.
const MESSAGE_OVERHEAD: usize = std::mem::size_of::<Message>() + 16;

impl MessageExtra {
    /// What a PUBLISH's (or a will's) properties become: the topic alias is
    /// the connection's and goes [MQTT-3.3.2-7], the expiry interval becomes
    /// a deadline from now, the rest is kept to be forwarded.
    pub fn from_properties(mut properties: PublishProperties) -> MessageExtra {
        properties.topic_alias = None;
        let expires_at = properties
            .message_expiry_interval
            .take()
            .map(|secs| Instant::now() + std::time::Duration::from_secs(u64::from(secs)));
        MessageExtra {
            properties,
            expires_at,
        }
    }
}

impl Message {
    /// A message outside the memory budget (tests, benches).
    pub fn new(topic: TopicName, payload: Bytes, qos: QoS, retain: bool) -> Message {
        Message {
            topic,
            payload,
            qos,
            retain,
            charge: Charge::default(),
            extra: None,
            origin: None,
            stored_id: 0,
            published_at: Stamp::default(),
        }
    }

    /// Records who published it.
    pub fn published_by_client(mut self, origin: ClientId) -> Message {
        self.origin = Some(origin);
        self
    }

    /// Adds what an MQTT 5 publisher set; nothing when there is nothing.
    pub fn with_extra(mut self, extra: MessageExtra) -> Message {
        if extra != MessageExtra::default() {
            self.extra = Some(Box::new(extra));
        }
        self
    }

    pub fn properties(&self) -> Option<&PublishProperties> {
        self.extra.as_ref().map(|extra| &extra.properties)
    }

    pub fn expires_at(&self) -> Option<Instant> {
        self.extra.as_ref().and_then(|extra| extra.expires_at)
    }

    /// Whether `client_id` published it.
    pub fn published_by(&self, client_id: &ClientId) -> bool {
        self.origin
            .as_ref()
            .is_some_and(|origin| origin == client_id)
    }

    /// Whether its Message Expiry Interval has passed [MQTT-3.3.2-5].
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at().is_some_and(|at| at <= now)
    }

    /// The whole seconds it has left, for the PUBLISH that delivers it
    /// [MQTT-3.3.2-6]; `None` when it never expires.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        let left = self.expires_at()?.saturating_duration_since(now);
        Some(u32::try_from(left.as_secs()).unwrap_or(u32::MAX))
    }

    /// A message counted against `budget` for as long as it lives.
    pub fn charged(
        topic: TopicName,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        budget: &Arc<Budget>,
    ) -> Message {
        let bytes = topic.as_str().len() + payload.len() + MESSAGE_OVERHEAD;
        Message {
            charge: Charge::new(budget, bytes as u64),
            ..Message::new(topic, payload, qos, retain)
        }
    }

    /// Topic and payload bytes: what `max_queued_bytes` and
    /// `max_retained_bytes` count.
    pub fn weight(&self) -> usize {
        self.topic.as_str().len() + self.payload.len()
    }
}

/// Where a new subscription's retained messages stand: the filter, the QoS
/// granted, and the last topic handed to the session. The session keeps it
/// and asks the router for the next batch when its mailbox has room, so a
/// subscription matching a million retained messages never queues them all
/// at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedCursor {
    pub filter: TopicFilter,
    pub qos: QoS,
    pub after: Option<TopicName>,
    /// The subscription's identifier, carried on each delivery.
    pub subscription_id: Option<u32>,
}

impl RetainedCursor {
    pub fn new(filter: TopicFilter, qos: QoS) -> RetainedCursor {
        RetainedCursor {
            filter,
            qos,
            after: None,
            subscription_id: None,
        }
    }

    pub fn for_subscription(
        filter: TopicFilter,
        options: SubscriptionOptions,
        subscription_id: Option<u32>,
    ) -> RetainedCursor {
        RetainedCursor {
            subscription_id,
            ..RetainedCursor::new(filter, options.qos)
        }
    }
}

/// Gates a publisher's acknowledgement. Every delivery that had to be queued
/// beyond a session's `max_queued_messages` holds a clone; when the last clone
/// is dropped (the subscriber's session took the delivery, or went offline)
/// the receiver resolves with whether any session matched, and the PUBACK /
/// PUBREC goes out (MQTT 5: 0x10 "no matching subscribers" when none did).
#[derive(Debug, Clone)]
pub struct Receipt(Arc<ReceiptInner>);

#[derive(Debug)]
struct ReceiptInner {
    tx: Option<oneshot::Sender<Routed>>,
    matched: std::sync::atomic::AtomicBool,
}

/// What became of a published message, as its acknowledgement reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// At least one session's subscription matched.
    Matched,
    /// No session matched [MQTT 5 PUBACK 0x10].
    NoSubscribers,
}

impl Drop for ReceiptInner {
    fn drop(&mut self) {
        let routed = if *self.matched.get_mut() {
            Routed::Matched
        } else {
            Routed::NoSubscribers
        };
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(routed);
        }
    }
}

impl Receipt {
    pub fn new() -> (Receipt, oneshot::Receiver<Routed>) {
        let (tx, rx) = oneshot::channel();
        let inner = ReceiptInner {
            tx: Some(tx),
            matched: std::sync::atomic::AtomicBool::new(false),
        };
        (Receipt(Arc::new(inner)), rx)
    }

    /// Records that a session matched; called by the router.
    pub fn matched(&self) {
        self.0
            .matched
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl PartialEq for Receipt {
    fn eq(&self, other: &Receipt) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Receipt {}

/// One message on its way to one session: the QoS is already downgraded to
/// the subscription's, and `retain` says whether it is sent because of a new
/// subscription [MQTT-3.3.1-8] or an established one [MQTT-3.3.1-9].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    /// The receipt of a delivery held beyond the mailbox's limit,
    /// subscription identifiers, the shared subscription it came by: `None`
    /// for most deliveries, so a queued delivery is three words.
    pub extra: Option<Box<DeliveryExtra>>,
}

/// What few deliveries carry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeliveryExtra {
    /// Set only on deliveries held beyond the mailbox's limit.
    pub receipt: Option<Receipt>,
    /// MQTT 5: the identifiers of the subscriptions it matched
    /// [MQTT-3.3.4-3].
    pub subscription_ids: Vec<u32>,
    /// The shared subscription (`$share/{group}/{filter}`) that chose this
    /// session: if the session ends before it is acknowledged, another
    /// member gets it [MQTT-4.8.2-?].
    pub shared: Option<TopicFilter>,
}

impl DeliveryExtra {
    /// `None` when there is nothing to carry.
    pub fn boxed(
        subscription_ids: Vec<u32>,
        shared: Option<TopicFilter>,
    ) -> Option<Box<DeliveryExtra>> {
        if subscription_ids.is_empty() && shared.is_none() {
            return None;
        }
        Some(Box::new(DeliveryExtra {
            receipt: None,
            subscription_ids,
            shared,
        }))
    }
}

impl Delivery {
    pub fn subscription_ids(&self) -> &[u32] {
        self.extra
            .as_ref()
            .map_or(&[], |extra| extra.subscription_ids.as_slice())
    }

    pub fn shared(&self) -> Option<&TopicFilter> {
        self.extra.as_ref().and_then(|extra| extra.shared.as_ref())
    }

    /// Holds (or with `None`, lets go of) the publisher's receipt.
    pub fn set_receipt(&mut self, receipt: Option<Receipt>) {
        match (receipt, self.extra.as_mut()) {
            (receipt, Some(extra)) => extra.receipt = receipt,
            (Some(receipt), None) => {
                self.extra = Some(Box::new(DeliveryExtra {
                    receipt: Some(receipt),
                    ..DeliveryExtra::default()
                }));
            }
            (None, None) => {}
        }
    }
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    use super::*;

    #[test]
    fn the_latency_stamp_fits_in_padding_a_message_already_had() {
        // 104 bytes before the stamp was added, and still.
        assert_eq!(std::mem::size_of::<Message>(), 104);
    }
}
