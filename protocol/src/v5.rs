//! MQTT 5.0: CONNECT and every later client packet decoded strictly, every
//! packet encoded with its properties and reason codes.
//!
//! STUB: filled in by the MQTT 5 codec work (issue 8).

use bytes::BytesMut;

use crate::encode::{PublishRef, PublishV5};
use crate::error::ProtocolError;
use crate::framer::Frame;
use crate::packet::{Connect, Outgoing, Packet};

pub fn decode_connect(_frame: &Frame) -> Result<Connect, ProtocolError> {
    Err(ProtocolError::UnsupportedProtocolLevel(5))
}

pub fn decode_packet(_frame: &Frame) -> Result<Packet, ProtocolError> {
    Err(ProtocolError::UnsupportedProtocolLevel(5))
}

pub fn encode(_packet: &Outgoing, _buf: &mut BytesMut) {}

pub fn encode_packet(_packet: &Packet, _buf: &mut BytesMut) {}

pub fn encode_publish(_publish: &PublishRef<'_>, _v5: &PublishV5<'_>, _buf: &mut BytesMut) {}

pub fn encoded_publish_len(_publish: &PublishRef<'_>, _v5: &PublishV5<'_>) -> usize {
    0
}
