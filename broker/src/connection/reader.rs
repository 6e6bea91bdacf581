//! The read task: socket -> framer -> decoded packets -> the session.
//!
//! It owns the connection's read buffer and never writes to the socket. It
//! ends at EOF, on a read error, on a packet that breaks the protocol or a
//! read limit (which it reports to the session), or when the connection is
//! cancelled. Between bursts it gives a large buffer back, so an idle
//! connection holds little.
//!
//! While the buffer holds a partial packet, two limits apply whatever the
//! keepalive: the packet must arrive whole within
//! `limits.packet_read_timeout_ms` of its first byte, and the buffer's
//! capacity (the framer reserves room for the whole announced packet) is
//! charged to the memory budget (`limits.memory_limit_mb`). Both travel with
//! the [`ReadBuffer`], which outlives a run of the task: a connection that
//! rests with a partial packet keeps its deadline and its charge.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tidemq_protocol::{decode_packet, Framer, Packet, ProtocolError, ProtocolVersion};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::sleep_until_option;
use crate::budget::Budget;
use crate::census::Tally;
use crate::metrics::Metrics;

/// Smallest and largest room offered to one read. The room adapts: it
/// doubles when a read fills it and halves when a read uses under a quarter,
/// so a busy publisher reads 64 KiB per syscall and an idle connection holds
/// a few hundred bytes.
const READ_CHUNK_MIN: usize = 256;
const READ_CHUNK_MAX: usize = 64 * 1024;
/// What a busy reader's buffer may hold anyway (a read's room, and that
/// again reserved while the last packet of a read is incomplete): a partial
/// packet needing more is refused when the memory budget has no room.
const FREE_READ_ROOM: usize = 2 * READ_CHUNK_MAX;
/// A buffer larger than this is released once it is empty.
const IDLE_BUFFER_KEEP: usize = 2 * READ_CHUNK_MIN;

/// What the read task tells the session.
#[derive(Debug)]
pub enum Inbound {
    Packet(Packet),
    Failed(ReadError),
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("peer closed the connection")]
    Closed,
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Limit(#[from] ReadLimit),
}

/// A read limit the peer broke while a packet was arriving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadLimit {
    #[error("a packet took longer than packet_read_timeout_ms to arrive")]
    PacketTimeout,
    #[error("no memory budget left for a partly read packet")]
    MemoryLimit,
}

/// The connection's read buffer, with when its partial packet started
/// arriving and the budget it holds for it. Dropping it gives the budget
/// back, so no path (end, rest, abort) can leak a charge.
#[derive(Debug)]
pub struct ReadBuffer {
    bytes: BytesMut,
    /// When the partial packet at the start of `bytes` began arriving;
    /// `None` while `bytes` is empty.
    started: Option<Instant>,
    budget: Arc<Budget>,
    /// Bytes charged to `budget` now.
    charged: u64,
}

impl ReadBuffer {
    /// A buffer holding `bytes` (what followed the CONNECT), not yet charged.
    pub fn new(bytes: BytesMut, budget: &Arc<Budget>) -> ReadBuffer {
        let started = (!bytes.is_empty()).then(Instant::now);
        ReadBuffer {
            bytes,
            started,
            budget: Arc::clone(budget),
            charged: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// When the partial packet it holds must have arrived; `None` when it
    /// holds none.
    pub fn deadline(&self, timeout: Duration) -> Option<Instant> {
        // A timeout too large to add is as good as none.
        self.started
            .and_then(|started| started.checked_add(timeout))
    }

    pub(super) fn bytes_mut(&mut self) -> &mut BytesMut {
        &mut self.bytes
    }

    /// A whole packet was taken from the front: what is left (read with
    /// it) starts the next one now.
    pub(super) fn restart(&mut self) {
        self.started = (!self.bytes.is_empty()).then(Instant::now);
    }

    /// Brings the charge to the buffer's capacity while it holds a partial
    /// packet, and to 0 when it is empty. Every such byte is counted, but
    /// only a buffer beyond the room any busy reader uses anyway
    /// ([`FREE_READ_ROOM`]) is refused: `false` when the budget has no room
    /// for its growth. So a broker near its limit drops and refuses new
    /// messages as the budget says, while a flood of large partial packets
    /// is stopped at the door.
    pub(super) fn account(&mut self) -> bool {
        let wanted = if self.bytes.is_empty() {
            0
        } else {
            self.bytes.capacity() as u64
        };
        if wanted > self.charged {
            let growth = wanted - self.charged;
            if wanted > FREE_READ_ROOM as u64 {
                if !self.budget.try_charge(growth) {
                    return false;
                }
            } else {
                self.budget.charge(growth);
            }
        } else if wanted < self.charged {
            self.budget.release(self.charged - wanted);
        }
        // Equal (most reads: nothing partial before or after): the shared
        // counter is not touched.
        self.charged = wanted;
        true
    }
}

impl Drop for ReadBuffer {
    fn drop(&mut self) {
        self.budget.release(self.charged);
    }
}

/// What the read task is given besides the stream and its buffer.
pub struct ReadConfig {
    pub framer: Framer,
    pub version: ProtocolVersion,
    /// `limits.packet_read_timeout_ms`.
    pub packet_timeout: Duration,
    /// Counts packets by type and `bytes_received`, once per read.
    pub metrics: Arc<Metrics>,
}

/// Reads until the stream ends or fails (reported to the session), the
/// session goes, or `stop` is cancelled, and gives back the read half,
/// whatever partial packet is buffered, and a failure it could not report.
/// `stop` takes effect only between reads, after every whole packet read so
/// far has been handed over, so a connection can rest without losing any.
/// `buf` holds whatever followed the CONNECT, or the partial packet from
/// before a rest (with its deadline, which may have passed meanwhile).
pub async fn run<R: AsyncRead + Unpin>(
    reader: R,
    buf: ReadBuffer,
    config: ReadConfig,
    tx: mpsc::Sender<Inbound>,
    stop: CancellationToken,
) -> (R, ReadBuffer, Option<ReadError>) {
    let mut task = ReadTask {
        reader,
        buf,
        chunk: READ_CHUNK_MIN,
        framer: config.framer,
        version: config.version,
        packet_timeout: config.packet_timeout,
        metrics: config.metrics,
        tally: Tally::default(),
        tx,
    };
    let unsent = match task.read_loop(&stop).await {
        Ok(()) => None,
        Err(error) => {
            // Reported on the channel when there is room or once there is;
            // when the connection is stopping instead, handed back with the
            // half so that a rest cannot swallow it.
            let permit = tokio::select! {
                biased;
                permit = task.tx.reserve() => permit.ok(),
                _ = stop.cancelled() => None,
            };
            match permit {
                Some(permit) => {
                    permit.send(Inbound::Failed(error));
                    None
                }
                None => Some(error),
            }
        }
    };
    (task.reader, task.buf, unsent)
}

struct ReadTask<R> {
    reader: R,
    buf: ReadBuffer,
    /// Room offered to the next read.
    chunk: usize,
    framer: Framer,
    version: ProtocolVersion,
    packet_timeout: Duration,
    metrics: Arc<Metrics>,
    /// Packets by type since the last read was counted.
    tally: Tally,
    tx: mpsc::Sender<Inbound>,
}

impl<R: AsyncRead + Unpin> ReadTask<R> {
    /// `Ok` when the session has gone or `stop` was cancelled; every other
    /// end is an error.
    async fn read_loop(&mut self, stop: &CancellationToken) -> Result<(), ReadError> {
        loop {
            let mut whole = false;
            let (mut packets, mut bytes) = (0, 0);
            while let Some(frame) = self.framer.next_frame(&mut self.buf.bytes)? {
                whole = true;
                packets += 1;
                bytes += frame.bytes.len() as u64;
                let packet = decode_packet(&frame, self.version)?;
                self.tally.add(usize::from(frame.packet_type()), 1);
                if self.tx.send(Inbound::Packet(packet)).await.is_err() {
                    return Ok(());
                }
            }
            if packets > 0 {
                // Once per read, not per packet: the counters are shared
                // by every connection.
                Metrics::add(&self.metrics.bytes_received, bytes);
                self.metrics.census.packets_in.add(&mut self.tally);
            }
            let buf = &mut self.buf;
            if buf.bytes.is_empty() {
                buf.started = None;
                if buf.bytes.capacity() > IDLE_BUFFER_KEEP.max(self.chunk) {
                    buf.bytes = BytesMut::new();
                }
            } else if whole || buf.started.is_none() {
                // What follows the last whole packet began with the last read.
                buf.started = Some(Instant::now());
            }
            // Accounted before a stop too: a rest keeps the buffer, and its
            // charge must match what it holds.
            if !buf.account() {
                return Err(ReadLimit::MemoryLimit.into());
            }
            if stop.is_cancelled() {
                return Ok(());
            }
            if buf.bytes.capacity() - buf.bytes.len() < self.chunk / 4 {
                buf.bytes.reserve(self.chunk);
            }
            if !buf.account() {
                return Err(ReadLimit::MemoryLimit.into());
            }
            let room = buf.bytes.capacity() - buf.bytes.len();
            let deadline = buf.deadline(self.packet_timeout);
            // `read_buf` and the timer are cancel-safe: bytes are never half
            // taken. The deadline wins a tie: a packet must be whole in time.
            let read = tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                _ = sleep_until_option(deadline) => return Err(ReadLimit::PacketTimeout.into()),
                read = self.reader.read_buf(&mut buf.bytes) => read?,
            };
            if read == 0 {
                return Err(ReadError::Closed);
            }
            self.chunk = if read == room {
                (self.chunk * 2).min(READ_CHUNK_MAX)
            } else if read < self.chunk / 4 {
                (self.chunk / 2).max(READ_CHUNK_MIN)
            } else {
                self.chunk
            };
        }
    }
}
