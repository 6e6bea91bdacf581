//! Decodes the packets a 3.1/3.1.1 client sends after its CONNECT into
//! version-neutral [`Packet`]s (5.0 goes to `v5::decode`). Bodies are parsed
//! by `mqttbytes`; the fixed header is checked first by `validate`, and the
//! topic rules by `topic`.

use bytes::{Buf, Bytes};
use mqttbytes::v4;
use mqttbytes::FixedHeader;

use crate::error::{ProtocolError, SpecViolation};
use crate::framer::Frame;
use crate::packet::{
    Ack, Disconnect, Packet, PacketId, ProtocolVersion, Publish, QoS, Subscribe,
    SubscriptionOptions, Unsubscribe,
};
use crate::topic::{TopicFilter, TopicName};
use crate::validate::check_fixed_header;

/// Decodes one frame from a connected client.
pub fn decode_packet(frame: &Frame, version: ProtocolVersion) -> Result<Packet, ProtocolError> {
    if version.is_v5() {
        return crate::v5::decode_packet(frame);
    }
    check_fixed_header(frame, version)?;
    let remaining = frame.bytes.len().saturating_sub(frame.header_len);
    let header = FixedHeader::new(
        frame.first_byte,
        frame.header_len.saturating_sub(1),
        remaining,
    );
    let bytes = frame.bytes.clone();
    let packet = match frame.packet_type() {
        3 => Packet::Publish(publish(header, bytes)?),
        4 => Packet::PubAck(Ack::new(packet_id(frame)?)),
        5 => Packet::PubRec(Ack::new(packet_id(frame)?)),
        6 => Packet::PubRel(Ack::new(packet_id(frame)?)),
        7 => Packet::PubComp(Ack::new(packet_id(frame)?)),
        8 => subscribe(frame, header)?,
        10 => unsubscribe(header, bytes)?,
        12 => Packet::PingReq,
        14 => Packet::Disconnect(Disconnect::default()),
        other => return Err(SpecViolation::UnexpectedPacketType(other).into()),
    };
    Ok(packet)
}

fn malformed(packet: &'static str) -> impl Fn(mqttbytes::Error) -> ProtocolError {
    move |error| match error {
        mqttbytes::Error::TopicNotUtf8 => SpecViolation::InvalidUtf8.into(),
        mqttbytes::Error::PacketIdZero => SpecViolation::PacketIdZero.into(),
        other => ProtocolError::Malformed {
            packet,
            detail: format!("{other:?}"),
        },
    }
}

fn publish(header: FixedHeader, bytes: Bytes) -> Result<Publish, ProtocolError> {
    let p = v4::Publish::read(header, bytes).map_err(malformed("PUBLISH"))?;
    let qos = QoS::from_bits(p.qos as u8).ok_or(SpecViolation::PublishQoS3)?;
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        _ => Some(PacketId::new(p.pkid).ok_or(SpecViolation::PacketIdZero)?),
    };
    Ok(Publish {
        dup: p.dup,
        qos,
        retain: p.retain,
        topic: TopicName::new(&p.topic)?,
        packet_id,
        payload: p.payload,
        properties: None,
    })
}

/// The packet id of PUBACK, PUBREC, PUBREL and PUBCOMP, whose length was
/// checked to be exactly two.
fn packet_id(frame: &Frame) -> Result<PacketId, ProtocolError> {
    let mut body = frame.body();
    let id = body.try_get_u16().map_err(|_| SpecViolation::FixedLength)?;
    Ok(PacketId::new(id).ok_or(SpecViolation::PacketIdZero)?)
}

fn subscribe(frame: &Frame, header: FixedHeader) -> Result<Packet, ProtocolError> {
    check_subscribe_options(frame.body())?;
    let s = v4::Subscribe::read(header, frame.bytes.clone()).map_err(malformed("SUBSCRIBE"))?;
    let packet_id = PacketId::new(s.pkid).ok_or(SpecViolation::PacketIdZero)?;
    if s.filters.is_empty() {
        return Err(SpecViolation::EmptySubscribe.into());
    }
    let filters = s
        .filters
        .iter()
        .map(|f| {
            let qos = QoS::from_bits(f.qos as u8).ok_or(SpecViolation::SubscribeOptions)?;
            Ok((TopicFilter::new(&f.path)?, SubscriptionOptions::qos(qos)))
        })
        .collect::<Result<_, SpecViolation>>()?;
    Ok(Packet::Subscribe(Subscribe {
        packet_id,
        filters,
        subscription_identifier: None,
        user_properties: Vec::new(),
    }))
}

/// `mqttbytes` masks the requested-QoS byte; the six upper bits are reserved
/// and QoS 3 is malformed [MQTT-3.8.3-4].
fn check_subscribe_options(mut body: Bytes) -> Result<(), ProtocolError> {
    let truncated = || ProtocolError::Malformed {
        packet: "SUBSCRIBE",
        detail: "truncated topic filter".into(),
    };
    body.try_get_u16().map_err(|_| truncated())?;
    while body.has_remaining() {
        let len = usize::from(body.try_get_u16().map_err(|_| truncated())?);
        if body.remaining() < len {
            return Err(truncated());
        }
        body.advance(len);
        let options = body.try_get_u8().map_err(|_| truncated())?;
        if options & 0b1111_1100 != 0 || options & 0b11 == 0b11 {
            return Err(SpecViolation::SubscribeOptions.into());
        }
    }
    Ok(())
}

fn unsubscribe(header: FixedHeader, bytes: Bytes) -> Result<Packet, ProtocolError> {
    let u = v4::Unsubscribe::read(header, bytes).map_err(malformed("UNSUBSCRIBE"))?;
    let packet_id = PacketId::new(u.pkid).ok_or(SpecViolation::PacketIdZero)?;
    if u.topics.is_empty() {
        return Err(SpecViolation::EmptyUnsubscribe.into());
    }
    let filters = u
        .topics
        .iter()
        .map(|t| TopicFilter::new(t))
        .collect::<Result<_, _>>()?;
    Ok(Packet::Unsubscribe(Unsubscribe {
        packet_id,
        filters,
        user_properties: Vec::new(),
    }))
}
