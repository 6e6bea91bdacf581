//! Proves that an offline persistent session (clean session 0) lives exactly
//! `session_expiry_secs`: a client back before then resumes it (session
//! present 1, its queued messages), a client back after finds nothing
//! (session present 0, no messages, no subscriptions), and hundreds of
//! abandoned `x/#` subscribers neither slow a live publisher down while they
//! exist nor receive (or cost) anything once they have expired.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tidemq_protocol::QoS;
use tidemq_tests::{
    publish_bytes, settings, subscribe_bytes, ConnectOptions, RawClient, TestBroker, QUIET, WAIT,
};

const DISCONNECT: [u8; 2] = [0xE0, 0x00];
const PUBACK: u8 = 4;
const SUBACK: u8 = 9;

fn persistent(client_id: &str) -> ConnectOptions<'_> {
    ConnectOptions {
        clean_session: false,
        ..ConnectOptions::new(client_id)
    }
}

fn broker_settings(expiry_secs: u64, max_queued: usize) -> tidemq::Settings {
    let mut settings = settings();
    settings.limits.session_expiry_secs = expiry_secs;
    settings.limits.max_queued_messages = max_queued;
    settings
}

/// Connects `client_id` with clean session 0, subscribes to `filter` at
/// QoS 1, and leaves with DISCONNECT; returns once the broker has closed.
async fn leave_subscribed(broker: &TestBroker, client_id: &str, filter: &str) {
    let (mut client, _) = RawClient::connected(broker.addr, &persistent(client_id)).await;
    client
        .send(&subscribe_bytes(1, &[(filter, QoS::AtLeastOnce)]))
        .await;
    let suback = client.recv().await.expect("SUBACK");
    assert_eq!(suback.packet_type, SUBACK, "expected SUBACK: {suback:?}");
    client.send(&DISCONNECT).await;
    assert!(client.closed_by_broker().await, "DISCONNECT ends it");
}

/// Publishes one QoS 1 message and returns how long its PUBACK took.
async fn publish_qos1(client: &mut RawClient, topic: &str, packet_id: u16) -> Duration {
    let sent = Instant::now();
    client
        .send(&publish_bytes(
            topic,
            QoS::AtLeastOnce,
            packet_id,
            b"m",
            false,
        ))
        .await;
    let ack = client.recv().await.expect("PUBACK");
    assert_eq!(
        (ack.packet_type, ack.body.as_slice()),
        (PUBACK, &packet_id.to_be_bytes()[..])
    );
    sent.elapsed()
}

async fn assert_nothing_arrives(client: &mut RawClient) {
    if let Some(packet) = client.recv_within(QUIET).await {
        panic!("unexpected packet {packet:?}");
    }
}

// [MQTT-3.1.2-4] a session is kept while offline, but only for
// `session_expiry_secs`; after that [MQTT-3.2.2-3] session present is 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumes_before_expiry_and_is_gone_after_it() {
    let broker = TestBroker::start_with(broker_settings(1, 1000)).await;
    let (mut publisher, _) =
        RawClient::connected(broker.addr, &ConnectOptions::new("publisher")).await;

    // Back before the limit: resumed, with what was queued meanwhile.
    leave_subscribed(&broker, "early", "e").await;
    publish_qos1(&mut publisher, "e", 1).await;
    let (mut early, present) = RawClient::connected(broker.addr, &persistent("early")).await;
    assert!(
        present,
        "back within session_expiry_secs: session present 1"
    );
    let (topic, payload, qos, _) = early.next_publish().await.publish();
    assert_eq!(
        (topic.as_str(), payload.as_slice(), qos),
        ("e", &b"m"[..], QoS::AtLeastOnce)
    );
    assert_eq!(broker.metrics().sessions_expired, 0);

    // Back after the limit: a new, empty session.
    leave_subscribed(&broker, "late", "l").await;
    publish_qos1(&mut publisher, "l", 2).await;
    broker
        .wait_metrics("the offline session expired", |m| m.sessions_expired == 1)
        .await;
    let (mut late, present) = RawClient::connected(broker.addr, &persistent("late")).await;
    assert!(
        !present,
        "back after session_expiry_secs: session present 0"
    );
    assert_nothing_arrives(&mut late).await;
    // Its subscription went with it.
    publish_qos1(&mut publisher, "l", 3).await;
    assert_nothing_arrives(&mut late).await;
    // The resumed session was never expired: it is online.
    assert_eq!(broker.metrics().sessions_expired, 1);
    broker.stop().await;
}

/// The attack row, scaled down: persistent sessions left behind.
const ORPHANS: usize = 500;
/// Messages each orphan may queue, below the publishes sent, so every
/// publish beyond it shows up in `dropped_queue_full` once per orphan.
const ORPHAN_QUEUE: usize = 50;
const PUBLISHES: u16 = 100;
const ORPHAN_EXPIRY_SECS: u64 = 10;
/// A live publisher's PUBACK must come back within this, orphans or not.
const ROUND_TRIP_BOUND: Duration = Duration::from_secs(2);

// Issue 7: "20,000 persistent sessions left behind (clean session 0, `x/#`
// at QoS 1), then 100 QoS 1 publishes", at 500 sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_sessions_slow_nobody_and_are_removed_with_their_subscriptions() {
    // Long enough for 500 sessions to be made and 100 publishes fanned out
    // to them, on a loaded machine, before the first one expires.
    let broker = TestBroker::start_with(broker_settings(ORPHAN_EXPIRY_SECS, ORPHAN_QUEUE)).await;
    let mut tasks = tokio::task::JoinSet::new();
    let addr = broker.addr;
    for n in 0..ORPHANS {
        tasks.spawn(async move {
            let id = format!("orphan-{n}");
            let (mut client, _) = RawClient::connected(addr, &persistent(&id)).await;
            client
                .send(&subscribe_bytes(1, &[("x/#", QoS::AtLeastOnce)]))
                .await;
            assert_eq!(client.recv().await.expect("SUBACK").packet_type, SUBACK);
            client.send(&DISCONNECT).await;
            assert!(client.closed_by_broker().await);
        });
        // At most 50 connecting at once.
        if tasks.len() >= 50 {
            tasks.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    broker
        .wait_metrics("every orphan offline", |m| {
            m.sessions_offline_current == ORPHANS as u64
        })
        .await;

    let (mut publisher, _) =
        RawClient::connected(broker.addr, &ConnectOptions::new("publisher")).await;
    let mut slowest = Duration::ZERO;
    for packet_id in 1..=PUBLISHES {
        slowest = slowest.max(publish_qos1(&mut publisher, "x/y", packet_id).await);
    }
    assert!(
        slowest < ROUND_TRIP_BOUND,
        "slowest PUBACK took {slowest:?} with {ORPHANS} orphans"
    );
    let before = broker.metrics();
    assert_eq!(
        before.sessions_expired, 0,
        "the orphans must still exist while the publisher runs"
    );
    let over_limit = (usize::from(PUBLISHES) - ORPHAN_QUEUE) * ORPHANS;
    assert_eq!(
        before.dropped_queue_full, over_limit as u64,
        "every orphan was subscribed and queued up to its limit"
    );

    broker
        .wait_metrics_within(
            Duration::from_secs(ORPHAN_EXPIRY_SECS) + WAIT,
            "every orphan expired",
            |m| m.sessions_expired == ORPHANS as u64,
        )
        .await;
    let after = broker.metrics();
    assert_eq!(after.sessions_offline_current, 0);
    assert_eq!(after.sessions_current, 1, "only the publisher is left");

    // Their subscriptions are gone: nothing is queued or dropped for them.
    for packet_id in 1..=PUBLISHES {
        publish_qos1(&mut publisher, "x/y", packet_id).await;
    }
    let last = broker.metrics();
    assert_eq!(last.dropped_queue_full, before.dropped_queue_full);
    assert_eq!(last.messages_sent, before.messages_sent, "no deliveries");

    // An orphan coming back now starts from nothing.
    let (mut orphan, present) = RawClient::connected(broker.addr, &persistent("orphan-0")).await;
    assert!(!present, "expired: session present 0");
    assert_nothing_arrives(&mut orphan).await;
    broker.stop().await;
}
