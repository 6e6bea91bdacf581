//! QoS 2 from the client: a packet id is held from the PUBLISH until its
//! PUBREL, and a PUBLISH with a held id is a resend that must not be routed
//! again (exactly once, [MQTT-4.3.3-2]). At most 65535 ids can be held.

use std::collections::BTreeSet;

use tidemq_protocol::PacketId;

#[derive(Debug, Default)]
pub struct Inbound {
    /// A B-tree rather than a hash set: 24 bytes inline instead of 48, and
    /// this is part of what every resting connection keeps.
    awaiting_release: BTreeSet<PacketId>,
}

impl Inbound {
    /// Records a QoS 2 PUBLISH; `true` if it is new and must be routed.
    pub fn receive(&mut self, id: PacketId) -> bool {
        self.awaiting_release.insert(id)
    }

    /// Handles a PUBREL: the id may be reused by the client from now on.
    /// `false` if the id was not held.
    pub fn release(&mut self, id: PacketId) -> bool {
        self.awaiting_release.remove(&id)
    }

    /// The ids the store recovered.
    pub fn restore(&mut self, held: impl IntoIterator<Item = PacketId>) {
        self.awaiting_release.extend(held);
    }

    /// QoS 2 ids awaiting PUBREL.
    pub fn held(&self) -> usize {
        self.awaiting_release.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_4_3_3_2_a_resent_qos2_publish_is_routed_once() {
        let mut inbound = Inbound::default();
        let id = PacketId::new(7).unwrap();
        assert!(inbound.receive(id));
        assert!(!inbound.receive(id), "the DUP resend is not routed again");
        assert_eq!(inbound.held(), 1);
        inbound.release(id);
        assert_eq!(inbound.held(), 0);
        assert!(
            inbound.receive(id),
            "after PUBREL the id starts a new message"
        );
    }
}
