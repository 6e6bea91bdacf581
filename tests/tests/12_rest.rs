//! Resting connections (`limits.rest_after_ms`; 20 ms in these tests): a
//! connection with nothing to do gives up its tasks and waits in the
//! dormitory. Every way back is proven on the wire: a packet, mail, a
//! partial packet completed later, the keepalive deadline, a takeover and
//! shutdown. The other test files cross rests too, since every test broker
//! rests its connections after 20 ms.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tidemq_protocol::QoS;
use tidemq_tests::{
    connect_bytes, publish_bytes, settings, ConnectOptions, RawClient, TestBroker, QUIET,
};

#[tokio::test]
async fn an_idle_client_rests_and_a_ping_wakes_it() {
    let broker = TestBroker::start().await;
    let (mut client, _) = RawClient::connected(broker.addr, &ConnectOptions::new("idle")).await;
    broker.wait_resting(1).await;
    client.ping().await;
    // It rests again once the ping is answered.
    broker.wait_resting(1).await;
    client.ping().await;
    assert!(
        broker.metrics().connections_rested >= 2,
        "{:?}",
        broker.metrics()
    );
}

#[tokio::test]
async fn mail_wakes_a_resting_subscriber() {
    let broker = TestBroker::start().await;
    let (mut subscriber, _) = RawClient::connected(broker.addr, &ConnectOptions::new("sub")).await;
    subscriber
        .subscribe_granted(1, &[("rest/#", QoS::AtLeastOnce)])
        .await;
    broker.wait_resting(1).await;
    let (mut publisher, _) = RawClient::connected(broker.addr, &ConnectOptions::new("pub")).await;
    publisher
        .publish_acked("rest/a", QoS::AtLeastOnce, 7, b"wake up", false)
        .await;
    let (topic, payload, qos, id) = subscriber.next_publish().await.publish();
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("rest/a", &b"wake up"[..])
    );
    assert_eq!(qos, QoS::AtLeastOnce);
    // [MQTT-4.3.2-2] the PUBACK completes the delivery: nothing is resent.
    let [hi, lo] = id.unwrap().to_be_bytes();
    subscriber.send(&[0x40, 0x02, hi, lo]).await;
    assert!(subscriber.recv_within(QUIET).await.is_none());
}

#[tokio::test]
async fn a_packet_split_across_a_rest_is_read_whole() {
    let broker = TestBroker::start().await;
    let (mut subscriber, _) = RawClient::connected(broker.addr, &ConnectOptions::new("sub")).await;
    subscriber
        .subscribe_granted(1, &[("split", QoS::AtMostOnce)])
        .await;
    let (mut publisher, _) = RawClient::connected(broker.addr, &ConnectOptions::new("pub")).await;
    let wire = publish_bytes("split", QoS::AtMostOnce, 0, b"two halves", false);
    let (first, second) = wire.split_at(5);
    publisher.send(first).await;
    broker.wait_resting(2).await;
    publisher.send(second).await;
    let (topic, payload, _, _) = subscriber.next_publish().await.publish();
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("split", &b"two halves"[..])
    );
}

#[tokio::test]
async fn mqtt_3_1_2_24_keepalive_expires_while_resting() {
    let broker = TestBroker::start().await;
    let (mut watcher, _) = RawClient::connected(broker.addr, &ConnectOptions::new("w")).await;
    watcher
        .subscribe_granted(1, &[("will/#", QoS::AtMostOnce)])
        .await;
    let options = ConnectOptions {
        keep_alive: 1,
        will: Some(("will/silent", b"gone", 0, false)),
        ..ConnectOptions::new("silent")
    };
    let started = Instant::now();
    let (mut silent, _) = RawClient::connected(broker.addr, &options).await;
    assert!(
        silent.closed_by_broker().await,
        "closed after 1.5 x keepalive"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "not before 1.5 s"
    );
    let (topic, payload, _, _) = watcher.next_publish().await.publish();
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("will/silent", &b"gone"[..])
    );
    assert_eq!(broker.metrics().keepalive_timeouts, 1);
}

#[tokio::test]
async fn mqtt_3_1_4_2_a_resting_connection_is_taken_over() {
    let broker = TestBroker::start().await;
    let (mut first, _) = RawClient::connected(broker.addr, &ConnectOptions::new("same")).await;
    broker.wait_resting(1).await;
    let (mut second, _) = RawClient::connected(broker.addr, &ConnectOptions::new("same")).await;
    assert!(
        first.closed_by_broker().await,
        "the old connection is closed"
    );
    second.ping().await;
    assert_eq!(broker.metrics().takeovers, 1);
}

#[tokio::test]
async fn shutdown_closes_resting_connections() {
    let broker = TestBroker::start().await;
    let (mut client, _) = RawClient::connected(broker.addr, &ConnectOptions::new("c")).await;
    broker.wait_resting(1).await;
    let stopped = tokio::spawn(broker.stop());
    assert!(client.closed_by_broker().await);
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .expect("shutdown waits for resting connections and ends")
        .unwrap();
}

#[tokio::test]
async fn rest_after_zero_keeps_connections_awake() {
    let mut settings = settings();
    settings.limits.rest_after_ms = 0;
    let broker = TestBroker::start_with(settings).await;
    let mut client = RawClient::connect(broker.addr).await;
    client
        .send(&connect_bytes(&ConnectOptions::new("awake")))
        .await;
    assert_eq!(client.recv().await.unwrap().packet_type, 2);
    tokio::time::sleep(QUIET).await;
    client.ping().await;
    assert_eq!(broker.metrics().connections_rested, 0);
}
