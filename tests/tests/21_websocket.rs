//! MQTT over WebSocket (`protocol = "ws"`), with tokio-tungstenite as an
//! independent client: round trips; the MQTT byte stream cut into frames
//! at every point (two frames, one frame per byte, a fragmented message)
//! gives the same packets; many packets in one frame; a text frame
//! [MQTT-6.0.0-1] and a frame over `ws_max_frame_bytes` close the
//! connection; ping and close are answered; the subprotocol is echoed; a
//! wrong path gets 404; wss; a resting WebSocket connection is woken; ws
//! and TCP clients exchange messages; an unfinished upgrade times out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tidemq::config::{ListenerConfig, ListenerProtocol};
use tidemq::Settings;
use tidemq_protocol::{ProtocolVersion, QoS};
use tidemq_tests::tls::{
    connect_packet, encoded_connect, tls_connect, ClientCert, Pki, StreamClient, Trust,
};
use tidemq_tests::transports::{
    assert_a_large_message_crosses, assert_woken_by_deliveries, exchange_with_plain, plain_expect,
    plain_subscriber,
};
use tidemq_tests::{publish_bytes, settings, subscribe_bytes, TestBroker, WAIT};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The MQTT byte stream of a WebSocket client: each write goes out as one
/// binary frame; reads return the payloads of the binary frames that come
/// in. A text frame from the broker is an error; a close frame or the end
/// of the stream is EOF.
struct WsBytes<S> {
    ws: WebSocketStream<S>,
    /// Payload of a binary frame not read yet.
    pending: Vec<u8>,
    read: usize,
}

impl<S> WsBytes<S> {
    fn new(ws: WebSocketStream<S>) -> WsBytes<S> {
        WsBytes {
            ws,
            pending: Vec::new(),
            read: 0,
        }
    }
}

fn ws_error(error: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::other(error)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsBytes<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.read < this.pending.len() {
                let n = buf.remaining().min(this.pending.len() - this.read);
                buf.put_slice(&this.pending[this.read..this.read + n]);
                this.read += n;
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => {
                    this.pending = data;
                    this.read = 0;
                }
                Some(Ok(Message::Text(text))) => {
                    let error = format!("the broker sent a text frame: {text:?}");
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, error)));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(error)) => return Poll::Ready(Err(ws_error(error))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsBytes<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let ws = &mut self.get_mut().ws;
        ready!(Pin::new(&mut *ws).poll_ready(cx)).map_err(ws_error)?;
        Pin::new(&mut *ws)
            .start_send(Message::Binary(buf.to_vec()))
            .map_err(ws_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_flush(cx)
            .map_err(ws_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_close(cx)
            .map_err(ws_error)
    }
}

/// A raw MQTT client over WebSocket.
type WsClient<S> = StreamClient<WsBytes<S>>;

fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn ws_listener() -> ListenerConfig {
    let mut listener = ListenerConfig::mqtt(local());
    listener.protocol = ListenerProtocol::Ws;
    listener
}

/// The test settings with a WebSocket listener after the plain one:
/// `addrs[0]` is TCP, `addrs[1]` WebSocket.
fn with_ws() -> Settings {
    let mut settings = settings();
    settings.listeners.push(ws_listener());
    settings
}

/// The WebSocket upgrade over `stream` for `url`, offering `protocols`;
/// returns the client and the subprotocol the broker chose.
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    url: &str,
    protocols: &[&str],
) -> (WsClient<S>, Option<String>) {
    let mut request = url.into_client_request().unwrap();
    if !protocols.is_empty() {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            protocols.join(",").parse().unwrap(),
        );
    }
    let (ws, response) =
        tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, stream))
            .await
            .expect("the upgrade in time")
            .unwrap();
    assert_eq!(response.status(), 101);
    let protocol = response
        .headers()
        .get("sec-websocket-protocol")
        .map(|value| value.to_str().unwrap().to_string());
    (StreamClient::new(WsBytes::new(ws)), protocol)
}

/// A WebSocket client of `addr` on `/mqtt`, offering subprotocol `mqtt`.
async fn ws_client(addr: SocketAddr) -> WsClient<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (client, protocol) = upgrade(tcp, &format!("ws://{addr}/mqtt"), &["mqtt"]).await;
    assert_eq!(protocol.as_deref(), Some("mqtt"));
    client
}

/// A WebSocket client past CONNACK 0.
async fn ws_connected(addr: SocketAddr, client_id: &str) -> WsClient<TcpStream> {
    let mut client = ws_client(addr).await;
    let connack = client
        .connack(&connect_packet(client_id, ProtocolVersion::V311))
        .await;
    assert_eq!(connack.wire_bytes(), [0x20, 0x02, 0x00, 0x00]);
    client
}

/// Sends one WebSocket message as it is (a control frame, a text frame, a
/// frame built by hand), not as MQTT bytes.
async fn send_message<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut WsClient<S>,
    message: Message,
) {
    client.stream.ws.send(message).await.unwrap();
}

/// A WebSocket client past CONNACK 0 and a PINGRESP, left to rest first
/// when `resting`, that has then sent `message`.
async fn sent_after_pingresp(
    broker: &TestBroker,
    client_id: &str,
    resting: bool,
    message: Message,
) -> WsClient<TcpStream> {
    let mut client = ws_connected(broker.addrs[1], client_id).await;
    client.ping().await;
    if resting {
        broker.wait_resting(1).await;
    }
    send_message(&mut client, message).await;
    client
}

/// The next WebSocket message itself (control frames included).
async fn next_message<S: AsyncRead + AsyncWrite + Unpin>(client: &mut WsClient<S>) -> Message {
    tokio::time::timeout(WAIT, client.stream.ws.next())
        .await
        .expect("a WebSocket message in time")
        .expect("the WebSocket stream open")
        .unwrap()
}

/// CONNECT, SUBSCRIBE at QoS 1 and a QoS 0 PUBLISH to the client's own
/// subscription, as one byte stream; and the bytes the broker answers it
/// with: CONNACK 0, SUBACK granting 1, the message at QoS 0.
fn split_stream(client_id: &str) -> (Vec<u8>, Vec<u8>) {
    let stream = [
        encoded_connect(&connect_packet(client_id, ProtocolVersion::V311)),
        subscribe_bytes(1, &[("split/t", QoS::AtLeastOnce)]),
        publish_bytes("split/t", QoS::AtMostOnce, 0, b"split payload", false),
    ]
    .concat();
    let answer = [
        vec![0x20, 0x02, 0x00, 0x00],
        vec![0x90, 0x03, 0x00, 0x01, 0x01],
        publish_bytes("split/t", QoS::AtMostOnce, 0, b"split payload", false),
    ]
    .concat();
    (stream, answer)
}

/// Sends `frames` as binary frames, one at a time, and asserts the broker
/// answers with exactly `answer` and then nothing more (a PINGREQ round
/// trip comes next).
async fn assert_frames_answered(broker: &TestBroker, frames: &[&[u8]], answer: &[u8], what: &str) {
    let mut client = ws_client(broker.addrs[1]).await;
    for frame in frames {
        send_message(&mut client, Message::Binary(frame.to_vec())).await;
    }
    let mut got = Vec::new();
    while got.len() < answer.len() {
        let packet = client
            .recv()
            .await
            .unwrap_or_else(|| panic!("{what}: the answer stopped after {got:02x?}"));
        got.extend(packet.wire_bytes());
    }
    assert_eq!(got, answer, "{what}");
    client.ping().await;
}

/// CONNECT, CONNACK, SUBSCRIBE, SUBACK, and a QoS 1 PUBLISH to the
/// client's own subscription: PUBACK, and the message comes back. Every
/// frame the broker sends is binary (a text frame fails the read).
#[tokio::test]
async fn mqtt_round_trips_over_websocket() {
    let broker = TestBroker::start_with(with_ws()).await;
    let mut client = ws_connected(broker.addrs[1], "ws-echo").await;
    client
        .subscribe_granted(1, &[("ws/echo", QoS::AtLeastOnce)])
        .await;
    client.publish_qos1("ws/echo", 1, b"over websocket").await;
    client.expect_publish("ws/echo", b"over websocket").await;
    client.ping().await;
    assert_eq!(broker.metrics().handshakes_failed, 0);
    broker.stop().await;
}

/// Packets and frames need not line up: the stream CONNECT + SUBSCRIBE +
/// PUBLISH split into two binary frames at every offset (an empty frame at
/// either end included) gets the same answer, byte for byte.
#[tokio::test]
async fn every_split_into_two_frames_gives_the_same_answer() {
    let broker = TestBroker::start_with(with_ws()).await;
    for split in 0..=split_stream("split-00").0.len() {
        // Client ids of one length: every stream has the same layout.
        let (stream, answer) = split_stream(&format!("split-{split:02}"));
        let (first, second) = stream.split_at(split);
        let what = format!("split at byte {split} of {}", stream.len());
        assert_frames_answered(&broker, &[first, second], &answer, &what).await;
    }
    broker.stop().await;
}

/// The same stream with each byte in a frame of its own gets the same
/// answer.
#[tokio::test]
async fn one_frame_per_byte_gives_the_same_answer() {
    let broker = TestBroker::start_with(with_ws()).await;
    let (stream, answer) = split_stream("bytewise");
    let frames: Vec<&[u8]> = stream.chunks(1).collect();
    assert_frames_answered(&broker, &frames, &answer, "one frame per byte").await;
    broker.stop().await;
}

/// The same stream as one fragmented message (a binary frame and two
/// continuation frames, cut inside packets, with pings between them) gets
/// the same answer.
#[tokio::test]
async fn a_fragmented_message_gives_the_same_answer() {
    let broker = TestBroker::start_with(with_ws()).await;
    let (stream, answer) = split_stream("fragments");
    let mut client = ws_client(broker.addrs[1]).await;
    let (a, b) = (5, stream.len() - 7);
    let fragments = [
        (0, a, OpCode::Data(Data::Binary), false),
        (a, b, OpCode::Data(Data::Continue), false),
        (b, stream.len(), OpCode::Data(Data::Continue), true),
    ];
    for (from, to, opcode, fin) in fragments {
        let frame = Frame::message(stream[from..to].to_vec(), opcode, fin);
        send_message(&mut client, Message::Frame(frame)).await;
        if fin {
            continue;
        }
        // Control frames may come between fragments (RFC 6455 5.4).
        send_message(&mut client, Message::Ping(b"between".to_vec())).await;
    }
    let mut got = Vec::new();
    while got.len() < answer.len() {
        got.extend(client.recv().await.expect("the answer").wire_bytes());
    }
    assert_eq!(got, answer);
    client.ping().await;
    broker.stop().await;
}

/// One binary frame holding CONNECT, 50 QoS 1 PUBLISHes and a PINGREQ is
/// answered with CONNACK, then PUBACK 1 to 50 in order and one PINGRESP,
/// and a TCP subscriber gets the 50 messages in order.
#[tokio::test]
async fn many_packets_in_one_frame_are_all_handled() {
    const COUNT: u16 = 50;
    let broker = TestBroker::start_with(with_ws()).await;
    let mut subscriber = plain_subscriber(broker.addrs[0], "tcp-sub", "ws/many").await;
    let mut frame = encoded_connect(&connect_packet("ws-many", ProtocolVersion::V311));
    for id in 1..=COUNT {
        frame.extend(publish_bytes(
            "ws/many",
            QoS::AtLeastOnce,
            id,
            &id.to_be_bytes(),
            false,
        ));
    }
    frame.extend([0xC0, 0x00]);
    let mut client = ws_client(broker.addrs[1]).await;
    client.send(&frame).await;
    let connack = client.recv().await.expect("CONNACK");
    assert_eq!(connack.wire_bytes(), [0x20, 0x02, 0x00, 0x00]);
    // A PUBACK goes out once its message is routed, so the PINGRESP may
    // overtake them; the PUBACKs keep their order [MQTT-4.6.0-2].
    let mut pubacks = Vec::new();
    let mut pingresps = 0;
    while pubacks.len() < usize::from(COUNT) || pingresps == 0 {
        let packet = client.recv().await.expect("PUBACK or PINGRESP");
        match packet.wire_bytes().as_slice() {
            [0x40, 0x02, hi, lo] => pubacks.push(u16::from_be_bytes([*hi, *lo])),
            [0xD0, 0x00] => pingresps += 1,
            other => panic!("expected PUBACK or PINGRESP, got {other:02x?}"),
        }
    }
    assert_eq!(pubacks, (1..=COUNT).collect::<Vec<_>>());
    assert_eq!(pingresps, 1);
    for id in 1..=COUNT {
        plain_expect(&mut subscriber, "ws/many", &id.to_be_bytes()).await;
    }
    broker.stop().await;
}

/// A 900 KB message crosses WebSocket both ways: sent in one frame by the
/// ws client to a TCP subscriber, and delivered to the ws client from a
/// TCP publisher (the broker writes it as several binary frames).
#[tokio::test]
async fn a_large_message_crosses_websocket_both_ways() {
    let broker = TestBroker::start_with(with_ws()).await;
    let mut ws = ws_connected(broker.addrs[1], "ws-large").await;
    assert_a_large_message_crosses(&broker, &mut ws, "large/to-ws").await;
    broker.stop().await;
}

/// [MQTT-6.0.0-1] a text frame closes the connection, sent right after a
/// PINGRESP or to a resting connection: nothing is answered after it, and
/// the broker ends the stream.
#[tokio::test]
async fn mqtt_6_0_0_1_a_text_frame_closes_the_connection() {
    let broker = TestBroker::start_with(with_ws()).await;
    for resting in [false, true] {
        let text = Message::Text("PINGREQ".to_string());
        let mut client = sent_after_pingresp(&broker, "ws-text", resting, text).await;
        client.assert_ended_without_packet().await;
        broker
            .wait_metrics("the connection gone", |m| m.connections_current == 0)
            .await;
    }
    broker.stop().await;
}

/// `ws_max_frame_bytes` at its minimum, 1024: a PUBLISH of exactly 1024
/// bytes in one frame is taken; 1025 bytes in two frames too (the limit is
/// on frames, not packets); the same 1025 bytes in one frame close the
/// connection without a PUBACK.
#[tokio::test]
async fn a_frame_over_ws_max_frame_bytes_closes_the_connection() {
    const MAX_FRAME: usize = 1024;
    let mut settings = with_ws();
    settings.connections.ws_max_frame_bytes = MAX_FRAME;
    let broker = TestBroker::start_with(settings).await;
    let publish_of = |id: u16, len: usize| {
        // The header's size depends on the payload's: find the payload
        // that makes the packet `len` bytes.
        (0..len)
            .map(|payload| {
                publish_bytes("ws/big", QoS::AtLeastOnce, id, &vec![b'x'; payload], false)
            })
            .find(|packet| packet.len() == len)
            .unwrap()
    };
    let mut client = ws_connected(broker.addrs[1], "ws-big").await;
    client.send(&publish_of(1, MAX_FRAME)).await;
    assert_eq!(
        client.recv().await.expect("PUBACK").wire_bytes(),
        [0x40, 0x02, 0x00, 0x01]
    );
    let over = publish_of(2, MAX_FRAME + 1);
    let (first, second) = over.split_at(MAX_FRAME / 2);
    client.send(first).await;
    client.send(second).await;
    assert_eq!(
        client.recv().await.expect("PUBACK").wire_bytes(),
        [0x40, 0x02, 0x00, 0x02]
    );
    client.send(&publish_of(3, MAX_FRAME + 1)).await;
    client.assert_ended_without_packet().await;
    let metrics = broker.metrics();
    assert_eq!(metrics.messages_received, 2, "{metrics:?}");
    broker.stop().await;
}

/// A ping gets a pong with its payload, also when the connection rests
/// (the ping wakes it), and MQTT goes on after both.
#[tokio::test]
async fn a_ping_gets_a_pong_with_its_payload() {
    let broker = TestBroker::start_with(with_ws()).await;
    let mut client = ws_connected(broker.addrs[1], "ws-ping").await;
    for payload in [&b"awake"[..], &b"resting"[..]] {
        if payload == b"resting" {
            broker.wait_resting(1).await;
        }
        send_message(&mut client, Message::Ping(payload.to_vec())).await;
        assert_eq!(
            next_message(&mut client).await,
            Message::Pong(payload.to_vec())
        );
        client.ping().await;
    }
    broker.stop().await;
}

/// A close frame, sent right after a PINGRESP or to a resting connection,
/// gets a close frame with the same status code back, and the connection
/// ends.
#[tokio::test]
async fn a_close_frame_gets_its_close_echoed() {
    let broker = TestBroker::start_with(with_ws()).await;
    for resting in [false, true] {
        let close = Message::Close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "going".into(),
        }));
        let mut client = sent_after_pingresp(&broker, "ws-close", resting, close).await;
        match next_message(&mut client).await {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
            other => panic!("expected the close echoed, got {other:?}"),
        }
        broker
            .wait_metrics("the connection gone", |m| m.connections_current == 0)
            .await;
    }
    broker.stop().await;
}

/// [MQTT-6.0.0-3] the subprotocol: `mqtt` is echoed, `mqttv3.1` accepted
/// and echoed, `mqtt` preferred when both are offered; MQTT works on each.
#[tokio::test]
async fn mqtt_6_0_0_3_the_mqtt_subprotocol_is_echoed() {
    let broker = TestBroker::start_with(with_ws()).await;
    let addr = broker.addrs[1];
    let cases: [(&[&str], &str); 3] = [
        (&["mqtt"], "mqtt"),
        (&["mqttv3.1"], "mqttv3.1"),
        (&["mqttv3.1", "mqtt"], "mqtt"),
    ];
    for (n, (offered, chosen)) in cases.into_iter().enumerate() {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut client, protocol) = upgrade(tcp, &format!("ws://{addr}/mqtt"), offered).await;
        assert_eq!(protocol.as_deref(), Some(chosen), "offered {offered:?}");
        let connack = client
            .connack(&connect_packet(&format!("sub-{n}"), ProtocolVersion::V311))
            .await;
        assert_eq!(connack.wire_bytes(), [0x20, 0x02, 0x00, 0x00]);
    }
    broker.stop().await;
}

/// Sends a raw HTTP request and returns the whole response (up to EOF).
async fn http_response(addr: SocketAddr, request: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut response))
        .await
        .expect("the response and the close in time")
        .unwrap();
    String::from_utf8(response).unwrap()
}

/// An upgrade on another path than `ws_path` gets 404; a plain GET on the
/// right path gets 400; the broker closes both and counts them as failed
/// handshakes.
#[tokio::test]
async fn a_wrong_path_gets_404() {
    let broker = TestBroker::start_with(with_ws()).await;
    let addr = broker.addrs[1];
    let upgrade_to = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        )
    };
    let response = http_response(addr, &upgrade_to("/not-mqtt")).await;
    assert!(response.starts_with("HTTP/1.1 404 "), "{response:?}");
    let response = http_response(addr, "GET /mqtt HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 400 "), "{response:?}");
    // The right request on the same listener is upgraded.
    let response_head = {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(upgrade_to("/mqtt?client=1").as_bytes())
            .await
            .unwrap();
        let mut head = vec![0u8; 512];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut head))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8(head[..n].to_vec()).unwrap()
    };
    assert!(
        response_head.starts_with("HTTP/1.1 101 "),
        "{response_head:?}"
    );
    assert!(
        response_head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{response_head:?}"
    );
    broker
        .wait_metrics("two failed upgrades", |m| m.handshakes_failed == 2)
        .await;
    broker.stop().await;
}

/// WebSocket over TLS (`protocol = "ws"` with `tls`): the upgrade and a
/// QoS 1 round trip over the TLS stream, and messages to and from a TCP
/// client.
#[tokio::test]
async fn wss_round_trips_over_tls() {
    let pki = Pki::new("wss");
    let mut settings = settings();
    let mut wss = ws_listener();
    wss.tls = Some(pki.server_tls());
    settings.listeners.push(wss);
    let broker = TestBroker::start_with(settings).await;
    let addr = broker.addrs[1];
    let tls = tls_connect(addr, pki.client_config(Trust::OurCa, ClientCert::None))
        .await
        .unwrap();
    let (mut client, protocol) = upgrade(
        tls,
        &format!("wss://localhost:{}/mqtt", addr.port()),
        &["mqtt"],
    )
    .await;
    assert_eq!(protocol.as_deref(), Some("mqtt"));
    let connack = client
        .connack(&connect_packet("wss", ProtocolVersion::V311))
        .await;
    assert_eq!(connack.wire_bytes(), [0x20, 0x02, 0x00, 0x00]);
    client
        .subscribe_granted(1, &[("wss/in", QoS::AtLeastOnce)])
        .await;
    client.publish_qos1("wss/in", 1, b"self").await;
    client.expect_publish("wss/in", b"self").await;

    let mut plain = plain_subscriber(broker.addrs[0], "tcp", "wss/out").await;
    exchange_with_plain(
        &mut client,
        &mut plain,
        ("wss/out", 2, b"from wss"),
        ("wss/in", 3, b"from tcp"),
    )
    .await;
    // Resting over TLS and WebSocket, it is woken by a delivery.
    broker.wait_resting(2).await;
    plain
        .publish_acked("wss/in", QoS::AtLeastOnce, 4, b"wake up", false)
        .await;
    client.expect_publish("wss/in", b"wake up").await;
    assert_eq!(broker.metrics().handshakes_failed, 0);
    broker.stop().await;
}

/// `use_identity_as_username` on a wss listener with `allow_anonymous =
/// false`: a CONNECT without a user name is accepted from a client with a
/// certificate and refused (0x05) from one without.
#[tokio::test]
async fn wss_takes_the_client_certificate_identity() {
    let pki = Pki::new("wss-identity");
    let mut settings = settings();
    let mut wss = ws_listener();
    wss.tls = Some(pki.mutual_tls(false, true));
    wss.allow_anonymous = Some(false);
    settings.listeners = vec![wss];
    let broker = TestBroker::start_with(settings).await;
    let addr = broker.addrs[0];
    let url = format!("wss://localhost:{}/mqtt", addr.port());
    for (cert, code) in [(ClientCert::WithCommonName, 0x00), (ClientCert::None, 0x05)] {
        let tls = tls_connect(addr, pki.client_config(Trust::OurCa, cert))
            .await
            .unwrap();
        let (mut client, _) = upgrade(tls, &url, &["mqtt"]).await;
        let connack = client
            .connack(&connect_packet("wss-identity", ProtocolVersion::V311))
            .await;
        assert_eq!(connack.wire_bytes(), [0x20, 0x02, 0x00, code], "{cert:?}");
    }
    assert_eq!(broker.metrics().logins_refused, 1);
    broker.stop().await;
}

/// A WebSocket connection rests like a TCP one: a resting subscriber is
/// woken by a delivery, rests again, is woken by its own PINGREQ, and gets
/// a second delivery.
#[tokio::test]
async fn a_resting_websocket_connection_is_woken_by_a_delivery() {
    let broker = TestBroker::start_with(with_ws()).await;
    let mut subscriber = ws_connected(broker.addrs[1], "ws-resting").await;
    assert_woken_by_deliveries(&broker, &mut subscriber, "rest/ws", "WebSocket").await;
    broker.stop().await;
}

/// A masked client frame, written by hand so that a test can send part
/// of one.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x80];
    assert!(payload.len() <= 125);
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    frame.extend(MASK);
    frame.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
    frame
}

/// Upgrades a raw TCP connection, sending `early` right after the request;
/// returns the stream past the 101 answer's head (which it checks), and
/// any bytes read after it.
async fn raw_upgrade(addr: SocketAddr, early: &[u8]) -> (TcpStream, Vec<u8>) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut request = b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    request.extend_from_slice(early);
    tcp.write_all(&request).await.unwrap();
    let mut read = Vec::new();
    loop {
        if let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
            let after = read.split_off(end + 4);
            let head = String::from_utf8(read).unwrap();
            assert!(head.starts_with("HTTP/1.1 101 "), "{head:?}");
            return (tcp, after);
        }
        let mut chunk = [0u8; 512];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("the 101 answer in time")
            .unwrap();
        assert!(n > 0, "closed during the upgrade: {read:?}");
        read.extend_from_slice(&chunk[..n]);
    }
}

/// Reads one short server frame (unmasked, payload under 126 bytes) from
/// `read` (bytes already read) and then `tcp`; returns its first byte and
/// payload.
async fn read_short_frame(tcp: &mut TcpStream, read: &mut Vec<u8>) -> (u8, Vec<u8>) {
    loop {
        if let [first, len, ..] = read[..] {
            assert!(len < 126, "a short unmasked frame, got length byte {len}");
            let total = 2 + usize::from(len);
            if read.len() >= total {
                let frame: Vec<u8> = read.drain(..total).collect();
                return (first, frame[2..].to_vec());
            }
        }
        let mut chunk = [0u8; 256];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("a frame in time")
            .unwrap();
        assert!(n > 0, "closed, with {read:02x?} read");
        read.extend_from_slice(&chunk[..n]);
    }
}

/// A resting connection keeps its place in the frame stream however the
/// client's bytes stop: with the first MQTT frame sent along with the
/// upgrade request, then resting inside a frame's payload (the mask part
/// way through its cycle), inside a frame header, and inside a ping's
/// payload; each time it rests again, and the rest of the bytes complete
/// the packet or the ping.
#[tokio::test]
async fn a_websocket_connection_rests_inside_a_frame() {
    let broker = TestBroker::start_with(with_ws()).await;
    let connect = encoded_connect(&connect_packet("ws-parts", ProtocolVersion::V311));
    let (mut tcp, mut read) = raw_upgrade(broker.addrs[1], &client_frame(0x2, &connect)).await;
    assert_eq!(
        read_short_frame(&mut tcp, &mut read).await,
        (0x82, vec![0x20, 0x02, 0x00, 0x00])
    );
    broker.wait_resting(1).await;

    let publish = client_frame(
        0x2,
        &publish_bytes("ws/parts", QoS::AtLeastOnce, 1, b"payload", false),
    );
    let pingreq = client_frame(0x2, &[0xC0, 0x00]);
    let ping = client_frame(0x9, b"parts");
    // Bytes sent before the rest, bytes after it, the answer expected.
    type Case<'a> = (&'a [u8], &'a [u8], (u8, Vec<u8>));
    let cases: [Case<'_>; 3] = [
        (
            &publish[..6 + 3],
            &publish[6 + 3..],
            (0x82, vec![0x40, 0x02, 0x00, 0x01]),
        ),
        (&pingreq[..1], &pingreq[1..], (0x82, vec![0xD0, 0x00])),
        (&ping[..6 + 2], &ping[6 + 2..], (0x8A, b"parts".to_vec())),
    ];
    for (before, after, answer) in cases {
        let rested = broker.metrics().connections_rested;
        tcp.write_all(before).await.unwrap();
        broker
            .wait_metrics("a rest with part of a frame read", |m| {
                m.connections_rested > rested
            })
            .await;
        broker.wait_resting(1).await;
        tcp.write_all(after).await.unwrap();
        assert_eq!(read_short_frame(&mut tcp, &mut read).await, answer);
        broker.wait_resting(1).await;
    }
    broker.stop().await;
}

/// A WebSocket client and a TCP client exchange QoS 1 messages both ways,
/// and a retained message set over TCP reaches a later WebSocket
/// subscriber.
#[tokio::test]
async fn websocket_and_tcp_clients_exchange_messages() {
    let broker = TestBroker::start_with(with_ws()).await;
    let mut ws = ws_connected(broker.addrs[1], "ws-side").await;
    ws.subscribe_granted(1, &[("cross/to-ws", QoS::AtLeastOnce)])
        .await;
    let mut tcp = plain_subscriber(broker.addrs[0], "tcp-side", "cross/to-tcp").await;
    tcp.publish_acked("cross/to-ws", QoS::AtLeastOnce, 1, b"hello ws", false)
        .await;
    ws.expect_publish("cross/to-ws", b"hello ws").await;
    ws.publish_qos1("cross/to-tcp", 1, b"hello tcp").await;
    plain_expect(&mut tcp, "cross/to-tcp", b"hello tcp").await;

    tcp.publish_acked("cross/retained", QoS::AtLeastOnce, 2, b"kept", true)
        .await;
    let mut late = ws_connected(broker.addrs[1], "ws-late").await;
    late.send(&subscribe_bytes(1, &[("cross/retained", QoS::AtLeastOnce)]))
        .await;
    let suback = late.recv().await.expect("SUBACK");
    assert_eq!(suback.wire_bytes(), [0x90, 0x03, 0x00, 0x01, 0x01]);
    let retained = late.recv().await.expect("the retained message");
    let (topic, payload, _, _) = retained.publish();
    assert_eq!(
        (topic.as_str(), payload.as_slice(), retained.retain()),
        ("cross/retained", &b"kept"[..], true)
    );
    broker.stop().await;
}

/// An upgrade request that stops half way is closed after
/// `connect_timeout_ms` and counted in `connect_timeouts`.
#[tokio::test]
async fn an_unfinished_upgrade_is_closed_after_connect_timeout() {
    let mut settings = with_ws();
    settings.connections.connect_timeout_ms = 300;
    let broker = TestBroker::start_with(settings).await;
    let mut tcp = TcpStream::connect(broker.addrs[1]).await.unwrap();
    tcp.write_all(b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    broker
        .wait_metrics("the upgrade timed out", |m| m.connect_timeouts == 1)
        .await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "expected a close without an answer, got {read:?} {rest:?}"
    );
    assert_eq!(broker.metrics().handshakes_failed, 0);
    broker.stop().await;
}
