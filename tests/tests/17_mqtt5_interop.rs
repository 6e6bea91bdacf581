//! Proves that Eclipse mosquitto's command-line clients speaking MQTT 5 work
//! with the broker: publish properties arrive unchanged and in order, a will
//! with a Will Delay Interval waits its delay after an abrupt close, a
//! session with a Session Expiry Interval keeps QoS 1 messages while its
//! client is away (and one without does not), and MQTT 3.1.1 and MQTT 5
//! clients exchange messages in both directions.
//!
//! The binaries come from the Debian package `mosquitto-clients`
//! (`scripts/test` installs it); a missing binary fails the test. Every wait
//! is for an exit, an output, a packet or a metric, bounded by [`WAIT`].
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tidemq_protocol::{ConnectProperties, Outgoing, QoS};
use tidemq_tests::mosquitto::{run_pub, start_sub};
use tidemq_tests::v5::{self, V5Client};
use tidemq_tests::{TestBroker, QUIET, WAIT};
use tokio::time::Instant;
/// The Will Delay Interval of the will test, in seconds.
const WILL_DELAY_SECS: u64 = 2;
/// The will must not arrive earlier than this after the kill (one second of
/// slack under the delay, for a loaded machine's clocks and schedulers).
const WILL_NOT_BEFORE: Duration = Duration::from_secs(WILL_DELAY_SECS - 1);

/// Waits until the broker holds `count` subscriptions, so a subscriber
/// started in the background is known to be in place.
async fn wait_subscriptions(broker: &TestBroker, count: u64) {
    broker
        .wait_metrics(&format!("{count} subscriptions"), |m| {
            m.subscriptions_current == count
        })
        .await;
}

/// The properties of the property tests, as `mosquitto_pub` arguments: the
/// key `order` twice, with another key between, so both order and duplicate
/// keys are seen.
const PUBLISH_PROPERTIES: &[&str] = &[
    "-D",
    "publish",
    "user-property",
    "order",
    "first",
    "-D",
    "publish",
    "user-property",
    "middle",
    "second",
    "-D",
    "publish",
    "user-property",
    "order",
    "third",
    "-D",
    "publish",
    "content-type",
    "text/plain; charset=utf-8",
    "-D",
    "publish",
    "response-topic",
    "interop/v5/reply",
];
const MORE_PUBLISH_PROPERTIES: &[&str] = &[
    "-D",
    "publish",
    "correlation-data",
    "request-42",
    "-D",
    "publish",
    "payload-format-indicator",
    "1",
];

fn publish_with_properties<'a>(id: &'a str, topic: &'a str) -> Vec<&'a str> {
    let mut args = vec![
        "-V",
        "mqttv5",
        "-i",
        id,
        "-t",
        topic,
        "-q",
        "1",
        "-m",
        "with properties",
    ];
    args.extend_from_slice(PUBLISH_PROPERTIES);
    args.extend_from_slice(MORE_PUBLISH_PROPERTIES);
    args
}

// Also [MQTT-3.3.2-18] (order), [MQTT-3.3.2-4] (payload format indicator),
// [MQTT-3.3.2-15] (response topic), [MQTT-3.3.2-16] (correlation data) and
// [MQTT-3.3.2-20] (content type), from mosquitto_pub to mosquitto_sub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_2_17_user_properties_forwarded_in_order() {
    let broker = TestBroker::start().await;
    let sub = start_sub(
        &broker,
        &[
            "-V",
            "mqttv5",
            "-i",
            "props-sub",
            "-t",
            "interop/v5/props",
            "-q",
            "1",
            "-C",
            "1",
            "-F",
            "%P|%C|%R|%D|%F|%p",
        ],
    );
    wait_subscriptions(&broker, 1).await;

    run_pub(
        &broker,
        &publish_with_properties("props-pub", "interop/v5/props"),
    )
    .await;
    let stdout = sub.succeeds().await;

    assert_eq!(
        stdout,
        "order:first middle:second order:third|text/plain; charset=utf-8|interop/v5/reply\
         |request-42|1|with properties\n"
    );
    assert_eq!(broker.metrics().protocol_errors, 0);
    broker.stop().await;
}

// The same PUBLISH as above, read by the strict decoder: every property
// arrives, user properties in the order sent [MQTT-3.3.2-17], [MQTT-3.3.2-4],
// [MQTT-3.3.2-15], [MQTT-3.3.2-16], [MQTT-3.3.2-20].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_3_2_18_user_property_order_kept_for_a_v5_client() {
    let broker = TestBroker::start().await;
    let mut sub = V5Client::plain(broker.addr, "props-v5-sub").await;
    sub.subscribe_qos("interop/v5/props", QoS::AtLeastOnce)
        .await;

    run_pub(
        &broker,
        &publish_with_properties("props-pub", "interop/v5/props"),
    )
    .await;
    let publish = sub.next_publish().await;

    assert_eq!(publish.payload.as_ref(), b"with properties");
    assert_eq!(publish.qos, QoS::AtLeastOnce);
    let properties = publish.properties.expect("properties forwarded");
    let pairs: Vec<(&str, &str)> = properties
        .user_properties
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [("order", "first"), ("middle", "second"), ("order", "third")]
    );
    assert_eq!(
        properties.content_type.as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        properties.response_topic.as_ref().map(|t| t.as_str()),
        Some("interop/v5/reply")
    );
    assert_eq!(
        properties.correlation_data.as_deref(),
        Some(&b"request-42"[..])
    );
    assert_eq!(properties.payload_format_indicator, Some(1));
    broker.stop().await;
}

// [MQTT-3.1.3-9] the will waits for its delay; it is then published
// [MQTT-3.1.2-8] because the session (60 s) outlives the delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_8_will_is_published_after_the_will_delay_interval() {
    let broker = TestBroker::start().await;
    let mut watcher = V5Client::plain(broker.addr, "will-watcher").await;
    watcher
        .subscribe_qos("interop/v5/will", QoS::AtLeastOnce)
        .await;
    let delay = WILL_DELAY_SECS.to_string();
    let doomed = start_sub(
        &broker,
        &[
            "-V",
            "mqttv5",
            "-i",
            "will-owner",
            "-t",
            "interop/v5/idle",
            "-q",
            "1",
            "--will-topic",
            "interop/v5/will",
            "--will-payload",
            "owner vanished",
            "--will-qos",
            "1",
            "-D",
            "will",
            "will-delay-interval",
            &delay,
            "-D",
            "connect",
            "session-expiry-interval",
            "60",
        ],
    );
    wait_subscriptions(&broker, 2).await;

    doomed.kill();
    let killed_at = Instant::now();
    broker
        .wait_metrics("the will to be delayed", |m| m.wills_delayed == 1)
        .await;
    let will = match watcher
        .recv_within(WAIT + Duration::from_secs(WILL_DELAY_SECS))
        .await
    {
        Some(Outgoing::Publish(publish)) => publish,
        other => panic!("expected the will, got {other:?}"),
    };
    let elapsed = killed_at.elapsed();

    assert_eq!(will.topic.as_str(), "interop/v5/will");
    assert_eq!(will.payload.as_ref(), b"owner vanished");
    assert!(
        elapsed >= WILL_NOT_BEFORE,
        "the will came {elapsed:?} after the kill, before its {WILL_DELAY_SECS} s delay"
    );
    assert_eq!(broker.metrics().wills_published, 1);
    broker.stop().await;
}

/// Subscribes `client_id` at QoS 1 with `-c` and the Session Expiry Interval
/// `expiry`, then lets `mosquitto_sub -E` disconnect normally. With `-c`,
/// mosquitto sets the interval itself, so `-x` (not `-D connect
/// session-expiry-interval`, which would send the property twice) sets it.
async fn subscribe_and_leave(broker: &TestBroker, client_id: &str, topic: &str, expiry: &str) {
    start_sub(
        broker,
        &[
            "-V", "mqttv5", "-c", "-i", client_id, "-t", topic, "-q", "1", "-x", expiry, "-E",
        ],
    )
    .succeeds()
    .await;
}

/// Publishes two QoS 1 messages on `topic` with `mosquitto_pub`.
async fn publish_two(broker: &TestBroker, topic: &str) {
    for message in ["while away 1", "while away 2"] {
        run_pub(
            broker,
            &[
                "-V", "mqttv5", "-i", "away-pub", "-t", topic, "-q", "1", "-m", message,
            ],
        )
        .await;
    }
}

// [MQTT-3.1.2-23] a session with a Session Expiry Interval outlives its
// connection; resumed with Clean Start 0 [MQTT-3.1.2-5], it delivers the
// QoS 1 messages published meanwhile [MQTT-4.5.0-1].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_23_session_with_expiry_keeps_messages_while_away() {
    let broker = TestBroker::start().await;
    subscribe_and_leave(&broker, "away-60", "interop/v5/away", "60").await;
    broker
        .wait_metrics("one offline session", |m| m.sessions_offline_current == 1)
        .await;

    publish_two(&broker, "interop/v5/away").await;
    let back = start_sub(
        &broker,
        &[
            "-V",
            "mqttv5",
            "-c",
            "-i",
            "away-60",
            "-t",
            "interop/v5/away",
            "-q",
            "1",
            "-x",
            "60",
            "-C",
            "2",
            "-F",
            "%q %t %p",
        ],
    );
    let stdout = back.succeeds().await;

    assert_eq!(
        stdout,
        "1 interop/v5/away while away 1\n1 interop/v5/away while away 2\n"
    );
    broker.stop().await;
}

// [MQTT-4.1.0-2] with a Session Expiry Interval of 0 the session ends with
// its connection: the client comes back to Session Present 0
// [MQTT-3.2.2-3] and nothing published meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_1_0_2_session_without_expiry_ends_with_its_connection() {
    let broker = TestBroker::start().await;
    subscribe_and_leave(&broker, "away-0", "interop/v5/gone", "0").await;
    broker
        .wait_metrics("no session left", |m| {
            m.sessions_current == 0 && m.subscriptions_current == 0
        })
        .await;

    publish_two(&broker, "interop/v5/gone").await;
    let mut connect = v5::connect("away-0");
    connect.clean_session = false;
    connect.properties = ConnectProperties {
        session_expiry_interval: Some(60),
        ..ConnectProperties::default()
    };
    let (mut back, connack) = V5Client::connected(broker.addr, &connect).await;

    assert!(!connack.session_present, "{connack:?}");
    back.assert_silent(QUIET).await;
    broker.stop().await;
}

/// A QoS 1 message from a `pub_version` publisher reaches a `sub_version`
/// subscriber, both mosquitto clients.
async fn across_versions(pub_version: &str, sub_version: &str) {
    let broker = TestBroker::start().await;
    let topic = format!("interop/mixed/{pub_version}-to-{sub_version}");
    let message = format!("from {pub_version} to {sub_version}");
    let sub = start_sub(
        &broker,
        &[
            "-V",
            sub_version,
            "-i",
            "mixed-sub",
            "-t",
            &topic,
            "-q",
            "1",
            "-C",
            "1",
            "-F",
            "%q %t %p",
        ],
    );
    wait_subscriptions(&broker, 1).await;

    let mut pub_args = vec![
        "-V",
        pub_version,
        "-i",
        "mixed-pub",
        "-t",
        &topic,
        "-q",
        "1",
        "-m",
        &message,
    ];
    if pub_version == "mqttv5" {
        pub_args.extend(["-D", "publish", "user-property", "only", "v5"]);
    }
    run_pub(&broker, &pub_args).await;
    let stdout = sub.succeeds().await;

    let metrics = broker.metrics();
    assert_eq!(
        (metrics.protocol_errors, metrics.connacks_refused),
        (0, 0),
        "{metrics:?}"
    );
    broker.stop().await;
    assert_eq!(stdout, format!("1 {topic} {message}\n"));
}

// [MQTT-4.5.0-1] a subscription matches whatever the protocol version of
// its client and of the publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_5_0_1_mqttv311_publisher_reaches_mqttv5_subscriber() {
    across_versions("mqttv311", "mqttv5").await;
}

// The v5 publisher's user property cannot travel to a 3.1.1 subscriber; the
// message still does, without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_5_0_1_mqttv5_publisher_reaches_mqttv311_subscriber() {
    across_versions("mqttv5", "mqttv311").await;
}
