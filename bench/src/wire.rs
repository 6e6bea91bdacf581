//! The client side of the wire: client packets into a write buffer, server
//! packets out of a [`Frame`], for MQTT 3.1.1 and 5.
//!
//! CONNECT (both versions) and the other MQTT 3.1.1 client packets go
//! through the protocol crate's `encode_connect` and `encode_packet`, the
//! same encoders the broker's tests use. For SUBSCRIBE and PUBLISH, MQTT 5
//! differs only by an empty property block, written here; its acks with
//! reason "success" and no properties have the 3.1.1 form [MQTT-3.4.2.1]. Server packets are parsed
//! here (the protocol crate decodes client packets) with no allocation for
//! PUBLISH and acks: the payload is a slice of the frame. Pure code.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tidemq_protocol::{
    encode_packet, Connect, ConnectProperties, Frame, Packet, PacketId, ProtocolVersion, Publish,
    QoS, TopicFilter,
};

/// The protocol level this tool speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Version {
    /// MQTT 3.1.1, protocol level 4.
    V4,
    /// MQTT 5.0, protocol level 5.
    V5,
}

impl Version {
    pub fn level(self) -> u8 {
        match self {
            Version::V4 => 4,
            Version::V5 => 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{0} truncated")]
    Truncated(&'static str),
    #[error("unexpected packet type {0} from the server")]
    UnexpectedType(u8),
    #[error("PUBLISH with QoS 3 [MQTT-3.3.1-4]")]
    PublishQoS3,
    #[error("PUBLISH QoS > 0 with packet id 0 [MQTT-2.3.1-1]")]
    PacketIdZero,
    #[error("unknown MQTT 5 property {0:#04x}")]
    UnknownProperty(u64),
    #[error("variable byte integer longer than 4 bytes [MQTT-1.5.5]")]
    VarIntTooLong,
}

/// The packets a server sends, as far as this tool cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerPacket {
    ConnAck {
        session_present: bool,
        /// 3.1.1 return code or MQTT 5 reason code; 0 is success.
        code: u8,
        /// MQTT 5 Receive Maximum: the server accepts at most this many
        /// unacknowledged QoS 1/2 PUBLISHes from us.
        receive_maximum: Option<u16>,
    },
    SubAck {
        packet_id: u16,
        codes: Vec<u8>,
    },
    UnsubAck(u16),
    Publish {
        qos: QoS,
        packet_id: Option<PacketId>,
        payload: Bytes,
    },
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    PingResp,
    /// MQTT 5 only: the server's reason for closing.
    Disconnect {
        reason: u8,
    },
}

/// The body of PUBACK, PUBREC, PUBREL and PUBCOMP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub packet_id: u16,
    /// MQTT 5 reason code (absent means 0, success); always 0 for 3.1.1.
    pub reason: u8,
}

/// Whether the broker keeps a client's session after its connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionMode {
    /// Clean Session 1 (3.1.1) / Clean Start 1 with no Session Expiry
    /// Interval (5): the session ends with the connection.
    Clean,
    /// Clean Session 0 / Clean Start 0: the broker resumes the session of
    /// this client id and keeps it after a disconnect. MQTT 5 sends
    /// `expiry_secs` as the Session Expiry Interval [MQTT-3.1.2-23]; 3.1.1
    /// has no such field and the broker's own session expiry applies.
    Persistent { expiry_secs: u32 },
}

/// Appends a CONNECT with no will, user name or password, written by the
/// protocol crate's encoder.
pub fn encode_connect(
    buf: &mut BytesMut,
    version: Version,
    client_id: &str,
    keep_alive: u16,
    session: SessionMode,
) {
    let (clean_session, session_expiry_interval) = match session {
        SessionMode::Clean => (true, None),
        SessionMode::Persistent { expiry_secs } => {
            (false, (version == Version::V5).then_some(expiry_secs))
        }
    };
    let connect = Connect {
        version: match version {
            Version::V4 => ProtocolVersion::V311,
            Version::V5 => ProtocolVersion::V5,
        },
        client_id: client_id.to_owned(),
        clean_session,
        keep_alive,
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties {
            session_expiry_interval,
            ..ConnectProperties::default()
        },
    };
    tidemq_protocol::encode_connect(&connect, buf);
}

/// Appends a SUBSCRIBE for one filter.
pub fn encode_subscribe(
    buf: &mut BytesMut,
    version: Version,
    packet_id: PacketId,
    filter: &TopicFilter,
    qos: QoS,
) {
    match version {
        Version::V4 => encode_packet(
            &Packet::Subscribe(tidemq_protocol::Subscribe::qos(
                packet_id,
                vec![(filter.clone(), qos)],
            )),
            ProtocolVersion::V311,
            buf,
        ),
        Version::V5 => {
            let name = filter.as_str().as_bytes();
            buf.put_u8(0x82);
            tidemq_protocol::put_remaining_length(buf, 2 + 1 + 2 + name.len() + 1);
            buf.put_u16(packet_id.get());
            buf.put_u8(0); // no properties
            put_string(buf, name);
            buf.put_u8(qos as u8);
        }
    }
}

/// Appends a PUBLISH. `publish.packet_id` must be `Some` exactly when its
/// QoS is above 0. Takes the message by value so that its payload is
/// released at once and the caller's payload buffer can be reused.
pub fn encode_publish(buf: &mut BytesMut, version: Version, publish: Publish) {
    match version {
        Version::V4 => encode_packet(&Packet::Publish(publish), ProtocolVersion::V311, buf),
        Version::V5 => {
            let topic = publish.topic.as_str().as_bytes();
            let id_len = if publish.packet_id.is_some() { 2 } else { 0 };
            let remaining = 2 + topic.len() + id_len + 1 + publish.payload.len();
            let flags = (u8::from(publish.dup) << 3)
                | ((publish.qos as u8) << 1)
                | u8::from(publish.retain);
            buf.reserve(5 + remaining);
            buf.put_u8(0x30 | flags);
            tidemq_protocol::put_remaining_length(buf, remaining);
            put_string(buf, topic);
            if let Some(id) = publish.packet_id {
                buf.put_u16(id.get());
            }
            buf.put_u8(0); // no properties
            buf.put_slice(&publish.payload);
        }
    }
}

/// Appends PUBACK, PUBREC, PUBREL or PUBCOMP (`packet` must be one of them),
/// or PINGREQ / DISCONNECT: the same bytes in 3.1.1 and 5 (a v5 ack with
/// reason 0x00 and no properties may be written in the 3.1.1 form).
pub fn encode_control(buf: &mut BytesMut, packet: &Packet) {
    encode_packet(packet, ProtocolVersion::V311, buf);
}

/// Decodes one frame sent by a server.
pub fn decode(frame: &Frame, version: Version) -> Result<ServerPacket, WireError> {
    let mut body = frame.body();
    let v5 = version == Version::V5;
    let packet = match frame.packet_type() {
        2 => {
            let flags = get_u8(&mut body, "CONNACK")?;
            let code = get_u8(&mut body, "CONNACK")?;
            let receive_maximum = if v5 && body.has_remaining() {
                let props = properties(&mut body, "CONNACK")?;
                receive_maximum(props)?
            } else {
                None
            };
            ServerPacket::ConnAck {
                session_present: flags & 1 == 1,
                code,
                receive_maximum,
            }
        }
        3 => {
            let qos = QoS::from_bits((frame.flags() >> 1) & 0b11).ok_or(WireError::PublishQoS3)?;
            let topic_len = usize::from(get_u16(&mut body, "PUBLISH")?);
            skip(&mut body, topic_len, "PUBLISH")?;
            let packet_id = match qos {
                QoS::AtMostOnce => None,
                _ => Some(
                    PacketId::new(get_u16(&mut body, "PUBLISH")?).ok_or(WireError::PacketIdZero)?,
                ),
            };
            if v5 {
                properties(&mut body, "PUBLISH")?;
            }
            ServerPacket::Publish {
                qos,
                packet_id,
                payload: body,
            }
        }
        4 => ServerPacket::PubAck(ack(&mut body, v5, "PUBACK")?),
        5 => ServerPacket::PubRec(ack(&mut body, v5, "PUBREC")?),
        6 => ServerPacket::PubRel(ack(&mut body, v5, "PUBREL")?),
        7 => ServerPacket::PubComp(ack(&mut body, v5, "PUBCOMP")?),
        9 => {
            let packet_id = get_u16(&mut body, "SUBACK")?;
            if v5 {
                properties(&mut body, "SUBACK")?;
            }
            ServerPacket::SubAck {
                packet_id,
                codes: body.to_vec(),
            }
        }
        11 => ServerPacket::UnsubAck(get_u16(&mut body, "UNSUBACK")?),
        13 => ServerPacket::PingResp,
        14 => ServerPacket::Disconnect {
            reason: if body.has_remaining() {
                get_u8(&mut body, "DISCONNECT")?
            } else {
                0
            },
        },
        other => return Err(WireError::UnexpectedType(other)),
    };
    Ok(packet)
}

fn ack(body: &mut Bytes, v5: bool, name: &'static str) -> Result<Ack, WireError> {
    let packet_id = get_u16(body, name)?;
    let reason = if v5 && body.has_remaining() {
        get_u8(body, name)?
    } else {
        0
    };
    Ok(Ack { packet_id, reason })
}

fn get_u8(body: &mut Bytes, name: &'static str) -> Result<u8, WireError> {
    body.try_get_u8().map_err(|_| WireError::Truncated(name))
}

fn get_u16(body: &mut Bytes, name: &'static str) -> Result<u16, WireError> {
    body.try_get_u16().map_err(|_| WireError::Truncated(name))
}

fn skip(body: &mut Bytes, len: usize, name: &'static str) -> Result<(), WireError> {
    if body.remaining() < len {
        return Err(WireError::Truncated(name));
    }
    body.advance(len);
    Ok(())
}

/// Splits an MQTT 5 property block (length-prefixed) off the front of `body`.
fn properties(body: &mut Bytes, name: &'static str) -> Result<Bytes, WireError> {
    let len = get_varint(body, name)?;
    let len = usize::try_from(len).map_err(|_| WireError::Truncated(name))?;
    if body.remaining() < len {
        return Err(WireError::Truncated(name));
    }
    Ok(body.split_to(len))
}

/// Walks CONNACK properties for Receive Maximum (0x21), skipping the rest by
/// their type's size [MQTT-2.2.2.2].
fn receive_maximum(mut props: Bytes) -> Result<Option<u16>, WireError> {
    const NAME: &str = "CONNACK properties";
    let mut found = None;
    while props.has_remaining() {
        let id = get_varint(&mut props, NAME)?;
        match id {
            0x21 => found = Some(get_u16(&mut props, NAME)?),
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => skip(&mut props, 1, NAME)?,
            0x13 | 0x22 | 0x23 => skip(&mut props, 2, NAME)?,
            0x02 | 0x11 | 0x18 | 0x27 => skip(&mut props, 4, NAME)?,
            0x0B => {
                get_varint(&mut props, NAME)?;
            }
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => {
                let len = usize::from(get_u16(&mut props, NAME)?);
                skip(&mut props, len, NAME)?;
            }
            0x26 => {
                for _ in 0..2 {
                    let len = usize::from(get_u16(&mut props, NAME)?);
                    skip(&mut props, len, NAME)?;
                }
            }
            other => return Err(WireError::UnknownProperty(other)),
        }
    }
    Ok(found)
}

fn get_varint(body: &mut Bytes, name: &'static str) -> Result<u64, WireError> {
    let mut value = 0u64;
    for index in 0..4 {
        let byte = get_u8(body, name)?;
        value |= u64::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::VarIntTooLong)
}

/// Strings here are client ids and validated topics, far below 64 KiB.
fn put_string(buf: &mut BytesMut, s: &[u8]) {
    let len = s.len().min(usize::from(u16::MAX));
    buf.put_u16(len as u16);
    buf.put_slice(s.get(..len).unwrap_or_default());
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
