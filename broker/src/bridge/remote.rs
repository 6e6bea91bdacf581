//! A bridge's remote task: the only owner of its `rumqttc` event loop. It
//! polls the loop (raced against nothing but the stop token, as `poll` is
//! not cancel-safe), reconnects with exponential backoff, subscribes the
//! `in` filters after each CONNACK, and tells the bridge task (`carry`)
//! what matters over a bounded channel. It never publishes while running:
//! the bridge task does, so that it alone sees the order of what is sent.
//!
//! | state      | event                   | does                                            | next       |
//! |------------|-------------------------|-------------------------------------------------|------------|
//! | connecting | CONNACK                 | subscribe the `in` filters; [`Remote::Connected`] | connected |
//! | connecting | error                   | log (`warn` the first in a row), back off       | connecting |
//! | connected  | PUBLISH, PUBACK, PUBCOMP, a PUBLISH written | forwarded                   | connected  |
//! | connected  | error                   | [`Remote::Lost`], back off                      | connecting |
//! | start      | (a persistent remote session) | PUBREL for every packet id, first thing on the first connection | connecting |
//! | connected  | PUBCOMP of such a PUBREL | dropped (nothing of ours was in flight under it) | connected |
//! | any        | a PUBREL `rumqttc` does not know (the remote held a QoS 2 message of ours across our restart or reconnect) | PUBCOMP for it after the reconnect | connecting |
//! | any        | stop token              | if connected: wait for what is in flight to be acknowledged (at most [`DRAIN`]), retained "0" notification, DISCONNECT; PUBACK, PUBCOMP and PUBLISHes written meanwhile forwarded | ended  |

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet,
    PubComp, PubRel, Request, StateError, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::split_address;
use crate::config::BridgeConfig;
use crate::metrics::Metrics;

/// `rumqttc`'s in-flight limit and packet id range: above
/// [`super::WINDOW`] plus a notification, so a new publish never waits for
/// an id while acknowledgements come in order.
const REMOTE_INFLIGHT: u16 = 100;
/// Keepalive on the remote connection.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// How long a stopping bridge waits for the remote to acknowledge what is
/// in flight.
const DRAIN: Duration = Duration::from_millis(500);
/// How long a stopping bridge then waits for its DISCONNECT to be written.
const GOODBYE: Duration = Duration::from_millis(500);

/// What the remote task tells the bridge task.
#[derive(Debug)]
pub(super) enum Remote {
    /// A CONNACK: the connection is up.
    Connected,
    /// The connection that was up is gone.
    Lost,
    Publish(rumqttc::Publish),
    /// A PUBLISH written with this packet id (0 for QoS 0).
    Sent(u16),
    /// The remote's PUBACK or PUBCOMP.
    Acked(u16),
}

/// The client options of one bridge: its identity, its will (the "0"
/// notification), its transport.
pub(super) fn options(
    config: &BridgeConfig,
    tls: Option<TlsConfiguration>,
    max_packet_size: usize,
) -> Option<MqttOptions> {
    let (host, port) = split_address(&config.address)?;
    let mut options = MqttOptions::new(config.remote_client_id(), host, port);
    options
        .set_clean_session(config.clean_session)
        .set_manual_acks(true)
        .set_inflight(REMOTE_INFLIGHT)
        .set_keep_alive(KEEP_ALIVE)
        // `rumqttc`'s default is 10 KiB: a larger local message would fail
        // its connection over and over. Both ways: what this broker takes.
        .set_max_packet_size(max_packet_size, max_packet_size);
    if let Some(username) = &config.username {
        options.set_credentials(username, config.password.clone().unwrap_or_default());
    }
    if let Some(topic) = config.notification_topic() {
        options.set_last_will(LastWill::new(topic, "0", rumqttc::QoS::AtLeastOnce, true));
    }
    if let Some(tls) = tls {
        options.set_transport(Transport::tls_with_config(tls));
    }
    Some(options)
}

/// The remote task's state.
pub(super) struct RemoteTask {
    pub eventloop: EventLoop,
    pub client: AsyncClient,
    pub filters: Vec<rumqttc::SubscribeFilter>,
    pub config: BridgeConfig,
    pub events: mpsc::Sender<Remote>,
    pub stop: CancellationToken,
    pub metrics: Arc<Metrics>,
    /// Packet ids released at the start (bit `id`) whose PUBCOMP has not
    /// come yet; see [`RemoteTask::release_stale_ids`].
    pub releasing: u128,
}

impl RemoteTask {
    /// A persistent remote session may still hold QoS 2 packet ids of an
    /// earlier `rumqttc` of this bridge (before a reload that changed it,
    /// a restart, a crash) as awaiting PUBREL. This one numbers its packet
    /// ids from 1 again, and a remote that still holds id X takes our next
    /// PUBLISH under X for a resend of the old one and drops it. So every
    /// id `rumqttc` can use is released first: PUBREL, which a remote
    /// answers with PUBCOMP whether it held the id or not [MQTT-4.3.3-1 ff.].
    /// The messages those ids carried were parked by the old bridge and go
    /// again under new ids (at worst twice, never lost). `rumqttc` sends
    /// these before any PUBLISH and keeps its window full until the
    /// PUBCOMPs come, so no new message shares an id with a release.
    fn release_stale_ids(&mut self) {
        if self.config.clean_session {
            return;
        }
        for id in 1..=REMOTE_INFLIGHT {
            self.eventloop
                .pending
                .push_back(Request::PubRel(PubRel::new(id)));
            self.releasing |= 1 << id;
        }
    }

    /// Whether a PUBCOMP answers one of the releases, which nothing of the
    /// bridge task's waits for.
    fn released(&mut self, id: u16) -> bool {
        let bit = 1u128.checked_shl(u32::from(id)).unwrap_or(0);
        let was = self.releasing & bit != 0;
        self.releasing &= !bit;
        was
    }

    /// `rumqttc` forgets the QoS 2 ids it received when a connection ends,
    /// so a persistent remote's PUBREL for one after the reconnect is
    /// "unsolicited" and ends the connection, again at every reconnect.
    /// Answering it with PUBCOMP first thing on the next connection lets
    /// the remote complete it. (An unsolicited acknowledgement of ours gets
    /// a PUBCOMP the remote ignores as unknown.)
    fn answer_unsolicited(&mut self, error: &ConnectionError) {
        if let ConnectionError::MqttState(StateError::Unsolicited(id)) = error {
            self.eventloop
                .pending
                .push_front(Request::PubComp(PubComp::new(*id)));
        }
    }

    /// Polls until stopped, or until the bridge task is gone.
    pub(super) async fn run(mut self) {
        let name = self.config.name.clone();
        let address = self.config.address.clone();
        let min = Duration::from_millis(self.config.reconnect_min_ms);
        let max = Duration::from_millis(self.config.reconnect_max_ms);
        let mut delay = min;
        let mut connected = false;
        let mut ever_connected = false;
        let mut failing = false;
        self.release_stale_ids();
        loop {
            let polled = tokio::select! {
                _ = self.stop.cancelled() => break,
                polled = self.eventloop.poll() => polled,
            };
            let event = match polled {
                Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                    info!(bridge = %name, %address, session_present = connack.session_present, "bridge connected");
                    if ever_connected {
                        Metrics::incr(&self.metrics.bridge_reconnects);
                    }
                    (connected, ever_connected, failing, delay) = (true, true, false, min);
                    if !self.filters.is_empty() {
                        if let Err(error) = self.client.try_subscribe_many(self.filters.clone()) {
                            warn!(bridge = %name, %error, "bridge: cannot subscribe on the remote");
                        }
                    }
                    Remote::Connected
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => Remote::Publish(publish),
                Ok(Event::Incoming(Packet::PubAck(ack))) => Remote::Acked(ack.pkid),
                Ok(Event::Incoming(Packet::PubComp(comp))) if self.released(comp.pkid) => continue,
                Ok(Event::Incoming(Packet::PubComp(comp))) => Remote::Acked(comp.pkid),
                Ok(Event::Outgoing(Outgoing::Publish(id))) => Remote::Sent(id),
                Ok(_) => continue,
                Err(error) => {
                    self.answer_unsolicited(&error);
                    if connected {
                        info!(bridge = %name, %address, %error, "bridge disconnected");
                    } else if !failing {
                        // Once per series: a wrong certificate or address
                        // shows, and a remote that is down does not flood.
                        warn!(bridge = %name, %address, %error, "bridge: cannot connect; retrying");
                    } else {
                        debug!(bridge = %name, %error, "bridge: cannot connect");
                    }
                    let was_connected = connected;
                    (connected, failing) = (false, true);
                    if was_connected && self.events.send(Remote::Lost).await.is_err() {
                        break;
                    }
                    tokio::select! {
                        _ = self.stop.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(max);
                    continue;
                }
            };
            if self.events.send(event).await.is_err() {
                break;
            }
        }
        if connected {
            self.goodbye().await;
        }
    }

    /// A clean end. First, up to [`DRAIN`], the acknowledgements of what
    /// is in flight (a remote that answers sends them within milliseconds,
    /// and what it acknowledged is neither parked nor sent again); then the
    /// retained "0" notification (the will would say it on a loss, but
    /// DISCONNECT discards the will) and DISCONNECT. What is written and
    /// acknowledged meanwhile still goes to the bridge task, which drains
    /// the channel as it stops.
    async fn goodbye(&mut self) {
        let drained = Instant::now() + DRAIN;
        while self.eventloop.state.inflight() > 0 {
            match tokio::time::timeout_at(drained, self.eventloop.poll()).await {
                Ok(Ok(event)) => {
                    if !self.forward_late(event, drained).await {
                        return;
                    }
                }
                // The connection is gone: no goodbye to say.
                Ok(Err(_)) => return,
                Err(_) => break,
            }
        }
        if let Some(topic) = self.config.notification_topic() {
            let _ = self
                .client
                .try_publish(topic, rumqttc::QoS::AtMostOnce, true, "0");
        }
        if self.client.try_disconnect().is_err() {
            return;
        }
        let deadline = Instant::now() + GOODBYE;
        loop {
            match tokio::time::timeout_at(deadline, self.eventloop.poll()).await {
                Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => return,
                Ok(Ok(event)) => {
                    if !self.forward_late(event, deadline).await {
                        return;
                    }
                }
            }
        }
    }

    /// Forwards a PUBLISH written or an acknowledgement read while
    /// stopping; `false` once the bridge task no longer listens.
    async fn forward_late(&mut self, event: Event, deadline: Instant) -> bool {
        let event = match event {
            Event::Incoming(Packet::PubAck(ack)) => Remote::Acked(ack.pkid),
            Event::Incoming(Packet::PubComp(comp)) if self.released(comp.pkid) => return true,
            Event::Incoming(Packet::PubComp(comp)) => Remote::Acked(comp.pkid),
            Event::Outgoing(Outgoing::Publish(id)) => Remote::Sent(id),
            _ => return true,
        };
        let sent = tokio::time::timeout_at(deadline, self.events.send(event)).await;
        matches!(sent, Ok(Ok(())))
    }
}
