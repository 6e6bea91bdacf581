//! A bridge's bridge task: the local side of one bridge. It owns the
//! bridge's local session (subscribed to the `out` filters) while it runs,
//! the deliveries in flight to the remote, the echo memory of the loop
//! guard and the connection-state notifications; it is the only caller of
//! the `rumqttc` client's publish, so the order in which publishes are
//! handed over is the order in which their packet ids come back (see the
//! table in `mod.rs`). When it ends it parks the session with what the
//! remote had not acknowledged, in the order it was sent.

use std::collections::VecDeque;
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
use super::{Prepared, TopicRule};
use crate::connection::Context;
use crate::embed::{record_done, Subscription};
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

/// The bridge's local session as it was opened, and the deliveries it had
/// in flight when it was last parked (sent again first, in that order).
pub(super) struct Local {
    pub local: Subscription,
    pub unacked: Vec<Delivery>,
}

/// Runs one bridge until `stop` (or the broker's shutdown, or a claim of
/// its session) ends it; then the remote says goodbye, "0" is published
/// here if "1" was, and the local session is parked with what the remote
/// has not acknowledged.
pub(super) async fn run(
    ctx: Arc<Context>,
    prepared: Prepared,
    local: Local,
    stop: CancellationToken,
) {
    let Local { mut local, unacked } = local;
    let Prepared { config, tls, rules } = prepared;
    let max_packet_size = ctx.live.get().limits.max_packet_size;
    let addresses = remote::options(&config, tls, max_packet_size).unwrap_or_default();
    let Some(first) = addresses.first().cloned() else {
        local.park(unacked);
        return;
    };
    let origin = ClientId::new(local.client_id());
    let (client, eventloop) = AsyncClient::new(first, REQUEST_CAPACITY);
    let filters = remote_subscriptions(&rules);
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
            releasing: 0,
            received: Default::default(),
            connection: 0,
            addresses,
            current: 0,
        }
        .run(),
    );

    let mut bridge = Bridge {
        ctx: ctx.clone(),
        client,
        rules,
        origin,
        name: config.name.clone(),
        max_inflight: usize::from(config.max_inflight),
        notification: config.notification_topic(),
        notify_remote: config.remote_notification_topic().is_some(),
        announced: false,
        unassigned: VecDeque::new(),
        in_flight: VecDeque::new(),
        resend: unacked.into(),
        echoes: VecDeque::new(),
    };
    loop {
        let room = bridge.unassigned.len() + bridge.in_flight.len() < bridge.max_inflight;
        if room && !stop.is_cancelled() {
            if let Some(delivery) = bridge.resend.pop_front() {
                bridge.send_out(delivery).await;
                continue;
            }
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            event = events.recv() => match event {
                // Raced against the stop: routing a remote PUBLISH in waits
                // for every local subscriber to take it, which a slow one
                // may hold past the shutdown grace, and a bridge aborted
                // then could not park its window. Left unacknowledged, the
                // remote sends it again.
                Some(event) => tokio::select! {
                    biased;
                    _ = bridge.handle_remote(event) => {}
                    _ = stop.cancelled() => {}
                },
                None => break,
            },
            delivery = local.recv_delivery(), if room => match delivery {
                Some(delivery) => bridge.send_out(delivery).await,
                None => break,
            },
        }
        local.set_in_flight(bridge.unacked_len());
    }
    remote_stop.cancel();
    // Until the remote task has said goodbye: what the remote acknowledged
    // meanwhile is not parked (nor sent again). A PUBLISH from the remote
    // is left unacknowledged, for the remote to send again.
    while let Some(event) = events.recv().await {
        if matches!(event, Remote::Sent(_) | Remote::Acked(_)) {
            bridge.handle_remote(event).await;
        }
    }
    let _ = remote.await;
    bridge.announce_locally(false).await;
    local.park(bridge.take_unacked());
}

/// The `in` filters, subscribed on the remote at the line's QoS (QoS 2
/// exchanges across reconnects: see `remote.rs`).
fn remote_subscriptions(rules: &[TopicRule]) -> Vec<rumqttc::SubscribeFilter> {
    rules
        .iter()
        .filter(|rule| rule.direction.carries_in())
        .map(|rule| rumqttc::SubscribeFilter::new(rule.remote_filter.clone(), to_remote(rule.qos)))
        .collect()
}

/// The bridge task's state (see the table in `mod.rs`).
struct Bridge {
    ctx: Arc<Context>,
    client: AsyncClient,
    rules: Vec<TopicRule>,
    /// The local session's client id, on every message routed in.
    origin: ClientId,
    name: String,
    /// `unassigned` and `in_flight` together, at most.
    max_inflight: usize,
    /// Where the connection state goes; `None` without notifications.
    notification: Option<String>,
    /// Whether it goes to the remote too (not `notifications_local_only`).
    notify_remote: bool,
    /// "1" is the local retained state.
    announced: bool,
    /// Handed to the client, no packet id seen yet, in that order.
    unassigned: VecDeque<Unassigned>,
    /// Awaiting the remote's acknowledgement, by packet id, in sending
    /// order; `None` for the notification.
    in_flight: VecDeque<(u16, Option<Delivery>)>,
    /// Parked in flight by the session's last owner: sent before anything
    /// from the mailbox.
    resend: VecDeque<Delivery>,
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
            // Queued under a line that has gone since: given up.
            record_done(&self.ctx, &self.origin, &delivery);
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
        match (sent.is_ok(), qos) {
            (true, QoS::AtMostOnce) => {
                // Sent once, if at all: done here.
                record_done(&self.ctx, &self.origin, &delivery);
                self.unassigned.push_back(Unassigned::AtMostOnce);
            }
            // The event loop is gone (stopping): parked with the rest.
            _ => self.unassigned.push_back(Unassigned::Delivery(delivery)),
        }
    }

    /// What the remote has not acknowledged, in sending order: in flight,
    /// handed over, not yet handed over.
    fn take_unacked(&mut self) -> Vec<Delivery> {
        let in_flight = self
            .in_flight
            .drain(..)
            .filter_map(|(_, delivery)| delivery);
        let unassigned = self.unassigned.drain(..).filter_map(|sent| match sent {
            Unassigned::Delivery(delivery) => Some(delivery),
            Unassigned::AtMostOnce | Unassigned::Notification => None,
        });
        in_flight
            .chain(unassigned)
            .chain(self.resend.drain(..))
            .collect()
    }

    /// QoS 1/2 deliveries handed over and not yet acknowledged (the
    /// in-flight count `$SYS` and `/metrics` sum over sessions).
    fn unacked_len(&self) -> usize {
        let handed = self
            .unassigned
            .iter()
            .filter(|sent| matches!(sent, Unassigned::Delivery(_)))
            .count();
        let in_flight = self
            .in_flight
            .iter()
            .filter(|(_, delivery)| delivery.is_some())
            .count();
        handed + in_flight
    }

    fn is_in_flight(&self, id: u16) -> bool {
        self.in_flight.iter().any(|(known, _)| *known == id)
    }

    async fn handle_remote(&mut self, event: Remote) {
        match event {
            Remote::Connected => self.connected().await,
            Remote::Lost => self.announce_locally(false).await,
            Remote::Sent(id) if id != 0 && self.is_in_flight(id) => {}
            Remote::Sent(id) => match self.unassigned.pop_front() {
                Some(Unassigned::Delivery(delivery)) => {
                    self.in_flight.push_back((id, Some(delivery)));
                }
                Some(Unassigned::Notification) => {
                    self.in_flight.push_back((id, None));
                }
                Some(Unassigned::AtMostOnce) => {
                    Metrics::incr(&self.ctx.metrics.bridge_messages_out)
                }
                None => {}
            },
            Remote::Acked(id) => {
                // Dropping the delivery is the local acknowledgement (and
                // with a store, writing it done).
                let at = self.in_flight.iter().position(|(known, _)| *known == id);
                if let Some((_, Some(delivery))) = at.and_then(|at| self.in_flight.remove(at)) {
                    record_done(&self.ctx, &self.origin, &delivery);
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
        if !self.notify_remote {
            return;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_lines_are_subscribed_on_the_remote_at_their_qos() {
        let rules: Vec<TopicRule> = ["a/# in 2", "b/# in 0", "c/# out 2", "d/# both 1"]
            .iter()
            .map(|line| TopicRule::parse(line).unwrap())
            .collect();
        let subscribed: Vec<(String, rumqttc::QoS)> = remote_subscriptions(&rules)
            .into_iter()
            .map(|filter| (filter.path, filter.qos))
            .collect();
        assert_eq!(
            subscribed,
            [
                ("a/#".to_owned(), rumqttc::QoS::ExactlyOnce),
                ("b/#".to_owned(), rumqttc::QoS::AtMostOnce),
                ("d/#".to_owned(), rumqttc::QoS::AtLeastOnce),
            ]
        );
    }
}
