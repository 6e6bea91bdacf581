//! Harness for the end-to-end tests in `tests/tests/`: starts the real
//! broker on 127.0.0.1 port 0 and gives tests two kinds of client: a raw TCP
//! client that reads and writes exact bytes, and `rumqttc`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tidemq::config::ListenerConfig;
use tidemq::{Broker, MetricsSnapshot, Settings};
use tidemq_protocol::{
    encode_packet, put_remaining_length, Framer, Packet, PacketId, ProtocolVersion, Publish, QoS,
    Subscribe, TopicFilter, TopicName,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);

pub mod http;
pub mod mosquitto;
pub mod scram;
pub mod scratch;
pub mod tls;
pub mod transports;
pub mod v5;
/// How long a test waits to be sure something does not happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// A broker for one test.
pub struct TestBroker {
    broker: Option<Broker>,
    pub addr: SocketAddr,
    /// Every listener's address, in the order of `settings.listeners`.
    pub addrs: Vec<SocketAddr>,
}

/// Default settings, listening on 127.0.0.1 port 0.
pub fn settings() -> Settings {
    let mut settings = Settings::defaults().unwrap();
    settings.storage.enabled = false;
    settings.listeners = vec![ListenerConfig::mqtt(SocketAddr::from(([127, 0, 0, 1], 0)))];
    // Connections rest after 20 ms of nothing to do, so every test also
    // crosses rests and wake-ups (mail, packets, takeover, keepalive, close).
    settings.limits.rest_after_ms = 20;
    // No HTTP listener (tests that want one bind 127.0.0.1:0).
    settings.http.bind = String::new();
    settings
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        TestBroker::start_with(settings()).await
    }

    pub async fn start_with(settings: Settings) -> TestBroker {
        TestBroker::start_with_authenticator(settings, None).await
    }

    /// A broker with an MQTT 5 enhanced authentication method.
    pub async fn start_with_authenticator(
        settings: Settings,
        authenticator: Option<std::sync::Arc<dyn tidemq::auth::Authenticator>>,
    ) -> TestBroker {
        let broker = Broker::start_with_authenticator(settings, authenticator)
            .await
            .unwrap();
        let addr = broker.local_addrs()[0];
        let addrs = broker.local_addrs().to_vec();
        TestBroker {
            broker: Some(broker),
            addr,
            addrs,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The broker itself, for its embedding API.
    pub fn broker(&self) -> &Broker {
        self.broker.as_ref().unwrap()
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        self.broker.as_ref().unwrap().metrics()
    }

    /// Waits until exactly `count` connections rest in the dormitory.
    pub async fn wait_resting(&self, count: usize) {
        let broker = self.broker.as_ref().unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        while broker.resting_connections() != count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {count} resting connections, {} rest",
                broker.resting_connections()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `check` holds for the metrics, or panics after [`WAIT`].
    pub async fn wait_metrics(&self, what: &str, check: impl Fn(&MetricsSnapshot) -> bool) {
        self.wait_metrics_within(WAIT, what, check).await;
    }

    /// [`TestBroker::wait_metrics`] for something due later than [`WAIT`]
    /// (a session expiry): panics after `patience`.
    pub async fn wait_metrics_within(
        &self,
        patience: Duration,
        what: &str,
        check: impl Fn(&MetricsSnapshot) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + patience;
        while !check(&self.metrics()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                self.metrics()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(broker) = self.broker.take() {
            broker.shutdown().await;
        }
    }
}

/// A packet as the raw client read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPacket {
    pub packet_type: u8,
    pub flags: u8,
    pub body: Vec<u8>,
}

impl RawPacket {
    /// Topic and payload of a PUBLISH.
    pub fn publish(&self) -> (String, Vec<u8>, QoS, Option<u16>) {
        assert_eq!(self.packet_type, 3, "not a PUBLISH: {self:?}");
        let qos = QoS::from_bits((self.flags >> 1) & 3).unwrap();
        let len = usize::from(u16::from_be_bytes([self.body[0], self.body[1]]));
        let topic = String::from_utf8(self.body[2..2 + len].to_vec()).unwrap();
        let mut rest = &self.body[2 + len..];
        let id = if qos == QoS::AtMostOnce {
            None
        } else {
            let id = u16::from_be_bytes([rest[0], rest[1]]);
            rest = &rest[2..];
            Some(id)
        };
        (topic, rest.to_vec(), qos, id)
    }
}

/// A client that writes and reads exact bytes.
pub struct RawClient {
    pub stream: TcpStream,
    buf: BytesMut,
}

/// Options of a raw CONNECT.
#[derive(Debug, Clone)]
pub struct ConnectOptions<'a> {
    pub protocol_name: &'a str,
    pub level: u8,
    pub client_id: &'a str,
    pub clean_session: bool,
    pub keep_alive: u16,
    /// topic, payload, qos, retain
    pub will: Option<(&'a str, &'a [u8], u8, bool)>,
}

impl<'a> ConnectOptions<'a> {
    pub fn new(client_id: &'a str) -> Self {
        ConnectOptions {
            protocol_name: "MQTT",
            level: 4,
            client_id,
            clean_session: true,
            keep_alive: 60,
            will: None,
        }
    }
}

fn put_str(buf: &mut BytesMut, s: &[u8]) {
    buf.put_u16(s.len() as u16);
    buf.put_slice(s);
}

/// Bytes of a CONNECT packet.
pub fn connect_bytes(options: &ConnectOptions<'_>) -> Vec<u8> {
    let mut body = BytesMut::new();
    put_str(&mut body, options.protocol_name.as_bytes());
    body.put_u8(options.level);
    let mut flags = 0u8;
    if options.clean_session {
        flags |= 0b10;
    }
    if let Some((_, _, qos, retain)) = options.will {
        flags |= 0b100 | (qos << 3) | (u8::from(retain) << 5);
    }
    body.put_u8(flags);
    body.put_u16(options.keep_alive);
    put_str(&mut body, options.client_id.as_bytes());
    if let Some((topic, payload, _, _)) = options.will {
        put_str(&mut body, topic.as_bytes());
        put_str(&mut body, payload);
    }
    let mut wire = BytesMut::new();
    wire.put_u8(0x10);
    put_remaining_length(&mut wire, body.len());
    wire.put_slice(&body);
    wire.to_vec()
}

/// Bytes of a client packet, via the protocol crate's encoder.
pub fn packet_bytes(packet: &Packet) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_packet(packet, ProtocolVersion::V311, &mut buf);
    buf.to_vec()
}

pub fn id(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

pub fn publish_bytes(
    topic: &str,
    qos: QoS,
    packet_id: u16,
    payload: &[u8],
    retain: bool,
) -> Vec<u8> {
    packet_bytes(&Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: TopicName::new(topic).unwrap(),
        packet_id: PacketId::new(packet_id),
        payload: bytes::Bytes::copy_from_slice(payload),
        properties: None,
    }))
}

pub fn subscribe_bytes(packet_id: u16, filters: &[(&str, QoS)]) -> Vec<u8> {
    packet_bytes(&Packet::Subscribe(Subscribe::qos(
        id(packet_id),
        filters
            .iter()
            .map(|(f, q)| (TopicFilter::new(f).unwrap(), *q))
            .collect(),
    )))
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        RawClient {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Connects, sends CONNECT, and asserts a CONNACK with return code 0.
    /// Returns the session-present flag.
    pub async fn connected(addr: SocketAddr, options: &ConnectOptions<'_>) -> (RawClient, bool) {
        let mut client = RawClient::connect(addr).await;
        client.send(&connect_bytes(options)).await;
        let connack = client.recv().await.expect("CONNACK");
        assert_eq!(connack.packet_type, 2, "expected CONNACK, got {connack:?}");
        assert_eq!(connack.body[1], 0, "CONNACK refused: {connack:?}");
        (client, connack.body[0] & 1 == 1)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Sends, ignoring errors (the broker may have closed already).
    pub async fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    /// The next packet within `wait`; `None` if the connection closed or
    /// nothing came.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<RawPacket> {
        let framer = Framer::new(usize::MAX);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(frame) = framer.next_frame(&mut self.buf).unwrap() {
                return Some(RawPacket {
                    packet_type: frame.packet_type(),
                    flags: frame.flags(),
                    body: frame.body().to_vec(),
                });
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    pub async fn recv(&mut self) -> Option<RawPacket> {
        self.recv_within(WAIT).await
    }

    /// Whether the broker closed the connection within [`WAIT`] (reading and
    /// discarding anything it sent first).
    pub async fn closed_by_broker(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut scratch = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut scratch)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }
}

/// rumqttc options for a client of `broker`.
pub fn mqtt_options(broker: &TestBroker, client_id: &str) -> rumqttc::MqttOptions {
    let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", broker.port());
    options.set_keep_alive(Duration::from_secs(30));
    options
}

/// A rumqttc client whose event loop runs in the background, forwarding
/// every incoming PUBLISH to a channel.
pub struct Client {
    pub client: rumqttc::AsyncClient,
    pub publishes: tokio::sync::mpsc::UnboundedReceiver<rumqttc::Publish>,
    pub connack: rumqttc::ConnAck,
    subacks: tokio::sync::mpsc::UnboundedReceiver<rumqttc::SubAck>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    pub async fn connect(options: rumqttc::MqttOptions) -> Client {
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
        let connack = loop {
            match tokio::time::timeout(WAIT, eventloop.poll()).await {
                Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)))) => break ack,
                Ok(Ok(_)) => {}
                other => panic!("no CONNACK: {other:?}"),
            }
        };
        let (tx, publishes) = tokio::sync::mpsc::unbounded_channel();
        let (suback_tx, subacks) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                match event {
                    rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish)) => {
                        let _ = tx.send(publish);
                    }
                    rumqttc::Event::Incoming(rumqttc::Packet::SubAck(ack)) => {
                        let _ = suback_tx.send(ack);
                    }
                    _ => {}
                }
            }
        });
        Client {
            client,
            publishes,
            connack,
            subacks,
            task,
        }
    }

    /// Subscribes and waits for the SUBACK, so the subscription is in place.
    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::QoS) -> rumqttc::SubAck {
        self.client.subscribe(filter, qos).await.unwrap();
        tokio::time::timeout(WAIT, self.subacks.recv())
            .await
            .expect("a SUBACK in time")
            .expect("event loop alive")
    }

    pub async fn next_publish(&mut self) -> rumqttc::Publish {
        tokio::time::timeout(WAIT, self.publishes.recv())
            .await
            .expect("a PUBLISH in time")
            .expect("event loop alive")
    }

    /// Asserts nothing arrives for [`QUIET`].
    pub async fn assert_no_publish(&mut self) {
        if let Ok(Some(publish)) = tokio::time::timeout(QUIET, self.publishes.recv()).await {
            panic!("unexpected PUBLISH {publish:?}");
        }
    }

    /// Stops the event loop without DISCONNECT (the socket just closes).
    pub fn kill(self) {
        self.task.abort();
    }
}

/// A length-prefixed UTF-8 string field, for bodies built by hand.
pub fn string_field(s: &str) -> Vec<u8> {
    let mut buf = BytesMut::new();
    put_str(&mut buf, s.as_bytes());
    buf.to_vec()
}

/// Bytes of a packet built by hand: `first_byte`, the remaining length, then
/// `body`. For packets the encoder refuses to build (reserved flags, QoS 3,
/// wildcards in a topic name, packet id 0).
pub fn raw_packet_bytes(first_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut wire = BytesMut::new();
    wire.put_u8(first_byte);
    put_remaining_length(&mut wire, body.len());
    wire.put_slice(body);
    wire.to_vec()
}

impl RawPacket {
    /// The packet as it was on the wire, fixed header included.
    pub fn wire_bytes(&self) -> Vec<u8> {
        raw_packet_bytes((self.packet_type << 4) | self.flags, &self.body)
    }

    pub fn retain(&self) -> bool {
        self.flags & 1 == 1
    }

    pub fn dup(&self) -> bool {
        self.flags & 0b1000 != 0
    }
}

impl RawClient {
    /// Sends SUBSCRIBE and asserts a SUBACK granting every filter the QoS it
    /// asked for. The subscriptions are in place when this returns.
    pub async fn subscribe_granted(&mut self, packet_id: u16, filters: &[(&str, QoS)]) {
        self.send(&subscribe_bytes(packet_id, filters)).await;
        let suback = self.recv().await.expect("SUBACK");
        let mut expected = vec![0x90, 2 + filters.len() as u8];
        expected.extend_from_slice(&packet_id.to_be_bytes());
        expected.extend(filters.iter().map(|(_, qos)| *qos as u8));
        assert_eq!(suback.wire_bytes(), expected, "SUBACK for {filters:?}");
    }

    /// Sends PINGREQ and waits for its PINGRESP. The session handles packets
    /// in order, so every PUBLISH sent before has reached the router.
    pub async fn ping(&mut self) {
        self.send(&[0xC0, 0x00]).await;
        let pingresp = self.recv().await.expect("PINGRESP");
        assert_eq!(pingresp.wire_bytes(), [0xD0, 0x00]);
    }

    /// Publishes and completes the flow of its QoS: PUBACK for 1, PUBREC,
    /// PUBREL, PUBCOMP for 2, a PINGREQ round trip for 0. The message has
    /// reached the router when this returns.
    pub async fn publish_acked(
        &mut self,
        topic: &str,
        qos: QoS,
        packet_id: u16,
        payload: &[u8],
        retain: bool,
    ) {
        self.send(&publish_bytes(topic, qos, packet_id, payload, retain))
            .await;
        let [hi, lo] = packet_id.to_be_bytes();
        match qos {
            QoS::AtMostOnce => self.ping().await,
            QoS::AtLeastOnce => {
                let puback = self.recv().await.expect("PUBACK");
                assert_eq!(puback.wire_bytes(), [0x40, 0x02, hi, lo]);
            }
            QoS::ExactlyOnce => {
                let pubrec = self.recv().await.expect("PUBREC");
                assert_eq!(pubrec.wire_bytes(), [0x50, 0x02, hi, lo]);
                self.send(&[0x62, 0x02, hi, lo]).await;
                let pubcomp = self.recv().await.expect("PUBCOMP");
                assert_eq!(pubcomp.wire_bytes(), [0x70, 0x02, hi, lo]);
            }
        }
    }

    /// The next packet, which must be a PUBLISH arriving within [`WAIT`].
    pub async fn next_publish(&mut self) -> RawPacket {
        let packet = self.recv().await.expect("a PUBLISH in time");
        assert_eq!(packet.packet_type, 3, "expected PUBLISH, got {packet:?}");
        packet
    }

    /// Asserts that the broker closes the connection within [`WAIT`] and
    /// sends nothing before it does.
    pub async fn assert_closed_without_reply(&mut self) {
        assert!(
            self.buf.is_empty(),
            "unread bytes before the close: {:?}",
            self.buf
        );
        let mut scratch = [0u8; 256];
        match tokio::time::timeout(WAIT, self.stream.read(&mut scratch)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!("expected a close, got bytes {:02x?}", &scratch[..n]),
            Err(_) => panic!("the broker did not close the connection within {WAIT:?}"),
        }
    }
}

/// A live round trip during an attack must stay under this. Unloaded it
/// takes well under a millisecond here; before the caps one attack stalled
/// every client for over a minute. A liveness bound, not a speed figure.
pub const LIVE_BOUND: Duration = Duration::from_secs(1);

/// A publisher and a subscriber of one topic at QoS 1, to show that other
/// clients are still served (and how fast) while a test attacks the broker.
pub struct LivePair {
    topic: String,
    publisher: RawClient,
    subscriber: RawClient,
    next_id: u16,
}

impl LivePair {
    /// Connects both (client ids `live-sub`, `live-pub`) and subscribes to
    /// `topic`.
    pub async fn start(addr: SocketAddr, topic: &str) -> LivePair {
        let (mut subscriber, _) =
            RawClient::connected(addr, &ConnectOptions::new("live-sub")).await;
        subscriber
            .subscribe_granted(1, &[(topic, QoS::AtLeastOnce)])
            .await;
        let (publisher, _) = RawClient::connected(addr, &ConnectOptions::new("live-pub")).await;
        LivePair {
            topic: topic.to_string(),
            publisher,
            subscriber,
            next_id: 1,
        }
    }

    /// Publishes one QoS 1 message and waits for it at the subscriber.
    pub async fn round_trip(&mut self) -> Duration {
        let id = self.next_id;
        self.next_id = self.next_id % 60_000 + 1;
        let started = std::time::Instant::now();
        self.publisher
            .send(&publish_bytes(
                &self.topic,
                QoS::AtLeastOnce,
                id,
                &id.to_be_bytes(),
                false,
            ))
            .await;
        let delivered = self.subscriber.next_publish().await;
        let elapsed = started.elapsed();
        let (topic, payload, _, sub_id) = delivered.publish();
        assert_eq!(
            (topic.as_str(), payload),
            (self.topic.as_str(), id.to_be_bytes().to_vec())
        );
        let [hi, lo] = sub_id.unwrap().to_be_bytes();
        self.subscriber.send(&[0x40, 0x02, hi, lo]).await;
        let puback = self.publisher.recv().await.expect("PUBACK");
        assert_eq!(puback.packet_type, 4);
        elapsed
    }

    /// `n` round trips, each under [`LIVE_BOUND`]; returns the slowest.
    pub async fn assert_live(&mut self, n: usize, during: &str) -> Duration {
        let mut slowest = Duration::ZERO;
        for _ in 0..n {
            let rtt = self.round_trip().await;
            assert!(
                rtt < LIVE_BOUND,
                "live round trip took {rtt:?} during {during}"
            );
            slowest = slowest.max(rtt);
        }
        slowest
    }
}
