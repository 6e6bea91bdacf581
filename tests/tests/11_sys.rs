//! The broker's counters are published as retained `$SYS/broker/<counter>`
//! messages, visible to `$SYS/#` subscribers and hidden from `#`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tidemq_protocol::QoS;
use tidemq_tests::{settings, ConnectOptions, RawClient, TestBroker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_are_published_under_sys_broker() {
    let mut config = settings();
    config.sys.interval_secs = 1;
    let broker = TestBroker::start_with(config).await;
    let (mut watcher, _) = RawClient::connected(broker.addr, &ConnectOptions::new("watcher")).await;
    watcher
        .subscribe_granted(1, &[("$SYS/broker/connections_accepted", QoS::AtMostOnce)])
        .await;
    // The first publication may predate the watcher (then it comes retained);
    // either way the value counts the watcher's own connection.
    let publish = watcher.next_publish().await;
    let (topic, payload, _, _) = publish.publish();
    assert_eq!(topic, "$SYS/broker/connections_accepted");
    let accepted: u64 = String::from_utf8(payload).unwrap().parse().unwrap();
    assert!(accepted <= 1, "one connection so far, got {accepted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_7_2_1_hash_does_not_receive_sys_topics() {
    let mut config = settings();
    config.sys.interval_secs = 1;
    let broker = TestBroker::start_with(config).await;
    let (mut everything, _) = RawClient::connected(broker.addr, &ConnectOptions::new("all")).await;
    everything
        .subscribe_granted(1, &[("#", QoS::AtMostOnce)])
        .await;
    let (mut sys, _) = RawClient::connected(broker.addr, &ConnectOptions::new("sys")).await;
    sys.subscribe_granted(1, &[("$SYS/#", QoS::AtMostOnce)])
        .await;
    // Wait for one publication round to reach the $SYS subscriber.
    sys.next_publish().await;
    assert!(
        everything.recv_within(tidemq_tests::QUIET).await.is_none(),
        "'#' must not match $SYS topics"
    );
}
