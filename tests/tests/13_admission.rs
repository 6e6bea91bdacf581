//! Admission and read limits at the edges: silent sockets only compete with
//! each other (`max_pending`, the oldest evicted) and never lock out a client
//! that sends its CONNECT; `max_connections_per_address`; a packet must
//! arrive whole within `packet_read_timeout_ms` whatever the keepalive, and
//! its buffer counts against `memory_limit_mb`; client ids over
//! `max_client_id_len` and will topics over the topic caps are refused. Each
//! limit is shown at its value and one over, on the wire and in its counter.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tidemq_protocol::QoS;
use tidemq_tests::{
    connect_bytes, mqtt_options, publish_bytes, settings, Client, ConnectOptions, LivePair,
    RawClient, TestBroker, QUIET,
};
use tokio::net::TcpStream;

/// Whether the broker still holds `stream` open (nothing is ever sent to a
/// silent socket, so a readable one has seen EOF or a reset).
fn is_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.try_read(&mut byte) {
        Err(error) => error.kind() == std::io::ErrorKind::WouldBlock,
        Ok(read) => read > 0,
    }
}

/// README row "10,200 TCP connections that never send CONNECT, reopened
/// when closed", scaled down: 200 silent sockets against `max_pending` 50
/// and `max_connections` 100, reopened as they are closed. A client that
/// sends its CONNECT during the flood is answered at once, and a live pair
/// keeps its round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_sockets_cannot_lock_out_a_client() {
    const SILENT: usize = 200;
    const BATCH: usize = 25;
    const MAX_ROUNDS: usize = 40;
    let mut settings = settings();
    settings.connections.max_pending = 50;
    settings.connections.max_connections = 100;
    let broker = TestBroker::start_with(settings).await;
    let mut live = LivePair::start(broker.addr, "flood/rt").await;
    let done = AtomicBool::new(false);

    let flood = async {
        let mut sockets: Vec<Option<TcpStream>> = (0..SILENT).map(|_| None).collect();
        let mut opened = 0u64;
        let base = broker.metrics().connections_accepted;
        let mut rounds = 0;
        while rounds < 2 || !done.load(Ordering::Relaxed) {
            assert!(rounds < MAX_ROUNDS, "the clients did not finish in time");
            for batch in sockets.chunks_mut(BATCH) {
                for slot in batch.iter_mut() {
                    if !slot.as_ref().is_some_and(is_open) {
                        *slot = Some(TcpStream::connect(broker.addr).await.unwrap());
                        opened += 1;
                    }
                }
                // The flood goes at the pace of the broker's accept loop.
                broker
                    .wait_metrics("the flood accepted", |m| {
                        m.connections_accepted >= base + opened
                    })
                    .await;
                let pending = broker.metrics().pending_current;
                assert!(
                    pending <= 50,
                    "{pending} pending sockets over max_pending 50"
                );
            }
            rounds += 1;
        }
        (opened, sockets)
    };

    let clients = async {
        broker
            .wait_metrics("the flood evicting", |m| m.pending_evicted > 0)
            .await;
        for round in 0..3u16 {
            let started = Instant::now();
            let late = Client::connect(mqtt_options(&broker, &format!("late-{round}"))).await;
            assert_eq!(late.connack.code, rumqttc::ConnectReturnCode::Success);
            let took = started.elapsed();
            assert!(took < Duration::from_secs(2), "CONNACK took {took:?}");
            live.round_trip().await;
            late.kill();
        }
        done.store(true, Ordering::Relaxed);
    };

    let ((opened, _silent), ()) = tokio::join!(flood, clients);
    assert!(opened > SILENT as u64, "sockets were closed and reopened");
    // Every silent socket (kept open) is still pending or was evicted; none
    // took one of `max_connections`.
    broker
        .wait_metrics("every silent socket pending or evicted", |m| {
            m.pending_evicted + m.pending_current == opened
        })
        .await;
    // The last late client's end is counted once the broker has seen it.
    broker
        .wait_metrics("only the live pair connected", |m| {
            m.connections_current == 2
        })
        .await;
    let metrics = broker.metrics();
    assert_eq!(metrics.pending_current, 50, "{metrics:?}");
    assert_eq!(metrics.connections_refused_limit, 0, "{metrics:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_pending_silent_sockets_stay_open_and_one_more_evicts_the_oldest() {
    let mut settings = settings();
    settings.connections.max_pending = 5;
    let broker = TestBroker::start_with(settings).await;
    let mut silent = Vec::new();
    for n in 1..=5 {
        silent.push(RawClient::connect(broker.addr).await);
        // One at a time, so that the broker's order is ours.
        broker
            .wait_metrics("pending", |m| m.pending_current == n)
            .await;
    }
    assert!(silent[0].recv_within(QUIET).await.is_none());
    assert!(silent.iter().all(|client| is_open(&client.stream)));
    assert_eq!(broker.metrics().pending_evicted, 0);

    // The sixth makes room by closing the oldest.
    let mut sixth = RawClient::connect(broker.addr).await;
    silent[0].assert_closed_without_reply().await;
    assert!(silent[1..].iter().all(|client| is_open(&client.stream)));
    let metrics = broker.metrics();
    assert_eq!((metrics.pending_evicted, metrics.pending_current), (1, 5));

    // A pending socket that sends its CONNECT is served as usual.
    sixth
        .send(&connect_bytes(&ConnectOptions::new("sixth")))
        .await;
    let connack = sixth.recv().await.expect("CONNACK");
    assert_eq!(connack.wire_bytes(), [0x20, 2, 0, 0]);
    broker
        .wait_metrics("sixth no longer pending", |m| m.pending_current == 4)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_address_are_served_and_one_more_is_closed() {
    let mut settings = settings();
    settings.connections.max_connections_per_address = 3;
    let broker = TestBroker::start_with(settings).await;
    let (mut a, _) = RawClient::connected(broker.addr, &ConnectOptions::new("a")).await;
    let (b, _) = RawClient::connected(broker.addr, &ConnectOptions::new("b")).await;
    // A pending socket counts too.
    let _pending = RawClient::connect(broker.addr).await;
    broker
        .wait_metrics("one pending", |m| m.pending_current == 1)
        .await;

    let mut over = RawClient::connect(broker.addr).await;
    over.try_send(&connect_bytes(&ConnectOptions::new("over")))
        .await;
    over.assert_closed_without_reply().await;
    assert_eq!(broker.metrics().connections_refused_per_address, 1);

    // The count goes down when a connection ends, resting ones included.
    broker.wait_resting(2).await;
    drop(b);
    broker
        .wait_metrics("b gone", |m| m.connections_current == 1)
        .await;
    let (mut c, _) = RawClient::connected(broker.addr, &ConnectOptions::new("c")).await;
    c.ping().await;
    a.ping().await;
    assert_eq!(broker.metrics().connections_refused_per_address, 1);
}

/// README row "1,000 clients with keepalive 0 sending 999,000 bytes of a
/// 1 MB PUBLISH, then stalling", scaled down: 20 clients send 200 KB of a
/// 256 KB PUBLISH. Each is closed, by the read timeout or because its buffer
/// does not fit the memory budget; the budget comes back; a live pair's
/// round trip works throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_partial_publishes_are_closed_and_their_memory_returned() {
    const STALLERS: u64 = 20;
    let mut settings = settings();
    settings.limits.packet_read_timeout_ms = 500;
    settings.limits.memory_limit_mb = 2;
    let broker = TestBroker::start_with(settings).await;
    let mut live = LivePair::start(broker.addr, "live/rtt").await;
    let baseline = broker.metrics().memory_accounted_bytes;

    let wire = publish_bytes("stall", QoS::AtLeastOnce, 1, &vec![b's'; 256 * 1024], false);
    let mut stallers = Vec::new();
    for n in 0..STALLERS {
        let client_id = format!("staller-{n}");
        let options = ConnectOptions {
            keep_alive: 0,
            ..ConnectOptions::new(&client_id)
        };
        let (mut staller, _) = RawClient::connected(broker.addr, &options).await;
        // The broker may close it before all 200 KB are in.
        staller.try_send(&wire[..200 * 1024]).await;
        stallers.push(staller);
    }
    live.round_trip().await;
    broker
        .wait_metrics("every staller closed", |m| {
            m.packet_read_timeouts + m.memory_limit_refusals == STALLERS
        })
        .await;
    for staller in &mut stallers {
        assert!(staller.closed_by_broker().await, "a staller is still open");
    }
    let metrics = broker.metrics();
    assert!(metrics.packet_read_timeouts > 0, "{metrics:?}");
    assert!(
        metrics.memory_limit_refusals > 0,
        "2 MiB cannot hold 20 x 256 KiB"
    );
    broker
        .wait_metrics("the budget back at its baseline", |m| {
            m.memory_accounted_bytes <= baseline
        })
        .await;
    live.round_trip().await;
}

/// With keepalive 0 nothing else would ever close it: a partial packet is
/// closed after `packet_read_timeout_ms` (resting in the dormitory
/// meanwhile), counted, and its will is published; a slow packet that is
/// whole in time is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_packet_is_closed_after_the_read_timeout_whatever_the_keepalive() {
    let mut settings = settings();
    settings.limits.packet_read_timeout_ms = 600;
    let broker = TestBroker::start_with(settings).await;
    let (mut watcher, _) = RawClient::connected(broker.addr, &ConnectOptions::new("w")).await;
    watcher
        .subscribe_granted(1, &[("will/#", QoS::AtMostOnce)])
        .await;

    // Slow but whole within the timeout: three pieces 100 ms apart.
    let slow = ConnectOptions {
        keep_alive: 0,
        ..ConnectOptions::new("slow")
    };
    let (mut client, _) = RawClient::connected(broker.addr, &slow).await;
    let wire = publish_bytes("t", QoS::AtLeastOnce, 9, b"slow but whole", false);
    for piece in wire.chunks(wire.len() / 3 + 1) {
        client.send(piece).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let puback = client.recv().await.expect("PUBACK");
    assert_eq!(puback.wire_bytes(), [0x40, 2, 0, 9]);

    // Half a packet, then nothing.
    let stalled = ConnectOptions {
        keep_alive: 0,
        will: Some(("will/stalled", b"gone", 0, false)),
        ..ConnectOptions::new("stalled")
    };
    let (mut staller, _) = RawClient::connected(broker.addr, &stalled).await;
    let wire = publish_bytes("t", QoS::AtLeastOnce, 1, &[b'x'; 1000], false);
    let started = Instant::now();
    staller.send(&wire[..500]).await;
    broker
        .wait_metrics("the partial packet read", |m| m.memory_accounted_bytes > 0)
        .await;
    // It rests with its partial packet; the deadline still applies.
    broker.wait_resting(3).await;
    assert!(
        staller.closed_by_broker().await,
        "closed by the read timeout"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "not before 600 ms"
    );
    let (topic, payload, _, _) = watcher.next_publish().await.publish();
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("will/stalled", &b"gone"[..])
    );
    let metrics = broker.metrics();
    assert_eq!(metrics.packet_read_timeouts, 1);
    assert_eq!(metrics.memory_accounted_bytes, 0);
    client.ping().await;
}

// [MQTT-3.1.3-5]: the broker may allow client ids longer than 23 bytes;
// tidemq allows `max_client_id_len` and answers longer ones 0x02.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_3_5_client_id_of_max_len_is_accepted_and_one_byte_more_refused() {
    let mut settings = settings();
    settings.limits.max_client_id_len = 40;
    let broker = TestBroker::start_with(settings).await;
    let at_limit = "i".repeat(40);
    let (mut client, _) = RawClient::connected(broker.addr, &ConnectOptions::new(&at_limit)).await;
    client.ping().await;

    let over = "i".repeat(41);
    let mut refused = RawClient::connect(broker.addr).await;
    refused
        .send(&connect_bytes(&ConnectOptions::new(&over)))
        .await;
    let connack = refused.recv().await.expect("CONNACK");
    assert_eq!(
        connack.wire_bytes(),
        [0x20, 2, 0, 0x02],
        "identifier rejected"
    );
    assert!(refused.closed_by_broker().await);
    let metrics = broker.metrics();
    assert_eq!(
        (metrics.client_ids_refused, metrics.connacks_refused),
        (1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_topic_over_the_topic_caps_is_closed_unanswered() {
    let mut settings = settings();
    settings.limits.max_topic_levels = 3;
    settings.limits.max_topic_len = 12;
    let broker = TestBroker::start_with(settings).await;
    let will = |client_id, topic| ConnectOptions {
        will: Some((topic, &b"w"[..], 0, false)),
        ..ConnectOptions::new(client_id)
    };
    // Exactly 3 levels and 12 bytes.
    let (mut client, _) = RawClient::connected(broker.addr, &will("ok", "aaaa/bbb/ccc")).await;
    client.ping().await;

    for (client_id, topic) in [("levels", "a/b/c/d"), ("len", "aaaa/bbb/cccc")] {
        let mut refused = RawClient::connect(broker.addr).await;
        refused.send(&connect_bytes(&will(client_id, topic))).await;
        refused.assert_closed_without_reply().await;
    }
    let metrics = broker.metrics();
    assert_eq!(metrics.topics_refused_limit, 2);
    assert_eq!(metrics.connacks_refused, 0);
}

/// A `[[listener]]`'s own `max_connections` caps that listener only: its
/// second client gets CONNACK 0x03 while another listener still takes
/// clients, and the place comes back when the first leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listeners_own_max_connections_caps_only_that_listener() {
    let mut settings = settings();
    let mut capped = settings.listeners[0].clone();
    capped.max_connections = 1;
    settings.listeners.push(capped);
    let broker = TestBroker::start_with(settings).await;
    let (open, capped) = (broker.addrs[0], broker.addrs[1]);
    let (mut first, _) = RawClient::connected(capped, &ConnectOptions::new("first")).await;

    let mut second = RawClient::connect(capped).await;
    second
        .send(&connect_bytes(&ConnectOptions::new("second")))
        .await;
    let connack = second.recv().await.expect("CONNACK");
    assert_eq!(connack.wire_bytes(), [0x20, 0x02, 0x00, 0x03]);
    assert_eq!(broker.metrics().connections_refused_limit, 1);
    let (mut elsewhere, _) = RawClient::connected(open, &ConnectOptions::new("elsewhere")).await;
    elsewhere.ping().await;
    first.ping().await;

    first.send(&[0xE0, 0x00]).await;
    assert!(first.closed_by_broker().await);
    broker
        .wait_metrics("first gone", |m| m.connections_current == 1)
        .await;
    let (mut third, _) = RawClient::connected(capped, &ConnectOptions::new("third")).await;
    third.ping().await;
    assert_eq!(broker.metrics().connections_refused_limit, 1);
}

/// `max_connect_rate`: a burst beyond a listener's rate is not refused but
/// paced: the accept loop waits for tokens (`connect_rate_waits`), every
/// client is served, and the second half of the burst (past the one
/// second's worth of tokens the bucket starts with) takes about a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_beyond_max_connect_rate_are_paced_not_refused() {
    let mut settings = settings();
    settings.listeners[0].max_connect_rate = Some(20);
    let broker = TestBroker::start_with(settings).await;
    let started = Instant::now();
    let mut clients = Vec::new();
    for n in 0..40 {
        let id = format!("paced-{n}");
        clients.push(
            RawClient::connected(broker.addr, &ConnectOptions::new(&id))
                .await
                .0,
        );
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "40 connects at 20/s took only {elapsed:?}"
    );
    let metrics = broker.metrics();
    assert!(metrics.connect_rate_waits > 0, "{metrics:?}");
    assert_eq!(metrics.connections_current, 40);
    for client in &mut clients {
        client.ping().await;
    }
}
