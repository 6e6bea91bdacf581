//! Acknowledgements a session owes its client for QoS 1/2 PUBLISHes, in the
//! order the PUBLISHes came. Each waits for its message's receipt: at once
//! when every subscriber's mailbox had room, later when a slow subscriber
//! holds it (see `mailbox`). At `limits.max_inbound_unacked` waiting, the
//! session stops reading from the client, so TCP slows the publisher.

use std::collections::VecDeque;

use tidemq_protocol::Outgoing;
use tokio::sync::oneshot::{self, error::TryRecvError};

#[derive(Debug)]
pub struct PendingAcks {
    queue: VecDeque<(Outgoing, oneshot::Receiver<()>)>,
    limit: usize,
}

impl PendingAcks {
    pub fn new(limit: usize) -> PendingAcks {
        PendingAcks {
            queue: VecDeque::new(),
            limit,
        }
    }

    /// Whether another PUBLISH may be read from the client.
    pub fn has_room(&self) -> bool {
        self.queue.len() < self.limit
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues `ack` (PUBACK or PUBREC) until `released` resolves.
    pub fn push(&mut self, ack: Outgoing, released: oneshot::Receiver<()>) {
        self.queue.push_back((ack, released));
    }

    /// Resolves when the oldest acknowledgement may be sent; never resolves
    /// when none is waiting. Cancel-safe.
    pub async fn front_released(&mut self) {
        match self.queue.front_mut() {
            // The sender is never used: "released" is the last receipt drop.
            Some((_, released)) => {
                let _ = released.await;
            }
            None => std::future::pending().await,
        }
    }

    /// Takes the acknowledgements at the front whose receipts are released.
    pub fn pop_released(&mut self) -> Vec<Outgoing> {
        let mut ready = Vec::new();
        while let Some((_, released)) = self.queue.front_mut() {
            if released.try_recv() == Err(TryRecvError::Empty) {
                break;
            }
            if let Some((ack, _)) = self.queue.pop_front() {
                ready.push(ack);
            }
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use tidemq_protocol::PacketId;

    use super::*;
    use crate::types::Receipt;

    fn ack(n: u16) -> Outgoing {
        Outgoing::PubAck(PacketId::new(n).unwrap())
    }

    #[test]
    fn acks_leave_in_order_once_released() {
        let mut acks = PendingAcks::new(2);
        let (first, first_rx) = Receipt::new();
        let (second, second_rx) = Receipt::new();
        acks.push(ack(1), first_rx);
        acks.push(ack(2), second_rx);
        assert!(!acks.has_room());
        drop(second);
        assert!(acks.pop_released().is_empty(), "ack 2 waits behind ack 1");
        drop(first);
        assert_eq!(acks.pop_released(), vec![ack(1), ack(2)]);
        assert!(acks.is_empty() && acks.has_room());
    }
}
