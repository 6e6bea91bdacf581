//! QoS 1 and 2 towards the client: packet id allocation, the in-flight
//! window, and what to resend when a session resumes [MQTT-4.4.0-1].
//!
//! | stage     | entered by           | left by                        |
//! |-----------|----------------------|--------------------------------|
//! | `Unacked` | PUBLISH sent         | PUBACK (QoS 1), PUBREC (QoS 2) |
//! | `Released`| PUBREC, PUBREL sent  | PUBCOMP                        |
//!
//! Entries stay in sending order, so a resume resends them in order.

use std::collections::VecDeque;
use std::sync::Arc;

use thiserror::Error;
use tidemq_protocol::{Outgoing, PacketId, Publish, QoS};

use crate::types::{Delivery, Message};

#[derive(Debug)]
enum Stage {
    /// Sent; kept as the shared message (one reference count) for a resend.
    Unacked {
        message: Arc<Message>,
        qos: QoS,
        retain: bool,
    },
    Released,
}

#[derive(Debug)]
struct Inflight {
    id: PacketId,
    stage: Stage,
}

/// An acknowledgement named a packet id that is not in flight (or not in the
/// stage it acknowledges).
#[derive(Debug, Error, PartialEq, Eq)]
#[error("no message in flight with packet id {0}")]
pub struct UnknownPacketId(pub u16);

#[derive(Debug)]
pub struct Outbound {
    /// At most 65535 (`limits.max_inflight` is checked).
    window: u16,
    inflight: VecDeque<Inflight>,
    next_id: PacketId,
}

impl Outbound {
    pub fn new(window: usize) -> Outbound {
        Outbound {
            window: u16::try_from(window).unwrap_or(u16::MAX),
            inflight: VecDeque::new(),
            next_id: PacketId::new(1).unwrap_or_else(|| unreachable!("1 is not zero")),
        }
    }

    /// Whether another QoS 1/2 message may be sent now.
    pub fn has_room(&self) -> bool {
        self.room() > 0
    }

    /// How many more QoS 1/2 messages may be sent now.
    pub fn room(&self) -> usize {
        usize::from(self.window).saturating_sub(self.inflight.len())
    }

    /// Whether nothing is in flight (nothing to resend on resume).
    pub fn is_empty(&self) -> bool {
        self.inflight.is_empty()
    }

    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Takes a packet id and a place in the window for a delivery whose QoS
    /// is above 0 (returning the id), or nothing for QoS 0. The caller
    /// encodes the PUBLISH from the delivery with this id.
    pub fn send(&mut self, delivery: &Delivery) -> Option<PacketId> {
        if delivery.qos == QoS::AtMostOnce {
            return None;
        }
        let id = self.allocate_id();
        self.inflight.push_back(Inflight {
            id,
            stage: Stage::Unacked {
                message: Arc::clone(&delivery.message),
                qos: delivery.qos,
                retain: delivery.retain,
            },
        });
        Some(id)
    }

    /// The next id not in flight. The window is at most 65535, so one is free.
    fn allocate_id(&mut self) -> PacketId {
        let mut id = self.next_id;
        while self.may_be_in_flight(id) && self.inflight.iter().any(|entry| entry.id == id) {
            id = id.next();
        }
        self.next_id = id.next();
        id
    }

    /// Ids are allocated in increasing order (wrapping) and the window keeps
    /// that order, so every id in flight lies on the ring between the oldest
    /// and the newest entry. An id outside that arc is free without a scan,
    /// which is the usual case.
    fn may_be_in_flight(&self, id: PacketId) -> bool {
        let (Some(oldest), Some(newest)) = (self.inflight.front(), self.inflight.back()) else {
            return false;
        };
        // Steps from the oldest id; the ring has 65535 ids (0 is not one).
        let from_oldest =
            |to: PacketId| (i32::from(to.get()) - i32::from(oldest.id.get())).rem_euclid(65_535);
        from_oldest(id) <= from_oldest(newest.id)
    }

    fn position(&self, id: PacketId, released: bool) -> Result<usize, UnknownPacketId> {
        self.inflight
            .iter()
            .position(|e| e.id == id && matches!(e.stage, Stage::Released) == released)
            .ok_or(UnknownPacketId(id.get()))
    }

    /// PUBACK: a QoS 1 delivery is done.
    pub fn puback(&mut self, id: PacketId) -> Result<(), UnknownPacketId> {
        let at = self.position(id, false)?;
        self.inflight.remove(at);
        Ok(())
    }

    /// PUBREC: a QoS 2 delivery moves to `Released`; the caller sends PUBREL.
    pub fn pubrec(&mut self, id: PacketId) -> Result<(), UnknownPacketId> {
        let at = self.position(id, false)?;
        if let Some(entry) = self.inflight.get_mut(at) {
            entry.stage = Stage::Released;
        }
        Ok(())
    }

    /// PUBCOMP: a QoS 2 delivery is done.
    pub fn pubcomp(&mut self, id: PacketId) -> Result<(), UnknownPacketId> {
        let at = self.position(id, true)?;
        self.inflight.remove(at);
        Ok(())
    }

    /// What to send again when a session resumes: unacknowledged PUBLISHes
    /// with DUP set, and PUBRELs for released ones, in their original order
    /// [MQTT-4.4.0-1].
    pub fn resend(&self) -> Vec<Outgoing> {
        self.inflight
            .iter()
            .map(|entry| match &entry.stage {
                Stage::Unacked {
                    message,
                    qos,
                    retain,
                } => Outgoing::Publish(Publish {
                    dup: true,
                    qos: *qos,
                    retain: *retain,
                    topic: message.topic.clone(),
                    packet_id: Some(entry.id),
                    payload: message.payload.clone(),
                }),
                Stage::Released => Outgoing::PubRel(entry.id),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use tidemq_protocol::TopicName;

    use super::*;
    use crate::types::Message;

    fn delivery(qos: QoS) -> Delivery {
        Delivery {
            message: Arc::new(Message {
                topic: TopicName::new("a/b").unwrap(),
                payload: Bytes::from_static(b"x"),
                qos,
                retain: false,
            }),
            qos,
            retain: false,
            receipt: None,
        }
    }

    fn id(n: u16) -> PacketId {
        PacketId::new(n).unwrap()
    }

    #[test]
    fn qos0_takes_no_id_and_no_room() {
        let mut out = Outbound::new(1);
        assert_eq!(out.send(&delivery(QoS::AtMostOnce)), None);
        assert!(out.has_room());
    }

    #[test]
    fn window_fills_and_puback_frees_it() {
        let mut out = Outbound::new(2);
        let a = out.send(&delivery(QoS::AtLeastOnce)).unwrap();
        let b = out.send(&delivery(QoS::AtLeastOnce)).unwrap();
        assert_ne!(a, b);
        assert!(!out.has_room());
        out.puback(a).unwrap();
        assert!(out.has_room());
        assert_eq!(out.puback(a), Err(UnknownPacketId(a.get())));
    }

    #[test]
    fn qos2_goes_through_pubrec_and_pubcomp() {
        let mut out = Outbound::new(4);
        let a = out.send(&delivery(QoS::ExactlyOnce)).unwrap();
        assert!(out.pubcomp(a).is_err(), "PUBCOMP before PUBREC is unknown");
        out.pubrec(a).unwrap();
        assert_eq!(out.resend(), vec![Outgoing::PubRel(a)]);
        out.pubcomp(a).unwrap();
        assert_eq!(out.in_flight(), 0);
    }

    #[test]
    fn mqtt_4_4_0_1_resume_resends_in_order_with_dup() {
        let mut out = Outbound::new(4);
        let a = out.send(&delivery(QoS::AtLeastOnce)).unwrap();
        let b = out.send(&delivery(QoS::ExactlyOnce)).unwrap();
        let c = out.send(&delivery(QoS::ExactlyOnce)).unwrap();
        out.pubrec(b).unwrap();
        let resent = out.resend();
        assert_eq!(resent.len(), 3);
        match (&resent[0], &resent[1], &resent[2]) {
            (Outgoing::Publish(p0), Outgoing::PubRel(r), Outgoing::Publish(p2)) => {
                assert!(p0.dup && p2.dup);
                assert_eq!((p0.packet_id, *r, p2.packet_id), (Some(a), b, Some(c)));
            }
            other => panic!("unexpected resend {other:?}"),
        }
    }

    #[test]
    fn ids_wrap_and_skip_ids_in_flight() {
        let mut out = Outbound::new(3);
        out.next_id = id(65535);
        let a = out.send(&delivery(QoS::AtLeastOnce)).unwrap();
        let b = out.send(&delivery(QoS::AtLeastOnce)).unwrap();
        assert_eq!((a, b), (id(65535), id(1)));
        out.next_id = id(65535);
        let c = out.send(&delivery(QoS::AtLeastOnce)).unwrap();
        assert_eq!(c, id(2), "65535 and 1 are still in flight");
    }

    #[test]
    fn an_old_message_in_flight_is_skipped_on_every_lap() {
        // One message stays unacknowledged while ids go round the ring
        // twice: its id must never be handed out again [MQTT-2.3.1-2].
        let mut out = Outbound::new(2);
        let stuck = out.send(&delivery(QoS::AtLeastOnce)).unwrap();
        for _ in 0..2 * 65_535 {
            let id = out.send(&delivery(QoS::AtLeastOnce)).unwrap();
            assert_ne!(id, stuck);
            out.puback(id).unwrap();
        }
        assert_eq!(out.in_flight(), 1);
    }
}
