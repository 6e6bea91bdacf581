//! Black-box tests of the normative rules `tidemq-protocol` enforces on what a
//! client sends: every [`SpecViolation`] that `Framer`, `decode_connect` or
//! `decode_packet` can produce has a test here named after the rule it cites.
//! Where `mqttbytes` 0.6 (which parses the bodies) lets the bad bytes through,
//! the test also shows that, so the check in this crate cannot be dropped
//! unnoticed. [`every_violation_has_a_test`] fails to compile when a variant
//! is added without a test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::BytesMut;
use tidemq_protocol::{
    decode_connect, decode_packet, Ack, Framer, Packet, PacketId, ProtocolError, ProtocolVersion,
    SpecViolation,
};

/// Frames in these tests are tiny; the limit only has to be above them.
const MAX_PACKET_SIZE: usize = 64 * 1024;

/// A whole packet: first byte, remaining length, body.
fn wire(first_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first_byte];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        out.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A length-prefixed string field.
fn string(s: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(s.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn publish_body(topic: &[u8], packet_id: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let id = packet_id.map(u16::to_be_bytes);
    concat(&[
        &string(topic),
        id.as_ref().map_or(&[][..], |id| &id[..]),
        payload,
    ])
}

fn subscribe_body(packet_id: u16, filters: &[(&[u8], u8)]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    for (filter, options) in filters {
        body.extend(string(filter));
        body.push(*options);
    }
    body
}

fn unsubscribe_body(packet_id: u16, filters: &[&[u8]]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    for filter in filters {
        body.extend(string(filter));
    }
    body
}

fn connect_body(name: &[u8], level: u8, flags: u8, payload: &[&[u8]]) -> Vec<u8> {
    let mut body = string(name);
    body.extend([level, flags, 0, 60]);
    for field in payload {
        body.extend(string(field));
    }
    body
}

fn frame(bytes: &[u8]) -> tidemq_protocol::Frame {
    common::frame(bytes, MAX_PACKET_SIZE)
}

fn decode_as(version: ProtocolVersion, bytes: &[u8]) -> Result<Packet, ProtocolError> {
    decode_packet(&frame(bytes), version)
}

fn decode(bytes: &[u8]) -> Result<Packet, ProtocolError> {
    decode_as(ProtocolVersion::V311, bytes)
}

fn violation(v: SpecViolation) -> Result<Packet, ProtocolError> {
    Err(ProtocolError::Violation(v))
}

fn id(id: u16) -> PacketId {
    PacketId::new(id).unwrap()
}

/// Proves `mqttbytes` alone would let these bytes through.
fn assert_mqttbytes_accepts(bytes: &[u8]) {
    let mut buf = BytesMut::from(bytes);
    let read = mqttbytes::v4::read(&mut buf, MAX_PACKET_SIZE);
    assert!(read.is_ok(), "mqttbytes refused {bytes:02X?}: {read:?}");
}

// ---- fixed header: reserved flags --------------------------------------

#[test]
fn mqtt_3_8_1_1_subscribe_reserved_flags_must_be_0010() {
    // [MQTT-3.8.1-1] Bits 3,2,1 and 0 of the fixed header of the SUBSCRIBE
    // Control Packet are reserved and MUST be set to 0,0,1 and 0.
    let body = subscribe_body(1, &[(b"a/b", 0)]);
    assert!(decode(&wire(0x82, &body)).is_ok());
    for first_byte in (0x80..=0x8F).filter(|b| *b != 0x82) {
        let bytes = wire(first_byte, &body);
        assert_eq!(
            decode(&bytes),
            violation(SpecViolation::ReservedFlags(8)),
            "{first_byte:#04X}"
        );
    }
    assert_mqttbytes_accepts(&wire(0x80, &body));
}

#[test]
fn mqtt_3_10_1_1_unsubscribe_reserved_flags_must_be_0010() {
    // [MQTT-3.10.1-1] Bits 3,2,1 and 0 of the fixed header of the UNSUBSCRIBE
    // Control Packet are reserved and MUST be set to 0,0,1 and 0.
    let body = unsubscribe_body(1, &[b"a/b"]);
    assert!(decode(&wire(0xA2, &body)).is_ok());
    for first_byte in (0xA0..=0xAF).filter(|b| *b != 0xA2) {
        let bytes = wire(first_byte, &body);
        assert_eq!(
            decode(&bytes),
            violation(SpecViolation::ReservedFlags(10)),
            "{first_byte:#04X}"
        );
    }
    assert_mqttbytes_accepts(&wire(0xA0, &body));
}

#[test]
fn mqtt_3_6_1_1_pubrel_reserved_flags_must_be_0010() {
    // [MQTT-3.6.1-1] Bits 3,2,1 and 0 of the fixed header in the PUBREL
    // Control Packet are reserved and MUST be set to 0,0,1 and 0.
    assert_eq!(
        decode(&wire(0x62, &[0, 7])),
        Ok(Packet::PubRel(Ack::new(id(7))))
    );
    for first_byte in (0x60..=0x6F).filter(|b| *b != 0x62) {
        let bytes = wire(first_byte, &[0, 7]);
        assert_eq!(
            decode(&bytes),
            violation(SpecViolation::ReservedFlags(6)),
            "{first_byte:#04X}"
        );
    }
    assert_mqttbytes_accepts(&wire(0x60, &[0, 7]));
}

#[test]
fn mqtt_2_2_2_2_reserved_flags_of_other_packets_must_be_0() {
    // [MQTT-2.2.2-2] If invalid flags are received, the receiver MUST close
    // the Network Connection. PUBACK, PUBREC, PUBCOMP, PINGREQ and DISCONNECT
    // have all four flag bits reserved as 0.
    for (kind, body) in [
        (4u8, &[0u8, 7][..]),
        (5, &[0, 7]),
        (7, &[0, 7]),
        (12, &[]),
        (14, &[]),
    ] {
        assert!(decode(&wire(kind << 4, body)).is_ok(), "type {kind}");
        for flags in 1..=0x0F {
            let bytes = wire(kind << 4 | flags, body);
            assert_eq!(
                decode(&bytes),
                violation(SpecViolation::ReservedFlags(kind)),
                "{bytes:02X?}"
            );
        }
    }
    assert_mqttbytes_accepts(&wire(0x41, &[0, 7]));
    assert_mqttbytes_accepts(&wire(0xC1, &[]));
}

#[test]
fn mqtt_2_2_2_2_connect_reserved_flags_must_be_0() {
    // [MQTT-2.2.2-2] CONNECT's four flag bits are reserved as 0.
    let body = connect_body(b"MQTT", 4, 0x02, &[b"c"]);
    assert!(decode_connect(&frame(&wire(0x10, &body))).is_ok());
    assert_eq!(
        decode_connect(&frame(&wire(0x12, &body))),
        Err(SpecViolation::ReservedFlags(1).into())
    );
}

#[test]
fn mqtt_3_1_pubrel_subscribe_unsubscribe_may_carry_dup() {
    // MQTT 3.1 (protocol level 3) sent PUBREL, SUBSCRIBE and UNSUBSCRIBE with
    // QoS 1 and set DUP on a resend; 3.1.1 made those flags reserved.
    let cases = [
        (0x6A, vec![0, 7]),
        (0x8A, subscribe_body(7, &[(b"a/+", 1)])),
        (0xAA, unsubscribe_body(7, &[b"a/+"])),
    ];
    for (first_byte, body) in cases {
        let bytes = wire(first_byte, &body);
        assert!(
            decode_as(ProtocolVersion::V31, &bytes).is_ok(),
            "{first_byte:#04X}"
        );
        assert_eq!(
            decode_as(ProtocolVersion::V311, &bytes),
            violation(SpecViolation::ReservedFlags(first_byte >> 4))
        );
    }
    assert_eq!(
        decode_as(ProtocolVersion::V31, &wire(0x6A, &[0, 7])),
        Ok(Packet::PubRel(Ack::new(id(7))))
    );
    // Only DUP is forgiven: the QoS bits stay fixed in 3.1 too.
    assert_eq!(
        decode_as(ProtocolVersion::V31, &wire(0x6C, &[0, 7])),
        violation(SpecViolation::ReservedFlags(6))
    );
}

// ---- fixed header: packet types and lengths ----------------------------

#[test]
fn mqtt_3_1_0_2_second_connect_is_a_protocol_violation() {
    // [MQTT-3.1.0-2] The Server MUST process a second CONNECT Packet sent from
    // a Client as a protocol violation and disconnect the Client.
    let bytes = wire(0x10, &connect_body(b"MQTT", 4, 0x02, &[b"c"]));
    assert!(decode_connect(&frame(&bytes)).is_ok());
    assert_eq!(decode(&bytes), violation(SpecViolation::SecondConnect));
}

#[test]
fn mqtt_3_1_0_1_first_packet_must_be_connect() {
    // [MQTT-3.1.0-1] The first Packet sent from the Client to the Server MUST
    // be a CONNECT Packet.
    for bytes in [wire(0xC0, &[]), wire(0x30, &publish_body(b"a", None, b"x"))] {
        assert_eq!(
            decode_connect(&frame(&bytes)),
            Err(SpecViolation::FirstPacketNotConnect.into())
        );
    }
}

#[test]
fn mqtt_2_2_1_server_only_and_reserved_packet_types_are_refused() {
    // 2.2.1: CONNACK, SUBACK, UNSUBACK and PINGRESP flow only from Server to
    // Client; types 0 and 15 are reserved.
    let cases: [(u8, &[u8]); 6] = [
        (0x00, &[]),
        (0x20, &[0, 0]),
        (0x90, &[0, 1, 0]),
        (0xB0, &[0, 1]),
        (0xD0, &[]),
        (0xF0, &[]),
    ];
    for (first_byte, body) in cases {
        let kind = first_byte >> 4;
        assert_eq!(
            decode(&wire(first_byte, body)),
            violation(SpecViolation::UnexpectedPacketType(kind)),
            "type {kind}"
        );
    }
    assert_mqttbytes_accepts(&wire(0x20, &[0, 0]));
}

#[test]
fn mqtt_3_4_1_ack_packets_have_remaining_length_2() {
    // 3.4.1, 3.5.1, 3.6.1, 3.7.1: the Remaining Length of PUBACK, PUBREC,
    // PUBREL and PUBCOMP has the value 2.
    for first_byte in [0x40, 0x50, 0x62, 0x70] {
        for body in [&[][..], &[0], &[0, 1, 0], &[0, 1, 0, 0]] {
            assert_eq!(
                decode(&wire(first_byte, body)),
                violation(SpecViolation::FixedLength),
                "{first_byte:#04X} with {} body bytes",
                body.len()
            );
        }
    }
    assert_mqttbytes_accepts(&wire(0x40, &[0, 1, 0]));
}

#[test]
fn mqtt_3_12_1_pingreq_and_disconnect_have_no_body() {
    // 3.12 and 3.14: PINGREQ and DISCONNECT have no variable header and no
    // payload, so their Remaining Length is 0.
    for first_byte in [0xC0, 0xE0] {
        assert_eq!(
            decode(&wire(first_byte, &[0])),
            violation(SpecViolation::FixedLength)
        );
    }
}

#[test]
fn mqtt_2_2_3_remaining_length_is_at_most_four_bytes() {
    // 2.2.3: the maximum number of bytes in the Remaining Length field is
    // four. The framer refuses a fifth before anything else is read.
    // The fourth length byte saying "more" is enough; no fifth is awaited.
    for bytes in [
        &[0x30, 0x80, 0x80, 0x80, 0x80][..],
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
    ] {
        let mut buf = BytesMut::from(bytes);
        assert_eq!(
            Framer::new(usize::MAX).next_frame(&mut buf),
            Err(SpecViolation::RemainingLengthTooLong.into())
        );
    }
}

// ---- PUBLISH -----------------------------------------------------------

#[test]
fn mqtt_3_3_1_4_publish_qos_3_is_malformed() {
    // [MQTT-3.3.1-4] A PUBLISH Packet MUST NOT have both QoS bits set to 1.
    for first_byte in [0x36, 0x37, 0x3E, 0x3F] {
        let bytes = wire(first_byte, &publish_body(b"a/b", Some(1), b"x"));
        assert_eq!(
            decode(&bytes),
            violation(SpecViolation::PublishQoS3),
            "{first_byte:#04X}"
        );
    }
}

#[test]
fn mqtt_2_3_1_1_publish_qos_1_and_2_need_a_non_zero_packet_id() {
    // [MQTT-2.3.1-1] SUBSCRIBE, UNSUBSCRIBE, and PUBLISH (in cases where
    // QoS > 0) Control Packets MUST contain a non-zero 16-bit Packet Identifier.
    for first_byte in [0x32, 0x34] {
        let bytes = wire(first_byte, &publish_body(b"a/b", Some(0), b"x"));
        assert_eq!(
            decode(&bytes),
            violation(SpecViolation::PacketIdZero),
            "{first_byte:#04X}"
        );
    }
    // QoS 0 carries no packet id: the two bytes are payload.
    let bytes = wire(0x30, &publish_body(b"a/b", Some(0), b"x"));
    let Ok(Packet::Publish(publish)) = decode(&bytes) else {
        panic!("QoS 0 PUBLISH refused")
    };
    assert_eq!(
        (publish.packet_id, publish.payload.as_ref()),
        (None, &[0, 0, b'x'][..])
    );
}

#[test]
fn mqtt_2_3_1_1_acks_need_a_non_zero_packet_id() {
    // [MQTT-2.3.1-1] with [MQTT-2.3.1-6]: a PUBACK, PUBREC, PUBREL or PUBCOMP
    // carries the id of the PUBLISH it answers, and that is never zero.
    for first_byte in [0x40, 0x50, 0x62, 0x70] {
        let bytes = wire(first_byte, &[0, 0]);
        assert_eq!(
            decode(&bytes),
            violation(SpecViolation::PacketIdZero),
            "{first_byte:#04X}"
        );
        assert_mqttbytes_accepts(&bytes);
    }
}

#[test]
fn mqtt_3_3_2_2_publish_topic_must_not_contain_wildcards() {
    // [MQTT-3.3.2-2] The Topic Name in the PUBLISH Packet MUST NOT contain
    // wildcard characters.
    for topic in [&b"a/+"[..], b"a/#", b"+", b"#", b"a+b/c"] {
        let bytes = wire(0x30, &publish_body(topic, None, b"x"));
        assert_eq!(
            decode(&bytes),
            violation(SpecViolation::WildcardInTopicName),
            "{topic:?}"
        );
        assert_mqttbytes_accepts(&bytes);
    }
}

#[test]
fn mqtt_4_7_3_1_publish_topic_must_not_be_empty() {
    // [MQTT-4.7.3-1] All Topic Names and Topic Filters MUST be at least one
    // character long.
    let bytes = wire(0x32, &publish_body(b"", Some(1), b"x"));
    assert_eq!(decode(&bytes), violation(SpecViolation::EmptyTopic));
    assert_mqttbytes_accepts(&bytes);
}

#[test]
fn mqtt_1_5_3_1_publish_topic_must_be_well_formed_utf8() {
    // [MQTT-1.5.3-1] The character data in a UTF-8 encoded string MUST be
    // well-formed UTF-8 [...]. In particular this data MUST NOT include
    // encodings of code points between U+D800 and U+DFFF.
    let surrogate = [b'a', 0xED, 0xA0, 0x80];
    for topic in [&[0xC3, 0x28][..], &[0xFF], &surrogate] {
        let bytes = wire(0x30, &publish_body(topic, None, b"x"));
        assert_eq!(
            decode(&bytes),
            violation(SpecViolation::InvalidUtf8),
            "{topic:02X?}"
        );
    }
}

#[test]
fn mqtt_1_5_3_2_publish_topic_must_not_contain_u0000() {
    // [MQTT-1.5.3-2] A UTF-8 encoded string MUST NOT include an encoding of
    // the null character U+0000.
    let bytes = wire(0x30, &publish_body(b"a/\0", None, b"x"));
    assert_eq!(decode(&bytes), violation(SpecViolation::NullCharacter));
    assert_mqttbytes_accepts(&bytes);
}

#[test]
fn mqtt_1_5_3_3_byte_order_mark_is_kept() {
    // [MQTT-1.5.3-3] 0xEF 0xBB 0xBF is U+FEFF and MUST NOT be skipped over or
    // stripped off by a packet receiver.
    let bytes = wire(0x30, &publish_body("\u{FEFF}a".as_bytes(), None, b"x"));
    let Ok(Packet::Publish(publish)) = decode(&bytes) else {
        panic!("BOM topic refused")
    };
    assert_eq!(publish.topic.as_str(), "\u{FEFF}a");
}

// ---- SUBSCRIBE ---------------------------------------------------------

#[test]
fn mqtt_2_3_1_1_subscribe_needs_a_non_zero_packet_id() {
    // [MQTT-2.3.1-1], SUBSCRIBE case.
    let bytes = wire(0x82, &subscribe_body(0, &[(b"a", 0)]));
    assert_eq!(decode(&bytes), violation(SpecViolation::PacketIdZero));
    assert_mqttbytes_accepts(&bytes);
}

#[test]
fn mqtt_3_8_3_3_subscribe_needs_a_topic_filter() {
    // [MQTT-3.8.3-3] The payload of a SUBSCRIBE packet MUST contain at least
    // one Topic Filter / QoS pair.
    let bytes = wire(0x82, &subscribe_body(1, &[]));
    assert_eq!(decode(&bytes), violation(SpecViolation::EmptySubscribe));
    assert_mqttbytes_accepts(&bytes);
}

#[test]
fn mqtt_3_8_3_4_subscribe_options_reserved_bits_and_qos_3() {
    // [MQTT-3-8.3-4] The Server MUST treat a SUBSCRIBE packet as malformed and
    // close the Network Connection if any of Reserved bits in the payload are
    // non-zero, or QoS is not 0,1 or 2.
    for options in [0x03, 0x04, 0x80, 0xFC, 0x41] {
        let bytes = wire(0x82, &subscribe_body(1, &[(b"a", 1), (b"b", options)]));
        assert_eq!(
            decode(&bytes),
            violation(SpecViolation::SubscribeOptions),
            "{options:#04X}"
        );
    }
    // mqttbytes masks the reserved bits away and reads QoS 0.
    assert_mqttbytes_accepts(&wire(0x82, &subscribe_body(1, &[(b"a", 0x04)])));
}

#[test]
fn mqtt_4_7_1_2_subscribe_multi_level_wildcard_is_last_and_alone() {
    // [MQTT-4.7.1-2] The multi-level wildcard character MUST be specified
    // either on its own or following a topic level separator. In either case
    // it MUST be the last character specified in the Topic Filter.
    for filter in [&b"a/#/b"[..], b"a#", b"#/a", b"a/b#"] {
        let bytes = wire(0x82, &subscribe_body(1, &[(filter, 0)]));
        assert_eq!(
            decode(&bytes),
            violation(SpecViolation::MultiLevelWildcard),
            "{filter:?}"
        );
        assert_mqttbytes_accepts(&bytes);
    }
}

#[test]
fn mqtt_4_7_1_3_subscribe_single_level_wildcard_is_a_whole_level() {
    // [MQTT-4.7.1-3] Where the single-level wildcard is used it MUST occupy an
    // entire level of the filter.
    for filter in [&b"a+"[..], b"a/+b", b"+a/b"] {
        let bytes = wire(0x82, &subscribe_body(1, &[(filter, 0)]));
        assert_eq!(
            decode(&bytes),
            violation(SpecViolation::SingleLevelWildcard),
            "{filter:?}"
        );
        assert_mqttbytes_accepts(&bytes);
    }
}

#[test]
fn mqtt_4_7_3_1_subscribe_filter_must_not_be_empty() {
    // [MQTT-4.7.3-1], SUBSCRIBE case.
    let bytes = wire(0x82, &subscribe_body(1, &[(b"a", 0), (b"", 1)]));
    assert_eq!(decode(&bytes), violation(SpecViolation::EmptyTopic));
    assert_mqttbytes_accepts(&bytes);
}

#[test]
fn mqtt_1_5_3_1_subscribe_filter_must_be_well_formed_utf8() {
    // [MQTT-1.5.3-1], SUBSCRIBE case.
    let bytes = wire(0x82, &subscribe_body(1, &[(&[0xED, 0xBF, 0xBF], 0)]));
    assert_eq!(decode(&bytes), violation(SpecViolation::InvalidUtf8));
}

#[test]
fn mqtt_1_5_3_2_subscribe_filter_must_not_contain_u0000() {
    // [MQTT-1.5.3-2], SUBSCRIBE case.
    let bytes = wire(0x82, &subscribe_body(1, &[(b"a/\0/+", 0)]));
    assert_eq!(decode(&bytes), violation(SpecViolation::NullCharacter));
    assert_mqttbytes_accepts(&bytes);
}

#[test]
fn truncated_subscribe_is_malformed() {
    // A filter length that runs past the end of the packet is not a rule
    // violation but a malformed packet; both end the connection.
    let mut body = subscribe_body(1, &[(b"abc", 0)]);
    body.truncate(body.len() - 2);
    assert!(matches!(
        decode(&wire(0x82, &body)),
        Err(ProtocolError::Malformed { .. })
    ));
}

// ---- UNSUBSCRIBE -------------------------------------------------------

#[test]
fn mqtt_2_3_1_1_unsubscribe_needs_a_non_zero_packet_id() {
    // [MQTT-2.3.1-1], UNSUBSCRIBE case.
    let bytes = wire(0xA2, &unsubscribe_body(0, &[b"a"]));
    assert_eq!(decode(&bytes), violation(SpecViolation::PacketIdZero));
    assert_mqttbytes_accepts(&bytes);
}

#[test]
fn mqtt_3_10_3_2_unsubscribe_needs_a_topic_filter() {
    // [MQTT-3.10.3-2] The Payload of an UNSUBSCRIBE packet MUST contain at
    // least one Topic Filter.
    let bytes = wire(0xA2, &unsubscribe_body(1, &[]));
    assert_eq!(decode(&bytes), violation(SpecViolation::EmptyUnsubscribe));
    assert_mqttbytes_accepts(&bytes);
}

#[test]
fn mqtt_4_7_unsubscribe_filters_follow_the_filter_rules() {
    // [MQTT-4.7.3-1], [MQTT-4.7.1-2], [MQTT-4.7.1-3], [MQTT-1.5.3-1] and
    // [MQTT-1.5.3-2] for the filters of an UNSUBSCRIBE.
    let cases: [(&[u8], SpecViolation); 5] = [
        (b"", SpecViolation::EmptyTopic),
        (b"a/#/b", SpecViolation::MultiLevelWildcard),
        (b"a/b+", SpecViolation::SingleLevelWildcard),
        (&[0xC3, 0x28], SpecViolation::InvalidUtf8),
        (b"\0", SpecViolation::NullCharacter),
    ];
    for (filter, expected) in cases {
        let bytes = wire(0xA2, &unsubscribe_body(1, &[b"ok/+", filter]));
        assert_eq!(decode(&bytes), violation(expected), "{filter:02X?}");
    }
}

// ---- CONNECT -----------------------------------------------------------

#[test]
fn mqtt_3_1_connect_with_mqisdp_level_3_is_accepted() {
    // MQTT 3.1 clients send protocol name "MQIsdp" and level 3; mqttbytes
    // refuses them, which is why CONNECT is parsed by this crate.
    let bytes = wire(0x10, &connect_body(b"MQIsdp", 3, 0x02, &[b"old-device"]));
    let connect = decode_connect(&frame(&bytes)).unwrap();
    assert_eq!(connect.version, ProtocolVersion::V31);
    assert_eq!(connect.client_id, "old-device");
    assert!(mqttbytes::v4::read(&mut BytesMut::from(&bytes[..]), MAX_PACKET_SIZE).is_err());
}

#[test]
fn mqtt_3_1_2_1_protocol_name_and_level_must_match() {
    // [MQTT-3.1.2-1] If the protocol name is incorrect the Server MAY
    // disconnect the Client. [MQTT-3.1.2-2] An unsupported level is answered
    // with CONNACK 0x01, so it is a different error.
    let decode_body = |name: &[u8], level| {
        decode_connect(&frame(&wire(0x10, &connect_body(name, level, 2, &[b"c"]))))
    };
    assert_eq!(
        decode_body(b"MQIsdp", 4),
        Err(ProtocolError::UnsupportedProtocolLevel(4))
    );
    assert_eq!(
        decode_body(b"MQTT", 3),
        Err(ProtocolError::UnsupportedProtocolLevel(3))
    );
    assert_eq!(
        decode_body(b"mqtt", 4),
        Err(SpecViolation::ProtocolName.into())
    );
}

#[test]
fn mqtt_1_5_3_connect_strings_follow_the_utf8_rules() {
    // [MQTT-1.5.3-1] and [MQTT-1.5.3-2] for the client id, will topic and user
    // name; the will topic is also a Topic Name [MQTT-3.3.2-2].
    let will = 0x04;
    let user = 0x80;
    let cases: [(u8, &[&[u8]], SpecViolation); 5] = [
        (0, &[b"a\0"], SpecViolation::NullCharacter),
        (0, &[&[0xFF]], SpecViolation::InvalidUtf8),
        (will, &[b"c", b"w/\0", b"m"], SpecViolation::NullCharacter),
        (
            will,
            &[b"c", b"w/#", b"m"],
            SpecViolation::WildcardInTopicName,
        ),
        (user, &[b"c", &[0xC3, 0x28]], SpecViolation::InvalidUtf8),
    ];
    for (flags, payload, expected) in cases {
        let bytes = wire(0x10, &connect_body(b"MQTT", 4, flags, payload));
        assert_eq!(
            decode_connect(&frame(&bytes)),
            Err(expected.into()),
            "{payload:?}"
        );
    }
}

#[test]
fn mqtt_3_1_2_3_connect_reserved_flag_must_be_0() {
    // [MQTT-3.1.2-3] The Server MUST validate that the reserved flag in the
    // CONNECT Control Packet is set to zero and disconnect the Client if it
    // is not zero.
    let bytes = wire(0x10, &connect_body(b"MQTT", 4, 0x03, &[b"c"]));
    assert_eq!(
        decode_connect(&frame(&bytes)),
        Err(SpecViolation::ConnectReservedFlag.into())
    );
}

#[test]
fn mqtt_3_1_2_11_will_qos_and_retain_need_the_will_flag() {
    // [MQTT-3.1.2-11] If the Will Flag is set to 0 the Will QoS and Will
    // Retain fields in the Connect Flags MUST be set to zero.
    for flags in [0x08, 0x10, 0x20, 0x28] {
        let bytes = wire(0x10, &connect_body(b"MQTT", 4, flags, &[b"c"]));
        assert_eq!(
            decode_connect(&frame(&bytes)),
            Err(SpecViolation::WillFlagsWithoutWill.into()),
            "{flags:#04X}"
        );
    }
}

#[test]
fn mqtt_3_1_2_14_will_qos_must_not_be_3() {
    // [MQTT-3.1.2-14] If the Will Flag is set to 1, the value of Will QoS can
    // be 0, 1 or 2. It MUST NOT be 3.
    let bytes = wire(0x10, &connect_body(b"MQTT", 4, 0x1C, &[b"c", b"w", b"m"]));
    assert_eq!(
        decode_connect(&frame(&bytes)),
        Err(SpecViolation::WillQoS.into())
    );
}

#[test]
fn mqtt_3_1_2_22_password_needs_a_user_name_in_3_1_1_only() {
    // [MQTT-3.1.2-22] If the User Name Flag is set to 0, the Password Flag
    // MUST be set to 0. MQTT 3.1 had no such rule.
    let bytes = wire(0x10, &connect_body(b"MQTT", 4, 0x40, &[b"c", b"p"]));
    assert_eq!(
        decode_connect(&frame(&bytes)),
        Err(SpecViolation::PasswordWithoutUsername.into())
    );
    let bytes = wire(0x10, &connect_body(b"MQIsdp", 3, 0x40, &[b"c", b"p"]));
    let connect = decode_connect(&frame(&bytes)).unwrap();
    assert_eq!(
        (connect.username, connect.password.as_deref()),
        (None, Some(&b"p"[..]))
    );
}

// ---- bookkeeping -------------------------------------------------------

/// Maps every variant to the test above that covers it, by function, so a
/// new variant, or a renamed or deleted test, does not compile.
#[test]
fn every_violation_has_a_test() {
    fn covered_by(v: SpecViolation) -> Option<fn()> {
        Some(match v {
            SpecViolation::RemainingLengthTooLong => {
                mqtt_2_2_3_remaining_length_is_at_most_four_bytes
            }
            SpecViolation::ReservedFlags(_) => {
                mqtt_2_2_2_2_reserved_flags_of_other_packets_must_be_0
            }
            SpecViolation::UnexpectedPacketType(_) => {
                mqtt_2_2_1_server_only_and_reserved_packet_types_are_refused
            }
            SpecViolation::PacketIdZero => {
                mqtt_2_3_1_1_publish_qos_1_and_2_need_a_non_zero_packet_id
            }
            SpecViolation::FirstPacketNotConnect => mqtt_3_1_0_1_first_packet_must_be_connect,
            SpecViolation::SecondConnect => mqtt_3_1_0_2_second_connect_is_a_protocol_violation,
            SpecViolation::ProtocolName => mqtt_3_1_2_1_protocol_name_and_level_must_match,
            SpecViolation::ConnectReservedFlag => mqtt_3_1_2_3_connect_reserved_flag_must_be_0,
            SpecViolation::WillFlagsWithoutWill => {
                mqtt_3_1_2_11_will_qos_and_retain_need_the_will_flag
            }
            SpecViolation::WillQoS => mqtt_3_1_2_14_will_qos_must_not_be_3,
            SpecViolation::PasswordWithoutUsername => {
                mqtt_3_1_2_22_password_needs_a_user_name_in_3_1_1_only
            }
            // Not produced by this crate: the client id policy is the broker's.
            SpecViolation::PublishQoS3 => mqtt_3_3_1_4_publish_qos_3_is_malformed,
            SpecViolation::WildcardInTopicName => {
                mqtt_3_3_2_2_publish_topic_must_not_contain_wildcards
            }
            SpecViolation::EmptyTopic => mqtt_4_7_3_1_publish_topic_must_not_be_empty,
            SpecViolation::InvalidUtf8 => mqtt_1_5_3_1_publish_topic_must_be_well_formed_utf8,
            SpecViolation::NullCharacter => mqtt_1_5_3_2_publish_topic_must_not_contain_u0000,
            SpecViolation::MultiLevelWildcard => {
                mqtt_4_7_1_2_subscribe_multi_level_wildcard_is_last_and_alone
            }
            SpecViolation::SingleLevelWildcard => {
                mqtt_4_7_1_3_subscribe_single_level_wildcard_is_a_whole_level
            }
            SpecViolation::EmptySubscribe => mqtt_3_8_3_3_subscribe_needs_a_topic_filter,
            SpecViolation::SubscribeOptions => {
                mqtt_3_8_3_4_subscribe_options_reserved_bits_and_qos_3
            }
            SpecViolation::EmptyUnsubscribe => mqtt_3_10_3_2_unsubscribe_needs_a_topic_filter,
            SpecViolation::FixedLength => mqtt_3_4_1_ack_packets_have_remaining_length_2,
            SpecViolation::DupOnQoS0 => mqtt_3_3_1_2_dup_must_be_0_on_qos_0,
            SpecViolation::TopicTooDeep => topics_deeper_than_the_level_limit_are_refused,
            SpecViolation::StringTooLong => mqtt_1_5_3_topics_fit_a_two_byte_length,
            SpecViolation::ConnectTrailingBytes => mqtt_3_1_3_connect_has_nothing_after_its_fields,
            // MQTT 5 only: `every_v5_violation_has_a_test` in v5_rules.rs.
            SpecViolation::VariableByteIntegerTooLong
            | SpecViolation::NonMinimalVariableByteInteger
            | SpecViolation::PropertyLength
            | SpecViolation::UnknownProperty(_)
            | SpecViolation::PropertyNotAllowed(_)
            | SpecViolation::DuplicateProperty(_)
            | SpecViolation::PropertyValue(_)
            | SpecViolation::ZeroReceiveMaximum
            | SpecViolation::ZeroMaximumPacketSize
            | SpecViolation::ZeroSubscriptionIdentifier
            | SpecViolation::AuthenticationDataWithoutMethod
            | SpecViolation::PayloadFormatInvalid
            | SpecViolation::TopicAliasZero
            | SpecViolation::TopicAliasAboveMaximum { .. }
            | SpecViolation::TopicAliasUnknown(_)
            | SpecViolation::EmptyTopicWithoutAlias
            | SpecViolation::WildcardInResponseTopic
            | SpecViolation::SubscriptionIdentifierFromClient
            | SpecViolation::SubscribeReservedBits
            | SpecViolation::SubscribeQoS3
            | SpecViolation::RetainHandling3
            | SpecViolation::NoLocalOnSharedSubscription
            | SpecViolation::ReasonCodeNotAllowed { .. }
            | SpecViolation::TrailingBytes(_) => return None,
        })
    }
    assert!(covered_by(SpecViolation::DupOnQoS0).is_some());
}

#[test]
fn topics_deeper_than_the_level_limit_are_refused() {
    // Not a spec rule: a bound on the router's per-level work. A filter of
    // 32 768 levels would otherwise fit in one packet.
    let limit = tidemq_protocol::MAX_TOPIC_LEVELS;
    let deepest = vec!["a"; limit].join("/");
    let deeper = vec!["a"; limit + 1].join("/");
    assert!(tidemq_protocol::TopicName::new(&deepest).is_ok());
    assert!(tidemq_protocol::TopicFilter::new(&deepest).is_ok());
    assert_eq!(
        tidemq_protocol::TopicName::new(&deeper),
        Err(SpecViolation::TopicTooDeep)
    );
    let bytes = wire(0x82, &subscribe_body(1, &[(deeper.as_bytes(), 0)]));
    assert_eq!(decode(&bytes), violation(SpecViolation::TopicTooDeep));
}

#[test]
fn mqtt_3_3_1_2_dup_must_be_0_on_qos_0() {
    // [MQTT-3.3.1-2] The DUP flag MUST be set to 0 for all QoS 0 messages.
    let bytes = wire(0x38, &publish_body(b"a/b", None, b"x"));
    assert_eq!(decode(&bytes), violation(SpecViolation::DupOnQoS0));
    assert_mqttbytes_accepts(&bytes);
    let resend = wire(0x3A, &publish_body(b"a/b", Some(1), b"x"));
    assert!(decode(&resend).is_ok(), "DUP on QoS 1 is a resend");
}

#[test]
fn mqtt_1_5_3_topics_fit_a_two_byte_length() {
    // [MQTT-1.5.3] UTF-8 strings are prefixed with a two-byte length, so at
    // most 65535 bytes; a longer topic cannot be sent on to subscribers.
    let long = "a".repeat(65_536);
    assert_eq!(
        tidemq_protocol::TopicName::new(&long),
        Err(SpecViolation::StringTooLong)
    );
    assert_eq!(
        tidemq_protocol::TopicFilter::new(&long),
        Err(SpecViolation::StringTooLong)
    );
    assert!(tidemq_protocol::TopicName::new(&long[1..]).is_ok());
}

#[test]
fn mqtt_3_1_3_connect_has_nothing_after_its_fields() {
    // [MQTT-3.1.3] The payload holds exactly the fields the flags announce.
    let mut body = connect_body(b"MQTT", 4, 0b10, &[b"client"]);
    body.push(0);
    let bytes = wire(0x10, &body);
    assert_eq!(
        decode_connect(&frame(&bytes)),
        Err(SpecViolation::ConnectTrailingBytes.into())
    );
}
