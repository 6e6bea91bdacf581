//! Writes packets straight into a connection's write buffer, so the writer
//! can flush many packets with one syscall. [`encode`] writes what a broker
//! sends; [`encode_packet`] writes what a client sends (for the load tool and
//! the tests).

use bytes::{BufMut, BytesMut};

use crate::framer::{put_remaining_length, remaining_length_len};
use crate::packet::{Outgoing, Packet, PacketId, Publish, QoS, SubAckCode};
use crate::topic::TopicName;

/// Appends one broker packet to `buf`.
pub fn encode(packet: &Outgoing, buf: &mut BytesMut) {
    match packet {
        Outgoing::ConnAck {
            session_present,
            code,
        } => {
            buf.put_slice(&[0x20, 2, u8::from(*session_present), *code as u8]);
        }
        Outgoing::Publish(publish) => encode_publish(publish, buf),
        Outgoing::PubAck(id) => put_id_packet(buf, 0x40, *id),
        Outgoing::PubRec(id) => put_id_packet(buf, 0x50, *id),
        Outgoing::PubRel(id) => put_id_packet(buf, 0x62, *id),
        Outgoing::PubComp(id) => put_id_packet(buf, 0x70, *id),
        Outgoing::SubAck { packet_id, codes } => {
            buf.put_u8(0x90);
            put_remaining_length(buf, 2 + codes.len());
            buf.put_u16(packet_id.get());
            buf.extend(codes.iter().map(|code| match code {
                SubAckCode::Granted(qos) => *qos as u8,
                SubAckCode::Failure => 0x80,
            }));
        }
        Outgoing::UnsubAck(id) => put_id_packet(buf, 0xB0, *id),
        Outgoing::PingResp => buf.put_slice(&[0xD0, 0]),
    }
}

/// Appends one client packet to `buf`.
pub fn encode_packet(packet: &Packet, buf: &mut BytesMut) {
    match packet {
        Packet::Publish(publish) => encode_publish(publish, buf),
        Packet::PubAck(id) => put_id_packet(buf, 0x40, *id),
        Packet::PubRec(id) => put_id_packet(buf, 0x50, *id),
        Packet::PubRel(id) => put_id_packet(buf, 0x62, *id),
        Packet::PubComp(id) => put_id_packet(buf, 0x70, *id),
        Packet::Subscribe { packet_id, filters } => {
            let len = 2 + filters
                .iter()
                .map(|(f, _)| 3 + f.as_str().len())
                .sum::<usize>();
            buf.put_u8(0x82);
            put_remaining_length(buf, len);
            buf.put_u16(packet_id.get());
            for (filter, qos) in filters {
                put_string(buf, filter.as_str());
                buf.put_u8(*qos as u8);
            }
        }
        Packet::Unsubscribe { packet_id, filters } => {
            let len = 2 + filters.iter().map(|f| 2 + f.as_str().len()).sum::<usize>();
            buf.put_u8(0xA2);
            put_remaining_length(buf, len);
            buf.put_u16(packet_id.get());
            for filter in filters {
                put_string(buf, filter.as_str());
            }
        }
        Packet::PingReq => buf.put_slice(&[0xC0, 0]),
        Packet::Disconnect => buf.put_slice(&[0xE0, 0]),
    }
}

/// A PUBLISH to encode, borrowing its topic and payload: a broker sends one
/// message to many subscribers, and building an owned [`Publish`] per
/// subscriber only to encode it costs two reference-count round trips.
#[derive(Debug, Clone, Copy)]
pub struct PublishRef<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: &'a TopicName,
    /// `Some` exactly when `qos` is above 0.
    pub packet_id: Option<PacketId>,
    pub payload: &'a [u8],
}

impl<'a> From<&'a Publish> for PublishRef<'a> {
    fn from(publish: &'a Publish) -> PublishRef<'a> {
        PublishRef {
            dup: publish.dup,
            qos: publish.qos,
            retain: publish.retain,
            topic: &publish.topic,
            packet_id: publish.packet_id,
            payload: &publish.payload,
        }
    }
}

/// The number of bytes [`encode`] writes for this PUBLISH.
pub fn encoded_publish_len(publish: &Publish) -> usize {
    let remaining = publish_remaining_len(&PublishRef::from(publish));
    1 + remaining_length_len(remaining) + remaining
}

fn publish_remaining_len(publish: &PublishRef<'_>) -> usize {
    // The id is written only when there is one, so length and bytes agree
    // even for a (broker bug) QoS 1 PUBLISH without an id.
    let id_len = match (publish.qos, publish.packet_id) {
        (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(_)) => 2,
        _ => 0,
    };
    2 + publish.topic.as_str().len() + id_len + publish.payload.len()
}

fn encode_publish(publish: &Publish, buf: &mut BytesMut) {
    encode_publish_ref(&PublishRef::from(publish), buf);
}

/// Appends one PUBLISH to `buf`, exactly as [`encode`] writes it.
pub fn encode_publish_ref(publish: &PublishRef<'_>, buf: &mut BytesMut) {
    let remaining = publish_remaining_len(publish);
    buf.reserve(1 + remaining_length_len(remaining) + remaining);
    let flags =
        (u8::from(publish.dup) << 3) | ((publish.qos as u8) << 1) | u8::from(publish.retain);
    buf.put_u8(0x30 | flags);
    put_remaining_length(buf, remaining);
    put_string(buf, publish.topic.as_str());
    if let (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(id)) = (publish.qos, publish.packet_id) {
        buf.put_u16(id.get());
    }
    buf.put_slice(publish.payload);
}

fn put_id_packet(buf: &mut BytesMut, first_byte: u8, id: PacketId) {
    buf.put_slice(&[first_byte, 2]);
    buf.put_u16(id.get());
}

/// Topic strings come from the wire or from a validated name, so they fit a
/// two-byte length.
fn put_string(buf: &mut BytesMut, s: &str) {
    buf.put_u16(s.len().min(usize::from(u16::MAX)) as u16);
    buf.put_slice(s.as_bytes());
}
