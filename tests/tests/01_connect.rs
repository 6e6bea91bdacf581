//! Proves the connection handshake on the wire: which CONNECTs get CONNACK 0,
//! which get a refusal code and a close, which are closed without an answer,
//! and the limits around it (connect timeout, keepalive maximum, connection
//! limit), plus PINGREQ and DISCONNECT on an open connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tidemq_tests::{
    connect_bytes, mqtt_options, settings, Client, ConnectOptions, RawClient, TestBroker,
};

/// Sends `options` as a CONNECT and returns the CONNACK's two body bytes
/// (session present, return code).
async fn connack_for(broker: &TestBroker, options: &ConnectOptions<'_>) -> (RawClient, [u8; 2]) {
    let mut client = RawClient::connect(broker.addr).await;
    client.send(&connect_bytes(options)).await;
    let connack = client.recv().await.expect("CONNACK");
    assert_eq!(connack.packet_type, 2, "expected CONNACK, got {connack:?}");
    assert_eq!(connack.flags, 0);
    let body: [u8; 2] = connack.body.as_slice().try_into().expect("2-byte CONNACK");
    (client, body)
}

/// Asserts a refusal: CONNACK with `code` and session present 0
/// [MQTT-3.2.2-4], then the broker closes [MQTT-3.2.2-5].
async fn assert_refused(broker: &TestBroker, options: &ConnectOptions<'_>, code: u8) {
    let (mut client, body) = connack_for(broker, options).await;
    assert_eq!(body, [0x00, code], "CONNACK for {options:?}");
    assert!(
        client.closed_by_broker().await,
        "refused connection stays open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_1_connect_gets_connack_accepted() {
    let broker = TestBroker::start().await;
    let (_client, body) = connack_for(&broker, &ConnectOptions::new("v311")).await;
    assert_eq!(body, [0x00, 0x00]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_connect_with_mqisdp_level_3_gets_connack_accepted() {
    let broker = TestBroker::start().await;
    let options = ConnectOptions {
        protocol_name: "MQIsdp",
        level: 3,
        ..ConnectOptions::new("v31")
    };
    let (mut client, body) = connack_for(&broker, &options).await;
    assert_eq!(body, [0x00, 0x00]);
    client.ping().await;
}

// [MQTT-3.1.2-2]: an unsupported protocol level is answered with CONNACK
// 0x01 and the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_2_protocol_level_6_gets_connack_0x01_then_close() {
    // Level 5 is MQTT 5.0 (see 16_mqtt5); 6 is no MQTT yet.
    let broker = TestBroker::start().await;
    let options = ConnectOptions {
        level: 6,
        ..ConnectOptions::new("v6")
    };
    assert_refused(&broker, &options, 0x01).await;
    assert_eq!(broker.metrics().connacks_refused, 1);
}

// [MQTT-3.1.2-1]: a wrong protocol name may be closed without a CONNACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_1_wrong_protocol_name_closes_without_connack() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect(broker.addr).await;
    let options = ConnectOptions {
        protocol_name: "MQTX",
        ..ConnectOptions::new("bad-name")
    };
    client.send(&connect_bytes(&options)).await;
    client.assert_closed_without_reply().await;
    broker
        .wait_metrics("protocol_errors = 1", |m| m.protocol_errors == 1)
        .await;
}

// [MQTT-3.1.3-6]: a zero-length client id with clean session 1 is accepted
// (the broker assigns an id) and the connection works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_3_6_empty_client_id_with_clean_session_is_accepted() {
    let broker = TestBroker::start().await;
    let (mut client, body) = connack_for(&broker, &ConnectOptions::new("")).await;
    assert_eq!(body, [0x00, 0x00]);
    client
        .subscribe_granted(1, &[("any", tidemq_protocol::QoS::AtLeastOnce)])
        .await;
    client.ping().await;
}

// [MQTT-3.1.3-8]: a zero-length client id with clean session 0 is refused
// with CONNACK 0x02 and the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_3_8_empty_client_id_without_clean_session_is_refused() {
    let broker = TestBroker::start().await;
    let options = ConnectOptions {
        clean_session: false,
        ..ConnectOptions::new("")
    };
    assert_refused(&broker, &options, 0x02).await;
    assert_eq!(broker.metrics().connacks_refused, 1);
}

// MQTT 3.1 (section 3.1, "Client Identifier"): 1 to 23 characters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_client_id_longer_than_23_characters_is_refused_with_0x02() {
    let broker = TestBroker::start().await;
    let longest = "a".repeat(23);
    let too_long = "a".repeat(24);
    let v31 = |client_id| ConnectOptions {
        protocol_name: "MQIsdp",
        level: 3,
        ..ConnectOptions::new(client_id)
    };
    assert_refused(&broker, &v31(&too_long), 0x02).await;
    let (_client, body) = connack_for(&broker, &v31(&longest)).await;
    assert_eq!(body, [0x00, 0x00], "23 characters are allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_client_id_of_zero_length_is_refused_with_0x02() {
    let broker = TestBroker::start().await;
    let options = ConnectOptions {
        protocol_name: "MQIsdp",
        level: 3,
        ..ConnectOptions::new("")
    };
    assert_refused(&broker, &options, 0x02).await;
}

// [MQTT-3.1.0-1]: the first packet from the client must be CONNECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_0_1_first_packet_not_connect_closes() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect(broker.addr).await;
    client.send(&[0xC0, 0x00]).await;
    client.assert_closed_without_reply().await;
    broker
        .wait_metrics("protocol_errors = 1", |m| m.protocol_errors == 1)
        .await;
}

// [MQTT-3.1.0-2]: a second CONNECT is a protocol violation; the broker
// closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_0_2_second_connect_closes() {
    let broker = TestBroker::start().await;
    let options = ConnectOptions::new("twice");
    let (mut client, _) = RawClient::connected(broker.addr, &options).await;
    assert_eq!(broker.metrics().protocol_errors, 0);
    client.send(&connect_bytes(&options)).await;
    client.assert_closed_without_reply().await;
    broker
        .wait_metrics("protocol_errors = 1", |m| m.protocol_errors == 1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connect_within_connect_timeout_closes() {
    let mut settings = settings();
    settings.connections.connect_timeout_ms = 200;
    let broker = TestBroker::start_with(settings).await;
    let started = tokio::time::Instant::now();
    let mut client = RawClient::connect(broker.addr).await;
    client.assert_closed_without_reply().await;
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "closed after {:?}, before the connect timeout",
        started.elapsed()
    );
    broker
        .wait_metrics("connect_timeouts = 1", |m| m.connect_timeouts == 1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_above_max_keepalive_secs_is_refused_with_0x02() {
    let mut settings = settings();
    settings.limits.max_keepalive_secs = 60;
    let broker = TestBroker::start_with(settings).await;
    let keep_alive = |secs, client_id| ConnectOptions {
        keep_alive: secs,
        ..ConnectOptions::new(client_id)
    };
    assert_refused(&broker, &keep_alive(61, "over"), 0x02).await;
    let (_at_max, body) = connack_for(&broker, &keep_alive(60, "at-max")).await;
    assert_eq!(body, [0x00, 0x00], "the maximum itself is allowed");
    let (_off, body) = connack_for(&broker, &keep_alive(0, "off")).await;
    assert_eq!(body, [0x00, 0x00], "0 (no keepalive) is always allowed");
    assert_eq!(broker.metrics().connacks_refused, 1);
}

// [MQTT-3.12.4-1]: the server answers PINGREQ with PINGRESP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_12_4_1_pingreq_gets_pingresp() {
    let broker = TestBroker::start().await;
    let (mut client, _) = RawClient::connected(broker.addr, &ConnectOptions::new("pinger")).await;
    client.send(&[0xC0, 0x00]).await;
    let pingresp = client.recv().await.expect("PINGRESP");
    assert_eq!(pingresp.wire_bytes(), [0xD0, 0x00]);
}

// Section 3.14.4: on DISCONNECT the server closes the connection if the
// client has not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_closes_the_connection() {
    let broker = TestBroker::start().await;
    let (mut client, _) = RawClient::connected(broker.addr, &ConnectOptions::new("leaver")).await;
    client.send(&[0xE0, 0x00]).await;
    client.assert_closed_without_reply().await;
    broker
        .wait_metrics("connections_current = 0", |m| m.connections_current == 0)
        .await;
    assert_eq!(broker.metrics().protocol_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_over_max_connections_gets_connack_0x03() {
    let mut settings = settings();
    settings.connections.max_connections = 1;
    let broker = TestBroker::start_with(settings).await;
    let (mut first, _) = RawClient::connected(broker.addr, &ConnectOptions::new("first")).await;

    // A socket holds no slot until its CONNECT is accepted; then it is told
    // the server is unavailable [MQTT-3.2.2-6] and closed.
    let mut second = RawClient::connect(broker.addr).await;
    second
        .send(&connect_bytes(&ConnectOptions::new("second")))
        .await;
    let connack = second.recv().await.expect("CONNACK");
    assert_eq!(connack.wire_bytes(), [0x20, 0x02, 0x00, 0x03]);
    assert!(
        second.closed_by_broker().await,
        "second connection stays open"
    );
    assert_eq!(broker.metrics().connections_refused_limit, 1);
    first.ping().await;

    // The place frees up when the first connection ends.
    first.send(&[0xE0, 0x00]).await;
    assert!(first.closed_by_broker().await);
    broker
        .wait_metrics("connections_current = 0", |m| m.connections_current == 0)
        .await;
    let (mut third, _) = RawClient::connected(broker.addr, &ConnectOptions::new("third")).await;
    third.ping().await;
    assert_eq!(broker.metrics().connections_refused_limit, 1);
}

// [MQTT-3.2.2-2]: a clean session is answered with session present 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_2_2_2_rumqttc_client_connects_with_session_present_false() {
    let broker = TestBroker::start().await;
    let client = Client::connect(mqtt_options(&broker, "rumqttc-connect")).await;
    assert_eq!(client.connack.code, rumqttc::ConnectReturnCode::Success);
    assert!(!client.connack.session_present);
    assert_eq!(broker.metrics().connections_current, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_above_the_connect_size_limit_is_closed_unanswered() {
    // A will payload of 65 535 bytes makes the CONNECT larger than the
    // default 64 KiB allowed before a client is known.
    let broker = TestBroker::start().await;
    let payload = vec![b'w'; 65_535];
    let mut options = ConnectOptions::new("big-will");
    options.will = Some(("w", &payload, 0, false));
    let mut client = RawClient::connect(broker.addr).await;
    client.try_send(&connect_bytes(&options)).await;
    client.assert_closed_without_reply().await;
    broker
        .wait_metrics("packets_too_large", |m| m.packets_too_large == 1)
        .await;

    let small = vec![b'w'; 1_000];
    options.will = Some(("w", &small, 0, false));
    let (_client, present) = RawClient::connected(broker.addr, &options).await;
    assert!(!present);
}
