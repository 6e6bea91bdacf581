//! Proves the broker enforces the client's keepalive: a silent client is
//! closed after 1.5 x its keepalive, any packet (not only PINGREQ) pushes the
//! deadline, and a keepalive of 0 turns the timer off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tidemq_protocol::QoS;
use tidemq_tests::{publish_bytes, settings, ConnectOptions, RawClient, TestBroker};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

const PINGREQ: [u8; 2] = [0xC0, 0x00];
const PINGRESP: u8 = 13;
/// How often the lively clients below send something: a third of 1.5 s.
const TICK: Duration = Duration::from_millis(500);

async fn keepalive_client(broker: &TestBroker, client_id: &str, keep_alive: u16) -> RawClient {
    let options = ConnectOptions {
        keep_alive,
        ..ConnectOptions::new(client_id)
    };
    RawClient::connected(broker.addr, &options).await.0
}

async fn ping(client: &mut RawClient) {
    client.send(&PINGREQ).await;
    let answer = client.recv().await.expect("PINGRESP");
    assert_eq!(
        answer.packet_type, PINGRESP,
        "expected PINGRESP, got {answer:?}"
    );
}

/// True when nothing arrives and the socket stays open for `quiet`.
async fn stays_open_and_silent(client: &mut RawClient, quiet: Duration) -> bool {
    let mut scratch = [0u8; 64];
    tokio::time::timeout(quiet, client.stream.read(&mut scratch))
        .await
        .is_err()
}

// [MQTT-3.1.2-24] the server disconnects a client that sends nothing for
// one and a half times its keepalive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_24_silent_client_is_closed_after_one_and_a_half_keepalives() {
    let broker = TestBroker::start().await;
    let mut client = keepalive_client(&broker, "silent", 1).await;
    let connected = Instant::now();

    assert!(
        client.closed_by_broker().await,
        "a silent client must be closed"
    );
    let elapsed = connected.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1200),
        "closed after {elapsed:?}, before 1.5 x keepalive"
    );
    assert!(
        elapsed <= Duration::from_millis(2500),
        "closed after {elapsed:?}, long after 1.5 x keepalive"
    );
    broker
        .wait_metrics("keepalive_timeouts = 1", |m| m.keepalive_timeouts == 1)
        .await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingreq_every_half_second_keeps_a_one_second_keepalive_open() {
    let broker = TestBroker::start().await;
    let mut client = keepalive_client(&broker, "pinger", 1).await;

    for _ in 0..6 {
        tokio::time::sleep(TICK).await;
        ping(&mut client).await;
    }

    ping(&mut client).await;
    assert_eq!(broker.metrics().keepalive_timeouts, 0);
    assert_eq!(broker.metrics().connections_current, 1);
    broker.stop().await;
}

// [MQTT-3.1.2-24] names the keepalive a client asks for; 0 turns it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_zero_never_times_out() {
    let mut settings = settings();
    // Only the CONNECT has to arrive in time; silence after it is no timeout.
    settings.connections.connect_timeout_ms = 500;
    let broker = TestBroker::start_with(settings).await;
    let mut client = keepalive_client(&broker, "no-keepalive", 0).await;

    assert!(
        stays_open_and_silent(&mut client, Duration::from_millis(2200)).await,
        "a client with keepalive 0 was closed"
    );

    ping(&mut client).await;
    let metrics = broker.metrics();
    assert_eq!(
        (metrics.keepalive_timeouts, metrics.connect_timeouts),
        (0, 0),
        "{metrics:?}"
    );
    broker.stop().await;
}

// [MQTT-3.1.2-24] counts any control packet, not only PINGREQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_24_any_packet_resets_the_keepalive_timer() {
    let broker = TestBroker::start().await;
    let mut client = keepalive_client(&broker, "publisher", 1).await;

    // QoS 0 PUBLISHes to a topic nobody reads: the broker answers nothing,
    // so the only traffic is the client's.
    for n in 0..6u8 {
        tokio::time::sleep(TICK).await;
        client
            .send(&publish_bytes(
                "nobody/listens",
                QoS::AtMostOnce,
                0,
                &[n],
                false,
            ))
            .await;
    }
    ping(&mut client).await;
    assert_eq!(broker.metrics().keepalive_timeouts, 0);

    // The timer was armed all along: silence now still ends the connection.
    assert!(
        client.closed_by_broker().await,
        "keepalive no longer enforced"
    );
    broker
        .wait_metrics("keepalive_timeouts = 1", |m| m.keepalive_timeouts == 1)
        .await;
    broker.stop().await;
}
