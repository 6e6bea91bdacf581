//! Proves the MQTT 5 encoders and decoders agree, with arbitrary properties:
//! every client packet survives `encode_packet` -> `Framer` ->
//! `decode_packet`, every CONNECT `encode_connect` -> `decode_connect`, and
//! every broker packet `encode` -> `Framer` -> `decode_server_packet`; a
//! PUBLISH's announced length is the number of bytes written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::{Bytes, BytesMut};
use common::{packet_id, qos};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use tidemq_protocol::{
    decode_connect, decode_packet, decode_server_packet, encode, encode_connect, encode_packet,
    encode_publish_ref, encoded_publish_ref_len, Ack, AckProperties, Auth, ConnAck,
    ConnAckProperties, Connect, ConnectProperties, Disconnect, DisconnectProperties, Framer,
    LastWill, Outgoing, Packet, PacketId, ProtocolVersion, Publish, PublishProperties, PublishRef,
    PublishV5, QoS, ReasonCode, RetainHandling, Subscribe, SubscriptionOptions, TopicFilter,
    TopicName, Unsubscribe, UserProperty,
};

const MAX_PACKET_SIZE: usize = 1 << 20;

// ---- strategies ----------------------------------------------------------

/// Any string an MQTT string may hold: no U+0000 [MQTT-1.5.4-2].
fn text() -> impl Strategy<Value = String> {
    "[^\\x00]{0,12}"
}

fn user_properties() -> impl Strategy<Value = Vec<UserProperty>> {
    vec((text(), text()), 0..4)
}

fn bytes() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..32).prop_map(Bytes::from)
}

fn topic_name() -> impl Strategy<Value = TopicName> {
    vec("[^/+#\\x00]{0,6}", 1..=4).prop_filter_map("empty topic", |levels| {
        TopicName::new(&levels.join("/")).ok()
    })
}

fn topic_filter() -> impl Strategy<Value = TopicFilter> {
    let level = prop_oneof![3 => "[^/+#\\x00]{0,6}", 1 => Just("+".to_owned())];
    (vec(level, 1..=4), any::<bool>()).prop_filter_map("empty filter", |(mut levels, multi)| {
        if multi {
            levels.push("#".to_owned());
        }
        TopicFilter::new(&levels.join("/")).ok()
    })
}

fn flag() -> impl Strategy<Value = Option<u8>> {
    option::of(0..=1u8)
}

/// PUBLISH properties; `subscription_ids` only for a server's PUBLISH.
/// The payload format is left to the caller, which knows the payload.
fn publish_properties(subscription_ids: bool) -> impl Strategy<Value = PublishProperties> {
    let ids = if subscription_ids {
        vec(1..=268_435_455u32, 0..3).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (
        option::of(any::<u32>()),
        option::of(1..=u16::MAX),
        option::of(topic_name()),
        option::of(bytes()),
        user_properties(),
        ids,
        option::of(text()),
    )
        .prop_map(
            |(expiry, alias, response_topic, correlation_data, users, ids, content_type)| {
                PublishProperties {
                    payload_format_indicator: None,
                    message_expiry_interval: expiry,
                    topic_alias: alias,
                    response_topic,
                    correlation_data,
                    user_properties: users,
                    subscription_identifiers: ids,
                    content_type,
                }
            },
        )
}

fn publish(server: bool) -> impl Strategy<Value = Publish> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        packet_id(),
        prop_oneof![
            vec(any::<u8>(), 0..64).prop_map(Bytes::from),
            text().prop_map(Bytes::from)
        ],
        option::of(publish_properties(server)),
        any::<bool>(),
    )
        .prop_map(
            |(qos, dup, retain, topic, id, payload, properties, alias_only)| {
                let with_id = qos != QoS::AtMostOnce;
                let mut properties = properties.map(Box::new);
                let mut topic = topic;
                if let Some(p) = properties.as_mut() {
                    // Claim UTF-8 only when it is [MQTT-3.3.2-4].
                    p.payload_format_indicator =
                        Some(u8::from(std::str::from_utf8(&payload).is_ok()));
                    if alias_only && p.topic_alias.is_some() {
                        topic = alias_only_topic();
                    }
                }
                Publish {
                    dup: dup && with_id,
                    qos,
                    retain,
                    topic,
                    packet_id: with_id.then_some(id),
                    payload,
                    properties,
                }
            },
        )
}

/// The empty topic of a PUBLISH that names its topic by alias alone.
fn alias_only_topic() -> TopicName {
    let wire = [0x30, 6, 0, 0, 3, 0x23, 0, 1];
    let Packet::Publish(p) = decode(&wire).unwrap() else {
        unreachable!()
    };
    p.topic
}

fn ack_properties() -> impl Strategy<Value = AckProperties> {
    (option::of(text()), user_properties()).prop_map(|(reason_string, user_properties)| {
        AckProperties {
            reason_string,
            user_properties,
        }
    })
}

fn ack(codes: &'static [u8]) -> impl Strategy<Value = Ack> {
    (packet_id(), prop::sample::select(codes), ack_properties()).prop_map(
        |(packet_id, code, properties)| Ack {
            packet_id,
            reason: ReasonCode(code),
            properties,
        },
    )
}

const PUBACK_CODES: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_CODES: &[u8] = &[0x00, 0x92];
const DISCONNECT_CODES: &[u8] = &[0x00, 0x04, 0x80, 0x81, 0x82, 0x8E, 0x93, 0x98, 0xA2];
const AUTH_CODES: &[u8] = &[0x00, 0x18, 0x19];

fn options() -> impl Strategy<Value = SubscriptionOptions> {
    let rh = prop_oneof![
        Just(RetainHandling::OnSubscribe),
        Just(RetainHandling::OnNewSubscription),
        Just(RetainHandling::Never)
    ];
    (qos(), any::<bool>(), any::<bool>(), rh).prop_map(|(qos, no_local, rap, rh)| {
        SubscriptionOptions {
            qos,
            no_local,
            retain_as_published: rap,
            retain_handling: rh,
        }
    })
}

fn disconnect() -> impl Strategy<Value = Disconnect> {
    (
        prop::sample::select(DISCONNECT_CODES),
        option::of(any::<u32>()),
        option::of(text()),
        user_properties(),
        option::of(text()),
    )
        .prop_map(
            |(code, expiry, reason_string, users, reference)| Disconnect {
                reason: ReasonCode(code),
                properties: DisconnectProperties {
                    session_expiry_interval: expiry,
                    reason_string,
                    user_properties: users,
                    server_reference: reference,
                },
            },
        )
}

fn auth() -> impl Strategy<Value = Auth> {
    (
        prop::sample::select(AUTH_CODES),
        option::of(text()),
        option::of(bytes()),
        option::of(text()),
        user_properties(),
    )
        .prop_map(|(code, method, data, reason_string, users)| Auth {
            reason: ReasonCode(code),
            // Data without a method is a protocol error.
            authentication_data: method.as_ref().and(data),
            authentication_method: method,
            reason_string,
            user_properties: users,
        })
}

fn client_packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        4 => publish(false).prop_map(Packet::Publish),
        1 => ack(PUBACK_CODES).prop_map(Packet::PubAck),
        1 => ack(PUBACK_CODES).prop_map(Packet::PubRec),
        1 => ack(PUBREL_CODES).prop_map(Packet::PubRel),
        1 => ack(PUBREL_CODES).prop_map(Packet::PubComp),
        2 => (
            packet_id(),
            vec((topic_filter(), options()), 1..=4),
            option::of(1..=268_435_455u32),
            user_properties()
        )
            .prop_map(|(packet_id, filters, id, users)| {
                Packet::Subscribe(Subscribe {
                    packet_id,
                    filters,
                    subscription_identifier: id,
                    user_properties: users,
                })
            }),
        2 => (packet_id(), vec(topic_filter(), 1..=4), user_properties()).prop_map(
            |(packet_id, filters, users)| Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                user_properties: users,
            })
        ),
        1 => Just(Packet::PingReq),
        1 => disconnect().prop_map(Packet::Disconnect),
        1 => auth().prop_map(Packet::Auth),
    ]
}

fn connack() -> impl Strategy<Value = ConnAck> {
    let a = (
        option::of(any::<u32>()),
        option::of(1..=u16::MAX),
        flag(),
        flag(),
        option::of(1..=u32::MAX),
        option::of(text()),
        option::of(any::<u16>()),
        option::of(text()),
        user_properties(),
    );
    let b = (
        flag(),
        flag(),
        flag(),
        option::of(any::<u16>()),
        option::of(text()),
        option::of(text()),
        option::of(text()),
        option::of(bytes()),
    );
    (
        any::<bool>(),
        prop::sample::select(&[0x00u8, 0x80, 0x87, 0x9C][..]),
        a,
        b,
    )
        .prop_map(|(present, code, a, b)| ConnAck {
            session_present: present && code == 0,
            reason: ReasonCode(code),
            properties: Box::new(ConnAckProperties {
                session_expiry_interval: a.0,
                receive_maximum: a.1,
                maximum_qos: a.2,
                retain_available: a.3,
                maximum_packet_size: a.4,
                assigned_client_identifier: a.5,
                topic_alias_maximum: a.6,
                reason_string: a.7,
                user_properties: a.8,
                wildcard_subscription_available: b.0,
                subscription_identifiers_available: b.1,
                shared_subscription_available: b.2,
                server_keep_alive: b.3,
                response_information: b.4,
                server_reference: b.5,
                authentication_data: b.6.as_ref().and(b.7),
                authentication_method: b.6,
            }),
        })
}

fn server_packet() -> impl Strategy<Value = Outgoing> {
    prop_oneof![
        1 => connack().prop_map(Outgoing::ConnAck),
        4 => publish(true).prop_map(Outgoing::Publish),
        1 => ack(PUBACK_CODES).prop_map(Outgoing::PubAck),
        1 => ack(PUBACK_CODES).prop_map(Outgoing::PubRec),
        1 => ack(PUBREL_CODES).prop_map(Outgoing::PubRel),
        1 => ack(PUBREL_CODES).prop_map(Outgoing::PubComp),
        1 => (
            packet_id(),
            vec(prop::sample::select(&[0x00u8, 0x01, 0x02, 0x80, 0x8F, 0xA2][..]), 0..5),
            ack_properties()
        )
            .prop_map(|(packet_id, codes, properties)| Outgoing::SubAck {
                packet_id,
                codes: codes.into_iter().map(ReasonCode).collect(),
                properties,
            }),
        1 => (
            packet_id(),
            vec(prop::sample::select(&[0x00u8, 0x11, 0x80, 0x8F][..]), 0..5),
            ack_properties()
        )
            .prop_map(|(packet_id, codes, properties)| Outgoing::UnsubAck {
                packet_id,
                codes: codes.into_iter().map(ReasonCode).collect(),
                properties,
            }),
        1 => Just(Outgoing::PingResp),
        1 => disconnect().prop_map(Outgoing::Disconnect),
        1 => auth().prop_map(Outgoing::Auth),
    ]
}

fn connect() -> impl Strategy<Value = Connect> {
    let will = (
        topic_name(),
        text().prop_map(Bytes::from),
        qos(),
        any::<bool>(),
        any::<u32>(),
        option::of(publish_properties(false)),
    )
        .prop_map(
            |(topic, payload, qos, retain, delay, properties)| LastWill {
                topic,
                payload,
                qos,
                retain,
                delay_interval: delay,
                properties: properties
                    .map(|p| PublishProperties {
                        topic_alias: None,
                        payload_format_indicator: Some(1),
                        ..p
                    })
                    .map(Box::new),
            },
        );
    let properties = (
        option::of(any::<u32>()),
        option::of(1..=u16::MAX),
        option::of(1..=u32::MAX),
        option::of(any::<u16>()),
        flag(),
        flag(),
        user_properties(),
        option::of(text()),
        option::of(bytes()),
    )
        .prop_map(|p| ConnectProperties {
            session_expiry_interval: p.0,
            receive_maximum: p.1,
            maximum_packet_size: p.2,
            topic_alias_maximum: p.3,
            request_response_information: p.4,
            request_problem_information: p.5,
            user_properties: p.6,
            authentication_data: p.7.as_ref().and(p.8),
            authentication_method: p.7,
        });
    (
        text(),
        any::<bool>(),
        any::<u16>(),
        option::of(will),
        option::of(text()),
        option::of(bytes()),
        properties,
    )
        .prop_map(
            |(client_id, clean_session, keep_alive, will, username, password, properties)| {
                Connect {
                    version: ProtocolVersion::V5,
                    client_id,
                    clean_session,
                    keep_alive,
                    will,
                    username,
                    password,
                    properties,
                }
            },
        )
}

// ---- helpers -------------------------------------------------------------

fn next_frame(buf: &mut BytesMut) -> tidemq_protocol::Frame {
    Framer::new(MAX_PACKET_SIZE)
        .next_frame(buf)
        .unwrap()
        .unwrap()
}

fn decode(bytes: &[u8]) -> Result<Packet, tidemq_protocol::ProtocolError> {
    let mut buf = BytesMut::from(bytes);
    decode_packet(&next_frame(&mut buf), ProtocolVersion::V5)
}

proptest! {
    #[test]
    fn every_v5_client_packet_round_trips(packets in vec(client_packet(), 1..8)) {
        let mut buf = BytesMut::new();
        for packet in &packets {
            encode_packet(packet, ProtocolVersion::V5, &mut buf);
        }
        for packet in &packets {
            let frame = next_frame(&mut buf);
            prop_assert_eq!(&decode_packet(&frame, ProtocolVersion::V5).unwrap(), packet);
        }
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn every_v5_connect_round_trips(connect in connect()) {
        let mut buf = BytesMut::new();
        encode_connect(&connect, &mut buf);
        let frame = next_frame(&mut buf);
        prop_assert_eq!(decode_connect(&frame).unwrap(), connect);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn every_v5_server_packet_round_trips(packets in vec(server_packet(), 1..8)) {
        let mut buf = BytesMut::new();
        for packet in &packets {
            encode(packet, ProtocolVersion::V5, &mut buf);
        }
        for packet in &packets {
            let frame = next_frame(&mut buf);
            let decoded = decode_server_packet(&frame, ProtocolVersion::V5).unwrap();
            prop_assert_eq!(&decoded, packet);
        }
        prop_assert!(buf.is_empty());
    }

    /// A borrowed PUBLISH with the per-subscriber fields of [`PublishV5`]:
    /// its length is what it writes, and it reads back with the broker's
    /// fields replacing the publisher's.
    #[test]
    fn mqtt_3_3_2_v5_publish_ref_writes_the_subscribers_fields(
        publish in publish(false),
        expiry in option::of(any::<u32>()),
        alias in option::of(1..=u16::MAX),
        omit_topic in any::<bool>(),
        ids in vec(1..=268_435_455u32, 0..3),
    ) {
        // An empty topic needs an alias [MQTT-3.3.2.3.4].
        let alias = if publish.topic.is_empty() { alias.or(Some(1)) } else { alias };
        let omit_topic = omit_topic && alias.is_some();
        let v5 = PublishV5 {
            properties: publish.properties.as_deref(),
            message_expiry_interval: expiry,
            topic_alias: alias,
            omit_topic,
            subscription_identifiers: &ids,
        };
        let reference = PublishRef { v5: Some(v5), ..PublishRef::from(&publish) };
        let mut buf = BytesMut::new();
        encode_publish_ref(&reference, &mut buf);
        prop_assert_eq!(encoded_publish_ref_len(&reference), buf.len());
        let frame = next_frame(&mut buf);
        let Outgoing::Publish(read) = decode_server_packet(&frame, ProtocolVersion::V5).unwrap()
        else {
            panic!("not a PUBLISH")
        };
        prop_assert_eq!(read.topic.is_empty(), omit_topic || publish.topic.is_empty());
        prop_assert_eq!(&read.payload, &publish.payload);
        let p = read.properties.unwrap_or_default();
        prop_assert_eq!(p.message_expiry_interval, expiry);
        prop_assert_eq!(p.topic_alias, alias);
        prop_assert_eq!(&p.subscription_identifiers, &ids);
        let sent = publish.properties.unwrap_or_default();
        prop_assert_eq!(&p.user_properties, &sent.user_properties);
        prop_assert_eq!(&p.response_topic, &sent.response_topic);
    }
}

#[test]
fn mqtt_3_4_2_1_a_successful_v5_ack_is_four_bytes() {
    let id = PacketId::new(7).unwrap();
    let mut buf = BytesMut::new();
    encode(
        &Outgoing::PubAck(Ack::new(id)),
        ProtocolVersion::V5,
        &mut buf,
    );
    assert_eq!(buf.as_ref(), [0x40, 2, 0, 7]);
    buf.clear();
    let refused = Ack::with_reason(id, ReasonCode::NO_MATCHING_SUBSCRIBERS);
    encode(&Outgoing::PubAck(refused), ProtocolVersion::V5, &mut buf);
    assert_eq!(buf.as_ref(), [0x40, 3, 0, 7, 0x10]);
}

#[test]
fn mqtt_3_2_2_6_v5_connack_refusal_has_no_session_present() {
    let mut buf = BytesMut::new();
    let connack = ConnAck::new(true, ReasonCode::NOT_AUTHORIZED);
    encode(&Outgoing::ConnAck(connack), ProtocolVersion::V5, &mut buf);
    assert_eq!(buf.as_ref(), [0x20, 3, 0x00, 0x87, 0x00]);
}

#[test]
fn v311_server_packets_read_back() {
    let id = PacketId::new(3).unwrap();
    let packets = [
        Outgoing::ConnAck(ConnAck::new(true, ReasonCode::SUCCESS)),
        Outgoing::PubRel(Ack::new(id)),
        Outgoing::SubAck {
            packet_id: id,
            codes: vec![ReasonCode(1), ReasonCode(0x80)],
            properties: AckProperties::default(),
        },
        Outgoing::PingResp,
    ];
    for packet in packets {
        let mut buf = BytesMut::new();
        encode(&packet, ProtocolVersion::V311, &mut buf);
        let frame = next_frame(&mut buf);
        assert_eq!(
            decode_server_packet(&frame, ProtocolVersion::V311).unwrap(),
            packet
        );
    }
}
