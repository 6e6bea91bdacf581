//! Proves the will message end to end: it is published, with its payload,
//! QoS and retain flag, on every end of a connection but DISCONNECT (a
//! dropped socket, a keepalive timeout, a protocol violation, a takeover by
//! the same client id), and never after DISCONNECT.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tidemq_protocol::QoS;
use tidemq_tests::{mqtt_options, Client, ConnectOptions, RawClient, TestBroker};

/// A connected raw client with a will on `topic`.
async fn with_will(
    broker: &TestBroker,
    client_id: &str,
    will: (&str, &[u8], u8, bool),
    keep_alive: u16,
) -> RawClient {
    let options = ConnectOptions {
        will: Some(will),
        keep_alive,
        ..ConnectOptions::new(client_id)
    };
    RawClient::connected(broker.addr, &options).await.0
}

/// A rumqttc client subscribed to `filter` at QoS 2.
async fn watcher(broker: &TestBroker, filter: &str) -> Client {
    let mut client = Client::connect(mqtt_options(broker, "watcher")).await;
    client.subscribe(filter, rumqttc::QoS::ExactlyOnce).await;
    client
}

fn assert_will(publish: &rumqttc::Publish, topic: &str, payload: &[u8], qos: rumqttc::QoS) {
    assert_eq!(publish.topic, topic);
    assert_eq!(publish.payload.as_ref(), payload);
    assert_eq!(publish.qos, qos);
    assert!(!publish.retain, "delivered to an established subscription");
}

// [MQTT-3.1.2-8]: the will is published when the connection closes without
// DISCONNECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_8_will_is_published_when_the_socket_closes_without_disconnect() {
    let broker = TestBroker::start().await;
    let mut watcher = watcher(&broker, "will/#").await;
    let client = with_will(&broker, "dropper", ("will/drop", b"gone", 1, false), 60).await;
    drop(client);

    let will = watcher.next_publish().await;
    assert_will(&will, "will/drop", b"gone", rumqttc::QoS::AtLeastOnce);
    assert_eq!(broker.metrics().wills_published, 1);
}

// The same, observed on the wire by a raw subscriber: the will goes out at
// its own QoS (2) and with the payload as given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_8_will_is_delivered_at_its_qos_to_a_raw_subscriber() {
    let broker = TestBroker::start().await;
    let (mut subscriber, _) =
        RawClient::connected(broker.addr, &ConnectOptions::new("raw-watcher")).await;
    subscriber
        .subscribe_granted(1, &[("will/+", QoS::ExactlyOnce)])
        .await;
    let payload = [0u8, 1, 2, 0xFF];
    let client = with_will(&broker, "dropper", ("will/raw", &payload, 2, false), 60).await;
    drop(client);

    let will = subscriber.next_publish().await;
    assert_eq!(will.flags, 0b0100, "QoS 2, RETAIN 0, DUP 0");
    let (topic, body, qos, packet_id) = will.publish();
    assert_eq!(
        (topic.as_str(), body.as_slice(), qos),
        ("will/raw", &payload[..], QoS::ExactlyOnce)
    );
    assert!(packet_id.is_some());
}

// [MQTT-3.1.2-10], [MQTT-3.14.4-3]: DISCONNECT discards the will.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_10_will_is_not_published_after_disconnect() {
    let broker = TestBroker::start().await;
    let mut watcher = watcher(&broker, "will/#").await;
    let mut client = with_will(&broker, "polite", ("will/polite", b"gone", 1, false), 60).await;
    client.send(&[0xE0, 0x00]).await;
    assert!(client.closed_by_broker().await);
    // The connection's task ends after any will is routed; a message sent
    // after that must be the first the watcher sees.
    broker
        .wait_metrics("only the watcher connected", |m| m.connections_current == 1)
        .await;
    let (mut publisher, _) =
        RawClient::connected(broker.addr, &ConnectOptions::new("publisher")).await;
    publisher
        .publish_acked("will/polite", QoS::AtLeastOnce, 1, b"sentinel", false)
        .await;

    let first = watcher.next_publish().await;
    assert_eq!(
        first.payload.as_ref(),
        b"sentinel",
        "the will was published"
    );
    assert_eq!(broker.metrics().wills_published, 0);
}

// [MQTT-3.1.2-24]: no packet within 1.5 x keepalive closes the connection;
// the will is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_24_will_is_published_on_keepalive_timeout() {
    let broker = TestBroker::start().await;
    let mut watcher = watcher(&broker, "will/#").await;
    let started = tokio::time::Instant::now();
    let mut client = with_will(
        &broker,
        "silent",
        ("will/silent", b"timed out", 1, false),
        1,
    )
    .await;

    let will = watcher.next_publish().await;
    assert_will(
        &will,
        "will/silent",
        b"timed out",
        rumqttc::QoS::AtLeastOnce,
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "closed after {:?}, before 1.5 x keepalive",
        started.elapsed()
    );
    assert!(client.closed_by_broker().await);
    let metrics = broker.metrics();
    assert_eq!(
        (metrics.keepalive_timeouts, metrics.wills_published),
        (1, 1)
    );
}

// Section 3.1.2.5: the will is published when the server closes the
// connection for a protocol error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_after_a_protocol_violation() {
    let broker = TestBroker::start().await;
    let mut watcher = watcher(&broker, "will/#").await;
    let mut client = with_will(&broker, "rude", ("will/rude", b"broken", 2, false), 60).await;
    // A reserved packet type with a remaining length longer than four bytes.
    client.send(&[0xF0, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]).await;
    client.assert_closed_without_reply().await;

    let will = watcher.next_publish().await;
    assert_will(&will, "will/rude", b"broken", rumqttc::QoS::ExactlyOnce);
    let metrics = broker.metrics();
    assert_eq!((metrics.protocol_errors, metrics.wills_published), (1, 1));
}

// [MQTT-3.1.4-2]: a new connection with the same client id closes the old
// one, which did not DISCONNECT, so its will is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_4_2_will_is_published_when_a_new_connection_takes_over() {
    let broker = TestBroker::start().await;
    let mut watcher = watcher(&broker, "will/#").await;
    let mut old = with_will(&broker, "twin", ("will/twin", b"replaced", 1, false), 60).await;
    let (mut new, _) = RawClient::connected(broker.addr, &ConnectOptions::new("twin")).await;
    assert!(
        old.closed_by_broker().await,
        "the old connection stays open"
    );

    let will = watcher.next_publish().await;
    assert_will(&will, "will/twin", b"replaced", rumqttc::QoS::AtLeastOnce);
    let metrics = broker.metrics();
    assert_eq!((metrics.takeovers, metrics.wills_published), (1, 1));
    new.ping().await;
}

// [MQTT-3.1.2-17]: a will with RETAIN 1 is published as a retained message,
// so a later subscriber receives it with RETAIN 1 [MQTT-3.3.1-8].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_17_retained_will_is_kept_for_a_later_subscriber() {
    let broker = TestBroker::start().await;
    let client = with_will(&broker, "status", ("will/status", b"offline", 1, true), 60).await;
    drop(client);
    // The connection's task ends after the will is routed.
    broker
        .wait_metrics("no connection left", |m| m.connections_current == 0)
        .await;
    assert_eq!(broker.metrics().wills_published, 1);

    let mut late = Client::connect(mqtt_options(&broker, "late")).await;
    late.subscribe("will/status", rumqttc::QoS::ExactlyOnce)
        .await;
    let will = late.next_publish().await;
    assert_eq!(will.topic, "will/status");
    assert_eq!(will.payload.as_ref(), b"offline");
    assert_eq!(will.qos, rumqttc::QoS::AtLeastOnce);
    assert!(
        will.retain,
        "a retained will reaches a new subscription with RETAIN 1"
    );
}

// `wills_published` counts one per will, across clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wills_published_counts_every_will() {
    let broker = TestBroker::start().await;
    let mut watcher = watcher(&broker, "will/#").await;
    for n in 0..3 {
        let client_id = format!("mortal-{n}");
        let topic = format!("will/{n}");
        let client = with_will(&broker, &client_id, (&topic, b"bye", 0, false), 60).await;
        drop(client);
        let will = watcher.next_publish().await;
        assert_will(&will, &topic, b"bye", rumqttc::QoS::AtMostOnce);
    }
    let (mut without_will, _) =
        RawClient::connected(broker.addr, &ConnectOptions::new("no-will")).await;
    without_will.ping().await;
    drop(without_will);
    broker
        .wait_metrics("only the watcher connected", |m| m.connections_current == 1)
        .await;
    assert_eq!(broker.metrics().wills_published, 3);
}
