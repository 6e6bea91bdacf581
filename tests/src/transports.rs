//! Flows shared by the tests of the transports other than plain TCP (TLS in
//! `20_tls`, WebSocket and wss in `21_websocket`), so that each transport is
//! held to the same proof. Each drives a [`StreamClient`] over the
//! transport's own stream against a plain TCP [`RawClient`]; where a flow
//! takes the broker, the plain client connects to `broker.addrs[0]`, which
//! must be the plain TCP listener (as [`crate::settings`] makes it).

use std::net::SocketAddr;

use tidemq_protocol::QoS;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::tls::StreamClient;
use crate::{ConnectOptions, RawClient, TestBroker};

/// One message as a flow sends it: topic, packet id, payload.
pub type Sent<'a> = (&'a str, u16, &'a [u8]);

/// A plain TCP client of `addr`, subscribed to `topic` at QoS 1.
pub async fn plain_subscriber(addr: SocketAddr, client_id: &str, topic: &str) -> RawClient {
    let (mut client, _) = RawClient::connected(addr, &ConnectOptions::new(client_id)).await;
    client
        .subscribe_granted(1, &[(topic, QoS::AtLeastOnce)])
        .await;
    client
}

/// Receives one QoS 1 PUBLISH on a plain client, checks it, acknowledges it.
pub async fn plain_expect(client: &mut RawClient, topic: &str, payload: &[u8]) {
    let (got_topic, got_payload, qos, id) = client.next_publish().await.publish();
    assert_eq!(
        (got_topic.as_str(), got_payload.as_slice()),
        (topic, payload)
    );
    assert_eq!(qos, QoS::AtLeastOnce);
    let [hi, lo] = id.unwrap().to_be_bytes();
    client.send(&[0x40, 0x02, hi, lo]).await;
}

/// A QoS 1 message each way: `client` publishes `to_plain` to `plain`
/// (subscribed to its topic), then `plain` publishes `to_client` to
/// `client` (subscribed to its topic); each arrives intact and is
/// acknowledged.
pub async fn exchange_with_plain<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut StreamClient<S>,
    plain: &mut RawClient,
    to_plain: Sent<'_>,
    to_client: Sent<'_>,
) {
    let (topic, packet_id, payload) = to_plain;
    client.publish_qos1(topic, packet_id, payload).await;
    plain_expect(plain, topic, payload).await;
    let (topic, packet_id, payload) = to_client;
    plain
        .publish_acked(topic, QoS::AtLeastOnce, packet_id, payload, false)
        .await;
    client.expect_publish(topic, payload).await;
}

/// A 900 KB message (near `max_packet_size`, so many records or frames)
/// crosses the transport both ways, intact: from `client` to a plain TCP
/// subscriber of `large/to-tcp`, and from a plain TCP publisher to
/// `client`, subscribed here to `to_client`.
pub async fn assert_a_large_message_crosses<S: AsyncRead + AsyncWrite + Unpin>(
    broker: &TestBroker,
    client: &mut StreamClient<S>,
    to_client: &str,
) {
    let payload: Vec<u8> = (0..900_000u32).map(|n| (n % 251) as u8).collect();
    client
        .subscribe_granted(1, &[(to_client, QoS::AtLeastOnce)])
        .await;
    let mut plain = plain_subscriber(broker.addrs[0], "tcp-large", "large/to-tcp").await;
    exchange_with_plain(
        client,
        &mut plain,
        ("large/to-tcp", 1, &payload),
        (to_client, 2, &payload),
    )
    .await;
    client.ping().await;
}

/// A connection over the transport rests like a TCP one and keeps its
/// session: `subscriber` subscribes to `topic` and rests; a delivery from
/// a plain TCP publisher wakes it; it rests again, is woken by its own
/// PINGREQ, and gets a second delivery. The broker counts at least three
/// rests; `what` names the transport in a failure.
pub async fn assert_woken_by_deliveries<S: AsyncRead + AsyncWrite + Unpin>(
    broker: &TestBroker,
    subscriber: &mut StreamClient<S>,
    topic: &str,
    what: &str,
) {
    subscriber
        .subscribe_granted(1, &[(topic, QoS::AtLeastOnce)])
        .await;
    broker.wait_resting(1).await;
    let rested = broker.metrics().connections_rested;

    let (mut publisher, _) =
        RawClient::connected(broker.addrs[0], &ConnectOptions::new("waker")).await;
    publisher
        .publish_acked(topic, QoS::AtLeastOnce, 1, b"wake up", false)
        .await;
    subscriber.expect_publish(topic, b"wake up").await;

    broker.wait_resting(2).await;
    subscriber.ping().await;
    broker.wait_resting(2).await;
    publisher
        .publish_acked(topic, QoS::AtLeastOnce, 2, b"again", false)
        .await;
    subscriber.expect_publish(topic, b"again").await;
    let metrics = broker.metrics();
    assert!(
        metrics.connections_rested >= rested + 3,
        "{what}: {metrics:?}"
    );
}
