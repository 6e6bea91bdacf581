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
//!
//! | file            | owns                                                   |
//! |-----------------|--------------------------------------------------------|
//! | `mod.rs`        | the life cycle: handshake, session take-up, runs, rests |
//! | `handshake`     | CONNECT, its checks and CONNACK                        |
//! | `enhanced_auth` | the MQTT 5 AUTH exchange                               |
//! | `tasks`         | the read and write tasks of one run, and how it stops  |
//! | `reader`, `writer` | the two socket tasks                               |
//! | `session`       | the session task: the client's logic and timers        |
//! | `acks`          | acknowledgements owed, in order                        |
//! | `gated`         | deliveries waiting for the store to record their ids   |
//! | `end`           | why a connection ended, and what that means            |
//! | `v5`            | an MQTT 5 connection's limits and topic aliases        |
//! | `rest`          | to the dormitory and back                              |
//! | `close`         | the end: report, will, what survives                   |

mod acks;
mod close;
mod end;
mod enhanced_auth;
mod gated;
mod handshake;
mod persist;
mod reader;
mod rest;
mod session;
mod tasks;
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
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
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
use crate::listener::Endpoint;
use crate::mailbox::MailboxLimits;
use crate::metrics::Metrics;
use crate::registry::{Opened, Ownership, Registry, SessionSlot, WillTimer};
use crate::router::{RouterHandle, RouterLimits, TopicCaps};
use crate::session::SessionState;
use crate::throttle::{LogThrottle, Throttles};
pub use crate::transport::Transport;
use crate::types::{ClientId, ConnId, Message, MessageExtra};

use close::close;
pub(crate) use close::{delay_will, forget_session, publish_will};
use end::End;
pub(crate) use persist::settings as stored_settings;
use reader::{Inbound, ReadBuffer, ReadConfig, ReadError, ReadLimit};
use rest::rest;
use session::Session;
use tasks::{Outcome, Tasks};
use writer::{WriterConfig, WriterEnd};

/// What every connection shares: settings, the router, the registry, the
/// dormitory, the counters and the broker's shutdown signal.
#[derive(Debug)]
pub struct Context {
    /// The settings the broker started with. What a reload may change is
    /// read from [`Context::live`] or from the shared structures it updates
    /// (see `reload.rs`).
    pub settings: Settings,
    /// The settings of the last reload (the start's until one happens).
    pub live: crate::reload::Live,
    /// `max_topic_levels` and `max_topic_len`, reloadable.
    pub topic_caps: TopicCaps,
    pub router: RouterHandle,
    pub registry: Registry,
    pub dormitory: Dormitory,
    pub metrics: Arc<Metrics>,
    pub budget: Arc<Budget>,
    /// How shared subscriptions pick a member (restart-only): `hash` needs
    /// every message's publisher.
    pub shared_strategy: crate::router::shared::Strategy,
    /// Pending sockets, connection slots, per-address counts.
    pub gate: Arc<Gate>,
    /// One log line a second at most per kind of refusal.
    pub throttles: Throttles,
    /// Password hashing slots and failed-login delays.
    pub logins: crate::security::Logins,
    /// The MQTT 5 enhanced authentication method, if one is plugged in.
    pub authenticator: Option<Arc<dyn crate::auth::Authenticator>>,
    /// Where persistent sessions are kept (`storage.enabled`).
    pub store: Option<crate::store::Store>,
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
        let gate = Arc::new(Gate::new(&settings.connections, Arc::clone(&metrics)));
        let logins = crate::security::Logins::new(&settings.auth);
        Ok(Context {
            live: crate::reload::Live::new(settings.clone()),
            topic_caps: TopicCaps::new(&router_limits),
            settings,
            router,
            registry,
            dormitory: Dormitory::start()?,
            metrics,
            budget,
            shared_strategy: router_limits.shared_strategy,
            gate,
            throttles: Throttles::default(),
            logins,
            authenticator: None,
            store: None,
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
            crate::router::spawn(settings.limits.router_queue, metrics.clone(), limits, None);
        let budget = Arc::new(Budget::new(metrics.clone(), settings.memory_limit_bytes()));
        let shutdown = CancellationToken::new();
        let ctx = Context::new(settings, router, metrics, budget, shutdown);
        Arc::new(ctx.unwrap_or_else(|error| panic!("dormitory: {error}")))
    }

    pub(crate) fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn_id.fetch_add(1, Ordering::Relaxed))
    }
}

/// Where a connection came from: its peer, its listener (whose rules it
/// is held to), the identity its TLS client certificate gave, and the
/// deadline for everything before CONNACK.
#[derive(Debug)]
pub struct Origin {
    pub peer: SocketAddr,
    pub listener: Arc<Endpoint>,
    pub identity: Option<String>,
    /// `connect_timeout_ms` after the accept: the TLS handshake, the
    /// WebSocket upgrade, the CONNECT and the login all fit before it.
    pub deadline: Instant,
    /// The settings of the last reload before the accept: the connection
    /// keeps them for its life, so what an MQTT 5 client is told in its
    /// CONNACK stays true however the config changes.
    pub settings: Arc<Settings>,
}

/// A connection from `peer` on a plain listener with the context's `[auth]`
/// rules, for tests that drive connections without a socket.
#[cfg(test)]
pub(crate) fn test_origin(peer: SocketAddr, ctx: &Context) -> Origin {
    let settings = ctx.live.get();
    let deadline = Instant::now() + settings.connect_timeout();
    Origin::new(
        peer,
        Arc::new(Endpoint::plain(&ctx.settings)),
        deadline,
        settings,
    )
}

impl Origin {
    pub fn new(
        peer: SocketAddr,
        listener: Arc<Endpoint>,
        deadline: Instant,
        settings: Arc<Settings>,
    ) -> Origin {
        Origin {
            peer,
            listener,
            identity: None,
            deadline,
            settings,
        }
    }
}

/// A connected client: everything that must survive a rest. Its tasks,
/// channels and buffers do not.
struct Client {
    ctx: Arc<Context>,
    /// The connection's settings (see [`Origin::settings`]).
    settings: Arc<Settings>,
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
    /// Picks the PUBLISHes whose latency is measured; here rather than in
    /// the session task, which a rest ends, so that one in 16 stays one in
    /// 16 for a client that rests between its PUBLISHes.
    sampler: crate::latency::Sampler,
    /// Boxed: most clients have none, and this struct is what a resting
    /// connection costs.
    will: Option<Box<LastWill>>,
    state: SessionState,
    /// When the last packet came in, for the keepalive.
    last_packet: Instant,
    /// The listener it came in on: its ACL applies.
    listener: Arc<Endpoint>,
    /// The user name it authenticated as (or its certificate's identity).
    user: Option<Arc<str>>,
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

    /// Whether the listener's ACL lets this client read or write `topic`
    /// (no ACL: everything).
    fn may(&self, topic: &str, access: crate::security::acl::Access) -> bool {
        // Without an ACL, no lock and no reference count: both are shared
        // by every connection of the listener, and this runs per PUBLISH.
        if !self.listener.has_acl() {
            return true;
        }
        self.may_by(self.listener.files().security.acl.as_deref(), topic, access)
    }

    /// [`Client::may`] with the ACL already at hand (a batch takes it once).
    fn may_by(
        &self,
        acl: Option<&crate::security::acl::AclFile>,
        topic: &str,
        access: crate::security::acl::Access,
    ) -> bool {
        match acl {
            Some(acl) => acl.allows(
                self.user.as_deref(),
                self.slot().client_id.as_str(),
                topic,
                access,
            ),
            None => true,
        }
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
    origin: Origin,
    ctx: Arc<Context>,
    admission: Admission,
) {
    let conn_id = ctx.next_conn_id();
    let peer = origin.peer;
    let connected = connect(stream, conn_id, origin, ctx, admission)
        .instrument(handshake_span(conn_id, peer))
        .await;
    let Some((client, token, mut stream, leftover)) = connected else {
        return;
    };
    // A client with nothing yet to send or receive starts at rest, so a
    // connection storm of idle clients never builds tasks and buffers it
    // would free a moment later; its first packet or mail wakes it.
    let idle = leftover.is_empty()
        && client.state.outbound.is_empty()
        && !client.state.has_retained_cursors();
    if S::CAN_REST && idle && client.settings.rest_after().is_some() && !stream.has_buffered_input()
    {
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
    origin: Origin,
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
        accepted = handshake::accept(&mut stream, conn_id, &origin, &ctx) => accepted,
    };
    let accepted = accepted?;
    let peer = origin.peer;
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
            let max_connections = ctx.live.get().connections.max_connections;
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
    let same_user_only = ctx.settings.auth.takeover == crate::config::Takeover::SameUser;
    // The user as the listener vouched for it: "alice" checked against a
    // password file is not "alice" claimed where nothing is checked.
    let principal = accepted
        .user
        .as_deref()
        .map(|user| origin.listener.files().security.principal(user));
    if same_user_only
        && !ctx
            .registry
            .same_owner(&accepted.client_id, principal.as_deref())
    {
        Metrics::incr(&ctx.metrics.takeovers_refused);
        info!(conn_id = conn_id.0, %peer, client_id = %accepted.client_id, "refusing: the client id belongs to another user");
        let version = accepted.connect.version;
        handshake::refuse(&mut stream, &ctx, version, ReasonCode::NOT_AUTHORIZED).await;
        return None;
    }
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
    ownership.slot.set_owner_user(principal);
    let settings = Arc::clone(&origin.settings);
    let (expiry, granted_expiry) = session_expiry(&ctx, &accepted.connect);
    let clean = accepted.connect.clean_session;
    let max_inflight = settings.limits.max_inflight;
    let (mut state, session_present) =
        take_up_session(&ctx, &ownership.slot, clean, expiry, max_inflight).await;
    let version = accepted.connect.version;
    let mut connack = ConnAck::new(session_present, ReasonCode::SUCCESS);
    let v5 = version.is_v5().then(|| {
        let properties = handshake::connack_properties(&settings, &accepted, granted_expiry);
        *connack.properties = properties;
        let connect = &accepted.connect;
        let mut v5 = v5::V5Conn::new(connect, settings.limits.topic_alias_maximum);
        v5.auth_method = accepted.auth_method.clone();
        v5.username = accepted.connect.username.clone();
        Box::new(v5)
    });
    // [MQTT-3.3.4-9]: never more unacknowledged PUBLISHes towards an MQTT 5
    // client than its Receive Maximum.
    let receive_maximum = accepted.connect.properties.receive_maximum;
    state
        .outbound
        .set_window(receive_maximum.map_or(max_inflight, |n| max_inflight.min(usize::from(n))));
    let keep_alive = accepted.keep_alive;
    let client = Client {
        settings,
        conn_id,
        ownership,
        expiry,
        version,
        v5,
        keep_alive,
        sampler: crate::latency::Sampler::default(),
        will: accepted.connect.will.map(Box::new),
        state,
        last_packet: Instant::now(),
        listener: origin.listener,
        user: accepted.user,
        _admission: admission,
        ctx,
    };
    // Taken away again in `close`, however the connection ends.
    client.listener.census.connected(version);
    client.slot().set_conn(crate::registry::ConnInfo {
        conn_id,
        peer,
        listener: Arc::clone(&client.listener.census),
        since_ms: crate::registry::ConnInfo::now_ms(),
        version,
        keep_alive,
    });
    persist::connected(&client);
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
            client.settings.rest_after()
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
                let mut rested = rested;
                if rest_pending.is_empty() && !rested.has_buffered_input() {
                    return rest(client, rested, rest_leftover);
                }
                // Packets came in while the tasks stopped: back to work.
                (stream, leftover, pending, first) = (rested, rest_leftover, rest_pending, false);
            }
        }
    }
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
    max_inflight: usize,
) -> (SessionState, bool) {
    let session_present = !clean_start && slot.is_persistent();
    let parked = slot.take_parked();
    let (state, old) = match parked {
        Some(state) if !clean_start => (state, None),
        old => (SessionState::new(max_inflight), old),
    };
    if clean_start {
        Session::discard(ctx, slot, old).await;
    }
    slot.set_persistent(expiry != Some(Duration::ZERO));
    slot.set_online(true);
    slot.reset_overflow();
    (state, session_present)
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
fn cancelled_end(ctx: &Context, slot: &SessionSlot) -> End {
    if ctx.shutdown.is_cancelled() {
        End::Shutdown
    } else if slot.is_kicked() {
        End::Kicked
    } else {
        End::TakenOver
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
