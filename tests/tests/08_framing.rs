//! Proves the broker frames a TCP stream correctly whatever the segmentation
//! (many packets per write, one byte per write, large packets), and that a
//! stream it cannot read as MQTT (oversize, malformed length, garbage,
//! server-only packet types) closes that connection alone
//! while other clients carry on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{BufMut, BytesMut};
use tidemq_protocol::QoS;
use tidemq_tests::{
    connect_bytes, publish_bytes, settings, subscribe_bytes, ConnectOptions, RawClient, TestBroker,
};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

const PINGREQ: [u8; 2] = [0xC0, 0x00];
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const SUBACK: u8 = 9;
const PINGRESP: u8 = 13;

async fn connected(broker: &TestBroker, client_id: &str) -> RawClient {
    RawClient::connected(broker.addr, &ConnectOptions::new(client_id))
        .await
        .0
}

async fn subscribed(broker: &TestBroker, client_id: &str, filter: &str) -> RawClient {
    let mut client = connected(broker, client_id).await;
    client
        .send(&subscribe_bytes(1, &[(filter, QoS::AtMostOnce)]))
        .await;
    let suback = client.recv().await.expect("SUBACK");
    assert_eq!(
        suback.packet_type, SUBACK,
        "expected SUBACK, got {suback:?}"
    );
    client
}

async fn ping(client: &mut RawClient) {
    client.send(&PINGREQ).await;
    let answer = client.recv().await.expect("PINGRESP");
    assert_eq!(
        answer.packet_type, PINGRESP,
        "expected PINGRESP, got {answer:?}"
    );
}

/// Asserts `bystander` (subscribed to `topic`) still gets what a new client
/// publishes: the bad connection next door did not disturb the broker.
async fn bystander_still_receives(broker: &TestBroker, bystander: &mut RawClient, topic: &str) {
    let mut publisher = connected(broker, "fresh-publisher").await;
    publisher
        .send(&publish_bytes(
            topic,
            QoS::AtMostOnce,
            0,
            b"still here",
            false,
        ))
        .await;
    let packet = bystander.recv().await.expect("a PUBLISH for the bystander");
    let (got_topic, payload, _, _) = packet.publish();
    assert_eq!(
        (got_topic.as_str(), payload.as_slice()),
        (topic, &b"still here"[..])
    );
    ping(bystander).await;
}

fn remaining_length(len: usize) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    tidemq_protocol::put_remaining_length(&mut out, len);
    out.to_vec()
}

// [MQTT-2.2.3] the remaining length delimits packets, not the reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_packets_in_one_write_are_both_answered() {
    let broker = TestBroker::start().await;
    let mut client = connected(&broker, "sticky").await;

    let mut wire = subscribe_bytes(7, &[("f/sticky", QoS::AtLeastOnce)]);
    wire.extend_from_slice(&PINGREQ);
    client.send(&wire).await;

    let suback = client.recv().await.expect("SUBACK");
    assert_eq!(
        (suback.packet_type, suback.body.as_slice()),
        (SUBACK, &[0, 7, 1][..])
    );
    let pingresp = client.recv().await.expect("PINGRESP");
    assert_eq!(pingresp.packet_type, PINGRESP);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_sent_with_the_connect_in_one_write_are_processed_after_it() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect(broker.addr).await;

    let mut wire = connect_bytes(&ConnectOptions::new("eager"));
    wire.extend(subscribe_bytes(2, &[("f/eager", QoS::AtMostOnce)]));
    wire.extend(publish_bytes("f/eager", QoS::AtMostOnce, 0, b"echo", false));
    wire.extend_from_slice(&PINGREQ);
    client.send(&wire).await;

    let connack = client.recv().await.expect("CONNACK");
    assert_eq!(
        (connack.packet_type, connack.body.as_slice()),
        (CONNACK, &[0, 0][..])
    );
    let suback = client.recv().await.expect("SUBACK");
    assert_eq!(
        (suback.packet_type, suback.body.as_slice()),
        (SUBACK, &[0, 2, 0][..])
    );
    // The echo and the PINGRESP travel different paths; either may be first.
    let mut rest = [
        client.recv().await.expect("PUBLISH"),
        client.recv().await.expect("PINGRESP"),
    ];
    rest.sort_by_key(|packet| packet.packet_type);
    assert_eq!(rest[0].publish().1, b"echo");
    assert_eq!(rest[1].packet_type, PINGRESP);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_publish_and_pingreq_written_one_byte_at_a_time_are_all_processed() {
    let broker = TestBroker::start().await;
    let mut subscriber = subscribed(&broker, "byte-watcher", "f/bytes").await;

    let mut wire = connect_bytes(&ConnectOptions::new("byte-by-byte"));
    wire.extend(publish_bytes(
        "f/bytes",
        QoS::AtLeastOnce,
        3,
        b"dribbled",
        false,
    ));
    wire.extend_from_slice(&PINGREQ);
    let mut client = RawClient::connect(broker.addr).await;
    for byte in &wire {
        client.stream.write_all(&[*byte]).await.unwrap();
        client.stream.flush().await.unwrap();
    }

    let connack = client.recv().await.expect("CONNACK");
    assert_eq!(
        (connack.packet_type, connack.body.as_slice()),
        (CONNACK, &[0, 0][..])
    );
    // The PUBACK waits for the router to take the message; the PINGRESP does
    // not, so either may come first (only PUBACKs are ordered among
    // themselves, [MQTT-4.6.0-2]).
    let mut rest = [
        client.recv().await.expect("PUBACK"),
        client.recv().await.expect("PINGRESP"),
    ];
    rest.sort_by_key(|packet| packet.packet_type);
    assert_eq!(
        (rest[0].packet_type, rest[0].body.as_slice()),
        (PUBACK, &[0, 3][..])
    );
    assert_eq!(rest[1].packet_type, PINGRESP);
    let (_, payload, _, _) = subscriber.recv().await.expect("the PUBLISH").publish();
    assert_eq!(payload, b"dribbled");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcing_200_mb_closes_at_once_and_spares_other_clients() {
    let broker = TestBroker::start().await;
    let mut bystander = subscribed(&broker, "bystander", "f/big").await;
    let mut client = connected(&broker, "boaster").await;

    let mut header = vec![0x30];
    header.extend(remaining_length(200 * 1024 * 1024));
    let sent = Instant::now();
    client.send(&header).await;

    assert!(
        client.closed_by_broker().await,
        "200 MB announced, connection kept"
    );
    assert!(
        sent.elapsed().as_secs_f64() < 1.0,
        "closed only after {:?}",
        sent.elapsed()
    );
    broker
        .wait_metrics("packets_too_large = 1", |m| m.packets_too_large == 1)
        .await;
    bystander_still_receives(&broker, &mut bystander, "f/big").await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_connect_is_refused_before_the_handshake() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect(broker.addr).await;
    let mut header = vec![0x10];
    header.extend(remaining_length(200 * 1024 * 1024));
    client.send(&header).await;

    assert!(client.closed_by_broker().await);
    broker
        .wait_metrics("packets_too_large = 1", |m| m.packets_too_large == 1)
        .await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_over_max_packet_size_closes_only_that_client() {
    let mut settings = settings();
    settings.limits.max_packet_size = 1024;
    let broker = TestBroker::start_with(settings).await;
    let mut bystander = subscribed(&broker, "bystander", "f/limit").await;
    let mut client = connected(&broker, "too-big").await;

    // Exactly the limit, fixed header included: delivered.
    let overhead = publish_bytes("f/limit", QoS::AtMostOnce, 0, &[0u8; 1000], false).len() - 1000;
    let exactly = publish_bytes(
        "f/limit",
        QoS::AtMostOnce,
        0,
        &vec![1u8; 1024 - overhead],
        false,
    );
    assert_eq!(exactly.len(), 1024);
    client.send(&exactly).await;
    let (_, payload, _, _) = bystander
        .recv()
        .await
        .expect("the 1024-byte PUBLISH")
        .publish();
    assert_eq!(payload.len(), 1024 - overhead);
    ping(&mut client).await;

    // Over the limit: the connection ends, nothing is delivered.
    client
        .try_send(&publish_bytes(
            "f/limit",
            QoS::AtMostOnce,
            0,
            &[2u8; 2000],
            false,
        ))
        .await;
    assert!(
        client.closed_by_broker().await,
        "a 2000-byte packet over a 1024-byte limit"
    );
    broker
        .wait_metrics("packets_too_large = 1", |m| m.packets_too_large == 1)
        .await;
    bystander_still_receives(&broker, &mut bystander, "f/limit").await;
    broker.stop().await;
}

// [MQTT-2.2.3] the remaining length is at most four bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_2_2_3_five_byte_remaining_length_closes() {
    let broker = TestBroker::start().await;
    let mut client = connected(&broker, "long-length").await;
    client.send(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).await;

    assert!(client.closed_by_broker().await);
    broker
        .wait_metrics("protocol_errors = 1", |m| m.protocol_errors == 1)
        .await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_connect_closes_only_that_connection() {
    let broker = TestBroker::start().await;
    let mut bystander = subscribed(&broker, "bystander", "f/garbage").await;
    let mut client = connected(&broker, "confused").await;

    // An HTTP request on the MQTT port: 'G' (0x47) reads as a PUBACK with
    // reserved flags set, 'E' as a length of 69 bytes.
    let garbage = b"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8.5.0\r\n\
                    Accept: */*\r\nConnection: keep-alive\r\n\r\n";
    client.try_send(garbage).await;

    assert!(
        client.closed_by_broker().await,
        "garbage kept the connection open"
    );
    broker
        .wait_metrics("protocol_errors = 1", |m| m.protocol_errors == 1)
        .await;
    bystander_still_receives(&broker, &mut bystander, "f/garbage").await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_packet_then_eof_does_not_disturb_others() {
    let broker = TestBroker::start().await;
    let mut bystander = subscribed(&broker, "bystander", "f/half").await;
    let mut client = connected(&broker, "half").await;

    let whole = publish_bytes("f/half", QoS::AtMostOnce, 0, &[7u8; 100], false);
    client.send(&whole[..whole.len() / 2]).await;
    client.stream.shutdown().await.unwrap();

    assert!(client.closed_by_broker().await);
    broker
        .wait_metrics("the half-sender gone", |m| m.connections_current == 1)
        .await;
    // The half PUBLISH was never delivered: the next PUBLISH is the first.
    bystander_still_receives(&broker, &mut bystander, "f/half").await;
    assert_eq!(
        broker.metrics().protocol_errors,
        0,
        "EOF is not a protocol error"
    );
    broker.stop().await;
}

// [MQTT-2.2.1] a client must not send packet types only the server sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_2_2_1_server_only_packet_types_from_a_client_close() {
    let broker = TestBroker::start().await;
    let server_only: [(&str, &[u8]); 4] = [
        ("CONNACK", &[0x20, 0x02, 0x00, 0x00]),
        ("SUBACK", &[0x90, 0x03, 0x00, 0x01, 0x00]),
        ("UNSUBACK", &[0xB0, 0x02, 0x00, 0x01]),
        ("PINGRESP", &[0xD0, 0x00]),
    ];
    for (n, (name, wire)) in (1u64..).zip(server_only) {
        let mut client = connected(&broker, name).await;
        client.send(wire).await;
        assert!(
            client.closed_by_broker().await,
            "{name} from a client kept the connection"
        );
        broker
            .wait_metrics(&format!("protocol_errors = {n}"), |m| {
                m.protocol_errors == n
            })
            .await;
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_valid_publish_is_delivered_intact() {
    let broker = TestBroker::start().await;
    let mut subscriber = subscribed(&broker, "big-reader", "f/large").await;
    let mut publisher = connected(&broker, "big-writer").await;

    let mut payload = BytesMut::with_capacity(500 * 1024);
    for n in 0..(500 * 1024 / 4) as u32 {
        payload.put_u32(n);
    }
    publisher
        .send(&publish_bytes(
            "f/large",
            QoS::AtLeastOnce,
            1,
            &payload,
            false,
        ))
        .await;
    let puback = publisher.recv().await.expect("PUBACK");
    assert_eq!(puback.packet_type, PUBACK);

    let packet = subscriber.recv().await.expect("the 500 KB PUBLISH");
    assert_eq!(packet.packet_type, PUBLISH);
    let (topic, received, _, _) = packet.publish();
    assert_eq!(topic, "f/large");
    assert_eq!(received.len(), payload.len());
    assert!(received == payload.as_ref(), "payload corrupted in transit");
    broker.stop().await;
}
