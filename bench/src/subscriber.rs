//! One subscriber task: reads, counts every PUBLISH in its [`Tracker`],
//! records the latency of first arrivals, and answers QoS 1/2 (PUBACK;
//! PUBREC then PUBCOMP on PUBREL) with one write per read. It runs until the
//! run's coordinator cancels it, pinging when it has sent nothing for a
//! keepalive interval.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use tidemq_protocol::{Ack, Packet, QoS};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::client::{Client, BULK_READ_CHUNK};
use crate::error::BenchError;
use crate::histogram::Histogram;
use crate::payload::{Clock, Header};
use crate::progress::Counters;
use crate::tracker::{Arrival, Tracker};
use crate::wire::{self, ServerPacket};

pub struct SubscriberPlan {
    pub run_id: u64,
    /// The publisher ids whose messages this subscriber should get.
    pub expected: Range<u32>,
    /// Give up on a write that makes no progress by then.
    pub hard_deadline: Instant,
    pub keep_alive: Duration,
    pub clock: Clock,
}

#[derive(Debug)]
pub struct SubscriberResult {
    pub tracker: Tracker,
    /// Nanoseconds from send to arrival, first arrivals only.
    pub latency: Histogram,
    pub last_arrival: Option<Instant>,
    pub error: Option<String>,
}

pub async fn run(
    mut client: Client,
    plan: SubscriberPlan,
    counters: Arc<Counters>,
    stop: CancellationToken,
) -> SubscriberResult {
    client.set_read_chunk(BULK_READ_CHUNK);
    let mut result = SubscriberResult {
        tracker: Tracker::new(plan.run_id, plan.expected.clone()),
        latency: Histogram::new(),
        last_arrival: None,
        error: None,
    };
    if let Err(e) = receive(&mut client, &plan, &counters, &stop, &mut result).await {
        result.error = Some(e.to_string());
    }
    client.disconnect(Duration::from_millis(200)).await;
    result
}

async fn receive(
    client: &mut Client,
    plan: &SubscriberPlan,
    counters: &Counters,
    stop: &CancellationToken,
    result: &mut SubscriberResult,
) -> Result<(), BenchError> {
    let mut next_ping = Instant::now() + plan.keep_alive;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            read = client.read() => if !read? { return Err(BenchError::Closed) },
            _ = sleep_until(next_ping) => {
                wire::encode_control(&mut client.write_buf, &Packet::PingReq);
            }
        }
        let (received, unique) = handle_incoming(client, plan, result)?;
        if received > 0 {
            result.last_arrival = Some(Instant::now());
        }
        Counters::add(&counters.received, received);
        Counters::add(&counters.unique, unique);
        if !client.write_buf.is_empty() {
            client.flush_until(plan.hard_deadline).await?;
            next_ping = Instant::now() + plan.keep_alive;
        }
    }
}

/// Counts and answers every whole packet read so far: (PUBLISHes, unique).
fn handle_incoming(
    client: &mut Client,
    plan: &SubscriberPlan,
    result: &mut SubscriberResult,
) -> Result<(u64, u64), BenchError> {
    let (mut received, mut unique) = (0, 0);
    while let Some(packet) = client.next_packet()? {
        match packet {
            ServerPacket::Publish {
                qos,
                packet_id,
                payload,
            } => {
                received += 1;
                let header = Header::read(&payload);
                let arrival = result.tracker.record(header.as_ref());
                if let (Arrival::InOrder | Arrival::Reordered, Some(h)) = (arrival, header) {
                    unique += 1;
                    result
                        .latency
                        .record(plan.clock.now_ns().saturating_sub(h.sent_ns));
                }
                match (qos, packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => {
                        wire::encode_control(&mut client.write_buf, &Packet::PubAck(Ack::new(id)))
                    }
                    (QoS::ExactlyOnce, Some(id)) => {
                        wire::encode_control(&mut client.write_buf, &Packet::PubRec(Ack::new(id)))
                    }
                    _ => {}
                }
            }
            ServerPacket::PubRel(ack) => {
                if let Some(id) = tidemq_protocol::PacketId::new(ack.packet_id) {
                    wire::encode_control(&mut client.write_buf, &Packet::PubComp(Ack::new(id)));
                }
            }
            ServerPacket::PingResp => {}
            ServerPacket::Disconnect { reason } => return Err(BenchError::Disconnected(reason)),
            other => {
                return Err(BenchError::Unexpected(format!(
                    "{other:?} sent to a subscriber"
                )))
            }
        }
    }
    Ok((received, unique))
}
