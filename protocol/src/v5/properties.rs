//! MQTT 5 properties (section 2.2.2): one reader for every packet, checking
//! table 2.4 (which property may appear where), repetition and each
//! property's range; and the writer side, a [`Sink`] that either writes or
//! only counts, so a length and the bytes it announces come from one
//! function.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{ProtocolError, SpecViolation};
use crate::packet::UserProperty;
use crate::reader::Reader;
use crate::topic::TopicName;

pub(crate) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub(crate) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub(crate) const CONTENT_TYPE: u8 = 0x03;
pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
pub(crate) const CORRELATION_DATA: u8 = 0x09;
pub(crate) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
pub(crate) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
pub(crate) const SERVER_KEEP_ALIVE: u8 = 0x13;
pub(crate) const AUTHENTICATION_METHOD: u8 = 0x15;
pub(crate) const AUTHENTICATION_DATA: u8 = 0x16;
pub(crate) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub(crate) const WILL_DELAY_INTERVAL: u8 = 0x18;
pub(crate) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub(crate) const RESPONSE_INFORMATION: u8 = 0x1A;
pub(crate) const SERVER_REFERENCE: u8 = 0x1C;
pub(crate) const REASON_STRING: u8 = 0x1F;
pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub(crate) const TOPIC_ALIAS: u8 = 0x23;
pub(crate) const MAXIMUM_QOS: u8 = 0x24;
pub(crate) const RETAIN_AVAILABLE: u8 = 0x25;
pub(crate) const USER_PROPERTY: u8 = 0x26;
pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub(crate) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

const fn set(ids: &[u8]) -> u64 {
    let mut mask = 0;
    let mut i = 0;
    while i < ids.len() {
        mask |= 1 << ids[i];
        i += 1;
    }
    mask
}

const CONNECT_SET: u64 = set(&[
    SESSION_EXPIRY_INTERVAL,
    RECEIVE_MAXIMUM,
    MAXIMUM_PACKET_SIZE,
    TOPIC_ALIAS_MAXIMUM,
    REQUEST_RESPONSE_INFORMATION,
    REQUEST_PROBLEM_INFORMATION,
    USER_PROPERTY,
    AUTHENTICATION_METHOD,
    AUTHENTICATION_DATA,
]);
const WILL_SET: u64 = set(&[
    WILL_DELAY_INTERVAL,
    PAYLOAD_FORMAT_INDICATOR,
    MESSAGE_EXPIRY_INTERVAL,
    CONTENT_TYPE,
    RESPONSE_TOPIC,
    CORRELATION_DATA,
    USER_PROPERTY,
]);
const PUBLISH_SET: u64 = set(&[
    PAYLOAD_FORMAT_INDICATOR,
    MESSAGE_EXPIRY_INTERVAL,
    TOPIC_ALIAS,
    RESPONSE_TOPIC,
    CORRELATION_DATA,
    USER_PROPERTY,
    SUBSCRIPTION_IDENTIFIER,
    CONTENT_TYPE,
]);
const CONNACK_SET: u64 = set(&[
    SESSION_EXPIRY_INTERVAL,
    RECEIVE_MAXIMUM,
    MAXIMUM_QOS,
    RETAIN_AVAILABLE,
    MAXIMUM_PACKET_SIZE,
    ASSIGNED_CLIENT_IDENTIFIER,
    TOPIC_ALIAS_MAXIMUM,
    REASON_STRING,
    USER_PROPERTY,
    WILDCARD_SUBSCRIPTION_AVAILABLE,
    SUBSCRIPTION_IDENTIFIER_AVAILABLE,
    SHARED_SUBSCRIPTION_AVAILABLE,
    SERVER_KEEP_ALIVE,
    RESPONSE_INFORMATION,
    SERVER_REFERENCE,
    AUTHENTICATION_METHOD,
    AUTHENTICATION_DATA,
]);
const ACK_SET: u64 = set(&[REASON_STRING, USER_PROPERTY]);
const SUBSCRIBE_SET: u64 = set(&[SUBSCRIPTION_IDENTIFIER, USER_PROPERTY]);
const UNSUBSCRIBE_SET: u64 = set(&[USER_PROPERTY]);
const DISCONNECT_SET: u64 = set(&[
    SESSION_EXPIRY_INTERVAL,
    REASON_STRING,
    USER_PROPERTY,
    SERVER_REFERENCE,
]);
const AUTH_SET: u64 = set(&[
    AUTHENTICATION_METHOD,
    AUTHENTICATION_DATA,
    REASON_STRING,
    USER_PROPERTY,
]);
const KNOWN_SET: u64 = CONNECT_SET | WILL_SET | PUBLISH_SET | CONNACK_SET | DISCONNECT_SET;

/// Where a property block sits: decides which identifiers table 2.4 allows
/// and which may repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    Connect,
    Will,
    /// A client's PUBLISH: no Subscription Identifier [MQTT-3.3.4-6].
    ClientPublish,
    /// A server's PUBLISH: Subscription Identifier may repeat.
    ServerPublish,
    ConnAck,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK.
    Ack,
    Subscribe,
    Unsubscribe,
    Disconnect,
    Auth,
}

impl Context {
    fn allowed(self) -> u64 {
        match self {
            Context::Connect => CONNECT_SET,
            Context::Will => WILL_SET,
            Context::ClientPublish | Context::ServerPublish => PUBLISH_SET,
            Context::ConnAck => CONNACK_SET,
            Context::Ack => ACK_SET,
            Context::Subscribe => SUBSCRIBE_SET,
            Context::Unsubscribe => UNSUBSCRIBE_SET,
            Context::Disconnect => DISCONNECT_SET,
            Context::Auth => AUTH_SET,
        }
    }

    fn may_repeat(self, id: u8) -> bool {
        id == USER_PROPERTY || (id == SUBSCRIPTION_IDENTIFIER && self == Context::ServerPublish)
    }
}

/// Every property of one block, as read; the packet decoders move the
/// fields they own into the model's structs.
#[derive(Debug, Default)]
pub(crate) struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<TopicName>,
    pub correlation_data: Option<Bytes>,
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user_properties: Vec<UserProperty>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

/// A byte property that may only be 0 or 1.
fn flag(id: u8, reader: &mut Reader) -> Result<Option<u8>, ProtocolError> {
    match reader.u8()? {
        value @ (0 | 1) => Ok(Some(value)),
        _ => Err(SpecViolation::PropertyValue(id).into()),
    }
}

fn non_zero_u16(reader: &mut Reader, zero: SpecViolation) -> Result<Option<u16>, ProtocolError> {
    match reader.u16()? {
        0 => Err(zero.into()),
        value => Ok(Some(value)),
    }
}

/// Reads a Property Length and the properties it covers.
pub(crate) fn read(reader: &mut Reader, context: Context) -> Result<Properties, ProtocolError> {
    let len = usize::try_from(reader.var_int()?).map_err(|_| SpecViolation::PropertyLength)?;
    if len > reader.remaining() {
        return Err(SpecViolation::PropertyLength.into());
    }
    let mut block = Reader::new(reader.take(len)?, reader.packet);
    let mut p = Properties::default();
    let mut seen: u64 = 0;
    while !block.is_empty() {
        let id = block.u8()?;
        let bit = 1u64.checked_shl(u32::from(id)).unwrap_or(0);
        if KNOWN_SET & bit == 0 {
            return Err(SpecViolation::UnknownProperty(id).into());
        }
        if context.allowed() & bit == 0 {
            return Err(SpecViolation::PropertyNotAllowed(id).into());
        }
        if seen & bit != 0 && !context.may_repeat(id) {
            return Err(SpecViolation::DuplicateProperty(id).into());
        }
        seen |= bit;
        let r = &mut block;
        match id {
            PAYLOAD_FORMAT_INDICATOR => p.payload_format_indicator = flag(id, r)?,
            MESSAGE_EXPIRY_INTERVAL => p.message_expiry_interval = Some(r.u32()?),
            CONTENT_TYPE => p.content_type = Some(r.string()?),
            RESPONSE_TOPIC => {
                let topic = TopicName::new(&r.string()?).map_err(|e| match e {
                    SpecViolation::WildcardInTopicName => SpecViolation::WildcardInResponseTopic,
                    other => other,
                })?;
                p.response_topic = Some(topic);
            }
            CORRELATION_DATA => p.correlation_data = Some(r.bytes()?),
            SUBSCRIPTION_IDENTIFIER => {
                if context == Context::ClientPublish {
                    return Err(SpecViolation::SubscriptionIdentifierFromClient.into());
                }
                match r.var_int()? {
                    0 => return Err(SpecViolation::ZeroSubscriptionIdentifier.into()),
                    value => p.subscription_identifiers.push(value),
                }
            }
            SESSION_EXPIRY_INTERVAL => p.session_expiry_interval = Some(r.u32()?),
            ASSIGNED_CLIENT_IDENTIFIER => p.assigned_client_identifier = Some(r.string()?),
            SERVER_KEEP_ALIVE => p.server_keep_alive = Some(r.u16()?),
            AUTHENTICATION_METHOD => p.authentication_method = Some(r.string()?),
            AUTHENTICATION_DATA => p.authentication_data = Some(r.bytes()?),
            REQUEST_PROBLEM_INFORMATION => p.request_problem_information = flag(id, r)?,
            WILL_DELAY_INTERVAL => p.will_delay_interval = Some(r.u32()?),
            REQUEST_RESPONSE_INFORMATION => p.request_response_information = flag(id, r)?,
            RESPONSE_INFORMATION => p.response_information = Some(r.string()?),
            SERVER_REFERENCE => p.server_reference = Some(r.string()?),
            REASON_STRING => p.reason_string = Some(r.string()?),
            RECEIVE_MAXIMUM => {
                p.receive_maximum = non_zero_u16(r, SpecViolation::ZeroReceiveMaximum)?;
            }
            TOPIC_ALIAS_MAXIMUM => p.topic_alias_maximum = Some(r.u16()?),
            TOPIC_ALIAS => p.topic_alias = non_zero_u16(r, SpecViolation::TopicAliasZero)?,
            MAXIMUM_QOS => p.maximum_qos = flag(id, r)?,
            RETAIN_AVAILABLE => p.retain_available = flag(id, r)?,
            USER_PROPERTY => {
                let name = r.string()?;
                let value = r.string()?;
                p.user_properties.push((name, value));
            }
            MAXIMUM_PACKET_SIZE => match r.u32()? {
                0 => return Err(SpecViolation::ZeroMaximumPacketSize.into()),
                value => p.maximum_packet_size = Some(value),
            },
            WILDCARD_SUBSCRIPTION_AVAILABLE => p.wildcard_subscription_available = flag(id, r)?,
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                p.subscription_identifier_available = flag(id, r)?;
            }
            SHARED_SUBSCRIPTION_AVAILABLE => p.shared_subscription_available = flag(id, r)?,
            other => return Err(SpecViolation::UnknownProperty(other).into()),
        }
    }
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(SpecViolation::AuthenticationDataWithoutMethod.into());
    }
    Ok(p)
}

// ---- writing ---------------------------------------------------------------

/// Where encoders write: a buffer, or a [`Counter`] that only adds up the
/// bytes, so a length prefix is computed by the code that writes the body.
pub(crate) trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for BytesMut {
    fn put(&mut self, bytes: &[u8]) {
        self.put_slice(bytes);
    }
}

/// Counts what would be written.
#[derive(Debug, Default)]
pub(crate) struct Counter(pub usize);

impl Sink for Counter {
    fn put(&mut self, bytes: &[u8]) {
        self.0 = self.0.saturating_add(bytes.len());
    }
}

/// The number of bytes `write` writes.
pub(crate) fn measure(write: &dyn Fn(&mut dyn Sink)) -> usize {
    let mut counter = Counter::default();
    write(&mut counter);
    counter.0
}

/// A Variable Byte Integer; values above 268,435,455 are clamped (they come
/// from this process, never from the wire).
pub(crate) fn put_var_int(sink: &mut dyn Sink, value: usize) {
    let mut value = value.min(crate::framer::MAX_REMAINING_LENGTH);
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        sink.put(&[byte]);
        if value == 0 {
            break;
        }
    }
}

/// Binary Data. Longer than 65,535 bytes cannot be said: the first 65,535
/// are written, so the length prefix stays true.
pub(crate) fn put_binary(sink: &mut dyn Sink, bytes: &[u8]) {
    let len = bytes.len().min(usize::from(u16::MAX));
    sink.put(&(len as u16).to_be_bytes());
    sink.put(bytes.get(..len).unwrap_or_default());
}

pub(crate) fn put_str(sink: &mut dyn Sink, s: &str) {
    put_binary(sink, s.as_bytes());
}

/// A Property Length and the properties `write` writes.
pub(crate) fn put_block(sink: &mut dyn Sink, write: &dyn Fn(&mut dyn Sink)) {
    put_var_int(sink, measure(write));
    write(sink);
}

pub(crate) fn byte(sink: &mut dyn Sink, id: u8, value: Option<u8>) {
    if let Some(value) = value {
        sink.put(&[id, value]);
    }
}

pub(crate) fn two(sink: &mut dyn Sink, id: u8, value: Option<u16>) {
    if let Some(value) = value {
        sink.put(&[id]);
        sink.put(&value.to_be_bytes());
    }
}

pub(crate) fn four(sink: &mut dyn Sink, id: u8, value: Option<u32>) {
    if let Some(value) = value {
        sink.put(&[id]);
        sink.put(&value.to_be_bytes());
    }
}

pub(crate) fn string(sink: &mut dyn Sink, id: u8, value: Option<&str>) {
    if let Some(value) = value {
        sink.put(&[id]);
        put_str(sink, value);
    }
}

pub(crate) fn binary(sink: &mut dyn Sink, id: u8, value: Option<&[u8]>) {
    if let Some(value) = value {
        sink.put(&[id]);
        put_binary(sink, value);
    }
}

pub(crate) fn var_int(sink: &mut dyn Sink, id: u8, value: u32) {
    sink.put(&[id]);
    put_var_int(sink, usize::try_from(value).unwrap_or(usize::MAX));
}

pub(crate) fn user_properties(sink: &mut dyn Sink, pairs: &[UserProperty]) {
    for (name, value) in pairs {
        sink.put(&[USER_PROPERTY]);
        put_str(sink, name);
        put_str(sink, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_block(context: Context, block: &[u8]) -> Result<Properties, ProtocolError> {
        let mut bytes = BytesMut::new();
        put_var_int(&mut bytes, block.len());
        bytes.put_slice(block);
        read(&mut Reader::new(bytes.freeze(), "TEST"), context)
    }

    #[test]
    fn counter_and_buffer_agree() {
        let write = |s: &mut dyn Sink| {
            four(s, MESSAGE_EXPIRY_INTERVAL, Some(7));
            var_int(s, SUBSCRIPTION_IDENTIFIER, 300);
            user_properties(s, &[("a".into(), "b".into())]);
        };
        let mut buf = BytesMut::new();
        put_block(&mut buf, &write);
        assert_eq!(buf.len(), 1 + measure(&write));
        let p = read(&mut Reader::new(buf.freeze(), "T"), Context::ServerPublish).unwrap();
        assert_eq!(p.message_expiry_interval, Some(7));
        assert_eq!(p.subscription_identifiers, vec![300]);
    }

    #[test]
    fn every_known_identifier_is_in_some_packet() {
        for id in 0..=u8::MAX {
            let known = KNOWN_SET & 1u64.checked_shl(u32::from(id)).unwrap_or(0) != 0;
            let expected = matches!(
                id,
                0x01..=0x03 | 0x08 | 0x09 | 0x0B | 0x11..=0x13 | 0x15..=0x19 | 0x1A | 0x1C
                    | 0x1F | 0x21..=0x2A
            );
            assert_eq!(known, expected, "{id:#04x}");
        }
    }

    #[test]
    fn mqtt_2_2_2_1_property_length_past_the_end() {
        let mut reader = Reader::new(Bytes::from_static(&[0x05, 0x01, 0x01]), "T");
        assert_eq!(
            read(&mut reader, Context::Ack).err(),
            Some(SpecViolation::PropertyLength.into())
        );
    }

    #[test]
    fn a_value_cut_by_the_property_length_is_malformed() {
        // Message Expiry needs four bytes; the block ends after two.
        let result = read_block(Context::ClientPublish, &[0x02, 0x00, 0x00]);
        assert!(matches!(result, Err(ProtocolError::Malformed { .. })));
    }
}
