//! Listeners and the broker's life cycle: bind, accept, spawn, shut down.
//!
//! The accept loop does nothing slow: accept (with backoff when the process
//! is out of descriptors), enforce `max_connections`, set socket options,
//! spawn. Everything after the accept runs on the connection's own task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::budget::Budget;
use crate::config::{ListenerSettings, Settings};
use crate::connection::{self, Context};
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::router;

/// Longest pause after a failed accept.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// A running broker. Dropping it does not stop it; call [`Broker::shutdown`].
#[derive(Debug)]
pub struct Broker {
    ctx: Arc<Context>,
    local_addrs: Vec<SocketAddr>,
    accept_loops: Vec<JoinHandle<()>>,
    /// One permit per open connection (`listener.max_connections`): shutdown
    /// waits for all of them to come back, resting connections included.
    limit: Arc<Semaphore>,
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
}

impl Broker {
    /// Binds every listener of `settings` and starts serving.
    pub async fn start(settings: Settings) -> Result<Broker, StartError> {
        let mut listeners = Vec::new();
        for addr in &settings.listener.bind {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr: *addr,
                    source,
                })?;
            if inherited_options() {
                configure(SockRef::from(&listener), &settings.listener);
            }
            listeners.push(listener);
        }
        let metrics = Arc::new(Metrics::default());
        let (router, router_task) = router::spawn(
            settings.limits.router_queue,
            metrics.clone(),
            router::RouterLimits::from_settings(&settings),
        );
        let shutdown = CancellationToken::new();
        let limit = Arc::new(Semaphore::new(settings.listener.max_connections));
        if let Some(interval) = settings.sys_interval() {
            let sys = crate::sys::run(router.clone(), metrics.clone(), interval, shutdown.clone());
            tokio::spawn(sys);
        }
        let budget = Arc::new(Budget::new(metrics.clone(), settings.memory_limit_bytes()));
        let ctx = Context::new(settings, router, metrics, budget, shutdown)
            .map_err(StartError::Dormitory)?;
        let ctx = Arc::new(ctx);
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
            let task = accept_loop(listener, ctx.clone(), limit.clone());
            accept_loops.push(tokio::spawn(task));
        }
        Ok(Broker {
            ctx,
            local_addrs,
            accept_loops,
            limit,
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
        let max = self.ctx.settings.listener.max_connections;
        let all_closed = async {
            while self.limit.available_permits() < max {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let grace = self.ctx.settings.shutdown_grace();
        if tokio::time::timeout(grace, all_closed).await.is_err() {
            warn!(
                open = max - self.limit.available_permits(),
                "connections still open after the grace period"
            );
        }
        let metrics = self.ctx.metrics.snapshot();
        info!(?metrics, "stopped");
        drop(self.ctx);
        self.router.abort();
    }
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

async fn accept_loop(listener: TcpListener, ctx: Arc<Context>, limit: Arc<Semaphore>) {
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
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            Metrics::incr(&ctx.metrics.connections_refused_limit);
            warn!(%peer, "closing: connection limit reached");
            continue;
        };
        if !inherited_options() {
            configure(SockRef::from(&stream), &ctx.settings.listener);
        }
        let admission = Admission::new(&ctx.metrics, Some(permit));
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

/// What a connection holds of the server for as long as it lives, resting
/// or not: its place under `max_connections` (which shutdown also waits
/// for) and the open-connections count.
#[derive(Debug)]
pub(crate) struct Admission {
    metrics: Arc<Metrics>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Admission {
    pub(crate) fn new(metrics: &Arc<Metrics>, permit: Option<OwnedSemaphorePermit>) -> Admission {
        Metrics::incr(&metrics.connections_current);
        Admission {
            metrics: Arc::clone(metrics),
            _permit: permit,
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        Metrics::decr(&self.metrics.connections_current);
    }
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
