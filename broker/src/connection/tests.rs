//! In-memory connection tests over `tokio::io::duplex`, with paused time:
//! keepalive, connect timeout, the partial-packet read timeout and memory
//! charge, and that a failure of either side ends every task of the
//! connection.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tidemq_protocol::{
    encode_packet, Packet, PacketId, ProtocolVersion, QoS, Subscribe, TopicFilter,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::task::JoinHandle;

use super::*;

fn context(edit: impl FnOnce(&mut Settings)) -> Arc<Context> {
    let mut settings = Settings::defaults().unwrap();
    settings.storage.enabled = false;
    edit(&mut settings);
    Context::for_tests(settings)
}

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1))
}

fn connect_bytes(client_id: &str, keep_alive: u16) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_u16(4);
    body.put_slice(b"MQTT");
    body.put_u8(4);
    body.put_u8(0b10);
    body.put_u16(keep_alive);
    body.put_u16(client_id.len() as u16);
    body.put_slice(client_id.as_bytes());
    let mut wire = vec![0x10, body.len() as u8];
    wire.extend_from_slice(&body);
    wire
}

fn start<S: Transport>(stream: S, ctx: &Arc<Context>) -> JoinHandle<()> {
    let (admission, _) = ctx.gate.admit(peer().ip()).unwrap();
    tokio::spawn(serve(
        stream,
        test_origin(peer(), ctx),
        ctx.clone(),
        admission,
    ))
}

async fn handshake(client: &mut DuplexStream, keep_alive: u16) {
    client
        .write_all(&connect_bytes("c", keep_alive))
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    client.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);
}

async fn ends_within(task: JoinHandle<()>, limit: Duration) {
    tokio::time::timeout(limit, task)
        .await
        .expect("every task of the connection ended")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn mqtt_3_1_2_24_keepalive_closes_after_one_and_a_half_periods() {
    let ctx = context(|_| {});
    let (mut client, server) = tokio::io::duplex(4096);
    let task = start(server, &ctx);
    handshake(&mut client, 10).await;
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_secs(14), client.read(&mut byte)).await;
    assert!(early.is_err(), "still open after 14 s of a 10 s keepalive");
    let closed = tokio::time::timeout(Duration::from_secs(2), client.read(&mut byte)).await;
    assert_eq!(closed.unwrap().unwrap(), 0, "closed by 16 s");
    ends_within(task, Duration::from_secs(1)).await;
    assert_eq!(ctx.metrics.snapshot().keepalive_timeouts, 1);
}

#[tokio::test(start_paused = true)]
async fn keepalive_zero_never_times_out() {
    let ctx = context(|_| {});
    let (mut client, server) = tokio::io::duplex(4096);
    let _task = start(server, &ctx);
    handshake(&mut client, 0).await;
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(3600), client.read(&mut byte)).await;
    assert!(read.is_err(), "an hour of silence is fine with keepalive 0");
}

#[tokio::test(start_paused = true)]
async fn no_connect_within_the_timeout_closes() {
    let ctx = context(|s| s.connections.connect_timeout_ms = 10_000);
    let (mut client, server) = tokio::io::duplex(4096);
    let task = start(server, &ctx);
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(11), client.read(&mut byte)).await;
    assert_eq!(read.unwrap().unwrap(), 0);
    ends_within(task, Duration::from_secs(1)).await;
    assert_eq!(ctx.metrics.snapshot().connect_timeouts, 1);
}

#[tokio::test(start_paused = true)]
async fn closing_the_read_side_ends_the_writer_and_the_session() {
    let ctx = context(|_| {});
    let (mut client, server) = tokio::io::duplex(4096);
    let task = start(server, &ctx);
    handshake(&mut client, 0).await;
    let (_client_read, mut client_write) = tokio::io::split(client);
    client_write.shutdown().await.unwrap();
    drop(client_write);
    ends_within(task, Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_stalled_write_side_ends_the_reader_and_the_session() {
    let ctx = context(|s| {
        s.limits.write_timeout_ms = 1000;
        s.limits.outbound_queue = 4;
    });
    // A 64-byte pipe the client never reads: the broker's writes stall.
    let (mut client, server) = tokio::io::duplex(64);
    let task = start(server, &ctx);
    handshake(&mut client, 0).await;
    let mut wire = BytesMut::new();
    let filters = vec![(TopicFilter::new("t").unwrap(), QoS::AtMostOnce)];
    let packet_id = PacketId::new(1).unwrap();
    encode_packet(
        &Packet::Subscribe(Subscribe::qos(packet_id, filters)),
        ProtocolVersion::V311,
        &mut wire,
    );
    client.write_all(&wire).await.unwrap();
    // The SUBACK alone fits; PINGRESPs pile up behind a full pipe.
    for _ in 0..64 {
        if tokio::time::timeout(Duration::from_millis(10), client.write_all(&[0xC0, 0]))
            .await
            .is_err()
        {
            break;
        }
    }
    ends_within(task, Duration::from_secs(5)).await;
    assert_eq!(ctx.metrics.snapshot().write_timeouts, 1);
}

/// A stream whose writes fail once `budget` bytes were written.
struct FailingWrites {
    inner: DuplexStream,
    budget: usize,
}

impl AsyncRead for FailingWrites {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for FailingWrites {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.budget < buf.len() {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        self.budget -= buf.len();
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Transport for FailingWrites {
    type Parked = ();
}

#[tokio::test(start_paused = true)]
async fn a_failed_write_ends_the_reader_and_the_session() {
    let ctx = context(|_| {});
    let (mut client, server) = tokio::io::duplex(4096);
    // Room for the CONNACK only.
    let task = start(
        FailingWrites {
            inner: server,
            budget: 4,
        },
        &ctx,
    );
    handshake(&mut client, 0).await;
    client.write_all(&[0xC0, 0]).await.unwrap();
    ends_within(task, Duration::from_secs(1)).await;
}

/// A QoS 1 PUBLISH to "t" with `payload_len` bytes of payload.
fn publish_wire(packet_id: u16, payload_len: usize) -> Vec<u8> {
    let mut wire = BytesMut::new();
    let publish = tidemq_protocol::Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: tidemq_protocol::TopicName::new("t").unwrap(),
        packet_id: PacketId::new(packet_id),
        payload: bytes::Bytes::from(vec![b'p'; payload_len]),
        properties: None,
    };
    encode_packet(&Packet::Publish(publish), ProtocolVersion::V311, &mut wire);
    wire.to_vec()
}

async fn expect_puback(client: &mut DuplexStream, packet_id: u16) {
    let mut puback = [0u8; 4];
    client.read_exact(&mut puback).await.unwrap();
    let [hi, lo] = packet_id.to_be_bytes();
    assert_eq!(puback, [0x40, 2, hi, lo]);
}

#[tokio::test(start_paused = true)]
async fn a_partial_packet_with_keepalive_zero_is_closed_after_the_read_timeout() {
    let ctx = context(|s| s.limits.packet_read_timeout_ms = 1000);
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let task = start(server, &ctx);
    handshake(&mut client, 0).await;
    let wire = publish_wire(1, 10_000);
    client.write_all(&wire[..5_000]).await.unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(900), client.read(&mut byte)).await;
    assert!(early.is_err(), "still open 900 ms into a 1 s read timeout");
    // The buffer reserved for the whole announced packet is charged.
    let charged = ctx.metrics.snapshot().memory_accounted_bytes;
    assert!(charged >= 10_000, "charged {charged} bytes");
    let closed = tokio::time::timeout(Duration::from_millis(200), client.read(&mut byte)).await;
    assert_eq!(closed.unwrap().unwrap(), 0, "closed by 1.1 s");
    ends_within(task, Duration::from_secs(1)).await;
    let metrics = ctx.metrics.snapshot();
    assert_eq!(metrics.packet_read_timeouts, 1);
    assert_eq!(
        metrics.memory_accounted_bytes, 0,
        "the charge was given back"
    );
}

#[tokio::test(start_paused = true)]
async fn slow_packets_each_whole_within_the_read_timeout_are_fine() {
    let ctx = context(|s| s.limits.packet_read_timeout_ms = 1000);
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let _task = start(server, &ctx);
    handshake(&mut client, 0).await;
    // Two packets, each taking 800 ms: 1.6 s in all, but each is whole
    // within 1 s of its first byte.
    for packet_id in 1..=2 {
        let wire = publish_wire(packet_id, 2_000);
        for piece in wire.chunks(wire.len() / 4 + 1) {
            client.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        expect_puback(&mut client, packet_id).await;
    }
    let metrics = ctx.metrics.snapshot();
    assert_eq!(metrics.packet_read_timeouts, 0);
    assert_eq!(metrics.memory_accounted_bytes, 0, "no partial packet left");
}

#[tokio::test(start_paused = true)]
async fn a_partial_packet_over_the_memory_budget_closes_its_connection() {
    let ctx = context(|s| {
        s.limits.memory_limit_mb = 1;
        s.limits.max_packet_size = 4 * 1024 * 1024;
    });
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let task = start(server, &ctx);
    handshake(&mut client, 0).await;
    // A PUBLISH announcing 2 MiB: its buffer cannot be charged.
    let wire = publish_wire(1, 2 * 1024 * 1024);
    client.write_all(&wire[..1_000]).await.unwrap();
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_millis(100), client.read(&mut byte)).await;
    assert_eq!(closed.unwrap().unwrap(), 0, "closed at once");
    ends_within(task, Duration::from_secs(1)).await;
    let metrics = ctx.metrics.snapshot();
    assert_eq!(metrics.memory_limit_refusals, 1);
    assert_eq!(metrics.memory_accounted_bytes, 0);
}

/// While the broker is over `memory_limit_mb`, a new CONNECT is answered
/// 0x03 (server unavailable) [MQTT-3.2.2-4: session present 0] and closed;
/// once it is back under, the next is accepted.
#[tokio::test(start_paused = true)]
async fn over_the_memory_limit_a_connect_gets_server_unavailable() {
    let ctx = context(|s| s.limits.memory_limit_mb = 1);
    let over = ctx.settings.memory_limit_bytes() + 1;
    ctx.budget.charge(over);
    let (mut client, server) = tokio::io::duplex(4096);
    let task = start(server, &ctx);
    client.write_all(&connect_bytes("c", 0)).await.unwrap();
    let mut connack = [0u8; 4];
    client.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0x03]);
    let mut byte = [0u8; 1];
    assert_eq!(client.read(&mut byte).await.unwrap(), 0, "closed");
    ends_within(task, Duration::from_secs(1)).await;
    let metrics = ctx.metrics.snapshot();
    assert_eq!(
        (metrics.memory_limit_refusals, metrics.connacks_refused),
        (1, 1)
    );

    ctx.budget.release(over);
    let (mut client, server) = tokio::io::duplex(4096);
    let _task = start(server, &ctx);
    handshake(&mut client, 0).await;
}

#[tokio::test(start_paused = true)]
async fn a_large_partial_connect_without_room_in_the_memory_budget_is_closed() {
    let ctx = context(|s| {
        s.limits.memory_limit_mb = 1;
        s.limits.max_connect_packet_size = 1024 * 1024;
    });
    // Room for 100 KB: less than a CONNECT announcing 512 KiB.
    let used = ctx.settings.memory_limit_bytes() - 100_000;
    ctx.budget.charge(used);
    let (mut client, server) = tokio::io::duplex(4096);
    let task = start(server, &ctx);
    // CONNECT, remaining length 512 KiB (3 bytes: 0x80 0x80 0x20), then a
    // few bytes of its body.
    client
        .write_all(&[0x10, 0x80, 0x80, 0x20, 0, 4])
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        client.read(&mut byte).await.unwrap(),
        0,
        "closed unanswered"
    );
    ends_within(task, Duration::from_secs(1)).await;
    let metrics = ctx.metrics.snapshot();
    assert_eq!(metrics.memory_limit_refusals, 1);
    assert_eq!(metrics.memory_accounted_bytes, used, "nothing left charged");
}
