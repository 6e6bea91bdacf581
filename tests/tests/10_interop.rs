//! Proves that real third-party clients work with the broker: Eclipse
//! mosquitto's `mosquitto_pub` and `mosquitto_sub` round-trip messages at
//! QoS 0, 1 and 2, over MQTT 3.1.1 and 3.1, and see retained messages.
//!
//! The binaries come from the Debian package `mosquitto-clients`; CI installs
//! it, so a missing binary fails the test rather than skipping it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tidemq_tests::mosquitto::{run_pub, start_sub, Process};
use tidemq_tests::TestBroker;

/// Attempts at publishing before the subscriber is known to be subscribed.
const PUBLISH_ATTEMPTS: usize = 50;
/// How long each attempt waits for the subscriber to exit with the message.
const ATTEMPT_WAIT: Duration = Duration::from_millis(100);

/// Publishes with `pub_args` until `sub` (started with `-C 1`) exits with
/// the message; nothing tells the test when `mosquitto_sub`'s SUBSCRIBE has
/// been handled, so early messages may go to nobody. Returns its stdout.
async fn publish_until_received(
    broker: &TestBroker,
    mut sub: Process,
    pub_args: &[&str],
) -> String {
    for _ in 0..PUBLISH_ATTEMPTS {
        run_pub(broker, pub_args).await;
        if let Some(exit) = sub.exit_within(ATTEMPT_WAIT).await {
            return exit.succeeded("mosquitto_sub");
        }
    }
    panic!("mosquitto_sub received nothing after {PUBLISH_ATTEMPTS} publishes");
}

async fn round_trip_at(qos: &str) {
    let broker = TestBroker::start().await;
    let topic = format!("interop/qos{qos}");
    let sub_id = format!("sub-qos{qos}");
    let sub = start_sub(
        &broker,
        &[
            "-i", &sub_id, "-t", &topic, "-q", qos, "-C", "1", "-F", "%q %t %p",
        ],
    );
    let pub_id = format!("pub-qos{qos}");
    let message = format!("hello at qos {qos}");
    let pub_args = ["-i", &pub_id, "-t", &topic, "-q", qos, "-m", &message];

    let stdout = publish_until_received(&broker, sub, &pub_args).await;

    assert_eq!(stdout, format!("{qos} {topic} {message}\n"));
    assert_eq!(broker.metrics().protocol_errors, 0);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_round_trip_at_qos0() {
    round_trip_at("0").await;
}

// [MQTT-4.3.2-2] the broker's PUBACK lets mosquitto_pub finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_round_trip_at_qos1() {
    round_trip_at("1").await;
}

// [MQTT-4.3.3-2] PUBREC / PUBREL / PUBCOMP in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_round_trip_at_qos2() {
    round_trip_at("2").await;
}

// [MQTT-3.3.1-6] a new subscription receives the retained message, with
// RETAIN set [MQTT-3.3.1-8].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_1_6_retained_message_from_mosquitto_pub_reaches_a_later_mosquitto_sub() {
    let broker = TestBroker::start().await;
    run_pub(
        &broker,
        &[
            "-i",
            "retainer",
            "-t",
            "interop/retained",
            "-q",
            "1",
            "-r",
            "-m",
            "kept for later",
        ],
    )
    .await;

    let sub = start_sub(
        &broker,
        &[
            "-i",
            "latecomer",
            "-t",
            "interop/retained",
            "-q",
            "1",
            "-C",
            "1",
            "-F",
            "%r %q %t %p",
        ],
    );
    let stdout = sub.succeeds().await;

    assert_eq!(stdout, "1 1 interop/retained kept for later\n");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_round_trip_over_mqtt_3_1() {
    let broker = TestBroker::start().await;
    let sub = start_sub(
        &broker,
        &[
            "-V",
            "mqttv31",
            "-i",
            "sub-v31",
            "-t",
            "interop/v31",
            "-q",
            "1",
            "-C",
            "1",
            "-v",
        ],
    );
    let pub_args = [
        "-V",
        "mqttv31",
        "-i",
        "pub-v31",
        "-t",
        "interop/v31",
        "-q",
        "1",
        "-m",
        "speaking MQIsdp",
    ];

    let stdout = publish_until_received(&broker, sub, &pub_args).await;

    // -v prints "topic payload".
    assert_eq!(stdout, "interop/v31 speaking MQIsdp\n");
    let metrics = broker.metrics();
    assert_eq!(
        (metrics.protocol_errors, metrics.connacks_refused),
        (0, 0),
        "{metrics:?}"
    );
    broker.stop().await;
}
