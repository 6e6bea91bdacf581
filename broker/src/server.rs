//! The broker's life cycle: load the listeners' certificates and files,
//! open the store, bind, recover, start the accept loops
//! ([`crate::listener`]), shut down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::budget::Budget;
use crate::config::Settings;
use crate::connection::Context;
use crate::listener::{self, Endpoint, EndpointError};
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::router;
use crate::store::Store;

/// A running broker. Dropping it does not stop it; call [`Broker::shutdown`].
#[derive(Debug)]
pub struct Broker {
    ctx: Arc<Context>,
    local_addrs: Vec<SocketAddr>,
    /// The accept loops, each with its listener (SIGHUP adds and removes
    /// them: see `reload`).
    listeners: tokio::sync::Mutex<Vec<crate::reload::Running>>,
    router: JoinHandle<()>,
    /// `[http]`: metrics, health, admin API, dashboard (SIGHUP moves it,
    /// turns it on or off: see `http`).
    http: crate::http::Http,
    /// The running `[[bridge]]`s (SIGHUP changes them: see `reload`).
    bridges: crate::bridge::Bridges,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} (http.bind): {source}")]
    HttpBind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot start the dormitory thread: {0}")]
    Dormitory(std::io::Error),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Listener(#[from] EndpointError),
    #[error("{0}")]
    Bridge(#[from] crate::bridge::BridgeTlsError),
}

impl StartError {
    /// The process exit code for this failure: 2 when the store's files
    /// are damaged or unreadable, or a listener's certificate, password or
    /// ACL file or a bridge's TLS file is bad (the operator must act), 1
    /// otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Store(error) if !error.is_locked() => 2,
            StartError::Listener(_) | StartError::Bridge(_) => 2,
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
        // Before anything is opened: a bad file stops the start here.
        let bridges = crate::bridge::Prepared::load_all(&settings.bridges)?;
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
        let listeners = match bind(&settings).await {
            Ok(listeners) => listeners,
            Err(error) => {
                if let Some(store) = store {
                    // Lets go of the directory (an embedding may retry).
                    let _ = tokio::task::spawn_blocking(move || store.close()).await;
                }
                return Err(error);
            }
        };
        // Bound with the MQTT listeners (a port in use stops the start
        // here); it serves once they accept, at the end.
        let http_listener = match crate::http::bind(settings.http_bind()).await {
            Ok(listener) => listener,
            Err(source) => {
                if let Some(store) = store {
                    let _ = tokio::task::spawn_blocking(move || store.close()).await;
                }
                let addr = settings.http.bind.clone();
                return Err(StartError::HttpBind { addr, source });
            }
        };
        let (router, router_task) = router::spawn(
            settings.limits.router_queue,
            metrics.clone(),
            router::RouterLimits::from_settings(&settings),
            store.clone(),
        );
        let shutdown = CancellationToken::new();
        let sys_interval = settings.sys_interval();
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
        if let Some(interval) = sys_interval {
            tokio::spawn(crate::sys::run(ctx.clone(), interval));
        }
        // Before the listeners accept: a bridge's local subscriptions are in
        // place when this returns, so no client's message slips past it.
        let bridges = crate::bridge::Bridges::start(&ctx, bridges).await;
        // From here on a failure stops what was started (bridges, expiry,
        // $SYS, accept loops) before it is returned.
        let stop_on_error = |error: StartError| {
            ctx.shutdown.cancel();
            error
        };
        let mut local_addrs = Vec::new();
        let mut running = Vec::new();
        for (listener, endpoint) in listeners {
            let started =
                crate::reload::Running::start(listener, endpoint, &ctx).map_err(|source| {
                    stop_on_error(StartError::Bind {
                        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                        source,
                    })
                })?;
            local_addrs.push(started.addr);
            running.push(started);
        }
        let http = crate::http::Http::start(http_listener, ctx.clone()).map_err(|source| {
            let addr = ctx.settings.http.bind.clone();
            stop_on_error(StartError::HttpBind { addr, source })
        })?;
        Ok(Broker {
            bridges,
            ctx,
            local_addrs,
            listeners: tokio::sync::Mutex::new(running),
            router: router_task,
            http,
        })
    }

    pub(crate) fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    pub(crate) fn listeners(&self) -> &tokio::sync::Mutex<Vec<crate::reload::Running>> {
        &self.listeners
    }

    pub(crate) fn bridges(&self) -> &crate::bridge::Bridges {
        &self.bridges
    }

    pub(crate) fn http(&self) -> &crate::http::Http {
        &self.http
    }

    /// The addresses listened on now (after reloads).
    pub async fn listening_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.lock().await.iter().map(|r| r.addr).collect()
    }

    /// The HTTP listener's address now (`[http] bind`, after reloads;
    /// useful with port 0), `None` when it is off.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.addr()
    }

    /// The bound addresses, in the order of the `[[listener]]` tables
    /// (useful with port 0).
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
        for running in self.listeners.into_inner() {
            let _ = running.task.await;
        }
        // Every connection past CONNECT holds a slot until it is closed,
        // resting ones included; pending ones end on the shutdown signal.
        let gate = &self.ctx.gate;
        let all_closed = async {
            while gate.connected() > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let grace = self.ctx.live.get().shutdown_grace();
        if tokio::time::timeout(grace, all_closed).await.is_err() {
            warn!(
                open = gate.connected(),
                "connections still open after the grace period"
            );
        }
        // Before the router goes: a bridge closes its local session.
        self.bridges.stop(grace).await;
        // `/readyz` said 503 while the connections drained.
        self.http.stop().await;
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

/// Prepares every `[[listener]]` (certificates, password and ACL files)
/// and binds it.
async fn bind(settings: &Settings) -> Result<Vec<(TcpListener, Arc<Endpoint>)>, StartError> {
    let mut bound = Vec::new();
    for config in &settings.listeners {
        let endpoint = Endpoint::new(config, settings)?;
        let listener = listener::bind(config.bind, &settings.connections)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.bind,
                source,
            })?;
        bound.push((listener, Arc::new(endpoint)));
    }
    Ok(bound)
}

/// Runs the broker until `signal` resolves, then shuts it down; on each
/// SIGHUP, loads the config again with `reload` and applies what can
/// change while running (see [`Broker::reload`]).
pub async fn run_with_reload(
    settings: Settings,
    signal: impl std::future::Future<Output = ()>,
    mut reload: impl FnMut() -> Result<Settings, crate::ConfigError>,
) -> Result<(), StartError> {
    // Before the start: a SIGHUP sent as soon as the broker says it is
    // listening must find the handler, not end the process.
    let mut hangups = crate::reload::hangups();
    let broker = Broker::start(settings).await?;
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => break,
            Some(()) = hangups.recv() => match reload() {
                Ok(settings) => broker.reload(&settings).await,
                Err(error) => warn!(%error, "SIGHUP: the config does not load; nothing changed"),
            },
        }
    }
    broker.shutdown().await;
    Ok(())
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
