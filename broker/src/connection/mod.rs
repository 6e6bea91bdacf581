//! One client connection, from the first byte to the last.
//!
//! [`serve`] reads the CONNECT (within `connect_timeout_ms`, while the
//! socket is pending and may be evicted under `max_pending`), checks it,
//! takes one of `max_connections` (see [`crate::admission`]), takes
//! ownership of the client's session, answers CONNACK, then splits the
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
//! Works over any [`Transport`], so TLS or WebSocket can be put underneath
//! without touching the session.
//!
//! A connection with nothing to do for `limits.rest_after_ms` *rests*: its
//! tasks stop at a safe point (the writer flushed, the reader between
//! reads), and its socket and [`Client`] go to the [`Dormitory`] until a
//! packet, mail, its keepalive deadline, a takeover or shutdown wakes it;
//! then the three tasks start again. Nothing is lost across a rest: packets
//! the reader decoded while stopping are handled first, and a partial
//! packet keeps its read deadline (`limits.packet_read_timeout_ms`, which
//! also wakes it) and its charge to the memory budget.

mod acks;
mod enhanced_auth;
mod handshake;
mod reader;
mod session;
mod v5;
mod writer;

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tidemq_protocol::{
    ConnAck, Disconnect, Framer, LastWill, Outgoing, Packet, ProtocolError, ProtocolVersion,
    ReasonCode,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::admission::{Admission, Gate};
use crate::budget::Budget;
use crate::config::Settings;
use crate::dormitory::{Alarm, Dormitory, Sleeper};
use crate::mailbox::MailboxLimits;
use crate::metrics::Metrics;
use crate::registry::{Opened, Ownership, Registry, SessionSlot, WillTimer};
use crate::router::{RouterHandle, RouterLimits};
use crate::session::SessionState;
use crate::throttle::{LogThrottle, Throttles};
use crate::types::{ClientId, ConnId, Message};

use reader::{Inbound, ReadBuffer, ReadConfig, ReadError, ReadLimit};
use session::{End, Session};
use writer::{WriterConfig, WriterEnd};

/// Longest wait for the writer to flush after DISCONNECT or at shutdown.
const GRACEFUL_FLUSH: Duration = Duration::from_secs(5);

/// What every connection shares: settings, the router, the registry, the
/// dormitory, the counters and the broker's shutdown signal.
#[derive(Debug)]
pub struct Context {
    pub settings: Settings,
    pub router: RouterHandle,
    pub registry: Registry,
    pub dormitory: Dormitory,
    pub metrics: Arc<Metrics>,
    pub budget: Arc<Budget>,
    /// Topic caps, shared with the router.
    pub router_limits: RouterLimits,
    /// Pending sockets, connection slots, per-address counts.
    pub gate: Arc<Gate>,
    /// One log line a second at most per kind of refusal.
    pub throttles: Throttles,
    /// The MQTT 5 enhanced authentication method, if one is plugged in.
    pub authenticator: Option<Arc<dyn crate::auth::Authenticator>>,
    pub shutdown: CancellationToken,
    /// Where woken connections are spawned (the dormitory is a plain thread).
    runtime: tokio::runtime::Handle,
    next_conn_id: AtomicU64,
}

impl Context {
    /// Must be called from within the runtime that will run connections.
    pub fn new(
        settings: Settings,
        router: RouterHandle,
        metrics: Arc<Metrics>,
        budget: Arc<Budget>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Context> {
        let registry = Registry::new(
            MailboxLimits {
                messages: settings.limits.max_queued_messages,
                bytes: settings.limits.max_queued_bytes,
                budget: Some(Arc::clone(&budget)),
            },
            settings.session_expiry(),
            metrics.clone(),
        );
        let router_limits = RouterLimits::from_settings(&settings);
        let gate = Arc::new(Gate::new(&settings.listener, Arc::clone(&metrics)));
        Ok(Context {
            settings,
            router,
            registry,
            dormitory: Dormitory::start()?,
            metrics,
            budget,
            router_limits,
            gate,
            throttles: Throttles::default(),
            authenticator: None,
            shutdown,
            runtime: tokio::runtime::Handle::current(),
            next_conn_id: AtomicU64::new(1),
        })
    }

    /// A context of its own for in-memory tests: a router, no listener.
    #[cfg(test)]
    pub(crate) fn for_tests(settings: Settings) -> Arc<Context> {
        let metrics = Arc::new(Metrics::default());
        let limits = crate::router::RouterLimits::from_settings(&settings);
        let (router, _task) =
            crate::router::spawn(settings.limits.router_queue, metrics.clone(), limits);
        let budget = Arc::new(Budget::new(metrics.clone(), settings.memory_limit_bytes()));
        let shutdown = CancellationToken::new();
        let ctx = Context::new(settings, router, metrics, budget, shutdown);
        Arc::new(ctx.unwrap_or_else(|error| panic!("dormitory: {error}")))
    }

    fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn_id.fetch_add(1, Ordering::Relaxed))
    }
}

/// A byte stream a connection can run over.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + Sized + 'static {
    /// Whether the connection may rest in the dormitory, which watches plain
    /// sockets only.
    const CAN_REST: bool = false;

    /// Gives up the socket for the dormitory (only called when `CAN_REST`).
    fn into_socket(self) -> std::io::Result<std::net::TcpStream> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

impl Transport for TcpStream {
    const CAN_REST: bool = true;

    fn into_socket(self) -> std::io::Result<std::net::TcpStream> {
        self.into_std()
    }
}

impl Transport for tokio::io::DuplexStream {}

/// A connected client: everything that must survive a rest. Its tasks,
/// channels and buffers do not.
struct Client {
    ctx: Arc<Context>,
    conn_id: ConnId,
    ownership: Ownership,
    /// How long the session outlives the connection: `Some(ZERO)` ends it
    /// with the connection (3.1.1 clean session, MQTT 5 Session Expiry
    /// Interval 0), `None` keeps it until the client returns.
    expiry: Option<Duration>,
    version: ProtocolVersion,
    /// MQTT 5 only: the client's limits and the topic aliases.
    v5: Option<Box<v5::V5Conn>>,
    /// The keepalive the client asked for, in seconds; 0: none.
    keep_alive: u16,
    /// Boxed: most clients have none, and this struct is what a resting
    /// connection costs.
    will: Option<Box<LastWill>>,
    state: SessionState,
    /// When the last packet came in, for the keepalive.
    last_packet: Instant,
    _admission: Admission,
}

impl Client {
    fn slot(&self) -> &Arc<SessionSlot> {
        &self.ownership.slot
    }

    /// MQTT 5 DISCONNECT's new Session Expiry Interval, capped like the
    /// CONNECT's (see [`session_expiry`]).
    fn set_expiry(&mut self, interval: u32) {
        self.expiry = capped_expiry(self.ctx.registry.default_expiry(), interval).0;
        self.slot().set_persistent(!self.ends_with_connection());
    }

    /// Whether the session ends with the connection.
    fn ends_with_connection(&self) -> bool {
        self.expiry == Some(Duration::ZERO)
    }

    /// How long the connection may stay silent: 1.5 x its keepalive
    /// [MQTT-3.1.2-24]; `None` when the client asked for 0.
    fn keepalive(&self) -> Option<Duration> {
        (self.keep_alive > 0).then(|| Duration::from_millis(u64::from(self.keep_alive) * 1500))
    }
}

/// The connection's spans are debug-level: a span costs memory in the
/// subscriber for as long as it lives, which a broker holding many clients
/// notices. Info and warning lines name the connection themselves.
fn handshake_span(conn_id: ConnId, peer: SocketAddr) -> tracing::Span {
    tracing::debug_span!("conn", conn_id = conn_id.0, %peer, client_id = tracing::field::Empty)
}

fn live_span(client: &Client) -> tracing::Span {
    tracing::debug_span!(
        "conn",
        conn_id = client.conn_id.0,
        client_id = %client.slot().client_id
    )
}

/// Serves one connection until it ends or rests. Never panics on input;
/// every end is logged once and counted.
pub async fn serve<S: Transport>(
    stream: S,
    peer: SocketAddr,
    ctx: Arc<Context>,
    admission: Admission,
) {
    let conn_id = ctx.next_conn_id();
    let connected = connect(stream, conn_id, peer, ctx, admission)
        .instrument(handshake_span(conn_id, peer))
        .await;
    let Some((client, token, stream, leftover)) = connected else {
        return;
    };
    // A client with nothing yet to send or receive starts at rest, so a
    // connection storm of idle clients never builds tasks and buffers it
    // would free a moment later; its first packet or mail wakes it.
    let idle = leftover.is_empty()
        && client.state.outbound.is_empty()
        && !client.state.has_retained_cursors();
    if S::CAN_REST && idle && client.ctx.settings.rest_after().is_some() {
        drop(token);
        return rest(client, stream, leftover);
    }
    let span = live_span(&client);
    live(client, token, stream, leftover, Vec::new(), true)
        .instrument(span)
        .await;
}

/// The handshake: CONNECT, session ownership, CONNACK. `None` when the
/// connection is already over.
async fn connect<S: Transport>(
    mut stream: S,
    conn_id: ConnId,
    peer: SocketAddr,
    ctx: Arc<Context>,
    mut admission: Admission,
) -> Option<(Client, CancellationToken, S, ReadBuffer)> {
    // Shutdown does not wait for clients that have not finished connecting,
    // and a newer socket evicts this one while it is pending (the gate
    // counted it). An evicted socket goes even if its CONNECT arrived just
    // before (checked again below), as the gate already counted it out.
    let evicted = admission.eviction();
    let accepted = tokio::select! {
        biased;
        _ = ctx.shutdown.cancelled() => return None,
        _ = evicted.cancelled() => {
            debug!("evicted before CONNECT: max_pending reached");
            return None;
        }
        accepted = handshake::accept(&mut stream, conn_id, peer, &ctx) => accepted,
    };
    let accepted = accepted?;
    if evicted.is_cancelled() {
        // Evicted between its CONNECT arriving and here: counted out.
        debug!("evicted before CONNECT: max_pending reached");
        return None;
    }
    // Only now does the connection take one of `max_connections`. A client
    // refused here is told the service is unavailable [MQTT-3.2.2-6], so it
    // backs off instead of retrying blindly.
    if !admission.connect() {
        if let Some(suppressed) = ctx
            .throttles
            .connection_limit
            .count(&ctx.metrics.connections_refused_limit)
        {
            let max_connections = ctx.settings.listener.max_connections;
            warn!(
                conn_id = conn_id.0,
                %peer,
                max_connections,
                suppressed,
                "refusing: connection limit reached (CONNACK 0x03)"
            );
        }
        let version = accepted.connect.version;
        handshake::refuse(&mut stream, &ctx, version, ReasonCode::SERVER_BUSY).await;
        return None;
    }
    tracing::Span::current().record("client_id", accepted.client_id.as_str());
    let token = ctx.shutdown.child_token();
    let opened = tokio::select! {
        _ = ctx.shutdown.cancelled() => return None,
        opened = ctx.registry.open(&accepted.client_id, conn_id, token.clone()) => opened,
    };
    let Opened::Owned {
        ownership,
        took_over,
    } = opened
    else {
        debug!("a newer connection claimed this client id first");
        return None;
    };
    let (expiry, granted_expiry) = session_expiry(&ctx, &accepted.connect);
    let clean = accepted.connect.clean_session;
    let (mut state, session_present) = take_up_session(&ctx, &ownership.slot, clean, expiry).await;
    let version = accepted.connect.version;
    let mut connack = ConnAck::new(session_present, ReasonCode::SUCCESS);
    let v5 = version.is_v5().then(|| {
        let properties = handshake::connack_properties(&ctx, &accepted, granted_expiry);
        *connack.properties = properties;
        let connect = &accepted.connect;
        let mut v5 = v5::V5Conn::new(connect, ctx.settings.limits.topic_alias_maximum);
        v5.auth_method = accepted.auth_method.clone();
        v5.username = accepted.connect.username.clone();
        Box::new(v5)
    });
    // [MQTT-3.3.4-9]: never more unacknowledged PUBLISHes towards an MQTT 5
    // client than its Receive Maximum.
    let receive_maximum = accepted.connect.properties.receive_maximum;
    let max_inflight = ctx.settings.limits.max_inflight;
    state
        .outbound
        .set_window(receive_maximum.map_or(max_inflight, |n| max_inflight.min(usize::from(n))));
    let keep_alive = accepted.keep_alive;
    let client = Client {
        conn_id,
        ownership,
        expiry,
        version,
        v5,
        keep_alive,
        will: accepted.connect.will.map(Box::new),
        state,
        last_packet: Instant::now(),
        _admission: admission,
        ctx,
    };
    if handshake::send_connack(&mut stream, &client.ctx, version, connack)
        .await
        .is_err()
    {
        close(client, End::WriterEnded).await;
        return None;
    }
    info!(
        conn_id = conn_id.0,
        %peer,
        client_id = %client.slot().client_id,
        ?version,
        clean,
        session_present,
        took_over,
        keep_alive,
        "client connected"
    );
    Some((client, token, stream, accepted.leftover))
}

/// Runs the connection's tasks until it ends, or hands it to the dormitory
/// when it rests. `first` is false when it wakes from a rest.
async fn live<S: Transport>(
    mut client: Client,
    token: CancellationToken,
    mut stream: S,
    mut leftover: ReadBuffer,
    mut pending: Vec<Inbound>,
    mut first: bool,
) {
    loop {
        client.slot().mailbox.clear_alarm();
        let rest_after = if S::CAN_REST {
            client.ctx.settings.rest_after()
        } else {
            None
        };
        let tasks = Tasks::spawn(stream, &client, &token, leftover);
        let session = Session::new(
            client,
            token.clone(),
            tasks.outgoing.clone(),
            Arc::clone(&tasks.writing),
            rest_after,
        );
        let stopped = tasks.run(session, pending, first).await;
        client = stopped.client;
        match stopped.outcome {
            Outcome::Ended(end) => return close(client, end).await,
            Outcome::Rested {
                stream: rested,
                leftover: rest_leftover,
                pending: rest_pending,
            } => {
                if rest_pending.is_empty() {
                    return rest(client, rested, rest_leftover);
                }
                // Packets came in while the tasks stopped: back to work.
                (stream, leftover, pending, first) = (rested, rest_leftover, rest_pending, false);
            }
        }
    }
}

/// Hands a connection to the dormitory. It gives up its token too (a
/// takeover rings its alarm instead) and gets a new one when it wakes.
fn rest<S: Transport>(client: Client, stream: S, leftover: ReadBuffer) {
    let socket = match stream.into_socket() {
        Ok(socket) => socket,
        Err(error) => {
            // The stream is gone; end the connection from a task of its own.
            let runtime = client.ctx.runtime.clone();
            runtime.spawn(close(client, End::Io(error)));
            return;
        }
    };
    Metrics::incr(&client.ctx.metrics.connections_rested);
    client.slot().release_owner(client.conn_id);
    // Keep a partial packet (with its deadline and its charge); an empty
    // buffer's room is not worth its bytes.
    let leftover = (!leftover.is_empty()).then(|| Box::new(leftover));
    let ctx = Arc::clone(&client.ctx);
    ctx.dormitory.admit(Box::new(Resting {
        client,
        socket,
        leftover,
    }));
}

/// A connection in the dormitory.
struct Resting {
    client: Client,
    socket: std::net::TcpStream,
    /// A partial packet read before the rest, if any.
    leftover: Option<Box<ReadBuffer>>,
}

impl Sleeper for Resting {
    fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// The earlier of the keepalive's and the partial packet's deadlines;
    /// the woken read task ends a connection past the latter.
    fn deadline(&self) -> Option<std::time::Instant> {
        let keepalive = self
            .client
            .keepalive()
            .map(|keepalive| self.client.last_packet + keepalive);
        let packet_timeout = self.client.ctx.settings.packet_read_timeout();
        let partial = self
            .leftover
            .as_ref()
            .and_then(|buf| buf.deadline(packet_timeout));
        let deadline = match (keepalive, partial) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        deadline.map(Instant::into_std)
    }

    fn install_alarm(&self, alarm: Alarm) -> bool {
        let slot = self.client.slot();
        let mail_waiting = slot.mailbox.install_alarm(alarm);
        // A claim made since the rest began found no alarm to ring.
        mail_waiting || !slot.is_latest(self.client.conn_id)
    }

    fn wake(self: Box<Self>) {
        let runtime = self.client.ctx.runtime.clone();
        runtime.spawn(wake(self));
    }
}

/// Writes an MQTT 5 connection's DISCONNECT for `end` straight to a socket
/// that has no tasks (a resting connection ended where it rests), within
/// `timeout`, then shuts it down.
async fn farewell(socket: std::net::TcpStream, end: &End, ctx: &Context) {
    let timeout = ctx.settings.write_timeout();
    let Some(disconnect) = end.disconnect(ctx) else {
        return;
    };
    let Ok(mut stream) = TcpStream::from_std(socket) else {
        return;
    };
    let mut buf = bytes::BytesMut::new();
    tidemq_protocol::encode(
        &Outgoing::Disconnect(disconnect),
        ProtocolVersion::V5,
        &mut buf,
    );
    let _ = tokio::time::timeout(timeout, async {
        stream.write_all(&buf).await?;
        stream.shutdown().await
    })
    .await;
}

async fn wake(resting: Box<Resting>) {
    let Resting {
        client,
        socket,
        leftover,
    } = *resting;
    let span = live_span(&client);
    async move {
        let token = client.ctx.shutdown.child_token();
        if !client.slot().install_owner(client.conn_id, token.clone()) {
            if client.v5.is_some() {
                farewell(socket, &End::TakenOver, &client.ctx).await;
            }
            return close(client, End::TakenOver).await;
        }
        match TcpStream::from_std(socket) {
            Ok(stream) => {
                let leftover = match leftover {
                    Some(buf) => *buf,
                    None => ReadBuffer::new(bytes::BytesMut::new(), &client.ctx.budget),
                };
                live(client, token, stream, leftover, Vec::new(), false).await
            }
            Err(error) => close(client, End::Io(error)).await,
        }
    }
    .instrument(span)
    .await
}

/// How long a session outlives its connection (see [`Client::expiry`]), and
/// for MQTT 5 the Session Expiry Interval to announce when the broker
/// lowered the client's. 3.1.1: clean session ends it, otherwise
/// `session_expiry_secs` (0: never). MQTT 5: the client's interval
/// (absent: 0), capped by `session_expiry_secs`; 0xFFFFFFFF never expires
/// [MQTT-3.1.2-23].
fn session_expiry(
    ctx: &Context,
    connect: &tidemq_protocol::Connect,
) -> (Option<Duration>, Option<u32>) {
    let cap = ctx.registry.default_expiry();
    if !connect.version.is_v5() {
        let expiry = if connect.clean_session {
            Some(Duration::ZERO)
        } else {
            cap
        };
        return (expiry, None);
    }
    let asked = connect.properties.session_expiry_interval.unwrap_or(0);
    capped_expiry(cap, asked)
}

/// An MQTT 5 Session Expiry Interval under the broker's cap: the expiry,
/// and the interval to announce when the cap lowered it.
fn capped_expiry(cap: Option<Duration>, interval: u32) -> (Option<Duration>, Option<u32>) {
    let wanted = (interval != u32::MAX).then(|| Duration::from_secs(u64::from(interval)));
    match (wanted, cap) {
        (Some(wanted), Some(cap)) if wanted <= cap => (Some(wanted), None),
        (_, Some(cap)) => {
            let granted = u32::try_from(cap.as_secs()).unwrap_or(u32::MAX - 1);
            (Some(cap), Some(granted))
        }
        (wanted, None) => (wanted, None),
    }
}

/// Takes up the session's state: a clean start begins empty (and drops
/// what an earlier session left); otherwise it resumes. Returns the state
/// and the CONNACK's session-present flag.
async fn take_up_session(
    ctx: &Context,
    slot: &SessionSlot,
    clean_start: bool,
    expiry: Option<Duration>,
) -> (SessionState, bool) {
    let session_present = !clean_start && slot.is_persistent();
    let parked = slot.take_parked();
    let (state, old) = match parked {
        Some(state) if !clean_start => (state, None),
        old => (SessionState::new(ctx.settings.limits.max_inflight), old),
    };
    if clean_start {
        Session::discard(ctx, slot, old).await;
    }
    slot.set_persistent(expiry != Some(Duration::ZERO));
    slot.set_online(true);
    slot.reset_overflow();
    (state, session_present)
}

/// How a run of the tasks stopped.
enum Outcome<S> {
    Ended(End),
    /// The session rested; the stream is whole again.
    Rested {
        stream: S,
        leftover: ReadBuffer,
        /// Decoded while the reader was stopping.
        pending: Vec<Inbound>,
    },
}

struct Stopped<S> {
    outcome: Outcome<S>,
    client: Client,
}

/// The read and write tasks of one connection and the channels to them.
struct Tasks<S> {
    reader: JoinHandle<(ReadHalf<S>, ReadBuffer, Option<ReadError>)>,
    writer: JoinHandle<(WriteHalf<S>, WriterEnd)>,
    inbound: mpsc::Receiver<Inbound>,
    outgoing: mpsc::Sender<Bytes>,
    /// Whether the writer is in the middle of a batch.
    writing: Arc<AtomicBool>,
    /// Stops the reader at its next read (rest), or at once with `token`.
    reader_stop: CancellationToken,
    /// The writer has its own token so that a graceful end (DISCONNECT,
    /// shutdown, rest) can let it flush before it is stopped.
    writer_token: CancellationToken,
    token: CancellationToken,
}

impl<S: Transport> Tasks<S> {
    fn spawn(
        stream: S,
        client: &Client,
        token: &CancellationToken,
        leftover: ReadBuffer,
    ) -> Tasks<S> {
        let (read_half, write_half) = tokio::io::split(stream);
        let ctx = &client.ctx;
        let limits = &ctx.settings.limits;
        let (inbound_tx, inbound) = mpsc::channel(limits.inbound_queue);
        let (outgoing, outgoing_rx) = mpsc::channel(limits.outbound_queue);
        let config = ReadConfig {
            framer: Framer::new(limits.max_packet_size),
            version: client.version,
            packet_timeout: ctx.settings.packet_read_timeout(),
        };
        let reader_stop = token.child_token();
        let reader = tokio::spawn(reader::run(
            read_half,
            leftover,
            config,
            inbound_tx,
            reader_stop.clone(),
        ));
        let writing = Arc::new(AtomicBool::new(false));
        let config = WriterConfig {
            batch_bytes: limits.write_batch_bytes,
            write_timeout: ctx.settings.write_timeout(),
            writing: Arc::clone(&writing),
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
            writing,
            reader_stop,
            writer_token,
            token: token.clone(),
        }
    }

    /// Runs the session until it ends or rests, then stops both tasks and
    /// waits for them: no task outlives a run.
    async fn run(mut self, mut session: Session, pending: Vec<Inbound>, first: bool) -> Stopped<S> {
        let end = session
            .run(&mut self.inbound, &mut self.writer, pending, first)
            .await;
        let client = session.into_client();
        let outcome = match end {
            End::Rest => self.stop_for_rest(&client.ctx).await,
            end => {
                let grace = client.ctx.settings.write_timeout().min(GRACEFUL_FLUSH);
                // MQTT 5: the server's DISCONNECT, written under the grace
                // deadline before the socket closes [MQTT-4.13.2-1].
                let farewell = client.v5.as_ref().and_then(|_| end.disconnect(&client.ctx));
                let said = match farewell {
                    Some(disconnect) => self.say_goodbye(disconnect, grace).await,
                    None => false,
                };
                let graceful = said || end.is_graceful();
                self.stop(graceful.then_some(grace)).await;
                Outcome::Ended(end)
            }
        };
        Stopped { outcome, client }
    }

    /// Lets the writer flush and the reader stop between reads, keeping
    /// what it decodes meanwhile, and joins the stream again.
    async fn stop_for_rest(mut self, ctx: &Context) -> Outcome<S> {
        drop(self.outgoing);
        self.reader_stop.cancel();
        let mut pending = Vec::new();
        let reader = loop {
            tokio::select! {
                joined = &mut self.reader => break joined,
                Some(inbound) = self.inbound.recv() => pending.push(inbound),
            }
        };
        while let Ok(inbound) = self.inbound.try_recv() {
            pending.push(inbound);
        }
        // The writer was idle when the session chose to rest, so it ends at
        // once; a takeover or shutdown meanwhile still wins.
        let writer = tokio::select! {
            joined = &mut self.writer => joined,
            _ = self.token.cancelled() => {
                self.writer_token.cancel();
                let _ = (&mut self.writer).await;
                return Outcome::Ended(cancelled_end(ctx));
            }
        };
        let (Ok((read_half, leftover, read_error)), Ok((write_half, writer_end))) =
            (reader, writer)
        else {
            return Outcome::Ended(End::WriterEnded);
        };
        if let Some(error) = read_error {
            pending.push(Inbound::Failed(error));
        }
        if !matches!(writer_end, WriterEnd::Drained) {
            // The socket failed. A DISCONNECT read meanwhile still counts
            // (no will); other packets go with the connection.
            let disconnected = pending
                .iter()
                .any(|inbound| matches!(inbound, Inbound::Packet(Packet::Disconnect(_))));
            return Outcome::Ended(if disconnected {
                End::Disconnect
            } else {
                End::Writer(writer_end)
            });
        }
        Outcome::Rested {
            stream: read_half.unsplit(write_half),
            leftover,
            pending,
        }
    }

    /// Queues the server's DISCONNECT for the writer, waiting at most
    /// `grace` for room; `false` when it could not be queued.
    async fn say_goodbye(&mut self, disconnect: Disconnect, grace: Duration) -> bool {
        let mut buf = bytes::BytesMut::new();
        let packet = Outgoing::Disconnect(disconnect);
        tidemq_protocol::encode(&packet, ProtocolVersion::V5, &mut buf);
        let send = self.outgoing.send(buf.freeze());
        matches!(tokio::time::timeout(grace, send).await, Ok(Ok(())))
    }

    /// Stops both tasks for good; after a graceful end the writer flushes
    /// first and the socket is shut down.
    async fn stop(mut self, grace: Option<Duration>) {
        drop(self.outgoing);
        let mut write_half = None;
        if let Some(grace) = grace {
            if let Ok(Ok((half, WriterEnd::Drained))) =
                tokio::time::timeout(grace, &mut self.writer).await
            {
                write_half = Some(half);
            }
        }
        self.token.cancel();
        self.reader_stop.cancel();
        self.writer_token.cancel();
        drop(self.inbound);
        let _ = self.reader.await;
        if let (Some(mut half), Some(grace)) = (write_half, grace) {
            let _ = tokio::time::timeout(grace, half.shutdown()).await;
        } else if !self.writer.is_finished() {
            let _ = self.writer.await;
        }
    }
}

/// Sleeps until `deadline`, or forever when there is none. Cancel-safe: a
/// `select!` branch for a timer that may be unset (session, read task,
/// expiry task).
pub(crate) async fn sleep_until_option(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Why a connection's token was cancelled.
fn cancelled_end(ctx: &Context) -> End {
    if ctx.shutdown.is_cancelled() {
        End::Shutdown
    } else {
        End::TakenOver
    }
}

/// Ends a connection: logs and counts why, publishes the will when the end
/// calls for it, and decides what survives: a persistent session parks its
/// state (and keeps its mailbox and subscriptions); a clean one is
/// forgotten. Dropping the client frees its session slot.
async fn close(client: Client, end: End) {
    let ends_with_connection = client.ends_with_connection();
    let Client {
        ctx,
        conn_id,
        ownership,
        expiry,
        will,
        state,
        ..
    } = client;
    report(&end, conn_id, &ownership.slot.client_id, &ctx);
    let mut will_timer = None;
    if let (true, Some(will)) = (end.publishes_will(), will) {
        match will_delay(&will, expiry) {
            Some(delay) => will_timer = Some(delay_will(&ctx, *will, delay)),
            None => publish_will(&ctx, *will).await,
        }
    }
    let slot = &ownership.slot;
    slot.set_online(false);
    slot.release_owner(conn_id);
    if ends_with_connection {
        Session::discard(&ctx, slot, Some(state)).await;
        slot.set_persistent(false);
        ctx.registry.remove(slot, conn_id);
    } else {
        slot.park(state);
        // Let go of the slot first, so the expiry task finds it free; a
        // client that claimed it meanwhile keeps it online.
        let slot = Arc::clone(slot);
        drop(ownership);
        ctx.registry
            .went_offline(&slot, conn_id, expiry, will_timer);
    }
}

/// How long an MQTT 5 will waits: its Will Delay Interval, or less when the
/// session ends first [MQTT-3.1.3-9]; `None`: publish it now.
fn will_delay(will: &LastWill, expiry: Option<Duration>) -> Option<Duration> {
    let delay = Duration::from_secs(u64::from(will.delay_interval));
    let wait = expiry.map_or(delay, |expiry| delay.min(expiry));
    (!wait.is_zero()).then_some(wait)
}

/// Publishes the will after `delay` [MQTT-3.1.3-9] from a timer task of
/// the session's own (the dormitory watches sockets only). Its handle goes
/// into the session's offline mark: a connection resuming the session drops
/// it, which gives the will up; the session expiring first fires it. At most
/// one per offline session; it holds no reference to the broker, so it ends
/// with it too.
fn delay_will(ctx: &Arc<Context>, will: LastWill, delay: Duration) -> WillTimer {
    Metrics::incr(&ctx.metrics.wills_delayed);
    let (timer, fired) = WillTimer::new();
    let weak = Arc::downgrade(ctx);
    let shutdown = ctx.shutdown.clone();
    ctx.runtime.spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
            fired = fired => if fired.is_err() { return },
        }
        if let Some(ctx) = weak.upgrade() {
            publish_will(&ctx, will).await;
        }
    });
    timer
}

/// Empties a session the expiry task owns: its parked state, its
/// subscriptions (answered by the router once gone, so nothing is delivered
/// under them afterwards) and its queued messages. A client that claims it
/// meanwhile waits for the task and then finds session present 0.
pub(crate) async fn forget_session(ctx: &Context, slot: &SessionSlot) {
    let parked = slot.take_parked();
    slot.set_persistent(false);
    Session::discard(ctx, slot, parked).await;
}

async fn publish_will(ctx: &Context, will: tidemq_protocol::LastWill) {
    Metrics::incr(&ctx.metrics.wills_published);
    debug!(topic = %will.topic, "publishing will");
    let message = Message::charged(will.topic, will.payload, will.qos, will.retain, &ctx.budget);
    let _ = ctx.router.publish(message, None).await;
}

/// The one place an end becomes a log line and a counter.
fn report(end: &End, conn_id: ConnId, client_id: &ClientId, ctx: &Context) {
    let (metrics, throttles) = (&ctx.metrics, &ctx.throttles);
    let conn_id = conn_id.0;
    // A refusal a client can repeat at will: counted always, logged at most
    // once a second.
    let refused = |counter: &std::sync::atomic::AtomicU64, throttle: &LogThrottle, why: &str| {
        if let Some(suppressed) = throttle.count(counter) {
            warn!(conn_id, %client_id, suppressed, "closing: {why}");
        }
    };
    match end {
        End::Disconnect => debug!("client disconnected"),
        End::DisconnectWithWill => debug!("client disconnected asking for its will (0x04)"),
        End::ReceiveMaximumExceeded => {
            Metrics::incr(&metrics.receive_maximum_exceeded);
            warn!(
                conn_id,
                %client_id,
                "closing: more unacknowledged QoS 1/2 PUBLISHes than receive_maximum [MQTT-3.3.4-8] (DISCONNECT 0x93)"
            );
        }
        End::SessionExpiryFromZero => {
            Metrics::incr(&metrics.protocol_errors);
            warn!(
                conn_id,
                %client_id,
                "closing: DISCONNECT set a Session Expiry Interval after CONNECT had 0 [MQTT-3.14.2-2]"
            );
        }
        End::AuthFailed(reason) => {
            info!(conn_id, %client_id, %reason, "closing: re-authentication refused");
        }
        End::UnexpectedAuth => {
            Metrics::incr(&metrics.protocol_errors);
            warn!(conn_id, %client_id, "closing: AUTH without an authentication method [MQTT-4.12.0-?]");
        }
        End::PeerClosed => debug!("peer closed the connection"),
        End::Io(error) => debug!(%error, "read failed"),
        End::Shutdown => debug!("closed for shutdown"),
        End::Protocol(error @ ProtocolError::PacketTooLarge { .. }) => {
            Metrics::incr(&metrics.packets_too_large);
            warn!(conn_id, %client_id, %error, "closing: packet too large");
        }
        End::Protocol(error) => {
            Metrics::incr(&metrics.protocol_errors);
            warn!(conn_id, %client_id, %error, "closing: protocol violation");
        }
        End::ReadLimit(ReadLimit::PacketTimeout) => refused(
            &metrics.packet_read_timeouts,
            &throttles.packet_read_timeout,
            "a packet did not arrive whole within packet_read_timeout_ms",
        ),
        End::ReadLimit(ReadLimit::MemoryLimit) => refused(
            &metrics.memory_limit_refusals,
            &throttles.memory,
            "over memory_limit_mb, no room for a partly read packet",
        ),
        End::KeepAliveTimeout => {
            Metrics::incr(&metrics.keepalive_timeouts);
            info!(conn_id, %client_id, "closing: keepalive timeout");
        }
        End::TooManyUnacknowledged => {
            Metrics::incr(&metrics.protocol_errors);
            warn!(
                conn_id,
                %client_id,
                "closing: more unacknowledged PUBLISHes than packet ids [MQTT-2.3.1-2]"
            );
        }
        End::TopicLimit => refused(
            &metrics.topics_refused_limit,
            &throttles.topic,
            "PUBLISH topic over max_topic_levels or max_topic_len",
        ),
        End::MemoryLimit => refused(
            &metrics.memory_limit_refusals,
            &throttles.memory,
            "QoS 1/2 PUBLISH while over memory_limit_mb (not acknowledged)",
        ),
        End::SlowSubscriber => {
            Metrics::incr(&metrics.slow_subscriber_disconnects);
            warn!(
                conn_id,
                %client_id,
                "closing: too slow, over max_queued_messages for slow_subscriber_timeout_ms"
            );
        }
        End::TakenOver => {
            Metrics::incr(&metrics.takeovers);
            info!(conn_id, %client_id, "closing: client id taken over by a new connection");
        }
        End::Writer(WriterEnd::Stalled) => {
            Metrics::incr(&metrics.write_timeouts);
            warn!(
                conn_id,
                %client_id,
                "closing: write made no progress within the write timeout"
            );
        }
        End::Writer(WriterEnd::Failed(error)) => debug!(%error, "write failed"),
        End::Writer(_) | End::WriterEnded => debug!("write side closed"),
        End::Rest => debug!("rested"),
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
