//! The session task: the one place a client's logic runs. It owns the
//! client's [`SessionState`] and keepalive timer, so nothing here needs a
//! lock. It reacts to four things, in this order of priority:
//!
//! | event                         | action                                  |
//! |-------------------------------|-----------------------------------------|
//! | connection cancelled          | end: takeover, or broker shutdown       |
//! | write task ended              | end: the socket is unusable             |
//! | packet from the read task     | handle it, push the keepalive deadline  |
//! | acknowledgement released      | send the PUBACK/PUBREC, in order        |
//! | mailbox has mail              | move deliveries to the write task while |
//! |                               | the window has room; watch the backlog  |
//! | backlog over the limit too long | end: too slow                         |
//! | keepalive deadline passed     | end [MQTT-3.1.2-24]                     |

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tidemq_protocol::{
    encode, encode_publish_ref, encoded_publish_ref_len, Ack, AckProperties, Auth, Disconnect,
    Outgoing, Packet, PacketId, Publish, PublishRef, PublishV5, QoS, ReasonCode, Subscribe,
    SubscriptionOptions, TopicFilter, Unsubscribe,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::acks::PendingAcks;
use super::end::End;
use super::enhanced_auth;
use super::gated::GatedOut;
use super::reader::{Inbound, ReadError};
use super::v5::AliasUse;
use super::writer::WriterEnd;
use super::{sleep_until_option, Client, Context};
use crate::auth::MAX_AUTH_ROUNDS;
use crate::census::Tally;
use crate::latency::{LatencyTally, Stamp};
use crate::metrics::Metrics;
use crate::registry::SessionSlot;
use crate::router::shared::Strategy;
use crate::router::{RouterMsg, SubscribeRequest, Subscribed, RETAINED_BATCH};
use crate::security::acl::Access;
use crate::session::SessionState;
use crate::store::{Record, Store, Writer};
use crate::types::{Delivery, Message, MessageExtra, Receipt};

/// Deliveries moved per wake-up before the session looks at its socket again.
const DELIVERY_BATCH: usize = 256;
/// Decoded packets handled per wake-up before other events get a turn.
const INBOUND_BATCH: usize = 64;

/// The Reason String of a SUBACK with refusals (MQTT 5, when the client
/// did not turn problem information off [MQTT-3.1.2-29]).
const SUBACK_REFUSALS: &str =
    "0x8F: shared subscription name invalid, 0x97: over a subscription or topic limit";

pub struct Session {
    /// Lent to the session for one run of the tasks.
    pub client: Client,
    /// Cancelled on takeover or broker shutdown.
    pub token: CancellationToken,
    pub outgoing: mpsc::Sender<Bytes>,
    /// Packets encoded since the last hand-over to the write task.
    pub out: BytesMut,
    /// Hand a chunk over once it is this large (`write_batch_bytes`).
    pub out_limit: usize,
    /// PUBACKs / PUBRECs waiting for their messages' receipts.
    pub acks: PendingAcks,
    /// Deliveries waiting for the store to record their packet ids.
    pub gated: GatedOut,
    /// Set while the mailbox is over its limit: when the session is closed
    /// as too slow unless it catches up.
    pub slow_deadline: Option<Instant>,
    /// Deliveries are waiting in the mailbox beyond the last batch.
    pub more_mail: bool,
    /// Reused buffer for one batch of deliveries taken from the mailbox.
    pub batch: Vec<Delivery>,
    /// Reused buffer for the packet ids of one batch.
    pub ids: Vec<Option<PacketId>>,
    /// Rest after this long with nothing to do; `None`: never.
    pub rest_after: Option<Duration>,
    /// Set by the write task while it writes a batch.
    pub writing: Arc<std::sync::atomic::AtomicBool>,
    /// Packets encoded since the last flush, by type: added to the shared
    /// counts once per flush, as they are shared by every connection.
    pub tally: Tally,
    /// Latencies of sampled deliveries since the last flush.
    pub latency: LatencyTally,
}

impl Session {
    pub fn new(
        client: Client,
        token: CancellationToken,
        outgoing: mpsc::Sender<Bytes>,
        writing: Arc<std::sync::atomic::AtomicBool>,
        rest_after: Option<Duration>,
    ) -> Session {
        let out_limit = client.settings.limits.write_batch_bytes;
        Session {
            client,
            token,
            outgoing,
            out: BytesMut::new(),
            out_limit,
            acks: PendingAcks::new(),
            gated: GatedOut::default(),
            slow_deadline: None,
            more_mail: false,
            batch: Vec::new(),
            ids: Vec::new(),
            rest_after,
            writing,
            tally: Tally::default(),
            latency: LatencyTally::default(),
        }
    }

    /// Gives the client back once the run is over.
    pub fn into_client(self) -> Client {
        self.client
    }

    /// Runs until the connection ends or rests; returns why. `pending` are
    /// packets decoded before a rest; `first` is false after one (nothing
    /// is resent then).
    pub async fn run<W>(
        &mut self,
        inbound: &mut mpsc::Receiver<Inbound>,
        writer: &mut JoinHandle<(W, WriterEnd)>,
        pending: Vec<Inbound>,
        first: bool,
    ) -> End {
        match self.serve(inbound, writer, pending, first).await {
            Ok(never) => match never {},
            Err(End::WriterEnded) => match writer.await {
                Ok((_, end)) => End::Writer(end),
                Err(_) => End::Writer(WriterEnd::Cancelled),
            },
            Err(end) => end,
        }
    }

    async fn serve<W>(
        &mut self,
        inbound: &mut mpsc::Receiver<Inbound>,
        writer: &mut JoinHandle<(W, WriterEnd)>,
        pending: Vec<Inbound>,
        first: bool,
    ) -> Result<std::convert::Infallible, End> {
        if first {
            for packet in self.client.state.outbound.resend() {
                if let Some(id) = self.denied_resend(&packet) {
                    self.forget_denied(id);
                    continue;
                }
                self.send(packet).await?;
            }
        }
        if !pending.is_empty() {
            self.client.last_packet = Instant::now();
        }
        for inbound in pending {
            self.inbound(inbound).await?;
        }
        self.deliver().await?;
        let far_future = Duration::from_secs(86_400 * 365);
        let keepalive = self.client.keepalive();
        let due = |last_packet: Instant| last_packet + keepalive.unwrap_or(far_future);
        let deadline = tokio::time::sleep_until(due(self.client.last_packet));
        tokio::pin!(deadline);
        let rest_after = self.rest_after;
        let rest_timer = tokio::time::sleep(rest_after.unwrap_or(far_future));
        tokio::pin!(rest_timer);
        // Set by every event; the rest timer rests the connection when it
        // fires twice in a row without one.
        let mut busy = false;
        let slot = Arc::clone(&self.client.ownership.slot);
        let token = self.token.clone();
        // Both futures live across iterations: creating them registers a
        // waiter under a lock and dropping them unregisters it, which per
        // iteration was a measurable share of a busy session's time.
        let cancelled = token.cancelled();
        tokio::pin!(cancelled);
        let mut notified = std::pin::pin!(slot.mailbox.notified());
        loop {
            self.flush().await?;
            tokio::select! {
                biased;
                _ = &mut cancelled => return Err(self.cancelled()),
                end = &mut *writer => {
                    let end = end.map_or(WriterEnd::Cancelled, |(_, end)| end);
                    return Err(End::Writer(end));
                }
                _ = self.acks.front_released() => {
                    busy = true;
                    self.send_released_acks().await?;
                }
                // Only polled while something is held: a branch polled on
                // every wake-up of every session costs fan-out throughput.
                _ = self.gated.front_released(), if !self.gated.is_empty() => {
                    busy = true;
                    self.gated.pop_released(&mut self.out);
                }
                message = inbound.recv() => {
                    busy = true;
                    self.inbound(message.unwrap_or(Inbound::Failed(ReadError::Closed))).await?;
                    // Whatever else is already decoded, in the same wake-up.
                    for _ in 1..INBOUND_BATCH {
                        let Ok(message) = inbound.try_recv() else { break };
                        self.inbound(message).await?;
                    }
                    if keepalive.is_some() {
                        self.client.last_packet = Instant::now();
                    }
                }
                // Not gated on window room: a backlog must arm the slow
                // deadline even while the client acknowledges nothing.
                _ = &mut notified => {
                    notified.set(slot.mailbox.notified());
                    busy = true;
                    self.deliver().await?;
                }
                _ = std::future::ready(()), if self.more_mail && self.client.state.outbound.has_room() => {
                    busy = true;
                    self.deliver().await?;
                }
                // The timer is moved only when it fires (to the last packet
                // plus the period), not on every packet: a clock read per
                // packet is cheaper than re-arming a timer per packet.
                _ = &mut deadline, if keepalive.is_some() => {
                    let due = due(self.client.last_packet);
                    if due <= Instant::now() {
                        return Err(End::KeepAliveTimeout);
                    }
                    deadline.as_mut().reset(due);
                }
                _ = sleep_until_option(self.slow_deadline) => return Err(End::SlowSubscriber),
                _ = &mut rest_timer, if rest_after.is_some() => {
                    if !busy && self.can_rest(inbound) {
                        return Err(End::Rest);
                    }
                    busy = false;
                    rest_timer.as_mut().reset(Instant::now() + rest_after.unwrap_or(far_future));
                }
            }
        }
    }

    /// Handles what the read task sent.
    async fn inbound(&mut self, inbound: Inbound) -> Result<(), End> {
        match inbound {
            // The caller moves the keepalive's last-packet time, once per
            // batch: a clock read per packet showed in profiles.
            Inbound::Packet(packet) => self.handle(packet).await,
            Inbound::Failed(error) => Err(error.into()),
        }
    }

    /// Whether the connection has nothing to do and nothing owed to it, so
    /// it may give up its tasks: no acknowledgement waiting for a receipt,
    /// no packet or delivery waiting, nothing queued for the writer, no
    /// backlog deadline running.
    fn can_rest(&self, inbound: &mpsc::Receiver<Inbound>) -> bool {
        self.acks.is_empty()
            && self.gated.is_empty()
            && self.out.is_empty()
            // Nothing queued for the writer beyond the chunk it may be
            // writing: a client slow to read is not idle.
            && self.outgoing.capacity() == self.outgoing.max_capacity()
            && !self.writing.load(std::sync::atomic::Ordering::Acquire)
            && self.slow_deadline.is_none()
            && !self.more_mail
            && !self.client.state.has_retained_cursors()
            && inbound.is_empty()
            && self.client.ownership.slot.mailbox.is_empty()
    }

    /// Why the token was cancelled.
    fn cancelled(&self) -> End {
        super::cancelled_end(&self.client.ctx, self.client.slot())
    }

    /// Encodes a packet for the write task; the chunk is handed over at the
    /// end of the current wake-up, or now if it is full.
    async fn send(&mut self, packet: Outgoing) -> Result<(), End> {
        let start = self.out.len();
        match self.client.v5.as_deref() {
            Some(v5) => v5.encode(packet, &mut self.out),
            None => encode(&packet, self.client.version, &mut self.out),
        }
        if let Some(&first) = self.out.get(start) {
            self.tally.count(first);
        }
        if self.out.len() >= self.out_limit {
            self.flush().await?;
        }
        Ok(())
    }

    /// Hands the encoded packets to the write task, waiting while its queue
    /// is full (unless the connection is cancelled meanwhile).
    async fn flush(&mut self) -> Result<(), End> {
        let census = &self.client.ctx.metrics.census;
        census.packets_out.add(&mut self.tally);
        census.latency.add(&mut self.latency);
        if self.out.is_empty() {
            return Ok(());
        }
        let chunk = self.out.split().freeze();
        tokio::select! {
            sent = self.outgoing.send(chunk) => sent.map_err(|_| End::WriterEnded),
            _ = self.token.cancelled() => Err(self.cancelled()),
        }
    }

    /// Moves deliveries from the mailbox to the write task: QoS 0 always,
    /// QoS 1/2 while the in-flight window has room (order is kept: a QoS 1
    /// at the front waits for room and the rest waits behind it).
    async fn deliver(&mut self) -> Result<(), End> {
        let mut batch = std::mem::take(&mut self.batch);
        let room = self.client.state.outbound.room();
        let over_limit =
            self.client
                .ownership
                .slot
                .mailbox
                .take_front(DELIVERY_BATCH, room, &mut batch);
        self.more_mail = batch.len() == DELIVERY_BATCH;
        self.watch_backlog(over_limit);
        if !self.more_mail && self.client.state.has_retained_cursors() {
            self.pull_retained().await?;
        }
        // The clock is read only for a batch holding a message that can
        // expire: a clock read per wake-up showed in fan-out profiles.
        let now = batch
            .iter()
            .any(|delivery| delivery.message.expires_at().is_some())
            .then(Instant::now);
        if let Some(now) = now {
            self.drop_expired(&mut batch, now);
        }
        self.drop_denied(&mut batch);
        if self.client.v5.is_some() {
            self.drop_too_large(&mut batch, now);
        }
        self.record_latency(&batch);
        self.tally.publishes(count_by_qos(&batch));
        // Every delivery enters the in-flight window before any is written,
        // so a write failure midway leaves QoS 1/2 ones to be resent. Each
        // PUBLISH is encoded straight from the shared message.
        let mut ids = std::mem::take(&mut self.ids);
        let outbound = &mut self.client.state.outbound;
        ids.extend(batch.iter().map(|delivery| outbound.send(delivery)));
        // For the admin API; exact again whenever the connection rests.
        self.client
            .ownership
            .slot
            .set_in_flight(outbound.in_flight());
        let gate = self.record_sent(&batch, &ids);
        let sent = match (gate, self.gated.is_empty()) {
            (None, true) => self.encode_batch(&batch, &ids, now).await,
            (gate, _) => self.encode_held(&batch, &ids, now, gate).await,
        };
        batch.clear();
        ids.clear();
        self.batch = batch;
        self.ids = ids;
        sent
    }

    /// Encodes a batch of deliveries for the write task, handing chunks
    /// over as they fill.
    async fn encode_batch(
        &mut self,
        batch: &[Delivery],
        ids: &[Option<PacketId>],
        now: Option<Instant>,
    ) -> Result<(), End> {
        for (delivery, packet_id) in batch.iter().zip(ids) {
            self.encode_delivery(delivery, *packet_id, now);
            if self.out.len() >= self.out_limit {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// Encodes a batch that must wait for the store (`gate`), or behind
    /// one that does: into held chunks (see `gated`).
    async fn encode_held(
        &mut self,
        batch: &[Delivery],
        ids: &[Option<PacketId>],
        now: Option<Instant>,
        mut gate: Option<oneshot::Receiver<crate::types::Routed>>,
    ) -> Result<(), End> {
        // What is encoded already (acknowledgements) need not wait.
        self.flush().await?;
        for (delivery, packet_id) in batch.iter().zip(ids) {
            self.encode_delivery(delivery, *packet_id, now);
            if self.out.len() >= self.out_limit {
                let chunk = self.out.split();
                self.gated.push(chunk, gate.take());
            }
        }
        let chunk = self.out.split();
        self.gated.push(chunk, gate.take());
        Ok(())
    }

    /// Records the packet ids of stored deliveries about to be sent, so a
    /// restart resends them with the same ids [MQTT-4.4.0-1]. A QoS 2
    /// PUBLISH waits until its id is on disk: resent after a crash under
    /// another id, a client that had answered PUBREC would take it for a
    /// new message. QoS 1 ones do not wait (a new id costs a duplicate at
    /// most, which QoS 1 allows).
    /// Returns what a QoS 2 PUBLISH of the batch must wait for.
    fn record_sent(
        &self,
        batch: &[Delivery],
        ids: &[Option<PacketId>],
    ) -> Option<oneshot::Receiver<crate::types::Routed>> {
        let store = self.store()?;
        let sent = || {
            batch
                .iter()
                .zip(ids)
                .filter_map(|(delivery, id)| Some((delivery, (*id)?.get())))
                .filter(|(delivery, _)| delivery.message.stored_id != 0)
        };
        sent().next()?;
        let exactly_once = sent().any(|(delivery, _)| delivery.qos == QoS::ExactlyOnce);
        let client = self.client.ownership.slot.client_id.as_str();
        let (receipt, durable) = Receipt::new();
        let gate = exactly_once.then_some(&receipt);
        store.commit(gate, |w| {
            for (delivery, packet_id) in sent() {
                w.sent(client, delivery.message.stored_id, packet_id);
            }
        });
        exactly_once.then_some(durable)
    }

    /// Writes one delivery's PUBLISH; for an MQTT 5 client with its
    /// properties, remaining expiry, subscription identifiers and alias.
    fn encode_delivery(
        &mut self,
        delivery: &Delivery,
        packet_id: Option<PacketId>,
        now: Option<Instant>,
    ) {
        let alias = self
            .client
            .v5
            .as_mut()
            .map(|v5| v5.aliases_out.alias_for(&delivery.message.topic));
        let publish = delivery_publish(delivery, packet_id, now, alias);
        encode_publish_ref(&publish, &mut self.out);
    }

    /// Drops deliveries whose Message Expiry Interval has passed
    /// [MQTT-3.3.2-5]; counted in `messages_expired`.
    fn drop_expired(&self, batch: &mut Vec<Delivery>, now: Instant) {
        let before = batch.len();
        batch.retain(|delivery| {
            let expired = delivery.message.is_expired(now);
            if expired && delivery.qos != QoS::AtMostOnce {
                self.record_done(delivery.message.stored_id);
            }
            !expired
        });
        let expired = before - batch.len();
        if expired > 0 {
            Metrics::add(&self.client.ctx.metrics.messages_expired, expired as u64);
        }
    }

    /// Drops deliveries whose topic the ACL does not let this client read
    /// (`acl_denied_delivery`): retained and `$SYS` messages come this way
    /// too. QoS 1/2 ones are recorded done, as if delivered.
    fn drop_denied(&self, batch: &mut Vec<Delivery>) {
        if !self.client.listener.has_acl() {
            return;
        }
        let files = self.client.listener.files();
        let Some(acl) = files.security.acl.as_deref() else {
            return;
        };
        let before = batch.len();
        batch.retain(|delivery| {
            let topic = delivery.message.topic.as_str();
            let allowed = self.client.may_by(Some(acl), topic, Access::Read);
            if !allowed && delivery.qos != QoS::AtMostOnce {
                self.record_done(delivery.message.stored_id);
            }
            allowed
        });
        let denied = before - batch.len();
        if denied > 0 {
            let metrics = &self.client.ctx.metrics;
            Metrics::add(&metrics.acl_denied_delivery, denied as u64);
        }
    }

    /// A PUBLISH left in flight by an earlier connection of this session
    /// whose topic the ACL does not let this client read (another user may
    /// have taken the session over): its id, so it is not resent.
    fn denied_resend(&self, packet: &Outgoing) -> Option<PacketId> {
        match packet {
            Outgoing::Publish(publish)
                if !self.client.may(publish.topic.as_str(), Access::Read) =>
            {
                publish.packet_id
            }
            _ => None,
        }
    }

    /// Ends an in-flight delivery the ACL denies as if acknowledged.
    fn forget_denied(&mut self, id: PacketId) {
        let acked = self.client.state.outbound.puback(id);
        self.record_done(Self::acknowledged(acked, "ACL"));
        Metrics::incr(&self.client.ctx.metrics.acl_denied_delivery);
    }

    /// MQTT 5: drops what would exceed the client's Maximum Packet Size
    /// [MQTT-3.1.2-25] (`dropped_too_large`; for this subscriber only).
    /// `now` is set when a message in the batch can expire.
    fn drop_too_large(&self, batch: &mut Vec<Delivery>, now: Option<Instant>) {
        let Some(max) = self.client.v5.as_ref().and_then(|v5| v5.max_packet_size) else {
            return;
        };
        let before = batch.len();
        batch.retain(|delivery| {
            // Sized with the full topic: an alias can only make it smaller.
            let publish = delivery_publish(delivery, PacketId::new(1), now, Some(AliasUse::Set(1)));
            let fits = encoded_publish_ref_len(&publish) <= max as usize;
            if !fits && delivery.qos != QoS::AtMostOnce {
                self.record_done(delivery.message.stored_id);
            }
            fits
        });
        let dropped = before - batch.len();
        if dropped > 0 {
            Metrics::add(&self.client.ctx.metrics.dropped_too_large, dropped as u64);
            debug!(
                dropped,
                max, "deliveries over the client's Maximum Packet Size dropped"
            );
        }
    }

    /// Arms the slow-subscriber deadline while the mailbox is over its limit
    /// (publishers are waiting on this session), disarms it once it is not.
    fn watch_backlog(&mut self, over: bool) {
        match (over, self.slow_deadline) {
            (true, None) => {
                self.slow_deadline =
                    Some(Instant::now() + self.client.settings.slow_subscriber_timeout());
            }
            (false, Some(_)) => self.slow_deadline = None,
            _ => {}
        }
    }

    async fn handle(&mut self, packet: Packet) -> Result<(), End> {
        match packet {
            Packet::Publish(publish) => self.publish(publish).await,
            Packet::PubAck(ack) => {
                let acked = self.client.state.outbound.puback(ack.packet_id);
                self.record_done(Self::acknowledged(acked, "PUBACK"));
                self.deliver().await
            }
            Packet::PubRec(ack) => {
                let id = ack.packet_id;
                if ack.reason.is_failure() {
                    // MQTT 5: the client refused it; the exchange ends here
                    // [MQTT-4.3.3-?] and its window slot is free again.
                    let acked = self.client.state.outbound.puback(id);
                    self.record_done(Self::acknowledged(acked, "PUBREC"));
                    return self.deliver().await;
                }
                let acked = self.client.state.outbound.pubrec(id);
                let stored_id = Self::acknowledged(acked, "PUBREC");
                // [MQTT-4.3.3-1] answer PUBREC with PUBREL; once the store
                // knows, so a restart resends PUBREL rather than the PUBLISH.
                let pubrel = Outgoing::PubRel(Ack::new(id));
                match stored_id {
                    0 => self.send(pubrel).await,
                    _ => {
                        self.send_once_stored(pubrel, |w, client| w.released(client, stored_id))
                            .await
                    }
                }
            }
            Packet::PubRel(ack) => {
                let id = ack.packet_id;
                let known = self.client.state.inbound.release(id);
                let reason = if known || !self.client.version.is_v5() {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                };
                let pubcomp = Outgoing::PubComp(Ack::with_reason(id, reason));
                // The id is let go on disk before PUBCOMP tells the client
                // it may reuse it: a restart must not take its next
                // message for a resend.
                match known {
                    true => {
                        self.send_once_stored(pubcomp, |w, client| w.unhold(client, id.get()))
                            .await
                    }
                    false => self.send(pubcomp).await,
                }
            }
            Packet::PubComp(ack) => {
                let acked = self.client.state.outbound.pubcomp(ack.packet_id);
                self.record_done(Self::acknowledged(acked, "PUBCOMP"));
                self.deliver().await
            }
            Packet::Subscribe(subscribe) => self.subscribe(subscribe).await,
            Packet::Unsubscribe(unsubscribe) => self.unsubscribe(unsubscribe).await,
            Packet::PingReq => self.send(Outgoing::PingResp).await,
            Packet::Disconnect(disconnect) => self.disconnected(disconnect),
            Packet::Auth(auth) => self.auth(auth).await,
        }
    }

    /// MQTT 5 re-authentication [MQTT-4.12.1]: AUTH 0x19 starts a new
    /// exchange with the method the connection authenticated with, AUTH 0x18
    /// continues it; an AUTH on a connection without a method, or naming
    /// another, is a protocol error [MQTT-4.12.0-?].
    async fn auth(&mut self, auth: Auth) -> Result<(), End> {
        let ctx = Arc::clone(&self.client.ctx);
        let listener = Arc::clone(&self.client.listener);
        let client_id = self.client.ownership.slot.client_id.clone();
        let Some(v5) = self.client.v5.as_mut() else {
            return Err(End::UnexpectedAuth);
        };
        let Some(method) = v5.auth_method.clone() else {
            return Err(End::UnexpectedAuth);
        };
        let Some(authenticator) = enhanced_auth::authenticator_for(&ctx, &listener, &method) else {
            return Err(End::UnexpectedAuth);
        };
        if auth.authentication_method.as_deref() != Some(method.as_str()) {
            return Err(End::UnexpectedAuth);
        }
        let (mut exchange, rounds) = match (auth.reason, v5.reauth.take()) {
            (ReasonCode::RE_AUTHENTICATE, _) => (
                authenticator.start(client_id.as_str(), v5.username.as_deref()),
                0,
            ),
            (ReasonCode::CONTINUE_AUTHENTICATION, Some(going)) => going,
            _ => return Err(End::UnexpectedAuth),
        };
        if rounds >= MAX_AUTH_ROUNDS {
            return Err(End::AuthFailed(ReasonCode::NOT_AUTHORIZED));
        }
        let data = auth.authentication_data.as_deref();
        let (answer, done) = enhanced_auth::reauthenticate_step(&mut *exchange, &method, data)
            .map_err(End::AuthFailed)?;
        if !done {
            v5.reauth = Some((exchange, rounds + 1));
        }
        self.send(Outgoing::Auth(answer)).await
    }

    /// The client's DISCONNECT: MQTT 5 may change the Session Expiry
    /// Interval (not from 0 [MQTT-3.14.2-2]) and ask for the will (0x04).
    fn disconnected(&mut self, disconnect: Disconnect) -> Result<(), End> {
        if let Some(interval) = disconnect.properties.session_expiry_interval {
            if self.client.ends_with_connection() && interval != 0 {
                return Err(End::SessionExpiryFromZero);
            }
            self.client.set_expiry(interval);
        }
        if disconnect.reason == ReasonCode::DISCONNECT_WITH_WILL {
            return Err(End::DisconnectWithWill);
        }
        Err(End::Disconnect)
    }

    async fn unsubscribe(&mut self, unsubscribe: Unsubscribe) -> Result<(), End> {
        let Unsubscribe {
            packet_id, filters, ..
        } = unsubscribe;
        self.client.state.drop_retained_cursors(&filters);
        let client_id = self.client.ownership.slot.client_id.clone();
        let kept = self.store().map(|_| filters.clone());
        let existed = self
            .client
            .ctx
            .router
            .unsubscribe(client_id.clone(), filters)
            .await?;
        if let (Some(store), Some(filters)) = (self.store(), kept) {
            store.commit(None, |w| {
                for (filter, _) in filters.into_iter().zip(&existed).filter(|(_, e)| **e) {
                    let client = client_id.to_string();
                    w.record(&Record::Unsubscribe { client, filter });
                }
            });
        }
        let codes = existed
            .into_iter()
            .map(|existed| match existed {
                true => ReasonCode::SUCCESS,
                false => ReasonCode::NO_SUBSCRIPTION_EXISTED,
            })
            .collect();
        // [MQTT-3.10.4-4] UNSUBACK even when nothing was subscribed.
        self.send(Outgoing::UnsubAck {
            packet_id,
            codes,
            properties: AckProperties::default(),
        })
        .await
    }

    /// The store id an acknowledgement finished (0: none), after logging
    /// an acknowledgement of nothing.
    fn acknowledged<E: std::fmt::Display>(result: Result<u64, E>, kind: &str) -> u64 {
        result.unwrap_or_else(|error| {
            // Late or duplicate acks happen after a resume; they are harmless.
            debug!(%error, kind, "ignored acknowledgement");
            0
        })
    }

    /// The store, if this session's deliveries are kept in it (a
    /// persistent session while `storage.enabled`).
    fn store(&self) -> Option<&Store> {
        let store = self.client.ctx.store.as_ref()?;
        self.client.ownership.slot.is_persistent().then_some(store)
    }

    /// Sends `packet` once `write`'s records are durable (queued behind
    /// the acknowledgements owed, see `acks`), or at once when this session
    /// is not kept in the store.
    async fn send_once_stored(
        &mut self,
        packet: Outgoing,
        write: impl FnOnce(&mut Writer<'_>, &str),
    ) -> Result<(), End> {
        let Some(store) = self.store() else {
            return self.send(packet).await;
        };
        let client = self.client.ownership.slot.client_id.as_str();
        let (receipt, released) = Receipt::new();
        store.commit(Some(&receipt), |w| write(w, client));
        drop(receipt);
        self.acks
            .push(packet, released)
            .map_err(|_| End::TooManyUnacknowledged)
    }

    /// Records that a stored delivery is finished. Nothing waits for it: if
    /// it is lost in a crash, the delivery is resent after the restart.
    fn record_done(&self, stored_id: u64) {
        if let (Some(store), true) = (self.store(), stored_id != 0) {
            let client = &self.client.ownership.slot.client_id;
            store.commit(None, |w| w.done(client.as_str(), stored_id));
        }
    }

    async fn publish(&mut self, mut publish: Publish) -> Result<(), End> {
        if let Some(v5) = self.client.v5.as_mut() {
            v5.aliases_in.resolve(&mut publish).map_err(End::Protocol)?;
        }
        let ctx = &self.client.ctx;
        ctx.metrics.census.received(publish.qos);
        if !ctx.topic_caps.fits(publish.topic.as_str()) {
            return Err(End::TopicLimit);
        }
        if !self.client.may(publish.topic.as_str(), Access::Write) {
            return self.deny_publish(&publish);
        }
        // Clearing a retained message frees memory, so it is always let in.
        let clears = publish.retain && publish.payload.is_empty();
        if ctx.budget.is_over() && !clears {
            if let (Some(id), true) = (publish.packet_id, self.client.v5.is_some()) {
                // MQTT 5 can say "not accepted" [MQTT-3.3.4-?]: 0x97, in
                // the order of the PUBLISHes; the client decides to resend.
                Metrics::incr(&ctx.metrics.memory_limit_refusals);
                return self.refuse_publish(publish.qos, id, ReasonCode::QUOTA_EXCEEDED);
            }
            if publish.qos != QoS::AtMostOnce {
                return Err(End::MemoryLimit);
            }
            if let Some(suppressed) = ctx
                .throttles
                .memory
                .count(&ctx.metrics.memory_limit_refusals)
            {
                warn!(suppressed, "QoS 0 message dropped: over memory_limit_mb");
            }
            return Ok(());
        }
        let packet_id = publish.packet_id;
        if packet_id.is_some() && self.client.v5.is_some() {
            // [MQTT-3.3.4-8]: the broker's Receive Maximum, counting
            // PUBLISHes not yet acknowledged and QoS 2 ones awaiting PUBREL.
            let unacknowledged = self.acks.owed_for_publishes() + self.client.state.inbound.held();
            if unacknowledged >= usize::from(self.client.settings.limits.receive_maximum) {
                return Err(End::ReceiveMaximumExceeded);
            }
        }
        let route = match (publish.qos, packet_id) {
            (QoS::ExactlyOnce, Some(id)) => self.client.state.inbound.receive(id),
            _ => true,
        };
        if let (false, false, Some(id), true) =
            (route, publish.dup, packet_id, self.client.v5.is_some())
        {
            // A new QoS 2 PUBLISH (DUP 0) with an id still awaiting PUBREL:
            // the client's state and ours disagree. MQTT 5 says so with
            // PUBREC 0x91 and routes nothing; a resend (DUP 1) is answered
            // as before.
            return self.refuse_publish(publish.qos, id, ReasonCode::PACKET_IDENTIFIER_IN_USE);
        }
        let ack = match (publish.qos, packet_id) {
            (QoS::AtLeastOnce, Some(id)) => Some(Outgoing::PubAck(Ack::new(id))),
            (QoS::ExactlyOnce, Some(id)) => Some(Outgoing::PubRec(Ack::new(id))),
            _ => None,
        };
        // Every acknowledged PUBLISH, routed or a resend, gets a receipt, so
        // acknowledgements keep the order of the PUBLISHes. QoS 0 needs none.
        let receipt = match ack {
            Some(ack) => {
                let (receipt, released) = Receipt::new();
                self.acks
                    .push(ack, released)
                    .map_err(|_| End::TooManyUnacknowledged)?;
                Some(receipt)
            }
            None => None,
        };
        if route {
            // A persistent session's QoS 2 id is kept in the same commit as
            // the message, so a restart neither loses it nor routes the
            // resend again [MQTT-4.3.3-2].
            let hold = match (publish.qos, packet_id, self.store().is_some()) {
                (QoS::ExactlyOnce, Some(id), true) => {
                    Some((self.client.ownership.slot.client_id.clone(), id))
                }
                _ => None,
            };
            let message = self.message(publish);
            let router = &self.client.ctx.router;
            router.publish_held(message, receipt, hold).await?;
        }
        Ok(())
    }

    /// A PUBLISH the ACL denies: dropped and counted. QoS 1/2 are still
    /// acknowledged (MQTT 5 with 0x87 Not authorized; 3.1.1 has no way to
    /// say it, and a missing acknowledgement would only bring resends).
    fn deny_publish(&mut self, publish: &Publish) -> Result<(), End> {
        let ctx = &self.client.ctx;
        Metrics::incr(&ctx.metrics.acl_denied_publish);
        if let Some(suppressed) = ctx.throttles.acl.allow() {
            let topic = publish.topic.as_str();
            info!(
                topic,
                suppressed, "PUBLISH dropped: the ACL denies this topic"
            );
        }
        match publish.packet_id {
            Some(id) => self.refuse_publish(publish.qos, id, ReasonCode::NOT_AUTHORIZED),
            None => Ok(()),
        }
    }

    /// Answers a QoS 1/2 PUBLISH with a failure reason, behind the
    /// acknowledgements owed before it: its receipt is released at once.
    fn refuse_publish(&mut self, qos: QoS, id: PacketId, reason: ReasonCode) -> Result<(), End> {
        let ack = Ack::with_reason(id, reason);
        let ack = match qos {
            QoS::ExactlyOnce => Outgoing::PubRec(ack),
            _ => Outgoing::PubAck(ack),
        };
        let (receipt, released) = Receipt::new();
        receipt.matched();
        drop(receipt);
        self.acks
            .push(ack, released)
            .map_err(|_| End::TooManyUnacknowledged)?;
        Ok(())
    }

    /// Records the latency of the sampled messages in a batch about to be
    /// encoded: one clock read for the batch, none when nothing in it was
    /// sampled.
    fn record_latency(&mut self, batch: &[Delivery]) {
        let mut sampled = batch
            .iter()
            .map(|delivery| delivery.message.published_at)
            .filter(|stamp| stamp.is_set())
            .peekable();
        if sampled.peek().is_none() {
            return;
        }
        let now = Stamp::now();
        for stamp in sampled {
            self.latency.record(stamp, now);
        }
    }

    /// The message a PUBLISH becomes: charged to the memory budget, with
    /// what an MQTT 5 publisher set besides topic and payload.
    fn message(&mut self, publish: Publish) -> Message {
        let retain = publish.retain;
        let mut message = Message::charged(
            publish.topic,
            publish.payload,
            publish.qos,
            publish.retain,
            &self.client.ctx.budget,
        );
        if !retain {
            message.published_at = self.client.sampler.next();
        }
        // No Local needs the publisher of every MQTT 5 message; the `hash`
        // strategy of shared subscriptions, that of every message.
        let by_publisher =
            self.client.v5.is_some() || self.client.ctx.shared_strategy == Strategy::Hash;
        let message = match by_publisher {
            true => message.published_by_client(self.client.ownership.slot.client_id.clone()),
            false => message,
        };
        match publish.properties {
            Some(properties) => message.with_extra(MessageExtra::from_properties(*properties)),
            None => message,
        }
    }

    /// Sends the acknowledgements whose messages every subscriber has taken.
    async fn send_released_acks(&mut self) -> Result<(), End> {
        let v5 = self.client.version.is_v5();
        for ack in self.acks.pop_released(v5) {
            self.send(ack).await?;
        }
        Ok(())
    }

    async fn subscribe(&mut self, subscribe: Subscribe) -> Result<(), End> {
        let v5 = self.client.version.is_v5();
        let (filters, denied) = self.acl_filters(subscribe.filters);
        let kept = self.store().map(|_| filters.clone());
        let request = SubscribeRequest {
            filters,
            subscription_id: subscribe.subscription_identifier,
            v5,
        };
        let Subscribed { codes, cursors } = match request.filters.is_empty() {
            true => Subscribed::default(),
            false => {
                self.client
                    .ctx
                    .router
                    .subscribe(self.client.ownership.slot.clone(), request)
                    .await?
            }
        };
        if let Some(filters) = kept {
            self.record_subscriptions(filters, &codes, subscribe.subscription_identifier)
                .await;
        }
        self.client.state.add_retained_cursors(cursors);
        let codes = merge_denied(codes, &denied, v5);
        let mut properties = AckProperties::default();
        let problem_info = self.client.v5.as_ref().is_some_and(|v5| v5.problem_info);
        if problem_info && codes.iter().any(|code| code.is_failure()) {
            properties.reason_string = Some(SUBACK_REFUSALS.to_owned());
        }
        self.send(Outgoing::SubAck {
            packet_id: subscribe.packet_id,
            codes,
            properties,
        })
        .await
    }

    /// Splits off the filters the ACL lets the client read nothing through
    /// (their positions in the SUBSCRIBE), counted and logged.
    fn acl_filters(
        &self,
        filters: Vec<(TopicFilter, SubscriptionOptions)>,
    ) -> (Vec<(TopicFilter, SubscriptionOptions)>, Vec<usize>) {
        let files = self.client.listener.files();
        let Some(acl) = &files.security.acl else {
            return (filters, Vec::new());
        };
        let user = self.client.user.as_deref();
        let client_id = self.client.ownership.slot.client_id.as_str();
        let mut denied = Vec::new();
        let mut allowed = Vec::with_capacity(filters.len());
        for (index, (filter, options)) in filters.into_iter().enumerate() {
            let inner = match crate::router::shared::split(&filter) {
                Some(Ok((_, inner))) => inner,
                _ => filter.clone(),
            };
            if acl.may_subscribe(user, client_id, inner.as_str()) {
                allowed.push((filter, options));
            } else {
                denied.push(index);
            }
        }
        if !denied.is_empty() {
            let ctx = &self.client.ctx;
            Metrics::add(&ctx.metrics.acl_denied_subscribe, denied.len() as u64);
            if let Some(suppressed) = ctx.throttles.acl.allow() {
                info!(
                    denied = denied.len(),
                    suppressed, "SUBSCRIBE refused in part: the ACL allows reading nothing there"
                );
            }
        }
        (allowed, denied)
    }

    /// Writes a persistent session's new subscriptions and waits until they
    /// are durable: the SUBACK promises them [MQTT-3.8.4-?], restarts
    /// included.
    async fn record_subscriptions(
        &self,
        filters: Vec<(TopicFilter, SubscriptionOptions)>,
        codes: &[ReasonCode],
        subscription_id: Option<u32>,
    ) {
        let Some(store) = self.store() else { return };
        let client = self.client.ownership.slot.client_id.as_str();
        let (receipt, durable) = Receipt::new();
        store.commit(Some(&receipt), |w| {
            for ((filter, options), code) in filters.into_iter().zip(codes) {
                if !code.is_failure() {
                    w.record(&Record::Subscribe {
                        client: client.to_string(),
                        filter,
                        options,
                        subscription_id,
                    });
                }
            }
        });
        drop(receipt);
        let _ = durable.await;
    }

    /// Asks the router for the next batch of a new subscription's retained
    /// messages once the mailbox has drained: they reach the mailbox at the
    /// pace the client takes them, never all at once.
    async fn pull_retained(&mut self) -> Result<(), End> {
        let slot = &self.client.ownership.slot;
        if !slot.mailbox.is_empty() {
            return Ok(());
        }
        let Some(cursor) = self.client.state.next_retained_cursor() else {
            return Ok(());
        };
        let max = RETAINED_BATCH.min(self.client.settings.limits.max_queued_messages);
        let router = &self.client.ctx.router;
        if let Some(cursor) = router.retained(Arc::clone(slot), cursor, max).await? {
            self.client.state.put_back_retained_cursor(cursor);
        }
        self.more_mail = true;
        Ok(())
    }

    /// Discards a session's subscriptions and queued messages (the session
    /// ends). The mailbox is emptied only after the router confirms, so a
    /// message routed under the old subscriptions cannot slip in after.
    /// QoS 1/2 messages a shared subscription gave it, queued or not yet
    /// acknowledged (in `state`), go to another member of their group.
    pub async fn discard(ctx: &Context, slot: &SessionSlot, state: Option<SessionState>) {
        if let (Some(store), true) = (&ctx.store, slot.take_stored()) {
            let client = slot.client_id.to_string();
            store.commit(None, |w| w.record(&Record::SessionGone { client }));
        }
        if !slot.take_subscribed() {
            slot.mailbox.clear();
            return;
        }
        let (done, answer) = oneshot::channel();
        let msg = RouterMsg::DropSession {
            client_id: slot.client_id.clone(),
            done,
        };
        // The router only stops at shutdown, when nothing survives anyway.
        if ctx.router.send(msg).await.is_ok() {
            let _ = answer.await;
        }
        let mut shared = state.map_or_else(Vec::new, |mut state| state.outbound.take_shared());
        shared.extend(slot.mailbox.drain().into_iter().filter_map(|delivery| {
            let filter = delivery.shared()?.clone();
            (delivery.qos != QoS::AtMostOnce).then_some((filter, delivery.message, delivery.qos))
        }));
        if !shared.is_empty() {
            let _ = ctx.router.send(RouterMsg::Redeliver { shared }).await;
        }
    }
}

/// How many of `batch` go out at QoS 0, 1 and 2 (the sent-by-QoS counts).
fn count_by_qos(batch: &[Delivery]) -> [u32; 3] {
    let mut by_qos = [0u32; 3];
    for delivery in batch {
        let count = &mut by_qos[delivery.qos as usize];
        *count = count.saturating_add(1);
    }
    by_qos
}

/// The SUBACK codes in the SUBSCRIBE's order: the router's for the
/// filters it took, 0x80 (3.1.1) / 0x87 (MQTT 5) where the ACL refused.
fn merge_denied(codes: Vec<ReasonCode>, denied: &[usize], v5: bool) -> Vec<ReasonCode> {
    if denied.is_empty() {
        return codes;
    }
    let refusal = match v5 {
        true => ReasonCode::NOT_AUTHORIZED,
        false => ReasonCode::UNSPECIFIED_ERROR,
    };
    // `denied` is in ascending order: one pass over both lists.
    let mut routed = codes.into_iter();
    let mut denied = denied.iter().peekable();
    let total = routed.len() + denied.len();
    (0..total)
        .map(|index| match denied.next_if(|&&at| at == index) {
            Some(_) => refusal,
            None => routed.next().unwrap_or(refusal),
        })
        .collect()
}

/// The PUBLISH that carries `delivery`: with `alias` (an MQTT 5 client's
/// connection), also its properties, the expiry it has left (`now` is set
/// when a message of the batch can expire), its subscription identifiers
/// and the topic alias.
fn delivery_publish(
    delivery: &Delivery,
    packet_id: Option<PacketId>,
    now: Option<Instant>,
    alias: Option<AliasUse>,
) -> PublishRef<'_> {
    let message = &delivery.message;
    PublishRef {
        dup: false,
        qos: delivery.qos,
        retain: delivery.retain,
        topic: &message.topic,
        packet_id,
        payload: &message.payload,
        v5: alias.map(|alias| PublishV5 {
            properties: message.properties(),
            message_expiry_interval: now.and_then(|now| message.remaining_expiry(now)),
            topic_alias: match alias {
                AliasUse::None => None,
                AliasUse::Set(alias) | AliasUse::Known(alias) => Some(alias),
            },
            omit_topic: matches!(alias, AliasUse::Known(_)),
            subscription_identifiers: delivery.subscription_ids(),
        }),
    }
}
