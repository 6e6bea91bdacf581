//! MQTT 5.0: CONNECT and every later client packet decoded strictly, every
//! packet encoded with its properties and reason codes.
//!
//! | module       | owns                                                     |
//! |--------------|----------------------------------------------------------|
//! | `properties` | property ids, table 2.4, the property reader and writer  |
//! | `decode`     | client packets after CONNECT (CONNECT is in `connect`)    |
//! | `server`     | server packets read back, for tests and the load tool     |
//! | `encode`     | every packet, either way, into a write buffer             |
//!
//! Nothing here is parsed by `mqttbytes`: its v5 module accepts repeated
//! properties, has no AUTH packet and miscounts a Subscription Identifier
//! inside a property block (see `tests/v5_rules.rs`).

mod decode;
mod encode;
pub(crate) mod properties;
mod server;

use bytes::{Bytes, BytesMut};

use crate::encode::{PublishRef, PublishV5};
use crate::error::{ProtocolError, SpecViolation};
use crate::framer::Frame;
use crate::packet::{Connect, Outgoing, Packet, ProtocolVersion, PublishProperties};

pub(crate) use encode::encode_connect;
pub use server::decode_server_packet;

/// Decodes a CONNECT of protocol level 5.
pub fn decode_connect(frame: &Frame) -> Result<Connect, ProtocolError> {
    let (version, body) = crate::connect::read_header(frame)?;
    if !version.is_v5() {
        return Err(SpecViolation::ProtocolName.into());
    }
    crate::connect::read_rest(ProtocolVersion::V5, body)
}

/// Decodes one packet a version-5 client sent after its CONNECT.
pub fn decode_packet(frame: &Frame) -> Result<Packet, ProtocolError> {
    decode::decode_packet(frame)
}

/// Appends one broker packet to `buf` in its version-5 form.
pub fn encode(packet: &Outgoing, buf: &mut BytesMut) {
    encode::encode(packet, buf);
}

/// Appends one client packet to `buf` in its version-5 form.
pub fn encode_packet(packet: &Packet, buf: &mut BytesMut) {
    encode::encode_packet(packet, buf);
}

/// Appends a PUBLISH for a version-5 subscriber.
pub fn encode_publish(publish: &PublishRef<'_>, v5: &PublishV5<'_>, buf: &mut BytesMut) {
    encode::encode_publish(publish, v5, buf);
}

/// The number of bytes [`encode_publish`] writes.
pub fn encoded_publish_len(publish: &PublishRef<'_>, v5: &PublishV5<'_>) -> usize {
    encode::encoded_publish_len(publish, v5)
}

/// The PUBLISH (or will) properties of a decoded block, `None` when there
/// are none. A Payload Format Indicator of 1 promises UTF-8 [MQTT-3.3.2-4].
pub(crate) fn publish_properties(
    p: properties::Properties,
    payload: &Bytes,
) -> Result<Option<Box<PublishProperties>>, ProtocolError> {
    if p.payload_format_indicator == Some(1) && std::str::from_utf8(payload).is_err() {
        return Err(SpecViolation::PayloadFormatInvalid.into());
    }
    let properties = PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        topic_alias: p.topic_alias,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
        subscription_identifiers: p.subscription_identifiers,
        content_type: p.content_type,
    };
    Ok((!properties.is_empty()).then(|| Box::new(properties)))
}
