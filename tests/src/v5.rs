//! An MQTT 5 client for the end-to-end tests: it writes packets with the
//! protocol crate's encoders and reads the broker's with its strict
//! decoder, so a test asserts on the properties and reason codes that
//! arrive on the wire.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tidemq_protocol::{
    decode_server_packet, encode_connect, encode_packet, Ack, ConnAck, Connect, ConnectProperties,
    Disconnect, Framer, LastWill, Outgoing, Packet, PacketId, ProtocolVersion, Publish,
    PublishProperties, QoS, ReasonCode, Subscribe, SubscriptionOptions, TopicFilter, TopicName,
    Unsubscribe,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::WAIT;

/// A CONNECT for MQTT 5 with Clean Start 1 and no properties.
pub fn connect(client_id: &str) -> Connect {
    Connect {
        version: ProtocolVersion::V5,
        client_id: client_id.to_owned(),
        clean_session: true,
        keep_alive: 30,
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

/// A will on `topic` with `delay` seconds of Will Delay Interval.
pub fn will(topic: &str, payload: &'static [u8], delay: u32) -> LastWill {
    LastWill {
        topic: TopicName::new(topic).unwrap(),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        delay_interval: delay,
        properties: None,
    }
}

/// A PUBLISH with properties (`None`: none).
pub fn publish(
    topic: &str,
    qos: QoS,
    packet_id: u16,
    payload: &[u8],
    properties: Option<PublishProperties>,
) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: TopicName::new(topic).unwrap(),
        packet_id: PacketId::new(packet_id),
        payload: Bytes::copy_from_slice(payload),
        properties: properties.map(Box::new),
    })
}

/// A SUBSCRIBE of one filter with options.
pub fn subscribe(packet_id: u16, filter: &str, options: SubscriptionOptions) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(packet_id).unwrap(),
        filters: vec![(TopicFilter::new(filter).unwrap(), options)],
        subscription_identifier: None,
        user_properties: Vec::new(),
    })
}

pub struct V5Client {
    stream: TcpStream,
    buf: BytesMut,
}

impl V5Client {
    /// A client on a connected socket that has sent nothing yet.
    pub fn from_stream(stream: TcpStream) -> V5Client {
        stream.set_nodelay(true).unwrap();
        V5Client {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Connects and sends `connect`; returns the client and the CONNACK.
    pub async fn connect(addr: SocketAddr, connect: &Connect) -> (V5Client, ConnAck) {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let mut client = V5Client {
            stream,
            buf: BytesMut::new(),
        };
        let mut wire = BytesMut::new();
        encode_connect(connect, &mut wire);
        client.send_raw(&wire).await;
        match client.recv().await {
            Some(Outgoing::ConnAck(connack)) => (client, connack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects and asserts the CONNACK accepted it.
    pub async fn connected(addr: SocketAddr, connect: &Connect) -> (V5Client, ConnAck) {
        let (client, connack) = V5Client::connect(addr, connect).await;
        assert_eq!(connack.reason, ReasonCode::SUCCESS, "refused: {connack:?}");
        (client, connack)
    }

    /// A clean-start client with no properties.
    pub async fn plain(addr: SocketAddr, client_id: &str) -> V5Client {
        V5Client::connected(addr, &connect(client_id)).await.0
    }

    pub async fn send(&mut self, packet: &Packet) {
        let mut wire = BytesMut::new();
        encode_packet(packet, ProtocolVersion::V5, &mut wire);
        self.send_raw(&wire).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next packet within `wait`; `None` if the connection closed or
    /// nothing came. A packet the strict decoder refuses fails the test.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Outgoing> {
        let framer = Framer::new(usize::MAX);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(frame) = framer.next_frame(&mut self.buf).unwrap() {
                let packet = decode_server_packet(&frame, ProtocolVersion::V5);
                return Some(packet.unwrap_or_else(|e| panic!("broker sent a bad packet: {e}")));
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    pub async fn recv(&mut self) -> Option<Outgoing> {
        self.recv_within(WAIT).await
    }

    /// The next PUBLISH, acknowledging it (PUBACK, or PUBREC then waiting
    /// for PUBREL and sending PUBCOMP) so the window moves.
    pub async fn next_publish(&mut self) -> Publish {
        match self.recv().await {
            Some(Outgoing::Publish(publish)) => {
                self.acknowledge(&publish).await;
                publish
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    pub async fn acknowledge(&mut self, publish: &Publish) {
        let Some(id) = publish.packet_id else { return };
        match publish.qos {
            QoS::AtLeastOnce => self.send(&Packet::PubAck(Ack::new(id))).await,
            QoS::ExactlyOnce => {
                self.send(&Packet::PubRec(Ack::new(id))).await;
                match self.recv().await {
                    Some(Outgoing::PubRel(ack)) => assert_eq!(ack.packet_id, id),
                    other => panic!("expected PUBREL, got {other:?}"),
                }
                self.send(&Packet::PubComp(Ack::new(id))).await;
            }
            QoS::AtMostOnce => {}
        }
    }

    /// Asserts nothing arrives for `wait`.
    pub async fn assert_silent(&mut self, wait: Duration) {
        if let Some(packet) = self.recv_within(wait).await {
            panic!("expected nothing, got {packet:?}");
        }
    }

    /// Subscribes and returns the SUBACK's reason codes.
    pub async fn subscribe(&mut self, packet: Packet) -> Vec<ReasonCode> {
        self.send(&packet).await;
        match self.recv().await {
            Some(Outgoing::SubAck { codes, .. }) => codes,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Subscribes to one filter at `qos` and asserts it was granted.
    pub async fn subscribe_qos(&mut self, filter: &str, qos: QoS) {
        let codes = self
            .subscribe(subscribe(1, filter, SubscriptionOptions::qos(qos)))
            .await;
        assert_eq!(codes, [ReasonCode(qos as u8)], "SUBACK for {filter}");
    }

    /// Unsubscribes and returns the UNSUBACK's reason codes.
    pub async fn unsubscribe(&mut self, packet_id: u16, filters: &[&str]) -> Vec<ReasonCode> {
        let filters = filters
            .iter()
            .map(|f| TopicFilter::new(f).unwrap())
            .collect();
        let unsubscribe = Unsubscribe::new(PacketId::new(packet_id).unwrap(), filters);
        self.send(&Packet::Unsubscribe(unsubscribe)).await;
        match self.recv().await {
            Some(Outgoing::UnsubAck { codes, .. }) => codes,
            other => panic!("expected UNSUBACK, got {other:?}"),
        }
    }

    /// Publishes QoS 1 and returns the PUBACK.
    pub async fn publish_qos1(&mut self, packet: Packet) -> Ack {
        self.send(&packet).await;
        match self.recv().await {
            Some(Outgoing::PubAck(ack)) => ack,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }

    /// Sends DISCONNECT with `reason` and properties.
    pub async fn disconnect(&mut self, disconnect: Disconnect) {
        self.send(&Packet::Disconnect(disconnect)).await;
    }

    /// The broker's DISCONNECT, skipping anything before it, and then the
    /// close of the socket.
    pub async fn expect_disconnect(&mut self) -> Disconnect {
        loop {
            match self.recv().await {
                Some(Outgoing::Disconnect(disconnect)) => {
                    assert!(
                        self.recv().await.is_none(),
                        "the socket closes after DISCONNECT"
                    );
                    return disconnect;
                }
                Some(_) => continue,
                None => panic!("closed without a DISCONNECT"),
            }
        }
    }

    /// Drops the socket without DISCONNECT (the will is due).
    pub fn kill(self) {
        drop(self.stream);
    }
}
