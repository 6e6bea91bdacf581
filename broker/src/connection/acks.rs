//! Acknowledgements a session owes its client for QoS 1/2 PUBLISHes, in the
//! order the PUBLISHes came [MQTT-4.6.0-2]. Each waits for its message's
//! receipt: at once when every subscriber's mailbox had room, later when a
//! slow subscriber holds it (see `mailbox`). The session keeps reading the
//! client meanwhile (its PUBACKs, PINGREQs and DISCONNECT must get through),
//! so the client's own in-flight window is what slows it; a client with more
//! than 65535 unacknowledged PUBLISHes must be reusing packet ids
//! [MQTT-2.3.1-2] and is closed.

use std::collections::VecDeque;

use tidemq_protocol::Outgoing;
use tokio::sync::oneshot::{self, error::TryRecvError};

/// More acknowledgements than packet ids cannot be owed.
const MAX_PENDING: usize = u16::MAX as usize;

#[derive(Debug, Default)]
pub struct PendingAcks {
    queue: VecDeque<(Outgoing, oneshot::Receiver<()>)>,
}

/// The client has more unacknowledged PUBLISHes than packet ids.
#[derive(Debug, PartialEq, Eq)]
pub struct TooManyPending;

impl PendingAcks {
    pub fn new() -> PendingAcks {
        PendingAcks::default()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues `ack` (PUBACK or PUBREC) until `released` resolves.
    pub fn push(
        &mut self,
        ack: Outgoing,
        released: oneshot::Receiver<()>,
    ) -> Result<(), TooManyPending> {
        if self.queue.len() >= MAX_PENDING {
            return Err(TooManyPending);
        }
        self.queue.push_back((ack, released));
        Ok(())
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
        let mut acks = PendingAcks::new();
        let (first, first_rx) = Receipt::new();
        let (second, second_rx) = Receipt::new();
        acks.push(ack(1), first_rx).unwrap();
        acks.push(ack(2), second_rx).unwrap();
        drop(second);
        assert!(acks.pop_released().is_empty(), "ack 2 waits behind ack 1");
        drop(first);
        assert_eq!(acks.pop_released(), vec![ack(1), ack(2)]);
        assert!(acks.is_empty());
    }
}
