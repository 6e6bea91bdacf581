//! Version-neutral packet types: what the broker's session and router see.
//! Nothing from `mqttbytes` leaks past this crate, so MQTT 5 can add fields
//! here without touching the router.

use std::num::NonZeroU16;

use bytes::Bytes;

use crate::topic::{TopicFilter, TopicName};

/// Quality of service of a delivery. Ordered: the lower of two QoS values is
/// the one a subscription downgrades to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_bits(bits: u8) -> Option<QoS> {
        match bits {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A packet identifier: never zero on the wire [MQTT-2.3.1-1].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PacketId(NonZeroU16);

impl PacketId {
    pub fn new(id: u16) -> Option<PacketId> {
        NonZeroU16::new(id).map(PacketId)
    }

    pub fn get(self) -> u16 {
        self.0.get()
    }

    /// The identifier after this one, wrapping from 65535 to 1.
    pub fn next(self) -> PacketId {
        PacketId(self.0.checked_add(1).unwrap_or(NonZeroU16::MIN))
    }
}

/// The protocol level a client connected with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolVersion {
    /// MQTT 3.1, protocol name `MQIsdp`, level 3.
    V31,
    /// MQTT 3.1.1, protocol name `MQTT`, level 4.
    V311,
}

/// A will message, published by the broker when a connection ends abnormally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
}

/// A decoded CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub version: ProtocolVersion,
    /// May be empty: the broker decides whether to assign one.
    pub client_id: String,
    pub clean_session: bool,
    /// Seconds; 0 turns the keepalive off.
    pub keep_alive: u16,
    pub will: Option<LastWill>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
}

/// An application message in a PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: TopicName,
    /// `Some` exactly when `qos` is above 0.
    pub packet_id: Option<PacketId>,
    pub payload: Bytes,
}

/// Packets a client sends after its CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Publish(Publish),
    PubAck(PacketId),
    PubRec(PacketId),
    PubRel(PacketId),
    PubComp(PacketId),
    Subscribe {
        packet_id: PacketId,
        filters: Vec<(TopicFilter, QoS)>,
    },
    Unsubscribe {
        packet_id: PacketId,
        filters: Vec<TopicFilter>,
    },
    PingReq,
    Disconnect,
}

/// CONNACK return codes of MQTT 3.1 / 3.1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectReturnCode {
    Accepted = 0,
    UnacceptableProtocolVersion = 1,
    IdentifierRejected = 2,
    ServerUnavailable = 3,
    BadUserNameOrPassword = 4,
    NotAuthorized = 5,
}

/// One entry of a SUBACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubAckCode {
    Granted(QoS),
    Failure,
}

/// Packets the broker sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    ConnAck {
        session_present: bool,
        code: ConnectReturnCode,
    },
    Publish(Publish),
    PubAck(PacketId),
    PubRec(PacketId),
    PubRel(PacketId),
    PubComp(PacketId),
    SubAck {
        packet_id: PacketId,
        codes: Vec<SubAckCode>,
    },
    UnsubAck(PacketId),
    PingResp,
}
