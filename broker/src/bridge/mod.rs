//! Bridges: each `[[bridge]]` is a connection to a remote broker that
//! carries messages both ways according to its `topics` lines (see
//! [`topics`]). Started by `Broker::start`, ended by the shutdown token.
//!
//! Two tasks per bridge. The *remote* task is the only owner of the
//! `rumqttc` event loop: it polls it (never raced against anything but
//! the shutdown token, as `poll` is not cancel-safe), reconnects with
//! exponential backoff, subscribes the `in` filters after each CONNACK,
//! and forwards what matters to the *bridge* task over a bounded channel.
//! The bridge task owns the local side, an embedded session (see
//! `crate::embed`) subscribed with No Local to the `out` filters, and the
//! deliveries in flight to the remote:
//!
//! | event                         | what the bridge task does                                   |
//! |-------------------------------|-------------------------------------------------------------|
//! | a local delivery (window open) | publish it to the remote, queue it as *unassigned*          |
//! | `Outgoing::Publish(id)`, new   | the front *unassigned* delivery is now in flight under `id` |
//! | `Outgoing::Publish(id)`, known | a resend after a reconnect: nothing                          |
//! | PUBACK / PUBCOMP `id`          | drop the delivery (the local acknowledgement), count it     |
//! | a remote PUBLISH               | route it locally, wait until routed, then acknowledge it    |
//!
//! `rumqttc` resends what was in flight after a reconnect, so a remote
//! restart loses nothing queued or in flight; at most [`WINDOW`] local
//! deliveries leave the mailbox before the remote acknowledges them.
//!
//! Loop guard: messages routed in are tagged with the embedded session's
//! client id, which the local No Local subscription skips, so nothing that
//! came in goes back out. What went out to a topic that is also bridged in
//! would come back from the remote (MQTT 3.1.1 has no No Local): the bridge
//! remembers (topic, payload hash) of what it sent for [`ECHO_WINDOW`] and
//! drops the first copy that comes back.

mod topics;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet};
use tidemq_protocol::{QoS, SubscriptionOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use topics::TopicRule;

use crate::config::BridgeConfig;
use crate::connection::Context;
use crate::embed::Subscription;
use crate::metrics::Metrics;
use crate::types::{ClientId, Delivery};

/// Local deliveries taken from the mailbox and not yet acknowledged by the
/// remote, at most.
pub const WINDOW: usize = 64;
/// `rumqttc`'s in-flight limit and packet id range: above [`WINDOW`], so a
/// new publish never waits for an id while acknowledgements come in order.
const REMOTE_INFLIGHT: u16 = 100;
/// Capacity of the request channel to the event loop: the window plus the
/// acknowledgements and subscriptions that may wait beside it.
const REQUEST_CAPACITY: usize = 256;
/// Capacity of the channel from the remote task to the bridge task.
const EVENT_CAPACITY: usize = 64;
/// How long a message sent out is remembered, to drop its echo.
pub const ECHO_WINDOW: Duration = Duration::from_secs(30);
/// Echo entries kept at most (the oldest go first).
const ECHO_MAX: usize = 4096;
/// Keepalive on the remote connection.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Splits "host:port"; `None` when it is not that.
pub fn split_address(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse().ok()?;
    (!host.is_empty()).then(|| (host.trim_matches(['[', ']']).to_owned(), port))
}

/// Starts every `[[bridge]]`; each task ends with the shutdown token. The
/// local subscriptions are in place when this returns, so every message
/// published afterwards is bridged.
pub(crate) async fn start(ctx: &Arc<Context>) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for config in &ctx.settings.bridges {
        let Some(local) = subscribe_locally(ctx, config).await else {
            continue;
        };
        tasks.push(tokio::spawn(run(ctx.clone(), config.clone(), local)));
    }
    tasks
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

/// What the remote task tells the bridge task.
#[derive(Debug)]
enum Remote {
    Publish(rumqttc::Publish),
    /// A PUBLISH written with this packet id (0 for QoS 0).
    Sent(u16),
    /// The remote's PUBACK or PUBCOMP.
    Acked(u16),
}

async fn run(ctx: Arc<Context>, config: BridgeConfig, mut local: Subscription) {
    let name = config.name.clone();
    // Validated with the config: a line that does not parse is not there.
    let rules: Vec<TopicRule> = config
        .topics
        .iter()
        .filter_map(|line| TopicRule::parse(line).ok())
        .collect();
    let Some((host, port)) = split_address(&config.address) else {
        return;
    };
    let origin = ClientId::new(local.client_id());

    let mut options = MqttOptions::new(config.remote_client_id(), host, port);
    options
        .set_clean_session(config.clean_session)
        .set_manual_acks(true)
        .set_inflight(REMOTE_INFLIGHT)
        .set_keep_alive(KEEP_ALIVE)
        // `rumqttc`'s default is 10 KiB: a larger local message would fail
        // its connection over and over. Both ways: what this broker takes.
        .set_max_packet_size(
            ctx.settings.limits.max_packet_size,
            ctx.settings.limits.max_packet_size,
        );
    if let Some(username) = &config.username {
        options.set_credentials(username, config.password.clone().unwrap_or_default());
    }
    let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
    let filters: Vec<rumqttc::SubscribeFilter> = rules
        .iter()
        .filter(|rule| rule.direction.carries_in())
        .map(|rule| rumqttc::SubscribeFilter::new(rule.remote_filter.clone(), to_remote(rule.qos)))
        .collect();
    let token = ctx.shutdown.child_token();
    let (events_tx, mut events) = mpsc::channel(EVENT_CAPACITY);
    let remote = tokio::spawn(drive(
        eventloop,
        client.clone(),
        filters,
        config.clone(),
        events_tx,
        token.clone(),
        ctx.metrics.clone(),
    ));

    let mut bridge = Bridge {
        ctx: ctx.clone(),
        client,
        rules,
        origin,
        name,
        unassigned: VecDeque::new(),
        in_flight: HashMap::new(),
        echoes: VecDeque::new(),
    };
    loop {
        let room = bridge.unassigned.len() + bridge.in_flight.len() < WINDOW;
        tokio::select! {
            biased;
            _ = token.cancelled() => break,
            event = events.recv() => match event {
                Some(event) => bridge.handle_remote(event).await,
                None => break,
            },
            delivery = local.recv_delivery(), if room => match delivery {
                Some(delivery) => bridge.send_out(delivery).await,
                None => break,
            },
        }
    }
    token.cancel();
    let _ = remote.await;
    local.close().await;
}

/// The bridge task's state (see the module's table).
struct Bridge {
    ctx: Arc<Context>,
    client: AsyncClient,
    rules: Vec<TopicRule>,
    /// The local session's client id, on every message routed in.
    origin: ClientId,
    name: String,
    /// Published to the client, no packet id seen yet; `None` for QoS 0.
    unassigned: VecDeque<Option<Delivery>>,
    /// Awaiting the remote's acknowledgement, by packet id.
    in_flight: HashMap<u16, Delivery>,
    /// (remote topic, payload hash, when) of what went out.
    echoes: VecDeque<(String, u64, Instant)>,
}

impl Bridge {
    async fn send_out(&mut self, delivery: Delivery) {
        let topic = delivery.message.topic.as_str();
        let Some((rule, remote_topic)) = self
            .rules
            .iter()
            .find_map(|rule| rule.outgoing(topic).map(|remote| (rule, remote)))
        else {
            return;
        };
        let qos = delivery.qos.min(rule.qos);
        let payload = delivery.message.payload.clone();
        if self
            .rules
            .iter()
            .any(|rule| rule.incoming(&remote_topic).is_some())
        {
            self.remember_echo(&remote_topic, &payload);
        }
        let retain = delivery.message.retain;
        let sent = self
            .client
            .publish_bytes(remote_topic, to_remote(qos), retain, payload)
            .await;
        if sent.is_err() {
            return; // the event loop is gone: shutting down
        }
        self.unassigned
            .push_back((qos != QoS::AtMostOnce).then_some(delivery));
    }

    async fn handle_remote(&mut self, event: Remote) {
        match event {
            Remote::Sent(id) if id != 0 && self.in_flight.contains_key(&id) => {}
            Remote::Sent(id) => match self.unassigned.pop_front() {
                Some(Some(delivery)) => {
                    self.in_flight.insert(id, delivery);
                }
                Some(None) => Metrics::incr(&self.ctx.metrics.bridge_messages_out),
                None => {}
            },
            Remote::Acked(id) => {
                // Dropping the delivery is the local acknowledgement.
                if self.in_flight.remove(&id).is_some() {
                    Metrics::incr(&self.ctx.metrics.bridge_messages_out);
                }
            }
            Remote::Publish(publish) => self.bring_in(publish).await,
        }
    }

    /// Routes a remote message locally, then acknowledges it to the remote.
    async fn bring_in(&mut self, publish: rumqttc::Publish) {
        let topic = publish.topic.clone();
        let local = self.rules.iter().find_map(|rule| {
            let local = rule.incoming(&topic)?;
            Some((local, rule.qos))
        });
        if let Some((local_topic, rule_qos)) = local {
            if self.take_echo(&topic, &publish.payload) {
                debug!(bridge = %self.name, %topic, "bridge: dropped our own message coming back");
            } else {
                let qos = from_remote(publish.qos).min(rule_qos);
                let routed = crate::embed::publish_from(
                    &self.ctx,
                    &local_topic,
                    publish.payload.clone(),
                    qos,
                    publish.retain,
                    Some(self.origin.clone()),
                )
                .await;
                match routed {
                    Ok(()) => Metrics::incr(&self.ctx.metrics.bridge_messages_in),
                    // Not acknowledged: the remote sends it again.
                    Err(crate::embed::EmbedError::Stopped) => return,
                    Err(error) => {
                        warn!(bridge = %self.name, %topic, %error, "bridge: message from the remote dropped");
                    }
                }
            }
        }
        let _ = self.client.ack(&publish).await;
    }

    fn remember_echo(&mut self, topic: &str, payload: &Bytes) {
        let now = Instant::now();
        while self
            .echoes
            .front()
            .is_some_and(|(_, _, at)| now.duration_since(*at) > ECHO_WINDOW)
            || self.echoes.len() >= ECHO_MAX
        {
            self.echoes.pop_front();
        }
        self.echoes
            .push_back((topic.to_owned(), payload_hash(payload), now));
    }

    fn take_echo(&mut self, topic: &str, payload: &Bytes) -> bool {
        let hash = payload_hash(payload);
        let now = Instant::now();
        let found = self.echoes.iter().position(|(t, h, at)| {
            t == topic && *h == hash && now.duration_since(*at) <= ECHO_WINDOW
        });
        found.and_then(|at| self.echoes.remove(at)).is_some()
    }
}

fn payload_hash(payload: &[u8]) -> u64 {
    let mut hasher = foldhash::fast::FixedState::with_seed(0).build_hasher();
    hasher.write(payload);
    hasher.finish()
}

/// The remote task: polls the event loop, reconnects with backoff.
async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    filters: Vec<rumqttc::SubscribeFilter>,
    config: BridgeConfig,
    events: mpsc::Sender<Remote>,
    token: CancellationToken,
    metrics: Arc<Metrics>,
) {
    let min = Duration::from_millis(config.reconnect_min_ms);
    let max = Duration::from_millis(config.reconnect_max_ms);
    let mut delay = min;
    let mut connected = false;
    let mut ever_connected = false;
    loop {
        let polled = tokio::select! {
            _ = token.cancelled() => break,
            polled = eventloop.poll() => polled,
        };
        let event = match polled {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                info!(bridge = %config.name, address = %config.address, session_present = connack.session_present, "bridge connected");
                if ever_connected {
                    Metrics::incr(&metrics.bridge_reconnects);
                }
                (connected, ever_connected, delay) = (true, true, min);
                if !filters.is_empty() {
                    if let Err(error) = client.try_subscribe_many(filters.clone()) {
                        warn!(bridge = %config.name, %error, "bridge: cannot subscribe on the remote");
                    }
                }
                continue;
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => Remote::Publish(publish),
            Ok(Event::Incoming(Packet::PubAck(ack))) => Remote::Acked(ack.pkid),
            Ok(Event::Incoming(Packet::PubComp(comp))) => Remote::Acked(comp.pkid),
            Ok(Event::Outgoing(Outgoing::Publish(id))) => Remote::Sent(id),
            Ok(_) => continue,
            Err(error) => {
                if connected {
                    info!(bridge = %config.name, address = %config.address, %error, "bridge disconnected");
                } else {
                    debug!(bridge = %config.name, %error, "bridge: cannot connect");
                }
                connected = false;
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(max);
                continue;
            }
        };
        if events.send(event).await.is_err() {
            break;
        }
    }
    if connected {
        let _ = client.try_disconnect();
        // Lets the DISCONNECT out, briefly.
        let _ = tokio::time::timeout(Duration::from_millis(100), eventloop.poll()).await;
    }
}

fn to_remote(qos: QoS) -> rumqttc::QoS {
    match qos {
        QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
    }
}

fn from_remote(qos: rumqttc::QoS) -> QoS {
    match qos {
        rumqttc::QoS::AtMostOnce => QoS::AtMostOnce,
        rumqttc::QoS::AtLeastOnce => QoS::AtLeastOnce,
        rumqttc::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

#[cfg(test)]
mod tests {
    use super::split_address;

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
}
