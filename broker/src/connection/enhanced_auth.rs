//! The AUTH exchange of MQTT 5 enhanced authentication on one connection:
//! before CONNACK (in the handshake, on the connection's own task, under
//! `connect_timeout_ms`) and when a connected client re-authenticates (in
//! the session task). The method itself is an [`Authenticator`]; see
//! `crate::auth` for the table of steps.

use bytes::{Bytes, BytesMut};
use tidemq_protocol::{
    decode_packet, encode, Auth, Connect, Framer, Outgoing, Packet, ProtocolVersion, ReasonCode,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::handshake;
use super::reader::ReadBuffer;
use super::Context;
use std::sync::Arc;

use crate::auth::{AuthExchange, AuthStep, Authenticator, MAX_AUTH_ROUNDS};
use crate::types::ClientId;

/// The method a client names: one plugged in by an embedding, or the
/// listener's SCRAM-SHA-256.
pub fn authenticator_for(
    ctx: &Context,
    listener: &crate::listener::Endpoint,
    method: &str,
) -> Option<Arc<dyn Authenticator>> {
    let plugged = ctx.authenticator.as_ref().filter(|a| a.method() == method);
    plugged.cloned().or_else(|| {
        let files = listener.files();
        files
            .security
            .scram
            .as_ref()
            .filter(|a| a.method() == method)
            .cloned()
    })
}

/// How the exchange before CONNACK ended.
pub enum Authenticated {
    /// Go on: the method and the data for the CONNACK.
    Yes { method: String, data: Option<Bytes> },
    /// Answer CONNACK with this reason and close.
    Refused(ReasonCode),
    /// The connection failed or broke the protocol: close.
    Broken,
}

/// Runs the exchange a CONNECT with an Authentication Method asks for.
/// With no authenticator for that method: 0x8C [MQTT-4.12.0-1].
pub async fn before_connack<S>(
    stream: &mut S,
    buf: &mut ReadBuffer,
    connect: &Connect,
    client_id: &ClientId,
    origin: &super::Origin,
    ctx: &Context,
) -> Authenticated
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(method) = connect.properties.authentication_method.clone() else {
        return Authenticated::Yes {
            method: String::new(),
            data: None,
        };
    };
    let Some(authenticator) = authenticator_for(ctx, &origin.listener, &method) else {
        return Authenticated::Refused(ReasonCode::BAD_AUTHENTICATION_METHOD);
    };
    let mut exchange = authenticator.start(client_id.as_str(), connect.username.as_deref());
    let mut data = connect.properties.authentication_data.clone();
    let rounds = async {
        for _ in 0..MAX_AUTH_ROUNDS {
            match exchange.step(data.as_deref()) {
                AuthStep::Success(data) => return Authenticated::Yes { method, data },
                AuthStep::Failure(reason) => return Authenticated::Refused(reason),
                AuthStep::Continue(challenge) => {
                    let auth = continue_auth(&method, challenge);
                    if write(stream, &Outgoing::Auth(auth)).await.is_err() {
                        return Authenticated::Broken;
                    }
                    // [MQTT-4.12.0-2]..: the client answers with AUTH 0x18
                    // naming the same method.
                    match read_auth(stream, buf, ctx).await {
                        Some(auth)
                            if auth.reason == ReasonCode::CONTINUE_AUTHENTICATION
                                && auth.authentication_method.as_deref() == Some(&method) =>
                        {
                            data = auth.authentication_data;
                        }
                        _ => return Authenticated::Broken,
                    }
                }
            }
        }
        Authenticated::Refused(ReasonCode::NOT_AUTHORIZED)
    };
    tokio::time::timeout(ctx.live.get().connect_timeout(), rounds)
        .await
        .unwrap_or(Authenticated::Broken)
}

/// An AUTH 0x18 carrying the method's challenge.
pub fn continue_auth(method: &str, challenge: Bytes) -> Auth {
    Auth {
        reason: ReasonCode::CONTINUE_AUTHENTICATION,
        authentication_method: Some(method.to_owned()),
        authentication_data: Some(challenge),
        ..Auth::default()
    }
}

/// One step of a re-authentication in the session: the AUTH to send back,
/// or the reason to disconnect with.
pub fn reauthenticate_step(
    exchange: &mut dyn AuthExchange,
    method: &str,
    data: Option<&[u8]>,
) -> Result<(Auth, bool), ReasonCode> {
    match exchange.step(data) {
        AuthStep::Continue(challenge) => Ok((continue_auth(method, challenge), false)),
        AuthStep::Success(data) => Ok((
            Auth {
                reason: ReasonCode::SUCCESS,
                authentication_method: Some(method.to_owned()),
                authentication_data: data,
                ..Auth::default()
            },
            true,
        )),
        AuthStep::Failure(reason) => Err(reason),
    }
}

async fn write<S: AsyncWrite + Unpin>(stream: &mut S, packet: &Outgoing) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    encode(packet, ProtocolVersion::V5, &mut out);
    stream.write_all(&out).await
}

/// The client's next packet, which must be an AUTH.
async fn read_auth<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut ReadBuffer,
    ctx: &Context,
) -> Option<Auth> {
    let settings = ctx.live.get();
    let limits = &settings.limits;
    let framer = Framer::new(limits.max_connect_packet_size.min(limits.max_packet_size));
    let frame = handshake::read_frame(stream, buf, framer).await.ok()?;
    match decode_packet(&frame, ProtocolVersion::V5).ok()? {
        Packet::Auth(auth) => Some(auth),
        _ => None,
    }
}
