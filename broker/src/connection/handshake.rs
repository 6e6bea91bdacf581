//! The start of a connection: the CONNECT within the connect timeout, its
//! checks, and the CONNACK. Runs before the stream is split, on the
//! connection's own task.
//!
//! The checks, in order, and their answers:
//!
//! | CONNECT                                  | answer            | counter                 |
//! |------------------------------------------|-------------------|-------------------------|
//! | will topic over `max_topic_levels`/`_len`| close, no CONNACK | `topics_refused_limit`  |
//! | keepalive over `max_keepalive_secs`      | 3.1.1: CONNACK 0x02; 5: capped, Server Keep Alive | `connacks_refused` |
//! | client id breaking the spec's rules      | CONNACK 0x02 / 0x85 | `connacks_refused`    |
//! | client id over `max_client_id_len` bytes | CONNACK 0x02 / 0x85 | `client_ids_refused`  |
//! | MQTT 5 Authentication Method not configured | CONNACK 0x8C    | `connacks_refused`      |
//! | MQTT 5 AUTH exchange refused             | CONNACK with the method's reason | `connacks_refused` |
//! | broker over `memory_limit_mb`            | CONNACK 0x03 / 0x89 | `memory_limit_refusals` |
//!
//! An MQTT 5 CONNECT gets the MQTT 5 reason code (second column after the
//! slash) and a CONNACK announcing what the broker supports.
//!
//! While the CONNECT is partly read its buffer is charged to the memory
//! budget; no room for it closes the socket (`memory_limit_refusals`).
//!
//! Refusals a client can repeat at will log through `ctx.throttles`.

use std::sync::Arc;

use bytes::BytesMut;
use tidemq_protocol::{
    decode_connect, encode, ConnAck, ConnAckProperties, Connect, Frame, Framer, Outgoing,
    ProtocolError, ProtocolVersion, ReasonCode,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info, warn};

use super::enhanced_auth::{self, Authenticated};
use super::reader::ReadBuffer;
use super::{Context, Origin};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::security::acl::Access;
use crate::types::{ClientId, ConnId};

/// MQTT 3.1 limits client ids to 23 characters.
const MQTT31_MAX_CLIENT_ID: usize = 23;

/// A CONNECT that passed every check.
pub struct Accepted {
    pub connect: Connect,
    pub client_id: ClientId,
    /// The broker chose the client id (the client sent an empty one).
    pub assigned: bool,
    /// The keepalive granted: the client's, or for MQTT 5 the maximum when
    /// it asked for more (announced as Server Keep Alive).
    pub keep_alive: u16,
    /// MQTT 5 enhanced authentication: the method the client passed, and
    /// the data for the CONNACK.
    pub auth_method: Option<String>,
    pub auth_data: Option<bytes::Bytes>,
    /// Bytes read after the CONNECT; the read task starts from them.
    pub leftover: ReadBuffer,
    /// Who the client authenticated as (see [`login`]).
    pub user: Option<Arc<str>>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum HandshakeError {
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
    origin: &Origin,
    ctx: &Context,
) -> Option<Accepted>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let conn_id = conn_id.0;
    let peer = origin.peer;
    let limits = &origin.settings.limits;
    let framer = Framer::new(limits.max_connect_packet_size.min(limits.max_packet_size));
    // A partly read CONNECT is charged to the memory budget like any
    // partial packet.
    let mut buf = ReadBuffer::new(BytesMut::with_capacity(256), &ctx.budget);
    let reading = read_connect(stream, &mut buf, framer, &ctx.metrics);
    let read = tokio::time::timeout_at(origin.deadline, reading);
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
            let code = ReasonCode::UNSUPPORTED_PROTOCOL_VERSION;
            refuse(stream, ctx, ProtocolVersion::V311, code).await;
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
        if !ctx.topic_caps.fits(topic) {
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
    let version = connect.version;
    let keep_alive = match check_keepalive(&connect, limits.max_keepalive_secs) {
        Ok(keep_alive) => keep_alive,
        Err(code) => {
            let keep_alive = connect.keep_alive;
            info!(conn_id, %peer, keep_alive, "refusing keepalive above the maximum");
            refuse(stream, ctx, version, code).await;
            return None;
        }
    };
    let (client_id, assigned) = match client_id(&connect, ConnId(conn_id)) {
        Ok(id) => id,
        Err(code) => {
            let client_id = connect.client_id;
            info!(conn_id, %peer, client_id, "refusing client identifier");
            refuse(stream, ctx, version, code).await;
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
        refuse(
            stream,
            ctx,
            version,
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
        )
        .await;
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
        refuse(stream, ctx, version, ReasonCode::SERVER_BUSY).await;
        return None;
    }
    let login = tokio::time::timeout_at(origin.deadline, login(&connect, origin, ctx));
    let user = match login.await {
        Ok(Ok(user)) => user,
        Err(_) => {
            // Waiting behind this address's failed logins, or for a
            // hashing slot, past the connect deadline.
            if let Some(suppressed) = ctx
                .throttles
                .connect_timeout
                .count(&ctx.metrics.connect_timeouts)
            {
                info!(conn_id, %peer, suppressed, "closing: login not done within the connect timeout");
            }
            return None;
        }
        Ok(Err(reason)) => {
            let username = connect.username.as_deref().unwrap_or("");
            if let Some(suppressed) = ctx.throttles.login.count(&ctx.metrics.logins_refused) {
                info!(conn_id, %peer, username, %reason, suppressed, "refusing: login");
            }
            refuse(stream, ctx, version, reason).await;
            return None;
        }
    };
    if let Err(reason) = check_will(&connect, user.as_deref(), &client_id, origin) {
        Metrics::incr(&ctx.metrics.acl_denied_publish);
        info!(conn_id, %peer, "refusing: the ACL denies the will topic");
        refuse(stream, ctx, version, reason).await;
        return None;
    }
    let authenticated =
        enhanced_auth::before_connack(stream, &mut buf, &connect, &client_id, origin, ctx).await;
    let (auth_method, auth_data) = match authenticated {
        Authenticated::Yes { method, data } if method.is_empty() => (None, data),
        Authenticated::Yes { method, data } => {
            // A passed exchange clears the address's failures, as a
            // matching password does.
            ctx.logins.succeeded(peer.ip(), connect.username.as_deref());
            (Some(method), data)
        }
        Authenticated::Refused(reason) => {
            let method = connect.properties.authentication_method.unwrap_or_default();
            Metrics::incr(&ctx.metrics.logins_refused);
            ctx.logins.failed(peer.ip(), connect.username.as_deref());
            info!(conn_id, %peer, %method, %reason, "refusing: enhanced authentication");
            refuse(stream, ctx, version, reason).await;
            return None;
        }
        Authenticated::Broken => {
            Metrics::incr(&ctx.metrics.protocol_errors);
            info!(conn_id, %peer, "closing: AUTH exchange broken off or out of protocol");
            return None;
        }
    };
    Some(Accepted {
        connect,
        client_id,
        assigned,
        keep_alive,
        auth_method,
        auth_data,
        leftover: buf,
        user,
    })
}

/// Who the client is, by the listener's rules (see `crate::security` for
/// the table); the refusal's reason otherwise. A CONNECT with an
/// Authentication Method is left to the AUTH exchange. After failures from
/// the same address the answer waits (`auth.failed_login_delay_ms`).
async fn login(
    connect: &Connect,
    origin: &Origin,
    ctx: &Context,
) -> Result<Option<Arc<str>>, ReasonCode> {
    let files = origin.listener.files();
    let security = &files.security;
    let not_authorized = ReasonCode::NOT_AUTHORIZED;
    // 3.1.1 has no "bad user name or password" that mosquitto sends; both
    // get 0x05 there, as from mosquitto.
    let bad_password = match connect.version.is_v5() {
        true => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        false => ReasonCode::NOT_AUTHORIZED,
    };
    if security.use_identity {
        // mosquitto's use_identity_as_username: the password is ignored.
        let identity = origin.identity.as_deref().ok_or(not_authorized)?;
        return Ok(Some(Arc::from(identity)));
    }
    let Some(username) = connect.username.as_deref() else {
        return match security.allow_anonymous {
            true => Ok(None),
            false => Err(not_authorized),
        };
    };
    let addr = origin.peer.ip();
    if connect.properties.authentication_method.is_some() {
        // The exchange decides; its answers wait after failures as a
        // password's do, or SCRAM would be the way around the delay.
        wait_after_failures(ctx, addr).await;
        return Ok(Some(Arc::from(username)));
    }
    let Some(passwords) = &security.passwords else {
        return Ok(Some(Arc::from(username)));
    };
    wait_after_failures(ctx, addr).await;
    let password = connect.password.as_deref().unwrap_or_default();
    if ctx.logins.verify(passwords, username, password).await {
        ctx.logins.succeeded(addr, Some(username));
        Ok(Some(Arc::from(username)))
    } else {
        ctx.logins.failed(addr, Some(username));
        Err(bad_password)
    }
}

/// Waits `auth.failed_login_delay_ms` (doubled per failure) when `addr`
/// has failed logins recently (`logins_delayed`).
async fn wait_after_failures(ctx: &Context, addr: std::net::IpAddr) {
    if let Some(delay) = ctx.logins.reserve(addr) {
        Metrics::incr(&ctx.metrics.logins_delayed);
        tokio::time::sleep(delay).await;
    }
}

/// A will must be a topic the client may publish to: mosquitto refuses
/// the CONNECT otherwise, and so do we (0x05 / 0x87).
fn check_will(
    connect: &Connect,
    user: Option<&str>,
    client_id: &ClientId,
    origin: &Origin,
) -> Result<(), ReasonCode> {
    let files = origin.listener.files();
    let (Some(will), Some(acl)) = (&connect.will, &files.security.acl) else {
        return Ok(());
    };
    match acl.allows(user, client_id.as_str(), will.topic.as_str(), Access::Write) {
        true => Ok(()),
        false => Err(ReasonCode::NOT_AUTHORIZED),
    }
}

/// Reads the CONNECT; counted (`connects_received`, and as any packet)
/// once whole, valid or not.
async fn read_connect<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut ReadBuffer,
    framer: Framer,
    metrics: &Metrics,
) -> Result<Connect, HandshakeError> {
    let frame = read_frame(stream, buf, framer).await?;
    Metrics::incr(&metrics.connects_received);
    metrics.census.packets_in.one(&frame.bytes);
    Metrics::add(&metrics.bytes_received, frame.bytes.len() as u64);
    Ok(decode_connect(&frame)?)
}

/// The next whole packet before CONNACK (the CONNECT, an AUTH), its
/// partial bytes charged to the memory budget.
pub(super) async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut ReadBuffer,
    framer: Framer,
) -> Result<Frame, HandshakeError> {
    loop {
        if let Some(frame) = framer.next_frame(buf.bytes_mut())? {
            buf.restart();
            return Ok(frame);
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
/// maximum is refused, as mosquitto does; an MQTT 5 client is given the
/// maximum (Server Keep Alive [MQTT-3.1.2-21]). 0 (no keepalive) is always
/// accepted.
fn check_keepalive(connect: &Connect, max: u16) -> Result<u16, ReasonCode> {
    match connect.keep_alive {
        asked if asked <= max => Ok(asked),
        _ if connect.version.is_v5() => Ok(max),
        _ => Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID),
    }
}

/// The client id rules: a zero-length id is assigned one when the session is
/// clean [MQTT-3.1.3-6] and refused with 0x02 otherwise [MQTT-3.1.3-8];
/// MQTT 5 assigns one whatever Clean Start says [MQTT-3.1.3-6] (v5) and
/// returns it in CONNACK; MQTT 3.1 requires 1 to 23 characters. An id
/// starting with `$embedded-` is refused: it names sessions the embedding
/// application opens ([`crate::embed::RESERVED_PREFIX`]). The flag says
/// whether the broker assigned it.
fn client_id(connect: &Connect, conn_id: ConnId) -> Result<(ClientId, bool), ReasonCode> {
    let id = connect.client_id.as_str();
    let refused = ReasonCode::CLIENT_IDENTIFIER_NOT_VALID;
    match connect.version {
        ProtocolVersion::V31 if id.is_empty() || id.chars().count() > MQTT31_MAX_CLIENT_ID => {
            Err(refused)
        }
        ProtocolVersion::V311 if id.is_empty() && !connect.clean_session => Err(refused),
        ProtocolVersion::V311 | ProtocolVersion::V5 if id.is_empty() => {
            Ok((assigned_client_id(conn_id), true))
        }
        _ if id.starts_with(crate::embed::RESERVED_PREFIX) => Err(refused),
        _ => Ok((ClientId::new(id), false)),
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

/// What an MQTT 5 CONNACK announces: the broker's limits and features, and
/// what it changed of the client's request.
pub fn connack_properties(
    settings: &Settings,
    accepted: &Accepted,
    session_expiry: Option<u32>,
) -> ConnAckProperties {
    let limits = &settings.limits;
    let connect = &accepted.connect;
    let max_packet_size = u32::try_from(limits.max_packet_size).unwrap_or(u32::MAX);
    ConnAckProperties {
        receive_maximum: Some(limits.receive_maximum),
        maximum_packet_size: Some(max_packet_size),
        topic_alias_maximum: Some(limits.topic_alias_maximum),
        retain_available: Some(1),
        wildcard_subscription_available: Some(1),
        subscription_identifiers_available: Some(1),
        shared_subscription_available: Some(1),
        session_expiry_interval: session_expiry,
        server_keep_alive: (accepted.keep_alive != connect.keep_alive)
            .then_some(accepted.keep_alive),
        assigned_client_identifier: accepted
            .assigned
            .then(|| accepted.client_id.as_str().to_owned()),
        response_information: (connect.properties.request_response_information == Some(1))
            .then(|| format!("response/{}", accepted.client_id)),
        authentication_method: accepted.auth_method.clone(),
        authentication_data: accepted.auth_data.clone(),
        ..ConnAckProperties::default()
    }
}

pub async fn refuse<S: AsyncWrite + Unpin>(
    stream: &mut S,
    ctx: &Context,
    version: ProtocolVersion,
    reason: ReasonCode,
) {
    Metrics::incr(&ctx.metrics.connacks_refused);
    ctx.metrics.census.connacks_refused.count(reason);
    // [MQTT-3.2.2-4]: session present is 0 on a refusal.
    let mut connack = ConnAck::new(false, reason);
    // A full broker sends MQTT 5 clients elsewhere when told where.
    let settings = ctx.live.get();
    if let (true, ReasonCode::SERVER_BUSY, Some((reference, moved))) =
        (version.is_v5(), reason, settings.connections.redirect())
    {
        connack.reason = moved;
        connack.properties.server_reference = Some(reference.to_owned());
    }
    let _ = send_connack(stream, ctx, version, connack).await;
    let _ = tokio::time::timeout(settings.write_timeout(), stream.shutdown()).await;
}

pub async fn send_connack<S: AsyncWrite + Unpin>(
    stream: &mut S,
    ctx: &Context,
    version: ProtocolVersion,
    connack: ConnAck,
) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(64);
    encode(&Outgoing::ConnAck(connack), version, &mut buf);
    ctx.metrics.sent_packet(&buf);
    Metrics::add(&ctx.metrics.bytes_sent, buf.len() as u64);
    let write = async {
        stream.write_all(&buf).await?;
        // A TLS or WebSocket stream sends its record or frame.
        stream.flush().await
    };
    match tokio::time::timeout(ctx.live.get().write_timeout(), write).await {
        Ok(result) => result,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}
