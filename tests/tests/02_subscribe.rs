//! Proves subscriptions end to end: the SUBACK each SUBSCRIBE gets, which
//! topics each filter receives (wildcards and the `$` rule), one copy per
//! client at the highest QoS, UNSUBSCRIBE, and the malformed SUBSCRIBEs
//! that close the connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tidemq_protocol::{Packet, QoS, TopicFilter, Unsubscribe};
use tidemq_tests::{
    id, packet_bytes, publish_bytes, raw_packet_bytes, string_field, subscribe_bytes,
    ConnectOptions, RawClient, TestBroker,
};

/// A topic that the routing tests publish last; every subscriber also
/// subscribes to it, so its arrival proves nothing else is on the way.
const SENTINEL: &str = "zz/end";

async fn connected(broker: &TestBroker, client_id: &str) -> RawClient {
    RawClient::connected(broker.addr, &ConnectOptions::new(client_id))
        .await
        .0
}

fn unsubscribe_bytes(packet_id: u16, filters: &[&str]) -> Vec<u8> {
    packet_bytes(&Packet::Unsubscribe(Unsubscribe::new(
        id(packet_id),
        filters
            .iter()
            .map(|f| TopicFilter::new(f).unwrap())
            .collect(),
    )))
}

/// Reads PUBLISHes up to and including the sentinel; returns the topics
/// before it, checking that each payload is its topic.
async fn topics_until_sentinel(client: &mut RawClient) -> Vec<String> {
    let mut topics = Vec::new();
    loop {
        let (topic, payload, _, _) = client.next_publish().await.publish();
        if topic == SENTINEL {
            return topics;
        }
        assert_eq!(payload, topic.as_bytes(), "payload of {topic}");
        topics.push(topic);
    }
}

/// Subscribes one client per filter (plus the sentinel), publishes every
/// topic at QoS 0 with the topic as payload from one publisher, then the
/// sentinel, and asserts each filter received exactly its expected topics,
/// in publishing order.
async fn assert_routing(topics: &[&str], expectations: &[(&str, &[&str])]) {
    let broker = TestBroker::start().await;
    let mut subscribers = Vec::new();
    for (n, (filter, _)) in expectations.iter().enumerate() {
        let mut subscriber = connected(&broker, &format!("sub-{n}")).await;
        let filters = [(*filter, QoS::AtMostOnce), (SENTINEL, QoS::AtMostOnce)];
        subscriber.subscribe_granted(1, &filters).await;
        subscribers.push(subscriber);
    }
    let mut publisher = connected(&broker, "publisher").await;
    for topic in topics.iter().chain([&SENTINEL]) {
        let publish = publish_bytes(topic, QoS::AtMostOnce, 0, topic.as_bytes(), false);
        publisher.send(&publish).await;
    }
    for ((filter, expected), subscriber) in expectations.iter().zip(&mut subscribers) {
        let received = topics_until_sentinel(subscriber).await;
        assert_eq!(received, *expected, "topics received through {filter:?}");
    }
}

// [MQTT-3.8.4-1], [MQTT-3.8.4-2], [MQTT-3.8.4-5]: SUBACK carries the
// SUBSCRIBE's packet id and one return code per filter, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_8_4_5_suback_grants_one_qos_per_filter_in_order() {
    let broker = TestBroker::start().await;
    let mut client = connected(&broker, "suback").await;
    let filters = [
        ("s/zero", QoS::AtMostOnce),
        ("s/one", QoS::AtLeastOnce),
        ("s/two", QoS::ExactlyOnce),
    ];
    client.send(&subscribe_bytes(0x1234, &filters)).await;
    let suback = client.recv().await.expect("SUBACK");
    assert_eq!(
        suback.wire_bytes(),
        [0x90, 0x05, 0x12, 0x34, 0x00, 0x01, 0x02]
    );

    let descending = [
        ("d/two", QoS::ExactlyOnce),
        ("d/zero", QoS::AtMostOnce),
        ("d/one", QoS::AtLeastOnce),
    ];
    client.send(&subscribe_bytes(1, &descending)).await;
    let suback = client.recv().await.expect("SUBACK");
    assert_eq!(
        suback.wire_bytes(),
        [0x90, 0x05, 0x00, 0x01, 0x02, 0x00, 0x01]
    );
}

// Section 4.7.1: `+` matches one whole level, `#` any number of levels
// including the parent, and a leading `/` makes an empty first level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_7_1_wildcard_filters_receive_exactly_their_topics() {
    let topics = [
        "a", "a/b", "a/b/c", "a/x/c", "a/b/c/d", "a/b/x", "x/b", "b", "/x",
    ];
    assert_routing(
        &topics,
        &[
            ("a/b/c", &["a/b/c"]),
            ("a/+/c", &["a/b/c", "a/x/c"]),
            ("a/#", &["a", "a/b", "a/b/c", "a/x/c", "a/b/c/d", "a/b/x"]),
            ("+/b", &["a/b", "x/b"]),
            ("+", &["a", "b"]),
            ("+/+", &["a/b", "x/b", "/x"]),
            ("+/+/+", &["a/b/c", "a/x/c", "a/b/x"]),
            ("a/b/+/#", &["a/b/c", "a/b/c/d", "a/b/x"]),
            ("/+", &["/x"]),
            ("#", &topics),
            ("nothing/+", &[]),
        ],
    )
    .await;
}

// [MQTT-4.7.2-1]: filters starting with a wildcard do not match topic names
// starting with `$`; a filter naming the `$` level does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_7_2_1_dollar_topics_are_not_matched_by_leading_wildcards() {
    assert_routing(
        &["$foo/bar", "foo/bar"],
        &[
            ("#", &["foo/bar"]),
            ("+/bar", &["foo/bar"]),
            ("+/#", &["foo/bar"]),
            ("$foo/#", &["$foo/bar"]),
            ("$foo/+", &["$foo/bar"]),
            ("$foo/bar", &["$foo/bar"]),
        ],
    )
    .await;
}

// [MQTT-3.3.5-1]: a client with overlapping subscriptions receives one copy
// at the highest QoS of its matching subscriptions (capped by the message's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_5_1_overlapping_subscriptions_deliver_one_copy_at_the_highest_qos() {
    let broker = TestBroker::start().await;
    let mut subscriber = connected(&broker, "overlap").await;
    let filters = [
        ("o/#", QoS::AtMostOnce),
        ("o/+", QoS::ExactlyOnce),
        ("o/b", QoS::AtLeastOnce),
    ];
    subscriber.subscribe_granted(1, &filters).await;
    let mut publisher = connected(&broker, "publisher").await;
    publisher
        .publish_acked("o/b", QoS::ExactlyOnce, 1, b"b", false)
        .await;
    publisher
        .publish_acked("o/c", QoS::AtLeastOnce, 2, b"c", false)
        .await;
    publisher
        .publish_acked("o/c/d", QoS::ExactlyOnce, 3, b"d", false)
        .await;
    publisher
        .publish_acked("o/end", QoS::AtMostOnce, 0, b"end", false)
        .await;

    let mut received = Vec::new();
    for _ in 0..4 {
        let (topic, payload, qos, _) = subscriber.next_publish().await.publish();
        received.push((topic, payload, qos));
    }
    let expected = [
        ("o/b", &b"b"[..], QoS::ExactlyOnce),
        ("o/c", b"c", QoS::AtLeastOnce),
        ("o/c/d", b"d", QoS::AtMostOnce),
        ("o/end", b"end", QoS::AtMostOnce),
    ]
    .map(|(t, p, q)| (t.to_string(), p.to_vec(), q));
    assert_eq!(received, expected);
}

// [MQTT-3.8.4-3]: subscribing again to the same filter replaces the
// subscription (new QoS), it does not add a second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_8_4_3_resubscribing_replaces_the_subscription() {
    let broker = TestBroker::start().await;
    let mut subscriber = connected(&broker, "resub").await;
    subscriber
        .subscribe_granted(1, &[("r/t", QoS::ExactlyOnce)])
        .await;
    subscriber
        .subscribe_granted(2, &[("r/t", QoS::AtMostOnce)])
        .await;
    let mut publisher = connected(&broker, "publisher").await;
    publisher
        .publish_acked("r/t", QoS::ExactlyOnce, 1, b"once", false)
        .await;
    publisher
        .publish_acked("r/t", QoS::AtMostOnce, 0, b"end", false)
        .await;
    let first = subscriber.next_publish().await.publish();
    assert_eq!(
        (first.1.as_slice(), first.2),
        (&b"once"[..], QoS::AtMostOnce)
    );
    let second = subscriber.next_publish().await.publish();
    assert_eq!(second.1, b"end", "one copy only");
}

// [MQTT-3.10.4-2], [MQTT-3.10.4-4], [MQTT-3.10.4-5]: after UNSUBSCRIBE no
// new messages are delivered through that filter, and UNSUBACK echoes the
// packet id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_10_4_2_unsubscribe_stops_delivery_and_gets_unsuback() {
    let broker = TestBroker::start().await;
    let mut subscriber = connected(&broker, "unsub").await;
    let filters = [("u/a", QoS::AtLeastOnce), ("u/b", QoS::AtMostOnce)];
    subscriber.subscribe_granted(1, &filters).await;
    let mut publisher = connected(&broker, "publisher").await;
    publisher
        .publish_acked("u/a", QoS::AtMostOnce, 0, b"before", false)
        .await;
    let (topic, payload, _, _) = subscriber.next_publish().await.publish();
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("u/a", &b"before"[..])
    );

    subscriber.send(&unsubscribe_bytes(0x0203, &["u/a"])).await;
    let unsuback = subscriber.recv().await.expect("UNSUBACK");
    assert_eq!(unsuback.wire_bytes(), [0xB0, 0x02, 0x02, 0x03]);

    publisher
        .publish_acked("u/a", QoS::AtLeastOnce, 1, b"after", false)
        .await;
    publisher
        .publish_acked("u/b", QoS::AtMostOnce, 0, b"still", false)
        .await;
    let (topic, payload, _, _) = subscriber.next_publish().await.publish();
    assert_eq!((topic.as_str(), payload.as_slice()), ("u/b", &b"still"[..]));
}

// [MQTT-3.10.4-4]: UNSUBACK is sent even when no filter matched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_10_4_4_unsubscribe_of_a_filter_never_subscribed_gets_unsuback() {
    let broker = TestBroker::start().await;
    let mut client = connected(&broker, "unsub-unknown").await;
    client
        .send(&unsubscribe_bytes(7, &["never/subscribed", "+/#"]))
        .await;
    let unsuback = client.recv().await.expect("UNSUBACK");
    assert_eq!(unsuback.wire_bytes(), [0xB0, 0x02, 0x00, 0x07]);
    client.ping().await;
}

// [MQTT-4.7.1-2]: `#` must be the last level; a SUBSCRIBE with `a/#/b` is
// malformed and closes the connection without a SUBACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_7_1_2_subscribe_with_invalid_filter_closes() {
    let broker = TestBroker::start().await;
    let mut client = connected(&broker, "bad-filter").await;
    let mut body = vec![0x00, 0x01];
    body.extend(string_field("a/#/b"));
    body.push(0x00);
    client.send(&raw_packet_bytes(0x82, &body)).await;
    client.assert_closed_without_reply().await;
    broker
        .wait_metrics("protocol_errors = 1", |m| m.protocol_errors == 1)
        .await;
}

// [MQTT-4.7.1-3]: `+` must occupy a whole level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_7_1_3_subscribe_with_partial_level_plus_closes() {
    let broker = TestBroker::start().await;
    let mut client = connected(&broker, "bad-plus").await;
    let mut body = vec![0x00, 0x01];
    body.extend(string_field("a/b+"));
    body.push(0x01);
    client.send(&raw_packet_bytes(0x82, &body)).await;
    client.assert_closed_without_reply().await;
}

// [MQTT-3.8.1-1]: SUBSCRIBE's fixed header flags must be 0010; 0x80 closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_8_1_1_subscribe_with_reserved_flags_0000_closes() {
    let broker = TestBroker::start().await;
    let mut client = connected(&broker, "bad-flags").await;
    let mut subscribe = subscribe_bytes(1, &[("a/b", QoS::AtMostOnce)]);
    assert_eq!(subscribe[0], 0x82);
    subscribe[0] = 0x80;
    client.send(&subscribe).await;
    client.assert_closed_without_reply().await;
    broker
        .wait_metrics("protocol_errors = 1", |m| m.protocol_errors == 1)
        .await;
}

// [MQTT-3.8.3-4]: a requested QoS of 3 is malformed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_8_3_4_subscribe_with_requested_qos_3_closes() {
    let broker = TestBroker::start().await;
    let mut client = connected(&broker, "qos3-sub").await;
    let mut body = vec![0x00, 0x01];
    body.extend(string_field("a/b"));
    body.push(0x03);
    client.send(&raw_packet_bytes(0x82, &body)).await;
    client.assert_closed_without_reply().await;
}
