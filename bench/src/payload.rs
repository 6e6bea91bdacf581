//! The header every benchmark message carries, so that the receiving side can
//! count what arrived instead of trusting what was sent.
//!
//! | offset | size | field                                             |
//! |--------|------|---------------------------------------------------|
//! | 0      | 8    | run id: messages of another run are ignored       |
//! | 8      | 4    | publisher id, dense from 0 within a run           |
//! | 12     | 8    | sequence number, from 0 per publisher             |
//! | 20     | 8    | send time, ns since the run's [`Clock`] origin    |
//! | 28     | ..   | zero padding up to `--payload` bytes              |
//!
//! All integers are big-endian. Pure code: no I/O.

use std::time::Instant;

use bytes::{Buf, BufMut, BytesMut};

/// Bytes taken by the header; the smallest `--payload` accepted.
pub const HEADER_LEN: usize = 8 + 4 + 8 + 8;

/// The fields at the front of every payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub run_id: u64,
    pub publisher: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

impl Header {
    /// Appends the header and zero padding up to `size` bytes (at least
    /// [`HEADER_LEN`]).
    pub fn write(&self, buf: &mut BytesMut, size: usize) {
        buf.reserve(size.max(HEADER_LEN));
        buf.put_u64(self.run_id);
        buf.put_u32(self.publisher);
        buf.put_u64(self.seq);
        buf.put_u64(self.sent_ns);
        buf.put_bytes(0, size.saturating_sub(HEADER_LEN));
    }

    /// Reads the header from the front of a payload; `None` when it is too
    /// short to be one of ours.
    pub fn read(mut payload: &[u8]) -> Option<Header> {
        if payload.len() < HEADER_LEN {
            return None;
        }
        Some(Header {
            run_id: payload.get_u64(),
            publisher: payload.get_u32(),
            seq: payload.get_u64(),
            sent_ns: payload.get_u64(),
        })
    }
}

/// The time base shared by every publisher and subscriber of one run (they
/// live in the same process, so a monotonic `Instant` is enough).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            origin: Instant::now(),
        }
    }

    /// Nanoseconds since the origin.
    pub fn now_ns(&self) -> u64 {
        self.ns_at(Instant::now())
    }

    pub fn ns_at(&self, instant: Instant) -> u64 {
        let elapsed = instant.saturating_duration_since(self.origin);
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            run_id: 0x0123_4567_89AB_CDEF,
            publisher: 7,
            seq: 1 << 40,
            sent_ns: 123_456_789,
        }
    }

    #[test]
    fn round_trips_and_pads_to_the_requested_size() {
        for size in [0, HEADER_LEN, 64, 1024] {
            let mut buf = BytesMut::new();
            header().write(&mut buf, size);
            assert_eq!(buf.len(), size.max(HEADER_LEN));
            assert_eq!(Header::read(&buf), Some(header()));
            assert!(buf[HEADER_LEN..].iter().all(|b| *b == 0));
        }
    }

    #[test]
    fn layout_is_big_endian_at_fixed_offsets() {
        let mut buf = BytesMut::new();
        header().write(&mut buf, HEADER_LEN);
        assert_eq!(&buf[0..8], &0x0123_4567_89AB_CDEFu64.to_be_bytes());
        assert_eq!(&buf[8..12], &7u32.to_be_bytes());
        assert_eq!(&buf[12..20], &(1u64 << 40).to_be_bytes());
        assert_eq!(&buf[20..28], &123_456_789u64.to_be_bytes());
    }

    #[test]
    fn short_payloads_are_not_ours() {
        let mut buf = BytesMut::new();
        header().write(&mut buf, HEADER_LEN);
        for len in 0..HEADER_LEN {
            assert_eq!(Header::read(&buf[..len]), None, "length {len}");
        }
    }

    #[test]
    fn clock_is_monotonic() {
        let clock = Clock::new();
        let a = clock.now_ns();
        let b = clock.now_ns();
        assert!(b >= a);
    }
}
