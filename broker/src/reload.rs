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
//! | `connections.max_connections`, `max_connections_per_address`, `max_pending` | at once for new sockets and CONNECTs; nothing open is closed (over a lowered cap, new ones are refused until enough end) |
//! | `limits.memory_limit_mb` | at once (over a lowered limit, new work is refused; nothing held is freed) |
//! | `limits.max_retained_messages`, `max_retained_bytes`, `max_subscriptions_per_client` | the router's next message; what is stored stays |
//! | `limits.max_topic_levels`, `max_topic_len` | every connection's next check |
//! | `limits.max_queued_messages`, `max_queued_bytes`, `session_expiry_secs` | sessions made (for the expiry: connected) from now on |
//! | `connections.server_reference`, `server_moved` | at once: the next busy refusal or shutdown DISCONNECT names the new server |
//! | the other keys of `[limits]` and `[connections]` | connections accepted from now on: each keeps the settings of its accept for its life (`connection::Origin::settings`), so what an MQTT 5 client was told in its CONNACK stays true; `shutdown_grace_ms` applies to the next shutdown |
//! | `limits.router_queue`, `shared_subscription_strategy`, `connections.max_connect_rate`, `tcp_nodelay`, `tcp_keepalive_secs`, `[storage]`, `[sys]`, `log.format`, the rest of `[auth]` | needs a restart (`warn` line naming each key or section, at every reload until the restart) |
//! | `[http]` (`bind`, `token`) | applied in place (see `crate::http`): a new `bind` is bound before the old one stops; one in use leaves the old (`error` line); the next request is checked against a new `token` |
//! | a `[[bridge]]` added, removed or changed (matched by `name`) | added: started; removed: stopped (DISCONNECT) and its local session discarded; changed: stopped and started again on the same local session (nothing queued or in flight is lost); unchanged: untouched (see `crate::bridge`) |
//!
//! Nothing connected is dropped by a reload.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{ListenerConfig, Settings};
use crate::connection::Context;
use crate::listener::{self, Endpoint};
use crate::router::{RouterLimits, RouterMsg};
use crate::server::Broker;

/// The `[limits]` keys a reload applies (see the module table): all but
/// `router_queue` (the router's channel is made once) and
/// `shared_subscription_strategy` (groups' positions belong to it).
const LIVE_LIMITS: &[&str] = &[
    "memory_limit_mb",
    "max_subscriptions_per_client",
    "max_topic_levels",
    "max_topic_len",
    "max_client_id_len",
    "max_retained_messages",
    "max_retained_bytes",
    "session_expiry_secs",
    "packet_read_timeout_ms",
    "max_queued_bytes",
    "max_packet_size",
    "max_connect_packet_size",
    "max_keepalive_secs",
    "max_inflight",
    "receive_maximum",
    "topic_alias_maximum",
    "max_queued_messages",
    "inbound_queue",
    "outbound_queue",
    "write_batch_bytes",
    "write_timeout_ms",
    "slow_subscriber_timeout_ms",
    "rest_after_ms",
    "shutdown_grace_ms",
];

/// The `[connections]` keys a reload applies: all but `max_connect_rate`,
/// which each listener's rate limiter took when it started, and the TCP
/// options, which Linux gives accepted sockets from their listener's, set
/// when it was bound.
const LIVE_CONNECTIONS: &[&str] = &[
    "max_connections",
    "connect_timeout_ms",
    "max_pending",
    "max_connections_per_address",
    "server_reference",
    "server_moved",
    "ws_max_frame_bytes",
];

/// The settings of the last reload, for what is read when it is used (a
/// CONNECT's checks, a socket's deadline). Locked only to swap or clone
/// the `Arc`, never on a per-packet path.
#[derive(Debug)]
pub struct Live(RwLock<Arc<Settings>>);

impl Live {
    pub fn new(settings: Settings) -> Live {
        Live(RwLock::new(Arc::new(settings)))
    }

    pub fn get(&self) -> Arc<Settings> {
        Arc::clone(
            &self
                .0
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    fn set(&self, settings: Settings) {
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(settings);
    }
}

/// Hands the reloadable limits to whoever enforces them.
async fn apply_limits(ctx: &Context, settings: &Settings) {
    ctx.gate.update(&settings.connections);
    ctx.budget.set_limit(settings.memory_limit_bytes());
    let limits = &settings.limits;
    ctx.registry
        .set_mailbox_limits(limits.max_queued_messages, limits.max_queued_bytes);
    ctx.registry.set_default_expiry(settings.session_expiry());
    let router_limits = RouterLimits::from_settings(settings);
    ctx.topic_caps.set(&router_limits);
    // The router only stops at shutdown, when limits no longer matter.
    let _ = ctx.router.send(RouterMsg::Limits(router_limits)).await;
    info!(
        max_connections = settings.connections.max_connections,
        memory_limit_mb = limits.memory_limit_mb,
        "SIGHUP: limits applied"
    );
}

/// The top-level fields of two values of one struct whose `{:#?}` differ,
/// by name.
fn changed_fields(old: &dyn std::fmt::Debug, new: &dyn std::fmt::Debug) -> Vec<String> {
    fn fields(value: &dyn std::fmt::Debug) -> Vec<(String, String)> {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in format!("{value:#?}").lines() {
            let top = line
                .strip_prefix("    ")
                .filter(|rest| !rest.starts_with(' '));
            match (
                top.and_then(|rest| rest.split_once(": ")),
                fields.last_mut(),
            ) {
                (Some((name, value)), _) => fields.push((name.to_owned(), value.to_owned())),
                (None, Some((_, value))) => value.push_str(line),
                (None, None) => {}
            }
        }
        fields
    }
    let old = fields(old);
    fields(new)
        .into_iter()
        .filter(|field| !old.contains(field))
        .map(|(name, _)| name)
        .collect()
}

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

/// The keys and sections whose changes need a restart, by name, when they
/// differ.
fn restart_needed(old: &Settings, new: &Settings) -> Vec<String> {
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
    let keys = |section: &str, old, new, live: &[&str]| {
        changed_fields(old, new)
            .into_iter()
            .filter(|key| !live.contains(&key.as_str()))
            .map(|key| format!("{section}.{key}"))
            .collect::<Vec<_>>()
    };
    let mut needed = keys("limits", &old.limits, &new.limits, LIVE_LIMITS);
    needed.extend(keys(
        "connections",
        &old.connections,
        &new.connections,
        LIVE_CONNECTIONS,
    ));
    let sections = [
        ("storage", differs(&old.storage, &new.storage)),
        ("sys", differs(&old.sys, &new.sys)),
        // The binary applies `log.level` itself (see main.rs).
        ("log.format", old.log.format != new.log.format),
        ("auth (takeover, login delays, hashing)", auth_rest),
    ]
    .into_iter()
    .filter(|&(_, changed)| changed)
    .map(|(name, _)| name.to_owned());
    needed.extend(sections);
    needed
}

impl Broker {
    /// Applies a new config as far as it can while running (see the module
    /// table); logs what it did and what needs a restart. Nothing connected
    /// is dropped.
    pub async fn reload(&self, settings: &Settings) {
        let ctx = self.context();
        // Live first: a listener added below, and every accept after
        // "limits applied", reads the new settings.
        ctx.live.set(settings.clone());
        let mut running = self.listeners().lock().await;
        let mut kept = Vec::new();
        // Listeners are matched by their configured address, in order, so
        // that several on port 0 (each bound to a port of its own) pair up
        // with their own configs rather than all with the first.
        let mut unclaimed: Vec<Option<&ListenerConfig>> =
            settings.listeners.iter().map(Some).collect();
        for current in running.drain(..) {
            let bind = current.endpoint.config.bind;
            let claimed = unclaimed
                .iter_mut()
                .find(|new| new.is_some_and(|new| new.bind == bind))
                .and_then(Option::take);
            match claimed {
                None => {
                    current.stop.cancel();
                    // The port is free once the accept loop has dropped its
                    // socket; only then is the removal true to log.
                    if let Err(error) = current.task.await {
                        warn!(addr = %current.addr, %error, "SIGHUP: a removed listener's accept loop failed");
                    }
                    info!(addr = %current.addr, "SIGHUP: listener removed; its connections stay");
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
        for new in unclaimed.into_iter().flatten() {
            match add(new, settings, ctx).await {
                Ok(started) => kept.push(started),
                Err(problem) => error!(bind = %new.bind, %problem, "SIGHUP: listener not added"),
            }
        }
        *running = kept;
        self.http().reload(&settings.http).await;
        // Against what runs: a change that needs a restart is named at
        // every reload until there is one.
        for section in restart_needed(&ctx.settings, settings) {
            warn!(%section, "SIGHUP: changed, but needs a restart to apply");
        }
        apply_limits(ctx, settings).await;
        self.bridges().reload(ctx, &settings.bridges).await;
    }
}

/// Binds and starts a listener a reload added.
async fn add(
    config: &ListenerConfig,
    settings: &Settings,
    ctx: &Arc<Context>,
) -> Result<Running, String> {
    let endpoint = Endpoint::new(config, settings).map_err(|e| e.to_string())?;
    let listener = listener::bind(config.bind, &settings.connections)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.bind))?;
    Running::start(listener, Arc::new(endpoint), ctx).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_is_named_per_key_for_limits_and_connections() {
        let old = Settings::defaults().unwrap();
        let mut new = old.clone();
        new.limits.router_queue += 1;
        new.limits.max_topic_levels += 1;
        new.limits.receive_maximum -= 1;
        new.connections.max_connections += 1;
        new.connections.max_connect_rate += 1;
        new.connections.tcp_nodelay = !old.connections.tcp_nodelay;
        new.connections.server_reference = "elsewhere:1883".to_owned();
        new.sys.interval_secs += 1;
        assert_eq!(
            restart_needed(&old, &new),
            [
                "limits.router_queue",
                "connections.tcp_nodelay",
                "connections.max_connect_rate",
                "sys"
            ]
        );
        assert!(restart_needed(&old, &old).is_empty());
    }
}
