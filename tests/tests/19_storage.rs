//! Proves the store's bounds in a running broker: at `storage.max_bytes`
//! messages for persistent sessions are dropped and counted (clean
//! subscribers still get them), steady traffic through a persistent session
//! keeps the log small by compaction, and a broker restarted in-process on
//! the same directory gives a persistent session back its queue and
//! subscriptions. (Crash and process-level restarts: broker/tests/persistence.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use tidemq_protocol::QoS;
use tidemq_tests::{
    publish_bytes, settings, subscribe_bytes, ConnectOptions, RawClient, TestBroker, QUIET, WAIT,
};

const DISCONNECT: [u8; 2] = [0xE0, 0x00];
const SUBACK: u8 = 9;

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tidemq-19-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn stored_settings(dir: &Path) -> tidemq::Settings {
    let mut settings = settings();
    settings.storage.enabled = true;
    settings.storage.dir = dir.to_path_buf();
    settings
}

fn persistent(client_id: &str) -> ConnectOptions<'_> {
    ConnectOptions {
        clean_session: false,
        ..ConnectOptions::new(client_id)
    }
}

/// Subscribes `client_id` (clean session 0) to `filter` at QoS 1 and leaves.
async fn leave_subscribed(broker: &TestBroker, client_id: &str, filter: &str) {
    let (mut client, _) = RawClient::connected(broker.addr, &persistent(client_id)).await;
    client
        .send(&subscribe_bytes(1, &[(filter, QoS::AtLeastOnce)]))
        .await;
    assert_eq!(client.recv().await.expect("SUBACK").packet_type, SUBACK);
    client.send(&DISCONNECT).await;
    assert!(client.closed_by_broker().await);
}

/// Reads `expected` PUBLISHes (each within [`WAIT`], as a stored session's
/// deliveries wait for fsyncs), acknowledging QoS 1 ones, and then any more
/// that come within [`QUIET`]; returns how many arrived.
async fn drain(client: &mut RawClient, expected: usize) -> usize {
    let mut count = 0;
    loop {
        let patience = if count < expected { WAIT } else { QUIET };
        let Some(packet) = client.recv_within(patience).await else {
            return count;
        };
        let (_, _, _, id) = packet.publish();
        if let Some(id) = id {
            let [hi, lo] = id.to_be_bytes();
            client.send(&[0x40, 0x02, hi, lo]).await;
        }
        count += 1;
    }
}

#[tokio::test]
async fn at_max_bytes_deliveries_to_persistent_sessions_are_dropped_and_counted() {
    let dir = data_dir("full");
    let mut settings = stored_settings(&dir);
    settings.storage.max_bytes = 1024 * 1024;
    settings.storage.compact_min_bytes = 64 * 1024 * 1024;
    let broker = TestBroker::start_with(settings).await;
    leave_subscribed(&broker, "keeper", "big/#").await;
    let (mut online, _) = RawClient::connected(broker.addr, &ConnectOptions::new("clean")).await;
    online
        .subscribe_granted(1, &[("big/#", QoS::AtLeastOnce)])
        .await;
    let (mut publisher, _) = RawClient::connected(broker.addr, &ConnectOptions::new("pub")).await;
    let payload = vec![b'x'; 16 * 1024];
    let sent = 100u16;
    for n in 1..=sent {
        publisher
            .publish_acked("big/t", QoS::AtLeastOnce, n, &payload, false)
            .await;
    }
    let dropped = broker.metrics().dropped_storage_full;
    assert!(
        dropped > 0 && dropped < u64::from(sent),
        "1.6 MB into a 1 MiB store: some but not all dropped, got {dropped}"
    );
    // The clean subscriber is not kept on disk and gets every message.
    assert_eq!(
        drain(&mut online, usize::from(sent)).await,
        usize::from(sent)
    );
    let (mut keeper, present) = RawClient::connected(broker.addr, &persistent("keeper")).await;
    assert!(present);
    let kept = drain(&mut keeper, usize::from(sent) - dropped as usize).await as u64;
    assert_eq!(
        kept + dropped,
        u64::from(sent),
        "every message kept or counted"
    );
    broker.stop().await;
}

#[tokio::test]
async fn steady_traffic_through_a_persistent_session_keeps_the_log_small() {
    let dir = data_dir("compact");
    let mut settings = stored_settings(&dir);
    settings.storage.compact_min_bytes = 128 * 1024;
    let broker = TestBroker::start_with(settings).await;
    let (mut subscriber, _) = RawClient::connected(broker.addr, &persistent("steady")).await;
    subscriber
        .subscribe_granted(1, &[("s/#", QoS::AtLeastOnce)])
        .await;
    let (mut publisher, _) = RawClient::connected(broker.addr, &ConnectOptions::new("p")).await;
    let payload = vec![b'y'; 1024];
    let rounds = 40u16;
    let per_round = 50u16;
    for round in 0..rounds {
        for n in 1..=per_round {
            let id = round * per_round + n;
            publisher
                .send(&publish_bytes("s/t", QoS::AtLeastOnce, id, &payload, false))
                .await;
        }
        for _ in 0..per_round {
            let ack = publisher.recv().await.expect("PUBACK");
            assert_eq!(ack.packet_type, 4);
        }
        for _ in 0..per_round {
            let (_, _, _, id) = subscriber.next_publish().await.publish();
            let [hi, lo] = id.expect("QoS 1").to_be_bytes();
            subscriber.send(&[0x40, 0x02, hi, lo]).await;
        }
    }
    // About 2 MB went through the log; what is live at the end is nothing.
    broker
        .wait_metrics("a compaction", |m| m.storage_compactions > 0)
        .await;
    let bytes = broker.metrics().storage_bytes_current;
    assert!(
        bytes < 512 * 1024,
        "the log should stay near compact_min_bytes, is {bytes} bytes"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_restart_on_the_same_directory_gives_a_session_back_its_queue() {
    let dir = data_dir("restart");
    let broker = TestBroker::start_with(stored_settings(&dir)).await;
    leave_subscribed(&broker, "back", "q/#").await;
    let (mut publisher, _) = RawClient::connected(broker.addr, &ConnectOptions::new("p")).await;
    for n in 1..=5u16 {
        let qos = if n % 2 == 0 {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        publisher
            .publish_acked("q/t", qos, n, format!("m{n}").as_bytes(), false)
            .await;
    }
    drop(publisher);
    broker.stop().await;
    let broker = TestBroker::start_with(stored_settings(&dir)).await;
    assert_eq!(broker.metrics().storage_recovered_messages, 5);
    let (mut back, present) = RawClient::connected(broker.addr, &persistent("back")).await;
    assert!(present, "session present after the restart [MQTT-3.2.2-2]");
    let mut got = Vec::new();
    for _ in 0..5 {
        let packet = back.next_publish().await;
        let (topic, payload, qos, id) = packet.publish();
        assert_eq!(topic, "q/t");
        let [hi, lo] = id.expect("QoS 1/2").to_be_bytes();
        match qos {
            QoS::AtLeastOnce => back.send(&[0x40, 0x02, hi, lo]).await,
            _ => {
                back.send(&[0x50, 0x02, hi, lo]).await;
                let pubrel = back.recv().await.expect("PUBREL");
                assert_eq!(pubrel.wire_bytes(), [0x62, 0x02, hi, lo]);
                back.send(&[0x70, 0x02, hi, lo]).await;
            }
        }
        got.push(String::from_utf8(payload).unwrap());
    }
    assert_eq!(got, ["m1", "m2", "m3", "m4", "m5"]);
    // The subscription came back too: a new message reaches the session.
    let (mut publisher, _) = RawClient::connected(broker.addr, &ConnectOptions::new("p")).await;
    publisher
        .publish_acked("q/new", QoS::AtLeastOnce, 9, b"after", false)
        .await;
    let (topic, payload, _, _) = back.next_publish().await.publish();
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("q/new", &b"after"[..])
    );
    broker.stop().await;
}
