//! One client connection, from the first byte to the last.
//!
//! [`serve`] reads the CONNECT (within `connect_timeout_ms`), checks it,
//! takes ownership of the client's session, answers CONNACK, then splits the
//! stream and runs three tasks joined by bounded channels:
//!
//! ```text
//!  socket --read task--> inbound (limits.inbound_queue) --> session task
//!  session task --> encoded chunks (limits.outbound_queue) --write task--> socket
//!  router --> mailbox (limits.max_queued_messages) --> session task
//! ```
//!
//! The three share one cancellation token: when any of them ends, the others
//! are stopped, and the session decides what survives (will, parked state).
//! Works over any `AsyncRead + AsyncWrite` stream, so TLS or WebSocket can be
//! put underneath without touching the session.

mod acks;
mod handshake;
mod reader;
mod session;
mod writer;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tidemq_protocol::{ConnectReturnCode, Framer, ProtocolError, ProtocolVersion};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::registry::{Opened, Registry, SessionSlot};
use crate::router::RouterHandle;
use crate::session::SessionState;
use crate::types::{ConnId, Message};

use reader::Inbound;
use session::{End, Session};
use writer::{WriterConfig, WriterEnd};

/// Longest wait for the writer to flush after DISCONNECT or at shutdown.
const GRACEFUL_FLUSH: Duration = Duration::from_secs(5);

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
    // Shutdown does not wait for clients that have not finished connecting.
    let accepted = tokio::select! {
        _ = ctx.shutdown.cancelled() => return,
        accepted = handshake::accept(&mut stream, conn_id, &ctx) => accepted,
    };
    let Some(accepted) = accepted else {
        return;
    };
    tracing::Span::current().record("client_id", accepted.client_id.as_str());
    let token = ctx.shutdown.child_token();
    let opened = tokio::select! {
        _ = ctx.shutdown.cancelled() => return,
        opened = ctx.registry.open(&accepted.client_id, conn_id, token.clone()) => opened,
    };
    let Opened::Owned {
        ownership,
        took_over,
    } = opened
    else {
        debug!("a newer connection claimed this client id first");
        return;
    };
    let clean = accepted.connect.clean_session;
    let slot = Arc::clone(&ownership.slot);
    let (state, session_present) = take_up_session(&ctx, &slot, clean).await;
    let accepted_code = ConnectReturnCode::Accepted;
    if handshake::send_connack(&mut stream, &ctx, session_present, accepted_code)
        .await
        .is_err()
    {
        finish(&ctx, &slot, conn_id, clean, state).await;
        return;
    }
    let keep_alive = accepted.connect.keep_alive;
    info!(
        clean,
        session_present, took_over, keep_alive, "client connected"
    );

    let tasks = Tasks::spawn(
        stream,
        &ctx,
        accepted.leftover,
        accepted.connect.version,
        &token,
    );
    let session = Session {
        ctx: Arc::clone(&ctx),
        slot: Arc::clone(&slot),
        state,
        outgoing: tasks.outgoing.clone(),
        out: BytesMut::new(),
        out_limit: ctx.settings.limits.write_batch_bytes,
        acks: acks::PendingAcks::new(),
        slow_deadline: None,
        keepalive: match keep_alive {
            0 => None,
            secs => Some(Duration::from_millis(u64::from(secs) * 1500)),
        },
        more_mail: false,
        batch: Vec::new(),
        token,
    };
    let (end, state) = tasks.run(session, &ctx).await;
    report(&end, &ctx.metrics);
    if end.publishes_will() {
        if let Some(will) = accepted.connect.will {
            publish_will(&ctx, will).await;
        }
    }
    finish(&ctx, &slot, conn_id, clean, state).await;
    drop(ownership);
}

/// Takes up the session's state: a clean session starts empty (and drops
/// what an earlier persistent session left); a persistent one resumes.
/// Returns the state and the CONNACK's session-present flag.
async fn take_up_session(ctx: &Context, slot: &SessionSlot, clean: bool) -> (SessionState, bool) {
    let session_present = !clean && slot.is_persistent();
    let parked = slot.take_parked();
    let state = match parked {
        Some(state) if !clean => state,
        _ => SessionState::new(ctx.settings.limits.max_inflight),
    };
    if clean {
        Session::discard(ctx, slot).await;
    }
    slot.set_persistent(!clean);
    slot.set_online(true);
    slot.reset_overflow();
    (state, session_present)
}

/// The read and write tasks of one connection and the channels to them.
struct Tasks {
    reader: JoinHandle<()>,
    writer: JoinHandle<WriterEnd>,
    inbound: mpsc::Receiver<Inbound>,
    outgoing: mpsc::Sender<Bytes>,
    /// The writer has its own token so that a graceful end (DISCONNECT,
    /// shutdown) can let it flush before it is stopped.
    writer_token: CancellationToken,
    token: CancellationToken,
}

impl Tasks {
    fn spawn<S>(
        stream: S,
        ctx: &Context,
        leftover: BytesMut,
        version: ProtocolVersion,
        token: &CancellationToken,
    ) -> Tasks
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (read_half, write_half) = tokio::io::split(stream);
        let limits = &ctx.settings.limits;
        let (inbound_tx, inbound) = mpsc::channel(limits.inbound_queue);
        let (outgoing, outgoing_rx) = mpsc::channel(limits.outbound_queue);
        let framer = Framer::new(limits.max_packet_size);
        let reader = tokio::spawn(reader::run(
            read_half,
            leftover,
            framer,
            version,
            inbound_tx,
            token.clone(),
        ));
        let config = WriterConfig {
            batch_bytes: limits.write_batch_bytes,
            write_timeout: ctx.settings.write_timeout(),
        };
        let writer_token = CancellationToken::new();
        let writer = tokio::spawn(writer::run(
            write_half,
            outgoing_rx,
            config,
            writer_token.clone(),
        ));
        Tasks {
            reader,
            writer,
            inbound,
            outgoing,
            writer_token,
            token: token.clone(),
        }
    }

    /// Runs the session to its end, then stops both tasks and waits for them:
    /// no task outlives the connection.
    async fn run(mut self, mut session: Session, ctx: &Context) -> (End, SessionState) {
        let end = session.run(&mut self.inbound, &mut self.writer).await;
        let Session {
            state, outgoing, ..
        } = session;
        drop(outgoing);
        drop(self.outgoing);
        if matches!(end, End::Disconnect | End::Shutdown) && !self.writer.is_finished() {
            let grace = ctx.settings.write_timeout().min(GRACEFUL_FLUSH);
            let _ = tokio::time::timeout(grace, &mut self.writer).await;
        }
        self.token.cancel();
        self.writer_token.cancel();
        drop(self.inbound);
        let _ = self.reader.await;
        if !self.writer.is_finished() {
            let _ = self.writer.await;
        }
        (end, state)
    }
}

/// Decides what survives the connection: a persistent session parks its
/// state (and keeps its mailbox and subscriptions); a clean one is forgotten.
async fn finish(
    ctx: &Context,
    slot: &Arc<SessionSlot>,
    conn_id: ConnId,
    clean: bool,
    state: SessionState,
) {
    slot.set_online(false);
    slot.release_owner(conn_id);
    if clean {
        Session::discard(ctx, slot).await;
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
    let _ = ctx.router.publish(message, None).await;
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
        End::TooManyUnacknowledged => {
            Metrics::incr(&metrics.protocol_errors);
            warn!("closing: more unacknowledged PUBLISHes than packet ids [MQTT-2.3.1-2]");
        }
        End::SlowSubscriber => {
            Metrics::incr(&metrics.slow_subscriber_disconnects);
            warn!("closing: too slow, over max_queued_messages for slow_subscriber_timeout_ms");
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
