//! What the log adds up to: the store thread's copy of every live record.
//! Replaying the log into an [`Image`] is recovery; writing an image out is
//! compaction. Owned by the store thread alone (and by `open` before it).
//!
//! A message lives while a queue entry or a retained topic refers to it;
//! a record that names something unknown (an acknowledgement of a delivery
//! never written, a session already gone) changes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tidemq_protocol::{QoS, SubscriptionOptions, TopicFilter, TopicName};

use super::record::{Record, StoredMessage, StoredSession, Writer};

/// One delivery queued for a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// Set once sent: resent with this id [MQTT-4.4.0-1].
    pub packet_id: Option<u16>,
    /// QoS 2: PUBREC came; PUBREL is owed.
    pub released: bool,
}

#[derive(Debug, Clone, Default)]
pub struct SessionImage {
    /// `None` until the session's settings were written (a subscription
    /// can be written first, in the same commit).
    pub settings: Option<StoredSession>,
    pub subscriptions: BTreeMap<TopicFilter, (SubscriptionOptions, Option<u32>)>,
    /// By message id: the order they were queued in.
    pub queue: BTreeMap<u64, QueueEntry>,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub held: BTreeSet<u16>,
}

#[derive(Debug, Default, Clone)]
pub struct Image {
    /// Message id -> the message and how many references it has.
    pub messages: HashMap<u64, (StoredMessage, u32)>,
    pub sessions: HashMap<String, SessionImage>,
    pub retained: HashMap<TopicName, u64>,
    /// The highest message id seen: new ones are numbered after it.
    pub last_message_id: u64,
    /// Bytes of payload and topic held, to tell when compaction pays.
    pub live_bytes: u64,
    /// Messages added since the last `settle`.
    fresh: Vec<u64>,
}

/// What a record adds to the live size, roughly its encoded length.
const RECORD_OVERHEAD: u64 = 24;

impl Image {
    pub fn apply(&mut self, record: Record) {
        match record {
            Record::Snapshot => *self = Image::default(),
            Record::Message(message) => {
                self.last_message_id = self.last_message_id.max(message.id);
                self.live_bytes += message_size(&message);
                self.fresh.push(message.id);
                self.messages.entry(message.id).or_insert((message, 0));
            }
            Record::Queue {
                client,
                id,
                qos,
                retain,
                subscription_ids,
            } => {
                if !self.refer(id) {
                    return;
                }
                self.live_bytes += RECORD_OVERHEAD + client.len() as u64;
                let entry = QueueEntry {
                    qos,
                    retain,
                    subscription_ids,
                    packet_id: None,
                    released: false,
                };
                let session = self.sessions.entry(client).or_default();
                if let Some(old) = session.queue.insert(id, entry) {
                    // Queued twice (cannot happen): keep one reference.
                    drop(old);
                    self.unrefer(id);
                }
            }
            Record::Sent {
                client,
                id,
                packet_id,
            } => {
                if let Some(entry) = self.entry(&client, id) {
                    entry.packet_id = Some(packet_id);
                }
            }
            Record::Released { client, id } => {
                if let Some(entry) = self.entry(&client, id) {
                    entry.released = true;
                }
            }
            Record::Done { client, id } => {
                let removed = self
                    .sessions
                    .get_mut(&client)
                    .and_then(|session| session.queue.remove(&id));
                if removed.is_some() {
                    self.live_bytes = self
                        .live_bytes
                        .saturating_sub(RECORD_OVERHEAD + client.len() as u64);
                    self.unrefer(id);
                }
            }
            Record::Session(settings) => {
                let client = settings.client_id.clone();
                self.sessions.entry(client).or_default().settings = Some(settings);
            }
            Record::SessionGone { client } => {
                if let Some(session) = self.sessions.remove(&client) {
                    for id in session.queue.keys() {
                        self.live_bytes = self
                            .live_bytes
                            .saturating_sub(RECORD_OVERHEAD + client.len() as u64);
                        self.unrefer(*id);
                    }
                }
            }
            Record::Subscribe {
                client,
                filter,
                options,
                subscription_id,
            } => {
                let session = self.sessions.entry(client).or_default();
                session
                    .subscriptions
                    .insert(filter, (options, subscription_id));
            }
            Record::Unsubscribe { client, filter } => {
                if let Some(session) = self.sessions.get_mut(&client) {
                    session.subscriptions.remove(&filter);
                }
            }
            Record::Hold { client, packet_id } => {
                self.sessions
                    .entry(client)
                    .or_default()
                    .held
                    .insert(packet_id);
            }
            Record::Unhold { client, packet_id } => {
                if let Some(session) = self.sessions.get_mut(&client) {
                    session.held.remove(&packet_id);
                }
            }
            Record::Retain { topic, id } => {
                if !self.refer(id) {
                    return;
                }
                if let Some(old) = self.retained.insert(topic, id) {
                    self.unrefer(old);
                }
            }
            Record::Unretain { topic } => {
                if let Some(old) = self.retained.remove(&topic) {
                    self.unrefer(old);
                }
            }
        }
    }

    fn entry(&mut self, client: &str, id: u64) -> Option<&mut QueueEntry> {
        self.sessions.get_mut(client)?.queue.get_mut(&id)
    }

    /// Adds a reference to message `id`; `false` if it is unknown.
    fn refer(&mut self, id: u64) -> bool {
        match self.messages.get_mut(&id) {
            Some((_, refs)) => {
                *refs += 1;
                true
            }
            None => false,
        }
    }

    fn unrefer(&mut self, id: u64) {
        let gone = match self.messages.get_mut(&id) {
            Some((_, refs)) => {
                *refs = refs.saturating_sub(1);
                *refs == 0
            }
            None => false,
        };
        if gone {
            if let Some((message, _)) = self.messages.remove(&id) {
                self.live_bytes = self.live_bytes.saturating_sub(message_size(&message));
            }
        }
    }

    /// Drops the messages added since the last call that nothing refers
    /// to (every delivery of them was dropped, or the commit that referred
    /// to them was lost): called after each commit and after recovery.
    pub fn settle(&mut self) {
        for id in std::mem::take(&mut self.fresh) {
            let unreferenced = self.messages.get(&id).is_some_and(|(_, refs)| *refs == 0);
            if unreferenced {
                if let Some((message, _)) = self.messages.remove(&id) {
                    self.live_bytes = self.live_bytes.saturating_sub(message_size(&message));
                }
            }
        }
    }

    /// Writes every live record, a snapshot marker first: the content of a
    /// compacted log.
    pub fn write_snapshot(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        w.record(&Record::Snapshot);
        let mut ids: Vec<&u64> = self.messages.keys().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some((message, _)) = self.messages.get(id) {
                w.record(&Record::Message(message.clone()));
            }
        }
        for (client, session) in &self.sessions {
            if let Some(settings) = &session.settings {
                w.record(&Record::Session(settings.clone()));
            }
            for (filter, (options, subscription_id)) in &session.subscriptions {
                w.record(&Record::Subscribe {
                    client: client.clone(),
                    filter: filter.clone(),
                    options: *options,
                    subscription_id: *subscription_id,
                });
            }
            for (id, entry) in &session.queue {
                write_entry(&mut w, client, *id, entry);
            }
            for packet_id in &session.held {
                w.record(&Record::Hold {
                    client: client.clone(),
                    packet_id: *packet_id,
                });
            }
        }
        for (topic, id) in &self.retained {
            w.record(&Record::Retain {
                topic: topic.clone(),
                id: *id,
            });
        }
    }
}

fn write_entry(w: &mut Writer<'_>, client: &str, id: u64, entry: &QueueEntry) {
    w.record(&Record::Queue {
        client: client.to_string(),
        id,
        qos: entry.qos,
        retain: entry.retain,
        subscription_ids: entry.subscription_ids.clone(),
    });
    if let Some(packet_id) = entry.packet_id {
        w.record(&Record::Sent {
            client: client.to_string(),
            id,
            packet_id,
        });
    }
    if entry.released {
        w.record(&Record::Released {
            client: client.to_string(),
            id,
        });
    }
}

fn message_size(message: &StoredMessage) -> u64 {
    (message.topic.as_str().len() + message.payload.len()) as u64 + RECORD_OVERHEAD
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::store::record::Reader;

    fn message(id: u64) -> Record {
        Record::Message(StoredMessage {
            id,
            topic: TopicName::new("t").unwrap(),
            payload: Bytes::from_static(b"p"),
            qos: QoS::AtLeastOnce,
            retain: false,
            expires_at_ms: None,
            properties: None,
        })
    }

    fn queue(client: &str, id: u64) -> Record {
        Record::Queue {
            client: client.into(),
            id,
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![],
        }
    }

    #[test]
    fn a_message_lives_while_a_queue_entry_refers_to_it() {
        let mut image = Image::default();
        image.apply(message(1));
        image.apply(queue("a", 1));
        image.apply(queue("b", 1));
        image.apply(Record::Done {
            client: "a".into(),
            id: 1,
        });
        assert!(image.messages.contains_key(&1), "b still has it");
        image.apply(Record::SessionGone { client: "b".into() });
        assert!(image.messages.is_empty());
        assert_eq!(image.live_bytes, 0);
    }

    #[test]
    fn a_snapshot_replays_to_the_same_image() {
        let mut image = Image::default();
        image.apply(message(1));
        image.apply(message(2));
        image.apply(queue("a", 1));
        image.apply(queue("a", 2));
        image.apply(Record::Sent {
            client: "a".into(),
            id: 1,
            packet_id: 5,
        });
        image.apply(Record::Released {
            client: "a".into(),
            id: 1,
        });
        image.apply(Record::Hold {
            client: "a".into(),
            packet_id: 9,
        });
        image.apply(Record::Retain {
            topic: TopicName::new("t").unwrap(),
            id: 2,
        });
        let mut out = Vec::new();
        image.write_snapshot(&mut out);
        let mut copy = Image::default();
        let mut reader = Reader::new(Bytes::from(out));
        while !reader.is_empty() {
            copy.apply(reader.record().unwrap());
        }
        assert_eq!(copy.messages.len(), 2);
        assert_eq!(copy.messages[&2].1, 2, "queued and retained");
        let a = &copy.sessions["a"];
        assert_eq!(a.queue[&1].packet_id, Some(5));
        assert!(a.queue[&1].released);
        assert!(a.held.contains(&9));
        assert_eq!(copy.live_bytes, image.live_bytes);
    }
}
