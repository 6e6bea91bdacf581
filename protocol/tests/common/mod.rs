//! Helpers shared by the protocol crate's test files. Each test binary uses
//! some of them, hence the `dead_code` allowance.
#![allow(dead_code, clippy::unwrap_used)]

use bytes::BytesMut;
use proptest::prelude::*;
use tidemq_protocol::{Frame, Framer, PacketId, QoS};

/// Frames `bytes`, which must hold exactly one whole packet of at most
/// `max_packet_size` bytes.
pub fn frame(bytes: &[u8], max_packet_size: usize) -> Frame {
    let mut buf = BytesMut::from(bytes);
    let frame = Framer::new(max_packet_size)
        .next_frame(&mut buf)
        .unwrap()
        .unwrap();
    assert!(buf.is_empty(), "exactly one packet");
    frame
}

pub fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

pub fn packet_id() -> impl Strategy<Value = PacketId> {
    (1..=u16::MAX).prop_map(|id| PacketId::new(id).unwrap())
}
