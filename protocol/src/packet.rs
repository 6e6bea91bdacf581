//! Version-neutral packet types: what the broker's session and router see,
//! for MQTT 3.1, 3.1.1 and 5.0 alike. Nothing from `mqttbytes` leaks past
//! this crate. MQTT 5's extras ride in property structs that are empty (and
//! cost no allocation) for 3.1.1 clients; the encoder writes them only for
//! a version-5 connection.

use std::num::NonZeroU16;

use bytes::Bytes;

use crate::reason::ReasonCode;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1, protocol name `MQIsdp`, level 3.
    V31,
    /// MQTT 3.1.1, protocol name `MQTT`, level 4.
    V311,
    /// MQTT 5.0, protocol name `MQTT`, level 5.
    V5,
}

impl ProtocolVersion {
    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

/// A user property: a name and a value, both UTF-8 strings. Order and
/// repetition are kept [MQTT-3.3.2-18].
pub type UserProperty = (String, String);

/// The MQTT 5 properties of a PUBLISH, also those of a will (besides its
/// delay). The broker forwards them unchanged, in order [MQTT-3.3.2-17],
/// [MQTT-3.3.2-18], [MQTT-3.3.2-20], except the topic alias (one
/// connection's) and the subscription identifiers (the subscriber's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProperties {
    /// 0: unspecified bytes; 1: UTF-8 (checked on decode [MQTT-3.3.2-4]).
    pub payload_format_indicator: Option<u8>,
    /// Seconds the message may live.
    pub message_expiry_interval: Option<u32>,
    /// Non-zero. Inbound only: the session resolves it.
    pub topic_alias: Option<u16>,
    /// A topic name: no wildcards [MQTT-3.3.2-14].
    pub response_topic: Option<TopicName>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<UserProperty>,
    /// Outbound only: a client must not send one [MQTT-3.3.4-6].
    pub subscription_identifiers: Vec<u32>,
    pub content_type: Option<String>,
}

impl PublishProperties {
    pub fn is_empty(&self) -> bool {
        *self == PublishProperties::default()
    }
}

/// A will message, published by the broker when a connection ends abnormally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5: seconds to wait after the connection ends; 0 for 3.1.1.
    pub delay_interval: u32,
    /// MQTT 5 will properties; `None` when there are none.
    pub properties: Option<Box<PublishProperties>>,
}

/// The MQTT 5 properties of a CONNECT. All `None` / empty for 3.1.1.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectProperties {
    pub session_expiry_interval: Option<u32>,
    /// Non-zero [MQTT-3.1.2-?]: checked on decode.
    pub receive_maximum: Option<u16>,
    /// Non-zero: checked on decode.
    pub maximum_packet_size: Option<u32>,
    pub topic_alias_maximum: Option<u16>,
    /// 0 or 1.
    pub request_response_information: Option<u8>,
    /// 0 or 1.
    pub request_problem_information: Option<u8>,
    pub user_properties: Vec<UserProperty>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
}

/// A decoded CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub version: ProtocolVersion,
    /// May be empty: the broker decides whether to assign one.
    pub client_id: String,
    /// Clean Session (3.1.1) or Clean Start (5.0).
    pub clean_session: bool,
    /// Seconds; 0 turns the keepalive off.
    pub keep_alive: u16,
    pub will: Option<LastWill>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub properties: ConnectProperties,
}

/// An application message in a PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty ([`TopicName::is_empty`]) only in a decoded v5 PUBLISH that
    /// names its topic by alias alone; the session resolves it.
    pub topic: TopicName,
    /// `Some` exactly when `qos` is above 0.
    pub packet_id: Option<PacketId>,
    pub payload: Bytes,
    /// MQTT 5 properties; `None` when there are none (always for 3.1.1).
    pub properties: Option<Box<PublishProperties>>,
}

/// Reason String and User Properties: all an acknowledgement may carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckProperties {
    pub reason_string: Option<String>,
    pub user_properties: Vec<UserProperty>,
}

impl AckProperties {
    pub fn is_empty(&self) -> bool {
        self.reason_string.is_none() && self.user_properties.is_empty()
    }
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP. 3.1.1 carries only the packet id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub packet_id: PacketId,
    pub reason: ReasonCode,
    pub properties: AckProperties,
}

impl Ack {
    /// A successful acknowledgement (reason 0x00, no properties).
    pub fn new(packet_id: PacketId) -> Ack {
        Ack::with_reason(packet_id, ReasonCode::SUCCESS)
    }

    pub fn with_reason(packet_id: PacketId, reason: ReasonCode) -> Ack {
        Ack {
            packet_id,
            reason,
            properties: AckProperties::default(),
        }
    }
}

/// MQTT 5 Retain Handling of a subscription [MQTT-3.8.3.1].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetainHandling {
    /// Send retained messages at subscribe.
    #[default]
    OnSubscribe = 0,
    /// Only if the subscription did not exist yet.
    OnNewSubscription = 1,
    /// Never at subscribe.
    Never = 2,
}

/// The options byte of one SUBSCRIBE entry. 3.1.1 has only the QoS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// The options a 3.1.1 subscription has: its QoS, the rest default.
    pub fn qos(qos: QoS) -> SubscriptionOptions {
        SubscriptionOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::OnSubscribe,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: PacketId,
    pub filters: Vec<(TopicFilter, SubscriptionOptions)>,
    /// MQTT 5: 1 to 268,435,455 [MQTT-3.8.2.1.2].
    pub subscription_identifier: Option<u32>,
    pub user_properties: Vec<UserProperty>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: PacketId,
    pub filters: Vec<TopicFilter>,
    pub user_properties: Vec<UserProperty>,
}

/// The MQTT 5 properties of a DISCONNECT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DisconnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub reason_string: Option<String>,
    pub user_properties: Vec<UserProperty>,
    /// Server to client only.
    pub server_reference: Option<String>,
}

/// A DISCONNECT, either way. 3.1.1 has no reason and no properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disconnect {
    pub reason: ReasonCode,
    pub properties: DisconnectProperties,
}

impl Disconnect {
    pub fn new(reason: ReasonCode) -> Disconnect {
        Disconnect {
            reason,
            properties: DisconnectProperties::default(),
        }
    }
}

/// The MQTT 5 AUTH packet (type 15), either way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    /// 0x00 success, 0x18 continue authentication, 0x19 re-authenticate.
    pub reason: ReasonCode,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub reason_string: Option<String>,
    pub user_properties: Vec<UserProperty>,
}

/// Packets a client sends after its CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
    PingReq,
    Disconnect(Disconnect),
    /// MQTT 5 only.
    Auth(Auth),
}

/// The MQTT 5 properties of a CONNACK: what the server supports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnAckProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    /// 0 or 1; absent means 2.
    pub maximum_qos: Option<u8>,
    /// 0 or 1; absent means 1.
    pub retain_available: Option<u8>,
    pub maximum_packet_size: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub topic_alias_maximum: Option<u16>,
    pub reason_string: Option<String>,
    pub user_properties: Vec<UserProperty>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifiers_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
    pub server_keep_alive: Option<u16>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
}

/// A CONNACK. The reason is an MQTT 5 code; for 3.1/3.1.1 the encoder
/// writes the matching return code ([`ReasonCode::v3_connect_return_code`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub reason: ReasonCode,
    /// Written for MQTT 5 only.
    pub properties: Box<ConnAckProperties>,
}

impl ConnAck {
    pub fn new(session_present: bool, reason: ReasonCode) -> ConnAck {
        ConnAck {
            session_present,
            reason,
            properties: Box::default(),
        }
    }
}

/// Packets the broker sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    SubAck {
        packet_id: PacketId,
        /// One per filter, in order: 0x00-0x02 the granted QoS, 0x80 and
        /// above a refusal (3.1.1 gets 0x80 for every refusal).
        codes: Vec<ReasonCode>,
        properties: AckProperties,
    },
    UnsubAck {
        packet_id: PacketId,
        /// MQTT 5 only: one per filter, in order.
        codes: Vec<ReasonCode>,
        properties: AckProperties,
    },
    PingResp,
    /// MQTT 5 only; nothing is written for 3.1.1.
    Disconnect(Disconnect),
    /// MQTT 5 only.
    Auth(Auth),
}

impl Subscribe {
    /// A SUBSCRIBE with a QoS per filter and no MQTT 5 extras.
    pub fn qos(packet_id: PacketId, filters: Vec<(TopicFilter, QoS)>) -> Subscribe {
        Subscribe {
            packet_id,
            filters: filters
                .into_iter()
                .map(|(filter, qos)| (filter, SubscriptionOptions::qos(qos)))
                .collect(),
            subscription_identifier: None,
            user_properties: Vec::new(),
        }
    }
}

impl Unsubscribe {
    pub fn new(packet_id: PacketId, filters: Vec<TopicFilter>) -> Unsubscribe {
        Unsubscribe {
            packet_id,
            filters,
            user_properties: Vec::new(),
        }
    }
}
