//! The read task: socket -> framer -> decoded packets -> the session.
//!
//! It owns the connection's read buffer and never writes to the socket. It
//! ends at EOF, on a read error, on a packet that breaks the protocol (which
//! it reports to the session), or when the connection is cancelled. Between
//! bursts it gives a large buffer back, so an idle connection holds little.

use std::io;

use bytes::BytesMut;
use tidemq_protocol::{decode_packet, Framer, Packet, ProtocolError, ProtocolVersion};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Smallest and largest room offered to one read. The room adapts: it
/// doubles when a read fills it and halves when a read uses under a quarter,
/// so a busy publisher reads 64 KiB per syscall and an idle connection holds
/// a few hundred bytes.
const READ_CHUNK_MIN: usize = 256;
const READ_CHUNK_MAX: usize = 64 * 1024;
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
}

/// Reads until the stream ends or fails (reported to the session), the
/// session goes, or `stop` is cancelled, and gives back the read half,
/// whatever partial packet is buffered, and a failure it could not report. `stop` takes effect only between
/// reads, after every whole packet read so far has been handed over, so a
/// connection can rest without losing any. `buf` holds whatever followed
/// the CONNECT, or the partial packet from before a rest.
pub async fn run<R: AsyncRead + Unpin>(
    reader: R,
    buf: BytesMut,
    framer: Framer,
    version: ProtocolVersion,
    tx: mpsc::Sender<Inbound>,
    stop: CancellationToken,
) -> (R, BytesMut, Option<ReadError>) {
    let mut task = ReadTask {
        reader,
        buf,
        chunk: READ_CHUNK_MIN,
        framer,
        version,
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
    buf: BytesMut,
    /// Room offered to the next read.
    chunk: usize,
    framer: Framer,
    version: ProtocolVersion,
    tx: mpsc::Sender<Inbound>,
}

impl<R: AsyncRead + Unpin> ReadTask<R> {
    /// `Ok` when the session has gone or `stop` was cancelled; every other
    /// end is an error.
    async fn read_loop(&mut self, stop: &CancellationToken) -> Result<(), ReadError> {
        loop {
            while let Some(frame) = self.framer.next_frame(&mut self.buf)? {
                let packet = decode_packet(&frame, self.version)?;
                if self.tx.send(Inbound::Packet(packet)).await.is_err() {
                    return Ok(());
                }
            }
            if self.buf.is_empty() && self.buf.capacity() > IDLE_BUFFER_KEEP.max(self.chunk) {
                self.buf = BytesMut::new();
            }
            if stop.is_cancelled() {
                return Ok(());
            }
            if self.buf.capacity() - self.buf.len() < self.chunk / 4 {
                self.buf.reserve(self.chunk);
            }
            let room = self.buf.capacity() - self.buf.len();
            // `read_buf` is cancel-safe: bytes are never half taken.
            let read = tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                read = self.reader.read_buf(&mut self.buf) => read?,
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
