//! The store's records and their bytes. A record is one change: a message
//! kept, a delivery queued for a session, a packet id sent, an
//! acknowledgement, a session's settings, a subscription, a retained topic.
//! The log is a sequence of records; replaying it in order rebuilds what the
//! broker had promised (see `image`).
//!
//! Encoding: a tag byte, then fixed-width little-endian integers and
//! length-prefixed (u32) strings and byte strings. Decoding checks every
//! length and value: a record that does not decode means the file is
//! corrupt, never a panic.

use bytes::Bytes;
use thiserror::Error;
use tidemq_protocol::{
    PublishProperties, QoS, RetainHandling, SubscriptionOptions, TopicFilter, TopicName,
};

/// A record's bytes could not be read back.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("undecodable record: {0}")]
pub struct BadRecord(pub &'static str);

/// A message as kept: shared by every queue entry (and the retained topic)
/// that refers to its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: u64,
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Wall-clock milliseconds since the Unix epoch; `None`: never expires.
    pub expires_at_ms: Option<u64>,
    /// MQTT 5 properties, without topic alias and expiry interval.
    pub properties: Option<Box<PublishProperties>>,
}

/// A will kept with its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWill {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub delay_secs: u32,
    pub properties: Option<Box<PublishProperties>>,
}

/// A session's settings: written when its client connects and when it
/// leaves (then with `offline_at_ms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub client_id: String,
    /// Seconds it outlives its connection; `None`: never expires.
    pub expiry_secs: Option<u32>,
    pub will: Option<StoredWill>,
    /// When its connection ended; `None` while it was online.
    pub offline_at_ms: Option<u64>,
}

/// One change to what the store keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Everything before this record is superseded (a compacted log starts
    /// with it).
    Snapshot,
    Message(StoredMessage),
    /// A delivery of message `id` queued for `client`.
    Queue {
        client: String,
        id: u64,
        qos: QoS,
        retain: bool,
        subscription_ids: Vec<u32>,
    },
    /// The delivery was sent with this packet id.
    Sent {
        client: String,
        id: u64,
        packet_id: u16,
    },
    /// QoS 2: PUBREC came, PUBREL is owed until PUBCOMP.
    Released {
        client: String,
        id: u64,
    },
    /// The delivery is finished (acknowledged) or given up.
    Done {
        client: String,
        id: u64,
    },
    Session(StoredSession),
    /// The session ended: everything of `client` goes.
    SessionGone {
        client: String,
    },
    Subscribe {
        client: String,
        filter: TopicFilter,
        options: SubscriptionOptions,
        subscription_id: Option<u32>,
    },
    Unsubscribe {
        client: String,
        filter: TopicFilter,
    },
    /// Inbound QoS 2: a packet id awaiting PUBREL [MQTT-4.3.3-2].
    Hold {
        client: String,
        packet_id: u16,
    },
    Unhold {
        client: String,
        packet_id: u16,
    },
    /// The retained message of `topic` is message `id`.
    Retain {
        topic: TopicName,
        id: u64,
    },
    Unretain {
        topic: TopicName,
    },
}

pub mod tag {
    pub const SNAPSHOT: u8 = 0;
    pub const MESSAGE: u8 = 1;
    pub const QUEUE: u8 = 2;
    pub const SENT: u8 = 3;
    pub const RELEASED: u8 = 4;
    pub const DONE: u8 = 5;
    pub const SESSION: u8 = 6;
    pub const SESSION_GONE: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const UNSUBSCRIBE: u8 = 9;
    pub const HOLD: u8 = 10;
    pub const UNHOLD: u8 = 11;
    pub const RETAIN: u8 = 12;
    pub const UNRETAIN: u8 = 13;
}

/// A queue-entry record, its client id left in the reader's buffer.
#[derive(Debug)]
pub struct Entry {
    pub tag: u8,
    client: std::ops::Range<usize>,
    pub id: u64,
    pub packet_id: u16,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

/// Appends records to a buffer.
pub struct Writer<'a>(pub &'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        // Lengths fit: topics are at most 64 KiB, payloads at most MQTT's
        // 256 MB.
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(v);
    }
    fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    fn opt_u32(&mut self, v: Option<u32>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.u32(v);
            }
            None => self.u8(0),
        }
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
            None => self.u8(0),
        }
    }
    fn opt_str(&mut self, v: Option<&str>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.str(v);
            }
            None => self.u8(0),
        }
    }

    fn properties(&mut self, p: Option<&PublishProperties>) {
        let Some(p) = p else {
            self.u8(0);
            return;
        };
        self.u8(1);
        self.opt_u32(p.payload_format_indicator.map(u32::from));
        self.opt_str(p.response_topic.as_ref().map(TopicName::as_str));
        match &p.correlation_data {
            Some(data) => {
                self.u8(1);
                self.bytes(data);
            }
            None => self.u8(0),
        }
        self.u32(u32::try_from(p.user_properties.len()).unwrap_or(u32::MAX));
        for (key, value) in &p.user_properties {
            self.str(key);
            self.str(value);
        }
        self.opt_str(p.content_type.as_deref());
    }

    fn client_and_id(&mut self, tag: u8, client: &str, id: u64) {
        self.u8(tag);
        self.str(client);
        self.u64(id);
    }

    /// A message, from borrowed parts (the broker's hot path).
    #[allow(clippy::too_many_arguments)]
    pub fn message(
        &mut self,
        id: u64,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        expires_at_ms: Option<u64>,
        properties: Option<&PublishProperties>,
    ) {
        self.u8(tag::MESSAGE);
        self.u64(id);
        self.str(topic);
        self.bytes(payload);
        self.u8(qos as u8 | (u8::from(retain) << 2));
        self.opt_u64(expires_at_ms);
        self.properties(properties);
    }

    pub fn queue(&mut self, client: &str, id: u64, qos: QoS, retain: bool, subs: &[u32]) {
        self.client_and_id(tag::QUEUE, client, id);
        self.u8(qos as u8 | (u8::from(retain) << 2));
        self.u32(u32::try_from(subs.len()).unwrap_or(u32::MAX));
        for sub in subs {
            self.u32(*sub);
        }
    }

    pub fn sent(&mut self, client: &str, id: u64, packet_id: u16) {
        self.client_and_id(tag::SENT, client, id);
        self.u16(packet_id);
    }

    pub fn released(&mut self, client: &str, id: u64) {
        self.client_and_id(tag::RELEASED, client, id);
    }

    pub fn done(&mut self, client: &str, id: u64) {
        self.client_and_id(tag::DONE, client, id);
    }

    pub fn retain(&mut self, topic: &str, id: u64) {
        self.u8(tag::RETAIN);
        self.str(topic);
        self.u64(id);
    }

    pub fn unretain(&mut self, topic: &str) {
        self.u8(tag::UNRETAIN);
        self.str(topic);
    }

    pub fn hold(&mut self, client: &str, packet_id: u16) {
        self.u8(tag::HOLD);
        self.str(client);
        self.u16(packet_id);
    }

    pub fn unhold(&mut self, client: &str, packet_id: u16) {
        self.u8(tag::UNHOLD);
        self.str(client);
        self.u16(packet_id);
    }

    pub fn record(&mut self, record: &Record) {
        match record {
            Record::Snapshot => self.u8(tag::SNAPSHOT),
            Record::Message(m) => self.message(
                m.id,
                m.topic.as_str(),
                &m.payload,
                m.qos,
                m.retain,
                m.expires_at_ms,
                m.properties.as_deref(),
            ),
            Record::Queue {
                client,
                id,
                qos,
                retain,
                subscription_ids,
            } => self.queue(client, *id, *qos, *retain, subscription_ids),
            Record::Sent {
                client,
                id,
                packet_id,
            } => self.sent(client, *id, *packet_id),
            Record::Released { client, id } => self.released(client, *id),
            Record::Done { client, id } => self.done(client, *id),
            Record::Session(s) => {
                self.u8(tag::SESSION);
                self.str(&s.client_id);
                self.opt_u32(s.expiry_secs);
                self.opt_u64(s.offline_at_ms);
                match &s.will {
                    Some(will) => {
                        self.u8(1);
                        self.str(will.topic.as_str());
                        self.bytes(&will.payload);
                        self.u8(will.qos as u8 | (u8::from(will.retain) << 2));
                        self.u32(will.delay_secs);
                        self.properties(will.properties.as_deref());
                    }
                    None => self.u8(0),
                }
            }
            Record::SessionGone { client } => {
                self.u8(tag::SESSION_GONE);
                self.str(client);
            }
            Record::Subscribe {
                client,
                filter,
                options,
                subscription_id,
            } => {
                self.u8(tag::SUBSCRIBE);
                self.str(client);
                self.str(filter.as_str());
                self.u8(options_byte(options));
                self.opt_u32(*subscription_id);
            }
            Record::Unsubscribe { client, filter } => {
                self.u8(tag::UNSUBSCRIBE);
                self.str(client);
                self.str(filter.as_str());
            }
            Record::Hold { client, packet_id } => self.hold(client, *packet_id),
            Record::Unhold { client, packet_id } => self.unhold(client, *packet_id),
            Record::Retain { topic, id } => self.retain(topic.as_str(), *id),
            Record::Unretain { topic } => self.unretain(topic.as_str()),
        }
    }
}

fn options_byte(options: &SubscriptionOptions) -> u8 {
    options.qos as u8
        | (u8::from(options.no_local) << 2)
        | (u8::from(options.retain_as_published) << 3)
        | ((options.retain_handling as u8) << 4)
}

/// Reads records from a frame's bytes.
pub struct Reader {
    buf: Bytes,
    at: usize,
}

type Read<T> = Result<T, BadRecord>;

impl Reader {
    pub fn new(buf: Bytes) -> Reader {
        Reader { buf, at: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.at >= self.buf.len()
    }

    /// Where the next record starts.
    pub fn position(&self) -> usize {
        self.at
    }

    fn take(&mut self, n: usize) -> Read<&[u8]> {
        let end = self.at.checked_add(n).ok_or(BadRecord("length"))?;
        let slice = self.buf.get(self.at..end).ok_or(BadRecord("truncated"))?;
        self.at = end;
        Ok(slice)
    }
    fn u8(&mut self) -> Read<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Read<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Read<u32> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Read<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    /// A byte string, copied out: a kept value must not pin the whole
    /// frame it was read from.
    fn bytes(&mut self) -> Read<Bytes> {
        let len = self.u32()? as usize;
        Ok(Bytes::copy_from_slice(self.take(len)?))
    }
    fn string(&mut self) -> Read<String> {
        let len = self.u32()? as usize;
        let raw = self.take(len)?;
        std::str::from_utf8(raw)
            .map(str::to_string)
            .map_err(|_| BadRecord("utf-8"))
    }
    fn flag(&mut self) -> Read<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(BadRecord("flag")),
        }
    }
    fn opt_u32(&mut self) -> Read<Option<u32>> {
        Ok(if self.flag()? {
            Some(self.u32()?)
        } else {
            None
        })
    }
    fn opt_u64(&mut self) -> Read<Option<u64>> {
        Ok(if self.flag()? {
            Some(self.u64()?)
        } else {
            None
        })
    }
    fn opt_string(&mut self) -> Read<Option<String>> {
        Ok(if self.flag()? {
            Some(self.string()?)
        } else {
            None
        })
    }
    fn topic(&mut self) -> Read<TopicName> {
        TopicName::new(&self.string()?).map_err(|_| BadRecord("topic"))
    }
    fn filter(&mut self) -> Read<TopicFilter> {
        TopicFilter::new(&self.string()?).map_err(|_| BadRecord("filter"))
    }
    fn qos_retain(&mut self) -> Read<(QoS, bool)> {
        let b = self.u8()?;
        let qos = QoS::from_bits(b & 3).ok_or(BadRecord("qos"))?;
        Ok((qos, b & 4 != 0))
    }
    fn options(&mut self) -> Read<SubscriptionOptions> {
        let b = self.u8()?;
        let retain_handling = match (b >> 4) & 3 {
            0 => RetainHandling::OnSubscribe,
            1 => RetainHandling::OnNewSubscription,
            2 => RetainHandling::Never,
            _ => return Err(BadRecord("retain handling")),
        };
        Ok(SubscriptionOptions {
            qos: QoS::from_bits(b & 3).ok_or(BadRecord("qos"))?,
            no_local: b & 4 != 0,
            retain_as_published: b & 8 != 0,
            retain_handling,
        })
    }
    fn properties(&mut self) -> Read<Option<Box<PublishProperties>>> {
        if !self.flag()? {
            return Ok(None);
        }
        let payload_format_indicator = self
            .opt_u32()?
            .map(|v| u8::try_from(v).map_err(|_| BadRecord("payload format")))
            .transpose()?;
        let response_topic = match self.opt_string()? {
            Some(t) => Some(TopicName::new(&t).map_err(|_| BadRecord("response topic"))?),
            None => None,
        };
        let correlation_data = if self.flag()? {
            Some(self.bytes()?)
        } else {
            None
        };
        let pairs = self.u32()?;
        let mut user_properties = Vec::new();
        for _ in 0..pairs {
            user_properties.push((self.string()?, self.string()?));
        }
        let content_type = self.opt_string()?;
        Ok(Some(Box::new(PublishProperties {
            payload_format_indicator,
            response_topic,
            correlation_data,
            user_properties,
            content_type,
            ..PublishProperties::default()
        })))
    }

    /// The tag of the next record.
    pub fn peek_tag(&self) -> Option<u8> {
        self.buf.get(self.at).copied()
    }

    /// A message record as its bytes (copied), with its id. `validate`
    /// decodes it fully (recovery: a bad record is corruption); without, it
    /// is only measured (the store thread, re-reading what it just wrote).
    pub fn message_raw(&mut self, validate: bool) -> Read<(u64, Bytes)> {
        let start = self.at;
        let id = if validate {
            match self.record()? {
                Record::Message(message) => message.id,
                _ => return Err(BadRecord("not a message")),
            }
        } else {
            self.skip_message()?
        };
        let raw = self.buf.get(start..self.at).ok_or(BadRecord("truncated"))?;
        Ok((id, Bytes::copy_from_slice(raw)))
    }

    fn skip_bytes(&mut self) -> Read<()> {
        let len = self.u32()? as usize;
        self.take(len).map(|_| ())
    }

    fn skip_message(&mut self) -> Read<u64> {
        if self.u8()? != tag::MESSAGE {
            return Err(BadRecord("not a message"));
        }
        let id = self.u64()?;
        self.skip_bytes()?; // topic
        self.skip_bytes()?; // payload
        self.u8()?;
        self.opt_u64()?;
        if self.flag()? {
            self.opt_u32()?;
            if self.flag()? {
                self.skip_bytes()?;
            }
            if self.flag()? {
                self.skip_bytes()?;
            }
            for _ in 0..self.u32()? {
                self.skip_bytes()?;
                self.skip_bytes()?;
            }
            if self.flag()? {
                self.skip_bytes()?;
            }
        }
        Ok(id)
    }

    /// A queue-entry record (queue, sent, released, done) read without
    /// copying its client id: the store thread's most frequent records.
    /// `validate` checks the client id's UTF-8 here (replaying a file);
    /// otherwise [`Reader::client`] reads it as "" if it is not.
    pub fn entry(&mut self, validate: bool) -> Read<Entry> {
        let tag = self.u8()?;
        let len = self.u32()? as usize;
        let start = self.at;
        let raw = self.take(len)?;
        if validate {
            std::str::from_utf8(raw).map_err(|_| BadRecord("utf-8"))?;
        }
        let id = self.u64()?;
        let mut entry = Entry {
            tag,
            client: start..start + len,
            id,
            packet_id: 0,
            qos: QoS::AtMostOnce,
            retain: false,
            subscription_ids: Vec::new(),
        };
        match tag {
            tag::QUEUE => {
                (entry.qos, entry.retain) = self.qos_retain()?;
                for _ in 0..self.u32()? {
                    entry.subscription_ids.push(self.u32()?);
                }
            }
            tag::SENT => entry.packet_id = self.u16()?,
            tag::RELEASED | tag::DONE => {}
            _ => return Err(BadRecord("not a queue entry")),
        }
        Ok(entry)
    }

    /// The client id of an [`Entry`] this reader returned.
    pub fn client(&self, entry: &Entry) -> &str {
        self.buf
            .get(entry.client.clone())
            .and_then(|raw| std::str::from_utf8(raw).ok())
            .unwrap_or_default()
    }

    /// The next record; call only while not `is_empty`.
    pub fn record(&mut self) -> Read<Record> {
        let record = match self.u8()? {
            tag::SNAPSHOT => Record::Snapshot,
            tag::MESSAGE => {
                let id = self.u64()?;
                let topic = self.topic()?;
                let payload = self.bytes()?;
                let (qos, retain) = self.qos_retain()?;
                Record::Message(StoredMessage {
                    id,
                    topic,
                    payload,
                    qos,
                    retain,
                    expires_at_ms: self.opt_u64()?,
                    properties: self.properties()?,
                })
            }
            tag::QUEUE => {
                let client = self.string()?;
                let id = self.u64()?;
                let (qos, retain) = self.qos_retain()?;
                let count = self.u32()?;
                let mut subscription_ids = Vec::new();
                for _ in 0..count {
                    subscription_ids.push(self.u32()?);
                }
                Record::Queue {
                    client,
                    id,
                    qos,
                    retain,
                    subscription_ids,
                }
            }
            tag::SENT => Record::Sent {
                client: self.string()?,
                id: self.u64()?,
                packet_id: self.u16()?,
            },
            tag::RELEASED => Record::Released {
                client: self.string()?,
                id: self.u64()?,
            },
            tag::DONE => Record::Done {
                client: self.string()?,
                id: self.u64()?,
            },
            tag::SESSION => {
                let client_id = self.string()?;
                let expiry_secs = self.opt_u32()?;
                let offline_at_ms = self.opt_u64()?;
                let will = if self.flag()? {
                    let topic = self.topic()?;
                    let payload = self.bytes()?;
                    let (qos, retain) = self.qos_retain()?;
                    Some(StoredWill {
                        topic,
                        payload,
                        qos,
                        retain,
                        delay_secs: self.u32()?,
                        properties: self.properties()?,
                    })
                } else {
                    None
                };
                Record::Session(StoredSession {
                    client_id,
                    expiry_secs,
                    will,
                    offline_at_ms,
                })
            }
            tag::SESSION_GONE => Record::SessionGone {
                client: self.string()?,
            },
            tag::SUBSCRIBE => Record::Subscribe {
                client: self.string()?,
                filter: self.filter()?,
                options: self.options()?,
                subscription_id: self.opt_u32()?,
            },
            tag::UNSUBSCRIBE => Record::Unsubscribe {
                client: self.string()?,
                filter: self.filter()?,
            },
            tag::HOLD => Record::Hold {
                client: self.string()?,
                packet_id: self.u16()?,
            },
            tag::UNHOLD => Record::Unhold {
                client: self.string()?,
                packet_id: self.u16()?,
            },
            tag::RETAIN => Record::Retain {
                topic: self.topic()?,
                id: self.u64()?,
            },
            tag::UNRETAIN => Record::Unretain {
                topic: self.topic()?,
            },
            _ => return Err(BadRecord("unknown tag")),
        };
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(record: Record) {
        let mut buf = Vec::new();
        Writer(&mut buf).record(&record);
        let mut reader = Reader::new(Bytes::from(buf.clone()));
        assert_eq!(reader.record().unwrap(), record);
        assert!(reader.is_empty());
        // Every truncation is an error, never a panic.
        for cut in 0..buf.len() {
            let mut reader = Reader::new(Bytes::copy_from_slice(&buf[..cut]));
            assert!(reader.record().is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn every_record_reads_back_and_every_truncation_is_refused() {
        let topic = TopicName::new("a/b").unwrap();
        let properties = PublishProperties {
            payload_format_indicator: Some(1),
            response_topic: Some(TopicName::new("r").unwrap()),
            correlation_data: Some(Bytes::from_static(b"c")),
            user_properties: vec![("k".into(), "v".into())],
            content_type: Some("t".into()),
            ..PublishProperties::default()
        };
        let client = "c1".to_string();
        round_trip(Record::Snapshot);
        round_trip(Record::Message(StoredMessage {
            id: 7,
            topic: topic.clone(),
            payload: Bytes::from_static(b"hello"),
            qos: QoS::ExactlyOnce,
            retain: true,
            expires_at_ms: Some(123),
            properties: Some(Box::new(properties.clone())),
        }));
        round_trip(Record::Queue {
            client: client.clone(),
            id: 7,
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![1, 2],
        });
        round_trip(Record::Sent {
            client: client.clone(),
            id: 7,
            packet_id: 9,
        });
        round_trip(Record::Released {
            client: client.clone(),
            id: 7,
        });
        round_trip(Record::Done {
            client: client.clone(),
            id: 7,
        });
        round_trip(Record::Session(StoredSession {
            client_id: client.clone(),
            expiry_secs: Some(60),
            offline_at_ms: Some(5),
            will: Some(StoredWill {
                topic: topic.clone(),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: false,
                delay_secs: 3,
                properties: Some(Box::new(properties)),
            }),
        }));
        round_trip(Record::SessionGone {
            client: client.clone(),
        });
        round_trip(Record::Subscribe {
            client: client.clone(),
            filter: TopicFilter::new("a/#").unwrap(),
            options: SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::Never,
            },
            subscription_id: Some(4),
        });
        round_trip(Record::Unsubscribe {
            client: client.clone(),
            filter: TopicFilter::new("a/#").unwrap(),
        });
        round_trip(Record::Hold {
            client: client.clone(),
            packet_id: 3,
        });
        round_trip(Record::Unhold {
            client,
            packet_id: 3,
        });
        round_trip(Record::Retain {
            topic: topic.clone(),
            id: 7,
        });
        round_trip(Record::Unretain { topic });
    }

    #[test]
    fn an_unknown_tag_is_refused() {
        let mut reader = Reader::new(Bytes::from_static(&[200]));
        assert_eq!(reader.record(), Err(BadRecord("unknown tag")));
    }
}
