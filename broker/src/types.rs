//! Small types shared across the broker: identities and the message that
//! travels from a publisher through the router to every subscriber.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use tidemq_protocol::{QoS, TopicFilter, TopicName};
use tokio::sync::oneshot;

use crate::budget::{Budget, Charge};

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
}

/// What a message costs the memory budget besides its topic and payload.
const MESSAGE_OVERHEAD: usize = std::mem::size_of::<Message>() + 16;

impl Message {
    /// A message outside the memory budget (tests, benches).
    pub fn new(topic: TopicName, payload: Bytes, qos: QoS, retain: bool) -> Message {
        Message {
            topic,
            payload,
            qos,
            retain,
            charge: Charge::default(),
        }
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
}

impl RetainedCursor {
    pub fn new(filter: TopicFilter, qos: QoS) -> RetainedCursor {
        RetainedCursor {
            filter,
            qos,
            after: None,
        }
    }
}

/// Gates a publisher's acknowledgement. Every delivery that had to be queued
/// beyond a session's `max_queued_messages` holds a clone; when the last clone
/// is dropped (the subscriber's session took the delivery, or went offline)
/// the receiver resolves and the PUBACK / PUBREC goes out.
#[derive(Debug, Clone)]
pub struct Receipt(#[allow(dead_code)] Arc<oneshot::Sender<()>>);

impl Receipt {
    pub fn new() -> (Receipt, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Receipt(Arc::new(tx)), rx)
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
    /// Set only on deliveries held beyond the mailbox's limit.
    pub receipt: Option<Receipt>,
}
