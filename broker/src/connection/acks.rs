//! Acknowledgements a session owes its client for QoS 1/2 PUBLISHes, in the
//! order the PUBLISHes came [MQTT-4.6.0-2]. Each waits for its message's
//! receipt: at once when every subscriber's mailbox had room, later when a
//! slow subscriber holds it (see `mailbox`). The session keeps reading the
//! client meanwhile (its PUBACKs, PINGREQs and DISCONNECT must get through),
//! so the client's own in-flight window is what slows it; a client with more
//! than 65535 unacknowledged PUBLISHes must be reusing packet ids
//! [MQTT-2.3.1-2] and is closed.
//!
//! With a store, a persistent session's PUBREL and PUBCOMP wait here too,
//! for the store to have recorded the PUBREC or the PUBREL they answer.

use std::collections::VecDeque;

use tidemq_protocol::{Outgoing, ReasonCode};
use tokio::sync::oneshot::{self, error::TryRecvError};

use crate::types::Routed;

/// More acknowledgements than packet ids cannot be owed.
const MAX_PENDING: usize = u16::MAX as usize;

#[derive(Debug, Default)]
pub struct PendingAcks {
    queue: VecDeque<Pending>,
    /// How many of them answer a PUBLISH (PUBACK, PUBREC); the rest are a
    /// PUBREL or PUBCOMP waiting for the store.
    for_publishes: usize,
}

/// One acknowledgement owed, and what its receipt said once released.
#[derive(Debug)]
struct Pending {
    ack: Outgoing,
    released: oneshot::Receiver<Routed>,
    /// Set when `front_released` saw the receipt resolve: the receiver
    /// gives its value once.
    routed: Option<Routed>,
}

impl Pending {
    /// The receipt's answer if it is released; `None` while it is not.
    fn routed(&mut self) -> Option<Routed> {
        if self.routed.is_none() {
            self.routed = match self.released.try_recv() {
                Err(TryRecvError::Empty) => None,
                Ok(routed) => Some(routed),
                Err(TryRecvError::Closed) => Some(Routed::Matched),
            };
        }
        self.routed
    }
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

    /// PUBACKs and PUBRECs owed and not yet sent: PUBLISHes the client
    /// still counts against the broker's Receive Maximum.
    pub fn owed_for_publishes(&self) -> usize {
        self.for_publishes
    }

    /// Queues `ack` (PUBACK or PUBREC) until `released` resolves.
    pub fn push(
        &mut self,
        ack: Outgoing,
        released: oneshot::Receiver<Routed>,
    ) -> Result<(), TooManyPending> {
        if self.queue.len() >= MAX_PENDING {
            return Err(TooManyPending);
        }
        self.for_publishes += usize::from(answers_publish(&ack));
        self.queue.push_back(Pending {
            ack,
            released,
            routed: None,
        });
        Ok(())
    }

    /// Resolves when the oldest acknowledgement may be sent; never resolves
    /// when none is waiting. Cancel-safe: the answer is kept once it came.
    pub async fn front_released(&mut self) {
        match self.queue.front_mut() {
            Some(pending) if pending.routed.is_some() => {}
            Some(pending) => {
                let routed = (&mut pending.released).await;
                pending.routed = Some(routed.unwrap_or(Routed::Matched));
            }
            None => std::future::pending().await,
        }
    }

    /// Takes the acknowledgements at the front whose receipts are released.
    /// With `v5`, one whose message matched no session says so (0x10 "no
    /// matching subscribers").
    pub fn pop_released(&mut self, v5: bool) -> Vec<Outgoing> {
        let mut ready = Vec::new();
        while let Some(routed) = self.queue.front_mut().and_then(Pending::routed) {
            let Some(Pending { mut ack, .. }) = self.queue.pop_front() else {
                break;
            };
            self.for_publishes -= usize::from(answers_publish(&ack));
            if v5 && routed == Routed::NoSubscribers {
                if let Outgoing::PubAck(ack) | Outgoing::PubRec(ack) = &mut ack {
                    ack.reason = ReasonCode::NO_MATCHING_SUBSCRIBERS;
                }
            }
            ready.push(ack);
        }
        ready
    }
}

fn answers_publish(ack: &Outgoing) -> bool {
    matches!(ack, Outgoing::PubAck(_) | Outgoing::PubRec(_))
}

#[cfg(test)]
mod tests {
    use tidemq_protocol::{Ack, PacketId};

    use super::*;
    use crate::types::Receipt;

    fn ack(n: u16) -> Outgoing {
        Outgoing::PubAck(Ack::new(PacketId::new(n).unwrap()))
    }

    #[test]
    fn acks_leave_in_order_once_released() {
        let mut acks = PendingAcks::new();
        let (first, first_rx) = Receipt::new();
        let (second, second_rx) = Receipt::new();
        acks.push(ack(1), first_rx).unwrap();
        acks.push(ack(2), second_rx).unwrap();
        second.matched();
        drop(second);
        assert!(
            acks.pop_released(false).is_empty(),
            "ack 2 waits behind ack 1"
        );
        first.matched();
        drop(first);
        assert_eq!(acks.pop_released(false), vec![ack(1), ack(2)]);
        assert!(acks.is_empty());
    }

    #[test]
    fn an_mqtt_5_ack_says_when_no_session_matched() {
        let mut acks = PendingAcks::new();
        let (matched, matched_rx) = Receipt::new();
        let (unmatched, unmatched_rx) = Receipt::new();
        acks.push(ack(1), matched_rx).unwrap();
        acks.push(ack(2), unmatched_rx).unwrap();
        matched.matched();
        drop((matched, unmatched));
        assert_eq!(acks.owed_for_publishes(), 2);
        let mut no_match = Ack::new(PacketId::new(2).unwrap());
        no_match.reason = ReasonCode::NO_MATCHING_SUBSCRIBERS;
        assert_eq!(
            acks.pop_released(true),
            vec![ack(1), Outgoing::PubAck(no_match)]
        );
    }
}
