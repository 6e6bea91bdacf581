//! One publisher task: encodes a batch of PUBLISHes into the write buffer,
//! writes it with one `write_all`, then takes whatever acks have arrived, and
//! so on until the deadline; then waits (bounded) for the last acks.
//!
//! | condition                                | the loop then          |
//! |------------------------------------------|------------------------|
//! | QoS > 0 and the window is full           | waits for an ack       |
//! | `--rate` given and the next message is not yet due | waits for its time or an ack |
//! | otherwise                                | writes the next batch, reads acks without waiting |
//! | past `deadline`, or `limit` messages sent | stops publishing, waits for acks until `hard_deadline` |
//!
//! Acks are few and small (at most the window), so writing before reading
//! cannot deadlock with a broker that writes acks before it reads on.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tidemq_protocol::{Ack, Packet, PacketId, Publish, QoS, TopicName};
use tokio::time::{sleep_until, Instant};

use crate::client::{Client, BULK_READ_CHUNK};
use crate::error::BenchError;
use crate::payload::{Clock, Header};
use crate::progress::Counters;
use crate::window::{AckOutcome, Window};
use crate::wire::{self, ServerPacket};

/// Messages encoded into one write at most.
const BATCH_MESSAGES: u64 = 256;
/// Bytes gathered into one write at most.
const BATCH_BYTES: usize = 64 * 1024;

/// Reason codes at or above this are failures [MQTT-2.4].
const REASON_FAILURE: u8 = 0x80;

pub struct PublisherPlan {
    pub id: u32,
    pub run_id: u64,
    pub topic: TopicName,
    pub qos: QoS,
    pub payload: usize,
    /// Unacknowledged QoS 1/2 messages allowed at once.
    pub window: usize,
    /// Messages per second for this publisher; `None` is as fast as it can.
    pub rate: Option<f64>,
    /// Messages to send at most (`--count`); `None` is until `deadline`.
    pub limit: Option<u64>,
    pub start: Instant,
    /// Stop publishing.
    pub deadline: Instant,
    /// Stop waiting for acks.
    pub hard_deadline: Instant,
    pub keep_alive: Duration,
    pub clock: Clock,
}

#[derive(Debug, Clone, Default)]
pub struct PublisherResult {
    /// Messages handed to the socket, numbered 0..sent. When the publisher
    /// ends on a write error the last batch (at most [`BATCH_MESSAGES`]) may
    /// not have left, and shows as lost.
    pub sent: u64,
    /// QoS 1/2 exchanges completed (refused ones included).
    pub acked: u64,
    /// QoS 1/2 exchanges the broker answered with a failure reason.
    pub refused: u64,
    /// Still in flight when the publisher gave up.
    pub unacked: u64,
    /// Acks for ids not in flight.
    pub unexpected: u64,
    pub error: Option<String>,
}

pub async fn run(
    mut client: Client,
    plan: PublisherPlan,
    counters: Arc<Counters>,
) -> PublisherResult {
    client.set_read_chunk(BULK_READ_CHUNK);
    let mut state = State {
        window: Window::new(plan.window),
        result: PublisherResult::default(),
        payload_buf: BytesMut::with_capacity(BATCH_BYTES),
        last_write: Instant::now(),
    };
    let outcome = state.publish(&mut client, &plan, &counters).await;
    let outcome = match outcome {
        Ok(()) => state.drain(&mut client, &plan).await,
        Err(e) => Err(e),
    };
    state.result.unacked = state.window.in_flight() as u64;
    if let Err(e) = outcome {
        state.result.error = Some(e.to_string());
    }
    client.disconnect(Duration::from_millis(200)).await;
    state.result
}

struct State {
    window: Window,
    result: PublisherResult,
    payload_buf: BytesMut,
    last_write: Instant,
}

impl State {
    async fn publish(
        &mut self,
        client: &mut Client,
        plan: &PublisherPlan,
        counters: &Counters,
    ) -> Result<(), BenchError> {
        loop {
            let now = Instant::now();
            let left = plan
                .limit
                .map_or(u64::MAX, |l| l.saturating_sub(self.result.sent));
            if now >= plan.deadline || left == 0 {
                return Ok(());
            }
            let mut budget = BATCH_MESSAGES.min(left);
            let mut next_due = None;
            if let Some(rate) = plan.rate {
                let due = (now.duration_since(plan.start).as_secs_f64() * rate) as u64 + 1;
                budget = budget.min(due.saturating_sub(self.result.sent));
                if budget == 0 {
                    let at = (self.result.sent as f64) / rate;
                    next_due = Some(plan.start + Duration::from_secs_f64(at));
                }
            }
            if plan.qos != QoS::AtMostOnce {
                budget = budget.min(self.window.free() as u64);
            }
            let written = self.encode_batch(client, plan, budget);
            if !client.write_buf.is_empty() {
                client.flush_until(plan.hard_deadline).await?;
                self.last_write = Instant::now();
                Counters::add(&counters.sent, written);
            }
            let window_full = plan.qos != QoS::AtMostOnce && self.window.free() == 0;
            if window_full || next_due.is_some() {
                let wake = next_due
                    .unwrap_or(plan.deadline)
                    .min(plan.deadline)
                    .min(self.last_write + plan.keep_alive);
                tokio::select! {
                    read = client.read() => if !read? { return Err(BenchError::Closed) },
                    _ = sleep_until(wake) => {}
                }
            } else if !client.try_read()? {
                return Err(BenchError::Closed);
            }
            self.handle_incoming(client)?;
            if self.last_write.elapsed() >= plan.keep_alive {
                wire::encode_control(&mut client.write_buf, &Packet::PingReq);
            }
        }
    }

    /// Encodes up to `budget` messages, stopping at [`BATCH_BYTES`].
    fn encode_batch(&mut self, client: &mut Client, plan: &PublisherPlan, budget: u64) -> u64 {
        let mut written = 0;
        while written < budget && client.write_buf.len() < BATCH_BYTES {
            let packet_id: Option<PacketId> = match plan.qos {
                QoS::AtMostOnce => None,
                qos => match self.window.open(qos) {
                    Some(id) => Some(id),
                    None => break,
                },
            };
            Header {
                run_id: plan.run_id,
                publisher: plan.id,
                seq: self.result.sent,
                sent_ns: plan.clock.now_ns(),
            }
            .write(&mut self.payload_buf, plan.payload);
            let publish = Publish {
                dup: false,
                qos: plan.qos,
                retain: false,
                topic: plan.topic.clone(),
                packet_id,
                payload: self.payload_buf.split().freeze(),
                properties: None,
            };
            wire::encode_publish(&mut client.write_buf, client.version, publish);
            self.result.sent += 1;
            written += 1;
        }
        written
    }

    /// After the deadline: answers PUBRECs and counts acks until the window
    /// is empty or `hard_deadline`.
    async fn drain(&mut self, client: &mut Client, plan: &PublisherPlan) -> Result<(), BenchError> {
        while self.window.in_flight() > 0 {
            client.flush_until(plan.hard_deadline).await?;
            tokio::select! {
                read = client.read() => if !read? { return Err(BenchError::Closed) },
                _ = sleep_until(plan.hard_deadline) => return Ok(()),
            }
            self.handle_incoming(client)?;
        }
        client.flush_until(plan.hard_deadline).await
    }

    fn handle_incoming(&mut self, client: &mut Client) -> Result<(), BenchError> {
        while let Some(packet) = client.next_packet()? {
            let outcome = match packet {
                ServerPacket::PubAck(ack) => {
                    self.count_refusal(ack.reason);
                    self.window.on_puback(ack.packet_id)
                }
                ServerPacket::PubRec(ack) if ack.reason >= REASON_FAILURE => {
                    self.count_refusal(ack.reason);
                    self.window.on_refused_pubrec(ack.packet_id)
                }
                ServerPacket::PubRec(ack) => match self.window.on_pubrec(ack.packet_id) {
                    AckOutcome::SendRel => {
                        if let Some(id) = PacketId::new(ack.packet_id) {
                            wire::encode_control(
                                &mut client.write_buf,
                                &Packet::PubRel(Ack::new(id)),
                            );
                        }
                        AckOutcome::SendRel
                    }
                    other => other,
                },
                ServerPacket::PubComp(ack) => {
                    self.count_refusal(ack.reason);
                    self.window.on_pubcomp(ack.packet_id)
                }
                ServerPacket::PingResp => continue,
                ServerPacket::Disconnect { reason } => {
                    return Err(BenchError::Disconnected(reason))
                }
                other => {
                    return Err(BenchError::Unexpected(format!(
                        "{other:?} sent to a publisher"
                    )))
                }
            };
            match outcome {
                AckOutcome::Done => self.result.acked += 1,
                AckOutcome::SendRel => {}
                AckOutcome::Unexpected => self.result.unexpected += 1,
            }
        }
        Ok(())
    }

    fn count_refusal(&mut self, reason: u8) {
        if reason >= REASON_FAILURE {
            self.result.refused += 1;
        }
    }
}
