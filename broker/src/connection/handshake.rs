//! The start of a connection: the CONNECT within the connect timeout, its
//! checks, and the CONNACK. Runs before the stream is split, on the
//! connection's own task.
//!
//! The checks, in order, and their answers:
//!
//! | CONNECT                                  | answer            | counter                 |
//! |------------------------------------------|-------------------|-------------------------|
//! | will topic over `max_topic_levels`/`_len`| close, no CONNACK | `topics_refused_limit`  |
//! | keepalive over `max_keepalive_secs`      | CONNACK 0x02      | `connacks_refused`      |
//! | client id breaking the spec's rules      | CONNACK 0x02      | `connacks_refused`      |
//! | client id over `max_client_id_len` bytes | CONNACK 0x02      | `client_ids_refused`    |
//! | broker over `memory_limit_mb`            | CONNACK 0x03      | `memory_limit_refusals` |
//!
//! While the CONNECT is partly read its buffer is charged to the memory
//! budget; no room for it closes the socket (`memory_limit_refusals`).
//!
//! Refusals a client can repeat at will log through `ctx.throttles`.

use std::net::SocketAddr;

use bytes::BytesMut;
use tidemq_protocol::{
    decode_connect, encode, Connect, ConnectReturnCode, Framer, Outgoing, ProtocolError,
    ProtocolVersion,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info, warn};

use super::reader::ReadBuffer;
use super::Context;
use crate::metrics::Metrics;
use crate::types::{ClientId, ConnId};

/// MQTT 3.1 limits client ids to 23 characters.
const MQTT31_MAX_CLIENT_ID: usize = 23;

/// A CONNECT that passed every check.
pub struct Accepted {
    pub connect: Connect,
    pub client_id: ClientId,
    /// Bytes read after the CONNECT; the read task starts from them.
    pub leftover: ReadBuffer,
}

#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("peer closed before CONNECT")]
    Closed,
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("no memory budget left for a partly read CONNECT")]
    MemoryLimit,
}

/// Reads and checks the CONNECT; answers a refusal itself. `None` means the
/// connection is over.
///
/// Its log lines name the connection and peer themselves: the connection's
/// span is debug-level (see `connection::handshake_span`).
pub async fn accept<S>(
    stream: &mut S,
    conn_id: ConnId,
    peer: SocketAddr,
    ctx: &Context,
) -> Option<Accepted>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let conn_id = conn_id.0;
    let limits = &ctx.settings.limits;
    let framer = Framer::new(limits.max_connect_packet_size.min(limits.max_packet_size));
    // A partly read CONNECT is charged to the memory budget like any
    // partial packet.
    let mut buf = ReadBuffer::new(BytesMut::with_capacity(256), &ctx.budget);
    let read = tokio::time::timeout(
        ctx.settings.connect_timeout(),
        read_connect(stream, &mut buf, framer),
    );
    let connect = match read.await {
        Err(_) => {
            if let Some(suppressed) = ctx
                .throttles
                .connect_timeout
                .count(&ctx.metrics.connect_timeouts)
            {
                info!(conn_id, %peer, suppressed, "closing: no CONNECT within the connect timeout");
            }
            return None;
        }
        Ok(Ok(connect)) => connect,
        Ok(Err(HandshakeError::Protocol(ProtocolError::UnsupportedProtocolLevel(level)))) => {
            // [MQTT-3.1.2-2]: answer 0x01 and close.
            info!(conn_id, %peer, level, "refusing unsupported protocol level");
            refuse(stream, ctx, ConnectReturnCode::UnacceptableProtocolVersion).await;
            return None;
        }
        Ok(Err(HandshakeError::Protocol(error))) => {
            let counter = match error {
                ProtocolError::PacketTooLarge { .. } => &ctx.metrics.packets_too_large,
                _ => &ctx.metrics.protocol_errors,
            };
            Metrics::incr(counter);
            warn!(conn_id, %peer, %error, "closing: bad CONNECT");
            return None;
        }
        Ok(Err(HandshakeError::MemoryLimit)) => {
            if let Some(suppressed) = ctx
                .throttles
                .memory
                .count(&ctx.metrics.memory_limit_refusals)
            {
                warn!(
                    conn_id,
                    %peer,
                    suppressed,
                    "closing: over memory_limit_mb, no room for a CONNECT"
                );
            }
            return None;
        }
        Ok(Err(error)) => {
            debug!(%error, "connection ended before CONNECT");
            return None;
        }
    };
    if let Some(will) = &connect.will {
        let topic = will.topic.as_str();
        if !ctx.router_limits.topic_fits(topic) {
            if let Some(suppressed) = ctx.throttles.topic.count(&ctx.metrics.topics_refused_limit) {
                let len = topic.len();
                warn!(
                    conn_id,
                    %peer,
                    len,
                    suppressed,
                    "closing: will topic over max_topic_levels or max_topic_len"
                );
            }
            return None;
        }
    }
    if let Err(code) = check_keepalive(&connect, ctx) {
        let keep_alive = connect.keep_alive;
        info!(conn_id, %peer, keep_alive, "refusing keepalive above the maximum");
        refuse(stream, ctx, code).await;
        return None;
    }
    let client_id = match client_id(&connect, ConnId(conn_id)) {
        Ok(id) => id,
        Err(code) => {
            let client_id = connect.client_id;
            info!(conn_id, %peer, client_id, "refusing client identifier");
            refuse(stream, ctx, code).await;
            return None;
        }
    };
    if connect.client_id.len() > limits.max_client_id_len {
        if let Some(suppressed) = ctx
            .throttles
            .client_id
            .count(&ctx.metrics.client_ids_refused)
        {
            let len = connect.client_id.len();
            info!(
                conn_id,
                %peer,
                len,
                suppressed,
                "refusing client identifier over max_client_id_len"
            );
        }
        refuse(stream, ctx, ConnectReturnCode::IdentifierRejected).await;
        return None;
    }
    if ctx.budget.is_over() {
        if let Some(suppressed) = ctx
            .throttles
            .memory
            .count(&ctx.metrics.memory_limit_refusals)
        {
            warn!(conn_id, %peer, suppressed, "refusing a connection: over memory_limit_mb");
        }
        refuse(stream, ctx, ConnectReturnCode::ServerUnavailable).await;
        return None;
    }
    Some(Accepted {
        connect,
        client_id,
        leftover: buf,
    })
}

async fn read_connect<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut ReadBuffer,
    framer: Framer,
) -> Result<Connect, HandshakeError> {
    loop {
        if let Some(frame) = framer.next_frame(buf.bytes_mut())? {
            buf.restart();
            return Ok(decode_connect(&frame)?);
        }
        if !buf.account() {
            return Err(HandshakeError::MemoryLimit);
        }
        if stream.read_buf(buf.bytes_mut()).await? == 0 {
            return Err(HandshakeError::Closed);
        }
    }
}

/// A 3.1/3.1.1 client cannot be told a smaller keepalive, so one above the
/// maximum is refused, as mosquitto does. 0 (no keepalive) is always accepted.
fn check_keepalive(connect: &Connect, ctx: &Context) -> Result<(), ConnectReturnCode> {
    if connect.keep_alive > ctx.settings.limits.max_keepalive_secs {
        return Err(ConnectReturnCode::IdentifierRejected);
    }
    Ok(())
}

/// The client id rules: a zero-length id is assigned one when the session is
/// clean [MQTT-3.1.3-6] and refused with 0x02 otherwise [MQTT-3.1.3-8];
/// MQTT 3.1 requires 1 to 23 characters.
fn client_id(connect: &Connect, conn_id: ConnId) -> Result<ClientId, ConnectReturnCode> {
    let id = connect.client_id.as_str();
    match connect.version {
        ProtocolVersion::V31 if id.is_empty() || id.chars().count() > MQTT31_MAX_CLIENT_ID => {
            Err(ConnectReturnCode::IdentifierRejected)
        }
        ProtocolVersion::V311 if id.is_empty() && !connect.clean_session => {
            Err(ConnectReturnCode::IdentifierRejected)
        }
        ProtocolVersion::V311 if id.is_empty() => Ok(assigned_client_id(conn_id)),
        _ => Ok(ClientId::new(id)),
    }
}

/// An id for a client that sent none: unique (the connection number) and
/// not guessable (a randomly keyed hash), so no other client can name it
/// and take its session over.
fn assigned_client_id(conn_id: ConnId) -> ClientId {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(conn_id.0);
    ClientId::new(&format!("tidemq-{:016x}-{conn_id}", hasher.finish()))
}

pub async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, ctx: &Context, code: ConnectReturnCode) {
    Metrics::incr(&ctx.metrics.connacks_refused);
    // [MQTT-3.2.2-4]: session present is 0 on a refusal.
    let _ = send_connack(stream, ctx, false, code).await;
    let _ = tokio::time::timeout(ctx.settings.write_timeout(), stream.shutdown()).await;
}

pub async fn send_connack<S: AsyncWrite + Unpin>(
    stream: &mut S,
    ctx: &Context,
    session_present: bool,
    code: ConnectReturnCode,
) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(4);
    encode(
        &Outgoing::ConnAck {
            session_present,
            code,
        },
        &mut buf,
    );
    match tokio::time::timeout(ctx.settings.write_timeout(), stream.write_all(&buf)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}
