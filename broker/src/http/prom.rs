//! `GET /metrics`: the broker's counters in the Prometheus / OpenMetrics
//! text format, through `prometheus-client`.
//!
//! Nothing is registered ahead of time: a [`Collector`] reads the live
//! atomics on each scrape, so the broker's hot paths keep their one relaxed
//! addition per event and pay nothing for the export. Naming:
//!
//! | source                                   | exported as                              |
//! |------------------------------------------|------------------------------------------|
//! | a counter of `metrics` (`takeovers`)     | `tidemq_takeovers_total` (counter)        |
//! | a gauge of `metrics` (`*_current`, `*_bytes`) | `tidemq_retained_messages_current` (gauge) |
//! | `messages_received`, `messages_sent` by QoS (`census`) | `tidemq_messages_received_total{qos}`, `tidemq_messages_sent_total{qos}` |
//! | `packets_received`, `packets_sent` by type (`census`) | `tidemq_packets_received_total{type="publish"}`, ... |
//! | sampled publish-to-delivery latency (`latency`) | `tidemq_delivery_latency_seconds` (histogram) |
//! | connections by listener and version      | `tidemq_connections{listener,protocol,tls,version}` |
//! | CONNACK refusals and broker closes by reason (`census`) | `tidemq_connacks_refused_by_reason_total{reason="0x86"}`, `tidemq_closed_by_broker_total{reason}` |
//! | `sessions_current` less the offline ones | `tidemq_sessions{state="online\|offline"}` |
//! | mailboxes and in-flight windows, summed  | `tidemq_queued_messages`, `tidemq_inflight_messages` |
//! | the router's channel                     | `tidemq_router_queue_depth`               |
//! | `/proc/self/statm`                       | `tidemq_process_resident_memory_bytes`    |
//! | time since start                         | `tidemq_uptime_seconds`                   |
//!
//! Each metric's HELP is its doc string in `metrics.rs`.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::State;
use crate::census::{PACKET_TYPES, VERSIONS};
use crate::config::ListenerProtocol;
use crate::connection::Context;

/// What Prometheus is told it reads.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry, built once with its one collector.
#[derive(Debug)]
pub struct Exporter {
    registry: Registry,
}

impl Exporter {
    pub fn new(ctx: Arc<Context>) -> Exporter {
        let mut registry = Registry::with_prefix("tidemq");
        registry.register_collector(Box::new(Broker { ctx }));
        Exporter { registry }
    }

    /// One scrape.
    pub fn encode(&self, state: &State) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        // The uptime is the HTTP state's, not the collector's: appended
        // before the EOF marker.
        let uptime = state.started.elapsed().as_secs_f64();
        if let Some(body) = out.strip_suffix("# EOF\n") {
            out = format!(
                "{body}# HELP tidemq_uptime_seconds Seconds since the broker started.\n\
                 # TYPE tidemq_uptime_seconds gauge\ntidemq_uptime_seconds {uptime:.3}\n# EOF\n"
            );
        }
        out
    }
}

/// Reads the broker's atomics on each scrape.
#[derive(Debug)]
struct Broker {
    ctx: Arc<Context>,
}

/// Whether a `metrics` field is a gauge (see that module's doc).
pub fn is_gauge(name: &str) -> bool {
    name.ends_with("_current") || name.ends_with("_bytes")
}

/// OpenMetrics HELP text: backslash, double quote and line feed escaped.
fn help(doc: &str) -> String {
    doc.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Collector for Broker {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let metrics = &self.ctx.metrics;
        // One snapshot for the whole scrape, so its figures agree.
        let snapshot = metrics.snapshot();
        for ((name, value), doc) in snapshot.named().into_iter().zip(DOCS) {
            if matches!(
                name,
                "messages_received" | "messages_sent" | "packets_received" | "packets_sent"
            ) {
                // Exported with labels below: the sum of those is this
                // counter.
                continue;
            }
            if is_gauge(name) {
                let mut metric =
                    encoder.encode_descriptor(name, &help(doc), None, MetricType::Gauge)?;
                metric.encode_gauge(&value)?;
            } else {
                let mut metric =
                    encoder.encode_descriptor(name, &help(doc), None, MetricType::Counter)?;
                metric.encode_counter::<NoLabelSet, _, u64>(&value, None)?;
            }
        }
        let census = &metrics.census;
        let by_qos = [
            (
                "messages_received",
                "PUBLISH packets received from clients, by QoS.",
                census.received_by_qos(),
            ),
            (
                "messages_sent",
                "PUBLISH packets handed to write tasks, by the QoS they go out at (resends included).",
                census.packets_out.publish_by_qos(),
            ),
        ];
        for (name, doc, counts) in by_qos {
            let mut metric = encoder.encode_descriptor(name, doc, None, MetricType::Counter)?;
            for (qos, count) in counts.iter().enumerate() {
                let labels = [("qos", qos.to_string())];
                let mut family = metric.encode_family(&labels)?;
                family.encode_counter::<NoLabelSet, _, u64>(count, None)?;
            }
        }
        let by_type = [
            (
                "packets_received",
                "MQTT packets received, by type (the CONNECT included, not AUTH during CONNECT).",
                &census.packets_in,
            ),
            (
                "packets_sent",
                "MQTT packets handed to write tasks, by type (the CONNACK included).",
                &census.packets_out,
            ),
        ];
        for (name, doc, counts) in by_type {
            let mut metric = encoder.encode_descriptor(name, doc, None, MetricType::Counter)?;
            let named = PACKET_TYPES.iter().zip(counts.by_type()).skip(1);
            for (kind, count) in named {
                let labels = [("type", *kind)];
                let mut family = metric.encode_family(&labels)?;
                family.encode_counter::<NoLabelSet, _, u64>(&count, None)?;
            }
        }
        let by_reason = [
            ("connacks_refused_by_reason", "CONNACKs refused, by MQTT 5 reason code (3.1.1 clients got the matching return code).", &census.connacks_refused),
            ("closed_by_broker", "Connections the broker closed, by the MQTT 5 DISCONNECT reason code for why (sent to MQTT 5 clients; 3.1.1 connections are closed without one).", &census.closed_by_broker),
        ];
        for (name, doc, reasons) in by_reason {
            let mut metric = encoder.encode_descriptor(name, doc, None, MetricType::Counter)?;
            for (reason, count) in reasons.counted() {
                let labels = [("reason", format!("0x{:02x}", reason.0))];
                let mut family = metric.encode_family(&labels)?;
                family.encode_counter::<NoLabelSet, _, u64>(&count, None)?;
            }
        }
        let offline = snapshot.sessions_offline_current;
        let online = snapshot.sessions_current.saturating_sub(offline);
        let mut sessions = encoder.encode_descriptor(
            "sessions",
            "Sessions known now, by state: online (a connection or an embedded owner holds it) or offline (persistent, waiting for its client).",
            None,
            MetricType::Gauge,
        )?;
        for (state, count) in [("online", online), ("offline", offline)] {
            let labels = [("state", state)];
            let mut family = sessions.encode_family(&labels)?;
            family.encode_gauge(&count)?;
        }
        let (queued, in_flight) = self.ctx.registry.queued_and_in_flight();
        let gauges = [
            ("queued_messages", "Deliveries waiting in the sessions' mailboxes now (summed over sessions at each scrape).", queued),
            ("inflight_messages", "QoS 1/2 deliveries sent and not yet acknowledged, as each session last recorded it (summed at each scrape).", in_flight),
        ];
        for (name, doc, value) in gauges {
            let mut metric = encoder.encode_descriptor(name, doc, None, MetricType::Gauge)?;
            metric.encode_gauge(&value)?;
        }
        let (sum, buckets) = census.latency.buckets();
        let count = buckets.iter().map(|&(_, count)| count).sum();
        let mut latency = encoder.encode_descriptor(
            "delivery_latency_seconds",
            "From a client's PUBLISH taken by its session to each delivery of it encoded for a subscriber's writer; one non-retained PUBLISH in 16 per connection is sampled.",
            None,
            MetricType::Histogram,
        )?;
        latency.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        let mut connections = encoder.encode_descriptor(
            "connections",
            "Connections past CONNECT open now (resting ones included), by listener, protocol and MQTT version.",
            None,
            MetricType::Gauge,
        )?;
        for listener in census.listeners() {
            let Some(addr) = listener.addr() else {
                continue;
            };
            let protocol = match listener.protocol {
                ListenerProtocol::Mqtt => "mqtt",
                ListenerProtocol::Ws => "ws",
            };
            for (version, open) in VERSIONS.iter().zip(listener.open()) {
                let labels = [
                    ("listener", addr.to_string()),
                    ("protocol", protocol.to_owned()),
                    ("tls", listener.tls.to_string()),
                    ("version", (*version).to_owned()),
                ];
                let mut family = connections.encode_family(&labels)?;
                family.encode_gauge(&open)?;
            }
        }
        let mut depth = encoder.encode_descriptor(
            "router_queue_depth",
            "Messages waiting in the router's channel now (at most limits.router_queue).",
            None,
            MetricType::Gauge,
        )?;
        depth.encode_gauge(&(self.ctx.router.queued() as u64))?;
        if let Some(rss) = resident_memory_bytes() {
            let mut memory = encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory of the broker process (from /proc/self/statm).",
                None,
                MetricType::Gauge,
            )?;
            memory.encode_gauge(&rss)?;
        }
        Ok(())
    }
}

/// The doc strings of `metrics`' fields, in declaration order.
const DOCS: &[&str] = crate::metrics::DOCS;

/// The process's resident set, from `/proc/self/statm` (Linux); `None`
/// elsewhere.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages.saturating_mul(u64::try_from(page).ok().filter(|&p| p > 0)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_has_its_doc_and_gauges_are_told_apart() {
        let named = crate::metrics::MetricsSnapshot::default().named();
        assert_eq!(named.len(), DOCS.len());
        assert!(is_gauge("retained_bytes_current"));
        assert!(is_gauge("memory_accounted_bytes"));
        assert!(!is_gauge("takeovers"));
    }

    #[test]
    fn help_text_escapes_quotes_backslashes_and_newlines() {
        assert_eq!(help("a \"b\" \\ c\nd"), "a \\\"b\\\" \\\\ c\\nd");
    }

    #[test]
    fn resident_memory_is_read_on_linux() {
        assert!(resident_memory_bytes().is_some_and(|bytes| bytes > 0));
    }
}
