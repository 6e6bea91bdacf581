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
//! | connecting | CONNACK                 | every packet id marked as awaiting PUBREL in `rumqttc` (see [`RemoteTask::expect_releases`]) | connected |
//! | connecting | CONNACK, no session     | the QoS 2 exchanges of [`RemoteTask::received`] forgotten | connected |
//! | connected  | QoS 2 PUBLISH, DUP 0, or an id not in `received` | a new message: recorded as forwarded; forwarded | connected |
//! | connected  | QoS 2 PUBLISH, DUP 1, id forwarded, PUBREC not written | dropped: the first copy's acknowledgement answers it | connected |
//! | connected  | QoS 2 PUBLISH, DUP 1, id's PUBREC written on this connection | dropped: that PUBREC answers it | connected |
//! | connected  | QoS 2 PUBLISH, DUP 1, id's PUBREC written on an earlier connection | PUBREC again, not forwarded | connected |
//! | connected  | PUBREC written, PUBCOMP written | the exchange's state moves; ends       | connected  |
//! | any        | stop token              | if connected: wait for what is in flight to be acknowledged (at most [`DRAIN`]), retained "0" notification, DISCONNECT; PUBACK, PUBCOMP and PUBLISHes written meanwhile forwarded | ended  |

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, PubRec, PubRel,
    Request, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::split_addresses;
use crate::config::BridgeConfig;
use crate::metrics::Metrics;

/// `rumqttc`'s in-flight limit and packet id range: above
/// [`super::MAX_INFLIGHT`] plus a notification, so a new publish never
/// waits for an id while acknowledgements come in order.
const REMOTE_INFLIGHT: u16 = super::MAX_INFLIGHT + 8;
// `releasing` keeps one bit per id in a u128.
const _: () = assert!(REMOTE_INFLIGHT < 128);
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

/// The client options of one bridge, one per address in its order: its
/// identity, its will (the "0" notification), its transport.
pub(super) fn options(
    config: &BridgeConfig,
    tls: Option<TlsConfiguration>,
    max_packet_size: usize,
) -> Option<Vec<MqttOptions>> {
    let addresses = split_addresses(&config.address)?;
    let options = addresses
        .into_iter()
        .map(|(host, port)| options_for(config, host, port, tls.clone(), max_packet_size))
        .collect();
    Some(options)
}

fn options_for(
    config: &BridgeConfig,
    host: String,
    port: u16,
    tls: Option<TlsConfiguration>,
    max_packet_size: usize,
) -> MqttOptions {
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
    if let Some(topic) = config.remote_notification_topic() {
        options.set_last_will(LastWill::new(topic, "0", rumqttc::QoS::AtLeastOnce, true));
    }
    if let Some(tls) = tls {
        options.set_transport(Transport::tls_with_config(tls));
    }
    options
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
    /// The remote's QoS 2 messages brought in whose exchange has not ended
    /// (no PUBCOMP written yet), by packet id: kept across reconnects, so a
    /// resend is recognised and each message is brought in once.
    pub received: HashMap<u16, Received>,
    /// Counts CONNACKs: which connection a PUBREC was written on.
    pub connection: u64,
    /// The options for each of the bridge's addresses; the event loop has
    /// the one at `current`, and the next after each failed attempt or
    /// lost connection.
    pub addresses: Vec<MqttOptions>,
    pub current: usize,
}

/// Where a QoS 2 message from the remote stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Received {
    /// Handed to the bridge task, which acknowledges it once routed.
    Forwarded,
    /// Its PUBREC was written on this connection (by CONNACK count); the
    /// remote's PUBREL ends it.
    Recorded(u64),
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

    /// `rumqttc` 0.24 forgets, whenever a connection ends, which QoS 2
    /// messages it received await PUBREL, and takes a PUBREL for an id it
    /// does not know for a protocol error that ends the connection; a
    /// persistent remote would send that PUBREL again on every new one.
    /// A remote without our session may send one too, for a PUBREC that
    /// crossed the reconnect (written from `rumqttc`'s queue after it).
    /// So after each CONNACK, before the next poll reads what follows it,
    /// every id is marked as awaiting PUBREL: a PUBREL for any id is then
    /// answered with PUBCOMP, as the spec asks of a receiver
    /// [MQTT-4.3.3-2], including ids of a bridge run before this one. The
    /// marks are made through `rumqttc`'s own handling of an incoming
    /// PUBLISH (with manual acks it only marks), whose one event each is
    /// taken back at once. About 65 000 marks per connect: milliseconds.
    fn expect_releases(&mut self) {
        let state = &mut self.eventloop.state;
        // With automatic acks each mark would write a PUBREC.
        if !state.manual_acks {
            return;
        }
        for id in 1..=u16::MAX {
            let mut mark = rumqttc::Publish::new("", rumqttc::QoS::ExactlyOnce, Vec::new());
            mark.pkid = id;
            if state
                .handle_incoming_packet(rumqttc::Incoming::Publish(mark))
                .is_ok()
            {
                state.events.pop_back();
            }
        }
    }

    /// A PUBLISH from the remote: what to forward to the bridge task, if
    /// anything (see the module table for QoS 2).
    fn receive(&mut self, publish: rumqttc::Publish) -> Option<Remote> {
        if publish.qos != rumqttc::QoS::ExactlyOnce {
            return Some(Remote::Publish(publish));
        }
        // A resend carries DUP 1 [MQTT-3.3.1-1]: DUP 0 is a new message,
        // whatever an id's old entry says (the remote may have forgotten it).
        let known = if publish.dup {
            self.received.get(&publish.pkid).copied()
        } else {
            None
        };
        match known {
            None => {
                self.received.insert(publish.pkid, Received::Forwarded);
                Some(Remote::Publish(publish))
            }
            Some(Received::Forwarded) => None,
            Some(Received::Recorded(on)) if on == self.connection => None,
            Some(Received::Recorded(_)) => {
                // The PUBREC went with a connection that ended. Queued
                // inside `rumqttc`, which cannot refuse it; written first.
                // Counted as this connection's at once, so more copies
                // before it is written queue nothing more.
                self.eventloop
                    .pending
                    .push_back(Request::PubRec(PubRec::new(publish.pkid)));
                self.received
                    .insert(publish.pkid, Received::Recorded(self.connection));
                None
            }
        }
    }

    /// What the bridge task hears of an acknowledgement from the remote or
    /// a PUBLISH written; `None` for anything else, and for the PUBCOMP of
    /// a start-up release.
    fn ack_or_sent(&mut self, event: &Event) -> Option<Remote> {
        match event {
            Event::Incoming(Packet::PubAck(ack)) => Some(Remote::Acked(ack.pkid)),
            Event::Incoming(Packet::PubComp(comp)) if self.released(comp.pkid) => None,
            Event::Incoming(Packet::PubComp(comp)) => Some(Remote::Acked(comp.pkid)),
            Event::Outgoing(Outgoing::Publish(id)) => Some(Remote::Sent(*id)),
            _ => None,
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

    /// "host:port" of the address the event loop connects to.
    fn address(&self) -> String {
        let (host, port) = self.eventloop.mqtt_options.broker_address();
        format!("{host}:{port}")
    }

    /// Moves on to the next address, if there are several: after a failed
    /// attempt, and after a lost connection (mosquitto's round robin).
    fn next_address(&mut self) {
        if self.addresses.len() < 2 {
            return;
        }
        self.current = (self.current + 1) % self.addresses.len();
        if let Some(options) = self.addresses.get(self.current) {
            self.eventloop.mqtt_options = options.clone();
        }
    }

    /// Polls until stopped, or until the bridge task is gone.
    pub(super) async fn run(mut self) {
        let name = self.config.name.clone();
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
                    let address = self.address();
                    info!(bridge = %name, %address, session_present = connack.session_present, "bridge connected");
                    if ever_connected {
                        Metrics::incr(&self.metrics.bridge_reconnects);
                    }
                    (connected, ever_connected, failing, delay) = (true, true, false, min);
                    self.connection += 1;
                    self.expect_releases();
                    if !connack.session_present {
                        self.received.clear();
                    }
                    if !self.filters.is_empty() {
                        if let Err(error) = self.client.try_subscribe_many(self.filters.clone()) {
                            warn!(bridge = %name, %error, "bridge: cannot subscribe on the remote");
                        }
                    }
                    Remote::Connected
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => match self.receive(publish) {
                    Some(event) => event,
                    None => continue,
                },
                Ok(Event::Outgoing(Outgoing::PubRec(id))) => {
                    if let Some(state) = self.received.get_mut(&id) {
                        *state = Received::Recorded(self.connection);
                    }
                    continue;
                }
                Ok(Event::Outgoing(Outgoing::PubComp(id))) => {
                    self.received.remove(&id);
                    continue;
                }
                Ok(event) => match self.ack_or_sent(&event) {
                    Some(event) => event,
                    None => continue,
                },
                Err(error) => {
                    let address = self.address();
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
                    self.next_address();
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
        if let Some(topic) = self.config.remote_notification_topic() {
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
        let Some(event) = self.ack_or_sent(&event) else {
            return true;
        };
        let sent = tokio::time::timeout_at(deadline, self.events.send(event)).await;
        matches!(sent, Ok(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    //! The remote task against a fake remote on 127.0.0.1: a listener that
    //! reads the bridge's packets raw and answers what the test says.
    use super::*;
    use bytes::BytesMut;
    use tidemq_protocol::Framer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const WAIT: Duration = Duration::from_secs(5);

    fn config(port: u16, clean_session: bool) -> BridgeConfig {
        BridgeConfig {
            name: "t".to_owned(),
            address: format!("127.0.0.1:{port}"),
            client_id: None,
            username: None,
            password: None,
            clean_session,
            topics: Vec::new(),
            reconnect_min_ms: 10,
            reconnect_max_ms: 10,
            max_inflight: 20,
            tls: None,
            notifications: false,
            notification_topic: None,
            notifications_local_only: false,
        }
    }

    /// Starts the remote task for `config`; its events and its client.
    fn start(config: BridgeConfig) -> (mpsc::Receiver<Remote>, AsyncClient, CancellationToken) {
        let addresses = options(&config, None, 1 << 20).unwrap();
        let (client, eventloop) = AsyncClient::new(addresses[0].clone(), 256);
        let (events, rx) = mpsc::channel(256);
        let stop = CancellationToken::new();
        let task = RemoteTask {
            eventloop,
            client: client.clone(),
            filters: Vec::new(),
            config,
            events,
            stop: stop.clone(),
            metrics: Arc::default(),
            releasing: 0,
            received: HashMap::new(),
            connection: 0,
            addresses,
            current: 0,
        };
        tokio::spawn(task.run());
        (rx, client, stop)
    }

    /// One side of the fake remote's connection.
    struct Peer {
        stream: TcpStream,
        buf: BytesMut,
    }

    impl Peer {
        /// Accepts the bridge, reads its CONNECT, answers CONNACK with
        /// session present.
        async fn accept(listener: &TcpListener) -> Peer {
            Peer::accept_with(listener, true).await
        }

        /// As [`Peer::accept`], with or without a session.
        async fn accept_with(listener: &TcpListener, session_present: bool) -> Peer {
            let (stream, _) = tokio::time::timeout(WAIT, listener.accept())
                .await
                .unwrap()
                .unwrap();
            let mut peer = Peer {
                stream,
                buf: BytesMut::new(),
            };
            assert_eq!(peer.next().await[0] >> 4, 1, "CONNECT");
            peer.send(&[0x20, 0x02, u8::from(session_present), 0x00])
                .await;
            peer
        }

        /// The next whole packet, raw.
        async fn next(&mut self) -> Vec<u8> {
            let framer = Framer::new(1 << 20);
            loop {
                if let Some(frame) = framer.next_frame(&mut self.buf).unwrap() {
                    return frame.bytes.to_vec();
                }
                let read = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                    .await
                    .expect("a packet in time")
                    .unwrap();
                assert!(read > 0, "the bridge closed the connection");
            }
        }

        async fn send(&mut self, bytes: &[u8]) {
            self.stream.write_all(bytes).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_persistent_remote_session_has_every_packet_id_released_before_a_publish() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mut events, client, stop) = start(config(port, false));
        let mut peer = Peer::accept(&listener).await;
        client
            .publish("t", rumqttc::QoS::ExactlyOnce, false, "new")
            .await
            .unwrap();
        for id in 1..=REMOTE_INFLIGHT {
            let [hi, lo] = id.to_be_bytes();
            assert_eq!(peer.next().await, [0x62, 0x02, hi, lo], "PUBREL {id}");
        }
        // Answered in order: only then may the PUBLISH take an id.
        for id in 1..=REMOTE_INFLIGHT {
            let [hi, lo] = id.to_be_bytes();
            peer.send(&[0x70, 0x02, hi, lo]).await;
        }
        let publish = peer.next().await;
        assert_eq!(publish[0], 0x34, "PUBLISH QoS 2: {publish:?}");
        // The releases' PUBCOMPs are nothing the bridge task waits for.
        let mut seen = Vec::new();
        while let Ok(Some(event)) = tokio::time::timeout(WAIT, events.recv()).await {
            let sent = matches!(event, Remote::Sent(_));
            seen.push(format!("{event:?}"));
            if sent {
                break;
            }
        }
        assert_eq!(seen, ["Connected", "Sent(1)"]);
        stop.cancel();
    }

    impl Peer {
        /// Reads the start's releases of every packet id and completes them.
        async fn complete_releases(&mut self) {
            for id in 1..=REMOTE_INFLIGHT {
                assert_eq!(self.next().await[0], 0x62, "PUBREL {id}");
            }
            for id in 1..=REMOTE_INFLIGHT {
                let [hi, lo] = id.to_be_bytes();
                self.send(&[0x70, 0x02, hi, lo]).await;
            }
        }

        /// A QoS 2 PUBLISH of one byte on `t` under `id`.
        async fn publish_qos2(&mut self, id: u8, dup: bool) {
            let first = if dup { 0x3C } else { 0x34 };
            self.send(&[first, 0x06, 0x00, 0x01, b't', 0x00, id, id])
                .await;
        }
    }

    /// The next PUBLISH the remote task forwards, skipping the rest.
    async fn next_forwarded(events: &mut mpsc::Receiver<Remote>) -> rumqttc::Publish {
        loop {
            let event = tokio::time::timeout(WAIT, events.recv())
                .await
                .expect("an event in time")
                .expect("the remote task runs");
            if let Remote::Publish(publish) = event {
                return publish;
            }
        }
    }

    /// A persistent bridge connected to `listener` with a QoS 2 message
    /// `7` forwarded; the remote task's events, its client, its stop, and
    /// the remote's side of the connection.
    async fn holding_message_7(
        listener: &TcpListener,
    ) -> (
        mpsc::Receiver<Remote>,
        AsyncClient,
        CancellationToken,
        Peer,
        rumqttc::Publish,
    ) {
        let port = listener.local_addr().unwrap().port();
        let (mut events, client, stop) = start(config(port, false));
        let mut peer = Peer::accept(listener).await;
        peer.complete_releases().await;
        peer.publish_qos2(7, false).await;
        let seven = next_forwarded(&mut events).await;
        assert_eq!((seven.pkid, seven.qos), (7, rumqttc::QoS::ExactlyOnce));
        (events, client, stop, peer, seven)
    }

    /// As [`holding_message_7`], then 7 acknowledged (its PUBREC written)
    /// and the connection lost; the remote's side of the next one.
    async fn recorded_7_and_reconnected(
        listener: &TcpListener,
    ) -> (mpsc::Receiver<Remote>, CancellationToken, Peer) {
        let (events, client, stop, mut peer, seven) = holding_message_7(listener).await;
        client.ack(&seven).await.unwrap();
        assert_eq!(peer.next().await, [0x50, 0x02, 0x00, 7], "PUBREC 7");
        drop(peer);
        (events, stop, Peer::accept(listener).await)
    }

    // [MQTT-4.3.3-2] (3.1.1): the receiver answers PUBREL with PUBCOMP; a
    // persistent remote sends the PUBREL again on the next connection.
    #[tokio::test]
    async fn a_pubrel_after_a_reconnect_is_completed_and_the_connection_stays() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut events, stop, mut peer) = recorded_7_and_reconnected(&listener).await;
        peer.send(&[0x62, 0x02, 0x00, 7]).await;
        assert_eq!(peer.next().await, [0x70, 0x02, 0x00, 7], "PUBCOMP 7");
        // A PUBREL for an id this bridge never received (a run before it).
        peer.send(&[0x62, 0x02, 0x00, 9]).await;
        assert_eq!(peer.next().await, [0x70, 0x02, 0x00, 9], "PUBCOMP 9");
        // Still connected: the next message is forwarded.
        peer.publish_qos2(8, false).await;
        assert_eq!(next_forwarded(&mut events).await.pkid, 8);
        stop.cancel();
    }

    // [MQTT-4.3.3-2] (3.1.1): until the PUBREL, a resend of the id gets
    // PUBREC again and is not brought in as a new message.
    #[tokio::test]
    async fn a_resend_after_the_pubrec_is_acknowledged_again_not_forwarded() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut events, stop, mut peer) = recorded_7_and_reconnected(&listener).await;
        // The PUBREC was lost with the connection: the remote sends again.
        peer.publish_qos2(7, true).await;
        assert_eq!(peer.next().await, [0x50, 0x02, 0x00, 7], "PUBREC 7 again");
        peer.publish_qos2(8, false).await;
        assert_eq!(next_forwarded(&mut events).await.pkid, 8, "7 not twice");
        peer.send(&[0x62, 0x02, 0x00, 7]).await;
        assert_eq!(peer.next().await, [0x70, 0x02, 0x00, 7], "PUBCOMP 7");
        stop.cancel();
    }

    // [MQTT-3.3.1-1]: a resend carries DUP 1; DUP 0 is a new message even
    // under an id whose exchange this side still holds.
    #[tokio::test]
    async fn a_dup_0_publish_under_a_recorded_id_is_a_new_message() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut events, stop, mut peer) = recorded_7_and_reconnected(&listener).await;
        peer.publish_qos2(7, false).await;
        assert_eq!(next_forwarded(&mut events).await.pkid, 7);
        stop.cancel();
    }

    #[tokio::test]
    async fn a_resend_answered_on_this_connection_gets_no_second_pubrec() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut events, client, stop, mut peer, seven) = holding_message_7(&listener).await;
        client.ack(&seven).await.unwrap();
        assert_eq!(peer.next().await, [0x50, 0x02, 0x00, 7], "PUBREC 7");
        // Sent before our PUBREC reached the remote: that PUBREC answers it.
        peer.publish_qos2(7, true).await;
        peer.publish_qos2(8, false).await;
        let eight = next_forwarded(&mut events).await;
        assert_eq!(eight.pkid, 8, "7 not twice");
        client.ack(&eight).await.unwrap();
        assert_eq!(peer.next().await, [0x50, 0x02, 0x00, 8], "PUBREC 8, not 7");
        stop.cancel();
    }

    // [MQTT-4.3.3-2] (3.1.1): a remote that kept no session may still send
    // a PUBREL for a PUBREC that crossed the reconnect; it is completed.
    #[tokio::test]
    async fn a_pubrel_on_a_connection_without_a_session_is_completed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mut events, client, stop) = start(config(port, true));
        let mut peer = Peer::accept_with(&listener, false).await;
        peer.publish_qos2(7, false).await;
        let seven = next_forwarded(&mut events).await;
        drop(peer);
        let mut peer = Peer::accept_with(&listener, false).await;
        client.ack(&seven).await.unwrap();
        assert_eq!(peer.next().await, [0x50, 0x02, 0x00, 7], "PUBREC 7");
        peer.send(&[0x62, 0x02, 0x00, 7]).await;
        assert_eq!(peer.next().await, [0x70, 0x02, 0x00, 7], "PUBCOMP 7");
        peer.publish_qos2(8, false).await;
        assert_eq!(next_forwarded(&mut events).await.pkid, 8, "still connected");
        stop.cancel();
    }

    #[tokio::test]
    async fn a_resend_while_the_first_copy_is_being_routed_is_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut events, client, stop, peer, seven) = holding_message_7(&listener).await;
        // Not acknowledged yet (the bridge task is routing it) when the
        // connection ends; the remote sends it again.
        drop(peer);
        let mut peer = Peer::accept(&listener).await;
        peer.publish_qos2(7, true).await;
        peer.publish_qos2(8, false).await;
        assert_eq!(next_forwarded(&mut events).await.pkid, 8, "7 not twice");
        // The first copy's acknowledgement answers the resend.
        client.ack(&seven).await.unwrap();
        assert_eq!(peer.next().await, [0x50, 0x02, 0x00, 7], "PUBREC 7");
        stop.cancel();
    }

    #[tokio::test]
    async fn a_clean_session_releases_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (_events, client, stop) = start(config(port, true));
        let mut peer = Peer::accept(&listener).await;
        client
            .publish("t", rumqttc::QoS::ExactlyOnce, false, "new")
            .await
            .unwrap();
        assert_eq!(peer.next().await[0], 0x34, "the PUBLISH first");
        stop.cancel();
    }
}
