//! Proves the broker's MQTT 5 behaviour on the wire, each test named after
//! the normative statement it checks: what CONNACK announces, reason codes
//! on every acknowledgement, the server's DISCONNECT with its reason before
//! the socket closes, session and message expiry, will delay, flow control,
//! topic aliases both ways, subscription options and identifiers, shared
//! subscriptions, forwarded properties, and MQTT 5 and 3.1.1 clients side by
//! side on the same topics and sessions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use tidemq_protocol::{
    Ack, Auth, Disconnect, DisconnectProperties, Outgoing, Packet, PacketId, PublishProperties,
    QoS, ReasonCode, RetainHandling, Subscribe, SubscriptionOptions, TopicFilter,
};
use tidemq_tests::v5::{connect, publish, subscribe, will, V5Client};
use tidemq_tests::{
    publish_bytes, raw_packet_bytes, settings, subscribe_bytes, ConnectOptions, RawClient,
    TestBroker, WAIT,
};

const QUIET: Duration = Duration::from_millis(300);

fn options(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions::qos(qos)
}

fn persistent(client_id: &str, expiry: u32) -> tidemq_protocol::Connect {
    let mut connect = connect(client_id);
    connect.clean_session = false;
    connect.properties.session_expiry_interval = Some(expiry);
    connect
}

fn payload(publish: &tidemq_protocol::Publish) -> &[u8] {
    &publish.payload
}

// ---------------------------------------------------------------- CONNACK

#[tokio::test]
async fn mqtt_3_2_2_connack_announces_what_the_server_supports() {
    let mut s = settings();
    s.limits.receive_maximum = 77;
    s.limits.topic_alias_maximum = 9;
    s.limits.max_packet_size = 4096;
    let broker = TestBroker::start_with(s).await;
    let (_client, connack) = V5Client::connected(broker.addr, &connect("caps")).await;
    let p = &connack.properties;
    assert_eq!(p.receive_maximum, Some(77));
    assert_eq!(p.topic_alias_maximum, Some(9));
    assert_eq!(p.maximum_packet_size, Some(4096));
    assert_eq!(p.retain_available, Some(1));
    assert_eq!(p.wildcard_subscription_available, Some(1));
    assert_eq!(p.subscription_identifiers_available, Some(1));
    assert_eq!(p.shared_subscription_available, Some(1));
    // QoS 2 is supported, so Maximum QoS is absent [MQTT-3.2.2-9].
    assert_eq!(p.maximum_qos, None);
    assert_eq!(
        p.assigned_client_identifier, None,
        "the client named itself"
    );
}

#[tokio::test]
async fn mqtt_3_2_2_16_an_empty_client_id_gets_an_assigned_client_identifier() {
    let broker = TestBroker::start().await;
    // Clean Start 0 as well: MQTT 5 assigns an id whatever Clean Start says.
    let (_client, connack) = V5Client::connected(broker.addr, &persistent("", 60)).await;
    // [MQTT-3.1.3-7]
    let assigned = connack.properties.assigned_client_identifier.unwrap();
    assert!(assigned.starts_with("tidemq-"), "{assigned}");
}

#[tokio::test]
async fn mqtt_3_1_2_21_server_keep_alive_lowers_a_keepalive_above_the_maximum() {
    let mut s = settings();
    s.limits.max_keepalive_secs = 10;
    let broker = TestBroker::start_with(s).await;
    let mut asking = connect("slow-pinger");
    asking.keep_alive = 600;
    let (_client, connack) = V5Client::connected(broker.addr, &asking).await;
    assert_eq!(connack.properties.server_keep_alive, Some(10));
    let mut modest = connect("modest");
    modest.keep_alive = 5;
    let (_client, connack) = V5Client::connected(broker.addr, &modest).await;
    assert_eq!(connack.properties.server_keep_alive, None);
}

#[tokio::test]
async fn mqtt_3_1_2_28_response_information_only_when_requested() {
    let broker = TestBroker::start().await;
    let mut asking = connect("requester");
    asking.properties.request_response_information = Some(1);
    let (_c, connack) = V5Client::connected(broker.addr, &asking).await;
    assert_eq!(
        connack.properties.response_information.as_deref(),
        Some("response/requester")
    );
    let (_c, connack) = V5Client::connected(broker.addr, &connect("quiet")).await;
    assert_eq!(connack.properties.response_information, None);
}

#[tokio::test]
async fn mqtt_4_12_0_1_an_unknown_authentication_method_gets_connack_0x8c() {
    let broker = TestBroker::start().await;
    let mut scram = connect("scram");
    scram.properties.authentication_method = Some("SCRAM-SHA-256".into());
    scram.properties.authentication_data = Some(Bytes::from_static(b"n,,n=user,r=abc"));
    let (mut client, connack) = V5Client::connect(broker.addr, &scram).await;
    assert_eq!(connack.reason, ReasonCode::BAD_AUTHENTICATION_METHOD);
    assert!(!connack.session_present);
    assert!(client.recv().await.is_none(), "closed after the refusal");
}

#[tokio::test]
async fn mqtt_4_12_0_auth_on_a_connection_without_a_method_is_a_protocol_error() {
    let broker = TestBroker::start().await;
    let mut client = V5Client::plain(broker.addr, "no-method").await;
    client.send(&Packet::Auth(Auth::default())).await;
    let disconnect = client.expect_disconnect().await;
    assert_eq!(disconnect.reason, ReasonCode::PROTOCOL_ERROR);
}

// ------------------------------------------------- server DISCONNECT reasons

#[tokio::test]
async fn mqtt_4_13_1_1_a_malformed_packet_gets_disconnect_0x81_before_the_close() {
    let broker = TestBroker::start().await;
    let mut client = V5Client::plain(broker.addr, "malformed").await;
    // A PUBLISH whose property length runs past the packet.
    client
        .send_raw(&raw_packet_bytes(0x30, &[0, 1, b't', 9, 1]))
        .await;
    let disconnect = client.expect_disconnect().await;
    assert_eq!(disconnect.reason, ReasonCode::MALFORMED_PACKET);
    assert!(disconnect.properties.reason_string.is_some());
    broker
        .wait_metrics("protocol_errors", |m| m.protocol_errors == 1)
        .await;
}

#[tokio::test]
async fn mqtt_3_3_4_6_a_subscription_identifier_from_a_client_gets_disconnect_0x82() {
    let broker = TestBroker::start().await;
    let mut client = V5Client::plain(broker.addr, "sub-id-publisher").await;
    let properties = PublishProperties {
        subscription_identifiers: vec![5],
        ..PublishProperties::default()
    };
    client
        .send(&publish("t", QoS::AtMostOnce, 0, b"x", Some(properties)))
        .await;
    let disconnect = client.expect_disconnect().await;
    assert_eq!(disconnect.reason, ReasonCode::PROTOCOL_ERROR);
}

#[tokio::test]
async fn mqtt_3_2_2_15_a_packet_over_maximum_packet_size_gets_disconnect_0x95() {
    let mut s = settings();
    s.limits.max_packet_size = 256;
    let broker = TestBroker::start_with(s).await;
    let mut client = V5Client::plain(broker.addr, "big").await;
    client
        .send(&publish("t", QoS::AtMostOnce, 0, &[7; 300], None))
        .await;
    let disconnect = client.expect_disconnect().await;
    assert_eq!(disconnect.reason, ReasonCode::PACKET_TOO_LARGE);
    broker
        .wait_metrics("packets_too_large", |m| m.packets_too_large == 1)
        .await;
}

#[tokio::test]
async fn mqtt_3_1_2_22_keepalive_timeout_gets_disconnect_0x8d() {
    let broker = TestBroker::start().await;
    let mut silent = connect("silent");
    silent.keep_alive = 1;
    let (mut client, _) = V5Client::connected(broker.addr, &silent).await;
    let disconnect = client.expect_disconnect().await;
    assert_eq!(disconnect.reason, ReasonCode::KEEP_ALIVE_TIMEOUT);
}

#[tokio::test]
async fn mqtt_3_1_4_3_a_taken_over_connection_gets_disconnect_0x8e() {
    let broker = TestBroker::start().await;
    let mut first = V5Client::plain(broker.addr, "twin").await;
    let _second = V5Client::plain(broker.addr, "twin").await;
    let disconnect = first.expect_disconnect().await;
    assert_eq!(disconnect.reason, ReasonCode::SESSION_TAKEN_OVER);
}

#[tokio::test]
async fn shutdown_sends_disconnect_0x8b() {
    let broker = TestBroker::start().await;
    let mut client = V5Client::plain(broker.addr, "stays").await;
    let stopping = tokio::spawn(broker.stop());
    let disconnect = client.expect_disconnect().await;
    assert_eq!(disconnect.reason, ReasonCode::SERVER_SHUTTING_DOWN);
    stopping.await.unwrap();
}

#[tokio::test]
async fn mqtt_3_3_4_7_more_than_receive_maximum_unacknowledged_gets_disconnect_0x93() {
    let mut s = settings();
    s.limits.receive_maximum = 2;
    let broker = TestBroker::start_with(s).await;
    let mut client = V5Client::plain(broker.addr, "flooder").await;
    // QoS 2 PUBLISHes stay unacknowledged until their PUBREL, never sent.
    for id in 1..=2 {
        client
            .send(&publish("t", QoS::ExactlyOnce, id, b"x", None))
            .await;
        assert!(matches!(client.recv().await, Some(Outgoing::PubRec(_))));
    }
    client
        .send(&publish("t", QoS::ExactlyOnce, 3, b"x", None))
        .await;
    let disconnect = client.expect_disconnect().await;
    assert_eq!(disconnect.reason, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
    broker
        .wait_metrics("receive_maximum_exceeded", |m| {
            m.receive_maximum_exceeded == 1
        })
        .await;
}

#[tokio::test]
async fn mqtt_3_1_2_29_request_problem_information_0_keeps_reason_strings_off_acks() {
    let mut s = settings();
    s.limits.max_topic_levels = 2;
    let broker = TestBroker::start_with(s).await;
    let deep = subscribe(1, "a/b/c/d", options(QoS::AtMostOnce));
    let mut talkative = V5Client::plain(broker.addr, "talkative").await;
    talkative.send(&deep).await;
    let Some(Outgoing::SubAck {
        codes, properties, ..
    }) = talkative.recv().await
    else {
        panic!("SUBACK")
    };
    assert_eq!(codes, [ReasonCode::QUOTA_EXCEEDED]);
    assert!(properties.reason_string.is_some());
    let mut terse = connect("terse");
    terse.properties.request_problem_information = Some(0);
    let (mut terse, _) = V5Client::connected(broker.addr, &terse).await;
    terse.send(&deep).await;
    let Some(Outgoing::SubAck {
        codes, properties, ..
    }) = terse.recv().await
    else {
        panic!("SUBACK")
    };
    assert_eq!(codes, [ReasonCode::QUOTA_EXCEEDED]);
    assert_eq!(properties.reason_string, None);
}

// ------------------------------------------------------- acknowledgements

#[tokio::test]
async fn puback_0x10_when_no_subscriber_matched_and_0x00_when_one_did() {
    let broker = TestBroker::start().await;
    let mut publisher = V5Client::plain(broker.addr, "lonely").await;
    let ack = publisher
        .publish_qos1(publish("nobody/here", QoS::AtLeastOnce, 1, b"x", None))
        .await;
    assert_eq!(ack.reason, ReasonCode::NO_MATCHING_SUBSCRIBERS);
    let mut subscriber = V5Client::plain(broker.addr, "listener").await;
    subscriber
        .subscribe_qos("somebody/#", QoS::AtLeastOnce)
        .await;
    let ack = publisher
        .publish_qos1(publish("somebody/here", QoS::AtLeastOnce, 2, b"x", None))
        .await;
    assert_eq!(ack.reason, ReasonCode::SUCCESS);
    assert_eq!(payload(&subscriber.next_publish().await), b"x");
}

#[tokio::test]
async fn mqtt_3_11_3_unsuback_says_which_filters_had_no_subscription() {
    let broker = TestBroker::start().await;
    let mut client = V5Client::plain(broker.addr, "unsubscriber").await;
    client.subscribe_qos("a", QoS::AtMostOnce).await;
    // [MQTT-3.10.4-6]: two filters, one UNSUBACK.
    let codes = client.unsubscribe(2, &["a", "b"]).await;
    assert_eq!(
        codes,
        [ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
    );
}

// ---------------------------------------------------- sessions and expiry

#[tokio::test]
async fn mqtt_3_1_2_11_2_session_expiry_0_ends_the_session_with_the_connection() {
    let broker = TestBroker::start().await;
    let (mut first, _) = V5Client::connected(broker.addr, &persistent("brief", 0)).await;
    first.subscribe_qos("t", QoS::AtLeastOnce).await;
    first.disconnect(Disconnect::default()).await;
    broker
        .wait_metrics("session gone", |m| m.sessions_current == 0)
        .await;
    let (_again, connack) = V5Client::connected(broker.addr, &persistent("brief", 0)).await;
    assert!(!connack.session_present);
}

#[tokio::test]
async fn mqtt_3_1_2_5_a_session_with_expiry_resumes_with_its_queued_messages() {
    let broker = TestBroker::start().await;
    let (mut first, _) = V5Client::connected(broker.addr, &persistent("keeper", 60)).await;
    first.subscribe_qos("kept/t", QoS::AtLeastOnce).await;
    first.disconnect(Disconnect::default()).await;
    broker
        .wait_metrics("offline", |m| m.sessions_offline_current == 1)
        .await;
    let mut publisher = V5Client::plain(broker.addr, "feeder").await;
    publisher
        .publish_qos1(publish("kept/t", QoS::AtLeastOnce, 1, b"queued", None))
        .await;
    let (mut back, connack) = V5Client::connected(broker.addr, &persistent("keeper", 60)).await;
    assert!(connack.session_present, "[MQTT-3.2.2-2]");
    assert_eq!(payload(&back.next_publish().await), b"queued");
}

#[tokio::test]
async fn mqtt_3_1_2_4_clean_start_1_discards_the_session() {
    let broker = TestBroker::start().await;
    let (mut first, _) = V5Client::connected(broker.addr, &persistent("fresh", 60)).await;
    first.subscribe_qos("old/t", QoS::AtLeastOnce).await;
    first.disconnect(Disconnect::default()).await;
    broker
        .wait_metrics("offline", |m| m.sessions_offline_current == 1)
        .await;
    let mut clean = persistent("fresh", 60);
    clean.clean_session = true;
    let (mut again, connack) = V5Client::connected(broker.addr, &clean).await;
    assert!(!connack.session_present);
    let mut publisher = V5Client::plain(broker.addr, "old-feeder").await;
    let ack = publisher
        .publish_qos1(publish("old/t", QoS::AtLeastOnce, 1, b"x", None))
        .await;
    assert_eq!(ack.reason, ReasonCode::NO_MATCHING_SUBSCRIBERS);
    again.assert_silent(QUIET).await;
}

#[tokio::test]
async fn mqtt_3_14_2_2_disconnect_cannot_set_an_expiry_after_connect_had_0() {
    let broker = TestBroker::start().await;
    let (mut client, _) = V5Client::connected(broker.addr, &persistent("zero", 0)).await;
    let mut disconnect = Disconnect::default();
    disconnect.properties.session_expiry_interval = Some(60);
    client.disconnect(disconnect).await;
    let answer = client.expect_disconnect().await;
    assert_eq!(answer.reason, ReasonCode::PROTOCOL_ERROR);
}

#[tokio::test]
async fn mqtt_3_14_2_disconnect_may_shorten_the_session_expiry_to_0() {
    let broker = TestBroker::start().await;
    let (mut client, _) = V5Client::connected(broker.addr, &persistent("shorten", 60)).await;
    client.subscribe_qos("t", QoS::AtLeastOnce).await;
    client
        .disconnect(Disconnect {
            reason: ReasonCode::SUCCESS,
            properties: DisconnectProperties {
                session_expiry_interval: Some(0),
                ..DisconnectProperties::default()
            },
        })
        .await;
    broker
        .wait_metrics("session gone", |m| m.sessions_current == 0)
        .await;
    let (_c, connack) = V5Client::connected(broker.addr, &persistent("shorten", 60)).await;
    assert!(!connack.session_present);
}

#[tokio::test]
async fn mqtt_4_1_0_2_an_expired_session_is_removed_and_its_memory_freed() {
    let broker = TestBroker::start().await;
    // Long enough for the 50 publishes below on a loaded machine.
    let (mut first, _) = V5Client::connected(broker.addr, &persistent("short-lived", 3)).await;
    first.subscribe_qos("mem/t", QoS::AtLeastOnce).await;
    first.disconnect(Disconnect::default()).await;
    broker
        .wait_metrics("offline", |m| m.sessions_offline_current == 1)
        .await;
    let before = broker.metrics().memory_accounted_bytes;
    let mut publisher = V5Client::plain(broker.addr, "filler").await;
    for id in 1..=50 {
        publisher
            .publish_qos1(publish("mem/t", QoS::AtLeastOnce, id, &[1; 1000], None))
            .await;
    }
    let queued = broker.metrics().memory_accounted_bytes;
    assert!(queued >= before + 50_000, "{before} -> {queued}");
    broker
        .wait_metrics_within(Duration::from_secs(3) + WAIT, "expired", |m| {
            m.sessions_expired == 1
        })
        .await;
    broker
        .wait_metrics("memory freed", |m| m.memory_accounted_bytes <= before)
        .await;
    assert_eq!(broker.metrics().subscriptions_current, 0);
    let (_c, connack) = V5Client::connected(broker.addr, &persistent("short-lived", 1)).await;
    assert!(!connack.session_present);
}

#[tokio::test]
async fn mqtt_3_3_2_5_an_expired_message_is_not_delivered_and_is_counted() {
    let broker = TestBroker::start().await;
    let (mut sub, _) = V5Client::connected(broker.addr, &persistent("away", 60)).await;
    sub.subscribe_qos("exp/#", QoS::AtLeastOnce).await;
    sub.disconnect(Disconnect::default()).await;
    broker
        .wait_metrics("offline", |m| m.sessions_offline_current == 1)
        .await;
    let mut publisher = V5Client::plain(broker.addr, "expirer").await;
    let short = PublishProperties {
        message_expiry_interval: Some(1),
        ..PublishProperties::default()
    };
    let long = PublishProperties {
        message_expiry_interval: Some(100),
        ..PublishProperties::default()
    };
    publisher
        .publish_qos1(publish(
            "exp/short",
            QoS::AtLeastOnce,
            1,
            b"gone",
            Some(short),
        ))
        .await;
    publisher
        .publish_qos1(publish(
            "exp/long",
            QoS::AtLeastOnce,
            2,
            b"kept",
            Some(long),
        ))
        .await;
    // The expiry interval is what is under test: let it pass.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut back, _) = V5Client::connected(broker.addr, &persistent("away", 60)).await;
    let kept = back.next_publish().await;
    assert_eq!(payload(&kept), b"kept");
    // [MQTT-3.3.2-6]: the interval left, not the one published.
    let left = kept
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval)
        .unwrap();
    assert!((1..100).contains(&left), "{left}");
    back.assert_silent(QUIET).await;
    assert_eq!(broker.metrics().messages_expired, 1);
}

// ------------------------------------------------------------- will delay

async fn will_watcher(broker: &TestBroker, filter: &str) -> V5Client {
    let mut watcher = V5Client::plain(broker.addr, "watcher").await;
    watcher.subscribe_qos(filter, QoS::AtLeastOnce).await;
    watcher
}

#[tokio::test]
async fn mqtt_3_1_3_9_a_delayed_will_waits_its_delay() {
    let broker = TestBroker::start().await;
    let mut watcher = will_watcher(&broker, "will/#").await;
    let mut dying = persistent("dying", 60);
    dying.will = Some(will("will/dying", b"late", 2));
    let (client, _) = V5Client::connected(broker.addr, &dying).await;
    let killed = Instant::now();
    client.kill();
    let will = watcher.next_publish().await;
    assert_eq!(payload(&will), b"late");
    assert!(killed.elapsed() >= Duration::from_millis(1900));
}

#[tokio::test]
async fn mqtt_3_1_3_9_no_will_when_the_session_resumes_within_the_delay() {
    let broker = TestBroker::start().await;
    let mut watcher = will_watcher(&broker, "will/#").await;
    let mut flaky = persistent("flaky", 60);
    flaky.will = Some(will("will/flaky", b"never", 2));
    let (client, _) = V5Client::connected(broker.addr, &flaky).await;
    client.kill();
    broker
        .wait_metrics("will delayed", |m| m.wills_delayed == 1)
        .await;
    let (_back, connack) = V5Client::connected(broker.addr, &flaky).await;
    assert!(connack.session_present);
    watcher.assert_silent(Duration::from_millis(2500)).await;
    assert_eq!(broker.metrics().wills_published, 0);
}

#[tokio::test]
async fn mqtt_3_1_2_8_the_will_goes_when_the_session_ends_before_the_delay() {
    let broker = TestBroker::start().await;
    let mut watcher = will_watcher(&broker, "will/#").await;
    // Session expiry 0 ends the session with the connection: no waiting.
    let mut short = persistent("short", 0);
    short.will = Some(will("will/short", b"now", 60));
    let (client, _) = V5Client::connected(broker.addr, &short).await;
    client.kill();
    let will = watcher.next_publish().await;
    assert_eq!(payload(&will), b"now");
}

#[tokio::test]
async fn mqtt_3_14_4_3_disconnect_0x04_publishes_the_will() {
    let broker = TestBroker::start().await;
    let mut watcher = will_watcher(&broker, "will/#").await;
    let mut leaving = connect("leaving");
    leaving.will = Some(will("will/leaving", b"asked", 0));
    let (mut client, _) = V5Client::connected(broker.addr, &leaving).await;
    client
        .disconnect(Disconnect::new(ReasonCode::DISCONNECT_WITH_WILL))
        .await;
    assert_eq!(payload(&watcher.next_publish().await), b"asked");
    let mut polite = connect("polite");
    polite.will = Some(will("will/polite", b"not this", 0));
    let (mut client, _) = V5Client::connected(broker.addr, &polite).await;
    client.disconnect(Disconnect::default()).await;
    watcher.assert_silent(QUIET).await;
}

// ------------------------------------------------------------ flow control

#[tokio::test]
async fn mqtt_3_3_4_9_never_more_unacknowledged_publishes_than_the_clients_receive_maximum() {
    let broker = TestBroker::start().await;
    let mut narrow = persistent("narrow", 60);
    narrow.properties.receive_maximum = Some(2);
    let (mut sub, _) = V5Client::connected(broker.addr, &narrow).await;
    sub.subscribe_qos("flow/t", QoS::AtLeastOnce).await;
    let mut publisher = V5Client::plain(broker.addr, "flow-pub").await;
    for id in 1..=5u16 {
        publisher
            .publish_qos1(publish("flow/t", QoS::AtLeastOnce, id, &[id as u8], None))
            .await;
    }
    let mut unacked = Vec::new();
    for _ in 0..2 {
        match sub.recv().await {
            Some(Outgoing::Publish(p)) => unacked.push(p),
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    // The window is the client's Receive Maximum: nothing more comes.
    sub.assert_silent(QUIET).await;
    for p in &unacked {
        sub.acknowledge(p).await;
    }
    let mut rest = Vec::new();
    for _ in 0..3 {
        rest.push(sub.next_publish().await.payload[0]);
    }
    assert_eq!(rest, [3, 4, 5]);
}

#[tokio::test]
async fn mqtt_3_1_2_25_a_message_too_large_for_one_subscriber_is_dropped_for_it_only() {
    let broker = TestBroker::start().await;
    let mut small = connect("small");
    small.properties.maximum_packet_size = Some(100);
    let (mut small, _) = V5Client::connected(broker.addr, &small).await;
    small.subscribe_qos("size/t", QoS::AtMostOnce).await;
    let mut large = V5Client::plain(broker.addr, "large").await;
    large.subscribe_qos("size/t", QoS::AtMostOnce).await;
    let (mut v311, _) = RawClient::connected(broker.addr, &ConnectOptions::new("v311")).await;
    v311.subscribe_granted(1, &[("size/t", QoS::AtMostOnce)])
        .await;
    let mut publisher = V5Client::plain(broker.addr, "sizer").await;
    publisher
        .send(&publish("size/t", QoS::AtMostOnce, 0, &[9; 200], None))
        .await;
    publisher
        .send(&publish("size/t", QoS::AtMostOnce, 0, b"small", None))
        .await;
    assert_eq!(large.next_publish().await.payload.len(), 200);
    assert_eq!(v311.next_publish().await.publish().1.len(), 200);
    assert_eq!(payload(&small.next_publish().await), b"small");
    assert_eq!(broker.metrics().dropped_too_large, 1);
}

// ------------------------------------------------------------ topic aliases

#[tokio::test]
async fn mqtt_3_3_2_12_an_inbound_alias_names_its_topic_later() {
    let broker = TestBroker::start().await;
    let mut sub = V5Client::plain(broker.addr, "alias-sub").await;
    sub.subscribe_qos("alias/#", QoS::AtMostOnce).await;
    let mut publisher = V5Client::plain(broker.addr, "aliaser").await;
    let set = PublishProperties {
        topic_alias: Some(3),
        ..PublishProperties::default()
    };
    publisher
        .send(&publish(
            "alias/long/topic",
            QoS::AtMostOnce,
            0,
            b"1",
            Some(set.clone()),
        ))
        .await;
    let mut by_alias = publish("x", QoS::AtMostOnce, 0, b"2", Some(set));
    if let Packet::Publish(p) = &mut by_alias {
        p.topic = tidemq_protocol::TopicName::alias_only();
    }
    // Across a rest: the alias table is the connection's and survives it.
    broker.wait_resting(2).await;
    publisher.send(&by_alias).await;
    for expected in [b"1", b"2"] {
        let p = sub.next_publish().await;
        assert_eq!(
            (p.topic.as_str(), payload(&p)),
            ("alias/long/topic", &expected[..])
        );
        assert!(p
            .properties
            .as_ref()
            .is_none_or(|p| p.topic_alias.is_none()));
    }
}

#[tokio::test]
async fn mqtt_3_3_2_9_an_alias_above_the_maximum_gets_disconnect_0x94() {
    let mut s = settings();
    s.limits.topic_alias_maximum = 4;
    let broker = TestBroker::start_with(s).await;
    let mut publisher = V5Client::plain(broker.addr, "overreach").await;
    let bad = PublishProperties {
        topic_alias: Some(5),
        ..PublishProperties::default()
    };
    publisher
        .send(&publish("t", QoS::AtMostOnce, 0, b"x", Some(bad)))
        .await;
    let disconnect = publisher.expect_disconnect().await;
    assert_eq!(disconnect.reason, ReasonCode::TOPIC_ALIAS_INVALID);
}

#[tokio::test]
async fn mqtt_3_3_2_11_outbound_aliases_stay_within_the_clients_maximum() {
    let broker = TestBroker::start().await;
    let mut accepting = connect("alias-taker");
    accepting.properties.topic_alias_maximum = Some(1);
    let (mut sub, _) = V5Client::connected(broker.addr, &accepting).await;
    sub.subscribe_qos("out/#", QoS::AtMostOnce).await;
    let mut plain = V5Client::plain(broker.addr, "no-aliases").await;
    plain.subscribe_qos("out/#", QoS::AtMostOnce).await;
    let mut publisher = V5Client::plain(broker.addr, "out-pub").await;
    for topic in ["out/a", "out/a", "out/b", "out/a"] {
        publisher
            .send(&publish(topic, QoS::AtMostOnce, 0, b"x", None))
            .await;
    }
    let mut seen = Vec::new();
    for _ in 0..4 {
        let p = sub.next_publish().await;
        let alias = p.properties.as_ref().and_then(|p| p.topic_alias);
        seen.push((p.topic.as_str().to_owned(), alias));
    }
    let set = |t: &str| (t.to_owned(), Some(1));
    // One alias: set for out/a, reused (empty topic), taken over by out/b,
    // set again for out/a.
    assert_eq!(
        seen,
        [
            set("out/a"),
            (String::new(), Some(1)),
            set("out/b"),
            set("out/a")
        ]
    );
    for _ in 0..4 {
        let p = plain.next_publish().await;
        assert!(p
            .properties
            .as_ref()
            .is_none_or(|p| p.topic_alias.is_none()));
    }
}

// ---------------------------------------------------- subscription options

#[tokio::test]
async fn mqtt_3_8_3_3_no_local_keeps_a_clients_own_messages_from_it() {
    let broker = TestBroker::start().await;
    let mut client = V5Client::plain(broker.addr, "echo").await;
    let no_local = SubscriptionOptions {
        no_local: true,
        ..options(QoS::AtMostOnce)
    };
    client.subscribe(subscribe(1, "mine/#", no_local)).await;
    let mut other = V5Client::plain(broker.addr, "other").await;
    client
        .send(&publish("mine/a", QoS::AtMostOnce, 0, b"own", None))
        .await;
    other
        .send(&publish("mine/b", QoS::AtMostOnce, 0, b"theirs", None))
        .await;
    assert_eq!(payload(&client.next_publish().await), b"theirs");
    client.assert_silent(QUIET).await;
}

#[tokio::test]
async fn mqtt_3_3_1_13_retain_as_published() {
    // Also [MQTT-3.3.1-12].
    retain_as_published().await;
}

async fn retain_as_published() {
    let broker = TestBroker::start().await;
    let mut keeps = V5Client::plain(broker.addr, "keeps-flag").await;
    let rap = SubscriptionOptions {
        retain_as_published: true,
        ..options(QoS::AtMostOnce)
    };
    keeps.subscribe(subscribe(1, "rap/t", rap)).await;
    let mut clears = V5Client::plain(broker.addr, "clears-flag").await;
    clears.subscribe_qos("rap/t", QoS::AtMostOnce).await;
    let mut publisher = RawClient::connected(broker.addr, &ConnectOptions::new("rp"))
        .await
        .0;
    publisher
        .send(&publish_bytes("rap/t", QoS::AtMostOnce, 0, b"r", true))
        .await;
    assert!(keeps.next_publish().await.retain);
    assert!(!clears.next_publish().await.retain);
}

#[tokio::test]
async fn mqtt_3_3_1_10_retain_handling() {
    // Also [MQTT-3.3.1-9] and [MQTT-3.3.1-11].
    retain_handling().await;
}

async fn retain_handling() {
    let broker = TestBroker::start().await;
    let mut publisher = RawClient::connected(broker.addr, &ConnectOptions::new("rh"))
        .await
        .0;
    // Acknowledged once the router has stored it.
    publisher
        .publish_acked("rh/t", QoS::AtLeastOnce, 1, b"stored", true)
        .await;
    let with = |handling| SubscriptionOptions {
        retain_handling: handling,
        ..options(QoS::AtMostOnce)
    };
    let mut client = V5Client::plain(broker.addr, "handler").await;
    // 2: never at subscribe [MQTT-3.3.1-11].
    client
        .subscribe(subscribe(1, "rh/t", with(RetainHandling::Never)))
        .await;
    client.assert_silent(QUIET).await;
    // 1: only for a new subscription; this one exists.
    client
        .subscribe(subscribe(
            2,
            "rh/t",
            with(RetainHandling::OnNewSubscription),
        ))
        .await;
    client.assert_silent(QUIET).await;
    // 1 on a new filter: sent.
    client
        .subscribe(subscribe(
            3,
            "rh/#",
            with(RetainHandling::OnNewSubscription),
        ))
        .await;
    assert_eq!(payload(&client.next_publish().await), b"stored");
    // 0: every time.
    client
        .subscribe(subscribe(4, "rh/#", with(RetainHandling::OnSubscribe)))
        .await;
    assert_eq!(payload(&client.next_publish().await), b"stored");
}

#[tokio::test]
async fn mqtt_3_3_4_3_overlapping_subscriptions_give_one_publish_with_every_identifier() {
    let broker = TestBroker::start().await;
    let mut client = V5Client::plain(broker.addr, "identified").await;
    for (id, filter) in [(11, "ids/#"), (22, "ids/+/x")] {
        let packet = Packet::Subscribe(Subscribe {
            packet_id: PacketId::new(id).unwrap(),
            filters: vec![(TopicFilter::new(filter).unwrap(), options(QoS::AtMostOnce))],
            subscription_identifier: Some(u32::from(id)),
            user_properties: Vec::new(),
        });
        client.subscribe(packet).await;
    }
    let mut publisher = V5Client::plain(broker.addr, "id-pub").await;
    publisher
        .send(&publish("ids/a/x", QoS::AtMostOnce, 0, b"both", None))
        .await;
    publisher
        .send(&publish("ids/b", QoS::AtMostOnce, 0, b"one", None))
        .await;
    let both = client.next_publish().await;
    // [MQTT-3.3.4-4]: one copy, carrying both identifiers.
    let mut ids = both.properties.unwrap().subscription_identifiers;
    ids.sort_unstable();
    assert_eq!(ids, [11, 22]);
    let one = client.next_publish().await;
    assert_eq!(one.properties.unwrap().subscription_identifiers, [11]);
    client.assert_silent(QUIET).await;
}

// ---------------------------------------------------- shared subscriptions

#[tokio::test]
async fn mqtt_4_8_2_each_message_goes_to_one_member_of_a_shared_group() {
    let broker = TestBroker::start().await;
    let mut a = V5Client::plain(broker.addr, "member-a").await;
    a.subscribe_qos("$share/g/jobs/#", QoS::AtLeastOnce).await;
    // A 3.1.1 member of the same group.
    let (mut b, _) = RawClient::connected(broker.addr, &ConnectOptions::new("member-b")).await;
    b.subscribe_granted(1, &[("$share/g/jobs/#", QoS::AtLeastOnce)])
        .await;
    let mut publisher = V5Client::plain(broker.addr, "jobber").await;
    for id in 1..=4u16 {
        let ack = publisher
            .publish_qos1(publish("jobs/x", QoS::AtLeastOnce, id, &[id as u8], None))
            .await;
        assert_eq!(ack.reason, ReasonCode::SUCCESS);
    }
    let mut got: Vec<u8> = Vec::new();
    for _ in 0..2 {
        got.push(a.next_publish().await.payload[0]);
        let (_, payload, _, id) = b.next_publish().await.publish();
        b.send(&tidemq_tests::packet_bytes(&Packet::PubAck(Ack::new(
            PacketId::new(id.unwrap()).unwrap(),
        ))))
        .await;
        got.push(payload[0]);
    }
    got.sort_unstable();
    assert_eq!(got, [1, 2, 3, 4], "each message once, round robin");
    a.assert_silent(QUIET).await;
}

#[tokio::test]
async fn mqtt_4_8_2_a_shared_subscription_gets_no_retained_messages() {
    let broker = TestBroker::start().await;
    let mut publisher = RawClient::connected(broker.addr, &ConnectOptions::new("rp"))
        .await
        .0;
    publisher
        .publish_acked("sr/t", QoS::AtLeastOnce, 1, b"stored", true)
        .await;
    let mut member = V5Client::plain(broker.addr, "late-member").await;
    member.subscribe_qos("$share/g/sr/t", QoS::AtMostOnce).await;
    member.assert_silent(QUIET).await;
}

#[tokio::test]
async fn mqtt_4_8_2_2_a_bad_share_name_gets_suback_0x8f() {
    let broker = TestBroker::start().await;
    let mut client = V5Client::plain(broker.addr, "bad-share").await;
    let codes = client
        .subscribe(subscribe(1, "$share/g", options(QoS::AtMostOnce)))
        .await;
    assert_eq!(codes, [ReasonCode::TOPIC_FILTER_INVALID]);
}

// ------------------------------------------ properties and mixed versions

#[tokio::test]
async fn mqtt_3_3_2_17_to_20_request_response_properties_are_forwarded_unchanged() {
    let broker = TestBroker::start().await;
    let mut responder = V5Client::plain(broker.addr, "responder").await;
    responder.subscribe_qos("req/#", QoS::AtMostOnce).await;
    let (mut v311, _) = RawClient::connected(broker.addr, &ConnectOptions::new("old")).await;
    v311.subscribe_granted(1, &[("req/#", QoS::AtMostOnce)])
        .await;
    let sent = PublishProperties {
        payload_format_indicator: Some(1),
        response_topic: Some(tidemq_protocol::TopicName::new("resp/42").unwrap()),
        correlation_data: Some(Bytes::from_static(&[0, 1, 2])),
        user_properties: vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ],
        content_type: Some("application/json".into()),
        ..PublishProperties::default()
    };
    let mut requester = V5Client::plain(broker.addr, "requester").await;
    requester
        .send(&publish(
            "req/x",
            QoS::AtMostOnce,
            0,
            b"{}",
            Some(sent.clone()),
        ))
        .await;
    let got = responder.next_publish().await;
    assert_eq!(*got.properties.unwrap(), sent);
    // The 3.1.1 subscriber gets the same message, without properties.
    let plain = v311.next_publish().await;
    assert_eq!(plain.publish().0, "req/x");
    assert_eq!(plain.publish().1, b"{}");
}

#[tokio::test]
async fn a_v311_publisher_reaches_a_v5_subscriber() {
    let broker = TestBroker::start().await;
    let mut sub = V5Client::plain(broker.addr, "new").await;
    sub.subscribe_qos("mix/t", QoS::AtLeastOnce).await;
    let (mut old, _) = RawClient::connected(broker.addr, &ConnectOptions::new("old")).await;
    old.publish_acked("mix/t", QoS::AtLeastOnce, 1, b"hello", false)
        .await;
    let got = sub.next_publish().await;
    assert_eq!(
        (got.topic.as_str(), payload(&got)),
        ("mix/t", &b"hello"[..])
    );
    assert_eq!(got.properties, None);
}

#[tokio::test]
async fn a_v5_client_takes_over_a_v311_session_and_the_reverse() {
    let broker = TestBroker::start().await;
    let persistent311 = ConnectOptions {
        clean_session: false,
        ..ConnectOptions::new("shifter")
    };
    let (mut old, _) = RawClient::connected(broker.addr, &persistent311).await;
    old.subscribe_granted(1, &[("shift/t", QoS::AtLeastOnce)])
        .await;
    // A v5 client resumes the 3.1.1 session: the old connection is closed
    // (3.1.1 has no DISCONNECT to send) and the subscription carries over.
    let (mut new, connack) = V5Client::connected(broker.addr, &persistent("shifter", 60)).await;
    assert!(connack.session_present);
    assert!(old.closed_by_broker().await);
    let mut publisher = V5Client::plain(broker.addr, "shift-pub").await;
    publisher
        .publish_qos1(publish("shift/t", QoS::AtLeastOnce, 1, b"to v5", None))
        .await;
    assert_eq!(payload(&new.next_publish().await), b"to v5");
    // And back: the v5 connection gets DISCONNECT 0x8E.
    let (mut old_again, present) = RawClient::connected(broker.addr, &persistent311).await;
    assert!(present);
    assert_eq!(
        new.expect_disconnect().await.reason,
        ReasonCode::SESSION_TAKEN_OVER
    );
    publisher
        .publish_qos1(publish("shift/t", QoS::AtLeastOnce, 2, b"to 3.1.1", None))
        .await;
    assert_eq!(old_again.next_publish().await.publish().1, b"to 3.1.1");
    let _ = subscribe_bytes;
}

#[tokio::test]
async fn mqtt_4_8_2_a_departed_members_unacknowledged_qos1_messages_go_to_another_member() {
    let broker = TestBroker::start().await;
    let mut leaving = V5Client::plain(broker.addr, "leaving").await;
    leaving
        .subscribe_qos("$share/w/work/#", QoS::AtLeastOnce)
        .await;
    let mut staying = V5Client::plain(broker.addr, "staying").await;
    staying
        .subscribe_qos("$share/w/work/#", QoS::AtLeastOnce)
        .await;
    let mut publisher = V5Client::plain(broker.addr, "boss").await;
    for id in 1..=2u16 {
        publisher
            .publish_qos1(publish("work/x", QoS::AtLeastOnce, id, &[id as u8], None))
            .await;
    }
    // Round robin: one each. The leaving member takes its job and never
    // acknowledges it; its session ends with the connection.
    let Some(Outgoing::Publish(unacked)) = leaving.recv().await else {
        panic!("the leaving member gets one job")
    };
    let kept = staying.next_publish().await;
    leaving.kill();
    let redelivered = staying.next_publish().await;
    let mut jobs = [kept.payload[0], redelivered.payload[0]];
    jobs.sort_unstable();
    assert_eq!(jobs, [1, 2]);
    assert_eq!(redelivered.payload, unacked.payload);
    assert_eq!(broker.metrics().shared_redelivered, 1);
}

// ------------------------------------------------- enhanced authentication

/// A method for the tests: "hello" is answered with the challenge "prove",
/// and "secret" then authenticates; anything else is refused (0x86).
#[derive(Debug)]
struct Challenge;

#[derive(Debug, Default)]
struct ChallengeExchange {
    challenged: bool,
}

impl tidemq::auth::Authenticator for Challenge {
    fn method(&self) -> &str {
        "CHALLENGE"
    }

    fn start(&self, _: &str, _: Option<&str>) -> Box<dyn tidemq::auth::AuthExchange> {
        Box::new(ChallengeExchange::default())
    }
}

impl tidemq::auth::AuthExchange for ChallengeExchange {
    fn step(&mut self, data: Option<&[u8]>) -> tidemq::auth::AuthStep {
        use tidemq::auth::AuthStep;
        match (self.challenged, data) {
            (false, Some(b"hello")) => {
                self.challenged = true;
                AuthStep::Continue(Bytes::from_static(b"prove"))
            }
            (true, Some(b"secret")) => AuthStep::Success(Some(Bytes::from_static(b"welcome"))),
            _ => AuthStep::Failure(ReasonCode::BAD_USER_NAME_OR_PASSWORD),
        }
    }
}

async fn challenge_broker() -> TestBroker {
    TestBroker::start_with_authenticator(settings(), Some(std::sync::Arc::new(Challenge))).await
}

fn auth(reason: ReasonCode, data: &'static [u8]) -> Packet {
    Packet::Auth(Auth {
        reason,
        authentication_method: Some("CHALLENGE".into()),
        authentication_data: Some(Bytes::from_static(data)),
        ..Auth::default()
    })
}

fn challenge_connect(client_id: &str) -> tidemq_protocol::Connect {
    let mut c = connect(client_id);
    c.properties.authentication_method = Some("CHALLENGE".into());
    c.properties.authentication_data = Some(Bytes::from_static(b"hello"));
    c
}

/// Sends CONNECT with the method and "hello", expects the challenge.
async fn challenged(broker: &TestBroker, client_id: &str) -> V5Client {
    let mut wire = bytes::BytesMut::new();
    tidemq_protocol::encode_connect(&challenge_connect(client_id), &mut wire);
    let stream = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    let mut client = V5Client::from_stream(stream);
    client.send_raw(&wire).await;
    match client.recv().await {
        Some(Outgoing::Auth(auth)) => {
            assert_eq!(auth.reason, ReasonCode::CONTINUE_AUTHENTICATION);
            assert_eq!(auth.authentication_method.as_deref(), Some("CHALLENGE"));
            assert_eq!(auth.authentication_data.as_deref(), Some(&b"prove"[..]));
        }
        other => panic!("expected AUTH 0x18, got {other:?}"),
    }
    client
}

#[tokio::test]
async fn mqtt_4_12_0_2_to_4_the_auth_exchange_runs_before_connack() {
    let broker = challenge_broker().await;
    let mut client = challenged(&broker, "authed").await;
    client
        .send(&auth(ReasonCode::CONTINUE_AUTHENTICATION, b"secret"))
        .await;
    let Some(Outgoing::ConnAck(connack)) = client.recv().await else {
        panic!("CONNACK")
    };
    assert_eq!(connack.reason, ReasonCode::SUCCESS);
    // [MQTT-4.12.0-5]: the same method in every AUTH and the CONNACK.
    let p = &connack.properties;
    assert_eq!(p.authentication_method.as_deref(), Some("CHALLENGE"));
    assert_eq!(p.authentication_data.as_deref(), Some(&b"welcome"[..]));
    // Authenticated: the connection works.
    client.subscribe_qos("t", QoS::AtMostOnce).await;
}

#[tokio::test]
async fn mqtt_4_12_0_a_refused_exchange_gets_the_methods_reason_in_connack() {
    let broker = challenge_broker().await;
    let mut client = challenged(&broker, "impostor").await;
    client
        .send(&auth(ReasonCode::CONTINUE_AUTHENTICATION, b"guess"))
        .await;
    let Some(Outgoing::ConnAck(connack)) = client.recv().await else {
        panic!("CONNACK")
    };
    assert_eq!(connack.reason, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    // [MQTT-4.12.0-4]
    assert!(client.recv().await.is_none(), "closed after the refusal");
    // Another method than the one configured: 0x8C.
    let mut other = challenge_connect("other-method");
    other.properties.authentication_method = Some("KERBEROS".into());
    let (_c, connack) = V5Client::connect(broker.addr, &other).await;
    assert_eq!(connack.reason, ReasonCode::BAD_AUTHENTICATION_METHOD);
}

#[tokio::test]
async fn mqtt_4_12_1_re_authentication_while_connected() {
    let broker = challenge_broker().await;
    let mut client = challenged(&broker, "reauth").await;
    client
        .send(&auth(ReasonCode::CONTINUE_AUTHENTICATION, b"secret"))
        .await;
    assert!(matches!(client.recv().await, Some(Outgoing::ConnAck(_))));
    client
        .send(&auth(ReasonCode::RE_AUTHENTICATE, b"hello"))
        .await;
    let Some(Outgoing::Auth(challenge)) = client.recv().await else {
        panic!("AUTH 0x18")
    };
    assert_eq!(challenge.reason, ReasonCode::CONTINUE_AUTHENTICATION);
    client
        .send(&auth(ReasonCode::CONTINUE_AUTHENTICATION, b"secret"))
        .await;
    let Some(Outgoing::Auth(done)) = client.recv().await else {
        panic!("AUTH 0x00")
    };
    assert_eq!(done.reason, ReasonCode::SUCCESS);
    // A failed re-authentication ends the connection [MQTT-4.12.1-2]: 0x87,
    // as DISCONNECT has no 0x86.
    client
        .send(&auth(ReasonCode::RE_AUTHENTICATE, b"nonsense"))
        .await;
    let disconnect = client.expect_disconnect().await;
    assert_eq!(disconnect.reason, ReasonCode::NOT_AUTHORIZED);
}

// ------------------------------------------------ over limits, redirection

#[tokio::test]
async fn over_memory_limit_an_mqtt5_qos1_publish_gets_puback_0x97() {
    let mut s = settings();
    s.limits.memory_limit_mb = 1;
    let broker = TestBroker::start_with(s).await;
    let (mut filler, _) = RawClient::connected(broker.addr, &ConnectOptions::new("fill")).await;
    let mut publisher = V5Client::plain(broker.addr, "refused").await;
    // Retained messages of 60 KB until the broker holds more than 1 MiB.
    let big = vec![b'x'; 60 * 1024];
    let mut n = 0;
    while broker.metrics().memory_accounted_bytes <= 1024 * 1024 {
        assert!(n < 40, "{:?}", broker.metrics());
        let topic = format!("fill/{n}");
        filler
            .publish_acked(&topic, QoS::AtLeastOnce, 1, &big, true)
            .await;
        n += 1;
    }
    let ack = publisher
        .publish_qos1(publish("m/t", QoS::AtLeastOnce, 7, b"no room", None))
        .await;
    assert_eq!(
        (ack.packet_id.get(), ack.reason),
        (7, ReasonCode::QUOTA_EXCEEDED)
    );
    // The connection stays: the client was told, nothing was lost.
    publisher.send(&Packet::PingReq).await;
    assert_eq!(publisher.recv().await, Some(Outgoing::PingResp));
    // A new MQTT 5 connection meanwhile: 0x89 "server busy".
    let (_c, connack) = V5Client::connect(broker.addr, &connect("late")).await;
    assert_eq!(connack.reason, ReasonCode::SERVER_BUSY);
}

#[tokio::test]
async fn a_full_broker_sends_mqtt5_clients_to_the_server_reference() {
    let mut s = settings();
    s.connections.max_connections = 1;
    s.connections.server_reference = "standby.example:1883".into();
    let broker = TestBroker::start_with(s).await;
    let mut first = V5Client::plain(broker.addr, "first").await;
    let (_c, connack) = V5Client::connect(broker.addr, &connect("second")).await;
    assert_eq!(connack.reason, ReasonCode::USE_ANOTHER_SERVER);
    assert_eq!(
        connack.properties.server_reference.as_deref(),
        Some("standby.example:1883")
    );
    // At shutdown, the connected client is sent there too.
    let stopping = tokio::spawn(broker.stop());
    let disconnect = first.expect_disconnect().await;
    assert_eq!(disconnect.reason, ReasonCode::USE_ANOTHER_SERVER);
    assert_eq!(
        disconnect.properties.server_reference.as_deref(),
        Some("standby.example:1883")
    );
    stopping.await.unwrap();
}

#[tokio::test]
async fn mqtt_3_7_2_1_pubrel_for_an_unknown_packet_id_gets_pubcomp_0x92() {
    let broker = TestBroker::start().await;
    let mut client = V5Client::plain(broker.addr, "stray-pubrel").await;
    client
        .send(&Packet::PubRel(Ack::new(PacketId::new(42).unwrap())))
        .await;
    let Some(Outgoing::PubComp(ack)) = client.recv().await else {
        panic!("PUBCOMP")
    };
    assert_eq!(
        (ack.packet_id.get(), ack.reason),
        (42, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND)
    );
}

#[tokio::test]
async fn mqtt_3_1_2_8_a_session_expiring_before_the_will_delay_publishes_the_will() {
    let broker = TestBroker::start().await;
    let mut watcher = will_watcher(&broker, "will/#").await;
    let mut brief = persistent("brief-session", 1);
    brief.will = Some(will("will/brief", b"at expiry", 600));
    let (client, _) = V5Client::connected(broker.addr, &brief).await;
    client.kill();
    assert_eq!(payload(&watcher.next_publish().await), b"at expiry");
    broker
        .wait_metrics("expired", |m| m.sessions_expired == 1)
        .await;
}

#[tokio::test]
async fn mqtt_4_3_3_a_new_qos2_publish_reusing_an_unreleased_id_gets_pubrec_0x91() {
    let broker = TestBroker::start().await;
    let mut watcher = V5Client::plain(broker.addr, "q2-watcher").await;
    watcher.subscribe_qos("q2/#", QoS::AtMostOnce).await;
    let mut client = V5Client::plain(broker.addr, "q2-reuser").await;
    client
        .send(&publish("q2/t", QoS::ExactlyOnce, 9, b"first", None))
        .await;
    let Some(Outgoing::PubRec(ack)) = client.recv().await else {
        panic!("PUBREC")
    };
    assert_eq!(ack.reason, ReasonCode::SUCCESS);
    // Id 9 again, DUP 0, before any PUBREL: not a resend.
    client
        .send(&publish("q2/t", QoS::ExactlyOnce, 9, b"second", None))
        .await;
    let Some(Outgoing::PubRec(ack)) = client.recv().await else {
        panic!("PUBREC")
    };
    assert_eq!(ack.reason, ReasonCode::PACKET_IDENTIFIER_IN_USE);
    assert_eq!(payload(&watcher.next_publish().await), b"first");
    watcher.assert_silent(QUIET).await;
}

#[tokio::test]
async fn mqtt_3_1_2_24_no_packet_over_the_clients_maximum_reason_strings_give_way() {
    let mut s = settings();
    s.limits.max_topic_levels = 2;
    let broker = TestBroker::start_with(s).await;
    let mut tiny = connect("tiny");
    tiny.properties.maximum_packet_size = Some(16);
    let (mut client, _) = V5Client::connected(broker.addr, &tiny).await;
    client
        .send(&subscribe(1, "a/b/c/d", options(QoS::AtMostOnce)))
        .await;
    let Some(Outgoing::SubAck {
        codes, properties, ..
    }) = client.recv().await
    else {
        panic!("SUBACK")
    };
    assert_eq!(codes, [ReasonCode::QUOTA_EXCEEDED]);
    // [MQTT-3.9.2-1]
    assert_eq!(
        properties.reason_string, None,
        "it would not fit in 16 bytes"
    );
    // [MQTT-3.14.2-3]: the DISCONNECT too.
    client
        .send_raw(&raw_packet_bytes(0x30, &[0, 1, b't', 9, 1]))
        .await;
    let disconnect = client.expect_disconnect().await;
    assert_eq!(disconnect.reason, ReasonCode::MALFORMED_PACKET);
    assert_eq!(disconnect.properties.reason_string, None);
}

#[tokio::test]
async fn mqtt_4_9_0_3_a_full_window_holds_back_publishes_only() {
    // Also [MQTT-3.3.4-10].
    let broker = TestBroker::start().await;
    let mut one = connect("one-at-a-time");
    one.properties.receive_maximum = Some(1);
    let (mut sub, _) = V5Client::connected(broker.addr, &one).await;
    sub.subscribe_qos("win/t", QoS::AtLeastOnce).await;
    let mut publisher = V5Client::plain(broker.addr, "win-pub").await;
    for id in 1..=2u16 {
        publisher
            .publish_qos1(publish("win/t", QoS::AtLeastOnce, id, &[id as u8], None))
            .await;
    }
    let Some(Outgoing::Publish(first)) = sub.recv().await else {
        panic!("PUBLISH")
    };
    // The window is full; a PINGREQ and a SUBSCRIBE are still answered.
    sub.send(&Packet::PingReq).await;
    assert_eq!(sub.recv().await, Some(Outgoing::PingResp));
    sub.subscribe_qos("other/t", QoS::AtMostOnce).await;
    sub.acknowledge(&first).await;
    assert_eq!(sub.next_publish().await.payload[0], 2);
}

#[tokio::test]
async fn mqtt_4_4_0_2_a_publish_refused_by_the_client_is_not_resent() {
    let broker = TestBroker::start().await;
    let (mut sub, _) = V5Client::connected(broker.addr, &persistent("refuser", 60)).await;
    sub.subscribe_qos("ref/t", QoS::AtLeastOnce).await;
    let mut publisher = V5Client::plain(broker.addr, "ref-pub").await;
    publisher
        .publish_qos1(publish("ref/t", QoS::AtLeastOnce, 1, b"refused", None))
        .await;
    let Some(Outgoing::Publish(p)) = sub.recv().await else {
        panic!("PUBLISH")
    };
    let refusal = Ack::with_reason(p.packet_id.unwrap(), ReasonCode::UNSPECIFIED_ERROR);
    sub.send(&Packet::PubAck(refusal)).await;
    sub.disconnect(Disconnect::default()).await;
    broker
        .wait_metrics("offline", |m| m.sessions_offline_current == 1)
        .await;
    let (mut back, connack) = V5Client::connected(broker.addr, &persistent("refuser", 60)).await;
    assert!(connack.session_present);
    back.assert_silent(QUIET).await;
}

#[tokio::test]
async fn mqtt_3_1_3_10_a_wills_properties_reach_subscribers_in_order() {
    // Also [MQTT-3.1.2-15] (Will Retain) for MQTT 5.
    let broker = TestBroker::start().await;
    let mut dying = connect("will-props");
    let mut last = will("will/props", b"bye", 0);
    last.retain = true;
    last.properties = Some(Box::new(PublishProperties {
        user_properties: vec![
            ("z".into(), "1".into()),
            ("a".into(), "2".into()),
            ("z".into(), "3".into()),
        ],
        content_type: Some("text/plain".into()),
        ..PublishProperties::default()
    }));
    let expected = last.properties.clone();
    dying.will = Some(last);
    let (client, _) = V5Client::connected(broker.addr, &dying).await;
    client.kill();
    broker
        .wait_metrics("will", |m| m.wills_published == 1)
        .await;
    // Retained: a later subscriber gets it, with its properties.
    let mut later = V5Client::plain(broker.addr, "later").await;
    later.subscribe_qos("will/#", QoS::AtLeastOnce).await;
    let got = later.next_publish().await;
    assert!(got.retain);
    assert_eq!(got.properties, expected);
}

#[tokio::test]
async fn mqtt_3_8_4_8_delivery_at_the_lower_of_published_and_granted_qos() {
    let broker = TestBroker::start().await;
    let mut sub = V5Client::plain(broker.addr, "lower").await;
    sub.subscribe_qos("low/t", QoS::AtLeastOnce).await;
    let mut publisher = V5Client::plain(broker.addr, "higher").await;
    publisher
        .send(&publish("low/t", QoS::ExactlyOnce, 1, b"q2", None))
        .await;
    assert!(matches!(publisher.recv().await, Some(Outgoing::PubRec(_))));
    assert_eq!(sub.next_publish().await.qos, QoS::AtLeastOnce);
}

#[tokio::test]
async fn mqtt_4_3_3_7_a_qos2_delivery_under_way_is_finished_though_its_message_expired() {
    // Also [MQTT-4.3.3-13].
    let broker = TestBroker::start().await;
    let mut sub = V5Client::plain(broker.addr, "slow-q2").await;
    sub.subscribe_qos("q2x/t", QoS::ExactlyOnce).await;
    let mut publisher = V5Client::plain(broker.addr, "q2x-pub").await;
    let expiring = PublishProperties {
        message_expiry_interval: Some(1),
        ..PublishProperties::default()
    };
    publisher
        .send(&publish("q2x/t", QoS::ExactlyOnce, 1, b"x", Some(expiring)))
        .await;
    let Some(Outgoing::Publish(p)) = sub.recv().await else {
        panic!("PUBLISH")
    };
    // The expiry is what is under test: let it pass before PUBREC.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let id = p.packet_id.unwrap();
    sub.send(&Packet::PubRec(Ack::new(id))).await;
    let Some(Outgoing::PubRel(rel)) = sub.recv().await else {
        panic!("PUBREL")
    };
    assert_eq!(rel.packet_id, id);
}
