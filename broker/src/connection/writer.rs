//! The write task: encoded chunks -> the socket, one write per batch.
//!
//! The session encodes its packets into chunks (one per wake-up, up to
//! `write_batch_bytes`); this task writes a lone chunk as it is and gathers
//! several queued chunks into one buffer first, so a burst costs one syscall. It sends to nobody. A write that
//! makes no progress for `write_timeout` ends the connection as abnormal: a
//! peer that vanished without a FIN is otherwise only found when a write
//! fails. When the session drops its sender, the task flushes what is queued
//! and gives its half of the stream back; when the connection is cancelled
//! it stops at once.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Why the write task ended.
#[derive(Debug)]
pub enum WriterEnd {
    /// The session closed the queue and everything was written.
    Drained,
    /// The connection was cancelled.
    Cancelled,
    /// A write failed.
    Failed(io::Error),
    /// A write made no progress for the write timeout.
    Stalled,
}

pub struct WriterConfig {
    pub batch_bytes: usize,
    pub write_timeout: Duration,
    /// Set while a batch is being written: a connection rests only when
    /// its writer is idle, so stopping the writer for a rest never waits on
    /// a slow reader.
    pub writing: Arc<AtomicBool>,
    /// Counts `bytes_sent`, once per batch.
    pub metrics: Arc<Metrics>,
}

/// Writes the whole buffer. The timeout applies to each write call, so a
/// slow reader that keeps taking bytes is served; one that takes none for
/// `timeout` is not.
async fn write_batch<W: AsyncWrite + Unpin>(
    writer: &mut W,
    buf: &mut impl Buf,
    timeout: Duration,
    token: &CancellationToken,
) -> Result<(), WriterEnd> {
    while buf.has_remaining() {
        let written = tokio::select! {
            _ = token.cancelled() => return Err(WriterEnd::Cancelled),
            written = tokio::time::timeout(timeout, writer.write(buf.chunk())) => written,
        };
        match written {
            Ok(Ok(0)) => return Err(WriterEnd::Failed(io::ErrorKind::WriteZero.into())),
            Ok(Ok(n)) => buf.advance(n),
            Ok(Err(error)) => return Err(WriterEnd::Failed(error)),
            Err(_) => return Err(WriterEnd::Stalled),
        }
    }
    // A no-op on TCP; a TLS stream underneath sends its buffered record.
    let flushed = tokio::select! {
        _ = token.cancelled() => return Err(WriterEnd::Cancelled),
        flushed = tokio::time::timeout(timeout, writer.flush()) => flushed,
    };
    match flushed {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(WriterEnd::Failed(error)),
        Err(_) => Err(WriterEnd::Stalled),
    }
}

/// Writes until the session closes the queue (`Drained`, everything
/// written), a write fails or stalls, or `token` is cancelled; gives the
/// write half back. Shutting the socket down is the caller's decision: a
/// connection that rests keeps it open.
pub async fn run<W: AsyncWrite + Unpin>(
    mut writer: W,
    rx: mpsc::Receiver<Bytes>,
    config: WriterConfig,
    token: CancellationToken,
) -> (W, WriterEnd) {
    let end = write_queue(&mut writer, rx, &config, &token).await;
    (writer, end)
}

async fn write_queue<W: AsyncWrite + Unpin>(
    writer: &mut W,
    mut rx: mpsc::Receiver<Bytes>,
    config: &WriterConfig,
    token: &CancellationToken,
) -> WriterEnd {
    let mut buf = BytesMut::new();
    loop {
        let first = tokio::select! {
            biased;
            _ = token.cancelled() => return WriterEnd::Cancelled,
            packet = rx.recv() => packet,
        };
        let Some(mut first) = first else {
            return WriterEnd::Drained;
        };
        config.writing.store(true, Ordering::Release);
        let mut bytes = first.len();
        let written = match rx.try_recv() {
            Err(_) => write_batch(writer, &mut first, config.write_timeout, token).await,
            Ok(second) => {
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&second);
                while buf.len() < config.batch_bytes {
                    match rx.try_recv() {
                        Ok(chunk) => buf.extend_from_slice(&chunk),
                        Err(_) => break,
                    }
                }
                bytes = buf.len();
                write_batch(writer, &mut buf, config.write_timeout, token).await
            }
        };
        if let Err(end) = written {
            return end;
        }
        Metrics::add(&config.metrics.bytes_sent, bytes as u64);
        config.writing.store(false, Ordering::Release);
        buf.clear();
        if buf.capacity() > config.batch_bytes * 2 {
            // A burst grew the buffer; do not hold it while idle.
            buf = BytesMut::new();
        }
    }
}
