//! Proves the QoS flows on the wire in both directions: the delivered QoS is
//! the minimum of the publish and the subscription, the acknowledgements
//! carry the right ids, QoS 2 is delivered exactly once, the in-flight window
//! holds deliveries until they are acknowledged, order is kept, and malformed
//! PUBLISHes close the connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use bytes::Bytes;
use tidemq_protocol::{Packet, Publish, QoS, TopicName};
use tidemq_tests::{
    id, mqtt_options, packet_bytes, publish_bytes, raw_packet_bytes, settings, string_field,
    Client, ConnectOptions, RawClient, RawPacket, TestBroker,
};

const QOS: [QoS; 3] = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];

async fn connected(broker: &TestBroker, client_id: &str) -> RawClient {
    RawClient::connected(broker.addr, &ConnectOptions::new(client_id))
        .await
        .0
}

/// Acknowledges a delivery the way a subscriber must: PUBACK for QoS 1;
/// PUBREC, then the broker's PUBREL, then PUBCOMP for QoS 2. Call it once
/// every expected PUBLISH has been read, so the PUBREL is the next packet.
async fn acknowledge(subscriber: &mut RawClient, publish: &RawPacket) {
    let (_, _, qos, packet_id) = publish.publish();
    let Some(packet_id) = packet_id else { return };
    let [hi, lo] = packet_id.to_be_bytes();
    match qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => subscriber.send(&[0x40, 0x02, hi, lo]).await,
        QoS::ExactlyOnce => {
            subscriber.send(&[0x50, 0x02, hi, lo]).await;
            let pubrel = subscriber.recv().await.expect("PUBREL");
            assert_eq!(pubrel.wire_bytes(), [0x62, 0x02, hi, lo]);
            subscriber.send(&[0x70, 0x02, hi, lo]).await;
        }
    }
}

// [MQTT-3.8.4-6]: the QoS of a delivery is the minimum of the published QoS
// and the granted QoS; [MQTT-3.3.1-9]: RETAIN is 0 and so is DUP on a first
// delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_8_4_6_delivered_qos_is_the_minimum_of_publish_and_subscription() {
    let broker = TestBroker::start().await;
    let mut subscribers = Vec::new();
    for sub_qos in QOS {
        let mut subscriber = connected(&broker, &format!("sub-qos{}", sub_qos as u8)).await;
        subscriber.subscribe_granted(1, &[("qos/+", sub_qos)]).await;
        subscribers.push((sub_qos, subscriber));
    }
    let mut publisher = connected(&broker, "publisher").await;
    for pub_qos in QOS {
        let topic = format!("qos/{}", pub_qos as u8);
        let payload = format!("published at {}", pub_qos as u8);
        publisher
            .publish_acked(
                &topic,
                pub_qos,
                10 + pub_qos as u16,
                payload.as_bytes(),
                false,
            )
            .await;
    }

    for (sub_qos, subscriber) in &mut subscribers {
        let mut delivered = BTreeMap::new();
        let mut publishes = Vec::new();
        for _ in QOS {
            let publish = subscriber.next_publish().await;
            let (topic, payload, qos, packet_id) = publish.publish();
            assert_eq!(
                publish.flags,
                (qos as u8) << 1,
                "DUP 0, RETAIN 0: {publish:?}"
            );
            assert_eq!(packet_id.is_some(), qos != QoS::AtMostOnce);
            assert_eq!(payload, format!("published at {}", &topic[4..]).as_bytes());
            delivered.insert(topic, qos);
            publishes.push(publish);
        }
        for publish in &publishes {
            acknowledge(subscriber, publish).await;
        }
        subscriber.ping().await;
        let expected: BTreeMap<String, QoS> = QOS
            .iter()
            .map(|&pub_qos| (format!("qos/{}", pub_qos as u8), pub_qos.min(*sub_qos)))
            .collect();
        assert_eq!(delivered, expected, "subscription at {sub_qos:?}");
    }
}

// [MQTT-4.3.2-2]: a QoS 1 PUBLISH is answered with a PUBACK carrying its
// packet id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_3_2_2_qos1_publish_gets_puback_with_its_packet_id() {
    let broker = TestBroker::start().await;
    let mut publisher = connected(&broker, "qos1").await;
    for packet_id in [0x1234, 0x0001, 0xFFFF] {
        let publish = publish_bytes("q1/t", QoS::AtLeastOnce, packet_id, b"m", false);
        publisher.send(&publish).await;
        let puback = publisher.recv().await.expect("PUBACK");
        let [hi, lo] = u16::to_be_bytes(packet_id);
        assert_eq!(puback.wire_bytes(), [0x40, 0x02, hi, lo]);
    }
}

// [MQTT-4.3.3-2]: a QoS 2 PUBLISH is answered with PUBREC(id), and its
// PUBREL (flags 0010) with PUBCOMP(id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_3_3_2_qos2_publisher_flow_is_pubrec_pubrel_pubcomp() {
    let broker = TestBroker::start().await;
    let mut publisher = connected(&broker, "qos2").await;
    publisher
        .send(&publish_bytes(
            "q2/t",
            QoS::ExactlyOnce,
            0x0102,
            b"m",
            false,
        ))
        .await;
    let pubrec = publisher.recv().await.expect("PUBREC");
    assert_eq!(pubrec.wire_bytes(), [0x50, 0x02, 0x01, 0x02]);
    publisher.send(&[0x62, 0x02, 0x01, 0x02]).await;
    let pubcomp = publisher.recv().await.expect("PUBCOMP");
    assert_eq!(pubcomp.wire_bytes(), [0x70, 0x02, 0x01, 0x02]);
}

// [MQTT-4.3.3-2]: until the PUBREL, a PUBLISH with the same packet id is
// acknowledged again but not delivered again. After the PUBREL the id starts
// a new message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_3_3_2_resent_qos2_publish_before_pubrel_is_delivered_once() {
    let broker = TestBroker::start().await;
    let mut subscriber = connected(&broker, "sub").await;
    subscriber
        .subscribe_granted(1, &[("once/#", QoS::ExactlyOnce)])
        .await;
    let mut publisher = connected(&broker, "publisher").await;
    let publish = |dup, payload: &'static [u8]| {
        packet_bytes(&Packet::Publish(Publish {
            dup,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: TopicName::new("once/t").unwrap(),
            packet_id: Some(id(5)),
            payload: Bytes::from_static(payload),
            properties: None,
        }))
    };
    publisher.send(&publish(false, b"first")).await;
    let pubrec = publisher.recv().await.expect("PUBREC");
    assert_eq!(pubrec.wire_bytes(), [0x50, 0x02, 0x00, 0x05]);
    let resend = publish(true, b"first");
    assert_eq!(resend[0], 0x3C, "DUP, QoS 2");
    publisher.send(&resend).await;
    let pubrec = publisher.recv().await.expect("PUBREC for the resend");
    assert_eq!(pubrec.wire_bytes(), [0x50, 0x02, 0x00, 0x05]);
    publisher.send(&[0x62, 0x02, 0x00, 0x05]).await;
    let pubcomp = publisher.recv().await.expect("PUBCOMP");
    assert_eq!(pubcomp.wire_bytes(), [0x70, 0x02, 0x00, 0x05]);
    // The id is free again: the same id now carries a new message.
    publisher
        .publish_acked("once/t", QoS::ExactlyOnce, 5, b"second", false)
        .await;
    publisher
        .publish_acked("once/end", QoS::AtMostOnce, 0, b"end", false)
        .await;

    let mut publishes = Vec::new();
    for _ in 0..3 {
        publishes.push(subscriber.next_publish().await);
    }
    let payloads: Vec<Vec<u8>> = publishes.iter().map(|p| p.publish().1).collect();
    assert_eq!(payloads, [&b"first"[..], b"second", b"end"]);
    for publish in &publishes {
        acknowledge(&mut subscriber, publish).await;
    }
    subscriber.ping().await;
}

// [MQTT-4.3.3-1]: towards a subscriber the broker sends PUBLISH QoS 2,
// answers PUBREC with PUBREL (flags 0010, same id) and is done at PUBCOMP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_3_3_1_subscriber_side_qos2_flow() {
    let mut settings = settings();
    // One message in flight: the second arrives only once the first is done.
    settings.limits.max_inflight = 1;
    let broker = TestBroker::start_with(settings).await;
    let mut subscriber = connected(&broker, "sub").await;
    subscriber
        .subscribe_granted(1, &[("s2/t", QoS::ExactlyOnce)])
        .await;
    let mut publisher = connected(&broker, "publisher").await;
    publisher
        .publish_acked("s2/t", QoS::ExactlyOnce, 1, b"one", false)
        .await;
    publisher
        .publish_acked("s2/t", QoS::ExactlyOnce, 2, b"two", false)
        .await;

    for expected in [&b"one"[..], b"two"] {
        let publish = subscriber.next_publish().await;
        assert_eq!(publish.flags, 0b0100, "QoS 2, DUP 0, RETAIN 0");
        let (topic, payload, _, packet_id) = publish.publish();
        assert_eq!((topic.as_str(), payload.as_slice()), ("s2/t", expected));
        let [hi, lo] = packet_id.expect("QoS 2 carries an id").to_be_bytes();
        subscriber.send(&[0x50, 0x02, hi, lo]).await;
        let pubrel = subscriber.recv().await.expect("PUBREL");
        assert_eq!(pubrel.wire_bytes(), [0x62, 0x02, hi, lo]);
        subscriber.send(&[0x70, 0x02, hi, lo]).await;
    }
    subscriber.ping().await;
}

// [MQTT-3.3.1-9]: a message forwarded to an established subscription has
// RETAIN 0, whatever the publisher set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_1_9_forwarded_publish_has_retain_0() {
    let broker = TestBroker::start().await;
    let mut subscriber = connected(&broker, "sub").await;
    subscriber
        .subscribe_granted(1, &[("fw/+", QoS::AtLeastOnce)])
        .await;
    let mut publisher = connected(&broker, "publisher").await;
    publisher
        .publish_acked("fw/plain", QoS::AtLeastOnce, 1, b"plain", false)
        .await;
    publisher
        .publish_acked("fw/retained", QoS::AtLeastOnce, 2, b"retained", true)
        .await;
    for topic in ["fw/plain", "fw/retained"] {
        let publish = subscriber.next_publish().await;
        assert_eq!(publish.publish().0, topic);
        assert!(!publish.retain(), "RETAIN set on {publish:?}");
        acknowledge(&mut subscriber, &publish).await;
    }
}

/// Sends `bytes` (a bad PUBLISH), asserts the broker closes the connection
/// without an answer and counts a protocol error, and that a subscriber to
/// `#` receives nothing of it.
async fn assert_publish_closes(bytes: &[u8]) {
    let broker = TestBroker::start().await;
    let mut subscriber = connected(&broker, "sub").await;
    subscriber
        .subscribe_granted(1, &[("#", QoS::AtMostOnce)])
        .await;
    let mut offender = connected(&broker, "offender").await;
    offender.send(bytes).await;
    offender.assert_closed_without_reply().await;
    broker
        .wait_metrics("protocol_errors = 1", |m| m.protocol_errors == 1)
        .await;
    let mut publisher = connected(&broker, "publisher").await;
    publisher
        .publish_acked("after", QoS::AtMostOnce, 0, b"after", false)
        .await;
    let (topic, _, _, _) = subscriber.next_publish().await.publish();
    assert_eq!(topic, "after", "the bad PUBLISH was routed");
}

fn publish_body(topic: &str, packet_id: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut body = string_field(topic);
    if let Some(packet_id) = packet_id {
        body.extend(packet_id.to_be_bytes());
    }
    body.extend(payload);
    body
}

// [MQTT-3.3.1-4]: a PUBLISH with both QoS bits set is malformed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_1_4_publish_with_qos_3_closes() {
    let body = publish_body("a/b", Some(1), b"m");
    assert_publish_closes(&raw_packet_bytes(0x36, &body)).await;
}

// [MQTT-3.3.2-2]: a topic name must not contain wildcards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_2_2_publish_topic_with_wildcard_closes() {
    let body = publish_body("a/+", None, b"m");
    assert_publish_closes(&raw_packet_bytes(0x30, &body)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_2_2_publish_topic_with_multi_level_wildcard_closes() {
    let body = publish_body("a/#", Some(3), b"m");
    assert_publish_closes(&raw_packet_bytes(0x32, &body)).await;
}

// [MQTT-2.3.1-1]: QoS 1 and 2 packets carry a non-zero packet id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_2_3_1_1_qos1_publish_with_packet_id_0_closes() {
    let body = publish_body("a/b", Some(0), b"m");
    assert_publish_closes(&raw_packet_bytes(0x32, &body)).await;
}

// `limits.max_inflight` QoS 1 deliveries are unacknowledged at most; the next
// one waits for a PUBACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_window_holds_qos1_deliveries_until_puback() {
    let mut settings = settings();
    settings.limits.max_inflight = 2;
    let broker = TestBroker::start_with(settings).await;
    let mut subscriber = connected(&broker, "slow").await;
    subscriber
        .subscribe_granted(1, &[("w/+", QoS::AtLeastOnce)])
        .await;
    let mut publisher = connected(&broker, "publisher").await;
    for n in 1..=3u16 {
        let topic = format!("w/{n}");
        publisher
            .publish_acked(&topic, QoS::AtLeastOnce, n, topic.as_bytes(), false)
            .await;
    }

    let first = subscriber.next_publish().await;
    let second = subscriber.next_publish().await;
    assert_eq!(first.publish().0, "w/1");
    assert_eq!(second.publish().0, "w/2");
    assert_ne!(first.publish().3, second.publish().3, "distinct packet ids");
    if let Some(extra) = subscriber.recv_within(tidemq_tests::QUIET).await {
        panic!("window of 2 exceeded: {extra:?}");
    }

    acknowledge(&mut subscriber, &first).await;
    let third = subscriber.next_publish().await;
    let (topic, payload, qos, _) = third.publish();
    assert_eq!(
        (topic.as_str(), payload.as_slice(), qos),
        ("w/3", &b"w/3"[..], QoS::AtLeastOnce)
    );
    if let Some(extra) = subscriber.recv_within(tidemq_tests::QUIET).await {
        panic!("nothing else was published: {extra:?}");
    }
}

// [MQTT-4.6.0-6]: messages from one publisher on one topic arrive in the
// order they were published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_6_0_6_qos1_messages_from_one_publisher_arrive_in_order() {
    const COUNT: u16 = 100;
    let broker = TestBroker::start().await;
    let mut subscriber = Client::connect(mqtt_options(&broker, "ordered-sub")).await;
    subscriber
        .subscribe("order/t", rumqttc::QoS::AtLeastOnce)
        .await;
    let mut publisher = connected(&broker, "publisher").await;
    // All PUBLISHes in one write, then their PUBACKs in order.
    let burst: Vec<u8> = (1..=COUNT)
        .flat_map(|n| publish_bytes("order/t", QoS::AtLeastOnce, n, &n.to_be_bytes(), false))
        .collect();
    publisher.send(&burst).await;
    for n in 1..=COUNT {
        let puback = publisher.recv().await.expect("PUBACK");
        let [hi, lo] = n.to_be_bytes();
        assert_eq!(puback.wire_bytes(), [0x40, 0x02, hi, lo]);
    }

    for n in 1..=COUNT {
        let publish = subscriber.next_publish().await;
        assert_eq!(publish.qos, rumqttc::QoS::AtLeastOnce);
        assert_eq!(
            publish.payload.as_ref(),
            n.to_be_bytes(),
            "message {n} out of order"
        );
    }
}
