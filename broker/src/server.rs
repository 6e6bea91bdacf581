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
    #[error("{0}")]
    Listener(#[from] EndpointError),
}

impl StartError {
    /// The process exit code for this failure: 2 when the store's files
    /// are damaged or unreadable, or a listener's certificate, password or
    /// ACL file is bad (the operator must act), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Store(error) if !error.is_locked() => 2,
            StartError::Listener(_) => 2,
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
        for (listener, endpoint) in listeners {
            let addr = listener.local_addr().map_err(|source| StartError::Bind {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
            let protocol = endpoint.config.protocol;
            let tls = endpoint.tls.is_some();
            info!(%addr, ?protocol, tls, "listening");
            local_addrs.push(addr);
            let task = listener::accept_loop(listener, endpoint, ctx.clone());
            accept_loops.push(tokio::spawn(task));
        }
        Ok(Broker {
            ctx,
            local_addrs,
            accept_loops,
            router: router_task,
        })
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
