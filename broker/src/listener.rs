//! Listeners: one per `[[listener]]`, each with its address, protocol
//! (MQTT, or MQTT over WebSocket), optional TLS, and its own rules (who may
//! connect, what they may do: [`crate::security`]).
//!
//! The accept loop does nothing slow: take a token from the listener's
//! connect-rate bucket (pausing the loop when there is none, so a storm
//! waits in the kernel's backlog instead of costing handshakes), accept
//! (with backoff when the process is out of descriptors), admit the socket
//! as pending (see [`crate::admission`]), spawn. The TLS handshake and the
//! WebSocket upgrade run on the connection's own task, bounded by
//! `connect_timeout_ms` and cancelled like any pending socket when it is
//! evicted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::rustls::ServerConfig;
use tracing::{debug, info, warn};

use crate::admission::{Admission, ListenerSlots, Refused};
use crate::config::{ConnectionSettings, ListenerConfig, ListenerProtocol, Settings};
use crate::connection::{self, Context};
use crate::metrics::Metrics;
use crate::security::{ListenerSecurity, SecurityError};
use crate::transport::{self, Layered};

/// Longest pause after a failed accept.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// One listener's settings, ready to serve.
#[derive(Debug)]
pub struct Endpoint {
    pub config: ListenerConfig,
    /// What a reload (SIGHUP) replaces: certificates, password and ACL
    /// files. Connections take the current set at each check; the lock is
    /// held only to clone the `Arc`.
    files: RwLock<Arc<ListenerFiles>>,
    /// Whether the current files include an ACL: every delivery round asks,
    /// and without one it need not take the lock.
    has_acl: AtomicBool,
    /// The listener's own `max_connections`, if it has one.
    pub slots: Option<Arc<ListenerSlots>>,
    /// New sockets per second; 0: no limit.
    pub connect_rate: u32,
    /// Its connections open now, by protocol version (`GET /metrics`).
    pub census: Arc<crate::census::ListenerCensus>,
}

/// A listener's files, loaded: the TLS configuration and the rules.
#[derive(Debug)]
pub struct ListenerFiles {
    pub tls: Option<Arc<ServerConfig>>,
    pub security: ListenerSecurity,
}

impl ListenerFiles {
    fn load(config: &ListenerConfig, settings: &Settings) -> Result<ListenerFiles, EndpointError> {
        let tls = match &config.tls {
            Some(tls) => Some(transport::tls::server_config(tls)?),
            None => None,
        };
        Ok(ListenerFiles {
            tls,
            security: ListenerSecurity::load(config, &settings.auth)?,
        })
    }
}

/// Why a listener cannot start; names the key or file.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Tls(#[from] transport::tls::TlsError),
    #[error(transparent)]
    Security(#[from] SecurityError),
}

impl Endpoint {
    pub fn new(config: &ListenerConfig, settings: &Settings) -> Result<Endpoint, EndpointError> {
        let files = ListenerFiles::load(config, settings)?;
        Ok(Endpoint {
            has_acl: AtomicBool::new(files.security.acl.is_some()),
            files: RwLock::new(Arc::new(files)),
            slots: (config.max_connections > 0)
                .then(|| Arc::new(ListenerSlots::new(config.max_connections))),
            connect_rate: config
                .max_connect_rate
                .unwrap_or(settings.connections.max_connect_rate),
            census: Arc::new(crate::census::ListenerCensus::new(config)),
            config: config.clone(),
        })
    }

    /// A plain MQTT listener with the broker's default rules, for tests
    /// that drive connections without a socket.
    #[cfg(test)]
    pub fn plain(settings: &Settings) -> Endpoint {
        let config = ListenerConfig::mqtt(SocketAddr::from(([127, 0, 0, 1], 0)));
        let files = ListenerFiles {
            tls: None,
            security: ListenerSecurity::open(settings.auth.allow_anonymous),
        };
        Endpoint {
            has_acl: AtomicBool::new(false),
            files: RwLock::new(Arc::new(files)),
            slots: None,
            connect_rate: 0,
            census: Arc::new(crate::census::ListenerCensus::new(&config)),
            config,
        }
    }
}

impl Endpoint {
    /// Whether an ACL applies (without taking the files' lock).
    pub fn has_acl(&self) -> bool {
        self.has_acl.load(Ordering::Acquire)
    }

    /// The current certificates and rules.
    pub fn files(&self) -> Arc<ListenerFiles> {
        Arc::clone(
            &self
                .files
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Loads the listener's files again (SIGHUP), with `config`'s paths and
    /// `[auth]` settings. On an error the old files stay in force.
    pub fn reload(
        &self,
        config: &ListenerConfig,
        settings: &Settings,
    ) -> Result<(), EndpointError> {
        let files = Arc::new(ListenerFiles::load(config, settings)?);
        let has_acl = files.security.acl.is_some();
        *self
            .files
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = files;
        // After the swap: a check that sees the flag finds the ACL.
        self.has_acl.store(has_acl, Ordering::Release);
        Ok(())
    }
}

/// Binds one listener.
pub async fn bind(addr: SocketAddr, settings: &ConnectionSettings) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    if inherited_options() {
        configure(SockRef::from(&listener), settings);
    }
    Ok(listener)
}

/// New sockets per second, with a second's worth of burst.
struct RateLimit {
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn new(per_second: u32) -> RateLimit {
        RateLimit {
            per_second: f64::from(per_second),
            tokens: f64::from(per_second),
            last: Instant::now(),
        }
    }

    /// Takes a token; `Some(wait)` when there is none yet.
    fn take(&mut self) -> Option<Duration> {
        if self.per_second <= 0.0 {
            return None;
        }
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.per_second);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return None;
        }
        Some(Duration::from_secs_f64(
            (1.0 - self.tokens) / self.per_second,
        ))
    }
}

/// Accepts until `stop` (the broker's shutdown, or a reload removing the
/// listener) is cancelled.
pub async fn accept_loop(
    listener: TcpListener,
    endpoint: Arc<Endpoint>,
    ctx: Arc<Context>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut backoff = Duration::from_millis(10);
    let mut rate = RateLimit::new(endpoint.connect_rate);
    if let Ok(addr) = listener.local_addr() {
        ctx.metrics.census.register(&endpoint.census, addr);
    }
    loop {
        if let Some(wait) = rate.take() {
            Metrics::incr(&ctx.metrics.connect_rate_waits);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => continue,
            }
        }
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: wait for descriptors to free up.
                warn!(%error, "accept failed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        Metrics::incr(&ctx.metrics.connections_accepted);
        let Some(admission) = admit(&ctx, &endpoint, peer) else {
            continue;
        };
        // The settings this connection lives by: those of the last reload.
        let settings = ctx.live.get();
        if !inherited_options() {
            configure(SockRef::from(&stream), &settings.connections);
        }
        let deadline = Instant::now() + settings.connect_timeout();
        let origin = connection::Origin::new(peer, endpoint.clone(), deadline, settings);
        match (endpoint.config.tls.is_some(), endpoint.config.protocol) {
            (false, ListenerProtocol::Mqtt) => {
                tokio::spawn(connection::serve(stream, origin, ctx.clone(), admission));
            }
            _ => {
                tokio::spawn(serve_layered(stream, origin, ctx.clone(), admission));
            }
        }
    }
}

/// Admits a socket as pending; `None` when it must close at once.
fn admit(ctx: &Context, endpoint: &Endpoint, peer: SocketAddr) -> Option<Admission> {
    match ctx.gate.admit_on(peer.ip(), endpoint.slots.clone()) {
        Ok((admission, evicted)) => {
            // The evicted socket's task closes it (counted by the gate).
            if evicted.is_some() {
                if let Some(suppressed) = ctx.throttles.pending_evicted.allow() {
                    let max_pending = ctx.live.get().connections.max_pending;
                    warn!(
                        max_pending,
                        suppressed, "closing the oldest socket without CONNECT: too many pending"
                    );
                }
            }
            Some(admission)
        }
        Err(Refused::PerAddress) => {
            if let Some(suppressed) = ctx
                .throttles
                .per_address
                .count(&ctx.metrics.connections_refused_per_address)
            {
                warn!(%peer, suppressed, "closing: connection limit for this address reached");
            }
            None
        }
    }
}

/// Sets up TLS and/or WebSocket on a pending socket, within the connect
/// timeout and unless it is evicted or the broker stops, then serves it.
async fn serve_layered(
    stream: TcpStream,
    mut origin: connection::Origin,
    ctx: Arc<Context>,
    admission: Admission,
) {
    let evicted = admission.eviction();
    let peer = origin.peer;
    let layered = tokio::select! {
        biased;
        _ = ctx.shutdown.cancelled() => return,
        _ = evicted.cancelled() => {
            debug!(%peer, "evicted during the TLS/WebSocket handshake: max_pending reached");
            return;
        }
        layered = tokio::time::timeout_at(origin.deadline, establish(stream, &origin, &ctx)) => layered,
    };
    let layered = match layered {
        Ok(Ok(layered)) => layered,
        Ok(Err(error)) => {
            Metrics::incr(&ctx.metrics.handshakes_failed);
            if let Some(suppressed) = ctx.throttles.handshake.allow() {
                info!(%peer, %error, suppressed, "closing: TLS/WebSocket handshake failed");
            }
            return;
        }
        Err(_) => {
            if let Some(suppressed) = ctx
                .throttles
                .connect_timeout
                .count(&ctx.metrics.connect_timeouts)
            {
                info!(%peer, suppressed, "closing: TLS/WebSocket handshake timed out");
            }
            return;
        }
    };
    origin.identity = match &layered {
        Layered::Tls(tls) => transport::tls::peer_identity(tls),
        Layered::Wss(ws) => transport::tls::peer_identity(ws.inner()),
        Layered::Ws(_) => None,
    };
    connection::serve(layered, origin, ctx, admission).await
}

/// The handshake(s) a listener asks for.
async fn establish(
    stream: TcpStream,
    origin: &connection::Origin,
    ctx: &Context,
) -> std::io::Result<Layered> {
    let endpoint = &origin.listener;
    let max_frame = ctx.live.get().connections.ws_max_frame_bytes;
    let path = endpoint.config.ws_path.as_str();
    let ws_error = |error: transport::ws::UpgradeError| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, error.to_string())
    };
    let files = endpoint.files();
    Ok(match (&files.tls, endpoint.config.protocol) {
        (Some(tls), ListenerProtocol::Mqtt) => {
            Layered::Tls(transport::tls::accept(tls.clone(), stream).await?)
        }
        (Some(tls), ListenerProtocol::Ws) => {
            let tls = transport::tls::accept(tls.clone(), stream).await?;
            Layered::Wss(
                transport::ws::accept(tls, path, max_frame)
                    .await
                    .map_err(ws_error)?,
            )
        }
        (None, _) => Layered::Ws(
            transport::ws::accept(stream, path, max_frame)
                .await
                .map_err(ws_error)?,
        ),
    })
}

/// Sets TCP_NODELAY and SO_KEEPALIVE (with its idle time) on a socket. On
/// Linux, accepted sockets inherit both from their listener, so they are set
/// once on the listener ([`inherited_options`]) instead of three
/// `setsockopt` calls per connection.
pub(crate) fn configure(socket: SockRef<'_>, settings: &ConnectionSettings) {
    if let Err(error) = socket.set_nodelay(settings.tcp_nodelay) {
        debug!(%error, "TCP_NODELAY not set");
    }
    if settings.tcp_keepalive_secs > 0 {
        let keepalive =
            TcpKeepalive::new().with_time(Duration::from_secs(settings.tcp_keepalive_secs));
        if let Err(error) = socket.set_tcp_keepalive(&keepalive) {
            debug!(%error, "SO_KEEPALIVE not set");
        }
    }
}

/// Whether accepted sockets inherit the listener's options.
pub(crate) const fn inherited_options() -> bool {
    cfg!(target_os = "linux")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `inherited_options` relies on: sockets accepted from a
    /// configured listener carry TCP_NODELAY and SO_KEEPALIVE.
    #[tokio::test]
    async fn accepted_sockets_get_the_listener_options() {
        let mut settings = Settings::defaults().unwrap();
        settings.storage.enabled = false;
        settings.connections.tcp_keepalive_secs = 77;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        configure(SockRef::from(&listener), &settings.connections);
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        if !inherited_options() {
            configure(SockRef::from(&accepted), &settings.connections);
        }
        let socket = SockRef::from(&accepted);
        assert!(socket.nodelay().unwrap());
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.keepalive_time().unwrap(), Duration::from_secs(77));
    }
}
