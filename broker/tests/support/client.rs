//! A synchronous MQTT client over `std::net::TcpStream` with read
//! timeouts, built on the protocol crate's encoder, framer and decoder, and
//! the packets the tests send.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tidemq_protocol::{
    decode_server_packet, encode_connect, encode_packet, Ack, ConnAck, Connect, ConnectProperties,
    Disconnect, Frame, Framer, LastWill, Outgoing, Packet, PacketId, ProtocolVersion, Publish, QoS,
    ReasonCode, Subscribe, TopicFilter, TopicName,
};

use super::WAIT;

pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const PINGRESP: u8 = 13;

pub fn v311(client_id: &str, clean_session: bool) -> Connect {
    Connect {
        version: ProtocolVersion::V311,
        client_id: client_id.to_owned(),
        clean_session,
        keep_alive: 60,
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

/// An MQTT 5 CONNECT with a Session Expiry Interval of `expiry` seconds.
pub fn v5(client_id: &str, clean_start: bool, expiry: u32) -> Connect {
    Connect {
        version: ProtocolVersion::V5,
        properties: ConnectProperties {
            session_expiry_interval: Some(expiry),
            ..ConnectProperties::default()
        },
        ..v311(client_id, clean_start)
    }
}

pub fn will(topic: &str, payload: &[u8], retain: bool, delay_interval: u32) -> LastWill {
    LastWill {
        topic: TopicName::new(topic).unwrap(),
        payload: Bytes::copy_from_slice(payload),
        qos: QoS::AtLeastOnce,
        retain,
        delay_interval,
        properties: None,
    }
}

pub fn id(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

pub fn publish(topic: &str, qos: QoS, packet_id: u16, payload: &[u8], retain: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: TopicName::new(topic).unwrap(),
        packet_id: PacketId::new(packet_id),
        payload: Bytes::copy_from_slice(payload),
        properties: None,
    })
}

/// A PUBLISH as it must appear on the wire (remaining length below 128):
/// `first` is the fixed header's first byte (0x30 | DUP 0x08 | QoS << 1 |
/// RETAIN 0x01).
pub fn publish_wire(first: u8, topic: &str, packet_id: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    if let Some(packet_id) = packet_id {
        body.extend_from_slice(&packet_id.to_be_bytes());
    }
    body.extend_from_slice(payload);
    assert!(body.len() < 128);
    let mut wire = vec![first, body.len() as u8];
    wire.extend(body);
    wire
}

/// A 4-byte acknowledgement packet (PUBACK 0x40, PUBREC 0x50, PUBREL 0x62,
/// PUBCOMP 0x70) as a 3.1.1 broker writes it.
pub fn ack_wire(first: u8, packet_id: u16) -> Vec<u8> {
    let [hi, lo] = packet_id.to_be_bytes();
    vec![first, 2, hi, lo]
}

pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl Client {
    /// Connects and asserts CONNACK success; returns the CONNACK.
    pub fn connect(port: u16, connect: &Connect) -> (Client, ConnAck) {
        let (client, connack) = Client::connect_any(port, connect);
        assert_eq!(connack.reason, ReasonCode::SUCCESS, "{connack:?}");
        (client, connack)
    }

    /// Connects; returns the CONNACK, whatever its code.
    pub fn connect_any(port: u16, connect: &Connect) -> (Client, ConnAck) {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut client = Client {
            stream,
            buf: BytesMut::new(),
            version: connect.version,
        };
        let mut wire = BytesMut::new();
        encode_connect(connect, &mut wire);
        client.write(&wire);
        let frame = client.recv("CONNACK");
        match client.decode(&frame) {
            Outgoing::ConnAck(connack) => (client, connack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Writes, reporting whether the socket took it (false once the broker
    /// is gone).
    pub fn try_send(&mut self, packet: &Packet) -> bool {
        let mut wire = BytesMut::new();
        encode_packet(packet, self.version, &mut wire);
        self.stream.write_all(&wire).is_ok()
    }

    pub fn send(&mut self, packet: &Packet) {
        assert!(self.try_send(packet), "send {packet:?}");
    }

    pub fn ack(&mut self, kind: u8, packet_id: u16) {
        let ack = Ack::new(id(packet_id));
        let packet = match kind {
            PUBACK => Packet::PubAck(ack),
            PUBREC => Packet::PubRec(ack),
            PUBREL => Packet::PubRel(ack),
            PUBCOMP => Packet::PubComp(ack),
            _ => unreachable!("not an acknowledgement: {kind}"),
        };
        self.send(&packet);
    }

    /// The next packet within `wait`; `None` on timeout or when the
    /// connection ends.
    pub fn recv_within(&mut self, wait: Duration) -> Option<Frame> {
        let framer = Framer::new(usize::MAX);
        let deadline = Instant::now() + wait;
        let mut scratch = [0u8; 16 * 1024];
        loop {
            if let Some(frame) = framer.next_frame(&mut self.buf).unwrap() {
                return Some(frame);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut scratch) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    pub fn recv(&mut self, what: &str) -> Frame {
        self.recv_within(WAIT)
            .unwrap_or_else(|| panic!("no {what} within {WAIT:?}"))
    }

    pub fn decode(&self, frame: &Frame) -> Outgoing {
        decode_server_packet(frame, self.version).unwrap()
    }

    /// The next packet, which must be a PUBLISH.
    pub fn next_publish(&mut self) -> (Frame, Publish) {
        let frame = self.recv("PUBLISH");
        match self.decode(&frame) {
            Outgoing::Publish(publish) => (frame, publish),
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Subscribes and asserts every filter granted the QoS it asked for.
    /// A persistent session's SUBACK waits for its subscriptions to be on
    /// disk, with everything written before them.
    pub fn subscribe(&mut self, packet_id: u16, filters: &[(&str, QoS)]) {
        let filters: Vec<(TopicFilter, QoS)> = filters
            .iter()
            .map(|(filter, qos)| (TopicFilter::new(filter).unwrap(), *qos))
            .collect();
        let granted: Vec<ReasonCode> = filters.iter().map(|(_, q)| ReasonCode(*q as u8)).collect();
        self.send(&Packet::Subscribe(Subscribe::qos(id(packet_id), filters)));
        let frame = self.recv("SUBACK");
        match self.decode(&frame) {
            Outgoing::SubAck {
                packet_id: got,
                codes,
                ..
            } => {
                assert_eq!(got, id(packet_id));
                assert_eq!(codes, granted, "SUBACK codes");
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Publishes and completes its flow: PUBACK for QoS 1; PUBREC, PUBREL,
    /// PUBCOMP for QoS 2. The broker acknowledged it when this returns.
    pub fn publish_acked(
        &mut self,
        topic: &str,
        qos: QoS,
        packet_id: u16,
        payload: &[u8],
        retain: bool,
    ) {
        self.send(&publish(topic, qos, packet_id, payload, retain));
        match qos {
            QoS::AtMostOnce => unreachable!("QoS 0 is not acknowledged"),
            QoS::AtLeastOnce => {
                assert_eq!(self.recv("PUBACK").bytes[..], ack_wire(0x40, packet_id));
            }
            QoS::ExactlyOnce => {
                assert_eq!(self.recv("PUBREC").bytes[..], ack_wire(0x50, packet_id));
                self.ack(PUBREL, packet_id);
                assert_eq!(self.recv("PUBCOMP").bytes[..], ack_wire(0x70, packet_id));
            }
        }
    }

    /// PINGREQ, and the next packet must be its PINGRESP.
    pub fn ping(&mut self) {
        self.send(&Packet::PingReq);
        let frame = self.recv("PINGRESP");
        assert_eq!(
            frame.packet_type(),
            PINGRESP,
            "expected PINGRESP, got {frame:?}"
        );
    }

    /// DISCONNECT (normal: no will), then waits for the broker to close the
    /// socket, so the session is offline when this returns.
    pub fn disconnect(mut self) {
        self.send(&Packet::Disconnect(Disconnect::new(
            ReasonCode::NORMAL_DISCONNECTION,
        )));
        let deadline = Instant::now() + WAIT;
        while self.recv_within(deadline - Instant::now()).is_some() {
            assert!(Instant::now() < deadline, "broker did not close the socket");
        }
    }
}

/// Connects `client_id` with clean session 0, subscribes and leaves: a
/// persistent session, offline, its subscriptions on disk.
pub fn leave_subscribed(port: u16, client_id: &str, filters: &[(&str, QoS)]) {
    let (mut client, connack) = Client::connect(port, &v311(client_id, false));
    assert!(!connack.session_present);
    client.subscribe(1, filters);
    client.disconnect();
}
