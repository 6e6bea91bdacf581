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
//! | `carry.rs`  | the bridge task: local session (resumed, parked), deliveries in flight, loop guard, notifications |
//! | `remote.rs` | the remote task: the `rumqttc` event loop, reconnects, goodbye     |
//! | `tls.rs`    | the `tls` files loaded into `rumqttc`'s client configuration       |
//! | `topics.rs` | `topics` lines parsed, topics mapped between the two sides         |
//!
//! Two tasks per bridge. The *remote* task is the only owner of the
//! `rumqttc` event loop: it polls it, reconnects with exponential backoff,
//! subscribes the `in` filters after each CONNACK, and forwards what
//! matters to the *bridge* task over a bounded channel. The bridge task
//! owns the local side while it runs: the bridge's local session (see
//! `crate::embed`), `$embedded-bridge/<name>`, subscribed with No Local to
//! the `out` filters, and the deliveries in flight to the remote; it alone
//! publishes to the remote while the connection runs, so packet ids come
//! back in the order it handed publishes over:
//!
//! | event                          | what the bridge task does                                   |
//! |--------------------------------|-------------------------------------------------------------|
//! | a local delivery (window open) | publish it to the remote, queue it as *unassigned*          |
//! | `Remote::Connected` (a CONNACK)| notification "1" here; "1" to the remote, queued as *unassigned* |
//! | `Remote::Lost`                 | notification "0" here                                       |
//! | `Remote::Sent(id)`, new        | the front *unassigned* publish is now in flight under `id`  |
//! | `Remote::Sent(id)`, known      | a resend after a reconnect: nothing                         |
//! | PUBACK / PUBCOMP `id`          | drop the delivery (the local acknowledgement; with a store, written done), count it |
//! | a remote PUBLISH               | route it locally, wait until routed, then acknowledge it    |
//! | stop (or a claim of the session) | goodbye (what is acknowledged meanwhile still counts); park the session with the deliveries not acknowledged, in flight first |
//!
//! `rumqttc` resends what was in flight after a reconnect, so a remote
//! restart loses nothing queued or in flight; at most `max_inflight` local
//! deliveries leave the mailbox before the remote acknowledges them.
//!
//! The local session is persistent, under a client id named after the
//! bridge, so QoS 1/2 messages already acknowledged to their publishers
//! outlive the bridge task, as a persistent client's do its connection:
//!
//! | what happens                         | what survives                                          |
//! |--------------------------------------|--------------------------------------------------------|
//! | the remote restarts, the link drops  | everything: the task runs on; `rumqttc` resends its window |
//! | a reload changes the bridge          | the session, parked by the old task (its subscriptions, its queue, the window not acknowledged in front of it, in sending order) and resumed by the new, which sends the window first |
//! | a reload removes the bridge          | nothing: the session is discarded (what was queued for it is dropped) |
//! | a restart, `storage.enabled`         | its subscriptions and QoS 1/2 deliveries not acknowledged by the remote, from the store (written as a persistent client's are, done when the remote acknowledges) |
//! | a restart without a store            | nothing                                                |
//! | a restart without the bridge in the config | nothing: the recovered session is discarded at start |
//!
//! QoS 0 is dropped while the session is offline, as for any session. A
//! message resent after a reload or a restart goes out under a new packet
//! id: QoS 1 and 2 alike may arrive twice at the remote then.
//!
//! Notifications (mosquitto's, on by default): the connection state on
//! `$SYS/broker/connection/<client id>/state` (or `notification_topic`),
//! retained. On the remote: "1" at QoS 1 after each CONNACK, the will says
//! "0" when the connection drops without DISCONNECT, and a clean stop
//! publishes "0" before its DISCONNECT. Here: "1" after each CONNACK, "0"
//! when the connection is lost or the bridge stops.
//!
//! Loop guard: messages routed in are tagged with the local session's
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
//! | removed                | stops it: "0" and DISCONNECT to the remote, "0" here, its local session discarded (what waited in its queue is dropped) |
//! | changed                | loads the new TLS files first (if they fail, the old bridge keeps running: `error` line); stops the old (its session parked), starts the new (resuming it, subscribed to the new `out` filters only) |
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
use crate::embed::{self, Subscription};
use crate::types::Delivery;

/// The highest `max_inflight` a bridge may have: local deliveries taken
/// from the mailbox and not yet acknowledged by the remote.
pub const MAX_INFLIGHT: u16 = 100;

/// Splits "host:port"; `None` when it is not that.
pub fn split_address(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse().ok()?;
    (!host.is_empty()).then(|| (host.trim_matches(['[', ']']).to_owned(), port))
}

/// A bridge's `address`: one or more "host:port", separated by spaces as
/// in mosquitto's `address` line; `None` when one is not "host:port" or
/// there is none.
pub fn split_addresses(addresses: &str) -> Option<Vec<(String, u16)>> {
    let split: Option<Vec<_>> = addresses.split_whitespace().map(split_address).collect();
    split.filter(|list| !list.is_empty())
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
    /// `config.topics`, parsed once (validated with the config: a line that
    /// does not parse is not there).
    rules: Vec<TopicRule>,
}

impl Prepared {
    /// Loads the bridge's TLS files, if it has any.
    pub(crate) fn load(config: &BridgeConfig) -> Result<Prepared, BridgeTlsError> {
        let tls = match &config.tls {
            Some(files) => Some(tls::client_config(&config.name, files)?),
            None => None,
        };
        let rules = config
            .topics
            .iter()
            .filter_map(|line| TopicRule::parse(line).ok())
            .collect();
        Ok(Prepared {
            config: config.clone(),
            tls,
            rules,
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
    /// The sessions the store recovered for bridges no longer configured
    /// are discarded first.
    pub(crate) async fn start(ctx: &Arc<Context>, prepared: Vec<Prepared>) -> Bridges {
        for name in embed::bridge_sessions(ctx) {
            if !prepared.iter().any(|bridge| bridge.config.name == name) {
                info!(bridge = %name, "the session of a bridge no longer configured is discarded");
                embed::discard_bridge(ctx, &name).await;
            }
        }
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
                    info!(bridge = %name, "SIGHUP: bridge removed; stopping it and discarding its session");
                    remove_one(ctx, current).await;
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

/// Opens (or resumes) the bridge's local session and spawns its bridge
/// task.
async fn start_one(ctx: &Arc<Context>, prepared: Prepared) -> Option<Running> {
    let (local, unacked) = open_locally(ctx, &prepared.config.name, &prepared.rules).await?;
    let config = prepared.config.clone();
    let stop = ctx.shutdown.child_token();
    let local = carry::Local { local, unacked };
    let task = tokio::spawn(carry::run(ctx.clone(), prepared, local, stop.clone()));
    Some(Running { config, stop, task })
}

/// Stops a bridge and waits for its goodbye, at most `grace`; past it the
/// task is aborted, so a new bridge under the same client id does not
/// meet the old one on the remote (what it had in flight is then lost
/// here, but still in the store).
async fn stop_one(bridge: Running, grace: Duration) {
    bridge.stop.cancel();
    let abort = bridge.task.abort_handle();
    if tokio::time::timeout(grace, bridge.task).await.is_err() {
        warn!(bridge = %bridge.config.name, "a bridge did not stop within the grace period");
        abort.abort();
    }
}

/// Stops a removed bridge and ends its local session for good.
async fn remove_one(ctx: &Arc<Context>, bridge: Running) {
    let name = bridge.config.name.clone();
    stop_one(bridge, ctx.live.get().shutdown_grace()).await;
    embed::discard_bridge(ctx, &name).await;
}

/// The bridge's local session (`$embedded-bridge/<name>`), made or resumed,
/// subscribed with No Local to every `out` filter and to nothing else;
/// with what it had in flight when it was parked.
async fn open_locally(
    ctx: &Arc<Context>,
    name: &str,
    rules: &[TopicRule],
) -> Option<(Subscription, Vec<Delivery>)> {
    let (mut local, unacked) = match Subscription::open_bridge(ctx, name).await {
        Ok(opened) => opened,
        Err(error) => {
            warn!(bridge = %name, %error, "bridge: no local session");
            return None;
        }
    };
    let rules = rules.iter().filter(|rule| rule.direction.carries_out());
    for rule in rules.clone() {
        let options = SubscriptionOptions {
            no_local: true,
            ..SubscriptionOptions::qos(rule.qos)
        };
        if let Err(error) = local.subscribe_with(&rule.local_filter, options).await {
            warn!(bridge = %name, filter = %rule.local_filter, %error, "bridge: local subscription refused");
        }
    }
    // A resumed session may hold the filters of lines since removed.
    let keep: Vec<String> = rules.map(|rule| rule.local_filter.clone()).collect();
    if let Err(error) = local.unsubscribe_all_but(&keep).await {
        warn!(bridge = %name, %error, "bridge: old local subscriptions not removed");
    }
    Some((local, unacked))
}

#[cfg(test)]
mod tests {
    use super::{server_name_is_valid, split_address, split_addresses};

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
        assert_eq!(
            split_addresses(" a:1  [::1]:2 "),
            Some(vec![("a".into(), 1), ("::1".into(), 2)])
        );
        assert_eq!(split_addresses("a:1 b"), None);
        assert_eq!(split_addresses("  "), None);
    }

    #[test]
    fn server_names_are_dns_names_or_addresses() {
        assert!(server_name_is_valid("hq.example").is_ok());
        assert!(server_name_is_valid("127.0.0.1").is_ok());
        assert!(server_name_is_valid("::1").is_ok());
        assert!(server_name_is_valid("not a name").is_err());
    }
}
