//! The broker publishes retained `$SYS/broker/...` messages, visible to
//! `$SYS/#` subscribers and hidden from `#`: mosquitto's names (which follow
//! the traffic as a client makes it) and its own counters under
//! `$SYS/broker/tidemq/<counter>`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use tidemq_protocol::QoS;
use tidemq_tests::{settings, ConnectOptions, RawClient, TestBroker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_are_published_under_sys_broker() {
    let mut config = settings();
    config.sys.interval_secs = 1;
    let broker = TestBroker::start_with(config).await;
    let (mut watcher, _) = RawClient::connected(broker.addr, &ConnectOptions::new("watcher")).await;
    watcher
        .subscribe_granted(
            1,
            &[("$SYS/broker/tidemq/connections_accepted", QoS::AtMostOnce)],
        )
        .await;
    // The first publication may predate the watcher (then it comes retained);
    // either way the value counts the watcher's own connection.
    let publish = watcher.next_publish().await;
    let (topic, payload, _, _) = publish.publish();
    assert_eq!(topic, "$SYS/broker/tidemq/connections_accepted");
    let accepted: u64 = String::from_utf8(payload).unwrap().parse().unwrap();
    assert!(accepted <= 1, "one connection so far, got {accepted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_4_7_2_1_hash_does_not_receive_sys_topics() {
    let mut config = settings();
    config.sys.interval_secs = 1;
    let broker = TestBroker::start_with(config).await;
    let (mut everything, _) = RawClient::connected(broker.addr, &ConnectOptions::new("all")).await;
    everything
        .subscribe_granted(1, &[("#", QoS::AtMostOnce)])
        .await;
    let (mut sys, _) = RawClient::connected(broker.addr, &ConnectOptions::new("sys")).await;
    sys.subscribe_granted(1, &[("$SYS/#", QoS::AtMostOnce)])
        .await;
    // Wait for one publication round to reach the $SYS subscriber.
    sys.next_publish().await;
    assert!(
        everything.recv_within(tidemq_tests::QUIET).await.is_none(),
        "'#' must not match $SYS topics"
    );
}

/// mosquitto's `$SYS/broker/` names, below the prefix.
const MOSQUITTO_NAMES: [&str; 22] = [
    "version",
    "uptime",
    "clients/connected",
    "clients/disconnected",
    "clients/total",
    "clients/maximum",
    "clients/expired",
    "messages/received",
    "messages/sent",
    "messages/stored",
    "store/messages/count",
    "store/messages/bytes",
    "bytes/received",
    "bytes/sent",
    "subscriptions/count",
    "retained messages/count",
    "publish/messages/received",
    "publish/messages/sent",
    "publish/messages/dropped",
    "messages/inflight",
    "heap/current",
    "heap/maximum",
];

/// What each load follows; each has a 1min, 5min and 15min topic.
const LOADS: [&str; 9] = [
    "messages/received",
    "messages/sent",
    "publish/received",
    "publish/sent",
    "publish/dropped",
    "bytes/received",
    "bytes/sent",
    "connections",
    "sockets",
];

/// Several `sys.interval_secs` of 1 s, for a loaded machine.
const SYS_WAIT: Duration = Duration::from_secs(20);

/// The latest value of every `$SYS/broker/` topic the watcher received,
/// by name below the prefix.
struct SysView {
    watcher: RawClient,
    values: HashMap<String, String>,
}

impl SysView {
    async fn start(broker: &TestBroker) -> SysView {
        let (mut watcher, _) =
            RawClient::connected(broker.addr, &ConnectOptions::new("dashboard")).await;
        watcher
            .subscribe_granted(1, &[("$SYS/broker/#", QoS::AtMostOnce)])
            .await;
        SysView {
            watcher,
            values: HashMap::new(),
        }
    }

    fn text(&self, name: &str) -> &str {
        self.values.get(name).map_or("", String::as_str)
    }

    fn number(&self, name: &str) -> u64 {
        self.text(name)
            .parse()
            .unwrap_or_else(|_| panic!("{name}: not a count: {:?}", self.text(name)))
    }

    fn load(&self, name: &str) -> f64 {
        self.text(name)
            .parse()
            .unwrap_or_else(|_| panic!("{name}: not a load: {:?}", self.text(name)))
    }

    fn has_every_name(&self) -> bool {
        MOSQUITTO_NAMES
            .iter()
            .all(|name| self.values.contains_key(*name))
            && LOADS.iter().all(|load| {
                ["1min", "5min", "15min"]
                    .iter()
                    .all(|window| self.values.contains_key(&format!("load/{load}/{window}")))
            })
    }

    /// Reads publications until `done` holds for what arrived, or panics
    /// after [`SYS_WAIT`] with `what` and the values.
    async fn until(&mut self, what: &str, done: impl Fn(&SysView) -> bool) {
        let deadline = tokio::time::Instant::now() + SYS_WAIT;
        while !done(self) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(packet) = self.watcher.recv_within(left).await else {
                panic!("timed out waiting for {what}: {:#?}", self.values);
            };
            let (topic, payload, _, _) = packet.publish();
            let name = topic
                .strip_prefix("$SYS/broker/")
                .expect("under $SYS/broker/");
            let value = String::from_utf8(payload).expect("UTF-8");
            self.values.insert(name.to_owned(), value);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_names_arrive_with_plausible_values() {
    let mut config = settings();
    config.sys.interval_secs = 1;
    let broker = TestBroker::start_with(config).await;
    let mut sys = SysView::start(&broker).await;
    // The first values may predate the dashboard (they come retained);
    // later ones count the dashboard itself: one client, its CONNECT and
    // SUBSCRIBE.
    sys.until("every name, counting the dashboard", |sys| {
        sys.has_every_name()
            && sys.number("clients/connected") >= 1
            && sys.number("subscriptions/count") >= 1
            && sys.number("messages/received") >= 2
            && sys.number("bytes/received") > 0
            // tidemq's own counters, published after the mosquitto names
            // in each tick, counting the dashboard too.
            && sys
                .values
                .get("tidemq/connections_accepted")
                .and_then(|value| value.parse::<u64>().ok())
                .is_some_and(|accepted| accepted >= 1)
    })
    .await;
    assert!(
        sys.text("version").starts_with("tidemq "),
        "{}",
        sys.text("version")
    );
    let uptime = sys
        .text("uptime")
        .strip_suffix(" seconds")
        .expect("<n> seconds");
    uptime.parse::<u64>().expect("a number of seconds");
    assert!(sys.number("clients/maximum") >= 1);
    for load in LOADS {
        for window in ["1min", "5min", "15min"] {
            let value = sys.load(&format!("load/{load}/{window}"));
            assert!(value >= 0.0, "load/{load}/{window} = {value}");
        }
    }
    // Everything else is tidemq's own, in its own subtree.
    for name in sys.values.keys() {
        let known = MOSQUITTO_NAMES.contains(&name.as_str())
            || name.starts_with("load/")
            || name.starts_with("tidemq/");
        assert!(
            known,
            "$SYS/broker/{name}: neither mosquitto's nor under tidemq/"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_names_follow_the_traffic() {
    let mut config = settings();
    config.sys.interval_secs = 1;
    let broker = TestBroker::start_with(config).await;
    let mut sys = SysView::start(&broker).await;
    sys.until("every mosquitto name", SysView::has_every_name)
        .await;
    let before: HashMap<String, String> = sys.values.clone();
    let count = |name: &str| before[name].parse::<u64>().unwrap();

    // A persistent subscriber that will go offline with mail queued.
    let mut options = ConnectOptions::new("offline");
    options.clean_session = false;
    let (mut offline, _) = RawClient::connected(broker.addr, &options).await;
    offline
        .subscribe_granted(1, &[("queue/#", QoS::AtLeastOnce)])
        .await;
    let (mut publisher, _) =
        RawClient::connected(broker.addr, &ConnectOptions::new("publisher")).await;
    drop(offline);
    broker
        .wait_metrics("the persistent session offline", |m| {
            m.sessions_offline_current == 1
        })
        .await;
    for n in 0..10u16 {
        let topic = format!("retained/{n}");
        publisher
            .publish_acked(&topic, QoS::AtLeastOnce, n + 1, b"kept", true)
            .await;
    }
    for n in 0..5u16 {
        publisher
            .publish_acked("queue/jobs", QoS::AtLeastOnce, n + 20, b"job", false)
            .await;
    }

    sys.until("the traffic counted", |sys| {
        sys.number("publish/messages/received") >= count("publish/messages/received") + 15
            // The $SYS topics are retained messages too.
            && sys.number("retained messages/count") == sys.values.len() as u64 + 10
            && sys.number("clients/disconnected") == 1
            // 5 queued for the offline session, and the retained ones.
            && sys.number("messages/stored") == sys.number("retained messages/count") + 5
            && sys.number("store/messages/count") == sys.number("messages/stored")
            // At least the topics and payloads of the 15 messages held:
            // 10 × ("retained/N" + "kept") + 5 × ("queue/jobs" + "job") =
            // 205 bytes, less a margin for $SYS values grown shorter.
            && sys.number("store/messages/bytes") >= count("store/messages/bytes") + 150
            // The dashboard and the publisher, and the offline session.
            && sys.number("clients/connected") == 2
            && sys.number("clients/total") == 3
            && sys.load("load/publish/received/1min") > 0.0
            && sys.load("load/connections/1min") > 0.0
    })
    .await;
    assert!(sys.number("clients/maximum") >= 3, "all three at once");
    assert!(sys.number("subscriptions/count") >= 2);
    assert!(sys.number("messages/received") >= count("messages/received") + 15 + 2);
    assert!(sys.number("messages/sent") > count("messages/sent"));
    assert!(sys.number("bytes/received") > count("bytes/received"));
    assert!(sys.number("bytes/sent") > count("bytes/sent"));
    assert!(sys.number("publish/messages/sent") > count("publish/messages/sent"));
    assert!(sys.load("load/bytes/received/1min") > 0.0);
    assert!(sys.load("load/messages/received/15min") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_inflight_counts_unacknowledged_deliveries_and_heap_is_in_bytes() {
    let mut config = settings();
    config.sys.interval_secs = 1;
    let broker = TestBroker::start_with(config).await;
    let mut sys = SysView::start(&broker).await;
    // A subscriber that takes QoS 1 deliveries and never acknowledges them.
    let (mut holder, _) = RawClient::connected(broker.addr, &ConnectOptions::new("holder")).await;
    holder
        .subscribe_granted(1, &[("held/#", QoS::AtLeastOnce)])
        .await;
    let (mut publisher, _) =
        RawClient::connected(broker.addr, &ConnectOptions::new("publisher")).await;
    for n in 0..3u16 {
        publisher
            .publish_acked("held/x", QoS::AtLeastOnce, n + 1, b"x", false)
            .await;
        holder.next_publish().await;
    }
    sys.until("three deliveries in flight", |sys| {
        sys.values.contains_key("messages/inflight") && sys.number("messages/inflight") == 3
    })
    .await;
    let bytes = |name: &str| -> u64 {
        let text = sys.text(name).strip_suffix(" bytes").expect("<n> bytes");
        text.parse().expect("a number of bytes")
    };
    assert!(
        bytes("heap/current") > 1 << 20,
        "{}",
        sys.text("heap/current")
    );
    assert!(bytes("heap/maximum") >= bytes("heap/current"));
    broker.stop().await;
}
