//! CONNECT parsing for MQTT 3.1 (`MQIsdp`, level 3), 3.1.1 (`MQTT`, level
//! 4) and 5.0 (`MQTT`, level 5). `mqttbytes` only knows 3.1.1 and refuses
//! `MQIsdp`, so the first packet of every connection is read here; its rules
//! are checked in order of the specification's section 3.1. The MQTT 5
//! properties are read by `v5::properties`; everything else is shared.

use crate::error::{ProtocolError, SpecViolation};
use crate::framer::Frame;
use crate::packet::{Connect, ConnectProperties, LastWill, ProtocolVersion, QoS};
use crate::reader::Reader;
use crate::topic::TopicName;
use crate::v5::properties::{self, Context};

const PACKET: &str = "CONNECT";

pub(crate) const USERNAME: u8 = 0b1000_0000;
pub(crate) const PASSWORD: u8 = 0b0100_0000;
pub(crate) const WILL_RETAIN: u8 = 0b0010_0000;
pub(crate) const WILL_QOS: u8 = 0b0001_1000;
pub(crate) const WILL: u8 = 0b0000_0100;
pub(crate) const CLEAN_SESSION: u8 = 0b0000_0010;
const RESERVED: u8 = 0b0000_0001;

/// Decodes the first packet of a connection, which must be a CONNECT
/// [MQTT-3.1.0-1].
pub fn decode_connect(frame: &Frame) -> Result<Connect, ProtocolError> {
    let (version, body) = read_header(frame)?;
    if version.is_v5() {
        return crate::v5::decode_connect(frame);
    }
    read_rest(version, body)
}

/// The fixed header, protocol name and level: the version, and a reader at
/// the connect flags.
pub(crate) fn read_header(frame: &Frame) -> Result<(ProtocolVersion, Reader), ProtocolError> {
    if frame.packet_type() != 1 {
        return Err(SpecViolation::FirstPacketNotConnect.into());
    }
    if frame.flags() != 0 {
        return Err(SpecViolation::ReservedFlags(1).into());
    }
    let mut body = Reader::new(frame.body(), PACKET);
    let name = body.bytes()?;
    let level = body.u8()?;
    let version = match (name.as_ref(), level) {
        (b"MQTT", 4) => ProtocolVersion::V311,
        (b"MQIsdp", 3) => ProtocolVersion::V31,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQTT", other) | (b"MQIsdp", other) => {
            return Err(ProtocolError::UnsupportedProtocolLevel(other))
        }
        _ => return Err(SpecViolation::ProtocolName.into()),
    };
    Ok((version, body))
}

/// Flags, keep alive, (MQTT 5) properties, then the payload.
pub(crate) fn read_rest(
    version: ProtocolVersion,
    mut body: Reader,
) -> Result<Connect, ProtocolError> {
    let flags = body.u8()?;
    check_flags(flags, version)?;
    let keep_alive = body.u16()?;
    let properties = if version.is_v5() {
        connect_properties(properties::read(&mut body, Context::Connect)?)
    } else {
        ConnectProperties::default()
    };
    let client_id = body.string()?;
    let will = if flags & WILL != 0 {
        Some(read_will(flags, version, &mut body)?)
    } else {
        None
    };
    let username = optional(flags & USERNAME != 0, &mut body, Reader::string)?;
    let password = optional(flags & PASSWORD != 0, &mut body, Reader::bytes)?;
    body.finish(SpecViolation::ConnectTrailingBytes)?;
    Ok(Connect {
        version,
        client_id,
        clean_session: flags & CLEAN_SESSION != 0,
        keep_alive,
        will,
        username,
        password,
        properties,
    })
}

fn read_will(
    flags: u8,
    version: ProtocolVersion,
    body: &mut Reader,
) -> Result<LastWill, ProtocolError> {
    let will_properties = if version.is_v5() {
        Some(properties::read(body, Context::Will)?)
    } else {
        None
    };
    let topic = TopicName::new(&body.string()?)?;
    let payload = body.bytes()?;
    let qos = QoS::from_bits((flags & WILL_QOS) >> 3).ok_or(SpecViolation::WillQoS)?;
    let (delay_interval, properties) = match will_properties {
        Some(mut p) => (
            p.will_delay_interval.take().unwrap_or(0),
            crate::v5::publish_properties(p, &payload)?,
        ),
        None => (0, None),
    };
    Ok(LastWill {
        topic,
        payload,
        qos,
        retain: flags & WILL_RETAIN != 0,
        delay_interval,
        properties,
    })
}

fn connect_properties(p: properties::Properties) -> ConnectProperties {
    ConnectProperties {
        session_expiry_interval: p.session_expiry_interval,
        receive_maximum: p.receive_maximum,
        maximum_packet_size: p.maximum_packet_size,
        topic_alias_maximum: p.topic_alias_maximum,
        request_response_information: p.request_response_information,
        request_problem_information: p.request_problem_information,
        user_properties: p.user_properties,
        authentication_method: p.authentication_method,
        authentication_data: p.authentication_data,
    }
}

fn check_flags(flags: u8, version: ProtocolVersion) -> Result<(), SpecViolation> {
    if flags & RESERVED != 0 {
        return Err(SpecViolation::ConnectReservedFlag);
    }
    if flags & WILL == 0 && flags & (WILL_QOS | WILL_RETAIN) != 0 {
        return Err(SpecViolation::WillFlagsWithoutWill);
    }
    if flags & WILL_QOS == WILL_QOS {
        return Err(SpecViolation::WillQoS);
    }
    // MQTT 3.1 and 5.0 allow a password without a user name; 3.1.1 does not.
    if version == ProtocolVersion::V311 && flags & PASSWORD != 0 && flags & USERNAME == 0 {
        return Err(SpecViolation::PasswordWithoutUsername);
    }
    Ok(())
}

fn optional<T>(
    present: bool,
    body: &mut Reader,
    read: fn(&mut Reader) -> Result<T, ProtocolError>,
) -> Result<Option<T>, ProtocolError> {
    present.then(|| read(body)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framer::Framer;
    use bytes::{BufMut, BytesMut};

    fn string(buf: &mut Vec<u8>, s: &[u8]) {
        buf.put_u16(s.len() as u16);
        buf.extend_from_slice(s);
    }

    fn connect_frame(name: &[u8], level: u8, flags: u8, payload: &[&[u8]]) -> Frame {
        let mut body = Vec::new();
        string(&mut body, name);
        body.push(level);
        body.push(flags);
        body.put_u16(30);
        for field in payload {
            string(&mut body, field);
        }
        let mut wire = BytesMut::from(&[0x10, body.len() as u8][..]);
        wire.extend_from_slice(&body);
        Framer::new(1024).next_frame(&mut wire).unwrap().unwrap()
    }

    #[test]
    fn mqtt_3_1_1_connect_is_decoded() {
        let frame = connect_frame(b"MQTT", 4, CLEAN_SESSION, &[b"dev1"]);
        let connect = decode_connect(&frame).unwrap();
        assert_eq!(connect.version, ProtocolVersion::V311);
        assert_eq!(connect.client_id, "dev1");
        assert!(connect.clean_session);
        assert_eq!(connect.keep_alive, 30);
    }

    #[test]
    fn mqtt_3_1_connect_with_mqisdp_is_decoded() {
        // mqttbytes refuses this packet; see the test below.
        let frame = connect_frame(b"MQIsdp", 3, CLEAN_SESSION, &[b"old-device"]);
        let connect = decode_connect(&frame).unwrap();
        assert_eq!(connect.version, ProtocolVersion::V31);
        assert_eq!(connect.client_id, "old-device");
        let mut wire = BytesMut::from(frame.bytes.as_ref());
        assert!(mqttbytes::v4::read(&mut wire, 1024).is_err());
    }

    #[test]
    fn will_user_and_password_are_read() {
        let flags = WILL | (1 << 3) | WILL_RETAIN | USERNAME | PASSWORD;
        let frame = connect_frame(b"MQTT", 4, flags, &[b"c", b"w/t", b"bye", b"u", b"p"]);
        let connect = decode_connect(&frame).unwrap();
        let will = connect.will.unwrap();
        assert_eq!(will.topic.as_str(), "w/t");
        assert_eq!(will.payload.as_ref(), b"bye");
        assert_eq!(will.qos, QoS::AtLeastOnce);
        assert!(will.retain);
        assert_eq!(connect.username.as_deref(), Some("u"));
        assert_eq!(connect.password.as_deref(), Some(&b"p"[..]));
    }

    #[test]
    fn level_6_is_unsupported_not_malformed() {
        let frame = connect_frame(b"MQTT", 6, 0, &[b"c"]);
        assert_eq!(
            decode_connect(&frame),
            Err(ProtocolError::UnsupportedProtocolLevel(6))
        );
    }

    #[test]
    fn mqtt_3_1_2_1_wrong_protocol_name() {
        let frame = connect_frame(b"MQTX", 4, 0, &[b"c"]);
        assert_eq!(
            decode_connect(&frame),
            Err(SpecViolation::ProtocolName.into())
        );
    }

    #[test]
    fn mqtt_3_1_2_3_reserved_flag_must_be_zero() {
        let frame = connect_frame(b"MQTT", 4, RESERVED, &[b"c"]);
        assert_eq!(
            decode_connect(&frame),
            Err(SpecViolation::ConnectReservedFlag.into())
        );
    }

    #[test]
    fn mqtt_3_1_2_11_will_qos_without_will_flag() {
        let frame = connect_frame(b"MQTT", 4, 1 << 3, &[b"c"]);
        assert_eq!(
            decode_connect(&frame),
            Err(SpecViolation::WillFlagsWithoutWill.into())
        );
    }

    #[test]
    fn mqtt_3_1_2_14_will_qos_3() {
        let frame = connect_frame(b"MQTT", 4, WILL | WILL_QOS, &[b"c", b"t", b"m"]);
        assert_eq!(decode_connect(&frame), Err(SpecViolation::WillQoS.into()));
    }

    #[test]
    fn mqtt_3_1_2_22_password_without_user_name() {
        let frame = connect_frame(b"MQTT", 4, PASSWORD, &[b"c", b"p"]);
        assert_eq!(
            decode_connect(&frame),
            Err(SpecViolation::PasswordWithoutUsername.into())
        );
    }

    #[test]
    fn mqtt_3_1_0_1_first_packet_must_be_connect() {
        let mut wire = BytesMut::from(&[0xC0, 0x00][..]);
        let frame = Framer::new(16).next_frame(&mut wire).unwrap().unwrap();
        assert_eq!(
            decode_connect(&frame),
            Err(SpecViolation::FirstPacketNotConnect.into())
        );
    }

    #[test]
    fn truncated_connect_is_malformed_not_a_panic() {
        let frame = connect_frame(b"MQTT", 4, USERNAME, &[b"c"]);
        assert!(matches!(
            decode_connect(&frame),
            Err(ProtocolError::Malformed { .. })
        ));
    }

    #[test]
    fn mqtt_1_5_3_1_client_id_must_be_utf8() {
        let frame = connect_frame(b"MQTT", 4, 0, &[&[0xC3, 0x28]]);
        assert_eq!(
            decode_connect(&frame),
            Err(SpecViolation::InvalidUtf8.into())
        );
    }
}
