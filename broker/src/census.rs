//! The labelled series behind `GET /metrics` (see `http::prom`): messages
//! received per QoS, and connections open per listener and protocol
//! version. The plain counters are in [`crate::metrics`].
//!
//! Owned by [`Metrics`](crate::metrics::Metrics) (one per broker). Each
//! update is one relaxed atomic addition: a PUBLISH adds to its QoS's
//! counter in the session task; a connection adds to its listener's gauge
//! once when its CONNECT is accepted and takes it away once at its end
//! (`connection::close`), resting or not in between. The list of listeners
//! is locked only when an accept loop starts and when `/metrics` is read.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tidemq_protocol::{ProtocolVersion, QoS, ReasonCode};

use crate::config::{ListenerConfig, ListenerProtocol};

/// The labelled counters and gauges of one broker.
#[derive(Debug, Default)]
pub struct Census {
    /// PUBLISH packets received from clients, by QoS 0, 1, 2.
    received_by_qos: [AtomicU64; 3],
    /// MQTT packets received, by control packet type.
    pub packets_in: PacketCounts,
    /// MQTT packets handed to write tasks, by control packet type.
    pub packets_out: PacketCounts,
    /// Publish-to-delivery latency of sampled messages.
    pub latency: crate::latency::Latency,
    /// CONNACKs refused, by MQTT 5 reason code (a 3.1.1 client was sent
    /// the matching return code).
    pub connacks_refused: ByReason,
    /// Connections the broker closed, by the MQTT 5 DISCONNECT reason code
    /// that stands for why (sent to MQTT 5 clients; a 3.1.1 connection is
    /// closed without one).
    pub closed_by_broker: ByReason,
    /// Every listener whose accept loop has started.
    listeners: Mutex<Vec<Arc<ListenerCensus>>>,
}

impl Census {
    /// Counts a PUBLISH received with `qos`.
    pub fn received(&self, qos: QoS) {
        let counter = match qos {
            QoS::AtMostOnce => &self.received_by_qos[0],
            QoS::AtLeastOnce => &self.received_by_qos[1],
            QoS::ExactlyOnce => &self.received_by_qos[2],
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// PUBLISH packets received, by QoS 0, 1, 2.
    pub fn received_by_qos(&self) -> [u64; 3] {
        let [a, b, c] = &self.received_by_qos;
        [a, b, c].map(|counter| counter.load(Ordering::Relaxed))
    }

    /// Lists a listener once its socket is bound to `addr`.
    pub fn register(&self, listener: &Arc<ListenerCensus>, addr: SocketAddr) {
        let _ = listener.addr.set(addr);
        let mut listeners = crate::registry::lock(&self.listeners);
        if !listeners.iter().any(|known| Arc::ptr_eq(known, listener)) {
            listeners.push(Arc::clone(listener));
        }
    }

    /// Every listener registered so far.
    pub fn listeners(&self) -> Vec<Arc<ListenerCensus>> {
        crate::registry::lock(&self.listeners).clone()
    }
}

/// The connections open on one listener, by protocol version.
#[derive(Debug)]
pub struct ListenerCensus {
    /// The bound address (known once the accept loop runs).
    addr: OnceLock<SocketAddr>,
    pub protocol: ListenerProtocol,
    pub tls: bool,
    /// MQTT 3.1, 3.1.1, 5.
    by_version: [AtomicU64; 3],
}

/// The protocol versions, in the order [`ListenerCensus::open`] gives them.
pub const VERSIONS: [&str; 3] = ["3.1", "3.1.1", "5"];

impl ListenerCensus {
    pub fn new(config: &ListenerConfig) -> ListenerCensus {
        ListenerCensus {
            addr: OnceLock::new(),
            protocol: config.protocol,
            tls: config.tls.is_some(),
            by_version: Default::default(),
        }
    }

    fn gauge(&self, version: ProtocolVersion) -> &AtomicU64 {
        let [v31, v311, v5] = &self.by_version;
        match version {
            ProtocolVersion::V31 => v31,
            ProtocolVersion::V311 => v311,
            _ => v5,
        }
    }

    /// A connection's CONNECT was accepted.
    pub fn connected(&self, version: ProtocolVersion) {
        self.gauge(version).fetch_add(1, Ordering::Relaxed);
    }

    /// A connection counted by [`ListenerCensus::connected`] ended.
    pub fn closed(&self, version: ProtocolVersion) {
        self.gauge(version).fetch_sub(1, Ordering::Relaxed);
    }

    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr.get().copied()
    }

    /// Connections open now, by the versions of [`VERSIONS`].
    pub fn open(&self) -> [u64; 3] {
        let [a, b, c] = &self.by_version;
        [a, b, c].map(|gauge| gauge.load(Ordering::Relaxed))
    }
}

/// Counts by MQTT 5 reason code. Touched only on refusals and closes, never
/// per message.
#[derive(Debug)]
pub struct ByReason([AtomicU64; 256]);

impl Default for ByReason {
    fn default() -> ByReason {
        ByReason(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl ByReason {
    pub fn count(&self, reason: ReasonCode) {
        self.0[usize::from(reason.0)].fetch_add(1, Ordering::Relaxed);
    }

    /// The codes counted at least once, with their counts, in code order.
    pub fn counted(&self) -> Vec<(ReasonCode, u64)> {
        (0..=u8::MAX)
            .map(|code| {
                (
                    ReasonCode(code),
                    self.0[usize::from(code)].load(Ordering::Relaxed),
                )
            })
            .filter(|&(_, count)| count > 0)
            .collect()
    }
}

/// The MQTT control packet types by their number (the first byte's high
/// four bits); 0 is reserved and never counted.
pub const PACKET_TYPES: [&str; 16] = [
    "reserved",
    "connect",
    "connack",
    "publish",
    "puback",
    "pubrec",
    "pubrel",
    "pubcomp",
    "subscribe",
    "suback",
    "unsubscribe",
    "unsuback",
    "pingreq",
    "pingresp",
    "disconnect",
    "auth",
];

/// The type number of PUBLISH in [`PACKET_TYPES`].
pub const PUBLISH: usize = 3;

/// Packets by type, and PUBLISH packets by QoS, shared by every
/// connection. (Only the sent side is told PUBLISH QoS: what is received
/// by QoS is [`Census::received`], counted where it is decoded.)
#[derive(Debug, Default)]
pub struct PacketCounts {
    by_type: [AtomicU64; 16],
    publish_by_qos: [AtomicU64; 3],
}

impl PacketCounts {
    /// Counts one packet from its encoded bytes (nothing for an empty
    /// slice).
    pub fn one(&self, packet: &[u8]) {
        if let Some(&first) = packet.first() {
            self.by_type[usize::from(first >> 4)].fetch_add(1, Ordering::Relaxed);
            if let Some(qos) = publish_qos(first) {
                self.publish_by_qos[qos].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Adds what a connection tallied and empties the tally.
    pub fn add(&self, tally: &mut Tally) {
        if !tally.any {
            return;
        }
        let counters = self.by_type.iter().chain(&self.publish_by_qos);
        let counts = tally.counts.iter_mut().chain(&mut tally.publish_by_qos);
        for (counter, count) in counters.zip(counts) {
            if *count > 0 {
                counter.fetch_add(u64::from(*count), Ordering::Relaxed);
                *count = 0;
            }
        }
        tally.any = false;
    }

    /// Packets counted so far, by type number.
    pub fn by_type(&self) -> [u64; 16] {
        std::array::from_fn(|kind| self.by_type[kind].load(Ordering::Relaxed))
    }

    /// PUBLISH packets counted so far with a known QoS, by QoS 0, 1, 2.
    pub fn publish_by_qos(&self) -> [u64; 3] {
        std::array::from_fn(|qos| self.publish_by_qos[qos].load(Ordering::Relaxed))
    }
}

/// The QoS of a PUBLISH from its first byte; `None` for other packets
/// (and for the malformed QoS 3, which is never sent).
fn publish_qos(first: u8) -> Option<usize> {
    let qos = usize::from((first >> 1) & 0b11);
    (usize::from(first >> 4) == PUBLISH && qos < 3).then_some(qos)
}

/// One connection's packets by type (and sent PUBLISHes by QoS) since its
/// last hand-over to [`PacketCounts::add`]: counted locally, so the shared
/// atomics are touched once per read or flush and per type seen, not per
/// packet.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    counts: [u32; 16],
    publish_by_qos: [u32; 3],
    any: bool,
}

impl Tally {
    /// Counts one packet from its first byte (a PUBLISH under its QoS
    /// too).
    pub fn count(&mut self, first: u8) {
        self.add(usize::from(first >> 4), 1);
        if let Some(qos) = publish_qos(first) {
            self.publish_by_qos[qos] = self.publish_by_qos[qos].saturating_add(1);
        }
    }

    /// Counts `n` packets of type number `kind`.
    pub fn add(&mut self, kind: usize, n: u32) {
        if let Some(count) = self.counts.get_mut(kind) {
            *count = count.saturating_add(n);
            self.any = true;
        }
    }

    /// Counts PUBLISHes by QoS 0, 1, 2 (`by_qos`), under their type too.
    pub fn publishes(&mut self, by_qos: [u32; 3]) {
        self.add(
            PUBLISH,
            by_qos.iter().fold(0, |sum, n| sum.saturating_add(*n)),
        );
        for (count, n) in self.publish_by_qos.iter_mut().zip(by_qos) {
            *count = count.saturating_add(n);
        }
    }
}

/// A protocol version as the admin API and the labels spell it.
pub fn version_name(version: ProtocolVersion) -> &'static str {
    match version {
        ProtocolVersion::V31 => VERSIONS[0],
        ProtocolVersion::V311 => VERSIONS[1],
        _ => VERSIONS[2],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_counts_under_its_version_until_it_closes() {
        let config = ListenerConfig::mqtt(SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = Arc::new(ListenerCensus::new(&config));
        let census = Census::default();
        census.register(&listener, SocketAddr::from(([127, 0, 0, 1], 1883)));
        census.register(&listener, SocketAddr::from(([127, 0, 0, 1], 1883)));
        assert_eq!(census.listeners().len(), 1, "registered once");
        listener.connected(ProtocolVersion::V5);
        listener.connected(ProtocolVersion::V311);
        listener.connected(ProtocolVersion::V5);
        listener.closed(ProtocolVersion::V5);
        assert_eq!(listener.open(), [0, 1, 1]);
        census.received(QoS::ExactlyOnce);
        assert_eq!(census.received_by_qos(), [0, 0, 1]);
    }

    #[test]
    fn packets_are_counted_by_the_type_in_their_first_byte() {
        let counts = PacketCounts::default();
        let mut tally = Tally::default();
        tally.count(0x30); // PUBLISH QoS 0
        tally.count(0x32); // PUBLISH QoS 1
        tally.count(0xc0); // PINGREQ
        tally.publishes([2, 2, 1]);
        counts.add(&mut tally);
        counts.add(&mut tally); // emptied: adds nothing
        counts.one(&[0x20, 0x02, 0, 0]); // CONNACK
        counts.one(&[0x34, 0x05, 0, 1, b't', 0, 1]); // PUBLISH QoS 2
        counts.one(&[]);
        let by_type = counts.by_type();
        assert_eq!(by_type[PUBLISH], 8);
        assert_eq!(by_type[12], 1);
        assert_eq!(PACKET_TYPES[12], "pingreq");
        assert_eq!(by_type[2], 1);
        assert_eq!(by_type.iter().sum::<u64>(), 10);
        assert_eq!(counts.publish_by_qos(), [3, 3, 2]);
    }

    #[test]
    fn reasons_are_listed_in_code_order_once_counted() {
        let reasons = ByReason::default();
        assert!(reasons.counted().is_empty());
        reasons.count(ReasonCode::QUOTA_EXCEEDED);
        reasons.count(ReasonCode::NOT_AUTHORIZED);
        reasons.count(ReasonCode::QUOTA_EXCEEDED);
        assert_eq!(
            reasons.counted(),
            [
                (ReasonCode::NOT_AUTHORIZED, 1),
                (ReasonCode::QUOTA_EXCEEDED, 2)
            ]
        );
    }
}
