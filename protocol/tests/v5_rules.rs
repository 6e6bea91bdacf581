//! Black-box tests of the MQTT 5.0 rules `tidemq-protocol` enforces on what
//! a client sends: every MQTT 5 [`SpecViolation`] has a test here named after
//! the statement (or, where the specification numbers none, the section) it
//! checks, and each asserts the reason code the broker will answer with.
//! Where `mqttbytes` 0.6's v5 module accepts, mis-parses or cannot read the
//! same bytes, the test shows it, so the check here cannot be dropped for
//! it unnoticed. [`every_v5_violation_has_a_test`] fails to compile when a
//! variant is added without a test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::{Bytes, BytesMut};
use tidemq_protocol::{
    decode_connect, decode_packet, encode_connect, Ack, Connect, ConnectProperties, Disconnect,
    LastWill, Packet, PacketId, ProtocolError, ProtocolVersion, Publish, PublishProperties, QoS,
    ReasonCode, SpecViolation, TopicAliases, TopicName,
};

const MAX_PACKET_SIZE: usize = 64 * 1024;

fn wire(first_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first_byte];
    out.extend(var_int(body.len()));
    out.extend_from_slice(body);
    out
}

fn var_int(mut value: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value % 128) as u8;
        value /= 128;
        out.push(if value > 0 { byte | 0x80 } else { byte });
        if value == 0 {
            return out;
        }
    }
}

fn string(s: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(s.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// A property block: its Variable Byte Integer length, then `block`.
fn props(block: &[u8]) -> Vec<u8> {
    [var_int(block.len()), block.to_vec()].concat()
}

fn frame(bytes: &[u8]) -> tidemq_protocol::Frame {
    common::frame(bytes, MAX_PACKET_SIZE)
}

fn decode(bytes: &[u8]) -> Result<Packet, ProtocolError> {
    decode_packet(&frame(bytes), ProtocolVersion::V5)
}

fn connect(bytes: &[u8]) -> Result<Connect, ProtocolError> {
    decode_connect(&frame(bytes))
}

/// Asserts that `result` failed with `violation`, answered by `code`.
fn refused<T: std::fmt::Debug>(
    result: Result<T, ProtocolError>,
    violation: SpecViolation,
    code: u8,
) {
    let error = result.unwrap_err();
    assert_eq!(error, ProtocolError::Violation(violation));
    assert_eq!(error.reason_code(), ReasonCode(code), "{error}");
}

/// A QoS 0 PUBLISH to `topic` with the property block `block`.
fn publish(topic: &[u8], block: &[u8], payload: &[u8]) -> Vec<u8> {
    wire(
        0x30,
        &[string(topic), props(block), payload.to_vec()].concat(),
    )
}

/// A version-5 CONNECT: flags, the CONNECT property block, then the payload
/// fields as given (raw: a will's property block is passed pre-built).
fn connect_bytes(flags: u8, block: &[u8], payload: &[Vec<u8>]) -> Vec<u8> {
    let mut body = string(b"MQTT");
    body.extend([5, flags, 0, 60]);
    body.extend(props(block));
    for field in payload {
        body.extend(field);
    }
    wire(0x10, &body)
}

/// What mqttbytes 0.6's v5 reader makes of `bytes`; `None` when it panics.
fn mqttbytes_v5(bytes: &[u8]) -> Option<Result<mqttbytes::v5::Packet, mqttbytes::Error>> {
    let bytes = bytes.to_vec();
    std::panic::catch_unwind(move || {
        let mut buf = BytesMut::from(&bytes[..]);
        mqttbytes::v5::read(&mut buf, MAX_PACKET_SIZE)
    })
    .ok()
}

fn assert_mqttbytes_v5_accepts(bytes: &[u8]) {
    let result = mqttbytes_v5(bytes).expect("mqttbytes panicked");
    assert!(result.is_ok(), "mqttbytes refuses it too: {result:?}");
}

fn id(id: u16) -> PacketId {
    PacketId::new(id).unwrap()
}

// ---- properties (section 2.2.2) -----------------------------------------

#[test]
fn mqtt_2_2_2_2_a_property_twice_is_a_protocol_error() {
    // "It is a Protocol Error to include the Payload Format Indicator more
    // than once" (3.3.2.3.2), and likewise for every property but two.
    let bytes = publish(b"a/b", &[0x01, 0x00, 0x01, 0x00], b"x");
    refused(decode(&bytes), SpecViolation::DuplicateProperty(0x01), 0x82);
    assert_mqttbytes_v5_accepts(&bytes);

    let twice = connect_bytes(0x02, &[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2], &[string(b"c")]);
    refused(
        connect(&twice),
        SpecViolation::DuplicateProperty(0x11),
        0x82,
    );
    assert_mqttbytes_v5_accepts(&twice);
}

#[test]
fn mqtt_3_3_2_18_user_property_may_repeat_and_keeps_its_order() {
    let mut block = Vec::new();
    for (k, v) in [(&b"k"[..], &b"2"[..]), (b"k", b"1"), (b"a", b"")] {
        block.push(0x26);
        block.extend(string(k));
        block.extend(string(v));
    }
    let Packet::Publish(p) = decode(&publish(b"t", &block, b"")).unwrap() else {
        panic!("not a PUBLISH")
    };
    let pairs = p.properties.unwrap().user_properties;
    assert_eq!(
        pairs,
        vec![
            ("k".into(), "2".into()),
            ("k".into(), "1".into()),
            ("a".into(), String::new())
        ]
    );
}

#[test]
fn mqtt_2_2_2_2_unknown_property_identifier_is_malformed() {
    for unknown in [0x00, 0x04, 0x0A, 0x2B, 0x7F, 0xFF] {
        refused(
            decode(&publish(b"t", &[unknown, 0], b"")),
            SpecViolation::UnknownProperty(unknown),
            0x81,
        );
    }
}

#[test]
fn mqtt_2_2_2_2_property_in_a_packet_it_does_not_belong_to_is_malformed() {
    // Session Expiry Interval belongs to CONNECT, CONNACK and DISCONNECT.
    refused(
        decode(&publish(b"t", &[0x11, 0, 0, 0, 1], b"")),
        SpecViolation::PropertyNotAllowed(0x11),
        0x81,
    );
    // Topic Alias in CONNECT; Receive Maximum in a will.
    let alias = connect_bytes(0, &[0x23, 0, 1], &[string(b"c")]);
    refused(
        connect(&alias),
        SpecViolation::PropertyNotAllowed(0x23),
        0x81,
    );
    let will = connect_bytes(
        0x04,
        &[],
        &[
            string(b"c"),
            props(&[0x21, 0, 5]),
            string(b"w"),
            string(b"m"),
        ],
    );
    refused(
        connect(&will),
        SpecViolation::PropertyNotAllowed(0x21),
        0x81,
    );
    // Reason String in a SUBSCRIBE.
    let mut body = vec![0, 1];
    body.extend(props(&[0x1F, 0, 0]));
    body.extend(string(b"a"));
    body.push(0);
    refused(
        decode(&wire(0x82, &body)),
        SpecViolation::PropertyNotAllowed(0x1F),
        0x81,
    );
}

#[test]
fn mqtt_2_2_2_1_property_length_beyond_the_packet_is_malformed() {
    // A PUBACK whose property length says 100 with 2 bytes left.
    let bytes = wire(0x40, &[0, 1, 0x10, 100, 0x1F, 0]);
    refused(decode(&bytes), SpecViolation::PropertyLength, 0x81);
    // A value cut short by the block's end is malformed too.
    let cut = wire(0x40, &[0, 1, 0x10, 2, 0x1F, 0, 0]);
    assert!(matches!(decode(&cut), Err(ProtocolError::Malformed { .. })));
}

#[test]
fn mqtt_1_5_5_1_property_length_must_be_minimal() {
    // 0x80 0x00 is a two-byte encoding of 0.
    let bytes = wire(0x40, &[0, 1, 0x10, 0x80, 0x00]);
    refused(
        decode(&bytes),
        SpecViolation::NonMinimalVariableByteInteger,
        0x81,
    );
    assert_mqttbytes_v5_accepts(&bytes);
}

#[test]
fn mqtt_1_5_5_1_subscription_identifier_must_be_minimal() {
    // Subscription Identifier 5 written as 0x85 0x00.
    let mut body = vec![0, 1];
    body.extend(props(&[0x0B, 0x85, 0x00]));
    body.extend(string(b"a"));
    body.push(0);
    refused(
        decode(&wire(0x82, &body)),
        SpecViolation::NonMinimalVariableByteInteger,
        0x81,
    );
}

#[test]
fn mqtt_1_5_5_variable_byte_integer_is_at_most_four_bytes() {
    let bytes = wire(0x40, &[0, 1, 0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
    refused(
        decode(&bytes),
        SpecViolation::VariableByteIntegerTooLong,
        0x81,
    );
}

#[test]
fn mqtt_3_1_2_11_3_zero_receive_maximum_is_a_protocol_error() {
    // "It is a Protocol Error to include the Receive Maximum value more than
    // once or for it to have the value 0."
    let bytes = connect_bytes(0x02, &[0x21, 0, 0], &[string(b"c")]);
    refused(connect(&bytes), SpecViolation::ZeroReceiveMaximum, 0x82);
    assert_mqttbytes_v5_accepts(&bytes);
}

#[test]
fn mqtt_3_1_2_11_4_zero_maximum_packet_size_is_a_protocol_error() {
    let bytes = connect_bytes(0x02, &[0x27, 0, 0, 0, 0], &[string(b"c")]);
    refused(connect(&bytes), SpecViolation::ZeroMaximumPacketSize, 0x82);
    assert_mqttbytes_v5_accepts(&bytes);
}

#[test]
fn mqtt_3_8_2_1_2_zero_subscription_identifier_is_a_protocol_error() {
    let mut body = vec![0, 1];
    body.extend(props(&[0x0B, 0x00]));
    body.extend(string(b"a"));
    body.push(0);
    let bytes = wire(0x82, &body);
    refused(
        decode(&bytes),
        SpecViolation::ZeroSubscriptionIdentifier,
        0x82,
    );
    assert_mqttbytes_v5_accepts(&bytes);
}

#[test]
fn mqtt_2_2_2_2_flag_properties_are_0_or_1() {
    // Payload Format Indicator, Request Problem / Response Information.
    refused(
        decode(&publish(b"t", &[0x01, 2], b"")),
        SpecViolation::PropertyValue(0x01),
        0x82,
    );
    for id in [0x17, 0x19] {
        let bytes = connect_bytes(0, &[id, 2], &[string(b"c")]);
        refused(connect(&bytes), SpecViolation::PropertyValue(id), 0x82);
    }
}

#[test]
fn mqtt_1_5_4_1_every_string_must_be_well_formed_utf8() {
    let bad = [0xC3, 0x28];
    let user = [&[0x26][..], &string(&bad), &string(b"v")].concat();
    refused(
        decode(&publish(b"t", &user, b"")),
        SpecViolation::InvalidUtf8,
        0x81,
    );
    let content_type = [&[0x03][..], &string(&bad)].concat();
    refused(
        decode(&publish(b"t", &content_type, b"")),
        SpecViolation::InvalidUtf8,
        0x81,
    );
    let reason = [
        &[0, 1, 0x10][..],
        &props(&[&[0x1F][..], &string(&bad)].concat()),
    ]
    .concat();
    refused(
        decode(&wire(0x40, &reason)),
        SpecViolation::InvalidUtf8,
        0x81,
    );
    let method = [&[0x15][..], &string(&bad)].concat();
    refused(
        connect(&connect_bytes(0, &method, &[string(b"c")])),
        SpecViolation::InvalidUtf8,
        0x81,
    );
    refused(
        connect(&connect_bytes(0, &[], &[string(&bad)])),
        SpecViolation::InvalidUtf8,
        0x81,
    );
    refused(
        connect(&connect_bytes(0x80, &[], &[string(b"c"), string(&bad)])),
        SpecViolation::InvalidUtf8,
        0x81,
    );
}

#[test]
fn mqtt_1_5_4_1_surrogates_are_not_utf8() {
    // ED A0 80 would be U+D800, a surrogate: Rust's `str` refuses it.
    let block = [&[0x26][..], &string(&[0xED, 0xA0, 0x80]), &string(b"v")].concat();
    refused(
        decode(&publish(b"t", &block, b"")),
        SpecViolation::InvalidUtf8,
        0x81,
    );
}

#[test]
fn mqtt_1_5_4_2_no_u0000_in_property_strings() {
    let block = [&[0x26][..], &string(b"k"), &string(b"a\0b")].concat();
    refused(
        decode(&publish(b"t", &block, b"")),
        SpecViolation::NullCharacter,
        0x81,
    );
}

#[test]
fn mqtt_3_3_2_14_response_topic_has_no_wildcards() {
    let block = [&[0x08][..], &string(b"reply/+")].concat();
    let bytes = publish(b"t", &block, b"");
    refused(decode(&bytes), SpecViolation::WildcardInResponseTopic, 0x82);
    assert_mqttbytes_v5_accepts(&bytes);
}

#[test]
fn mqtt_3_3_2_4_payload_format_1_means_utf8_payload() {
    let bytes = publish(b"t", &[0x01, 1], &[0xFF, 0xFE]);
    refused(decode(&bytes), SpecViolation::PayloadFormatInvalid, 0x99);
    assert_mqttbytes_v5_accepts(&bytes);
    assert!(decode(&publish(b"t", &[0x01, 1], "é".as_bytes())).is_ok());
    assert!(decode(&publish(b"t", &[0x01, 0], &[0xFF])).is_ok());
    // The will payload too (3.1.3.2.3): its properties are a PUBLISH's.
    let will = connect_bytes(
        0x04,
        &[],
        &[
            string(b"c"),
            props(&[0x01, 1]),
            string(b"w"),
            string(&[0xFF]),
        ],
    );
    refused(connect(&will), SpecViolation::PayloadFormatInvalid, 0x99);
}

#[test]
fn mqtt_3_1_2_11_10_authentication_data_needs_a_method() {
    let bytes = connect_bytes(0, &[0x16, 0, 1, 0xAA], &[string(b"c")]);
    refused(
        connect(&bytes),
        SpecViolation::AuthenticationDataWithoutMethod,
        0x82,
    );
    let with_method = [&[0x15][..], &string(b"SCRAM"), &[0x16, 0, 1, 0xAA]].concat();
    let c = connect(&connect_bytes(0, &with_method, &[string(b"c")])).unwrap();
    assert_eq!(c.properties.authentication_method.as_deref(), Some("SCRAM"));
}

// ---- PUBLISH (3.3) --------------------------------------------------------

#[test]
fn mqtt_3_3_1_2_dup_must_be_0_on_qos_0_in_v5() {
    let bytes = wire(0x38, &[string(b"t"), props(&[])].concat());
    refused(decode(&bytes), SpecViolation::DupOnQoS0, 0x81);
}

#[test]
fn mqtt_3_3_1_4_publish_qos_3_in_v5() {
    let bytes = wire(0x36, &[string(b"t"), vec![0, 1], props(&[])].concat());
    refused(decode(&bytes), SpecViolation::PublishQoS3, 0x81);
}

#[test]
fn mqtt_3_3_4_6_a_client_publish_has_no_subscription_identifier() {
    let bytes = publish(b"t", &[0x0B, 7], b"");
    refused(
        decode(&bytes),
        SpecViolation::SubscriptionIdentifierFromClient,
        0x82,
    );
    assert_mqttbytes_v5_accepts(&bytes);
}

#[test]
fn mqtt_3_3_2_8_topic_alias_0_is_invalid() {
    let bytes = publish(b"t", &[0x23, 0, 0], b"");
    refused(decode(&bytes), SpecViolation::TopicAliasZero, 0x94);
    assert_mqttbytes_v5_accepts(&bytes);
}

#[test]
fn mqtt_3_3_2_3_4_empty_topic_needs_a_topic_alias() {
    refused(
        decode(&publish(b"", &[], b"x")),
        SpecViolation::EmptyTopicWithoutAlias,
        0x82,
    );
    let Packet::Publish(p) = decode(&publish(b"", &[0x23, 0, 3], b"x")).unwrap() else {
        panic!("not a PUBLISH")
    };
    assert!(p.topic.is_empty());
    assert_eq!(p.properties.unwrap().topic_alias, Some(3));
}

#[test]
fn mqtt_1_5_4_3_a_topic_starting_with_a_byte_order_mark_is_ordinary() {
    // U+FEFF is not skipped or stripped [MQTT-1.5.4-3].
    let topic = "\u{FEFF}a/b";
    let Packet::Publish(p) = decode(&publish(topic.as_bytes(), &[], b"x")).unwrap() else {
        panic!("not a PUBLISH")
    };
    assert_eq!(p.topic.as_str(), topic);
}

#[test]
fn mqttbytes_v5_miscounts_a_subscription_identifier_in_a_property_block() {
    // A server PUBLISH with two one-byte Subscription Identifiers, then a
    // Payload Format Indicator: six bytes of properties. mqttbytes adds one
    // byte too many per identifier, stops early and reads `01 01` as payload.
    let block = [0x0B, 0x05, 0x0B, 0x06, 0x01, 0x01];
    let bytes = publish(b"t", &block, b"hi");
    let Some(Ok(mqttbytes::v5::Packet::Publish(theirs))) = mqttbytes_v5(&bytes) else {
        panic!("mqttbytes did not read it")
    };
    assert_eq!(theirs.payload.as_ref(), &[0x01, 0x01, b'h', b'i']);
    // Ours, reading it as a client would.
    let ours = tidemq_protocol::decode_server_packet(&frame(&bytes), ProtocolVersion::V5).unwrap();
    let tidemq_protocol::Outgoing::Publish(ours) = ours else {
        panic!("not a PUBLISH")
    };
    assert_eq!(ours.payload.as_ref(), b"hi");
    let p = ours.properties.unwrap();
    assert_eq!(p.subscription_identifiers, vec![5, 6]);
    assert_eq!(p.payload_format_indicator, Some(1));
}

// ---- acknowledgements, DISCONNECT, AUTH ---------------------------------

#[test]
fn mqtt_3_4_2_1_puback_remaining_length_2_and_3() {
    assert_eq!(
        decode(&wire(0x40, &[0, 9])),
        Ok(Packet::PubAck(Ack::new(id(9))))
    );
    assert_eq!(
        decode(&wire(0x50, &[0, 9, 0x10])),
        Ok(Packet::PubRec(Ack::with_reason(
            id(9),
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        )))
    );
    let Packet::PubRel(ack) = decode(&wire(0x62, &[0, 9, 0x92, 3, 0x1F, 0, 0])).unwrap() else {
        panic!("not a PUBREL")
    };
    assert_eq!(ack.reason, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND);
    assert_eq!(ack.properties.reason_string.as_deref(), Some(""));
}

#[test]
fn mqtt_3_4_2_1_ack_reason_code_must_be_one_of_its_packet() {
    refused(
        decode(&wire(0x70, &[0, 9, 0x10])),
        SpecViolation::ReasonCodeNotAllowed {
            packet_type: 7,
            code: 0x10,
        },
        0x82,
    );
}

#[test]
fn mqtt_2_1_nothing_after_the_last_field() {
    refused(
        decode(&wire(0x40, &[0, 9, 0x00, 0, 0xAA])),
        SpecViolation::TrailingBytes(4),
        0x81,
    );
}

#[test]
fn mqtt_3_14_2_1_disconnect_with_remaining_length_0_is_normal() {
    let bytes = wire(0xE0, &[]);
    assert_eq!(
        decode(&bytes),
        Ok(Packet::Disconnect(Disconnect::default()))
    );
    // mqttbytes 0.6 refuses the shortest DISCONNECT ("PayloadRequired").
    assert!(mqttbytes_v5(&bytes).unwrap().is_err());
    let Packet::Disconnect(d) = decode(&wire(0xE0, &[0x04])).unwrap() else {
        panic!("not a DISCONNECT")
    };
    assert_eq!(d.reason, ReasonCode::DISCONNECT_WITH_WILL);
}

#[test]
fn mqtt_3_15_auth_is_decoded_and_mqttbytes_has_none() {
    let bytes = wire(0xF0, &[]);
    assert_eq!(decode(&bytes), Ok(Packet::Auth(Default::default())));
    let block = [&[0x15][..], &string(b"SCRAM"), &[0x16, 0, 2, 1, 2]].concat();
    let long = wire(0xF0, &[&[0x18][..], &props(&block)].concat());
    let Packet::Auth(auth) = decode(&long).unwrap() else {
        panic!("not an AUTH")
    };
    assert_eq!(auth.reason, ReasonCode::CONTINUE_AUTHENTICATION);
    assert_eq!(auth.authentication_data.as_deref(), Some(&[1u8, 2][..]));
    // mqttbytes 0.6 has no packet type 15.
    assert!(mqttbytes_v5(&long).unwrap().is_err());
    // Its flags are reserved [MQTT-3.15.1-1]; 3.1.1 has no AUTH.
    refused(
        decode(&wire(0xF1, &[])),
        SpecViolation::ReservedFlags(15),
        0x81,
    );
    assert_eq!(
        decode_packet(&frame(&bytes), ProtocolVersion::V311),
        Err(SpecViolation::UnexpectedPacketType(15).into())
    );
}

// ---- SUBSCRIBE and UNSUBSCRIBE (3.8, 3.10) ----------------------------

fn subscribe(options: u8, filter: &[u8]) -> Vec<u8> {
    wire(
        0x82,
        &[vec![0, 1], props(&[]), string(filter), vec![options]].concat(),
    )
}

#[test]
fn mqtt_3_8_3_5_reserved_subscription_option_bits_are_malformed() {
    for options in [0x40, 0x80] {
        let bytes = subscribe(options, b"a");
        refused(decode(&bytes), SpecViolation::SubscribeReservedBits, 0x81);
    }
    assert_mqttbytes_v5_accepts(&subscribe(0x40, b"a"));
}

#[test]
fn mqtt_3_8_3_1_retain_handling_3_is_a_protocol_error() {
    refused(
        decode(&subscribe(0x30, b"a")),
        SpecViolation::RetainHandling3,
        0x82,
    );
}

#[test]
fn mqtt_3_8_3_1_subscription_qos_3_is_a_protocol_error() {
    refused(
        decode(&subscribe(0x03, b"a")),
        SpecViolation::SubscribeQoS3,
        0x82,
    );
}

#[test]
fn mqtt_3_8_3_4_no_local_on_a_shared_subscription_is_a_protocol_error() {
    refused(
        decode(&subscribe(0x04, b"$share/g/a")),
        SpecViolation::NoLocalOnSharedSubscription,
        0x82,
    );
    assert!(decode(&subscribe(0x04, b"a")).is_ok());
}

#[test]
fn mqtt_3_8_3_3_and_3_10_3_2_at_least_one_filter_in_v5() {
    refused(
        decode(&wire(0x82, &[vec![0, 1], props(&[])].concat())),
        SpecViolation::EmptySubscribe,
        0x81,
    );
    refused(
        decode(&wire(0xA2, &[vec![0, 1], props(&[])].concat())),
        SpecViolation::EmptyUnsubscribe,
        0x81,
    );
}

#[test]
fn mqtt_3_8_3_1_subscription_options_are_decoded() {
    // QoS 1, No Local, Retain As Published, Retain Handling 2.
    let Packet::Subscribe(s) = decode(&subscribe(0b10_1101, b"a/#")).unwrap() else {
        panic!("not a SUBSCRIBE")
    };
    let (_, options) = &s.filters[0];
    assert_eq!(options.qos, QoS::AtLeastOnce);
    assert!(options.no_local && options.retain_as_published);
    assert_eq!(
        options.retain_handling,
        tidemq_protocol::RetainHandling::Never
    );
}

// ---- CONNECT (3.1) ------------------------------------------------------

#[test]
fn mqtt_3_1_2_9_v5_allows_a_password_without_a_user_name() {
    let c = connect(&connect_bytes(0x40, &[], &[string(b"c"), string(b"pw")])).unwrap();
    assert_eq!(
        (c.username, c.password.as_deref()),
        (None, Some(&b"pw"[..]))
    );
}

#[test]
fn mqtt_3_1_3_v5_connect_has_nothing_after_its_fields() {
    let bytes = connect_bytes(0, &[], &[string(b"c"), vec![0]]);
    refused(connect(&bytes), SpecViolation::ConnectTrailingBytes, 0x81);
}

#[test]
fn mqtt_3_1_3_2_will_properties_are_decoded() {
    let block = [
        &[0x18, 0, 0, 0, 30, 0x02, 0, 0, 0, 60, 0x03][..],
        &string(b"text/plain"),
    ]
    .concat();
    let bytes = connect_bytes(
        0x04 | 0x08 | 0x20,
        &[0x11, 0, 0, 1, 0],
        &[string(b"c"), props(&block), string(b"w/t"), string(b"bye")],
    );
    let c = connect(&bytes).unwrap();
    assert_eq!(c.properties.session_expiry_interval, Some(256));
    let will = c.will.unwrap();
    assert_eq!(will.delay_interval, 30);
    let p = will.properties.unwrap();
    assert_eq!(p.message_expiry_interval, Some(60));
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    assert_eq!((will.qos, will.retain), (QoS::AtLeastOnce, true));
}

#[test]
fn encode_connect_writes_every_version() {
    let mut c = Connect {
        version: ProtocolVersion::V5,
        client_id: "dev".into(),
        clean_session: true,
        keep_alive: 30,
        will: Some(LastWill {
            topic: TopicName::new("w").unwrap(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::ExactlyOnce,
            retain: false,
            delay_interval: 5,
            properties: Some(Box::new(PublishProperties {
                payload_format_indicator: Some(1),
                user_properties: vec![("k".into(), "v".into())],
                ..Default::default()
            })),
        }),
        username: None,
        password: Some(Bytes::from_static(b"pw")),
        properties: ConnectProperties {
            receive_maximum: Some(10),
            authentication_method: Some("m".into()),
            authentication_data: Some(Bytes::from_static(b"d")),
            ..Default::default()
        },
    };
    for version in [
        ProtocolVersion::V5,
        ProtocolVersion::V31,
        ProtocolVersion::V311,
    ] {
        c.version = version;
        if !version.is_v5() {
            c.properties = ConnectProperties::default();
            let will = c.will.as_mut().unwrap();
            will.delay_interval = 0;
            will.properties = None;
        }
        if version == ProtocolVersion::V311 {
            c.username = Some("u".into());
        }
        let mut buf = BytesMut::new();
        encode_connect(&c, &mut buf);
        assert_eq!(connect(&buf).unwrap(), c, "{version:?}");
    }
}

// ---- Topic Aliases (3.3.2.3.4) ------------------------------------------

fn aliased(topic: &str, alias: u16) -> Publish {
    Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: if topic.is_empty() {
            let Ok(Packet::Publish(p)) = decode(&publish(b"", &[0x23, 0, 1], b"")) else {
                panic!("alias-only PUBLISH")
            };
            p.topic
        } else {
            TopicName::new(topic).unwrap()
        },
        packet_id: None,
        payload: Bytes::new(),
        properties: Some(Box::new(PublishProperties {
            topic_alias: Some(alias),
            ..Default::default()
        })),
    }
}

#[test]
fn mqtt_3_3_2_3_4_an_alias_set_with_a_topic_names_it_later() {
    let mut aliases = TopicAliases::new(10);
    aliases.resolve(&mut aliased("a/b", 10)).unwrap();
    let mut later = aliased("", 10);
    aliases.resolve(&mut later).unwrap();
    assert_eq!(later.topic.as_str(), "a/b");
    // A new topic replaces the mapping.
    aliases.resolve(&mut aliased("c", 10)).unwrap();
    let mut again = aliased("", 10);
    aliases.resolve(&mut again).unwrap();
    assert_eq!(again.topic.as_str(), "c");
}

#[test]
fn mqtt_3_3_2_3_4_an_unknown_alias_is_a_protocol_error() {
    let mut aliases = TopicAliases::new(10);
    refused(
        aliases.resolve(&mut aliased("", 2)),
        SpecViolation::TopicAliasUnknown(2),
        0x82,
    );
}

#[test]
fn mqtt_3_3_2_9_alias_above_the_maximum_is_invalid() {
    let mut aliases = TopicAliases::new(4);
    refused(
        aliases.resolve(&mut aliased("a", 5)),
        SpecViolation::TopicAliasAboveMaximum {
            alias: 5,
            maximum: 4,
        },
        0x94,
    );
    // Maximum 0: no alias at all.
    refused(
        TopicAliases::new(0).resolve(&mut aliased("a", 1)),
        SpecViolation::TopicAliasAboveMaximum {
            alias: 1,
            maximum: 0,
        },
        0x94,
    );
    refused(
        aliases.resolve(&mut aliased("a", 0)),
        SpecViolation::TopicAliasZero,
        0x94,
    );
}

// ---- bookkeeping -------------------------------------------------------

/// Maps every MQTT 5 variant to its test, by function, so a new variant,
/// or a renamed or deleted test, does not compile. The 3.1.1 variants are
/// mapped in spec_rules.rs.
#[test]
fn every_v5_violation_has_a_test() {
    use SpecViolation as V;
    fn covered_by(v: SpecViolation) -> Option<fn()> {
        Some(match v {
            V::VariableByteIntegerTooLong => mqtt_1_5_5_variable_byte_integer_is_at_most_four_bytes,
            V::NonMinimalVariableByteInteger => mqtt_1_5_5_1_property_length_must_be_minimal,
            V::PropertyLength => mqtt_2_2_2_1_property_length_beyond_the_packet_is_malformed,
            V::UnknownProperty(_) => mqtt_2_2_2_2_unknown_property_identifier_is_malformed,
            V::PropertyNotAllowed(_) => {
                mqtt_2_2_2_2_property_in_a_packet_it_does_not_belong_to_is_malformed
            }
            V::DuplicateProperty(_) => mqtt_2_2_2_2_a_property_twice_is_a_protocol_error,
            V::PropertyValue(_) => mqtt_2_2_2_2_flag_properties_are_0_or_1,
            V::ZeroReceiveMaximum => mqtt_3_1_2_11_3_zero_receive_maximum_is_a_protocol_error,
            V::ZeroMaximumPacketSize => {
                mqtt_3_1_2_11_4_zero_maximum_packet_size_is_a_protocol_error
            }
            V::ZeroSubscriptionIdentifier => {
                mqtt_3_8_2_1_2_zero_subscription_identifier_is_a_protocol_error
            }
            V::AuthenticationDataWithoutMethod => {
                mqtt_3_1_2_11_10_authentication_data_needs_a_method
            }
            V::PayloadFormatInvalid => mqtt_3_3_2_4_payload_format_1_means_utf8_payload,
            V::TopicAliasZero => mqtt_3_3_2_8_topic_alias_0_is_invalid,
            V::TopicAliasAboveMaximum { .. } => mqtt_3_3_2_9_alias_above_the_maximum_is_invalid,
            V::TopicAliasUnknown(_) => mqtt_3_3_2_3_4_an_unknown_alias_is_a_protocol_error,
            V::EmptyTopicWithoutAlias => mqtt_3_3_2_3_4_empty_topic_needs_a_topic_alias,
            V::WildcardInResponseTopic => mqtt_3_3_2_14_response_topic_has_no_wildcards,
            V::SubscriptionIdentifierFromClient => {
                mqtt_3_3_4_6_a_client_publish_has_no_subscription_identifier
            }
            V::SubscribeReservedBits => {
                mqtt_3_8_3_5_reserved_subscription_option_bits_are_malformed
            }
            V::SubscribeQoS3 => mqtt_3_8_3_1_subscription_qos_3_is_a_protocol_error,
            V::RetainHandling3 => mqtt_3_8_3_1_retain_handling_3_is_a_protocol_error,
            V::NoLocalOnSharedSubscription => {
                mqtt_3_8_3_4_no_local_on_a_shared_subscription_is_a_protocol_error
            }
            V::ReasonCodeNotAllowed { .. } => {
                mqtt_3_4_2_1_ack_reason_code_must_be_one_of_its_packet
            }
            V::TrailingBytes(_) => mqtt_2_1_nothing_after_the_last_field,
            // MQTT 3.1.1 rules: `every_violation_has_a_test` in spec_rules.rs.
            V::RemainingLengthTooLong
            | V::ReservedFlags(_)
            | V::UnexpectedPacketType(_)
            | V::PacketIdZero
            | V::FirstPacketNotConnect
            | V::SecondConnect
            | V::ProtocolName
            | V::ConnectReservedFlag
            | V::WillFlagsWithoutWill
            | V::WillQoS
            | V::PasswordWithoutUsername
            | V::DupOnQoS0
            | V::TopicTooDeep
            | V::StringTooLong
            | V::ConnectTrailingBytes
            | V::PublishQoS3
            | V::WildcardInTopicName
            | V::EmptyTopic
            | V::InvalidUtf8
            | V::NullCharacter
            | V::MultiLevelWildcard
            | V::SingleLevelWildcard
            | V::EmptySubscribe
            | V::SubscribeOptions
            | V::EmptyUnsubscribe
            | V::FixedLength => return None,
        })
    }
    assert!(covered_by(V::TopicAliasZero).is_some());
}
