//! What the log adds up to: the store thread's copy of every live record.
//! Replaying the log into an [`Image`] is recovery; writing an image out is
//! compaction. Owned by the store thread alone (and by `open` before it).
//!
//! A message lives while a queue entry or a retained topic refers to it;
//! a record that names something unknown (an acknowledgement of a delivery
//! never written, a session already gone) changes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use foldhash::fast::RandomState;
use tidemq_protocol::{QoS, SubscriptionOptions, TopicFilter, TopicName};

use super::record::{tag, BadRecord, Reader, Record, StoredSession, Writer};

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
    /// Message id -> the message's record (its bytes, decoded only at
    /// start) and how many references it has.
    pub messages: HashMap<u64, (Bytes, u32), RandomState>,
    pub sessions: HashMap<String, SessionImage, RandomState>,
    pub retained: HashMap<TopicName, u64, RandomState>,
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
    /// Applies the reader's next record. `validate` decodes every field
    /// (replaying a file); without it the frequent records are read without
    /// copies (the store thread, re-reading what it just wrote).
    pub fn apply_next(&mut self, reader: &mut Reader, validate: bool) -> Result<(), BadRecord> {
        match reader.peek_tag() {
            Some(tag::MESSAGE) => {
                let (id, raw) = reader.message_raw(validate)?;
                self.add_message(id, raw);
            }
            Some(tag::QUEUE | tag::SENT | tag::RELEASED | tag::DONE) => {
                let entry = reader.entry(validate)?;
                let client = reader.client(&entry);
                let (tag, id) = (entry.tag, entry.id);
                match tag {
                    tag::QUEUE => {
                        let queued = QueueEntry {
                            qos: entry.qos,
                            retain: entry.retain,
                            subscription_ids: entry.subscription_ids,
                            packet_id: None,
                            released: false,
                        };
                        self.queue(client, id, queued);
                    }
                    tag::SENT => self.sent(client, id, entry.packet_id),
                    tag::RELEASED => self.released(client, id),
                    _ => self.done(client, id),
                }
            }
            _ => self.apply(reader.record()?),
        }
        Ok(())
    }

    fn add_message(&mut self, id: u64, raw: Bytes) {
        self.last_message_id = self.last_message_id.max(id);
        if let std::collections::hash_map::Entry::Vacant(vacant) = self.messages.entry(id) {
            self.live_bytes += raw.len() as u64;
            self.fresh.push(id);
            vacant.insert((raw, 0));
        }
    }

    fn queue(&mut self, client: &str, id: u64, entry: QueueEntry) {
        if !self.refer(id) {
            return;
        }
        self.live_bytes += RECORD_OVERHEAD + client.len() as u64;
        let session = match self.sessions.get_mut(client) {
            Some(session) => session,
            None => self.sessions.entry(client.to_string()).or_default(),
        };
        if session.queue.insert(id, entry).is_some() {
            // Queued twice (cannot happen): keep one reference.
            self.live_bytes = self
                .live_bytes
                .saturating_sub(RECORD_OVERHEAD + client.len() as u64);
            self.unrefer(id);
        }
    }

    fn sent(&mut self, client: &str, id: u64, packet_id: u16) {
        if let Some(entry) = self.entry(client, id) {
            entry.packet_id = Some(packet_id);
        }
    }

    fn released(&mut self, client: &str, id: u64) {
        if let Some(entry) = self.entry(client, id) {
            entry.released = true;
        }
    }

    fn done(&mut self, client: &str, id: u64) {
        let removed = self
            .sessions
            .get_mut(client)
            .and_then(|session| session.queue.remove(&id));
        if removed.is_some() {
            self.live_bytes = self
                .live_bytes
                .saturating_sub(RECORD_OVERHEAD + client.len() as u64);
            self.unrefer(id);
        }
    }

    pub fn apply(&mut self, record: Record) {
        match record {
            Record::Snapshot => *self = Image::default(),
            Record::Message(message) => {
                let mut raw = Vec::new();
                Writer(&mut raw).record(&Record::Message(message.clone()));
                self.add_message(message.id, Bytes::from(raw));
            }
            Record::Queue {
                client,
                id,
                qos,
                retain,
                subscription_ids,
            } => {
                let entry = QueueEntry {
                    qos,
                    retain,
                    subscription_ids,
                    packet_id: None,
                    released: false,
                };
                self.queue(&client, id, entry);
            }
            Record::Sent {
                client,
                id,
                packet_id,
            } => self.sent(&client, id, packet_id),
            Record::Released { client, id } => self.released(&client, id),
            Record::Done { client, id } => self.done(&client, id),
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
            if let Some((raw, _)) = self.messages.remove(&id) {
                self.live_bytes = self.live_bytes.saturating_sub(raw.len() as u64);
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
                if let Some((raw, _)) = self.messages.remove(&id) {
                    self.live_bytes = self.live_bytes.saturating_sub(raw.len() as u64);
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
            if let Some((raw, _)) = self.messages.get(id) {
                w.0.extend_from_slice(raw);
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
    w.queue(client, id, entry.qos, entry.retain, &entry.subscription_ids);
    if let Some(packet_id) = entry.packet_id {
        w.sent(client, id, packet_id);
    }
    if entry.released {
        w.released(client, id);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::store::record::StoredMessage;

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
    fn the_fast_path_reads_what_the_full_decoder_reads() {
        let mut records = Vec::new();
        let mut w = Writer(&mut records);
        for record in [
            message(1),
            queue("a", 1),
            Record::Sent {
                client: "a".into(),
                id: 1,
                packet_id: 3,
            },
            message(2),
            queue("a", 2),
            Record::Done {
                client: "a".into(),
                id: 2,
            },
        ] {
            w.record(&record);
        }
        let (mut fast, mut full) = (Image::default(), Image::default());
        let mut reader = Reader::new(Bytes::from(records.clone()));
        while !reader.is_empty() {
            fast.apply_next(&mut reader, false).unwrap();
        }
        let mut reader = Reader::new(Bytes::from(records));
        while !reader.is_empty() {
            full.apply(reader.record().unwrap());
        }
        assert_eq!(fast.messages, full.messages);
        assert_eq!(fast.sessions["a"].queue, full.sessions["a"].queue);
        assert_eq!(fast.live_bytes, full.live_bytes);
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
            copy.apply_next(&mut reader, true).unwrap();
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
