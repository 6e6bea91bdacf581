//! Splits a TCP byte stream into whole MQTT packets.
//!
//! This is the only code that knows about partial reads (a packet spread over
//! many reads, down to one byte each) and sticky reads (several packets in one
//! read). The caller keeps one growing `BytesMut` per connection, appends what
//! the socket gave, and calls [`Framer::next_frame`] until it answers
//! `Ok(None)` ("need more").
//!
//! | bytes buffered                         | answer                          |
//! |----------------------------------------|---------------------------------|
//! | fewer than the fixed header            | `Ok(None)`                      |
//! | fixed header announces > limit         | `Err(PacketTooLarge)` at once   |
//! | the fourth length byte has bit 7 set   | `Err(RemainingLengthTooLong)`   |
//! | header complete, body incomplete       | `Ok(None)`, buffer reserved     |
//! | a whole packet                         | `Ok(Some(frame))`, split off    |
//!
//! The size limit is checked from the fixed header alone, so a client that
//! announces 200 MB never makes us buffer more than the limit.

use bytes::{Bytes, BytesMut};

use crate::error::{ProtocolError, SpecViolation};

/// The largest remaining length four bytes can encode (256 MB - 1).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// One whole packet as it came off the wire: fixed header and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The first byte: packet type in the high nibble, flags in the low.
    pub first_byte: u8,
    /// Length of the fixed header (2 to 5 bytes).
    pub header_len: usize,
    /// The whole packet, fixed header included.
    pub bytes: Bytes,
}

impl Frame {
    /// The packet type, 1 (CONNECT) to 15.
    pub fn packet_type(&self) -> u8 {
        self.first_byte >> 4
    }

    /// The low four bits of the first byte.
    pub fn flags(&self) -> u8 {
        self.first_byte & 0x0F
    }

    /// Variable header and payload.
    pub fn body(&self) -> Bytes {
        self.bytes.slice(self.header_len.min(self.bytes.len())..)
    }
}

/// Frames packets out of a read buffer, enforcing a maximum packet size.
#[derive(Debug, Clone, Copy)]
pub struct Framer {
    max_packet_size: usize,
}

impl Framer {
    /// `max_packet_size` bounds the whole packet, fixed header included.
    pub fn new(max_packet_size: usize) -> Self {
        Framer { max_packet_size }
    }

    /// Takes the next whole packet off the front of `buf`, or answers `None`
    /// when more bytes are needed. On `None` the buffer is grown to hold the
    /// announced packet so the next read fills it without reallocating.
    pub fn next_frame(&self, buf: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        let Some((header_len, remaining)) = parse_fixed_header(buf)? else {
            return Ok(None);
        };
        let total = header_len + remaining;
        if total > self.max_packet_size {
            return Err(ProtocolError::PacketTooLarge {
                announced: total,
                limit: self.max_packet_size,
            });
        }
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let first_byte = buf.first().copied().unwrap_or_default();
        let bytes = buf.split_to(total).freeze();
        Ok(Some(Frame {
            first_byte,
            header_len,
            bytes,
        }))
    }
}

/// Reads the fixed header: `Some((header length, remaining length))`, or
/// `None` when the buffer ends inside it.
fn parse_fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, ProtocolError> {
    let mut remaining: usize = 0;
    for (index, byte) in buf.iter().skip(1).take(4).enumerate() {
        remaining |= usize::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok(Some((index + 2, remaining)));
        }
    }
    if buf.len() >= 5 {
        // Four length bytes read and the fourth still says "more".
        return Err(SpecViolation::RemainingLengthTooLong.into());
    }
    Ok(None)
}

/// Appends `len` as an MQTT variable byte integer (the remaining length of
/// a fixed header; also what MQTT 5 calls a Variable Byte Integer).
pub fn put_remaining_length(buf: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf.extend_from_slice(&[byte]);
        if len == 0 {
            break;
        }
    }
}

/// Bytes needed to encode `len` as a remaining length.
pub(crate) fn remaining_length_len(len: usize) -> usize {
    match len {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[first]);
        put_remaining_length(&mut buf, body.len());
        buf.extend_from_slice(body);
        buf.to_vec()
    }

    #[test]
    fn needs_more_until_the_whole_packet_is_there() {
        let wire = packet(0x30, b"\x00\x01ahello");
        let framer = Framer::new(1024);
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(framer.next_frame(&mut buf), Ok(None), "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed at {cut}");
        }
        let mut buf = BytesMut::from(&wire[..]);
        let frame = framer.next_frame(&mut buf).unwrap().unwrap();
        assert_eq!(frame.bytes.as_ref(), &wire[..]);
        assert!(buf.is_empty());
    }

    #[test]
    fn one_byte_per_read() {
        let wire = packet(0x30, &[7u8; 300]);
        let framer = Framer::new(1024);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for byte in &wire {
            buf.extend_from_slice(&[*byte]);
            while let Some(frame) = framer.next_frame(&mut buf).unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].header_len, 3);
        assert_eq!(frames[0].body().len(), 300);
    }

    #[test]
    fn several_packets_in_one_read() {
        let mut wire = packet(0xC0, b"");
        wire.extend(packet(0x40, &[0, 1]));
        wire.extend(packet(0x30, b"\x00\x01a"));
        wire.extend(&packet(0xE0, b"")[..1]);
        let framer = Framer::new(1024);
        let mut buf = BytesMut::from(&wire[..]);
        let types: Vec<u8> = std::iter::from_fn(|| framer.next_frame(&mut buf).unwrap())
            .map(|f| f.packet_type())
            .collect();
        assert_eq!(types, vec![12, 4, 3]);
        assert_eq!(buf.len(), 1, "the half packet stays buffered");
    }

    #[test]
    fn four_byte_remaining_length_is_accepted() {
        let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
        let framer = Framer::new(MAX_REMAINING_LENGTH + 5);
        assert_eq!(framer.next_frame(&mut buf), Ok(None));
    }

    #[test]
    fn fifth_length_byte_is_malformed() {
        let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01][..]);
        let err = Framer::new(usize::MAX).next_frame(&mut buf).unwrap_err();
        assert_eq!(err, SpecViolation::RemainingLengthTooLong.into());
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        // 200 MB announced, two bytes delivered.
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0x30]);
        put_remaining_length(&mut buf, 200 * 1024 * 1024);
        let err = Framer::new(1024 * 1024).next_frame(&mut buf).unwrap_err();
        assert!(matches!(err, ProtocolError::PacketTooLarge { .. }));
        assert!(buf.capacity() < 1024, "nothing was reserved for the body");
    }

    #[test]
    fn remaining_length_round_trips() {
        for len in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            MAX_REMAINING_LENGTH,
        ] {
            let mut buf = BytesMut::new();
            put_remaining_length(&mut buf, len);
            assert_eq!(buf.len(), remaining_length_len(len));
            let mut full = BytesMut::from(&[0x30][..]);
            full.extend_from_slice(&buf);
            assert_eq!(parse_fixed_header(&full), Ok(Some((1 + buf.len(), len))));
        }
    }
}
