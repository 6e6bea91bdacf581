//! Reloading the config on SIGHUP: what can change while the broker runs,
//! and the log line naming what cannot.
//!
//! | change                                         | on SIGHUP                      |
//! |------------------------------------------------|--------------------------------|
//! | a listener's certificates, password or ACL file (or `[auth]`'s) | loaded again; connections use the new ones at their next check; a file that does not load leaves the old ones in force (`error` line naming it) |
//! | `auth.allow_anonymous`, a listener's `allow_anonymous` | applies to new CONNECTs |
//! | a `[[listener]]` added                          | bound and accepting            |
//! | a `[[listener]]` removed                        | stops accepting; its connections stay |
//! | a listener's protocol, TLS on/off, path, rates, caps | needs a restart (`warn` line) |
//! | `log.level` (the `tidemq` binary, unless RUST_LOG or -v chose the filter) | the new filter at once |
//! | `[limits]`, `[connections]`, `[storage]`, `[sys]`, `log.format`, the rest of `[auth]` | needs a restart (`warn` line naming the section) |
//!
//! Nothing connected is dropped by a reload.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{ListenerConfig, Settings};
use crate::connection::Context;
use crate::listener::{self, Endpoint};
use crate::server::Broker;

/// One listener's accept loop, and how to stop it.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub endpoint: Arc<Endpoint>,
    pub stop: CancellationToken,
    pub task: JoinHandle<()>,
}

impl Running {
    /// Starts the accept loop of a bound listener.
    pub fn start(
        listener: TcpListener,
        endpoint: Arc<Endpoint>,
        ctx: &Arc<Context>,
    ) -> std::io::Result<Running> {
        let addr = listener.local_addr()?;
        let protocol = endpoint.config.protocol;
        let tls = endpoint.config.tls.is_some();
        info!(%addr, ?protocol, tls, "listening");
        let stop = ctx.shutdown.child_token();
        let task = listener::accept_loop(listener, endpoint.clone(), ctx.clone(), stop.clone());
        Ok(Running {
            addr,
            endpoint,
            stop,
            task: tokio::spawn(task),
        })
    }
}

/// A message per SIGHUP; nothing (the channel closes) where there are no
/// signals to listen to.
pub fn hangups() -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hangup) => {
                tokio::spawn(async move {
                    while hangup.recv().await.is_some() {
                        // One pending reload is enough.
                        let _ = tx.try_send(());
                    }
                });
            }
            Err(error) => warn!(%error, "cannot listen for SIGHUP: no reloads"),
        }
    }
    rx
}

/// Whether two configs of one address describe the same kind of listener
/// (everything but its files, which a reload loads again).
fn same_shape(old: &ListenerConfig, new: &ListenerConfig) -> bool {
    old.protocol == new.protocol
        && old.ws_path == new.ws_path
        && old.tls.is_some() == new.tls.is_some()
        && old.max_connections == new.max_connections
        && old.max_connect_rate == new.max_connect_rate
}

/// The sections whose changes need a restart, by name, when they differ.
fn restart_needed(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let (a, b) = (&old.auth, &new.auth);
    let auth_rest = (
        a.takeover,
        a.failed_login_delay_ms,
        a.failed_login_max_delay_ms,
    ) != (
        b.takeover,
        b.failed_login_delay_ms,
        b.failed_login_max_delay_ms,
    ) || a.max_concurrent_hashes != b.max_concurrent_hashes;
    [
        ("limits", differs(&old.limits, &new.limits)),
        ("connections", differs(&old.connections, &new.connections)),
        ("storage", differs(&old.storage, &new.storage)),
        ("sys", differs(&old.sys, &new.sys)),
        // The binary applies `log.level` itself (see main.rs).
        ("log.format", old.log.format != new.log.format),
        ("auth (takeover, login delays, hashing)", auth_rest),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}

impl Broker {
    /// Applies a new config as far as it can while running (see the module
    /// table); logs what it did and what needs a restart. Nothing connected
    /// is dropped.
    pub async fn reload(&self, settings: &Settings) {
        let ctx = self.context();
        let mut running = self.listeners().lock().await;
        let mut kept = Vec::new();
        for current in running.drain(..) {
            let bind = current.endpoint.config.bind;
            match settings.listeners.iter().find(|new| new.bind == bind) {
                None => {
                    info!(addr = %current.addr, "SIGHUP: listener removed; its connections stay");
                    current.stop.cancel();
                }
                Some(new) => {
                    if !same_shape(&current.endpoint.config, new) {
                        warn!(addr = %current.addr, "SIGHUP: this listener's protocol, TLS, path, rate or cap changed: needs a restart");
                    }
                    match current.endpoint.reload(new, settings) {
                        Ok(()) => info!(addr = %current.addr, "SIGHUP: listener files reloaded"),
                        Err(problem) => {
                            error!(addr = %current.addr, %problem, "SIGHUP: the old files stay in force")
                        }
                    }
                    kept.push(current);
                }
            }
        }
        for new in &settings.listeners {
            if kept.iter().any(|k| k.endpoint.config.bind == new.bind) {
                continue;
            }
            match add(new, settings, ctx).await {
                Ok(started) => kept.push(started),
                Err(problem) => error!(bind = %new.bind, %problem, "SIGHUP: listener not added"),
            }
        }
        *running = kept;
        for section in restart_needed(&ctx.settings, settings) {
            warn!(section, "SIGHUP: changed, but needs a restart to apply");
        }
    }
}

/// Binds and starts a listener a reload added.
async fn add(
    config: &ListenerConfig,
    settings: &Settings,
    ctx: &Arc<Context>,
) -> Result<Running, String> {
    let endpoint = Endpoint::new(config, settings).map_err(|e| e.to_string())?;
    let listener = listener::bind(config.bind, &ctx.settings.connections)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.bind))?;
    Running::start(listener, Arc::new(endpoint), ctx).map_err(|e| e.to_string())
}
