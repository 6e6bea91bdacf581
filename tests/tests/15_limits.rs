//! Proves that what one client can make the broker hold is capped, and that
//! its attack does not delay anyone else: each test replays one hostile
//! pattern (a SUBSCRIBE repeating `#`, a SUBSCRIBE scanning the retained
//! store, deep filters, a retained flood) while a live publisher and
//! subscriber time their round trips, and reads the broker's counted
//! resources from its metrics; then each cap is tried at its limit and one
//! over, as a client sees it on the wire.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use tidemq::Settings;
use tidemq_protocol::QoS;
use tidemq_tests::{
    connect_bytes, publish_bytes, settings, subscribe_bytes, ConnectOptions, LivePair, RawClient,
    TestBroker, WAIT,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const SUBACK: u8 = 9;
const PUBLISH: u8 = 3;

/// A client whose socket has a tiny receive buffer and that never reads
/// after its CONNACK.
async fn never_reading(addr: SocketAddr, client_id: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(&connect_bytes(&ConnectOptions::new(client_id)))
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    tokio::time::timeout(WAIT, stream.read_exact(&mut connack))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    stream
}

/// Stores `count` retained messages `prefix/<i>` of `size` bytes at QoS 0,
/// and waits until the router has them.
async fn store_retained(broker: &TestBroker, prefix: &str, count: usize, size: usize) {
    let (mut publisher, _) =
        RawClient::connected(broker.addr, &ConnectOptions::new("storer")).await;
    let payload = vec![b'r'; size];
    let mut batch = Vec::new();
    for i in 0..count {
        batch.extend(publish_bytes(
            &format!("{prefix}/{i}"),
            QoS::AtMostOnce,
            0,
            &payload,
            true,
        ));
        if batch.len() > 256 * 1024 {
            publisher.send(&batch).await;
            batch.clear();
        }
    }
    publisher.send(&batch).await;
    publisher.ping().await;
}

/// Reads a SUBACK of `count` return codes, however large.
async fn read_suback(client: &mut RawClient, within: Duration) -> Vec<u8> {
    let suback = client.recv_within(within).await.expect("a SUBACK in time");
    assert_eq!(suback.packet_type, SUBACK, "{suback:?}");
    suback.body[2..].to_vec()
}

/// Issue 7, row 1: one 1 MiB SUBSCRIBE repeating `#` 262,142 times, with
/// 1,000 retained messages of 10 KB stored, from a client that never reads.
/// Before: RSS past 4 GB in 14 s and 34 of 35 live messages lost.
#[tokio::test]
async fn attack_a_subscribe_repeating_hash_from_a_client_that_never_reads() {
    let broker = TestBroker::start().await;
    store_retained(&broker, "ret", 1000, 10 * 1024).await;
    let stored = broker.metrics().memory_accounted_bytes;
    let mut live = LivePair::start(broker.addr, "live/rtt").await;

    let mut attacker = never_reading(broker.addr, "attacker").await;
    let filters = vec![("#", QoS::AtMostOnce); 262_142];
    let packet = subscribe_bytes(1, &filters);
    assert!(packet.len() <= 1024 * 1024, "fits max_packet_size");
    attacker.write_all(&packet).await.unwrap();
    broker
        .wait_metrics("the attacker's subscription", |m| {
            m.subscriptions_current == 2
        })
        .await;

    live.assert_live(20, "the # flood").await;
    // A new subscriber is answered at once and gets each retained message.
    let (mut fresh, _) = RawClient::connected(broker.addr, &ConnectOptions::new("fresh")).await;
    fresh
        .send(&subscribe_bytes(7, &[("ret/+", QoS::AtMostOnce)]))
        .await;
    assert_eq!(read_suback(&mut fresh, WAIT).await, [0]);
    for _ in 0..1000 {
        assert_eq!(fresh.next_publish().await.packet_type, PUBLISH);
    }
    let held = broker
        .metrics()
        .memory_accounted_bytes
        .saturating_sub(stored);
    assert!(
        held < 2 * 1024 * 1024,
        "the attack holds {held} bytes beyond the retained store; each retained message is queued once and shared"
    );
    drop(attacker);
    broker.stop().await;
}

/// Issue 7, row 2: 20,000 retained messages, then one SUBSCRIBE of
/// 174,761 x `z/#`, which matches nothing. Before: the router scanned the
/// whole store per filter and stalled everyone for 65-75 s.
#[tokio::test]
async fn attack_a_subscribe_that_would_scan_the_retained_store() {
    let broker = TestBroker::start().await;
    store_retained(&broker, "r", 20_000, 10).await;
    let mut live = LivePair::start(broker.addr, "live/rtt").await;
    let (mut attacker, _) =
        RawClient::connected(broker.addr, &ConnectOptions::new("scanner")).await;
    let filters = vec![("z/#", QoS::AtMostOnce); 174_761];
    let packet = subscribe_bytes(1, &filters);
    assert!(packet.len() <= 1024 * 1024, "fits max_packet_size");
    attacker.send(&packet).await;
    let codes = read_suback(&mut attacker, WAIT).await;
    assert_eq!(codes.len(), 174_761);
    assert!(codes.iter().all(|&code| code == 0));
    live.assert_live(20, "the retained scan").await;
    attacker.ping().await;
    broker.stop().await;
}

/// A filter of `levels` levels, distinct by its last level.
fn deep_filter(levels: usize, n: usize) -> String {
    let mut filter = "a/".repeat(levels - 1);
    filter.push_str(&n.to_string());
    filter
}

/// Issue 7, row 4: 10,000 filters of 200 levels from one client. Before:
/// 1.0 GB held. Now every one is over `max_topic_levels` (32 by default)
/// and refused with 0x80; nothing is held.
#[tokio::test]
async fn attack_ten_thousand_filters_of_200_levels() {
    let broker = TestBroker::start().await;
    let mut live = LivePair::start(broker.addr, "live/rtt").await;
    let (mut attacker, _) = RawClient::connected(broker.addr, &ConnectOptions::new("deep")).await;
    let per_packet = 2000;
    for packet in 0..5 {
        let filters: Vec<String> = (0..per_packet)
            .map(|i| deep_filter(200, packet * per_packet + i))
            .collect();
        let filters: Vec<(&str, QoS)> = filters
            .iter()
            .map(|f| (f.as_str(), QoS::AtMostOnce))
            .collect();
        attacker
            .send(&subscribe_bytes(packet as u16 + 1, &filters))
            .await;
        let codes = read_suback(&mut attacker, WAIT).await;
        assert_eq!(
            codes,
            vec![0x80; per_packet],
            "[MQTT-3.9.3-2] 0x80 per refused filter"
        );
        live.assert_live(2, "deep filters").await;
    }
    let metrics = broker.metrics();
    assert_eq!(metrics.topics_refused_limit, 10_000);
    assert_eq!(
        metrics.subscriptions_current, 1,
        "only the live subscriber's"
    );
    broker.stop().await;
}

/// The same with filters within the level cap: the client gets
/// `max_subscriptions_per_client` of them and 0x80 for the rest.
#[tokio::test]
async fn max_subscriptions_per_client_at_the_limit_and_one_over() {
    let mut settings = settings();
    settings.limits.max_subscriptions_per_client = 3;
    let broker = TestBroker::start_with(settings).await;
    let (mut client, _) = RawClient::connected(broker.addr, &ConnectOptions::new("c")).await;
    client
        .subscribe_granted(1, &[("a", QoS::AtMostOnce), ("b", QoS::AtLeastOnce)])
        .await;
    client
        .send(&subscribe_bytes(
            2,
            &[("c", QoS::AtMostOnce), ("d", QoS::AtMostOnce)],
        ))
        .await;
    assert_eq!(read_suback(&mut client, WAIT).await, [0x00, 0x80]);
    // [MQTT-3.8.4-3] a subscription replaced takes no new room.
    client
        .subscribe_granted(3, &[("a", QoS::ExactlyOnce)])
        .await;
    assert_eq!(broker.metrics().subscriptions_refused_limit, 1);
    // The refused filter delivers nothing; the granted ones do.
    let (mut publisher, _) = RawClient::connected(broker.addr, &ConnectOptions::new("p")).await;
    publisher
        .publish_acked("d", QoS::AtMostOnce, 0, b"no", false)
        .await;
    publisher
        .publish_acked("c", QoS::AtMostOnce, 0, b"yes", false)
        .await;
    let (topic, payload, _, _) = client.next_publish().await.publish();
    assert_eq!((topic.as_str(), payload.as_slice()), ("c", &b"yes"[..]));
    broker.stop().await;
}

fn topic_caps(levels: usize, len: usize) -> Settings {
    let mut settings = settings();
    settings.limits.max_topic_levels = levels;
    settings.limits.max_topic_len = len;
    settings
}

#[tokio::test]
async fn max_topic_levels_at_the_limit_and_one_over() {
    let broker = TestBroker::start_with(topic_caps(3, 1024)).await;
    let (mut client, _) = RawClient::connected(broker.addr, &ConnectOptions::new("c")).await;
    client
        .send(&subscribe_bytes(
            1,
            &[("a/b/c", QoS::AtMostOnce), ("a/b/c/d", QoS::AtMostOnce)],
        ))
        .await;
    assert_eq!(read_suback(&mut client, WAIT).await, [0x00, 0x80]);
    client
        .publish_acked("a/b/c", QoS::AtMostOnce, 0, b"x", false)
        .await;
    assert_eq!(client.next_publish().await.publish().0, "a/b/c");
    // 3.1.1 has no way to refuse one PUBLISH but closing the connection.
    client
        .send(&publish_bytes("a/b/c/d", QoS::AtMostOnce, 0, b"x", false))
        .await;
    client.assert_closed_without_reply().await;
    assert_eq!(broker.metrics().topics_refused_limit, 2);
    broker.stop().await;
}

#[tokio::test]
async fn max_topic_len_at_the_limit_and_one_over() {
    let broker = TestBroker::start_with(topic_caps(32, 8)).await;
    let (mut client, _) = RawClient::connected(broker.addr, &ConnectOptions::new("c")).await;
    client
        .send(&subscribe_bytes(
            1,
            &[
                ("12345678", QoS::AtMostOnce),
                ("123456789", QoS::AtMostOnce),
            ],
        ))
        .await;
    assert_eq!(read_suback(&mut client, WAIT).await, [0x00, 0x80]);
    client
        .publish_acked("12345678", QoS::AtLeastOnce, 1, b"x", false)
        .await;
    assert_eq!(client.next_publish().await.publish().0, "12345678");
    client
        .send(&publish_bytes(
            "123456789",
            QoS::AtLeastOnce,
            2,
            b"x",
            false,
        ))
        .await;
    // The PUBACK of the delivery is owed by us; the broker sends nothing
    // for the refused PUBLISH before it closes.
    assert!(client.closed_by_broker().await);
    assert_eq!(broker.metrics().topics_refused_limit, 2);
    broker.stop().await;
}

/// Counts what a new `#` subscriber receives (retained only) until quiet.
async fn retained_seen(broker: &TestBroker, client_id: &str) -> usize {
    let (mut client, _) = RawClient::connected(broker.addr, &ConnectOptions::new(client_id)).await;
    client
        .send(&subscribe_bytes(1, &[("#", QoS::AtMostOnce)]))
        .await;
    assert_eq!(read_suback(&mut client, WAIT).await, [0]);
    let mut seen = 0;
    // The retained messages end where a ping's answer arrives.
    client.send(&[0xC0, 0x00]).await;
    loop {
        let packet = client.recv().await.expect("PUBLISH or PINGRESP");
        if packet.packet_type == 13 {
            return seen;
        }
        assert!(packet.retain(), "{packet:?}");
        seen += 1;
    }
}

/// A new retained topic beyond the cap is not stored, but it is delivered
/// to current subscribers and acknowledged as usual.
#[tokio::test]
async fn max_retained_messages_at_the_limit_and_one_over() {
    let mut settings = settings();
    settings.limits.max_retained_messages = 3;
    // `$SYS` counters are retained messages too; keep them out of the count.
    settings.sys.interval_secs = 0;
    let broker = TestBroker::start_with(settings).await;
    let (mut watcher, _) = RawClient::connected(broker.addr, &ConnectOptions::new("w")).await;
    watcher
        .subscribe_granted(1, &[("t/+", QoS::AtMostOnce)])
        .await;
    let (mut publisher, _) = RawClient::connected(broker.addr, &ConnectOptions::new("p")).await;
    for (i, topic) in ["t/1", "t/2", "t/3", "t/4"].iter().enumerate() {
        publisher
            .publish_acked(topic, QoS::AtLeastOnce, i as u16 + 1, b"v", true)
            .await;
        assert_eq!(watcher.next_publish().await.publish().0, *topic);
    }
    assert_eq!(retained_seen(&broker, "late").await, 3);
    let metrics = broker.metrics();
    assert_eq!(
        (
            metrics.retained_refused_limit,
            metrics.retained_messages_current
        ),
        (1, 3)
    );
    // Clearing one makes room again.
    publisher
        .publish_acked("t/1", QoS::AtMostOnce, 0, b"", true)
        .await;
    publisher
        .publish_acked("t/4", QoS::AtMostOnce, 0, b"v", true)
        .await;
    assert_eq!(retained_seen(&broker, "later").await, 3);
    broker.stop().await;
}

/// Issue 7, row 6: retained messages of 50 KB to distinct topics. Before:
/// all kept (1.15 GB for 20,000). Now `max_retained_bytes` caps them.
#[tokio::test]
async fn attack_a_retained_flood_is_capped_by_max_retained_bytes() {
    let mut settings = settings();
    let cap = 2 * 1024 * 1024;
    settings.limits.max_retained_bytes = cap;
    settings.sys.interval_secs = 0;
    let broker = TestBroker::start_with(settings).await;
    let mut live = LivePair::start(broker.addr, "live/rtt").await;
    store_retained(&broker, "big", 200, 50 * 1024).await;
    live.assert_live(10, "the retained flood").await;
    let metrics = broker.metrics();
    let one = "big/100".len() + 50 * 1024;
    assert_eq!(
        metrics.retained_messages_current as usize,
        cap / one,
        "{metrics:?}"
    );
    assert!(metrics.retained_bytes_current as usize <= cap);
    assert_eq!(metrics.retained_refused_limit as usize, 200 - cap / one);
    assert!(
        (metrics.memory_accounted_bytes as usize) < cap + 1024 * 1024,
        "{metrics:?}"
    );
    broker.stop().await;
}

/// `max_queued_bytes` beside `max_queued_messages`: an offline persistent
/// session keeps what fits in its bytes and drops the rest, counted.
#[tokio::test]
async fn max_queued_bytes_at_the_limit_and_one_over() {
    let mut settings = settings();
    // Each message weighs "q" + 9 bytes of payload = 10 bytes.
    settings.limits.max_queued_bytes = 30;
    let broker = TestBroker::start_with(settings).await;
    let mut options = ConnectOptions::new("away");
    options.clean_session = false;
    let (mut away, _) = RawClient::connected(broker.addr, &options).await;
    away.subscribe_granted(1, &[("q", QoS::AtLeastOnce)]).await;
    away.send(&[0xE0, 0x00]).await;
    assert!(away.closed_by_broker().await);
    let (mut publisher, _) = RawClient::connected(broker.addr, &ConnectOptions::new("p")).await;
    for i in 1..=4u16 {
        publisher
            .publish_acked(
                "q",
                QoS::AtLeastOnce,
                i,
                format!("message{i}").as_bytes(),
                false,
            )
            .await;
    }
    assert_eq!(broker.metrics().dropped_queue_full, 1);
    let (mut back, present) = RawClient::connected(broker.addr, &options).await;
    assert!(present);
    for i in 1..=3 {
        let (_, payload, _, id) = back.next_publish().await.publish();
        assert_eq!(payload, format!("message{i}").into_bytes());
        let [hi, lo] = id.unwrap().to_be_bytes();
        back.send(&[0x40, 0x02, hi, lo]).await;
    }
    back.ping().await;
    broker.stop().await;
}

/// More retained messages than a mailbox and a window hold: they arrive
/// at the pace the client acknowledges them, every one exactly once.
#[tokio::test]
async fn retained_messages_are_streamed_to_a_new_subscription() {
    let mut settings = settings();
    settings.limits.max_queued_messages = 10;
    settings.limits.max_inflight = 5;
    let broker = TestBroker::start_with(settings).await;
    store_retained(&broker, "s", 1000, 8).await;
    let (mut client, _) = RawClient::connected(broker.addr, &ConnectOptions::new("c")).await;
    client
        .send(&subscribe_bytes(1, &[("s/#", QoS::AtLeastOnce)]))
        .await;
    assert_eq!(
        read_suback(&mut client, WAIT).await,
        [1],
        "[MQTT-3.8.4-1] SUBACK first"
    );
    let mut topics = std::collections::BTreeSet::new();
    while topics.len() < 1000 {
        let (topic, _, qos, id) = client.next_publish().await.publish();
        assert_eq!(qos, QoS::AtMostOnce, "stored at QoS 0");
        assert!(id.is_none());
        assert!(topics.insert(topic.clone()), "{topic} twice");
    }
    client.ping().await;
    broker.stop().await;
}

/// Above `memory_limit_mb` new QoS 0 messages are dropped, a QoS 1 PUBLISH
/// closes its connection unacknowledged and a new connection gets CONNACK
/// 0x03; clearing retained messages is always let in, and once under the
/// limit all works again.
#[tokio::test]
async fn memory_limit_under_over_and_back_under() {
    let mut settings = settings();
    settings.limits.memory_limit_mb = 1;
    let broker = TestBroker::start_with(settings).await;
    let (mut watcher, _) = RawClient::connected(broker.addr, &ConnectOptions::new("w")).await;
    watcher
        .subscribe_granted(1, &[("m/#", QoS::AtMostOnce)])
        .await;
    let (mut publisher, _) = RawClient::connected(broker.addr, &ConnectOptions::new("p")).await;
    let (mut qos1, _) = RawClient::connected(broker.addr, &ConnectOptions::new("q")).await;
    publisher
        .publish_acked("m/ok", QoS::AtMostOnce, 0, b"under", false)
        .await;
    assert_eq!(watcher.next_publish().await.publish().1, b"under");

    // Retained messages of 60 KB until the broker holds more than its
    // 1 MiB. Each is small enough to be read without asking the budget for
    // room (a large partial packet would be refused at the door instead).
    let big = vec![b'x'; 60 * 1024];
    let mut topics = Vec::new();
    while broker.metrics().memory_accounted_bytes <= 1024 * 1024 {
        assert!(topics.len() < 40, "{:?}", broker.metrics());
        let topic = format!("m/r{}", topics.len());
        publisher
            .publish_acked(&topic, QoS::AtMostOnce, 0, &big, true)
            .await;
        assert_eq!(watcher.next_publish().await.publish().0, topic);
        topics.push(topic);
    }
    publisher
        .publish_acked("m/ok", QoS::AtMostOnce, 0, b"over", false)
        .await;
    assert_eq!(broker.metrics().memory_limit_refusals, 1);
    // A new connection is refused while over [MQTT-3.2.2-6].
    let mut late = RawClient::connect(broker.addr).await;
    late.send(&connect_bytes(&ConnectOptions::new("late")))
        .await;
    let connack = late.recv().await.expect("CONNACK");
    assert_eq!(connack.wire_bytes(), [0x20, 0x02, 0x00, 0x03]);
    qos1.send(&publish_bytes("m/ok", QoS::AtLeastOnce, 1, b"over", false))
        .await;
    qos1.assert_closed_without_reply().await;

    for topic in &topics {
        publisher
            .publish_acked(topic, QoS::AtMostOnce, 0, b"", true)
            .await;
        let cleared = watcher.next_publish().await.publish().0;
        assert_eq!(cleared, *topic, "clears get through");
    }
    publisher
        .publish_acked("m/ok", QoS::AtMostOnce, 0, b"again", false)
        .await;
    assert_eq!(watcher.next_publish().await.publish().1, b"again");
    assert_eq!(broker.metrics().memory_limit_refusals, 3);
    broker.stop().await;
}

/// Row 1 again, spread over packets: a client that acknowledges nothing
/// repeats a SUBSCRIBE matching 1,000 QoS 1 retained messages in 1,000
/// separate packets. Each is answered, but retained messages are only
/// queued into an empty mailbox, so what it holds stays at one batch.
#[tokio::test]
async fn attack_repeated_subscribe_packets_add_nothing_to_a_full_mailbox() {
    let broker = TestBroker::start().await;
    let (mut storer, _) = RawClient::connected(broker.addr, &ConnectOptions::new("s")).await;
    let payload = vec![b'r'; 100];
    for i in 1..=1000u16 {
        let topic = format!("ret/{i}");
        storer
            .publish_acked(&topic, QoS::AtLeastOnce, i, &payload, true)
            .await;
    }
    let stored = broker.metrics().memory_accounted_bytes;
    let (mut attacker, _) = RawClient::connected(broker.addr, &ConnectOptions::new("a")).await;
    let mut packets = Vec::new();
    for id in 1..=1000u16 {
        packets.extend(subscribe_bytes(id, &[("ret/#", QoS::AtLeastOnce)]));
    }
    attacker.send(&packets).await;
    // Every SUBACK arrives, among the retained PUBLISHes of the window.
    let mut subacks = 0;
    while subacks < 1000 {
        let packet = attacker.recv().await.expect("SUBACK or PUBLISH");
        subacks += usize::from(packet.packet_type == SUBACK);
    }
    // The session has handled every SUBSCRIBE once its PINGRESP arrives.
    attacker.send(&[0xC0, 0x00]).await;
    while attacker.recv().await.expect("PINGRESP").packet_type != 13 {}
    let held = broker
        .metrics()
        .memory_accounted_bytes
        .saturating_sub(stored);
    assert!(
        held < 64 * 1024,
        "1,000 SUBSCRIBEs hold {held} bytes: more than one batch of deliveries"
    );
    broker.stop().await;
}

/// `Broker::reload` (what SIGHUP calls) raises `max_retained_messages`
/// and `max_subscriptions_per_client` for the router's next message; what
/// is stored stays.
#[tokio::test]
async fn reloaded_retained_and_subscription_caps_apply_to_the_next_message() {
    let mut config = settings();
    config.limits.max_retained_messages = 1;
    config.limits.max_subscriptions_per_client = 1;
    config.sys.interval_secs = 0;
    let broker = TestBroker::start_with(config.clone()).await;
    let (mut publisher, _) = RawClient::connected(broker.addr, &ConnectOptions::new("p")).await;
    for (i, topic) in ["t/1", "t/2"].iter().enumerate() {
        publisher
            .publish_acked(topic, QoS::AtLeastOnce, i as u16 + 1, b"v", true)
            .await;
    }
    assert_eq!(retained_seen(&broker, "before").await, 1);
    let (mut subscriber, _) = RawClient::connected(broker.addr, &ConnectOptions::new("s")).await;
    subscriber
        .subscribe_granted(1, &[("a", QoS::AtMostOnce)])
        .await;
    subscriber
        .send(&subscribe_bytes(2, &[("b", QoS::AtMostOnce)]))
        .await;
    assert_eq!(read_suback(&mut subscriber, WAIT).await, [0x80]);

    config.limits.max_retained_messages = 3;
    config.limits.max_subscriptions_per_client = 2;
    broker.broker().reload(&config).await;
    // The router takes the new caps before the next message it reads.
    publisher
        .publish_acked("t/2", QoS::AtLeastOnce, 3, b"v", true)
        .await;
    assert_eq!(retained_seen(&broker, "after").await, 2);
    subscriber
        .send(&subscribe_bytes(3, &[("b", QoS::AtMostOnce)]))
        .await;
    assert_eq!(read_suback(&mut subscriber, WAIT).await, [0]);
    broker.stop().await;
}
