//! A bridge's bridge task: the local side of one bridge. It owns the
//! embedded session subscribed to the `out` filters, the deliveries in
//! flight to the remote, the echo memory of the loop guard and the
//! connection-state notifications; it is the only caller of the `rumqttc`
//! client's publish, so the order in which publishes are handed over is the
//! order in which their packet ids come back (see the table in `mod.rs`).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::AsyncClient;
use tidemq_protocol::QoS;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::remote::{self, Remote, RemoteTask};
use super::{Prepared, TopicRule, WINDOW};
use crate::connection::Context;
use crate::embed::Subscription;
use crate::metrics::Metrics;
use crate::types::{ClientId, Delivery};

/// Capacity of the request channel to the event loop: the window plus the
/// acknowledgements and subscriptions that may wait beside it.
const REQUEST_CAPACITY: usize = 256;
/// Capacity of the channel from the remote task to the bridge task.
const EVENT_CAPACITY: usize = 64;
/// How long a message sent out is remembered, to drop its echo.
pub const ECHO_WINDOW: Duration = Duration::from_secs(30);
/// Echo entries kept at most (the oldest go first).
const ECHO_MAX: usize = 4096;

/// A publish handed to the client whose packet id is not known yet.
enum Unassigned {
    /// QoS 0: done once written.
    AtMostOnce,
    /// QoS 1/2: held until the remote acknowledges it.
    Delivery(Delivery),
    /// The "1" of the connection-state notification: nothing to count.
    Notification,
}

/// Runs one bridge until `stop` (or the broker's shutdown) ends it; then
/// the remote says goodbye, "0" is published here if "1" was, and the
/// embedded session is closed.
pub(super) async fn run(
    ctx: Arc<Context>,
    prepared: Prepared,
    mut local: Subscription,
    stop: CancellationToken,
) {
    let Prepared { config, tls } = prepared;
    // Validated with the config: a line that does not parse is not there.
    let rules: Vec<TopicRule> = config
        .topics
        .iter()
        .filter_map(|line| TopicRule::parse(line).ok())
        .collect();
    let Some(options) = remote::options(&config, tls, ctx.live.get().limits.max_packet_size) else {
        local.close().await;
        return;
    };
    let origin = ClientId::new(local.client_id());
    let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
    let filters: Vec<rumqttc::SubscribeFilter> = rules
        .iter()
        .filter(|rule| rule.direction.carries_in())
        .map(|rule| rumqttc::SubscribeFilter::new(rule.remote_filter.clone(), to_remote(rule.qos)))
        .collect();
    let remote_stop = stop.child_token();
    let (events_tx, mut events) = mpsc::channel(EVENT_CAPACITY);
    let remote = tokio::spawn(
        RemoteTask {
            eventloop,
            client: client.clone(),
            filters,
            config: config.clone(),
            events: events_tx,
            stop: remote_stop.clone(),
            metrics: ctx.metrics.clone(),
        }
        .run(),
    );

    let mut bridge = Bridge {
        ctx: ctx.clone(),
        client,
        rules,
        origin,
        name: config.name.clone(),
        notification: config.notification_topic(),
        announced: false,
        unassigned: VecDeque::new(),
        in_flight: HashMap::new(),
        echoes: VecDeque::new(),
    };
    loop {
        let room = bridge.unassigned.len() + bridge.in_flight.len() < WINDOW;
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
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
    remote_stop.cancel();
    // A remote task waiting for room in the channel sees it closed.
    drop(events);
    let _ = remote.await;
    bridge.announce_locally(false).await;
    local.close().await;
}

/// The bridge task's state (see the table in `mod.rs`).
struct Bridge {
    ctx: Arc<Context>,
    client: AsyncClient,
    rules: Vec<TopicRule>,
    /// The local session's client id, on every message routed in.
    origin: ClientId,
    name: String,
    /// Where the connection state goes; `None` without notifications.
    notification: Option<String>,
    /// "1" is the local retained state.
    announced: bool,
    /// Handed to the client, no packet id seen yet, in that order.
    unassigned: VecDeque<Unassigned>,
    /// Awaiting the remote's acknowledgement, by packet id; `None` for the
    /// notification.
    in_flight: HashMap<u16, Option<Delivery>>,
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
        self.remember_if_bridged_in(&remote_topic, &payload);
        let retain = delivery.message.retain;
        let sent = self
            .client
            .publish_bytes(remote_topic, to_remote(qos), retain, payload)
            .await;
        if sent.is_err() {
            return; // the event loop is gone: stopping
        }
        self.unassigned.push_back(match qos {
            QoS::AtMostOnce => Unassigned::AtMostOnce,
            _ => Unassigned::Delivery(delivery),
        });
    }

    async fn handle_remote(&mut self, event: Remote) {
        match event {
            Remote::Connected => self.connected().await,
            Remote::Lost => self.announce_locally(false).await,
            Remote::Sent(id) if id != 0 && self.in_flight.contains_key(&id) => {}
            Remote::Sent(id) => match self.unassigned.pop_front() {
                Some(Unassigned::Delivery(delivery)) => {
                    self.in_flight.insert(id, Some(delivery));
                }
                Some(Unassigned::Notification) => {
                    self.in_flight.insert(id, None);
                }
                Some(Unassigned::AtMostOnce) => {
                    Metrics::incr(&self.ctx.metrics.bridge_messages_out)
                }
                None => {}
            },
            Remote::Acked(id) => {
                // Dropping the delivery is the local acknowledgement.
                if let Some(Some(_)) = self.in_flight.remove(&id) {
                    Metrics::incr(&self.ctx.metrics.bridge_messages_out);
                }
            }
            Remote::Publish(publish) => self.bring_in(publish).await,
        }
    }

    /// After each CONNACK: "1", retained, on the remote at QoS 1 (its will
    /// says "0") and here.
    async fn connected(&mut self) {
        let Some(topic) = self.notification.clone() else {
            return;
        };
        self.announce_locally(true).await;
        self.remember_if_bridged_in(&topic, b"1");
        let sent = self
            .client
            .publish(topic, rumqttc::QoS::AtLeastOnce, true, "1")
            .await;
        if sent.is_ok() {
            self.unassigned.push_back(Unassigned::Notification);
        }
    }

    /// Publishes the connection state here, retained, at QoS 0 as `$SYS`
    /// is; "0" only after a "1". Tagged as the bridge's own, so an `out`
    /// line does not carry it to the remote (which has its own).
    async fn announce_locally(&mut self, up: bool) {
        let Some(topic) = &self.notification else {
            return;
        };
        if up == self.announced {
            return;
        }
        self.announced = up;
        let payload = Bytes::from_static(if up { b"1" } else { b"0" });
        let published = crate::embed::publish_from(
            &self.ctx,
            topic,
            payload,
            QoS::AtMostOnce,
            true,
            Some(self.origin.clone()),
        )
        .await;
        if let Err(error) = published {
            warn!(bridge = %self.name, %topic, %error, "bridge: notification not published here");
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

    /// What goes out on a topic that is also bridged in comes back: its
    /// first copy is dropped.
    fn remember_if_bridged_in(&mut self, remote_topic: &str, payload: &[u8]) {
        if !self
            .rules
            .iter()
            .any(|rule| rule.incoming(remote_topic).is_some())
        {
            return;
        }
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
            .push_back((remote_topic.to_owned(), payload_hash(payload), now));
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
