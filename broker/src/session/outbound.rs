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
use tidemq_protocol::{Ack, Outgoing, PacketId, Publish, QoS, TopicFilter};

use crate::types::{Delivery, Message};

#[derive(Debug)]
enum Stage {
    /// Sent; kept as the shared message (one reference count) for a resend.
    Unacked {
        message: Arc<Message>,
        qos: QoS,
        retain: bool,
        /// The shared subscription it came by, if any.
        shared: Option<TopicFilter>,
    },
    /// PUBREC came; keeps the message's store id for the PUBCOMP.
    Released { stored_id: u64 },
}

/// A delivery in flight as the store recovered it.
#[derive(Debug)]
pub struct RestoredInflight {
    pub id: PacketId,
    pub delivery: Delivery,
    /// QoS 2 past PUBREC: only its PUBREL is resent.
    pub released: bool,
}

impl Stage {
    fn stored_id(&self) -> u64 {
        match self {
            Stage::Unacked { message, .. } => message.stored_id,
            Stage::Released { stored_id } => *stored_id,
        }
    }
}

#[derive(Debug)]
struct Inflight {
    id: PacketId,
    /// `Outbound::steps` when the id was taken: its place on the unrolled
    /// ring of ids.
    step: u64,
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
    /// How far `next_id` has moved around the ring of 65535 ids, in total.
    steps: u64,
}

impl Outbound {
    pub fn new(window: usize) -> Outbound {
        Outbound {
            window: u16::try_from(window).unwrap_or(u16::MAX),
            inflight: VecDeque::new(),
            next_id: PacketId::new(1).unwrap_or_else(|| unreachable!("1 is not zero")),
            steps: 0,
        }
    }

    /// Sets the window: `limits.max_inflight`, or less for an MQTT 5 client
    /// with a smaller Receive Maximum. Messages already in flight stay.
    pub fn set_window(&mut self, window: usize) {
        self.window = u16::try_from(window).unwrap_or(u16::MAX);
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

    /// QoS 1/2 messages sent and not yet acknowledged.
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
        let (id, step) = self.allocate_id();
        self.inflight.push_back(Inflight {
            id,
            step,
            stage: Stage::Unacked {
                message: Arc::clone(&delivery.message),
                qos: delivery.qos,
                retain: delivery.retain,
                shared: delivery.shared().cloned(),
            },
        });
        Some(id)
    }

    /// The next id not in flight. The window is at most 65535, so one is
    /// free. Returns the id and its step.
    ///
    /// Ids are taken in ring order, so while `next_id` has moved less than
    /// one lap since the oldest message in flight took its id, every id in
    /// flight lies on the arc behind `next_id` and `next_id` itself is free:
    /// no scan, the usual case. After a lap (an old message still
    /// unacknowledged) the window is scanned.
    fn allocate_id(&mut self) -> (PacketId, u64) {
        let within_a_lap = self
            .inflight
            .front()
            .is_none_or(|oldest| self.steps - oldest.step < u64::from(u16::MAX));
        let mut id = self.next_id;
        if !within_a_lap {
            while self.inflight.iter().any(|entry| entry.id == id) {
                id = id.next();
                self.steps += 1;
            }
        }
        let step = self.steps;
        self.next_id = id.next();
        self.steps += 1;
        (id, step)
    }

    fn position(&self, id: PacketId, released: bool) -> Result<usize, UnknownPacketId> {
        self.inflight
            .iter()
            .position(|e| e.id == id && matches!(e.stage, Stage::Released { .. }) == released)
            .ok_or(UnknownPacketId(id.get()))
    }

    /// PUBACK: a QoS 1 delivery is done. Returns its message's store id
    /// (0: not stored).
    pub fn puback(&mut self, id: PacketId) -> Result<u64, UnknownPacketId> {
        let at = self.position(id, false)?;
        Ok(self
            .inflight
            .remove(at)
            .map_or(0, |entry| entry.stage.stored_id()))
    }

    /// PUBREC: a QoS 2 delivery moves to `Released`; the caller sends PUBREL.
    /// Returns the message's store id.
    pub fn pubrec(&mut self, id: PacketId) -> Result<u64, UnknownPacketId> {
        let at = self.position(id, false)?;
        let Some(entry) = self.inflight.get_mut(at) else {
            return Ok(0);
        };
        let stored_id = entry.stage.stored_id();
        entry.stage = Stage::Released { stored_id };
        Ok(stored_id)
    }

    /// PUBCOMP: a QoS 2 delivery is done. Returns its message's store id.
    pub fn pubcomp(&mut self, id: PacketId) -> Result<u64, UnknownPacketId> {
        let at = self.position(id, true)?;
        Ok(self
            .inflight
            .remove(at)
            .map_or(0, |entry| entry.stage.stored_id()))
    }

    /// Puts back what was in flight when the broker stopped, in sending
    /// order, with the ids the client knows them by [MQTT-4.4.0-1].
    pub fn restore(&mut self, restored: Vec<RestoredInflight>) {
        for entry in restored {
            let (id, step) = (entry.id, self.steps);
            self.steps += 1;
            self.next_id = id.next();
            let stage = match entry.released {
                true => Stage::Released {
                    stored_id: entry.delivery.message.stored_id,
                },
                false => Stage::Unacked {
                    message: entry.delivery.message,
                    qos: entry.delivery.qos,
                    retain: entry.delivery.retain,
                    shared: None,
                },
            };
            self.inflight.push_back(Inflight { id, step, stage });
        }
    }

    /// The unacknowledged QoS 1 messages that came by a shared
    /// subscription: what another member should get when this session ends
    /// [MQTT-4.8.2-?]. A QoS 2 one already sent goes to nobody else
    /// [MQTT-4.8.2-5].
    pub fn take_shared(&mut self) -> Vec<(TopicFilter, Arc<Message>, QoS)> {
        self.inflight
            .drain(..)
            .filter_map(|entry| match entry.stage {
                Stage::Unacked {
                    message,
                    qos: QoS::AtLeastOnce,
                    shared: Some(filter),
                    ..
                } => Some((filter, message, QoS::AtLeastOnce)),
                _ => None,
            })
            .collect()
    }

    /// Empties the window: the unacknowledged deliveries in sending order,
    /// for an owner that sends them again under ids of its own (a bridge's
    /// session, whose ids are the remote's). A QoS 2 entry past PUBREC
    /// keeps no message and is dropped; a bridge never parks one.
    pub fn take_unacked(&mut self) -> Vec<Delivery> {
        self.inflight
            .drain(..)
            .filter_map(|entry| match entry.stage {
                Stage::Unacked {
                    message,
                    qos,
                    retain,
                    shared,
                } => Some(Delivery {
                    message,
                    qos,
                    retain,
                    extra: crate::types::DeliveryExtra::boxed(Vec::new(), shared),
                }),
                Stage::Released { .. } => None,
            })
            .collect()
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
                    ..
                } => Outgoing::Publish(Publish {
                    dup: true,
                    qos: *qos,
                    retain: *retain,
                    topic: message.topic.clone(),
                    packet_id: Some(entry.id),
                    payload: message.payload.clone(),
                    properties: message.properties().cloned().map(Box::new),
                }),
                Stage::Released { .. } => Outgoing::PubRel(Ack::new(entry.id)),
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
            message: Arc::new(Message::new(
                TopicName::new("a/b").unwrap(),
                Bytes::from_static(b"x"),
                qos,
                false,
            )),
            qos,
            retain: false,
            extra: None,
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
        assert_eq!(out.resend(), vec![Outgoing::PubRel(Ack::new(a))]);
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
                assert_eq!(
                    (p0.packet_id, r.packet_id, p2.packet_id),
                    (Some(a), b, Some(c))
                );
            }
            other => panic!("unexpected resend {other:?}"),
        }
    }

    #[test]
    fn take_unacked_gives_the_window_back_in_sending_order() {
        let mut out = Outbound::new(4);
        let first = delivery(QoS::AtLeastOnce);
        let second = delivery(QoS::ExactlyOnce);
        let released = out.send(&delivery(QoS::ExactlyOnce)).unwrap();
        out.send(&first).unwrap();
        out.send(&second).unwrap();
        out.pubrec(released).unwrap();
        let taken = out.take_unacked();
        assert_eq!(taken.len(), 2, "the released one has no message left");
        assert!(Arc::ptr_eq(&taken[0].message, &first.message));
        assert!(Arc::ptr_eq(&taken[1].message, &second.message));
        assert_eq!(
            (taken[0].qos, taken[1].qos),
            (QoS::AtLeastOnce, QoS::ExactlyOnce)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn ids_wrap_and_skip_ids_in_flight() {
        let mut out = Outbound::new(3);
        let a = out.send(&delivery(QoS::AtLeastOnce)).unwrap();
        for _ in 0..65_533 {
            let id = out.send(&delivery(QoS::AtLeastOnce)).unwrap();
            out.puback(id).unwrap();
        }
        let b = out.send(&delivery(QoS::AtLeastOnce)).unwrap();
        let c = out.send(&delivery(QoS::AtLeastOnce)).unwrap();
        assert_eq!((a, b, c), (id(1), id(65535), id(2)), "1 is still in flight");
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

    #[test]
    fn mqtt_2_3_1_2_no_id_is_reused_while_in_flight_over_many_laps() {
        // Some messages stay unacknowledged for a lap or more while the
        // rest are acknowledged at once; every new id must differ from
        // every id in flight (the case a review found: 1 and 60000 stuck).
        let mut out = Outbound::new(8);
        let mut stuck = Vec::new();
        for n in 0..3 * 65_535u32 {
            let id = out.send(&delivery(QoS::AtLeastOnce)).unwrap();
            let in_flight = out.inflight.iter().filter(|entry| entry.id == id).count();
            assert_eq!(in_flight, 1, "id {} handed out twice at {n}", id.get());
            if n == 0 || n == 59_999 || n == 100_000 {
                stuck.push(id);
            } else {
                out.puback(id).unwrap();
            }
        }
        assert_eq!(out.in_flight(), stuck.len());
    }
}
