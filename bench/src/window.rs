//! A publisher's in-flight window: which packet ids are waiting for which
//! acknowledgement. Pure state machine, owned by one publisher task.
//!
//! | slot state | event   | next state | publisher does      |
//! |------------|---------|------------|---------------------|
//! | Free       | open    | AwaitAck (QoS 1) / AwaitRec (QoS 2) | sends PUBLISH |
//! | AwaitAck   | PUBACK  | Free       | counts it acked     |
//! | AwaitRec   | PUBREC  | AwaitComp  | sends PUBREL        |
//! | AwaitComp  | PUBREC  | AwaitComp  | sends PUBREL again  |
//! | AwaitComp  | PUBCOMP | Free       | counts it acked     |
//! | any other  | any     | unchanged  | counts it unexpected|
//!
//! Packet ids go 1, 2, ... 65535, 1, ..., skipping ids still in flight, so
//! an ack that comes out of order never frees the wrong message.

use tidemq_protocol::{PacketId, QoS};

/// The most packet ids that can be in flight at once.
pub const MAX_WINDOW: usize = u16::MAX as usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Free,
    AwaitAck,
    AwaitRec,
    AwaitComp,
}

/// What an acknowledgement means for the publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The exchange is complete; one slot is free again.
    Done,
    /// A PUBREC: answer with PUBREL for this id.
    SendRel,
    /// An id we are not waiting on in that state.
    Unexpected,
}

#[derive(Debug, Clone)]
pub struct Window {
    /// Indexed by packet id; index 0 is never used.
    slots: Vec<Slot>,
    in_flight: usize,
    limit: usize,
    last: u16,
}

impl Window {
    /// A window of `limit` messages, clamped to 1..=65535.
    pub fn new(limit: usize) -> Window {
        Window {
            slots: vec![Slot::Free; MAX_WINDOW + 1],
            in_flight: 0,
            limit: limit.clamp(1, MAX_WINDOW),
            last: 0,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn free(&self) -> usize {
        self.limit - self.in_flight
    }

    /// Takes a packet id for a new QoS 1 or 2 message; `None` when the
    /// window is full or for QoS 0.
    pub fn open(&mut self, qos: QoS) -> Option<PacketId> {
        let state = match qos {
            QoS::AtMostOnce => return None,
            QoS::AtLeastOnce => Slot::AwaitAck,
            QoS::ExactlyOnce => Slot::AwaitRec,
        };
        if self.in_flight >= self.limit {
            return None;
        }
        // At most `limit` < 65535 ids are taken, so this finds one.
        for _ in 0..MAX_WINDOW {
            self.last = if self.last == u16::MAX {
                1
            } else {
                self.last + 1
            };
            let slot = self.slots.get_mut(usize::from(self.last))?;
            if *slot == Slot::Free {
                *slot = state;
                self.in_flight += 1;
                return PacketId::new(self.last);
            }
        }
        None
    }

    pub fn on_puback(&mut self, id: u16) -> AckOutcome {
        self.complete(id, Slot::AwaitAck)
    }

    pub fn on_pubcomp(&mut self, id: u16) -> AckOutcome {
        self.complete(id, Slot::AwaitComp)
    }

    pub fn on_pubrec(&mut self, id: u16) -> AckOutcome {
        match self.slots.get_mut(usize::from(id)) {
            Some(slot @ (Slot::AwaitRec | Slot::AwaitComp)) if id != 0 => {
                *slot = Slot::AwaitComp;
                AckOutcome::SendRel
            }
            _ => AckOutcome::Unexpected,
        }
    }

    /// An MQTT 5 PUBREC with a failure reason ends the exchange at once.
    pub fn on_refused_pubrec(&mut self, id: u16) -> AckOutcome {
        self.complete(id, Slot::AwaitRec)
    }

    fn complete(&mut self, id: u16, expected: Slot) -> AckOutcome {
        match self.slots.get_mut(usize::from(id)) {
            Some(slot) if id != 0 && *slot == expected => {
                *slot = Slot::Free;
                self.in_flight -= 1;
                AckOutcome::Done
            }
            _ => AckOutcome::Unexpected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos1_fills_and_frees() {
        let mut w = Window::new(3);
        let ids: Vec<u16> = (0..3)
            .map(|_| w.open(QoS::AtLeastOnce).unwrap().get())
            .collect();
        assert_eq!(ids, vec![1, 2, 3]);
        assert_eq!(w.open(QoS::AtLeastOnce), None, "full");
        assert_eq!(w.on_puback(2), AckOutcome::Done);
        assert_eq!(w.on_puback(2), AckOutcome::Unexpected, "twice");
        assert_eq!(w.free(), 1);
        assert_eq!(w.open(QoS::AtLeastOnce).map(|p| p.get()), Some(4));
    }

    #[test]
    fn qos2_needs_rec_then_comp() {
        let mut w = Window::new(10);
        let id = w.open(QoS::ExactlyOnce).unwrap().get();
        assert_eq!(w.on_pubcomp(id), AckOutcome::Unexpected, "COMP before REC");
        assert_eq!(w.on_puback(id), AckOutcome::Unexpected, "wrong ack");
        assert_eq!(w.on_pubrec(id), AckOutcome::SendRel);
        assert_eq!(w.on_pubrec(id), AckOutcome::SendRel, "resent PUBREC");
        assert_eq!(w.in_flight(), 1);
        assert_eq!(w.on_pubcomp(id), AckOutcome::Done);
        assert_eq!(w.in_flight(), 0);
    }

    #[test]
    fn ids_wrap_and_skip_those_in_flight() {
        let mut w = Window::new(2);
        let held = w.open(QoS::AtLeastOnce).unwrap().get();
        assert_eq!(held, 1);
        for _ in 0..70_000 {
            let id = w.open(QoS::AtLeastOnce).unwrap().get();
            assert_ne!(id, held, "an id in flight is never reused");
            assert_eq!(w.on_puback(id), AckOutcome::Done);
        }
        assert_eq!(w.in_flight(), 1);
    }

    #[test]
    fn qos0_takes_no_id_and_unknown_ids_are_unexpected() {
        let mut w = Window::new(1);
        assert_eq!(w.open(QoS::AtMostOnce), None);
        assert_eq!(w.on_puback(0), AckOutcome::Unexpected);
        assert_eq!(w.on_puback(500), AckOutcome::Unexpected);
        assert_eq!(w.on_pubrec(0), AckOutcome::Unexpected);
    }

    #[test]
    fn a_refused_pubrec_frees_the_slot() {
        let mut w = Window::new(1);
        let id = w.open(QoS::ExactlyOnce).unwrap().get();
        assert_eq!(w.on_refused_pubrec(id), AckOutcome::Done);
        assert_eq!(w.free(), 1);
    }

    #[test]
    fn limit_is_clamped() {
        assert_eq!(Window::new(0).free(), 1);
        assert_eq!(Window::new(1_000_000).free(), MAX_WINDOW);
    }
}
