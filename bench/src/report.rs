//! What a run reports ([`RunReport`], one `--json` object per run) and the
//! two human tables: every run, and the ratios of a baseline broker to each
//! peer. Pure code: formatting only.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunReport {
    pub scenario: String,
    /// The broker, from `--label`.
    pub label: String,
    pub mqtt: u8,
    pub qos: u8,
    pub payload: usize,
    pub publishers: u32,
    pub subscribers: u32,
    pub run_id: String,
    /// `--duration`, seconds.
    pub duration_s: f64,
    /// From the first publish to the last arrival, seconds.
    pub elapsed_s: f64,
    /// PUBLISHes written by the publishers.
    pub sent: u64,
    /// Of this run's messages, arrivals at subscribers (duplicates included).
    pub received: u64,
    /// Messages that should have arrived: sent x subscribers per message.
    pub expected: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    /// Arrivals that were not this run's (stale retained, other runs).
    pub foreign: u64,
    /// `received / elapsed_s`.
    pub msgs_per_s: f64,
    pub sent_per_s: f64,
    /// QoS 1/2: the smallest publisher window used: `--inflight`, or less
    /// when the broker's MQTT 5 Receive Maximum says so.
    pub window: Option<u32>,
    /// QoS 1/2: exchanges completed, refused by the broker, still in flight.
    pub acked: u64,
    pub refused: u64,
    pub unacked: u64,
    pub broker_cpu_s: Option<f64>,
    /// `received / broker_cpu_s`.
    pub msgs_per_cpu_s: Option<f64>,
    pub broker_rss_kib_before: Option<u64>,
    pub broker_rss_kib_after: Option<u64>,
    pub latency_us: Option<Latency>,
    pub conns: Option<ConnsReport>,
    /// Subscribers kept persistent sessions (`--persistent-subscriber`).
    pub persistent_subscribers: bool,
    /// fsyncs and commits of the broker's store during the run, added by
    /// `scripts/bench.sh` from the broker's `$SYS` counters or its shutdown
    /// line; absent for a broker without them. Not written by the tool, so
    /// that the script can add them to the line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_fsyncs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_commits: Option<u64>,
    /// Errors that ended single clients, "N x message".
    pub client_errors: Vec<String>,
    /// Why the run could not be done at all.
    pub error: Option<String>,
}

/// Send-to-arrival times of first arrivals, microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub samples: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnsReport {
    pub target: u32,
    pub connected: u64,
    pub failed: u64,
    /// From the first connect to the last CONNACK, seconds.
    pub connect_s: f64,
    pub connects_per_s: f64,
    /// Broker RSS growth per held connection, bytes.
    pub rss_per_conn_bytes: Option<f64>,
    pub pings: u64,
    pub pongs: u64,
    /// Host-wide accept-queue overflows during the connect phase.
    pub listen_overflows: Option<u64>,
}

/// 1234567 -> "1.23M"; for counts and rates in tables.
pub fn si(value: f64) -> String {
    let abs = value.abs();
    if abs >= 1e9 {
        format!("{:.2}G", value / 1e9)
    } else if abs >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if abs >= 1e4 {
        format!("{:.1}k", value / 1e3)
    } else if abs >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn opt(value: Option<f64>, format: impl Fn(f64) -> String) -> String {
    value.map(format).unwrap_or_else(|| "-".into())
}

/// Columns padded to their widest cell; numbers right-aligned.
fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            let pad = width.saturating_sub(cell.chars().count());
            if i < 2 || i + 1 == cells.len() {
                let _ = write!(text, "{cell}{} ", " ".repeat(pad));
            } else {
                let _ = write!(text, "{}{cell} ", " ".repeat(pad));
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(&mut out, header.to_vec());
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(&mut out, rule.iter().map(String::as_str).collect());
    for row in rows {
        line(&mut out, row.iter().map(String::as_str).collect());
    }
    out
}

/// One row per run.
pub fn runs_table(reports: &[RunReport]) -> String {
    let header = [
        "scenario",
        "broker",
        "mqtt",
        "qos",
        "sent",
        "received",
        "msg/s",
        "lost",
        "dup",
        "reord",
        "cpu s",
        "msg/cpu-s",
        "fsync/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "conn/s",
        "RSS/conn",
        "note",
    ];
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            let latency = r.latency_us.as_ref();
            let conns = r.conns.as_ref();
            let mut note = r.error.clone().unwrap_or_default();
            if note.is_empty() && !r.client_errors.is_empty() {
                note = r.client_errors.join("; ");
            }
            if let Some(n) = conns.and_then(|c| c.listen_overflows).filter(|n| *n > 0) {
                note = format!("{n} listen overflows; {note}");
            }
            if note.is_empty() && r.refused > 0 {
                note = format!("{} refused by the broker", r.refused);
            }
            let failed = r.error.is_some();
            let count = |v: u64| if failed { "-".into() } else { si(v as f64) };
            vec![
                r.scenario.clone(),
                r.label.clone(),
                r.mqtt.to_string(),
                r.qos.to_string(),
                count(if conns.is_some() { 0 } else { r.sent }),
                count(r.received),
                if failed || conns.is_some() {
                    "-".into()
                } else {
                    si(r.msgs_per_s)
                },
                count(r.lost),
                count(r.duplicates),
                count(r.reordered),
                opt(r.broker_cpu_s, |v| format!("{v:.2}")),
                opt(r.msgs_per_cpu_s, si),
                opt(fsyncs_per_s(r), si),
                opt(latency.map(|l| l.p50), |v| format!("{v:.0}")),
                opt(latency.map(|l| l.p99), |v| format!("{v:.0}")),
                opt(latency.map(|l| l.p999), |v| format!("{v:.0}")),
                opt(conns.map(|c| c.connects_per_s), si),
                opt(conns.and_then(|c| c.rss_per_conn_bytes), |b| {
                    format!("{:.1}KiB", b / 1024.0)
                }),
                note,
            ]
        })
        .collect();
    render(&header, &rows)
}

/// The store's fsyncs per second of the run (first publish to last arrival).
fn fsyncs_per_s(r: &RunReport) -> Option<f64> {
    let fsyncs = r.storage_fsyncs? as f64;
    (r.elapsed_s > 0.0).then(|| fsyncs / r.elapsed_s)
}

/// `baseline / other`, or "-" when either is missing or not positive.
fn ratio(baseline: Option<f64>, other: Option<f64>) -> String {
    match (baseline, other) {
        (Some(b), Some(o)) if b > 0.0 && o > 0.0 => format!("{:.2}x", b / o),
        _ => "-".into(),
    }
}

/// For each scenario, MQTT version and QoS: the baseline's figures divided by
/// each peer's. Above 1 is better for the baseline in msg/s, msg/cpu-s and
/// conn/s; below 1 is better for it in p99 latency and RSS per connection.
pub fn ratio_table(reports: &[RunReport], baseline: &str) -> String {
    let ok = |r: &&RunReport| r.error.is_none();
    let mut groups: BTreeMap<(String, u8, u8), Vec<&RunReport>> = BTreeMap::new();
    for report in reports.iter().filter(ok) {
        groups
            .entry((report.scenario.clone(), report.mqtt, report.qos))
            .or_default()
            .push(report);
    }
    let mut rows = Vec::new();
    for ((scenario, mqtt, qos), runs) in &groups {
        let Some(base) = runs.iter().find(|r| r.label == baseline) else {
            continue;
        };
        for peer in runs.iter().filter(|r| r.label != baseline) {
            let is_conns = base.conns.is_some();
            let rate = |r: &RunReport| (!is_conns).then_some(r.msgs_per_s);
            let p99 = |r: &RunReport| r.latency_us.as_ref().map(|l| l.p99);
            let conn_rate = |r: &RunReport| r.conns.as_ref().map(|c| c.connects_per_s);
            let rss = |r: &RunReport| r.conns.as_ref().and_then(|c| c.rss_per_conn_bytes);
            rows.push(vec![
                scenario.clone(),
                format!("{baseline} / {}", peer.label),
                mqtt.to_string(),
                qos.to_string(),
                ratio(rate(base), rate(peer)),
                ratio(base.msgs_per_cpu_s, peer.msgs_per_cpu_s),
                ratio(p99(base), p99(peer)),
                ratio(conn_rate(base), conn_rate(peer)),
                ratio(rss(base), rss(peer)),
                String::new(),
            ]);
        }
    }
    let header = [
        "scenario",
        "ratio",
        "mqtt",
        "qos",
        "msg/s",
        "msg/cpu-s",
        "p99 (lower=better)",
        "conn/s",
        "RSS/conn (lower=better)",
        "",
    ];
    render(&header, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(label: &str, msgs_per_s: f64, p99: f64) -> RunReport {
        RunReport {
            scenario: "fanin".into(),
            label: label.into(),
            mqtt: 4,
            qos: 1,
            sent: 1000,
            received: 1000,
            msgs_per_s,
            msgs_per_cpu_s: Some(msgs_per_s * 2.0),
            latency_us: Some(Latency {
                p99,
                ..Latency::default()
            }),
            ..RunReport::default()
        }
    }

    #[test]
    fn si_suffixes() {
        assert_eq!(si(0.0), "0");
        assert_eq!(si(12.5), "12.5");
        assert_eq!(si(950.0), "950");
        assert_eq!(si(12_345.0), "12.3k");
        assert_eq!(si(1_234_567.0), "1.23M");
        assert_eq!(si(2.5e9), "2.50G");
    }

    #[test]
    fn ratios_are_baseline_over_peer() {
        let reports = [
            run("tidemq", 200_000.0, 100.0),
            run("mosquitto", 100_000.0, 400.0),
        ];
        let table = ratio_table(&reports, "tidemq");
        let row = table.lines().nth(2).unwrap();
        assert!(row.contains("tidemq / mosquitto"), "{table}");
        assert!(row.contains("2.00x"), "{table}");
        assert!(row.contains("0.25x"), "{table}");
    }

    #[test]
    fn failed_runs_and_missing_baselines_give_no_ratio() {
        let mut failed = run("nats", 1.0, 1.0);
        failed.error = Some("CONNACK 0x01".into());
        let table = ratio_table(&[run("tidemq", 2.0, 1.0), failed], "tidemq");
        assert_eq!(table.lines().count(), 2, "header and rule only:\n{table}");
        let table = ratio_table(&[run("mosquitto", 2.0, 1.0)], "tidemq");
        assert_eq!(table.lines().count(), 2);
    }

    #[test]
    fn runs_table_has_a_row_per_run_and_shows_errors() {
        let mut failed = run("nats", 1.0, 1.0);
        failed.error = Some("refused".into());
        let table = runs_table(&[run("tidemq", 2.0, 1.0), failed]);
        assert_eq!(table.lines().count(), 4);
        assert!(table.lines().last().unwrap().ends_with("refused"));
    }

    #[test]
    fn fsyncs_per_second_only_when_counted() {
        let mut report = run("tidemq-batch", 2.0, 1.0);
        report.elapsed_s = 4.0;
        assert_eq!(fsyncs_per_s(&report), None);
        report.storage_fsyncs = Some(10_000);
        assert_eq!(fsyncs_per_s(&report), Some(2_500.0));
        let table = runs_table(&[report]);
        assert!(table.lines().next().unwrap().contains("fsync/s"), "{table}");
        assert!(table.lines().nth(2).unwrap().contains("2500"), "{table}");
    }

    #[test]
    fn json_round_trips_and_tolerates_missing_fields() {
        let report = run("tidemq", 5.0, 1.0);
        let text = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<RunReport>(&text).unwrap(), report);
        let sparse: RunReport = serde_json::from_str(r#"{"scenario":"conns"}"#).unwrap();
        assert_eq!(sparse.scenario, "conns");
        assert!(!text.contains("storage_fsyncs"), "left for bench.sh to add");
        let added = text.replacen('{', r#"{"storage_fsyncs":7,"storage_commits":9,"#, 1);
        let added: RunReport = serde_json::from_str(&added).unwrap();
        assert_eq!(
            (added.storage_fsyncs, added.storage_commits),
            (Some(7), Some(9))
        );
    }
}
