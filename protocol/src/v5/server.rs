//! Reads what a broker sends, as a client would: for the round-trip tests,
//! the end-to-end test harness and the load tool. As strict as the client
//! side: reserved flags, reason codes and properties are checked.

use crate::error::{ProtocolError, SpecViolation};
use crate::framer::Frame;
use crate::packet::{ConnAck, ConnAckProperties, Outgoing, ProtocolVersion};
use crate::reader::Reader;
use crate::reason::ReasonCode;

use super::decode::{
    ack, ack_properties, auth, disconnect, packet_id, packet_name, publish, reason,
};
use super::properties::{self, Context};

/// Decodes one packet a broker sent on a connection of `version`.
pub fn decode_server_packet(
    frame: &Frame,
    version: ProtocolVersion,
) -> Result<Outgoing, ProtocolError> {
    let kind = frame.packet_type();
    let expected_flags = match kind {
        3 => frame.flags(),
        6 => 0b0010,
        2 | 4 | 5 | 7 | 9 | 11 | 13 => 0,
        14 | 15 if version.is_v5() => 0,
        other => return Err(SpecViolation::UnexpectedPacketType(other).into()),
    };
    if frame.flags() != expected_flags {
        return Err(SpecViolation::ReservedFlags(kind).into());
    }
    let mut r = Reader::new(frame.body(), packet_name(kind));
    let packet = if version.is_v5() {
        v5(kind, frame.flags(), &mut r)?
    } else {
        v3(kind, frame.flags(), &mut r)?
    };
    r.finish(SpecViolation::TrailingBytes(kind))?;
    Ok(packet)
}

fn v5(kind: u8, flags: u8, r: &mut Reader) -> Result<Outgoing, ProtocolError> {
    Ok(match kind {
        2 => {
            let session_present = connack_flags(r)?;
            let reason = reason(2, r)?;
            let p = properties::read(r, Context::ConnAck)?;
            Outgoing::ConnAck(ConnAck {
                session_present,
                reason,
                properties: Box::new(ConnAckProperties {
                    session_expiry_interval: p.session_expiry_interval,
                    receive_maximum: p.receive_maximum,
                    maximum_qos: p.maximum_qos,
                    retain_available: p.retain_available,
                    maximum_packet_size: p.maximum_packet_size,
                    assigned_client_identifier: p.assigned_client_identifier,
                    topic_alias_maximum: p.topic_alias_maximum,
                    reason_string: p.reason_string,
                    user_properties: p.user_properties,
                    wildcard_subscription_available: p.wildcard_subscription_available,
                    subscription_identifiers_available: p.subscription_identifier_available,
                    shared_subscription_available: p.shared_subscription_available,
                    server_keep_alive: p.server_keep_alive,
                    response_information: p.response_information,
                    server_reference: p.server_reference,
                    authentication_method: p.authentication_method,
                    authentication_data: p.authentication_data,
                }),
            })
        }
        3 => Outgoing::Publish(publish(flags, r, Context::ServerPublish)?),
        4 => Outgoing::PubAck(ack(kind, r)?),
        5 => Outgoing::PubRec(ack(kind, r)?),
        6 => Outgoing::PubRel(ack(kind, r)?),
        7 => Outgoing::PubComp(ack(kind, r)?),
        9 | 11 => {
            let packet_id = packet_id(r)?;
            let properties = ack_properties(properties::read(r, Context::Ack)?);
            let mut codes = Vec::new();
            while !r.is_empty() {
                codes.push(reason(kind, r)?);
            }
            if kind == 9 {
                Outgoing::SubAck {
                    packet_id,
                    codes,
                    properties,
                }
            } else {
                Outgoing::UnsubAck {
                    packet_id,
                    codes,
                    properties,
                }
            }
        }
        13 => Outgoing::PingResp,
        14 => Outgoing::Disconnect(disconnect(r)?),
        15 => Outgoing::Auth(auth(r)?),
        other => return Err(SpecViolation::UnexpectedPacketType(other).into()),
    })
}

/// Bits 1-7 of the acknowledge flags are reserved [MQTT-3.2.2-1].
fn connack_flags(r: &mut Reader) -> Result<bool, ProtocolError> {
    match r.u8()? {
        flags @ (0 | 1) => Ok(flags == 1),
        _ => Err(SpecViolation::ReservedFlags(2).into()),
    }
}

fn v3(kind: u8, flags: u8, r: &mut Reader) -> Result<Outgoing, ProtocolError> {
    Ok(match kind {
        2 => {
            let session_present = connack_flags(r)?;
            let reason = match r.u8()? {
                0 => ReasonCode::SUCCESS,
                1 => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                2 => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                3 => ReasonCode::SERVER_UNAVAILABLE,
                4 => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                5 => ReasonCode::NOT_AUTHORIZED,
                code => {
                    return Err(SpecViolation::ReasonCodeNotAllowed {
                        packet_type: 2,
                        code,
                    }
                    .into())
                }
            };
            Outgoing::ConnAck(ConnAck::new(session_present, reason))
        }
        3 => {
            // A 3.1.1 PUBLISH is a 5.0 one without the property block.
            let qos_bits = (flags >> 1) & 0b11;
            let topic = r.string()?;
            let packet_id = if qos_bits > 0 {
                Some(packet_id(r)?)
            } else {
                None
            };
            Outgoing::Publish(crate::packet::Publish {
                dup: flags & 0b1000 != 0,
                qos: crate::packet::QoS::from_bits(qos_bits).ok_or(SpecViolation::PublishQoS3)?,
                retain: flags & 1 != 0,
                topic: crate::topic::TopicName::new(&topic)?,
                packet_id,
                payload: r.rest(),
                properties: None,
            })
        }
        4 => Outgoing::PubAck(crate::packet::Ack::new(packet_id(r)?)),
        5 => Outgoing::PubRec(crate::packet::Ack::new(packet_id(r)?)),
        6 => Outgoing::PubRel(crate::packet::Ack::new(packet_id(r)?)),
        7 => Outgoing::PubComp(crate::packet::Ack::new(packet_id(r)?)),
        9 => {
            let packet_id = packet_id(r)?;
            let mut codes = Vec::new();
            while !r.is_empty() {
                match r.u8()? {
                    code @ (0x00..=0x02 | 0x80) => codes.push(ReasonCode(code)),
                    code => {
                        return Err(SpecViolation::ReasonCodeNotAllowed {
                            packet_type: 9,
                            code,
                        }
                        .into())
                    }
                }
            }
            Outgoing::SubAck {
                packet_id,
                codes,
                properties: Default::default(),
            }
        }
        11 => Outgoing::UnsubAck {
            packet_id: packet_id(r)?,
            codes: Vec::new(),
            properties: Default::default(),
        },
        13 => Outgoing::PingResp,
        other => return Err(SpecViolation::UnexpectedPacketType(other).into()),
    })
}
