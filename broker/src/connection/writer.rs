//! The write task: outgoing packets -> one buffer -> one write per batch.
//!
//! It gathers every packet already queued (up to `write_batch_bytes`) before
//! each write, so a burst costs one syscall. It sends to nobody. A write that
//! makes no progress for `write_timeout` ends the connection as abnormal: a
//! peer that vanished without a FIN is otherwise only found when a write
//! fails. When the session drops its sender, the task flushes what is queued
//! and shuts the socket down; when the connection is cancelled it stops at
//! once.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tidemq_protocol::{encode, Outgoing};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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
}

pub async fn run<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut rx: mpsc::Receiver<Outgoing>,
    config: WriterConfig,
    token: CancellationToken,
) -> WriterEnd {
    let mut buf = BytesMut::new();
    loop {
        let first = tokio::select! {
            biased;
            _ = token.cancelled() => return WriterEnd::Cancelled,
            packet = rx.recv() => packet,
        };
        let Some(first) = first else { break };
        encode(&first, &mut buf);
        while buf.len() < config.batch_bytes {
            match rx.try_recv() {
                Ok(packet) => encode(&packet, &mut buf),
                Err(_) => break,
            }
        }
        // write_all is not cancel-safe, but a cancelled connection abandons
        // the socket anyway.
        let written = tokio::select! {
            _ = token.cancelled() => return WriterEnd::Cancelled,
            written = tokio::time::timeout(config.write_timeout, writer.write_all(&buf)) => written,
        };
        match written {
            Ok(Ok(())) => buf.clear(),
            Ok(Err(error)) => return WriterEnd::Failed(error),
            Err(_) => return WriterEnd::Stalled,
        }
        if buf.capacity() > config.batch_bytes * 2 {
            // A burst grew the buffer; do not hold it while idle.
            buf = BytesMut::new();
        }
    }
    let closed = tokio::select! {
        _ = token.cancelled() => return WriterEnd::Cancelled,
        closed = tokio::time::timeout(config.write_timeout, writer.shutdown()) => closed,
    };
    match closed {
        Ok(Ok(())) => WriterEnd::Drained,
        Ok(Err(error)) => WriterEnd::Failed(error),
        Err(_) => WriterEnd::Stalled,
    }
}
