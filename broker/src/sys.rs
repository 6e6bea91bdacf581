//! `$SYS` topics: every `sys.interval_secs` the broker publishes retained
//! QoS 0 messages under `$SYS/broker/`, in two trees:
//!
//! - mosquitto's names (`clients/connected`, `load/messages/received/1min`,
//!   ...; see `man mosquitto`), so dashboards made for mosquitto work
//!   unchanged. [`SysTree`] computes them from one snapshot of the counters;
//! - every counter of [`Metrics`] under `$SYS/broker/tidemq/<counter>`: its
//!   own subtree, so none of them is mistaken for a mosquitto name that
//!   means something else (`messages_received` counts PUBLISHes, mosquitto's
//!   `messages/received` every packet).
//!
//! `#` subscriptions do not see them [MQTT-4.7.2-1]; `$SYS/#` does. The
//! task owns the [`SysTree`] and only publishes what it answers.
//!
//! | mosquitto name                       | tidemq source                                   |
//! |--------------------------------------|-------------------------------------------------|
//! | `version`                            | `tidemq <version>`, once at start (static)      |
//! | `uptime`                             | `<n> seconds` since the broker started          |
//! | `clients/connected`                  | `connections_current` (resting ones included)   |
//! | `clients/disconnected`               | `sessions_offline_current`                      |
//! | `clients/total`                      | connected + disconnected                        |
//! | `clients/maximum`                    | `connections_max`                               |
//! | `clients/expired`                    | `sessions_expired`                              |
//! | `messages/received`, `messages/sent` | `packets_received`, `packets_sent` (any type)   |
//! | `messages/stored`, `store/messages/count` | queued deliveries + retained messages      |
//! | `bytes/received`, `bytes/sent`       | `bytes_received`, `bytes_sent`                  |
//! | `subscriptions/count`                | `subscriptions_current`                         |
//! | `retained messages/count`            | `retained_messages_current`                     |
//! | `publish/messages/received`, `/sent` | `messages_received`, `messages_sent`            |
//! | `publish/messages/dropped`           | `dropped_queue_full` + `dropped_storage_full`   |
//! | `messages/inflight`                  | QoS 1/2 deliveries unacknowledged, over sessions (as each last recorded it) |
//! | `heap/current`, `heap/maximum`       | the process's resident memory, and its highest seen at a tick (`<n> bytes`) |
//! | `load/<what>/{1min,5min,15min}`      | see [`LOADS`]                                   |
//!
//! A load is what mosquitto publishes there: a count per minute, averaged
//! with exponentially decaying weights over 1, 5 or 15 minutes (as Unix load
//! averages are). At each tick, with `r` the count since the last tick
//! scaled to one minute and `dt` the seconds since it,
//! `avg = r + exp(-dt / window) * (avg - r)`; each average starts at 0.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tidemq_protocol::{QoS, TopicName};
use tokio::time::Instant;

use crate::connection::Context;
use crate::metrics::MetricsSnapshot;
use crate::types::Message;

const PREFIX: &str = "$SYS/broker/";
/// Where tidemq's own counters go, below [`PREFIX`].
const OWN: &str = "tidemq/";

/// The averaging windows of a load, with the name of its topic level.
const WINDOWS: [(&str, f64); 3] = [("1min", 60.0), ("5min", 300.0), ("15min", 900.0)];

/// Reads one counter (or a sum of them) from a snapshot.
type Counter = fn(&MetricsSnapshot) -> u64;

/// Each load topic (`load/<name>/<window>`) and the counter it follows.
pub const LOADS: [(&str, Counter); 9] = [
    ("messages/received", |m| m.packets_received),
    ("messages/sent", |m| m.packets_sent),
    ("publish/received", |m| m.messages_received),
    ("publish/sent", |m| m.messages_sent),
    ("publish/dropped", dropped),
    ("bytes/received", |m| m.bytes_received),
    ("bytes/sent", |m| m.bytes_sent),
    ("connections", |m| m.connects_received),
    ("sockets", |m| m.connections_accepted),
];

fn dropped(m: &MetricsSnapshot) -> u64 {
    m.dropped_queue_full + m.dropped_storage_full
}

/// The moving averages of one counter's rate, in counts per minute.
#[derive(Debug, Default, Clone, Copy)]
struct Load {
    /// The counter at the last tick.
    last: u64,
    /// One per [`WINDOWS`] entry.
    averages: [f64; 3],
}

impl Load {
    fn update(&mut self, total: u64, elapsed: f64) {
        let per_minute = total.saturating_sub(self.last) as f64 * 60.0 / elapsed;
        self.last = total;
        for (average, (_, window)) in self.averages.iter_mut().zip(WINDOWS) {
            let keep = (-elapsed / window).exp();
            *average = per_minute + keep * (*average - per_minute);
        }
    }
}

/// mosquitto's `$SYS` tree, computed from the counters: pure, the time is
/// passed in.
#[derive(Debug)]
pub struct SysTree {
    started: Instant,
    last_tick: Instant,
    loads: [Load; LOADS.len()],
    /// The highest resident memory seen at a tick (`heap/maximum`).
    resident_max: u64,
}

/// What the counters do not hold: summed over the sessions at each tick.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    /// Deliveries waiting in the sessions' mailboxes.
    pub queued: u64,
    /// QoS 1/2 deliveries sent and not yet acknowledged.
    pub in_flight: u64,
    /// The process's resident memory, where the system says.
    pub resident: Option<u64>,
}

impl SysTree {
    /// A tree for a broker started at `started`, when every counter was 0.
    pub fn new(started: Instant) -> SysTree {
        SysTree {
            started,
            last_tick: started,
            loads: [Load::default(); LOADS.len()],
            resident_max: 0,
        }
    }

    /// The topics published once: `version`.
    pub fn once() -> Vec<(String, String)> {
        let version = format!("tidemq {}", env!("CARGO_PKG_VERSION"));
        vec![("version".to_owned(), version)]
    }

    /// Every topic below `$SYS/broker/` and its value at `now`: mosquitto's
    /// names, then tidemq's counters under `tidemq/`. The loads move only
    /// when time has passed since the last tick.
    pub fn tick(
        &mut self,
        m: &MetricsSnapshot,
        gauges: Gauges,
        now: Instant,
    ) -> Vec<(String, String)> {
        let elapsed = now.saturating_duration_since(self.last_tick).as_secs_f64();
        if elapsed > 0.0 {
            for (load, (_, counter)) in self.loads.iter_mut().zip(LOADS) {
                load.update(counter(m), elapsed);
            }
            self.last_tick = now;
        }
        let uptime = now.saturating_duration_since(self.started).as_secs();
        let connected = m.connections_current;
        let disconnected = m.sessions_offline_current;
        let stored = gauges.queued + m.retained_messages_current;
        let mut topics: Vec<(String, String)> = [
            ("uptime", format!("{uptime} seconds")),
            ("clients/connected", connected.to_string()),
            ("clients/disconnected", disconnected.to_string()),
            ("clients/total", (connected + disconnected).to_string()),
            ("clients/maximum", m.connections_max.to_string()),
            ("clients/expired", m.sessions_expired.to_string()),
            ("messages/received", m.packets_received.to_string()),
            ("messages/sent", m.packets_sent.to_string()),
            ("messages/stored", stored.to_string()),
            ("store/messages/count", stored.to_string()),
            // The memory budget's count: messages (topic + payload) held for
            // queues, in-flight windows and the retained store, once each
            // however many share them, plus queue slots and partly read
            // packets.
            ("store/messages/bytes", m.memory_accounted_bytes.to_string()),
            ("bytes/received", m.bytes_received.to_string()),
            ("bytes/sent", m.bytes_sent.to_string()),
            ("subscriptions/count", m.subscriptions_current.to_string()),
            (
                "retained messages/count",
                m.retained_messages_current.to_string(),
            ),
            ("publish/messages/received", m.messages_received.to_string()),
            ("publish/messages/sent", m.messages_sent.to_string()),
            ("publish/messages/dropped", dropped(m).to_string()),
            ("messages/inflight", gauges.in_flight.to_string()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        if let Some(resident) = gauges.resident {
            self.resident_max = self.resident_max.max(resident);
            topics.push(("heap/current".to_owned(), format!("{resident} bytes")));
            let maximum = format!("{} bytes", self.resident_max);
            topics.push(("heap/maximum".to_owned(), maximum));
        }
        for (load, (name, _)) in self.loads.iter().zip(LOADS) {
            for (average, (window, _)) in load.averages.iter().zip(WINDOWS) {
                topics.push((format!("load/{name}/{window}"), format!("{average:.2}")));
            }
        }
        for (name, value) in m.named() {
            topics.push((format!("{OWN}{name}"), value.to_string()));
        }
        topics
    }
}

/// Publishes the tree every `interval` until the broker shuts down.
pub async fn run(ctx: Arc<Context>, interval: Duration) {
    let mut tree = SysTree::new(Instant::now());
    if !publish(&ctx, SysTree::once()).await {
        return;
    }
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let (queued, in_flight) = ctx.registry.queued_and_in_flight();
        let gauges = Gauges {
            queued,
            in_flight,
            resident: crate::http::prom::resident_memory_bytes(),
        };
        let topics = tree.tick(&ctx.metrics.snapshot(), gauges, Instant::now());
        if !publish(&ctx, topics).await {
            return;
        }
    }
}

/// Publishes each `(name, value)` as a retained `$SYS/broker/<name>`;
/// `false` once the router has stopped.
async fn publish(ctx: &Context, topics: Vec<(String, String)>) -> bool {
    for (name, value) in topics {
        let Ok(topic) = TopicName::new(&format!("{PREFIX}{name}")) else {
            continue;
        };
        let message = Message::new(topic, Bytes::from(value), QoS::AtMostOnce, true);
        if ctx.router.publish(message, None).await.is_err() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value<'a>(topics: &'a [(String, String)], name: &str) -> &'a str {
        topics
            .iter()
            .find(|(topic, _)| topic == name)
            .map(|(_, value)| value.as_str())
            .unwrap_or_else(|| panic!("no {name} in {topics:?}"))
    }

    #[test]
    fn load_after_one_minute_of_a_steady_rate() {
        let start = Instant::now();
        let mut tree = SysTree::new(start);
        let m = MetricsSnapshot {
            packets_received: 120,
            ..MetricsSnapshot::default()
        };
        let topics = tree.tick(&m, Gauges::default(), start + Duration::from_secs(60));
        // 120 a minute for one minute: 120 * (1 - e^-1) over 1 min,
        // 120 * (1 - e^-1/5) over 5, 120 * (1 - e^-1/15) over 15.
        assert_eq!(value(&topics, "load/messages/received/1min"), "75.85");
        assert_eq!(value(&topics, "load/messages/received/5min"), "21.75");
        assert_eq!(value(&topics, "load/messages/received/15min"), "7.74");
        assert_eq!(value(&topics, "load/messages/sent/1min"), "0.00");
        assert_eq!(value(&topics, "uptime"), "60 seconds");
    }

    #[test]
    fn load_converges_to_the_rate_and_decays_without_traffic() {
        let start = Instant::now();
        let mut tree = SysTree::new(start);
        let mut m = MetricsSnapshot::default();
        let mut now = start;
        // 10 CONNECTs every 10 s for an hour: 60 a minute.
        for _ in 0..360 {
            now += Duration::from_secs(10);
            m.connects_received += 10;
            tree.tick(&m, Gauges::default(), now);
        }
        let topics = tree.tick(&m, Gauges::default(), now);
        assert_eq!(value(&topics, "load/connections/1min"), "60.00");
        assert_eq!(value(&topics, "load/connections/15min"), "58.90");
        // Then nothing for 5 minutes: the 1 min average is nearly gone.
        let topics = tree.tick(&m, Gauges::default(), now + Duration::from_secs(300));
        assert_eq!(value(&topics, "load/connections/1min"), "0.40");
    }

    #[test]
    fn clients_and_store_follow_the_gauges() {
        let start = Instant::now();
        let mut tree = SysTree::new(start);
        let m = MetricsSnapshot {
            connections_current: 3,
            connections_max: 7,
            sessions_offline_current: 2,
            retained_messages_current: 4,
            memory_accounted_bytes: 1234,
            dropped_queue_full: 1,
            dropped_storage_full: 1,
            messages_received: 9,
            ..MetricsSnapshot::default()
        };
        let gauges = Gauges {
            queued: 5,
            in_flight: 4,
            resident: Some(3 << 20),
        };
        let topics = tree.tick(&m, gauges, start);
        assert_eq!(value(&topics, "messages/inflight"), "4");
        assert_eq!(value(&topics, "heap/current"), "3145728 bytes");
        assert_eq!(value(&topics, "heap/maximum"), "3145728 bytes");
        assert_eq!(value(&topics, "clients/connected"), "3");
        assert_eq!(value(&topics, "clients/disconnected"), "2");
        assert_eq!(value(&topics, "clients/total"), "5");
        assert_eq!(value(&topics, "clients/maximum"), "7");
        assert_eq!(value(&topics, "messages/stored"), "9");
        assert_eq!(value(&topics, "retained messages/count"), "4");
        assert_eq!(value(&topics, "store/messages/bytes"), "1234");
        assert_eq!(value(&topics, "publish/messages/dropped"), "2");
        assert_eq!(value(&topics, "tidemq/messages_received"), "9");
        assert_eq!(value(&topics, "load/publish/received/1min"), "0.00");
        assert!(value(&SysTree::once(), "version").starts_with("tidemq 0."));
    }
}
