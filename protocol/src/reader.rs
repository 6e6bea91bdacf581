//! Field readers over one packet's body, shared by the CONNECT decoder of
//! every version and the MQTT 5 decoders. Every read is bounded by the bytes
//! left: a length prefix that points past the end is an error, never an
//! allocation or a panic.

use bytes::{Buf, Bytes};

use crate::error::{ProtocolError, SpecViolation};

/// The unread rest of one packet (or of one property block).
#[derive(Debug, Clone)]
pub(crate) struct Reader {
    body: Bytes,
    /// Named in `Malformed` errors.
    pub(crate) packet: &'static str,
}

impl Reader {
    pub(crate) fn new(body: Bytes, packet: &'static str) -> Reader {
        Reader { body, packet }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.body.len()
    }

    /// The next byte, left in place.
    pub(crate) fn peek_u8(&self) -> Option<u8> {
        self.body.first().copied()
    }

    pub(crate) fn truncated(&self, field: &str) -> ProtocolError {
        ProtocolError::Malformed {
            packet: self.packet,
            detail: format!("truncated {field}"),
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, ProtocolError> {
        self.body.try_get_u8().map_err(|_| self.truncated("byte"))
    }

    pub(crate) fn u16(&mut self) -> Result<u16, ProtocolError> {
        self.body
            .try_get_u16()
            .map_err(|_| self.truncated("two-byte integer"))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, ProtocolError> {
        self.body
            .try_get_u32()
            .map_err(|_| self.truncated("four-byte integer"))
    }

    /// A Variable Byte Integer (section 1.5.5): at most four bytes, and in
    /// its shortest form [MQTT-1.5.5-1].
    pub(crate) fn var_int(&mut self) -> Result<u32, ProtocolError> {
        let mut value: u32 = 0;
        for index in 0..4u32 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7F) << (7 * index);
            if byte & 0x80 == 0 {
                // A last byte of zero after others adds nothing: the same
                // value fits in fewer bytes.
                if index > 0 && byte == 0 {
                    return Err(SpecViolation::NonMinimalVariableByteInteger.into());
                }
                return Ok(value);
            }
        }
        Err(SpecViolation::VariableByteIntegerTooLong.into())
    }

    /// The next `len` bytes.
    pub(crate) fn take(&mut self, len: usize) -> Result<Bytes, ProtocolError> {
        if self.body.len() < len {
            return Err(self.truncated("length-prefixed field"));
        }
        Ok(self.body.split_to(len))
    }

    /// Binary Data: a two-byte length, then that many bytes.
    pub(crate) fn bytes(&mut self) -> Result<Bytes, ProtocolError> {
        let len = usize::from(self.u16()?);
        self.take(len)
    }

    /// A UTF-8 Encoded String: well-formed [MQTT-1.5.4-1] (Rust's `str`
    /// also excludes the surrogates U+D800 to U+DFFF), without U+0000
    /// [MQTT-1.5.4-2].
    pub(crate) fn string(&mut self) -> Result<String, ProtocolError> {
        let bytes = self.bytes()?;
        let s = std::str::from_utf8(&bytes).map_err(|_| SpecViolation::InvalidUtf8)?;
        if s.contains('\0') {
            return Err(SpecViolation::NullCharacter.into());
        }
        Ok(s.to_owned())
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.body)
    }

    /// Fails with `error` if anything is left.
    pub(crate) fn finish(&self, error: SpecViolation) -> Result<(), ProtocolError> {
        if self.body.is_empty() {
            Ok(())
        } else {
            Err(error.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var_int(bytes: &'static [u8]) -> Result<u32, ProtocolError> {
        Reader::new(Bytes::from_static(bytes), "TEST").var_int()
    }

    #[test]
    fn mqtt_1_5_5_variable_byte_integers() {
        assert_eq!(var_int(&[0x00]), Ok(0));
        assert_eq!(var_int(&[0x7F]), Ok(127));
        assert_eq!(var_int(&[0x80, 0x01]), Ok(128));
        assert_eq!(var_int(&[0xFF, 0xFF, 0xFF, 0x7F]), Ok(268_435_455));
        assert_eq!(
            var_int(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            Err(SpecViolation::VariableByteIntegerTooLong.into())
        );
        assert!(matches!(
            var_int(&[0x80]),
            Err(ProtocolError::Malformed { .. })
        ));
    }

    #[test]
    fn mqtt_1_5_5_1_variable_byte_integer_is_minimal() {
        for bytes in [
            &[0x80, 0x00][..],
            &[0x81, 0x80, 0x00],
            &[0xFF, 0x80, 0x80, 0x00],
        ] {
            let mut reader = Reader::new(Bytes::copy_from_slice(bytes), "TEST");
            assert_eq!(
                reader.var_int(),
                Err(SpecViolation::NonMinimalVariableByteInteger.into()),
                "{bytes:02X?}"
            );
        }
    }

    #[test]
    fn a_length_past_the_end_is_an_error_not_an_allocation() {
        let mut reader = Reader::new(Bytes::from_static(&[0xFF, 0xFF, b'a']), "TEST");
        assert!(matches!(
            reader.bytes(),
            Err(ProtocolError::Malformed { .. })
        ));
    }
}
