//! Writes packets straight into a connection's write buffer, so the writer
//! can flush many packets with one syscall. [`encode`] writes what a broker
//! sends; [`encode_packet`] writes what a client sends (for the load tool and
//! the tests).

use bytes::{BufMut, BytesMut};

use crate::framer::{put_remaining_length, remaining_length_len};
use crate::packet::{
    Ack, Connect, Outgoing, Packet, PacketId, ProtocolVersion, Publish, PublishProperties, QoS,
};
use crate::topic::TopicName;

/// Appends one broker packet to `buf`, in the form of `version`.
pub fn encode(packet: &Outgoing, version: ProtocolVersion, buf: &mut BytesMut) {
    if version.is_v5() {
        return crate::v5::encode(packet, buf);
    }
    match packet {
        Outgoing::ConnAck(connack) => {
            let code = connack.reason.v3_connect_return_code();
            // [MQTT-3.2.2-4]: session present is 0 on a refusal.
            let present = connack.session_present && code == 0;
            buf.put_slice(&[0x20, 2, u8::from(present), code]);
        }
        Outgoing::Publish(publish) => encode_publish(publish, buf),
        Outgoing::PubAck(ack) => put_id_packet(buf, 0x40, ack.packet_id),
        Outgoing::PubRec(ack) => put_id_packet(buf, 0x50, ack.packet_id),
        Outgoing::PubRel(ack) => put_id_packet(buf, 0x62, ack.packet_id),
        Outgoing::PubComp(ack) => put_id_packet(buf, 0x70, ack.packet_id),
        Outgoing::SubAck {
            packet_id, codes, ..
        } => {
            buf.put_u8(0x90);
            put_remaining_length(buf, 2 + codes.len());
            buf.put_u16(packet_id.get());
            buf.extend(codes.iter().map(|code| code.v3_suback_code()));
        }
        Outgoing::UnsubAck { packet_id, .. } => put_id_packet(buf, 0xB0, *packet_id),
        Outgoing::PingResp => buf.put_slice(&[0xD0, 0]),
        // 3.1.1 has no server DISCONNECT and no AUTH: the socket is closed.
        Outgoing::Disconnect(_) | Outgoing::Auth(_) => {}
    }
}

/// Appends a CONNECT in the form its `version` names: `MQIsdp` level 3,
/// `MQTT` level 4, or `MQTT` level 5 with its properties and will
/// properties. The flags follow the fields: a password without a user name
/// is written as it is (3.1.1 refuses it; 3.1 and 5.0 allow it).
pub fn encode_connect(connect: &Connect, buf: &mut BytesMut) {
    crate::v5::encode_connect(connect, buf);
}

/// Appends one client packet to `buf`, in the form of `version`.
pub fn encode_packet(packet: &Packet, version: ProtocolVersion, buf: &mut BytesMut) {
    if version.is_v5() {
        return crate::v5::encode_packet(packet, buf);
    }
    match packet {
        Packet::Publish(publish) => encode_publish(publish, buf),
        Packet::PubAck(ack) => put_ack(buf, 0x40, ack),
        Packet::PubRec(ack) => put_ack(buf, 0x50, ack),
        Packet::PubRel(ack) => put_ack(buf, 0x62, ack),
        Packet::PubComp(ack) => put_ack(buf, 0x70, ack),
        Packet::Subscribe(subscribe) => {
            let filters = &subscribe.filters;
            let len = 2 + filters
                .iter()
                .map(|(f, _)| 3 + f.as_str().len())
                .sum::<usize>();
            buf.put_u8(0x82);
            put_remaining_length(buf, len);
            buf.put_u16(subscribe.packet_id.get());
            for (filter, options) in filters {
                put_string(buf, filter.as_str());
                buf.put_u8(options.qos as u8);
            }
        }
        Packet::Unsubscribe(unsubscribe) => {
            let filters = &unsubscribe.filters;
            let len = 2 + filters.iter().map(|f| 2 + f.as_str().len()).sum::<usize>();
            buf.put_u8(0xA2);
            put_remaining_length(buf, len);
            buf.put_u16(unsubscribe.packet_id.get());
            for filter in filters {
                put_string(buf, filter.as_str());
            }
        }
        Packet::PingReq => buf.put_slice(&[0xC0, 0]),
        Packet::Disconnect(_) => buf.put_slice(&[0xE0, 0]),
        Packet::Auth(_) => {}
    }
}

fn put_ack(buf: &mut BytesMut, first_byte: u8, ack: &Ack) {
    put_id_packet(buf, first_byte, ack.packet_id);
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
    /// MQTT 5 only: written when `Some`, for a version-5 connection.
    pub v5: Option<PublishV5<'a>>,
}

/// What a PUBLISH to an MQTT 5 client carries besides the 3.1.1 fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishV5<'a> {
    /// Forwarded as published: payload format, response topic, correlation
    /// data, user properties, content type. Its topic alias, message expiry
    /// and subscription identifiers are not written; the fields below are.
    pub properties: Option<&'a PublishProperties>,
    /// The remaining lifetime in seconds [MQTT-3.3.2-6].
    pub message_expiry_interval: Option<u32>,
    /// The alias this connection knows the topic by.
    pub topic_alias: Option<u16>,
    /// Leave the topic name empty: the alias was set before [MQTT-3.3.2-12].
    pub omit_topic: bool,
    /// The subscriber's identifiers of every matching subscription.
    pub subscription_identifiers: &'a [u32],
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
            v5: None,
        }
    }
}

/// The number of bytes [`encode`] writes for this PUBLISH (3.1.1 form).
pub fn encoded_publish_len(publish: &Publish) -> usize {
    encoded_publish_ref_len(&PublishRef::from(publish))
}

/// The number of bytes [`encode_publish_ref`] writes: what a client's
/// Maximum Packet Size is compared with.
pub fn encoded_publish_ref_len(publish: &PublishRef<'_>) -> usize {
    if let Some(v5) = &publish.v5 {
        return crate::v5::encoded_publish_len(publish, v5);
    }
    let remaining = publish_remaining_len(publish);
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
    if let Some(v5) = &publish.v5 {
        return crate::v5::encode_publish(publish, v5, buf);
    }
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

pub(crate) fn put_id_packet(buf: &mut BytesMut, first_byte: u8, id: PacketId) {
    buf.put_slice(&[first_byte, 2]);
    buf.put_u16(id.get());
}

/// Topic strings come from the wire or from a validated name, so they fit a
/// two-byte length.
pub(crate) fn put_string(buf: &mut BytesMut, s: &str) {
    buf.put_u16(s.len().min(usize::from(u16::MAX)) as u16);
    buf.put_slice(s.as_bytes());
}
