//! Our encoder checked by `mqttbytes`' decoder, and our decoder fed what
//! `mqttbytes`' encoder writes: two independent readings of the spec.

use bytes::{Bytes, BytesMut};
use mqttbytes::{v4, v5};
use tidemq_protocol::{Framer, PacketId, Publish, QoS, TopicFilter, TopicName};

use super::*;

const MAX: usize = 1 << 20;

fn frame(bytes: &BytesMut) -> Frame {
    let mut buf = bytes.clone();
    let frame = Framer::new(MAX).next_frame(&mut buf).unwrap().unwrap();
    assert!(buf.is_empty(), "exactly one packet");
    frame
}

fn publish(qos: QoS, id: Option<u16>) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: TopicName::new("bench/run/7").unwrap(),
        packet_id: id.and_then(PacketId::new),
        payload: Bytes::from_static(b"0123456789abcdefghijklmnopqrstuvwxyz"),
        properties: None,
    }
}

#[test]
fn connect_v4_reads_back_in_mqttbytes() {
    let mut buf = BytesMut::new();
    encode_connect(&mut buf, Version::V4, "tb-1-sub0", 30, SessionMode::Clean);
    match v4::read(&mut buf, MAX).unwrap() {
        v4::Packet::Connect(c) => {
            assert_eq!(c.client_id, "tb-1-sub0");
            assert_eq!(c.keep_alive, 30);
            assert!(c.clean_session);
            assert_eq!(c.protocol, mqttbytes::Protocol::V4);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn connect_v5_reads_back_in_mqttbytes() {
    let mut buf = BytesMut::new();
    encode_connect(&mut buf, Version::V5, "tb-1-pub3", 60, SessionMode::Clean);
    match v5::read(&mut buf, MAX).unwrap() {
        v5::Packet::Connect(c) => {
            assert_eq!(c.client_id, "tb-1-pub3");
            assert_eq!(c.keep_alive, 60);
            assert!(c.clean_session);
            assert_eq!(c.protocol, mqttbytes::Protocol::V5);
            let expiry = c.properties.and_then(|p| p.session_expiry_interval);
            assert_eq!(expiry, None, "a clean session has no expiry");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn persistent_connect_v4_clears_clean_session() {
    let mut buf = BytesMut::new();
    let session = SessionMode::Persistent { expiry_secs: 3600 };
    encode_connect(&mut buf, Version::V4, "bench-sub", 30, session);
    match v4::read(&mut buf, MAX).unwrap() {
        v4::Packet::Connect(c) => {
            assert_eq!(c.client_id, "bench-sub");
            assert!(!c.clean_session, "clean session 0 [MQTT-3.1.2-4]");
        }
        other => panic!("{other:?}"),
    }
    assert!(buf.is_empty(), "3.1.1 has no properties to write");
}

#[test]
fn persistent_connect_v5_clears_clean_start_and_sends_session_expiry() {
    let mut buf = BytesMut::new();
    let session = SessionMode::Persistent { expiry_secs: 3600 };
    encode_connect(&mut buf, Version::V5, "bench-sub", 30, session);
    match v5::read(&mut buf, MAX).unwrap() {
        v5::Packet::Connect(c) => {
            assert_eq!(c.client_id, "bench-sub");
            assert!(!c.clean_session, "clean start 0 [MQTT-3.1.2-5]");
            let expiry = c.properties.and_then(|p| p.session_expiry_interval);
            assert_eq!(
                expiry,
                Some(3600),
                "Session Expiry Interval [MQTT-3.1.2-23]"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn subscribe_reads_back_in_both_versions() {
    let filter = TopicFilter::new("bench/+/x").unwrap();
    let id = PacketId::new(9).unwrap();
    let mut buf = BytesMut::new();
    encode_subscribe(&mut buf, Version::V4, id, &filter, QoS::AtLeastOnce);
    match v4::read(&mut buf, MAX).unwrap() {
        v4::Packet::Subscribe(s) => {
            assert_eq!(s.pkid, 9);
            assert_eq!(s.filters[0].path, "bench/+/x");
            assert_eq!(s.filters[0].qos, mqttbytes::QoS::AtLeastOnce);
        }
        other => panic!("{other:?}"),
    }
    encode_subscribe(&mut buf, Version::V5, id, &filter, QoS::ExactlyOnce);
    match v5::read(&mut buf, MAX).unwrap() {
        v5::Packet::Subscribe(s) => {
            assert_eq!(s.pkid, 9);
            assert_eq!(s.filters[0].path, "bench/+/x");
            assert_eq!(s.filters[0].qos, mqttbytes::QoS::ExactlyOnce);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn publish_reads_back_in_both_versions() {
    for (qos, id) in [
        (QoS::AtMostOnce, None),
        (QoS::AtLeastOnce, Some(1)),
        (QoS::ExactlyOnce, Some(65535)),
    ] {
        let p = publish(qos, id);
        let mut buf = BytesMut::new();
        encode_publish(&mut buf, Version::V4, p.clone());
        match v4::read(&mut buf, MAX).unwrap() {
            v4::Packet::Publish(m) => {
                assert_eq!((m.topic.as_str(), m.pkid), ("bench/run/7", id.unwrap_or(0)));
                assert_eq!(m.payload, p.payload);
                assert_eq!(m.qos as u8, qos as u8);
            }
            other => panic!("{other:?}"),
        }
        encode_publish(&mut buf, Version::V5, p.clone());
        match v5::read(&mut buf, MAX).unwrap() {
            v5::Packet::Publish(m) => {
                assert_eq!((m.topic.as_str(), m.pkid), ("bench/run/7", id.unwrap_or(0)));
                assert_eq!(m.payload, p.payload);
                assert_eq!(m.qos as u8, qos as u8);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn control_packets_are_the_same_in_both_versions() {
    let id = PacketId::new(7).unwrap();
    let mut buf = BytesMut::new();
    encode_control(&mut buf, &Packet::PubRel(tidemq_protocol::Ack::new(id)));
    assert_eq!(
        v5::read(&mut buf.clone(), MAX).unwrap(),
        v5::Packet::PubRel(v5::PubRel::new(7))
    );
    assert_eq!(
        v4::read(&mut buf, MAX).unwrap(),
        v4::Packet::PubRel(v4::PubRel::new(7))
    );
}

#[test]
fn decodes_v4_server_packets_written_by_mqttbytes() {
    let mut buf = BytesMut::new();
    v4::ConnAck::new(v4::ConnectReturnCode::Success, true)
        .write(&mut buf)
        .unwrap();
    assert_eq!(
        decode(&frame(&buf), Version::V4),
        Ok(ServerPacket::ConnAck {
            session_present: true,
            code: 0,
            receive_maximum: None
        })
    );

    buf.clear();
    v4::SubAck::new(
        5,
        vec![v4::SubscribeReasonCode::Success(
            mqttbytes::QoS::AtLeastOnce,
        )],
    )
    .write(&mut buf)
    .unwrap();
    assert_eq!(
        decode(&frame(&buf), Version::V4),
        Ok(ServerPacket::SubAck {
            packet_id: 5,
            codes: vec![1]
        })
    );

    buf.clear();
    let mut m = v4::Publish::new("a/b", mqttbytes::QoS::ExactlyOnce, vec![1, 2, 3]);
    m.pkid = 300;
    m.write(&mut buf).unwrap();
    assert_eq!(
        decode(&frame(&buf), Version::V4),
        Ok(ServerPacket::Publish {
            qos: QoS::ExactlyOnce,
            packet_id: PacketId::new(300),
            payload: Bytes::from_static(&[1, 2, 3]),
        })
    );

    let ack = |packet_id| Ack {
        packet_id,
        reason: 0,
    };
    buf.clear();
    v4::PubAck::new(1).write(&mut buf).unwrap();
    assert_eq!(
        decode(&frame(&buf), Version::V4),
        Ok(ServerPacket::PubAck(ack(1)))
    );
    buf.clear();
    v4::PubRec::new(2).write(&mut buf).unwrap();
    assert_eq!(
        decode(&frame(&buf), Version::V4),
        Ok(ServerPacket::PubRec(ack(2)))
    );
    buf.clear();
    v4::PubRel::new(3).write(&mut buf).unwrap();
    assert_eq!(
        decode(&frame(&buf), Version::V4),
        Ok(ServerPacket::PubRel(ack(3)))
    );
    buf.clear();
    v4::PubComp::new(4).write(&mut buf).unwrap();
    assert_eq!(
        decode(&frame(&buf), Version::V4),
        Ok(ServerPacket::PubComp(ack(4)))
    );
    buf.clear();
    v4::PingResp.write(&mut buf).unwrap();
    assert_eq!(
        decode(&frame(&buf), Version::V4),
        Ok(ServerPacket::PingResp)
    );
}

#[test]
fn v5_connack_receive_maximum_among_other_properties() {
    let mut props = v5::ConnAckProperties::new();
    props.session_expiry_interval = Some(10);
    props.max_qos = Some(1);
    props.assigned_client_identifier = Some("auto-1".into());
    props.receive_max = Some(20);
    props.user_properties = vec![("k".into(), "v".into())];
    props.topic_alias_max = Some(10);
    props.reason_string = Some("fine".into());
    props.server_keep_alive = Some(30);
    let mut connack = v5::ConnAck::new(v5::ConnectReturnCode::Success, false);
    connack.properties = Some(props);
    let mut buf = BytesMut::new();
    connack.write(&mut buf).unwrap();
    assert_eq!(
        decode(&frame(&buf), Version::V5),
        Ok(ServerPacket::ConnAck {
            session_present: false,
            code: 0,
            receive_maximum: Some(20)
        })
    );
}

#[test]
fn v5_refusal_code_is_reported() {
    let mut buf = BytesMut::new();
    v5::ConnAck::new(v5::ConnectReturnCode::UnsupportedProtocolVersion, false)
        .write(&mut buf)
        .unwrap();
    match decode(&frame(&buf), Version::V5) {
        Ok(ServerPacket::ConnAck { code, .. }) => assert_eq!(code, 132),
        other => panic!("{other:?}"),
    }
}

#[test]
fn v5_publish_properties_are_skipped() {
    let mut m = v5::Publish::new("a/b", mqttbytes::QoS::AtLeastOnce, vec![9; 40]);
    m.pkid = 77;
    m.properties = Some(v5::PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        topic_alias: None,
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(b"xyz")),
        user_properties: vec![("a".into(), "b".into())],
        subscription_identifiers: vec![1],
        content_type: Some("bin".into()),
    });
    let mut buf = BytesMut::new();
    m.write(&mut buf).unwrap();
    match decode(&frame(&buf), Version::V5) {
        Ok(ServerPacket::Publish {
            qos,
            packet_id,
            payload,
        }) => {
            assert_eq!(qos, QoS::AtLeastOnce);
            assert_eq!(packet_id, PacketId::new(77));
            assert_eq!(payload.as_ref(), &[9; 40][..]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn v5_acks_carry_their_reason() {
    let mut ack = v5::PubAck::new(12);
    ack.reason = v5::PubAckReason::NoMatchingSubscribers;
    let mut buf = BytesMut::new();
    ack.write(&mut buf).unwrap();
    assert_eq!(
        decode(&frame(&buf), Version::V5),
        Ok(ServerPacket::PubAck(Ack {
            packet_id: 12,
            reason: 16
        }))
    );
    buf.clear();
    v5::PubAck::new(13).write(&mut buf).unwrap();
    assert_eq!(
        decode(&frame(&buf), Version::V5),
        Ok(ServerPacket::PubAck(Ack {
            packet_id: 13,
            reason: 0
        }))
    );
}

#[test]
fn v5_suback_skips_properties() {
    let mut suback = v5::SubAck::new(3, vec![v5::SubscribeReasonCode::QoS2]);
    suback.properties = Some(v5::SubAckProperties {
        reason_string: Some("ok".into()),
        user_properties: vec![],
    });
    let mut buf = BytesMut::new();
    suback.write(&mut buf).unwrap();
    assert_eq!(
        decode(&frame(&buf), Version::V5),
        Ok(ServerPacket::SubAck {
            packet_id: 3,
            codes: vec![2]
        })
    );
}

#[test]
fn truncated_and_unexpected_packets_are_errors_not_panics() {
    let cases: &[(&[u8], Version)] = &[
        (&[0x20, 1, 0], Version::V4),
        (&[0x32, 3, 0, 1, b'a'], Version::V4),
        (&[0x30, 3, 0, 9, b'a'], Version::V4),
        (&[0x40, 1, 0], Version::V5),
        (&[0x36, 5, 0, 1, b'a', 0, 1], Version::V4),
        (&[0x32, 5, 0, 1, b'a', 0, 0], Version::V4),
        (&[0x10, 0], Version::V4),
        (&[0x20, 4, 0, 0, 2, 0x99], Version::V5),
    ];
    for (bytes, version) in cases {
        let buf = BytesMut::from(*bytes);
        assert!(decode(&frame(&buf), *version).is_err(), "{bytes:?}");
    }
}
