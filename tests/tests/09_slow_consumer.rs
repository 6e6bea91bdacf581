//! Proves the slow-consumer policy: a subscriber that stops reading costs
//! only itself. Its QoS 0 messages are dropped and counted once its queues
//! are full, while a healthy subscriber of the same topic gets every message
//! and the broker keeps answering; and a subscriber whose socket makes no
//! progress for `write_timeout_ms` is closed as abnormal, so its will is
//! published; a stalled connection can still be taken over.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use tidemq_protocol::QoS;
use tidemq_tests::{
    connect_bytes, publish_bytes, settings, subscribe_bytes, ConnectOptions, RawClient, TestBroker,
    WAIT,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

const PINGREQ: [u8; 2] = [0xC0, 0x00];
const PUBLISH: u8 = 3;
const SUBACK: u8 = 9;
const PINGRESP: u8 = 13;
/// Receive buffer of a subscriber that never reads (the kernel rounds it up
/// a little): its socket is full after a few KB.
const TINY_RECV_BUFFER: u32 = 4096;

/// Connects with a tiny receive buffer, subscribes `filter` at QoS 0, and
/// returns the socket, which the caller then never reads.
async fn never_reading_subscriber(
    addr: SocketAddr,
    options: &ConnectOptions<'_>,
    filter: &str,
) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(TINY_RECV_BUFFER).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream.write_all(&connect_bytes(options)).await.unwrap();
    let mut connack = [0u8; 4];
    tokio::time::timeout(WAIT, stream.read_exact(&mut connack))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "CONNACK accepted");
    stream
        .write_all(&subscribe_bytes(1, &[(filter, QoS::AtMostOnce)]))
        .await
        .unwrap();
    let mut suback = [0u8; 5];
    tokio::time::timeout(WAIT, stream.read_exact(&mut suback))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        suback,
        [0x90, 0x03, 0x00, 0x01, 0x00],
        "SUBACK granted QoS 0"
    );
    stream
}

async fn subscribed(broker: &TestBroker, client_id: &str, filter: &str) -> RawClient {
    let (mut client, _) = RawClient::connected(broker.addr, &ConnectOptions::new(client_id)).await;
    client
        .send(&subscribe_bytes(1, &[(filter, QoS::AtMostOnce)]))
        .await;
    let suback = client.recv().await.expect("SUBACK");
    assert_eq!(suback.packet_type, SUBACK);
    client
}

async fn assert_responsive(broker: &TestBroker) {
    let (mut client, _) = RawClient::connected(broker.addr, &ConnectOptions::new("newcomer")).await;
    client.send(&PINGREQ).await;
    let answer = client.recv().await.expect("PINGRESP from a busy broker");
    assert_eq!(answer.packet_type, PINGRESP);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_qos0_subscriber_loses_messages_alone() {
    const MESSAGES: usize = 20_000;
    /// Messages per write; below `max_queued_messages`, so the healthy
    /// subscriber's mailbox never overflows while it keeps up.
    const BURST: usize = 50;
    let mut settings = settings();
    settings.limits.max_queued_messages = 100;
    settings.limits.outbound_queue = 16;
    let broker = TestBroker::start_with(settings).await;

    let stalled =
        never_reading_subscriber(broker.addr, &ConnectOptions::new("stalled"), "slow/t").await;
    let mut healthy = subscribed(&broker, "healthy", "slow/t").await;
    let (count_tx, mut count_rx) = watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut count = 0;
        while count < MESSAGES {
            let Some(packet) = healthy.recv().await else {
                break;
            };
            assert_eq!(packet.packet_type, PUBLISH);
            let (_, payload, _, _) = packet.publish();
            assert_eq!(payload.len(), 1024);
            count += 1;
            count_tx.send_replace(count);
        }
        count
    });

    let (mut publisher, _) =
        RawClient::connected(broker.addr, &ConnectOptions::new("firehose")).await;
    let one = publish_bytes("slow/t", QoS::AtMostOnce, 0, &[0x5A; 1024], false);
    let burst: Vec<u8> = one
        .iter()
        .copied()
        .cycle()
        .take(one.len() * BURST)
        .collect();
    for sent in (BURST..=MESSAGES).step_by(BURST) {
        publisher.send(&burst).await;
        // Pace by the healthy reader, which the stalled one must not slow.
        let wait = tokio::time::timeout(WAIT, count_rx.wait_for(|&received| received >= sent));
        let caught_up = matches!(wait.await, Ok(Ok(_)));
        if !caught_up {
            panic!(
                "healthy subscriber stuck at {} of {sent}",
                *count_rx.borrow()
            );
        }
    }

    assert_eq!(
        reader.await.unwrap(),
        MESSAGES,
        "the healthy subscriber got every message"
    );
    broker
        .wait_metrics("dropped_queue_full > 0", |m| m.dropped_queue_full > 0)
        .await;
    assert_responsive(&broker).await;
    let metrics = broker.metrics();
    assert_eq!(metrics.write_timeouts, 0, "{metrics:?}");
    assert!(metrics.dropped_queue_full < MESSAGES as u64, "{metrics:?}");
    // Closed first: at shutdown the broker gives a stalled writer up to its
    // grace period to flush, which this test need not sit through.
    drop(stalled);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_whose_socket_stalls_past_the_write_timeout_is_closed_and_its_will_sent() {
    const PAYLOAD: usize = 64 * 1024;
    /// 16 MB: more than any socket buffer between the broker and the peer.
    const MESSAGES: usize = 256;
    let mut settings = settings();
    settings.limits.write_timeout_ms = 500;
    let broker = TestBroker::start_with(settings).await;
    let mut watcher = subscribed(&broker, "watcher", "will/stalled").await;
    let options = ConnectOptions {
        will: Some(("will/stalled", b"stalled consumer gone", 0, false)),
        ..ConnectOptions::new("stalled")
    };
    let stalled = never_reading_subscriber(broker.addr, &options, "bulk/t").await;

    let (mut publisher, _) = RawClient::connected(broker.addr, &ConnectOptions::new("bulk")).await;
    let message = publish_bytes("bulk/t", QoS::AtMostOnce, 0, &[0xA5; PAYLOAD], false);
    for _ in 0..MESSAGES {
        if broker.metrics().write_timeouts > 0 {
            break;
        }
        publisher.send(&message).await;
    }

    broker
        .wait_metrics("write_timeouts >= 1", |m| m.write_timeouts >= 1)
        .await;
    let will = watcher
        .recv()
        .await
        .expect("the will of the stalled subscriber");
    let (topic, payload, _, _) = will.publish();
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("will/stalled", &b"stalled consumer gone"[..])
    );
    assert_eq!(broker.metrics().wills_published, 1);
    assert_responsive(&broker).await;
    drop(stalled);
    broker.stop().await;
}

// [MQTT-3.1.4-2] a stalled connection does not block the takeover of its
// client id: the old connection is closed however full its queues are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_can_be_taken_over() {
    let mut settings = settings();
    settings.limits.max_queued_messages = 100;
    settings.limits.outbound_queue = 16;
    let broker = TestBroker::start_with(settings).await;
    let stalled =
        never_reading_subscriber(broker.addr, &ConnectOptions::new("stuck"), "jam/t").await;

    let (mut publisher, _) =
        RawClient::connected(broker.addr, &ConnectOptions::new("jammer")).await;
    let message = publish_bytes("jam/t", QoS::AtMostOnce, 0, &[0x11; 16 * 1024], false);
    for _ in 0..1024 {
        if broker.metrics().dropped_queue_full > 0 {
            break;
        }
        publisher.send(&message).await;
    }
    broker
        .wait_metrics("the stalled subscriber backed up", |m| {
            m.dropped_queue_full > 0
        })
        .await;

    let (mut successor, _) = RawClient::connected(broker.addr, &ConnectOptions::new("stuck")).await;
    broker
        .wait_metrics("takeovers = 1", |m| m.takeovers == 1)
        .await;
    successor.send(&PINGREQ).await;
    assert_eq!(
        successor.recv().await.expect("PINGRESP").packet_type,
        PINGRESP
    );
    drop(stalled);
    broker.stop().await;
}

/// Publishes 10 QoS 1 messages to `slow/t` in one write and returns how many
/// PUBACKs came at once (the rest wait for the slow subscriber).
async fn burst_of_ten(publisher: &mut RawClient) -> u16 {
    let mut burst = Vec::new();
    for n in 1..=10u16 {
        burst.extend(publish_bytes(
            "slow/t",
            QoS::AtLeastOnce,
            n,
            &n.to_be_bytes(),
            false,
        ));
    }
    publisher.send(&burst).await;
    // The three queued ones surely come (each within WAIT); a fourth may.
    let mut acked = Vec::new();
    for _ in 0..3 {
        let ack = publisher
            .recv()
            .await
            .expect("a PUBACK for a queued message");
        assert_eq!(ack.packet_type, 4, "PUBACK expected: {ack:?}");
        acked.push(u16::from_be_bytes([ack.body[0], ack.body[1]]));
    }
    while let Some(ack) = publisher.recv_within(tidemq_tests::QUIET).await {
        assert_eq!(ack.packet_type, 4, "PUBACK expected: {ack:?}");
        acked.push(u16::from_be_bytes([ack.body[0], ack.body[1]]));
    }
    // Three queued, plus one in flight if the subscriber's session took it
    // before the rest arrived.
    let immediate = acked.len() as u16;
    assert!(
        (3..=4).contains(&immediate),
        "acknowledged at once: {acked:?}"
    );
    assert_eq!(
        acked,
        (1..=immediate).collect::<Vec<_>>(),
        "[MQTT-4.6.0-2] in order"
    );
    immediate
}

/// Reads the ten messages in order, acknowledging each.
async fn read_ten_in_order(subscriber: &mut RawClient) {
    for n in 1..=10u16 {
        let (_, payload, qos, packet_id) = subscriber.next_publish().await.publish();
        assert_eq!((payload, qos), (n.to_be_bytes().to_vec(), QoS::AtLeastOnce));
        let ack = tidemq_protocol::Packet::PubAck(tidemq_protocol::Ack::new(tidemq_tests::id(
            packet_id.unwrap(),
        )));
        subscriber.send(&tidemq_tests::packet_bytes(&ack)).await;
    }
}

/// A QoS 1 subscriber of `slow/t` that has not read yet, and a publisher
/// that has just sent it ten messages; returns both and the number of
/// PUBACKs the publisher got at once.
async fn subscriber_behind_a_burst(
    broker: &TestBroker,
    options: &ConnectOptions<'_>,
) -> (RawClient, RawClient, u16) {
    let (mut subscriber, _) = RawClient::connected(broker.addr, options).await;
    subscriber
        .subscribe_granted(1, &[("slow/t", QoS::AtLeastOnce)])
        .await;
    let (mut publisher, _) =
        RawClient::connected(broker.addr, &ConnectOptions::new("pub-q1")).await;
    let immediate = burst_of_ten(&mut publisher).await;
    (subscriber, publisher, immediate)
}

fn slow_settings(slow_timeout_ms: u64) -> tidemq::Settings {
    let mut config = settings();
    config.limits.max_queued_messages = 3;
    config.limits.max_inflight = 1;
    config.limits.slow_subscriber_timeout_ms = slow_timeout_ms;
    config
}

/// An online subscriber that falls behind on QoS 1 loses nothing that was
/// acknowledged: beyond `max_queued_messages` the broker holds the message
/// and delays the publisher's PUBACK until the subscriber takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_beyond_the_queue_limit_is_held_and_the_publisher_waits() {
    let broker = TestBroker::start_with(slow_settings(60_000)).await;
    let (mut subscriber, mut publisher, immediate) =
        subscriber_behind_a_burst(&broker, &ConnectOptions::new("slow-q1")).await;
    // While its acknowledgements wait, the publisher is still read and
    // answered [MQTT-3.1.2-24]: a PINGREQ gets its PINGRESP at once.
    publisher.ping().await;

    read_ten_in_order(&mut subscriber).await;
    for n in immediate + 1..=10 {
        let ack = publisher.recv().await.expect("the held PUBACKs follow");
        assert_eq!(ack.wire_bytes(), [0x40, 2, 0, n as u8]);
    }
    let metrics = broker.metrics();
    assert_eq!(
        metrics.dropped_queue_full, 0,
        "nothing acknowledged was dropped"
    );
    assert_eq!(metrics.held_for_slow_subscribers, u64::from(10 - immediate));
    assert_eq!(metrics.slow_subscriber_disconnects, 0);
}

/// A subscriber that stops taking QoS 1 messages cannot hold publishers for
/// long: after `slow_subscriber_timeout_ms` over its limit it is closed, the
/// publishers get their PUBACKs, and its persistent session keeps every
/// message for its return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_qos1_subscriber_is_closed_and_finds_its_messages_on_return() {
    let broker = TestBroker::start_with(slow_settings(1_000)).await;
    let mut options = ConnectOptions::new("stalled-q1");
    options.clean_session = false;
    let (mut subscriber, mut publisher, immediate) =
        subscriber_behind_a_burst(&broker, &options).await;

    assert!(
        subscriber.closed_by_broker().await,
        "the stalled subscriber is closed"
    );
    for n in immediate + 1..=10 {
        let ack = publisher
            .recv()
            .await
            .expect("released when the subscriber went");
        assert_eq!(ack.wire_bytes(), [0x40, 2, 0, n as u8]);
    }
    broker
        .wait_metrics("slow_subscriber_disconnects", |m| {
            m.slow_subscriber_disconnects == 1
        })
        .await;
    broker
        .wait_metrics("the session offline", |m| m.connections_current == 1)
        .await;

    let (mut back, present) = RawClient::connected(broker.addr, &options).await;
    assert!(present);
    read_ten_in_order(&mut back).await;
    assert_eq!(broker.metrics().dropped_queue_full, 0);
}

/// A client subscribed to the topic it publishes to, with tiny limits: its
/// PUBACKs wait on its own mailbox, which drains only through the PUBACKs it
/// sends for what it receives. The session keeps reading those, so the loop
/// never locks up and every message arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_publishing_to_its_own_subscription_never_locks_up() {
    let mut config = slow_settings(60_000);
    config.limits.max_inflight = 10;
    let broker = TestBroker::start_with(config).await;
    let mut client =
        tidemq_tests::Client::connect(tidemq_tests::mqtt_options(&broker, "echo")).await;
    client.subscribe("self/t", rumqttc::QoS::AtLeastOnce).await;
    for n in 0..300u32 {
        client
            .client
            .publish(
                "self/t",
                rumqttc::QoS::AtLeastOnce,
                false,
                n.to_be_bytes().to_vec(),
            )
            .await
            .unwrap();
    }
    for n in 0..300u32 {
        let publish = client.next_publish().await;
        assert_eq!(publish.payload.as_ref(), n.to_be_bytes());
    }
    assert_eq!(broker.metrics().dropped_queue_full, 0);
}
