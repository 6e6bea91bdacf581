//! The rules of the fixed header that `mqttbytes` does not check: reserved
//! flag bits, packet types a client must not send, and the exact remaining
//! length of fixed-size packets. Bodies are checked in `decode` (3.1.1) and
//! `v5::decode` (5.0), where acknowledgements, DISCONNECT and AUTH may carry
//! a reason code and properties.

use crate::error::SpecViolation;
use crate::framer::Frame;
use crate::packet::ProtocolVersion;

const PUBLISH: u8 = 3;
const PUBREL: u8 = 6;
const SUBSCRIBE: u8 = 8;
const UNSUBSCRIBE: u8 = 10;
const AUTH: u8 = 15;

/// Checks the fixed header of a packet a client sent after its CONNECT.
pub fn check_fixed_header(frame: &Frame, version: ProtocolVersion) -> Result<(), SpecViolation> {
    let kind = frame.packet_type();
    let flags = match version {
        // MQTT 3.1 set DUP on resent PUBREL, SUBSCRIBE and UNSUBSCRIBE.
        ProtocolVersion::V31 if matches!(kind, PUBREL | SUBSCRIBE | UNSUBSCRIBE) => {
            frame.flags() & 0b0111
        }
        _ => frame.flags(),
    };
    let expected_flags = match kind {
        1 => return Err(SpecViolation::SecondConnect),
        PUBLISH => return check_publish_flags(flags),
        4 | 5 | 7 | 12 | 14 => 0b0000,
        // MQTT 5 only [MQTT-3.15.1-1].
        AUTH if version.is_v5() => 0b0000,
        // [MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1]
        PUBREL | SUBSCRIBE | UNSUBSCRIBE => 0b0010,
        other => return Err(SpecViolation::UnexpectedPacketType(other)),
    };
    if flags != expected_flags {
        return Err(SpecViolation::ReservedFlags(kind));
    }
    check_length(frame, version)
}

fn check_publish_flags(flags: u8) -> Result<(), SpecViolation> {
    if flags & 0b0110 == 0b0110 {
        return Err(SpecViolation::PublishQoS3);
    }
    if flags & 0b1110 == 0b1000 {
        return Err(SpecViolation::DupOnQoS0);
    }
    Ok(())
}

/// In 3.1/3.1.1 PUBACK, PUBREC, PUBREL and PUBCOMP carry exactly a packet
/// id and DISCONNECT nothing; in 5.0 they may add a reason code and
/// properties (checked by their decoder). PINGREQ carries nothing in both.
fn check_length(frame: &Frame, version: ProtocolVersion) -> Result<(), SpecViolation> {
    let expected = match frame.packet_type() {
        4..=7 | 14 if version.is_v5() => return Ok(()),
        4..=7 => 2,
        12 | 14 => 0,
        _ => return Ok(()),
    };
    if frame.bytes.len().saturating_sub(frame.header_len) != expected {
        return Err(SpecViolation::FixedLength);
    }
    Ok(())
}
