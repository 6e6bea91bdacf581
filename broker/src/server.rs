//! Listeners and the broker's life cycle: bind, accept, spawn, shut down.
//!
//! The accept loop does nothing slow: accept (with backoff when the process
//! is out of descriptors), admit the socket as pending (closing it at once
//! over `max_connections_per_address`, evicting the oldest pending socket
//! over `max_pending`: see [`crate::admission`]), set socket options, spawn.
//! `max_connections` is enforced later, once the CONNECT is read.
//! Everything after the accept runs on the connection's own task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::admission::Refused;
use crate::budget::Budget;
use crate::config::{ListenerSettings, Settings};
use crate::connection::{self, Context};
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::router;
use crate::store::Store;

/// Longest pause after a failed accept.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// A running broker. Dropping it does not stop it; call [`Broker::shutdown`].
#[derive(Debug)]
pub struct Broker {
    ctx: Arc<Context>,
    local_addrs: Vec<SocketAddr>,
    accept_loops: Vec<JoinHandle<()>>,
    router: JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the dormitory thread: {0}")]
    Dormitory(std::io::Error),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

impl StartError {
    /// The process exit code for this failure: 2 when the store's files
    /// are damaged or unreadable (the operator must act), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Store(error) if !error.is_locked() => 2,
            _ => 1,
        }
    }
}

impl Broker {
    /// Binds every listener of `settings` and starts serving.
    pub async fn start(settings: Settings) -> Result<Broker, StartError> {
        Broker::start_with_authenticator(settings, None).await
    }

    /// As [`Broker::start`], with an MQTT 5 enhanced authentication method.
    pub async fn start_with_authenticator(
        settings: Settings,
        authenticator: Option<Arc<dyn crate::auth::Authenticator>>,
    ) -> Result<Broker, StartError> {
        let metrics = Arc::new(Metrics::default());
        // Before binding: a second broker on the same directory stops here.
        let budget = Arc::new(Budget::new(metrics.clone(), settings.memory_limit_bytes()));
        let opened = match settings.storage.enabled {
            true => Some(Store::open(
                &settings.storage,
                metrics.clone(),
                budget.clone(),
            )?),
            false => None,
        };
        let (store, recovered) = opened.unzip();
        let listeners = match bind(&settings.listener).await {
            Ok(listeners) => listeners,
            Err(error) => {
                if let Some(store) = store {
                    // Lets go of the directory (an embedding may retry).
                    let _ = tokio::task::spawn_blocking(move || store.close()).await;
                }
                return Err(error);
            }
        };
        let (router, router_task) = router::spawn(
            settings.limits.router_queue,
            metrics.clone(),
            router::RouterLimits::from_settings(&settings),
            store.clone(),
        );
        let shutdown = CancellationToken::new();
        if let Some(interval) = settings.sys_interval() {
            let sys = crate::sys::run(router.clone(), metrics.clone(), interval, shutdown.clone());
            tokio::spawn(sys);
        }
        let mut ctx = Context::new(settings, router, metrics, budget, shutdown)
            .map_err(StartError::Dormitory)?;
        ctx.authenticator = authenticator;
        ctx.store = store.clone();
        let ctx = Arc::new(ctx);
        if let (Some(store), Some(recovered)) = (&store, recovered) {
            crate::recovery::restore(&ctx, store, recovered).await;
        }
        // Session expiry (issue 7): ends with the shutdown token.
        tokio::spawn(crate::expiry::run(ctx.clone()));
        let mut local_addrs = Vec::new();
        let mut accept_loops = Vec::new();
        for listener in listeners {
            let addr = listener.local_addr().map_err(|source| StartError::Bind {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
            info!(%addr, "listening");
            local_addrs.push(addr);
            let task = accept_loop(listener, ctx.clone());
            accept_loops.push(tokio::spawn(task));
        }
        Ok(Broker {
            ctx,
            local_addrs,
            accept_loops,
            router: router_task,
        })
    }

    /// The bound addresses, in the order of `listener.bind` (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        self.ctx.metrics.snapshot()
    }

    /// Connections resting in the dormitory now (no tasks, see
    /// `limits.rest_after_ms`).
    pub fn resting_connections(&self) -> usize {
        self.ctx.dormitory.sleeping()
    }

    /// Stops accepting, closes every connection (their writers flush), and
    /// waits for them up to `limits.shutdown_grace_ms`.
    pub async fn shutdown(self) {
        info!("shutting down");
        self.ctx.shutdown.cancel();
        self.ctx.dormitory.close();
        for task in self.accept_loops {
            let _ = task.await;
        }
        // Every connection past CONNECT holds a slot until it is closed,
        // resting ones included; pending ones end on the shutdown signal.
        let gate = &self.ctx.gate;
        let all_closed = async {
            while gate.connected() > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let grace = self.ctx.settings.shutdown_grace();
        if tokio::time::timeout(grace, all_closed).await.is_err() {
            warn!(
                open = gate.connected(),
                "connections still open after the grace period"
            );
        }
        let metrics = self.ctx.metrics.snapshot();
        info!(?metrics, "stopped");
        let store = self.ctx.store.clone();
        drop(self.ctx);
        self.router.abort();
        if let Some(store) = store {
            // Writes what the last connections left and syncs.
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
        }
    }
}

/// Binds every address of `listener.bind`.
async fn bind(settings: &ListenerSettings) -> Result<Vec<TcpListener>, StartError> {
    let mut listeners = Vec::new();
    for addr in &settings.bind {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: *addr,
                source,
            })?;
        if inherited_options() {
            configure(SockRef::from(&listener), settings);
        }
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Runs the broker until `signal` resolves, then shuts it down.
pub async fn run(
    settings: Settings,
    signal: impl std::future::Future<Output = ()>,
) -> Result<(), StartError> {
    let broker = Broker::start(settings).await?;
    signal.await;
    broker.shutdown().await;
    Ok(())
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Context>) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: wait for descriptors to free up.
                warn!(%error, "accept failed");
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        Metrics::incr(&ctx.metrics.connections_accepted);
        let admission = match ctx.gate.admit(peer.ip()) {
            Ok((admission, evicted)) => {
                // The evicted socket's task closes it (counted by the gate).
                if evicted.is_some() {
                    if let Some(suppressed) = ctx.throttles.pending_evicted.allow() {
                        let max_pending = ctx.settings.listener.max_pending;
                        warn!(
                            max_pending,
                            suppressed,
                            "closing the oldest socket without CONNECT: too many pending"
                        );
                    }
                }
                admission
            }
            Err(Refused::PerAddress) => {
                if let Some(suppressed) = ctx
                    .throttles
                    .per_address
                    .count(&ctx.metrics.connections_refused_per_address)
                {
                    warn!(%peer, suppressed, "closing: connection limit for this address reached");
                }
                continue;
            }
        };
        if !inherited_options() {
            configure(SockRef::from(&stream), &ctx.settings.listener);
        }
        tokio::spawn(connection::serve(stream, peer, ctx.clone(), admission));
    }
}

/// Sets TCP_NODELAY and SO_KEEPALIVE (with its idle time) on a socket. On
/// Linux, accepted sockets inherit both from their listener, so they are set
/// once on the listener ([`inherited_options`]) instead of three
/// `setsockopt` calls per connection.
fn configure(socket: SockRef<'_>, listener: &ListenerSettings) {
    if let Err(error) = socket.set_nodelay(listener.tcp_nodelay) {
        debug!(%error, "TCP_NODELAY not set");
    }
    if listener.tcp_keepalive_secs > 0 {
        let keepalive =
            TcpKeepalive::new().with_time(Duration::from_secs(listener.tcp_keepalive_secs));
        if let Err(error) = socket.set_tcp_keepalive(&keepalive) {
            debug!(%error, "SO_KEEPALIVE not set");
        }
    }
}

/// Whether accepted sockets inherit the listener's options.
const fn inherited_options() -> bool {
    cfg!(target_os = "linux")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    /// What `inherited_options` relies on: sockets accepted from a
    /// configured listener carry TCP_NODELAY and SO_KEEPALIVE.
    #[tokio::test]
    async fn accepted_sockets_get_the_listener_options() {
        let mut settings = Settings::defaults().unwrap();
        settings.storage.enabled = false;
        settings.listener.tcp_keepalive_secs = 77;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        configure(SockRef::from(&listener), &settings.listener);
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        if !inherited_options() {
            configure(SockRef::from(&accepted), &settings.listener);
        }
        let socket = SockRef::from(&accepted);
        assert!(socket.nodelay().unwrap());
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.keepalive_time().unwrap(), Duration::from_secs(77));
    }
}
