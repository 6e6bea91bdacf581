//! Errors of the wire format. Each [`SpecViolation`] names the normative
//! statement of the MQTT specification it breaks, so a log line or a test can
//! point at the rule.

use thiserror::Error;

/// Why a byte stream cannot be read as MQTT. Every variant ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// The fixed header announced more bytes than the configured maximum.
    /// Detected before the body is buffered.
    #[error("packet of {announced} bytes exceeds the limit of {limit} bytes")]
    PacketTooLarge { announced: usize, limit: usize },
    /// A rule of the specification was broken.
    #[error("{0}")]
    Violation(#[from] SpecViolation),
    /// The body could not be parsed (truncated field, bad length prefix, ...).
    #[error("malformed {packet} packet: {detail}")]
    Malformed {
        packet: &'static str,
        detail: String,
    },
    /// CONNECT asked for a protocol level this broker does not speak.
    /// The broker answers CONNACK 0x01 [MQTT-3.1.2-2].
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolLevel(u8),
}

impl ProtocolError {
    /// The MQTT 5 reason code of the DISCONNECT that answers this error:
    /// 0x95 for a packet over the size limit, 0x82 for a protocol error,
    /// 0x81 for everything malformed.
    pub fn reason_code(&self) -> crate::ReasonCode {
        match self {
            ProtocolError::PacketTooLarge { .. } => crate::ReasonCode::PACKET_TOO_LARGE,
            ProtocolError::Violation(violation) => violation.reason_code(),
            ProtocolError::Malformed { .. } => crate::ReasonCode::MALFORMED_PACKET,
            ProtocolError::UnsupportedProtocolLevel(_) => {
                crate::ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
        }
    }
}

impl SpecViolation {
    /// Malformed (0x81) or protocol error (0x82), as section 4.13 of MQTT
    /// 5.0 sorts them.
    /// Where the specification names another code for a rule (0x94 Topic
    /// Alias invalid, 0x99 Payload format invalid), that code.
    pub fn reason_code(self) -> crate::ReasonCode {
        use crate::ReasonCode as R;
        use SpecViolation as V;
        match self {
            V::FirstPacketNotConnect
            | V::SecondConnect
            | V::DuplicateProperty(_)
            | V::ZeroReceiveMaximum
            | V::ZeroMaximumPacketSize
            | V::ZeroSubscriptionIdentifier
            | V::PropertyValue(_)
            | V::WildcardInResponseTopic
            | V::SubscriptionIdentifierFromClient
            | V::SubscribeQoS3
            | V::RetainHandling3
            | V::NoLocalOnSharedSubscription
            | V::AuthenticationDataWithoutMethod
            | V::EmptyTopicWithoutAlias
            | V::TopicAliasUnknown(_)
            | V::ReasonCodeNotAllowed { .. } => R::PROTOCOL_ERROR,
            V::TopicAliasZero | V::TopicAliasAboveMaximum { .. } => R::TOPIC_ALIAS_INVALID,
            V::PayloadFormatInvalid => R::PAYLOAD_FORMAT_INVALID,
            _ => R::MALFORMED_PACKET,
        }
    }
}

/// A broken normative statement of the MQTT 3.1.1 or 5.0 specification.
/// Where 5.0 has no numbered statement, the section is named instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SpecViolation {
    #[error("[MQTT-2.2.3] remaining length uses more than four bytes")]
    RemainingLengthTooLong,
    #[error("[MQTT-2.2.2-2] reserved flag bits of packet type {0} are wrong")]
    ReservedFlags(u8),
    #[error("[MQTT-2.2.1] packet type {0} is reserved or not sent by a client")]
    UnexpectedPacketType(u8),
    #[error("[MQTT-2.3.1-1] packet identifier is zero")]
    PacketIdZero,
    #[error("[MQTT-3.1.0-1] the first packet must be CONNECT")]
    FirstPacketNotConnect,
    #[error("[MQTT-3.1.0-2] a second CONNECT on one connection")]
    SecondConnect,
    #[error("[MQTT-3.1.2-1] protocol name is not MQTT (or MQIsdp for level 3)")]
    ProtocolName,
    #[error("[MQTT-3.1.2-3] reserved CONNECT flag is set")]
    ConnectReservedFlag,
    #[error("[MQTT-3.1.2-11] will QoS or retain set without the will flag")]
    WillFlagsWithoutWill,
    #[error("[MQTT-3.1.2-14] will QoS is 3")]
    WillQoS,
    #[error("[MQTT-3.1.2-22] password flag set without the user name flag")]
    PasswordWithoutUsername,
    #[error("[MQTT-3.3.1-2] DUP is set on a QoS 0 PUBLISH")]
    DupOnQoS0,
    /// Not a rule of the specification but a limit of tidemq (as of
    /// mosquitto): matching walks one level at a time.
    #[error(
        "[tidemq] topic has more than {} levels",
        crate::topic::MAX_TOPIC_LEVELS
    )]
    TopicTooDeep,
    #[error("[MQTT-1.5.3] a string is longer than 65535 bytes")]
    StringTooLong,
    #[error("[MQTT-3.1.3] CONNECT has bytes after its last field")]
    ConnectTrailingBytes,
    #[error("[MQTT-3.3.1-4] PUBLISH with QoS 3")]
    PublishQoS3,
    #[error("[MQTT-3.3.2-2] PUBLISH topic contains a wildcard")]
    WildcardInTopicName,
    #[error("[MQTT-4.7.3-1] topic is empty")]
    EmptyTopic,
    #[error("[MQTT-1.5.3-1] string is not well-formed UTF-8")]
    InvalidUtf8,
    #[error("[MQTT-1.5.3-2] string contains U+0000")]
    NullCharacter,
    #[error("[MQTT-4.7.1-2] '#' must be last and alone in its level")]
    MultiLevelWildcard,
    #[error("[MQTT-4.7.1-3] '+' must occupy a whole level")]
    SingleLevelWildcard,
    #[error("[MQTT-3.8.3-3] SUBSCRIBE has no topic filter")]
    EmptySubscribe,
    #[error("[MQTT-3.8.3-4] SUBSCRIBE requested QoS is 3 or reserved bits are set")]
    SubscribeOptions,
    #[error("[MQTT-3.10.3-2] UNSUBSCRIBE has no topic filter")]
    EmptyUnsubscribe,
    #[error("[MQTT-2.2] packet has the wrong remaining length for its type")]
    FixedLength,

    // ---- MQTT 5.0 -------------------------------------------------------
    #[error("[MQTT-1.5.5] variable byte integer uses more than four bytes")]
    VariableByteIntegerTooLong,
    #[error("[MQTT-1.5.5-1] variable byte integer is not in its shortest form")]
    NonMinimalVariableByteInteger,
    #[error("[MQTT-2.2.2.1] property length runs past the end of the packet")]
    PropertyLength,
    #[error("[MQTT-2.2.2.2] property identifier {0:#04x} is unknown")]
    UnknownProperty(u8),
    #[error("[MQTT-2.2.2.2] property {0:#04x} does not belong in this packet")]
    PropertyNotAllowed(u8),
    /// Each property's definition says "It is a Protocol Error to include
    /// ... more than once" (all but User Property, and Subscription
    /// Identifier in a server's PUBLISH).
    #[error("[MQTT-2.2.2.2] property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    #[error("[MQTT-2.2.2.2] property {0:#04x} has a value other than 0 or 1")]
    PropertyValue(u8),
    #[error("[MQTT-3.1.2.11.3] Receive Maximum is 0")]
    ZeroReceiveMaximum,
    #[error("[MQTT-3.1.2.11.4] Maximum Packet Size is 0")]
    ZeroMaximumPacketSize,
    #[error("[MQTT-3.8.2.1.2] Subscription Identifier is 0")]
    ZeroSubscriptionIdentifier,
    #[error("[MQTT-3.1.2.11.10] Authentication Data without an Authentication Method")]
    AuthenticationDataWithoutMethod,
    #[error("[MQTT-3.3.2-4] payload is not UTF-8 but its Payload Format Indicator is 1")]
    PayloadFormatInvalid,
    #[error("[MQTT-3.3.2-8] Topic Alias is 0")]
    TopicAliasZero,
    #[error("[MQTT-3.3.2-9] Topic Alias {alias} is above the maximum of {maximum}")]
    TopicAliasAboveMaximum { alias: u16, maximum: u16 },
    #[error("[MQTT-3.3.2.3.4] Topic Alias {0} has no topic on this connection")]
    TopicAliasUnknown(u16),
    #[error("[MQTT-3.3.2.3.4] PUBLISH has an empty topic and no Topic Alias")]
    EmptyTopicWithoutAlias,
    #[error("[MQTT-3.3.2-14] Response Topic contains a wildcard")]
    WildcardInResponseTopic,
    #[error("[MQTT-3.3.4-6] a client's PUBLISH carries a Subscription Identifier")]
    SubscriptionIdentifierFromClient,
    #[error("[MQTT-3.8.3-5] reserved bits of the subscription options are set")]
    SubscribeReservedBits,
    #[error("[MQTT-3.8.3.1] subscription Maximum QoS is 3")]
    SubscribeQoS3,
    #[error("[MQTT-3.8.3.1] Retain Handling is 3")]
    RetainHandling3,
    #[error("[MQTT-3.8.3-4] No Local is set on a shared subscription")]
    NoLocalOnSharedSubscription,
    #[error("[MQTT-2.4] reason code {code:#04x} is not one packet type {packet_type} may carry")]
    ReasonCodeNotAllowed { packet_type: u8, code: u8 },
    #[error("[MQTT-2.1] packet type {0} has bytes after its last field")]
    TrailingBytes(u8),
}
