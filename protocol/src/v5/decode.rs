//! The packets a version-5 client sends after its CONNECT, decoded from the
//! bytes with every rule of chapter 3 that a single packet can break. Rules
//! that need the connection's history (Topic Alias mappings, Receive
//! Maximum) are the session's, with [`crate::TopicAliases`].

use crate::error::{ProtocolError, SpecViolation};
use crate::framer::Frame;
use crate::packet::{
    Ack, AckProperties, Auth, Disconnect, DisconnectProperties, Packet, PacketId, ProtocolVersion,
    Publish, QoS, RetainHandling, Subscribe, SubscriptionOptions, Unsubscribe,
};
use crate::reader::Reader;
use crate::topic::{TopicFilter, TopicName};
use crate::validate::check_fixed_header;

use super::properties::{self, Context};

/// The Reason Codes each packet type may carry (section 2.4 and the
/// tables of chapter 3).
pub(crate) fn reason_allowed(packet_type: u8, code: u8) -> bool {
    match packet_type {
        2 => matches!(
            code,
            0x00 | 0x80..=0x8A | 0x8C | 0x90 | 0x95 | 0x97 | 0x99..=0x9D | 0x9F
        ),
        4 | 5 => matches!(
            code,
            0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99
        ),
        6 | 7 => matches!(code, 0x00 | 0x92),
        9 => matches!(
            code,
            0x00..=0x02 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2
        ),
        11 => matches!(code, 0x00 | 0x11 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91),
        14 => matches!(
            code,
            0x00 | 0x04 | 0x80..=0x83 | 0x87 | 0x89 | 0x8B | 0x8D..=0x90 | 0x93..=0xA2
        ),
        15 => matches!(code, 0x00 | 0x18 | 0x19),
        _ => false,
    }
}

pub(crate) fn reason(
    packet_type: u8,
    r: &mut Reader,
) -> Result<crate::reason::ReasonCode, ProtocolError> {
    let code = r.u8()?;
    if !reason_allowed(packet_type, code) {
        return Err(SpecViolation::ReasonCodeNotAllowed { packet_type, code }.into());
    }
    Ok(crate::reason::ReasonCode(code))
}

pub(crate) fn packet_name(packet_type: u8) -> &'static str {
    match packet_type {
        1 => "CONNECT",
        2 => "CONNACK",
        3 => "PUBLISH",
        4 => "PUBACK",
        5 => "PUBREC",
        6 => "PUBREL",
        7 => "PUBCOMP",
        8 => "SUBSCRIBE",
        9 => "SUBACK",
        10 => "UNSUBSCRIBE",
        11 => "UNSUBACK",
        12 => "PINGREQ",
        13 => "PINGRESP",
        14 => "DISCONNECT",
        15 => "AUTH",
        _ => "reserved",
    }
}

pub(crate) fn decode_packet(frame: &Frame) -> Result<Packet, ProtocolError> {
    check_fixed_header(frame, ProtocolVersion::V5)?;
    let kind = frame.packet_type();
    let mut r = Reader::new(frame.body(), packet_name(kind));
    let packet = match kind {
        3 => Packet::Publish(publish(frame.flags(), &mut r, Context::ClientPublish)?),
        4 => Packet::PubAck(ack(kind, &mut r)?),
        5 => Packet::PubRec(ack(kind, &mut r)?),
        6 => Packet::PubRel(ack(kind, &mut r)?),
        7 => Packet::PubComp(ack(kind, &mut r)?),
        8 => Packet::Subscribe(subscribe(&mut r)?),
        10 => Packet::Unsubscribe(unsubscribe(&mut r)?),
        12 => Packet::PingReq,
        14 => Packet::Disconnect(disconnect(&mut r)?),
        15 => Packet::Auth(auth(&mut r)?),
        other => return Err(SpecViolation::UnexpectedPacketType(other).into()),
    };
    Ok(packet)
}

pub(crate) fn packet_id(r: &mut Reader) -> Result<PacketId, ProtocolError> {
    Ok(PacketId::new(r.u16()?).ok_or(SpecViolation::PacketIdZero)?)
}

/// A PUBLISH either way: `Context::ClientPublish` refuses Subscription
/// Identifiers [MQTT-3.3.4-6]. The flags were checked with the fixed header.
pub(crate) fn publish(
    flags: u8,
    r: &mut Reader,
    context: Context,
) -> Result<Publish, ProtocolError> {
    let qos = QoS::from_bits((flags >> 1) & 0b11).ok_or(SpecViolation::PublishQoS3)?;
    let dup = flags & 0b1000 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(SpecViolation::DupOnQoS0.into());
    }
    // Read as bytes and checked once by `TopicName::new` (UTF-8 here, the
    // rest there): one allocation per PUBLISH, on the hottest path.
    let topic = r.bytes()?;
    let topic = std::str::from_utf8(&topic).map_err(|_| SpecViolation::InvalidUtf8)?;
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        _ => Some(packet_id(r)?),
    };
    // Most PUBLISHes carry no property: a zero length is all there is to read.
    let props = match r.peek_u8() {
        Some(0) => {
            r.u8()?;
            None
        }
        _ => Some(properties::read(r, context)?),
    };
    let payload = r.rest();
    let topic = if topic.is_empty() {
        // [MQTT-3.3.2.3.4]: an empty name stands for the alias's topic.
        if props.as_ref().and_then(|p| p.topic_alias).is_none() {
            return Err(SpecViolation::EmptyTopicWithoutAlias.into());
        }
        TopicName::alias_only()
    } else {
        TopicName::new(topic)?
    };
    let properties = match props {
        Some(props) => super::publish_properties(props, &payload)?,
        None => None,
    };
    Ok(Publish {
        dup,
        qos,
        retain: flags & 1 != 0,
        topic,
        packet_id,
        payload,
        properties,
    })
}

pub(crate) fn ack_properties(p: properties::Properties) -> AckProperties {
    AckProperties {
        reason_string: p.reason_string,
        user_properties: p.user_properties,
    }
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP: a remaining length of 2 means reason
/// 0x00 and no properties, 3 a reason and no properties (3.4.2.1).
pub(crate) fn ack(kind: u8, r: &mut Reader) -> Result<Ack, ProtocolError> {
    let packet_id = packet_id(r)?;
    if r.is_empty() {
        return Ok(Ack::new(packet_id));
    }
    let reason = reason(kind, r)?;
    let properties = if r.is_empty() {
        AckProperties::default()
    } else {
        ack_properties(properties::read(r, Context::Ack)?)
    };
    r.finish(SpecViolation::TrailingBytes(kind))?;
    Ok(Ack {
        packet_id,
        reason,
        properties,
    })
}

fn subscribe(r: &mut Reader) -> Result<Subscribe, ProtocolError> {
    let packet_id = packet_id(r)?;
    let props = properties::read(r, Context::Subscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        let options = subscription_options(r.u8()?)?;
        let filter = TopicFilter::new(&filter)?;
        if options.no_local && filter.as_str().starts_with("$share/") {
            return Err(SpecViolation::NoLocalOnSharedSubscription.into());
        }
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(SpecViolation::EmptySubscribe.into());
    }
    Ok(Subscribe {
        packet_id,
        filters,
        subscription_identifier: props.subscription_identifiers.first().copied(),
        user_properties: props.user_properties,
    })
}

/// The options byte (3.8.3.1): QoS in bits 0-1, No Local bit 2, Retain As
/// Published bit 3, Retain Handling bits 4-5, bits 6-7 reserved.
fn subscription_options(byte: u8) -> Result<SubscriptionOptions, SpecViolation> {
    if byte & 0b1100_0000 != 0 {
        return Err(SpecViolation::SubscribeReservedBits);
    }
    let qos = QoS::from_bits(byte & 0b11).ok_or(SpecViolation::SubscribeQoS3)?;
    let retain_handling = match (byte >> 4) & 0b11 {
        0 => RetainHandling::OnSubscribe,
        1 => RetainHandling::OnNewSubscription,
        2 => RetainHandling::Never,
        _ => return Err(SpecViolation::RetainHandling3),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0b0100 != 0,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling,
    })
}

fn unsubscribe(r: &mut Reader) -> Result<Unsubscribe, ProtocolError> {
    let packet_id = packet_id(r)?;
    let props = properties::read(r, Context::Unsubscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(TopicFilter::new(&r.string()?)?);
    }
    if filters.is_empty() {
        return Err(SpecViolation::EmptyUnsubscribe.into());
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        user_properties: props.user_properties,
    })
}

/// Remaining length 0 is a normal disconnection (3.14.2.1); 1 a reason
/// without properties.
pub(crate) fn disconnect(r: &mut Reader) -> Result<Disconnect, ProtocolError> {
    if r.is_empty() {
        return Ok(Disconnect::default());
    }
    let reason = reason(14, r)?;
    let mut disconnect = Disconnect::new(reason);
    if !r.is_empty() {
        let p = properties::read(r, Context::Disconnect)?;
        disconnect.properties = DisconnectProperties {
            session_expiry_interval: p.session_expiry_interval,
            reason_string: p.reason_string,
            user_properties: p.user_properties,
            server_reference: p.server_reference,
        };
    }
    r.finish(SpecViolation::TrailingBytes(14))?;
    Ok(disconnect)
}

/// Remaining length 0 is success (3.15.2.1).
pub(crate) fn auth(r: &mut Reader) -> Result<Auth, ProtocolError> {
    if r.is_empty() {
        return Ok(Auth::default());
    }
    let reason = reason(15, r)?;
    let mut auth = Auth {
        reason,
        ..Auth::default()
    };
    if !r.is_empty() {
        let p = properties::read(r, Context::Auth)?;
        auth.authentication_method = p.authentication_method;
        auth.authentication_data = p.authentication_data;
        auth.reason_string = p.reason_string;
        auth.user_properties = p.user_properties;
    }
    r.finish(SpecViolation::TrailingBytes(15))?;
    Ok(auth)
}
