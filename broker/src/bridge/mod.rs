//! Bridges: each `[[bridge]]` is a connection to a remote broker that
//! carries messages both ways according to its `topics` lines (see
//! [`topics`]). [`Bridges`], owned by the server's `Broker`, holds the
//! running ones: `Broker::start` starts them, a SIGHUP reload
//! ([`Bridges::reload`]) stops and starts what changed, and the shutdown
//! token ends them all.
//!
//! | file        | owns                                                               |
//! |-------------|--------------------------------------------------------------------|
//! | `mod.rs`    | the running bridges by name: prepare, start, reload, stop          |
//! | `carry.rs`  | the bridge task: embedded session, deliveries in flight, loop guard, notifications |
//! | `remote.rs` | the remote task: the `rumqttc` event loop, reconnects, goodbye     |
//! | `tls.rs`    | the `tls` files loaded into `rumqttc`'s client configuration       |
//! | `topics.rs` | `topics` lines parsed, topics mapped between the two sides         |
//!
//! Two tasks per bridge. The *remote* task is the only owner of the
//! `rumqttc` event loop: it polls it, reconnects with exponential backoff,
//! subscribes the `in` filters after each CONNACK, and forwards what
//! matters to the *bridge* task over a bounded channel. The bridge task
//! owns the local side, an embedded session (see `crate::embed`)
//! subscribed with No Local to the `out` filters, and the deliveries in
//! flight to the remote; it alone publishes to the remote while the
//! connection runs, so packet ids come back in the order it handed
//! publishes over:
//!
//! | event                          | what the bridge task does                                   |
//! |--------------------------------|-------------------------------------------------------------|
//! | a local delivery (window open) | publish it to the remote, queue it as *unassigned*          |
//! | `Remote::Connected` (a CONNACK)| notification "1" here; "1" to the remote, queued as *unassigned* |
//! | `Remote::Lost`                 | notification "0" here                                       |
//! | `Remote::Sent(id)`, new        | the front *unassigned* publish is now in flight under `id`  |
//! | `Remote::Sent(id)`, known      | a resend after a reconnect: nothing                         |
//! | PUBACK / PUBCOMP `id`          | drop the delivery (the local acknowledgement), count it     |
//! | a remote PUBLISH               | route it locally, wait until routed, then acknowledge it    |
//!
//! `rumqttc` resends what was in flight after a reconnect, so a remote
//! restart loses nothing queued or in flight; at most [`WINDOW`] local
//! deliveries leave the mailbox before the remote acknowledges them.
//!
//! Notifications (mosquitto's, on by default): the connection state on
//! `$SYS/broker/connection/<client id>/state` (or `notification_topic`),
//! retained. On the remote: "1" at QoS 1 after each CONNACK, the will says
//! "0" when the connection drops without DISCONNECT, and a clean stop
//! publishes "0" before its DISCONNECT. Here: "1" after each CONNACK, "0"
//! when the connection is lost or the bridge stops.
//!
//! Loop guard: messages routed in are tagged with the embedded session's
//! client id, which the local No Local subscription skips, so nothing that
//! came in goes back out. What went out to a topic that is also bridged in
//! would come back from the remote (MQTT 3.1.1 has no No Local): the bridge
//! remembers (topic, payload hash) of what it sent for
//! [`carry::ECHO_WINDOW`] and drops the first copy that comes back.
//!
//! On SIGHUP, bridges are matched by `name`:
//!
//! | the `[[bridge]]` table | what [`Bridges::reload`] does                                 |
//! |------------------------|---------------------------------------------------------------|
//! | unchanged              | nothing: connection, session and queue untouched (its TLS files are not read again) |
//! | removed                | stops it: "0" and DISCONNECT to the remote, "0" here, its embedded session closed (what waited in its queue is dropped) |
//! | changed                | loads the new TLS files first (if they fail, the old bridge keeps running: `error` line); stops the old, starts the new |
//! | added                  | loads its TLS files (or `error` line) and starts it           |

mod carry;
mod remote;
mod tls;
mod topics;

use std::sync::Arc;
use std::time::Duration;

use rumqttc::TlsConfiguration;
use tidemq_protocol::SubscriptionOptions;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use tls::BridgeTlsError;
pub use topics::TopicRule;

use crate::config::BridgeConfig;
use crate::connection::Context;
use crate::embed::Subscription;

/// Local deliveries taken from the mailbox and not yet acknowledged by the
/// remote, at most.
pub const WINDOW: usize = 64;

/// Splits "host:port"; `None` when it is not that.
pub fn split_address(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse().ok()?;
    (!host.is_empty()).then(|| (host.trim_matches(['[', ']']).to_owned(), port))
}

/// Whether `name` can be a TLS server name (a DNS name or an IP address);
/// the error says why not.
pub fn server_name_is_valid(name: &str) -> Result<(), String> {
    rumqttc::tokio_rustls::rustls::pki_types::ServerName::try_from(name)
        .map(|_| ())
        .map_err(|error| format!("{name:?}: {error}"))
}

/// A bridge's config with its TLS files loaded: what a start needs.
pub(crate) struct Prepared {
    config: BridgeConfig,
    tls: Option<TlsConfiguration>,
}

impl Prepared {
    /// Loads the bridge's TLS files, if it has any.
    pub(crate) fn load(config: &BridgeConfig) -> Result<Prepared, BridgeTlsError> {
        let tls = match &config.tls {
            Some(files) => Some(tls::client_config(&config.name, files)?),
            None => None,
        };
        Ok(Prepared {
            config: config.clone(),
            tls,
        })
    }

    /// Loads every bridge's files; the first that fails names its file.
    pub(crate) fn load_all(configs: &[BridgeConfig]) -> Result<Vec<Prepared>, BridgeTlsError> {
        configs.iter().map(Prepared::load).collect()
    }
}

/// One running bridge, and how to stop it.
#[derive(Debug)]
struct Running {
    config: BridgeConfig,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The running bridges: started with the broker, changed by a reload. The
/// lock is held across a reload's stops and starts, so two reloads do not
/// interleave.
#[derive(Debug)]
pub(crate) struct Bridges {
    running: tokio::sync::Mutex<Vec<Running>>,
}

impl Bridges {
    /// Starts every prepared bridge. Their local subscriptions are in place
    /// when this returns, so every message published afterwards is bridged.
    pub(crate) async fn start(ctx: &Arc<Context>, prepared: Vec<Prepared>) -> Bridges {
        let mut running = Vec::new();
        for bridge in prepared {
            running.extend(start_one(ctx, bridge).await);
        }
        Bridges {
            running: tokio::sync::Mutex::new(running),
        }
    }

    /// Applies the `[[bridge]]` tables of a reloaded config (see the
    /// module's table). Returns once the stopped bridges have ended and the
    /// started ones have their local subscriptions.
    pub(crate) async fn reload(&self, ctx: &Arc<Context>, configs: &[BridgeConfig]) {
        let mut running = self.running.lock().await;
        let mut kept = Vec::new();
        let mut to_start = Vec::new();
        for current in running.drain(..) {
            let name = current.config.name.clone();
            match configs.iter().find(|new| new.name == name) {
                Some(new) if *new == current.config => kept.push(current),
                Some(new) => match Prepared::load(new) {
                    Ok(prepared) => {
                        info!(bridge = %name, "SIGHUP: bridge changed; restarting it");
                        stop_one(current, ctx.live.get().shutdown_grace()).await;
                        to_start.push(prepared);
                    }
                    Err(problem) => {
                        error!(bridge = %name, %problem, "SIGHUP: the changed bridge does not load; the old one keeps running");
                        kept.push(current);
                    }
                },
                None => {
                    info!(bridge = %name, "SIGHUP: bridge removed; stopping it");
                    stop_one(current, ctx.live.get().shutdown_grace()).await;
                }
            }
        }
        for new in configs {
            let known = |bridge: &Running| bridge.config.name == new.name;
            if kept.iter().any(known) || to_start.iter().any(|p| p.config.name == new.name) {
                continue;
            }
            match Prepared::load(new) {
                Ok(prepared) => {
                    info!(bridge = %new.name, "SIGHUP: bridge added");
                    to_start.push(prepared);
                }
                Err(problem) => error!(bridge = %new.name, %problem, "SIGHUP: bridge not added"),
            }
        }
        for prepared in to_start {
            kept.extend(start_one(ctx, prepared).await);
        }
        *running = kept;
    }

    /// Stops every bridge and waits for each up to `grace`.
    pub(crate) async fn stop(self, grace: Duration) {
        for bridge in self.running.into_inner() {
            stop_one(bridge, grace).await;
        }
    }
}

/// Opens the bridge's embedded session and spawns its bridge task.
async fn start_one(ctx: &Arc<Context>, prepared: Prepared) -> Option<Running> {
    let local = subscribe_locally(ctx, &prepared.config).await?;
    let config = prepared.config.clone();
    let stop = ctx.shutdown.child_token();
    let task = tokio::spawn(carry::run(ctx.clone(), prepared, local, stop.clone()));
    Some(Running { config, stop, task })
}

/// Stops a bridge and waits for its goodbye, at most `grace`; past it the
/// task is aborted, so a new bridge under the same client id does not
/// meet the old one on the remote.
async fn stop_one(bridge: Running, grace: Duration) {
    bridge.stop.cancel();
    let abort = bridge.task.abort_handle();
    if tokio::time::timeout(grace, bridge.task).await.is_err() {
        warn!(bridge = %bridge.config.name, "a bridge did not stop within the grace period");
        abort.abort();
    }
}

/// The bridge's embedded session, subscribed with No Local to every
/// `out` filter.
async fn subscribe_locally(ctx: &Arc<Context>, config: &BridgeConfig) -> Option<Subscription> {
    let name = &config.name;
    let mut local = match Subscription::open_internal(ctx).await {
        Ok(local) => local,
        Err(error) => {
            warn!(bridge = %name, %error, "bridge: no local session");
            return None;
        }
    };
    let rules = config
        .topics
        .iter()
        .filter_map(|line| TopicRule::parse(line).ok());
    for rule in rules.filter(|rule| rule.direction.carries_out()) {
        let options = SubscriptionOptions {
            no_local: true,
            ..SubscriptionOptions::qos(rule.qos)
        };
        if let Err(error) = local.subscribe_with(&rule.local_filter, options).await {
            warn!(bridge = %name, filter = %rule.local_filter, %error, "bridge: local subscription refused");
        }
    }
    Some(local)
}

#[cfg(test)]
mod tests {
    use super::{server_name_is_valid, split_address};

    #[test]
    fn addresses_are_host_colon_port() {
        assert_eq!(
            split_address("127.0.0.1:1883"),
            Some(("127.0.0.1".into(), 1883))
        );
        assert_eq!(split_address("[::1]:1883"), Some(("::1".into(), 1883)));
        assert_eq!(split_address("host"), None);
        assert_eq!(split_address(":1883"), None);
        assert_eq!(split_address("host:port"), None);
    }

    #[test]
    fn server_names_are_dns_names_or_addresses() {
        assert!(server_name_is_valid("hq.example").is_ok());
        assert!(server_name_is_valid("127.0.0.1").is_ok());
        assert!(server_name_is_valid("::1").is_ok());
        assert!(server_name_is_valid("not a name").is_err());
    }
}
