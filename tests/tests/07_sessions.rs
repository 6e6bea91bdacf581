//! Proves what a session keeps across connections: a persistent session
//! (clean session 0) keeps its subscriptions and queues QoS 1/2 messages
//! while offline (within `max_queued_messages`), resends what was in flight
//! on resume, and survives a takeover; a clean session discards all of it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tidemq_protocol::{Ack, Packet, QoS};
use tidemq_tests::{
    connect_bytes, id, packet_bytes, publish_bytes, settings, subscribe_bytes, ConnectOptions,
    RawClient, RawPacket, TestBroker, QUIET,
};

const DISCONNECT: [u8; 2] = [0xE0, 0x00];
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;
const SUBACK: u8 = 9;
const DUP: u8 = 0x08;

fn options(client_id: &str, clean_session: bool) -> ConnectOptions<'_> {
    ConnectOptions {
        clean_session,
        ..ConnectOptions::new(client_id)
    }
}

async fn subscribe(client: &mut RawClient, filter: &str, qos: QoS) {
    client.send(&subscribe_bytes(1, &[(filter, qos)])).await;
    let suback = client.recv().await.expect("SUBACK");
    assert_eq!(
        suback.packet_type, SUBACK,
        "expected SUBACK, got {suback:?}"
    );
}

/// Sends DISCONNECT and waits until the broker has closed the socket.
async fn disconnect(mut client: RawClient) {
    client.send(&DISCONNECT).await;
    assert!(
        client.closed_by_broker().await,
        "DISCONNECT did not end the connection"
    );
}

/// Waits until every connection is gone, so sessions are offline.
async fn all_offline(broker: &TestBroker) {
    broker
        .wait_metrics("no connection open", |m| m.connections_current == 0)
        .await;
}

/// Publishes QoS 1 messages from a fresh client and waits for each PUBACK.
async fn publish_qos1(broker: &TestBroker, topic: &str, payloads: &[&[u8]]) {
    let (mut publisher, _) =
        RawClient::connected(broker.addr, &ConnectOptions::new("publisher")).await;
    for (n, payload) in (1u16..).zip(payloads) {
        publisher
            .send(&publish_bytes(topic, QoS::AtLeastOnce, n, payload, false))
            .await;
        let ack = publisher.recv().await.expect("PUBACK");
        assert_eq!(
            (ack.packet_type, ack.body.as_slice()),
            (PUBACK, &n.to_be_bytes()[..])
        );
    }
    disconnect(publisher).await;
}

async fn recv_publish(client: &mut RawClient) -> RawPacket {
    let packet = client.recv().await.expect("a PUBLISH");
    assert_eq!(
        packet.packet_type, PUBLISH,
        "expected PUBLISH, got {packet:?}"
    );
    packet
}

async fn assert_nothing_arrives(client: &mut RawClient) {
    if let Some(packet) = client.recv_within(QUIET).await {
        panic!("unexpected packet {packet:?}");
    }
}

async fn puback(client: &mut RawClient, packet_id: u16) {
    client
        .send(&packet_bytes(&Packet::PubAck(Ack::new(id(packet_id)))))
        .await;
}

/// A persistent session subscribed to `topic` at `qos`, left offline.
async fn offline_session(broker: &TestBroker, client_id: &str, topic: &str, qos: QoS) {
    let (mut client, present) = RawClient::connected(broker.addr, &options(client_id, false)).await;
    assert!(!present, "a new session is not present");
    subscribe(&mut client, topic, qos).await;
    disconnect(client).await;
    all_offline(broker).await;
}

// [MQTT-3.1.2-4] a persistent session is resumed; [MQTT-3.2.2-2] the
// CONNACK says so; its QoS 1 messages were stored while it was offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_4_persistent_session_receives_what_was_published_while_offline() {
    let broker = TestBroker::start().await;
    offline_session(&broker, "keeper", "s/q1", QoS::AtLeastOnce).await;

    let payloads: [&[u8]; 5] = [b"m0", b"m1", b"m2", b"m3", b"m4"];
    publish_qos1(&broker, "s/q1", &payloads).await;

    let (mut client, present) = RawClient::connected(broker.addr, &options("keeper", false)).await;
    assert!(present, "CONNACK session present must be 1");
    for expected in payloads {
        let packet = recv_publish(&mut client).await;
        let (topic, payload, qos, packet_id) = packet.publish();
        assert_eq!(
            (topic.as_str(), payload.as_slice(), qos),
            ("s/q1", expected, QoS::AtLeastOnce)
        );
        assert_eq!(packet.flags & DUP, 0, "first delivery must not be DUP");
        puback(&mut client, packet_id.unwrap()).await;
    }
    assert_nothing_arrives(&mut client).await;
    broker.stop().await;
}

// [MQTT-3.1.2-6] clean session 1 discards the previous session: no queued
// messages, no subscriptions; [MQTT-3.2.2-1] session present is 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_6_clean_session_discards_queue_and_subscriptions() {
    let broker = TestBroker::start().await;
    offline_session(&broker, "forgetful", "s/clean", QoS::AtLeastOnce).await;
    publish_qos1(&broker, "s/clean", &[b"queued"]).await;

    let (mut client, present) =
        RawClient::connected(broker.addr, &options("forgetful", true)).await;
    assert!(
        !present,
        "CONNACK session present must be 0 for a clean session"
    );
    assert_nothing_arrives(&mut client).await;

    // The old subscription is gone too: new messages do not arrive.
    publish_qos1(&broker, "s/clean", &[b"after"]).await;
    assert_nothing_arrives(&mut client).await;
    broker.stop().await;
}

// [MQTT-3.1.2-6] the discarded session stays discarded: a later persistent
// connection starts from nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_6_clean_connection_ends_an_earlier_persistent_session_for_good() {
    let broker = TestBroker::start().await;
    offline_session(&broker, "wanderer", "s/gone", QoS::AtLeastOnce).await;
    publish_qos1(&broker, "s/gone", &[b"queued"]).await;

    let (client, present) = RawClient::connected(broker.addr, &options("wanderer", true)).await;
    assert!(!present);
    disconnect(client).await;
    all_offline(&broker).await;
    publish_qos1(&broker, "s/gone", &[b"while clean session ended"]).await;

    let (mut client, present) =
        RawClient::connected(broker.addr, &options("wanderer", false)).await;
    assert!(
        !present,
        "the persistent session was discarded, none may be present"
    );
    assert_nothing_arrives(&mut client).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_messages_are_not_queued_for_an_offline_session() {
    let broker = TestBroker::start().await;
    offline_session(&broker, "qos0-offline", "s/zero", QoS::AtLeastOnce).await;

    let (mut publisher, _) = RawClient::connected(broker.addr, &ConnectOptions::new("pub0")).await;
    for payload in [b"zero-a", b"zero-b", b"zero-c"] {
        publisher
            .send(&publish_bytes("s/zero", QoS::AtMostOnce, 0, payload, false))
            .await;
    }
    broker
        .wait_metrics("dropped_qos0_offline = 3", |m| m.dropped_qos0_offline == 3)
        .await;
    // A QoS 1 message after them is queued, and marks the end.
    publisher
        .send(&publish_bytes(
            "s/zero",
            QoS::AtLeastOnce,
            1,
            b"marker",
            false,
        ))
        .await;
    assert_eq!(publisher.recv().await.expect("PUBACK").packet_type, PUBACK);

    let (mut client, present) =
        RawClient::connected(broker.addr, &options("qos0-offline", false)).await;
    assert!(present);
    let (_, payload, qos, packet_id) = recv_publish(&mut client).await.publish();
    assert_eq!(
        (payload.as_slice(), qos),
        (&b"marker"[..], QoS::AtLeastOnce)
    );
    puback(&mut client, packet_id.unwrap()).await;
    assert_nothing_arrives(&mut client).await;
    broker.stop().await;
}

// [MQTT-4.4.0-1] on resume, unacknowledged PUBLISHes are sent again with
// their original packet id and DUP set [MQTT-3.3.1-1].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_4_0_1_unacknowledged_qos1_is_resent_with_dup_on_resume() {
    let broker = TestBroker::start().await;
    let (mut client, _) = RawClient::connected(broker.addr, &options("unacked", false)).await;
    subscribe(&mut client, "s/resend", QoS::AtLeastOnce).await;
    publish_qos1(&broker, "s/resend", &[b"once more"]).await;

    let first = recv_publish(&mut client).await;
    let (_, _, _, first_id) = first.publish();
    assert_eq!(first.flags & DUP, 0);
    drop(client); // no PUBACK, no DISCONNECT

    let (mut client, present) = RawClient::connected(broker.addr, &options("unacked", false)).await;
    assert!(present);
    let again = recv_publish(&mut client).await;
    let (topic, payload, qos, again_id) = again.publish();
    assert_eq!(
        again.flags & DUP,
        DUP,
        "a resent PUBLISH must carry DUP: {again:?}"
    );
    assert_eq!(again_id, first_id, "the resend keeps its packet id");
    assert_eq!(
        (topic.as_str(), payload.as_slice(), qos),
        ("s/resend", &b"once more"[..], QoS::AtLeastOnce)
    );
    puback(&mut client, again_id.unwrap()).await;
    assert_nothing_arrives(&mut client).await;
    broker.stop().await;
}

// [MQTT-4.4.0-1] a QoS 2 delivery that got its PUBREC but no PUBCOMP
// resumes with the PUBREL, not with the PUBLISH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_4_0_1_qos2_resume_resends_pubrel() {
    let broker = TestBroker::start().await;
    let (mut client, _) = RawClient::connected(broker.addr, &options("half-done", false)).await;
    subscribe(&mut client, "s/two", QoS::ExactlyOnce).await;

    let (mut publisher, _) = RawClient::connected(broker.addr, &ConnectOptions::new("pub2")).await;
    publisher
        .send(&publish_bytes(
            "s/two",
            QoS::ExactlyOnce,
            9,
            b"exactly",
            false,
        ))
        .await;
    assert_eq!(publisher.recv().await.expect("PUBREC").packet_type, PUBREC);
    publisher
        .send(&packet_bytes(&Packet::PubRel(Ack::new(id(9)))))
        .await;
    assert_eq!(
        publisher.recv().await.expect("PUBCOMP").packet_type,
        PUBCOMP
    );

    let (_, payload, qos, packet_id) = recv_publish(&mut client).await.publish();
    assert_eq!(
        (payload.as_slice(), qos),
        (&b"exactly"[..], QoS::ExactlyOnce)
    );
    let packet_id = packet_id.unwrap();
    client
        .send(&packet_bytes(&Packet::PubRec(Ack::new(id(packet_id)))))
        .await;
    let pubrel = client.recv().await.expect("PUBREL");
    assert_eq!((pubrel.packet_type, pubrel.flags), (PUBREL, 0b0010));
    drop(client); // no PUBCOMP

    let (mut client, present) =
        RawClient::connected(broker.addr, &options("half-done", false)).await;
    assert!(present);
    let resent = client.recv().await.expect("the PUBREL again");
    assert_eq!(
        (resent.packet_type, resent.flags),
        (PUBREL, 0b0010),
        "got {resent:?}"
    );
    assert_eq!(resent.body, packet_id.to_be_bytes());
    client
        .send(&packet_bytes(&Packet::PubComp(Ack::new(id(packet_id)))))
        .await;
    assert_nothing_arrives(&mut client).await;
    broker.stop().await;
}

// [MQTT-3.1.4-2] a CONNECT with a client id already connected closes the
// existing connection; the new one is fully usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_4_2_second_connection_with_same_client_id_takes_over() {
    let broker = TestBroker::start().await;
    let (mut first, _) = RawClient::connected(broker.addr, &ConnectOptions::new("twin")).await;
    let (mut second, present) =
        RawClient::connected(broker.addr, &ConnectOptions::new("twin")).await;
    assert!(!present);

    assert!(
        first.closed_by_broker().await,
        "the first connection must be closed"
    );
    broker
        .wait_metrics("takeovers = 1", |m| m.takeovers == 1)
        .await;

    subscribe(&mut second, "s/twin", QoS::AtMostOnce).await;
    second
        .send(&publish_bytes(
            "s/twin",
            QoS::AtMostOnce,
            0,
            b"to myself",
            false,
        ))
        .await;
    let (_, payload, _, _) = recv_publish(&mut second).await.publish();
    assert_eq!(payload, b"to myself");
    broker.stop().await;
}

// [MQTT-3.1.4-2] with [MQTT-3.1.2-4]: a persistent session taken over by a
// new connection keeps its subscriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_4_2_takeover_of_a_persistent_session_keeps_subscriptions() {
    let broker = TestBroker::start().await;
    let (mut first, _) = RawClient::connected(broker.addr, &options("heir", false)).await;
    subscribe(&mut first, "s/heir", QoS::AtLeastOnce).await;

    let (mut second, present) = RawClient::connected(broker.addr, &options("heir", false)).await;
    assert!(present, "the taken-over session must be present");
    assert!(first.closed_by_broker().await);
    broker
        .wait_metrics("takeovers = 1", |m| m.takeovers == 1)
        .await;

    publish_qos1(&broker, "s/heir", &[b"inherited"]).await;
    let (topic, payload, _, packet_id) = recv_publish(&mut second).await.publish();
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("s/heir", &b"inherited"[..])
    );
    puback(&mut second, packet_id.unwrap()).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_queue_keeps_the_first_max_queued_messages_and_counts_the_rest() {
    let mut settings = settings();
    settings.limits.max_queued_messages = 3;
    let broker = TestBroker::start_with(settings).await;
    offline_session(&broker, "small-queue", "s/full", QoS::AtLeastOnce).await;

    let payloads: Vec<Vec<u8>> = (0..10u8).map(|n| vec![b'0' + n]).collect();
    let payloads: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    publish_qos1(&broker, "s/full", &payloads).await;
    broker
        .wait_metrics("dropped_queue_full = 7", |m| m.dropped_queue_full == 7)
        .await;

    let (mut client, present) =
        RawClient::connected(broker.addr, &options("small-queue", false)).await;
    assert!(present);
    for expected in &payloads[..3] {
        let (_, payload, _, packet_id) = recv_publish(&mut client).await.publish();
        assert_eq!(payload.as_slice(), *expected);
        puback(&mut client, packet_id.unwrap()).await;
    }
    assert_nothing_arrives(&mut client).await;
    assert_eq!(broker.metrics().dropped_queue_full, 7);
    broker.stop().await;
}

// [MQTT-4.4.0-1] on resume, messages in flight go again first (DUP, same
// ids, in order), then what was queued while offline (no DUP)
// [MQTT-4.6.0-2].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_4_0_1_resume_resends_in_flight_then_queued_in_order() {
    let broker = TestBroker::start().await;
    let (mut client, _) = RawClient::connected(broker.addr, &options("orderly", false)).await;
    subscribe(&mut client, "s/order", QoS::AtLeastOnce).await;
    publish_qos1(&broker, "s/order", &[b"m0", b"m1", b"m2"]).await;
    let mut in_flight = Vec::new();
    for _ in 0..3 {
        let (_, _, _, packet_id) = recv_publish(&mut client).await.publish();
        in_flight.push(packet_id.unwrap());
    }
    drop(client); // none acknowledged
    all_offline(&broker).await;
    publish_qos1(&broker, "s/order", &[b"m3", b"m4"]).await;

    let (mut client, present) = RawClient::connected(broker.addr, &options("orderly", false)).await;
    assert!(present);
    for (n, expected) in [&b"m0"[..], b"m1", b"m2", b"m3", b"m4"]
        .into_iter()
        .enumerate()
    {
        let packet = recv_publish(&mut client).await;
        let (_, payload, _, packet_id) = packet.publish();
        assert_eq!(payload, expected, "message {n} out of order");
        if let Some(first_id) = in_flight.get(n) {
            assert_eq!(packet.flags & DUP, DUP, "resent {n} needs DUP");
            assert_eq!(packet_id, Some(*first_id), "resent {n} keeps its id");
        } else {
            assert_eq!(packet.flags & DUP, 0, "{n} was never sent before");
        }
        puback(&mut client, packet_id.unwrap()).await;
    }
    assert_nothing_arrives(&mut client).await;
    broker.stop().await;
}

// [MQTT-4.3.3-2] the packet ids of QoS 2 PUBLISHes awaiting PUBREL are part
// of the session [MQTT-3.1.2-4]: a resend after a reconnect is not routed
// a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_3_3_2_qos2_publish_resent_after_reconnect_is_delivered_once() {
    let broker = TestBroker::start().await;
    let (mut subscriber, _) =
        RawClient::connected(broker.addr, &ConnectOptions::new("counter")).await;
    subscribe(&mut subscriber, "s/once", QoS::ExactlyOnce).await;

    let publish = publish_bytes("s/once", QoS::ExactlyOnce, 5, b"only once", false);
    let (mut publisher, _) = RawClient::connected(broker.addr, &options("retrier", false)).await;
    publisher.send(&publish).await;
    let pubrec = publisher.recv().await.expect("PUBREC");
    assert_eq!(
        (pubrec.packet_type, pubrec.body.as_slice()),
        (PUBREC, &[0, 5][..])
    );
    drop(publisher); // the PUBREC is "lost": no PUBREL

    let (mut publisher, present) =
        RawClient::connected(broker.addr, &options("retrier", false)).await;
    assert!(present);
    let mut resend = publish.clone();
    resend[0] |= DUP;
    publisher.send(&resend).await;
    let pubrec = publisher.recv().await.expect("PUBREC for the resend");
    assert_eq!(
        (pubrec.packet_type, pubrec.body.as_slice()),
        (PUBREC, &[0, 5][..])
    );
    publisher
        .send(&packet_bytes(&Packet::PubRel(Ack::new(id(5)))))
        .await;
    let pubcomp = publisher.recv().await.expect("PUBCOMP");
    assert_eq!(
        (pubcomp.packet_type, pubcomp.body.as_slice()),
        (PUBCOMP, &[0, 5][..])
    );

    let packet = recv_publish(&mut subscriber).await;
    let (_, payload, _, packet_id) = packet.publish();
    assert_eq!(payload, b"only once");
    subscriber
        .send(&packet_bytes(&Packet::PubRec(Ack::new(id(
            packet_id.unwrap()
        )))))
        .await;
    let pubrel = subscriber.recv().await.expect("PUBREL");
    assert_eq!(pubrel.packet_type, PUBREL);
    subscriber
        .send(&packet_bytes(&Packet::PubComp(Ack::new(id(
            packet_id.unwrap()
        )))))
        .await;
    assert_nothing_arrives(&mut subscriber).await;
    broker.stop().await;
}

// [MQTT-3.1.2-6] a clean session starts with no subscriptions, so it must
// not receive a message routed to the session it discarded. The router
// is made to lag (each noise message fans out to many subscribers) so that
// a message acknowledged before the clean CONNECT is still in its queue
// when the new session starts; the round is repeated to catch the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_1_2_6_clean_start_never_receives_messages_routed_before_it() {
    const LISTENERS: usize = 200;
    const NOISE: usize = 250;
    const ROUNDS: u16 = 15;
    let broker = TestBroker::start().await;
    let mut listeners = Vec::new();
    for n in 0..LISTENERS {
        let name = format!("noise-listener-{n}");
        let (mut listener, _) =
            RawClient::connected(broker.addr, &ConnectOptions::new(&name)).await;
        subscribe(&mut listener, "noise", QoS::AtMostOnce).await;
        listeners.push(listener); // never read again
    }
    let (mut publisher, _) = RawClient::connected(broker.addr, &ConnectOptions::new("flood")).await;
    let noise = publish_bytes("noise", QoS::AtMostOnce, 0, b"x", false);
    let noise: Vec<u8> = noise
        .iter()
        .copied()
        .cycle()
        .take(noise.len() * NOISE)
        .collect();
    let open = LISTENERS as u64 + 1;

    for round in 1..=ROUNDS {
        let (mut old, _) = RawClient::connected(broker.addr, &options("racer", false)).await;
        subscribe(&mut old, "s/race", QoS::AtLeastOnce).await;
        disconnect(old).await;
        broker
            .wait_metrics("the persistent session offline", |m| {
                m.connections_current == open
            })
            .await;

        let mut fresh = RawClient::connect(broker.addr).await;
        let mut wire = noise.clone();
        wire.extend(publish_bytes(
            "s/race",
            QoS::AtLeastOnce,
            round,
            b"for the old session",
            false,
        ));
        publisher.send(&wire).await;
        let ack = publisher.recv().await.expect("PUBACK");
        assert_eq!(
            (ack.packet_type, ack.body.as_slice()),
            (PUBACK, &round.to_be_bytes()[..])
        );

        // The message is with the router; now the session is discarded.
        fresh.send(&connect_bytes(&options("racer", true))).await;
        let connack = fresh.recv().await.expect("CONNACK");
        assert_eq!(connack.body, [0, 0], "accepted, no session present");
        fresh
            .send(&subscribe_bytes(1, &[("s/marker", QoS::AtMostOnce)]))
            .await;
        loop {
            let packet = fresh.recv().await.expect("SUBACK");
            assert!(
                packet.packet_type != PUBLISH,
                "round {round}: the clean session received a message for the session it \
                 discarded: {packet:?}"
            );
            if packet.packet_type == SUBACK {
                break;
            }
        }
        // The marker follows the old message through the router, so the
        // old message, had it been queued, would come first.
        publisher
            .send(&publish_bytes(
                "s/marker",
                QoS::AtMostOnce,
                0,
                b"marker",
                false,
            ))
            .await;
        let (topic, _, _, _) = recv_publish(&mut fresh).await.publish();
        assert_eq!(
            topic, "s/marker",
            "round {round}: the clean session received a message for the session it discarded"
        );
        disconnect(fresh).await;
    }
    drop(listeners);
    broker.stop().await;
}
