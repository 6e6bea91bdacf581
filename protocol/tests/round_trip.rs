//! Proves the encoders and decoders agree: every client packet survives
//! `encode_packet` -> `Framer` -> `decode_packet`, and every broker packet
//! `encode` writes has the exact bytes of the specification's figures (and
//! that `mqttbytes`, an independent reader, reads them back).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use mqttbytes::v4;
use tidemq_protocol::{
    decode_packet, encode, encode_packet, encode_publish_ref, encoded_publish_len, Ack,
    AckProperties, ConnAck, Disconnect, Framer, Outgoing, Packet, PacketId, ProtocolVersion,
    Publish, PublishRef, QoS, ReasonCode, Subscribe, SubscriptionOptions, TopicFilter, TopicName,
    Unsubscribe,
};

fn id(id: u16) -> PacketId {
    PacketId::new(id).unwrap()
}

fn publish(qos: QoS, packet_id: Option<u16>, payload: &[u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: TopicName::new("a/b").unwrap(),
        packet_id: packet_id.map(id),
        payload: Bytes::copy_from_slice(payload),
        properties: None,
    }
}

fn filter(s: &str) -> TopicFilter {
    TopicFilter::new(s).unwrap()
}

fn outgoing_bytes(packet: &Outgoing) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(packet, ProtocolVersion::V311, &mut buf);
    buf.to_vec()
}

/// Reads broker bytes back with mqttbytes, as a client would.
fn mqttbytes_read(bytes: &[u8]) -> v4::Packet {
    let mut buf = BytesMut::from(bytes);
    let packet = v4::read(&mut buf, 1 << 20).unwrap();
    assert!(buf.is_empty(), "mqttbytes consumed the whole packet");
    packet
}

#[test]
fn every_client_packet_kind_round_trips() {
    let big = Publish {
        dup: true,
        retain: true,
        // 300 bytes of payload: a two-byte remaining length.
        ..publish(QoS::ExactlyOnce, Some(65535), &[0xAB; 300])
    };
    let packets = vec![
        Packet::Publish(publish(QoS::AtMostOnce, None, b"")),
        Packet::Publish(publish(QoS::AtLeastOnce, Some(1), b"hello")),
        Packet::Publish(big),
        Packet::PubAck(Ack::new(id(1))),
        Packet::PubRec(Ack::new(id(2))),
        Packet::PubRel(Ack::new(id(3))),
        Packet::PubComp(Ack::new(id(4))),
        Packet::Subscribe(Subscribe {
            packet_id: id(5),
            filters: vec![
                (filter("a/+/c"), SubscriptionOptions::qos(QoS::AtMostOnce)),
                (filter("#"), SubscriptionOptions::qos(QoS::AtLeastOnce)),
                (
                    filter("$SYS/é/#"),
                    SubscriptionOptions::qos(QoS::ExactlyOnce),
                ),
            ],
            subscription_identifier: None,
            user_properties: Vec::new(),
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: id(6),
            filters: vec![filter("a/+/c"), filter("#")],
            user_properties: Vec::new(),
        }),
        Packet::PingReq,
        Packet::Disconnect(Disconnect::default()),
    ];
    let mut buf = BytesMut::new();
    for packet in &packets {
        encode_packet(packet, ProtocolVersion::V311, &mut buf);
    }
    let framer = Framer::new(4096);
    let decoded: Vec<Packet> = std::iter::from_fn(|| framer.next_frame(&mut buf).unwrap())
        .map(|frame| decode_packet(&frame, ProtocolVersion::V311).unwrap())
        .collect();
    assert!(buf.is_empty());
    assert_eq!(decoded, packets);
}

#[test]
fn connack_bytes() {
    let accepted = Outgoing::ConnAck(ConnAck::new(true, ReasonCode::SUCCESS));
    assert_eq!(outgoing_bytes(&accepted), [0x20, 0x02, 0x01, 0x00]);
    let refused = Outgoing::ConnAck(ConnAck::new(false, ReasonCode::NOT_AUTHORIZED));
    assert_eq!(outgoing_bytes(&refused), [0x20, 0x02, 0x00, 0x05]);
    let v4::Packet::ConnAck(connack) = mqttbytes_read(&outgoing_bytes(&accepted)) else {
        panic!("not a CONNACK")
    };
    assert!(connack.session_present);
    assert_eq!(connack.code, v4::ConnectReturnCode::Success);
}

#[test]
fn suback_bytes() {
    let suback = Outgoing::SubAck {
        packet_id: id(0x1234),
        codes: vec![
            ReasonCode::GRANTED_QOS_0,
            ReasonCode::GRANTED_QOS_1,
            ReasonCode::GRANTED_QOS_2,
            ReasonCode::UNSPECIFIED_ERROR,
        ],
        properties: AckProperties::default(),
    };
    let bytes = outgoing_bytes(&suback);
    assert_eq!(bytes, [0x90, 0x06, 0x12, 0x34, 0x00, 0x01, 0x02, 0x80]);
    let v4::Packet::SubAck(read) = mqttbytes_read(&bytes) else {
        panic!("not a SUBACK")
    };
    assert_eq!(read.pkid, 0x1234);
    assert_eq!(read.return_codes.len(), 4);
    assert_eq!(read.return_codes[3], v4::SubscribeReasonCode::Failure);
}

#[test]
fn puback_pubrec_pubrel_pubcomp_unsuback_bytes() {
    let cases = [
        (Outgoing::PubAck(Ack::new(id(0x0102))), 0x40),
        (Outgoing::PubRec(Ack::new(id(0x0102))), 0x50),
        // [MQTT-3.6.1-1] PUBREL's reserved flags are 0010.
        (Outgoing::PubRel(Ack::new(id(0x0102))), 0x62),
        (Outgoing::PubComp(Ack::new(id(0x0102))), 0x70),
        (
            Outgoing::UnsubAck {
                packet_id: id(0x0102),
                codes: Vec::new(),
                properties: AckProperties::default(),
            },
            0xB0,
        ),
    ];
    for (packet, first_byte) in cases {
        assert_eq!(
            outgoing_bytes(&packet),
            [first_byte, 0x02, 0x01, 0x02],
            "{packet:?}"
        );
    }
}

#[test]
fn pingresp_bytes() {
    let bytes = outgoing_bytes(&Outgoing::PingResp);
    assert_eq!(bytes, [0xD0, 0x00]);
    assert_eq!(mqttbytes_read(&bytes), v4::Packet::PingResp);
}

#[test]
fn qos1_publish_bytes() {
    let packet = Publish {
        retain: true,
        ..publish(QoS::AtLeastOnce, Some(10), b"hi")
    };
    let bytes = outgoing_bytes(&Outgoing::Publish(packet.clone()));
    #[rustfmt::skip]
    let expected = [
        0x33, 0x09,                 // PUBLISH, QoS 1, retain; remaining length 9
        0x00, 0x03, b'a', b'/', b'b', // topic name
        0x00, 0x0A,                 // packet id 10
        b'h', b'i',                 // payload
    ];
    assert_eq!(bytes, expected);
    assert_eq!(encoded_publish_len(&packet), expected.len());

    // mqttbytes writes the same bytes for the same message.
    let mut theirs = v4::Publish::new("a/b", mqttbytes::QoS::AtLeastOnce, &b"hi"[..]);
    theirs.pkid = 10;
    theirs.retain = true;
    let mut their_bytes = BytesMut::new();
    theirs.write(&mut their_bytes).unwrap();
    assert_eq!(their_bytes.as_ref(), &bytes[..]);
}

#[test]
fn encoded_publish_len_matches_what_encode_writes() {
    for (qos, packet_id) in [(QoS::AtMostOnce, None), (QoS::ExactlyOnce, Some(9))] {
        for payload_len in [0, 1, 120, 121, 122, 16_380, 16_384, 70_000] {
            let packet = publish(qos, packet_id, &vec![0; payload_len]);
            let bytes = outgoing_bytes(&Outgoing::Publish(packet.clone()));
            assert_eq!(
                encoded_publish_len(&packet),
                bytes.len(),
                "{qos:?} {payload_len}"
            );
        }
    }
}

#[test]
fn a_borrowed_publish_encodes_the_same_bytes_as_an_owned_one() {
    for (qos, packet_id) in [
        (QoS::AtMostOnce, None),
        (QoS::AtLeastOnce, Some(7)),
        (QoS::ExactlyOnce, Some(65535)),
    ] {
        let mut owned = publish(qos, packet_id, b"payload");
        owned.dup = qos != QoS::AtMostOnce;
        owned.retain = true;
        let mut expected = BytesMut::new();
        encode(
            &Outgoing::Publish(owned.clone()),
            ProtocolVersion::V311,
            &mut expected,
        );
        let mut borrowed = BytesMut::new();
        encode_publish_ref(&PublishRef::from(&owned), &mut borrowed);
        assert_eq!(borrowed, expected, "{qos:?}");
        assert_eq!(encoded_publish_len(&owned), expected.len());
    }
}
