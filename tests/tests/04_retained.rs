//! Proves retained messages end to end: a new subscription receives the last
//! retained message of each matching topic with RETAIN 1 at the lower of the
//! two QoS, a newer retained message replaces it, an empty one clears it, and
//! established subscribers receive retained publishes with RETAIN 0.
//!
//! Absence is proved without waiting: retained messages are in a new
//! subscriber's queue before its SUBACK, so a later non-retained publish to
//! the same topic must be the first PUBLISH it reads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use tidemq_protocol::QoS;
use tidemq_tests::{ConnectOptions, RawClient, RawPacket, TestBroker};

async fn connected(broker: &TestBroker, client_id: &str) -> RawClient {
    RawClient::connected(broker.addr, &ConnectOptions::new(client_id))
        .await
        .0
}

/// A new client subscribed to `filter` at `qos`.
async fn subscriber(broker: &TestBroker, client_id: &str, filter: &str, qos: QoS) -> RawClient {
    let mut client = connected(broker, client_id).await;
    client.subscribe_granted(1, &[(filter, qos)]).await;
    client
}

fn summary(publish: &RawPacket) -> (String, Vec<u8>, QoS, bool) {
    let (topic, payload, qos, _) = publish.publish();
    (topic, payload, qos, publish.retain())
}

fn expected(topic: &str, payload: &[u8], qos: QoS, retain: bool) -> (String, Vec<u8>, QoS, bool) {
    (topic.to_string(), payload.to_vec(), qos, retain)
}

// [MQTT-3.3.1-5], [MQTT-3.3.1-8]: a retained message is stored and sent to
// a later subscription with RETAIN 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_1_8_new_subscriber_gets_the_retained_message_with_retain_1() {
    let broker = TestBroker::start().await;
    let mut publisher = connected(&broker, "publisher").await;
    publisher
        .publish_acked("r/a", QoS::AtLeastOnce, 1, b"kept", true)
        .await;
    let mut late = subscriber(&broker, "late", "r/a", QoS::AtLeastOnce).await;
    let publish = late.next_publish().await;
    assert_eq!(publish.flags, 0b0011, "QoS 1, RETAIN 1, DUP 0");
    assert_eq!(
        summary(&publish),
        expected("r/a", b"kept", QoS::AtLeastOnce, true)
    );

    publisher
        .publish_acked("r/a", QoS::AtMostOnce, 0, b"live", false)
        .await;
    assert_eq!(
        summary(&late.next_publish().await),
        expected("r/a", b"live", QoS::AtMostOnce, false),
        "the retained message is sent once"
    );
}

// [MQTT-3.3.1-7]: a newer retained message (here at QoS 0) replaces the one
// kept for its topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_1_7_newer_retained_message_replaces_the_old() {
    let broker = TestBroker::start().await;
    let mut publisher = connected(&broker, "publisher").await;
    publisher
        .publish_acked("r/v", QoS::AtLeastOnce, 1, b"v1", true)
        .await;
    publisher
        .publish_acked("r/v", QoS::AtMostOnce, 0, b"v2", true)
        .await;
    let mut late = subscriber(&broker, "late", "r/v", QoS::ExactlyOnce).await;
    assert_eq!(
        summary(&late.next_publish().await),
        expected("r/v", b"v2", QoS::AtMostOnce, true)
    );
    publisher
        .publish_acked("r/v", QoS::AtMostOnce, 0, b"live", false)
        .await;
    assert_eq!(
        summary(&late.next_publish().await),
        expected("r/v", b"live", QoS::AtMostOnce, false),
        "v1 was not kept"
    );
}

// [MQTT-3.3.1-10]: a retained PUBLISH with an empty payload is delivered as
// usual to current subscribers and removes the retained message; later
// subscribers receive none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_1_10_empty_retained_payload_clears_the_retained_message() {
    let broker = TestBroker::start().await;
    let mut publisher = connected(&broker, "publisher").await;
    publisher
        .publish_acked("r/c", QoS::AtLeastOnce, 1, b"doomed", true)
        .await;
    let mut early = subscriber(&broker, "early", "r/c", QoS::AtLeastOnce).await;
    assert_eq!(
        summary(&early.next_publish().await),
        expected("r/c", b"doomed", QoS::AtLeastOnce, true)
    );

    publisher
        .publish_acked("r/c", QoS::AtLeastOnce, 2, b"", true)
        .await;
    assert_eq!(
        summary(&early.next_publish().await),
        expected("r/c", b"", QoS::AtLeastOnce, false),
        "the empty message is delivered to the established subscription"
    );

    let mut late = subscriber(&broker, "late", "r/c", QoS::AtLeastOnce).await;
    publisher
        .publish_acked("r/c", QoS::AtMostOnce, 0, b"live", false)
        .await;
    assert_eq!(
        summary(&late.next_publish().await),
        expected("r/c", b"live", QoS::AtMostOnce, false),
        "no retained message after the clear"
    );
}

// [MQTT-3.8.4-6]: a retained message is delivered at the lower of its QoS
// and the subscription's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_8_4_6_retained_message_is_delivered_at_the_lower_qos() {
    let broker = TestBroker::start().await;
    let mut publisher = connected(&broker, "publisher").await;
    let all = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    for msg_qos in all {
        let topic = format!("m/{}", msg_qos as u8);
        publisher
            .publish_acked(&topic, msg_qos, 1, topic.as_bytes(), true)
            .await;
    }
    for sub_qos in all {
        let client_id = format!("sub-{}", sub_qos as u8);
        let mut late = subscriber(&broker, &client_id, "m/+", sub_qos).await;
        let mut delivered = BTreeMap::new();
        for _ in all {
            let (topic, payload, qos, retain) = summary(&late.next_publish().await);
            assert!(retain, "{topic} without RETAIN");
            assert_eq!(payload, topic.as_bytes());
            delivered.insert(topic, qos);
        }
        let wanted: BTreeMap<String, QoS> = all
            .iter()
            .map(|&msg_qos| (format!("m/{}", msg_qos as u8), msg_qos.min(sub_qos)))
            .collect();
        assert_eq!(delivered, wanted, "subscription at {sub_qos:?}");
    }
}

// [MQTT-3.3.1-6]: a new subscription receives the retained message of every
// matching topic, and only those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_1_6_wildcard_subscription_receives_every_matching_retained_message() {
    let broker = TestBroker::start().await;
    let mut publisher = connected(&broker, "publisher").await;
    for (n, topic) in ["w/a", "w/b/c", "w", "x/a", "$w/a"].iter().enumerate() {
        publisher
            .publish_acked(
                topic,
                QoS::AtLeastOnce,
                n as u16 + 1,
                topic.as_bytes(),
                true,
            )
            .await;
    }
    let mut late = subscriber(&broker, "late", "w/#", QoS::AtLeastOnce).await;
    let mut topics = Vec::new();
    for _ in 0..3 {
        let (topic, payload, qos, retain) = summary(&late.next_publish().await);
        assert_eq!(
            (payload.as_slice(), qos, retain),
            (topic.as_bytes(), QoS::AtLeastOnce, true)
        );
        topics.push(topic);
    }
    topics.sort();
    assert_eq!(topics, ["w", "w/a", "w/b/c"]);
    publisher
        .publish_acked("w/end", QoS::AtMostOnce, 0, b"end", false)
        .await;
    let (topic, _, _, retain) = summary(&late.next_publish().await);
    assert_eq!(
        (topic.as_str(), retain),
        ("w/end", false),
        "no other retained message"
    );

    // [MQTT-4.7.2-1] holds for retained messages too.
    let mut everything = subscriber(&broker, "everything", "#", QoS::AtMostOnce).await;
    let mut topics = Vec::new();
    for _ in 0..4 {
        topics.push(summary(&everything.next_publish().await).0);
    }
    topics.sort();
    assert_eq!(topics, ["w", "w/a", "w/b/c", "x/a"]);
    publisher
        .publish_acked("x/end", QoS::AtMostOnce, 0, b"end", false)
        .await;
    let (topic, _, _, retain) = summary(&everything.next_publish().await);
    assert_eq!((topic.as_str(), retain), ("x/end", false), "$w/a matched #");
}

// [MQTT-3.3.1-9]: an established subscription receives a retained publish
// with RETAIN 0; only a new subscription sees RETAIN 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_1_9_established_subscriber_gets_a_retained_publish_with_retain_0() {
    let broker = TestBroker::start().await;
    let mut early = subscriber(&broker, "early", "r/e", QoS::AtLeastOnce).await;
    let mut publisher = connected(&broker, "publisher").await;
    publisher
        .publish_acked("r/e", QoS::AtLeastOnce, 1, b"news", true)
        .await;
    let publish = early.next_publish().await;
    assert_eq!(publish.flags, 0b0010, "QoS 1, RETAIN 0");
    assert_eq!(
        summary(&publish),
        expected("r/e", b"news", QoS::AtLeastOnce, false)
    );

    let mut late = subscriber(&broker, "late", "r/e", QoS::AtLeastOnce).await;
    assert_eq!(
        summary(&late.next_publish().await),
        expected("r/e", b"news", QoS::AtLeastOnce, true)
    );
}
