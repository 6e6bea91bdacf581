//! One client connection, from the first byte to the last.
//!
//! [`serve`] reads the CONNECT (within `connect_timeout_ms`), checks it,
//! takes ownership of the client's session, answers CONNACK, then splits the
//! stream and runs three tasks joined by bounded channels:
//!
//! ```text
//!  socket --read task--> inbound (limits.inbound_queue) --> session task
//!  session task --> outgoing (limits.outbound_queue) --write task--> socket
//!  router --> mailbox (limits.max_queued_messages) --> session task
//! ```
//!
//! The three share one cancellation token: when any of them ends, the others
//! are stopped, and the session decides what survives (will, parked state).
//! Works over any `AsyncRead + AsyncWrite` stream, so TLS or WebSocket can be
//! put underneath without touching the session.

mod handshake;
mod reader;
mod session;
mod writer;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tidemq_protocol::{Framer, ProtocolError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::registry::{Opened, Registry};
use crate::router::RouterHandle;
use crate::session::SessionState;
use crate::types::{ConnId, Message};

use session::{End, Session};
use writer::{WriterConfig, WriterEnd};

/// What every connection shares: settings, the router, the registry, the
/// counters and the broker's shutdown signal.
#[derive(Debug)]
pub struct Context {
    pub settings: Settings,
    pub router: RouterHandle,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    next_conn_id: AtomicU64,
}

impl Context {
    pub fn new(
        settings: Settings,
        router: RouterHandle,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Context {
        let registry = Registry::new(settings.limits.max_queued_messages);
        Context {
            settings,
            router,
            registry,
            metrics,
            shutdown,
            next_conn_id: AtomicU64::new(1),
        }
    }

    fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn_id.fetch_add(1, Ordering::Relaxed))
    }
}

/// Serves one connection until it ends. Never panics on input; every end is
/// logged once and counted.
pub async fn serve<S>(stream: S, peer: SocketAddr, ctx: Arc<Context>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn_id = ctx.next_conn_id();
    let span =
        tracing::info_span!("conn", conn_id = conn_id.0, %peer, client_id = tracing::field::Empty);
    run(stream, conn_id, ctx).instrument(span).await;
}

async fn run<S>(mut stream: S, conn_id: ConnId, ctx: Arc<Context>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(accepted) = handshake::accept(&mut stream, conn_id, &ctx).await else {
        return;
    };
    tracing::Span::current().record("client_id", accepted.client_id.as_str());
    let token = ctx.shutdown.child_token();
    let Opened::Owned {
        ownership,
        took_over,
    } = ctx
        .registry
        .open(&accepted.client_id, conn_id, token.clone())
        .await
    else {
        debug!("a newer connection claimed this client id first");
        return;
    };
    let slot = Arc::clone(&ownership.slot);
    let clean = accepted.connect.clean_session;
    let session_present = !clean && slot.is_persistent();
    let state = if clean {
        slot.mailbox.clear();
        slot.take_parked();
        Session::drop_subscriptions(&ctx, &slot).await;
        SessionState::new(ctx.settings.limits.max_inflight)
    } else {
        slot.take_parked()
            .unwrap_or_else(|| SessionState::new(ctx.settings.limits.max_inflight))
    };
    slot.set_persistent(!clean);
    slot.set_online(true);
    slot.reset_overflow();
    if handshake::send_connack(
        &mut stream,
        &ctx,
        session_present,
        tidemq_protocol::ConnectReturnCode::Accepted,
    )
    .await
    .is_err()
    {
        // Nothing was sent to anyone yet; park and leave as if never here.
        finish(&ctx, &slot, conn_id, clean, state).await;
        return;
    }
    info!(
        clean,
        session_present,
        took_over,
        keep_alive = accepted.connect.keep_alive,
        "client connected"
    );

    let (read_half, write_half) = tokio::io::split(stream);
    let limits = &ctx.settings.limits;
    let (inbound_tx, mut inbound_rx) = mpsc::channel(limits.inbound_queue);
    let (outgoing_tx, outgoing_rx) = mpsc::channel(limits.outbound_queue);
    let framer = Framer::new(limits.max_packet_size);
    let reader = tokio::spawn(reader::run(
        read_half,
        accepted.leftover,
        framer,
        accepted.connect.version,
        inbound_tx,
        token.clone(),
    ));
    let writer_config = WriterConfig {
        batch_bytes: limits.write_batch_bytes,
        write_timeout: ctx.settings.write_timeout(),
    };
    let mut writer = tokio::spawn(writer::run(
        write_half,
        outgoing_rx,
        writer_config,
        token.clone(),
    ));

    let keepalive = match accepted.connect.keep_alive {
        0 => None,
        secs => Some(Duration::from_millis(u64::from(secs) * 1500)),
    };
    let mut session = Session {
        ctx: Arc::clone(&ctx),
        slot: Arc::clone(&slot),
        state,
        outgoing: outgoing_tx,
        keepalive,
        more_mail: false,
    };
    let end = session.run(&mut inbound_rx, &mut writer, &token).await;
    report(&end, &ctx.metrics);

    // Graceful ends let the writer flush what is queued; others stop at once.
    let Session {
        state, outgoing, ..
    } = session;
    drop(outgoing);
    if matches!(end, End::Disconnect | End::Shutdown) && !writer.is_finished() {
        let grace = ctx.settings.write_timeout().min(Duration::from_secs(5));
        let _ = tokio::time::timeout(grace, &mut writer).await;
    }
    token.cancel();
    drop(inbound_rx);
    let _ = reader.await;
    if !writer.is_finished() {
        let _ = writer.await;
    }

    if end.publishes_will() {
        if let Some(will) = accepted.connect.will {
            publish_will(&ctx, will).await;
        }
    }
    finish(&ctx, &slot, conn_id, clean, state).await;
    drop(ownership);
}

/// Decides what survives the connection: a persistent session parks its
/// state (and keeps its mailbox and subscriptions); a clean one is forgotten.
async fn finish(
    ctx: &Context,
    slot: &Arc<crate::registry::SessionSlot>,
    conn_id: ConnId,
    clean: bool,
    state: SessionState,
) {
    slot.set_online(false);
    if clean {
        slot.mailbox.clear();
        Session::drop_subscriptions(ctx, slot).await;
        slot.set_persistent(false);
        ctx.registry.remove(slot, conn_id);
    } else {
        slot.park(state);
    }
}

async fn publish_will(ctx: &Context, will: tidemq_protocol::LastWill) {
    Metrics::incr(&ctx.metrics.wills_published);
    debug!(topic = %will.topic, "publishing will");
    let message = Message {
        topic: will.topic,
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
    };
    let _ = ctx.router.publish(message).await;
}

/// The one place an end becomes a log line and a counter.
fn report(end: &End, metrics: &Metrics) {
    match end {
        End::Disconnect => debug!("client disconnected"),
        End::PeerClosed => debug!("peer closed the connection"),
        End::Io(error) => debug!(%error, "read failed"),
        End::Shutdown => debug!("closed for shutdown"),
        End::Protocol(error @ ProtocolError::PacketTooLarge { .. }) => {
            Metrics::incr(&metrics.packets_too_large);
            warn!(%error, "closing: packet too large");
        }
        End::Protocol(error) => {
            Metrics::incr(&metrics.protocol_errors);
            warn!(%error, "closing: protocol violation");
        }
        End::KeepAliveTimeout => {
            Metrics::incr(&metrics.keepalive_timeouts);
            info!("closing: keepalive timeout");
        }
        End::TakenOver => {
            Metrics::incr(&metrics.takeovers);
            info!("closing: client id taken over by a new connection");
        }
        End::Writer(WriterEnd::Stalled) => {
            Metrics::incr(&metrics.write_timeouts);
            warn!("closing: write made no progress within the write timeout");
        }
        End::Writer(WriterEnd::Failed(error)) => debug!(%error, "write failed"),
        End::Writer(_) | End::WriterEnded => debug!("write side closed"),
    }
}

#[cfg(test)]
mod tests;
