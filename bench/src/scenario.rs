//! Runs one scenario from start to report. The publish/subscribe scenarios
//! (fanin, fanout, pairs, latency) differ only in their [`Topology`] (see
//! `topology`); `conns` is in its own module.
//!
//! A run, every step bounded in time:
//!
//! 1. resolve the host (loopback only), check the broker pid;
//! 2. connect and subscribe every subscriber (with a persistent session and
//!    a fixed client id under `--persistent-subscriber`), then connect the
//!    publishers ([`SETUP_TIMEOUT`] each, [`SETUP_CONCURRENCY`] at once);
//! 3. sample the broker, start the clock; publishers publish for `--duration`
//!    or until they sent their share of `--count`;
//! 4. drain: wait until every expected message arrived, nothing arrived for
//!    [`DRAIN_IDLE`], or `--drain` passed;
//! 5. stop the subscribers, sample the broker again, add up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tidemq_protocol::{QoS, TopicFilter};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

use crate::cli::{check_loopback, RunArgs, Scenario};
use crate::client::Client;
use crate::error::BenchError;
use crate::histogram::Histogram;
use crate::payload::{Clock, HEADER_LEN};
use crate::procfs::{self, ProcSample};
use crate::progress::{self, Counters, Show};
use crate::publisher::{self, PublisherPlan, PublisherResult};
use crate::report::{Latency, RunReport};
use crate::subscriber::{self, SubscriberPlan, SubscriberResult};
use crate::topology::{topology, Topology};
use crate::tracker::Counts;
use crate::transport::Target;
use crate::wire::{SessionMode, Version};

/// Time for one client to get its CONNACK (and SUBACK).
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once during setup.
pub const SETUP_CONCURRENCY: usize = 64;
/// The drain ends early when nothing arrived for this long.
const DRAIN_IDLE: Duration = Duration::from_millis(500);
/// Extra time for tasks to notice a cancellation before they are aborted.
pub const JOIN_GRACE: Duration = Duration::from_secs(2);
/// Bytes of packet overhead allowed above `--payload` when framing.
const PACKET_SLACK: usize = 64 * 1024;

/// What every part of a run needs to know.
pub struct Context {
    pub scenario: Scenario,
    pub args: RunArgs,
    pub target: Target,
    pub version: Version,
    pub qos: QoS,
    pub run_id: u64,
}

impl Context {
    pub fn report(&self) -> RunReport {
        RunReport {
            scenario: self.scenario.name().into(),
            label: self.args.label.clone(),
            mqtt: self.version.level(),
            qos: self.qos as u8,
            payload: self.args.payload,
            run_id: format!("{:016x}", self.run_id),
            duration_s: self.args.duration.as_secs_f64(),
            ..RunReport::default()
        }
    }

    pub fn max_packet(&self) -> usize {
        self.args.payload + PACKET_SLACK
    }

    pub fn sample(&self) -> Option<ProcSample> {
        self.args
            .broker_pid
            .and_then(|pid| procfs::sample(pid).ok())
    }
}

/// Runs `scenario` and reports; a run that could not be done has `error` set.
pub async fn run(scenario: Scenario, args: RunArgs) -> RunReport {
    let ctx = match prepare(scenario, args.clone()).await {
        Ok(ctx) => ctx,
        Err(error) => {
            let mut report = RunReport {
                scenario: scenario.name().into(),
                label: args.label,
                mqtt: args.mqtt,
                qos: args.qos,
                ..RunReport::default()
            };
            report.error = Some(error);
            return report;
        }
    };
    let outcome = match scenario {
        Scenario::Conns => crate::conns::run(&ctx).await,
        _ => match topology(scenario, &ctx.args, ctx.run_id) {
            Ok(topology) => pubsub(&ctx, topology).await,
            Err(e) => Err(BenchError::Setup(e)),
        },
    };
    outcome.unwrap_or_else(|error| RunReport {
        error: Some(error.to_string()),
        ..ctx.report()
    })
}

async fn prepare(scenario: Scenario, args: RunArgs) -> Result<Context, String> {
    if args.payload < HEADER_LEN {
        return Err(format!(
            "--payload must be at least {HEADER_LEN} bytes (the header)"
        ));
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((args.host.as_str(), args.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", args.host))?
        .collect();
    let addr = check_loopback(&args.host, &addrs)?;
    let ws_path = args.ws.then(|| args.ws_path.clone());
    let target = Target::new(addr, args.tls_ca.as_deref(), ws_path)?;
    if let Some(pid) = args.broker_pid {
        procfs::sample(pid).map_err(|e| format!("--broker-pid {pid}: {e}"))?;
    }
    let version = if args.mqtt == 5 {
        Version::V5
    } else {
        Version::V4
    };
    let qos = QoS::from_bits(args.qos).ok_or("--qos must be 0, 1 or 2")?;
    if scenario == Scenario::Conns && (args.persistent_subscriber || args.count.is_some()) {
        return Err("conns has no subscribers or messages: --persistent-subscriber and --count do not apply".into());
    }
    Ok(Context {
        scenario,
        args,
        target,
        version,
        qos,
        run_id: run_id(),
    })
}

/// A random run id, from std's randomly keyed hasher (no rand dependency).
fn run_id() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::process::id())
}

/// The client id and session of subscriber `index` of `count`: a fresh
/// clean one per run, or under `--persistent-subscriber` a fixed id
/// (`--subscriber-id`, then `ID-i` when there are several) so that a later
/// run or a restarted broker finds the same session.
pub fn subscriber_identity(
    args: &RunArgs,
    run: &str,
    index: usize,
    count: usize,
) -> (String, SessionMode) {
    if !args.persistent_subscriber {
        return (format!("tb-{run}-s{index}"), SessionMode::Clean);
    }
    let id = if count == 1 {
        args.subscriber_id.clone()
    } else {
        format!("{}-{index}", args.subscriber_id)
    };
    let session = SessionMode::Persistent {
        expiry_secs: args.session_expiry,
    };
    (id, session)
}

/// Messages publisher `index` of `publishers` sends under `--count`: an
/// even share, the first `count % publishers` one more.
pub fn publisher_share(count: u64, publishers: usize, index: usize) -> u64 {
    let publishers = publishers.max(1) as u64;
    let index = index as u64;
    count / publishers + u64::from(index < count % publishers)
}

/// Connects `ids.len()` clients, each subscribing to its filter if it has
/// one; fails as soon as one fails.
async fn connect_all(
    ctx: &Context,
    ids: Vec<(String, SessionMode, Option<TopicFilter>)>,
) -> Result<Vec<Client>, BenchError> {
    let permits = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut set = JoinSet::new();
    let count = ids.len();
    for (index, (id, session, filter)) in ids.into_iter().enumerate() {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        let (target, version, qos) = (ctx.target.clone(), ctx.version, ctx.qos);
        let (keep_alive, max_packet) = (ctx.args.keepalive, ctx.max_packet());
        set.spawn(async move {
            let _permit = permit;
            let mut client = Client::connect(
                &target,
                version,
                &id,
                session,
                keep_alive,
                max_packet,
                SETUP_TIMEOUT,
            )
            .await?;
            if let Some(filter) = filter {
                client.subscribe(&filter, qos, SETUP_TIMEOUT).await?;
            }
            Ok::<_, BenchError>((index, client))
        });
    }
    let mut clients: Vec<Option<Client>> = (0..count).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (index, client) = joined.map_err(|e| BenchError::Setup(e.to_string()))??;
        if let Some(slot) = clients.get_mut(index) {
            *slot = Some(client);
        }
    }
    Ok(clients.into_iter().flatten().collect())
}

async fn pubsub(ctx: &Context, topology: Topology) -> Result<RunReport, BenchError> {
    let run = format!("{:x}", ctx.run_id);
    let sub_count = topology.subscribers.len();
    let sub_ids = topology
        .subscribers
        .iter()
        .enumerate()
        .map(|(i, (filter, _))| {
            let (id, session) = subscriber_identity(&ctx.args, &run, i, sub_count);
            (id, session, Some(filter.clone()))
        })
        .collect();
    let subscribers = connect_all(ctx, sub_ids).await?;
    let pub_ids = (0..topology.publishers.len())
        .map(|i| (format!("tb-{run}-p{i}"), SessionMode::Clean, None))
        .collect();
    let publishers = connect_all(ctx, pub_ids).await?;

    let counters = Arc::new(Counters::default());
    let before = ctx.sample();
    let clock = Clock::new();
    let start = Instant::now();
    let deadline = start + ctx.args.duration;
    let hard_deadline = deadline + ctx.args.drain;
    let stop = CancellationToken::new();
    let progress_stop = CancellationToken::new();
    let progress = (!ctx.args.quiet).then(|| {
        tokio::spawn(progress::run(
            ctx.scenario.name(),
            Show::Messages,
            counters.clone(),
            start,
            progress_stop.clone(),
        ))
    });

    let mut sub_tasks = Vec::new();
    for (client, (_, expected)) in subscribers.into_iter().zip(&topology.subscribers) {
        let plan = SubscriberPlan {
            run_id: ctx.run_id,
            expected: expected.clone(),
            hard_deadline: hard_deadline + JOIN_GRACE,
            keep_alive: ctx.args.keepalive,
            clock,
        };
        sub_tasks.push(tokio::spawn(subscriber::run(
            client,
            plan,
            counters.clone(),
            stop.clone(),
        )));
    }
    let mut pub_tasks = Vec::new();
    let mut smallest_window = None;
    for (id, (client, topic)) in publishers.into_iter().zip(&topology.publishers).enumerate() {
        let window = usize::from(ctx.args.inflight)
            .min(usize::from(client.receive_maximum.unwrap_or(u16::MAX)));
        smallest_window = Some(smallest_window.map_or(window, |w: usize| w.min(window)));
        let plan = PublisherPlan {
            id: id as u32,
            run_id: ctx.run_id,
            topic: topic.clone(),
            qos: ctx.qos,
            payload: ctx.args.payload,
            window,
            rate: topology.rate_per_publisher,
            limit: ctx
                .args
                .count
                .map(|count| publisher_share(count, topology.publishers.len(), id)),
            start,
            deadline,
            hard_deadline,
            keep_alive: ctx.args.keepalive,
            clock,
        };
        pub_tasks.push(tokio::spawn(publisher::run(client, plan, counters.clone())));
    }

    let mut published = Vec::new();
    for task in pub_tasks {
        published.push(join(task, hard_deadline + JOIN_GRACE).await);
    }
    let published_at = Instant::now();
    let sent: Vec<u64> = published
        .iter()
        .map(|p| p.as_ref().map_or(0, |p| p.sent))
        .collect();
    let expected = topology.expected(&sent);
    drain(&counters, expected, hard_deadline).await;
    stop.cancel();
    let mut received = Vec::new();
    for task in sub_tasks {
        received.push(join(task, Instant::now() + JOIN_GRACE).await);
    }
    let after = ctx.sample();
    progress_stop.cancel();
    if let Some(task) = progress {
        let _ = task.await;
    }
    Ok(summarize(
        ctx,
        &topology,
        (start, published_at),
        &sent,
        published,
        received,
        before,
        after,
    ))
}

/// Waits until `expected` unique messages arrived, nothing arrived for
/// [`DRAIN_IDLE`], or `hard_deadline`.
async fn drain(counters: &Counters, expected: u64, hard_deadline: Instant) {
    let mut last = Counters::get(&counters.received);
    let mut last_change = Instant::now();
    while Counters::get(&counters.unique) < expected && Instant::now() < hard_deadline {
        sleep(Duration::from_millis(10)).await;
        let now = Counters::get(&counters.received);
        if now != last {
            (last, last_change) = (now, Instant::now());
        } else if last_change.elapsed() >= DRAIN_IDLE {
            return;
        }
    }
}

/// Awaits a task until `limit`, then aborts it; `Err` says why it gave nothing.
pub async fn join<T>(task: tokio::task::JoinHandle<T>, limit: Instant) -> Result<T, String> {
    let abort = task.abort_handle();
    match tokio::time::timeout_at(limit, task).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("client task failed: {e}")),
        Err(_) => {
            abort.abort();
            Err("client task did not stop in time".into())
        }
    }
}

/// "N x message" for each distinct error, most frequent first.
pub fn summarize_errors(errors: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
    for error in errors {
        *counts.entry(error).or_default() += 1;
    }
    let mut list: Vec<(String, u64)> = counts.into_iter().collect();
    list.sort_by_key(|e| std::cmp::Reverse(e.1));
    list.into_iter()
        .map(|(e, n)| format!("{n} x {e}"))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    ctx: &Context,
    topology: &Topology,
    (start, published_at): (Instant, Instant),
    sent: &[u64],
    published: Vec<Result<PublisherResult, String>>,
    received: Vec<Result<SubscriberResult, String>>,
    before: Option<ProcSample>,
    after: Option<ProcSample>,
) -> RunReport {
    let mut report = ctx.report();
    report.publishers = topology.publishers.len() as u32;
    report.subscribers = topology.subscribers.len() as u32;
    let mut errors = Vec::new();
    for p in published {
        match p {
            Ok(p) => {
                report.acked += p.acked;
                report.refused += p.refused;
                report.unacked += p.unacked;
                errors.extend(p.error.map(|e| format!("publisher: {e}")));
            }
            Err(e) => errors.push(format!("publisher: {e}")),
        }
    }
    report.sent = sent.iter().sum();
    let mut counts = Counts::default();
    let mut latency = Histogram::new();
    let mut last_arrival = None;
    for s in received {
        match s {
            Ok(s) => {
                counts.add(&s.tracker.counts(sent));
                latency.merge(&s.latency);
                last_arrival = last_arrival.max(s.last_arrival);
                errors.extend(s.error.map(|e| format!("subscriber: {e}")));
            }
            Err(e) => errors.push(format!("subscriber: {e}")),
        }
    }
    report.client_errors = summarize_errors(errors);
    report.expected = topology.expected(sent);
    report.received = counts.unique + counts.duplicates;
    report.lost = report.expected.saturating_sub(counts.unique);
    report.duplicates = counts.duplicates;
    report.reordered = counts.reordered;
    report.foreign = counts.foreign;
    // Publishing ends at --duration, or under --count once the publishers
    // are done (their last acks included) if that is sooner.
    let publishing = match ctx.args.count {
        Some(_) => published_at.duration_since(start).min(ctx.args.duration),
        None => ctx.args.duration,
    };
    let end = last_arrival
        .unwrap_or_else(Instant::now)
        .max(start + publishing);
    report.elapsed_s = end.duration_since(start).as_secs_f64();
    if report.elapsed_s > 0.0 {
        report.msgs_per_s = report.received as f64 / report.elapsed_s;
        report.sent_per_s = report.sent as f64 / publishing.as_secs_f64().max(1e-9);
    }
    report.persistent_subscribers = ctx.args.persistent_subscriber;
    if let (Some(b), Some(a)) = (before, after) {
        let cpu = b.cpu_seconds_until(&a);
        report.broker_cpu_s = Some(cpu);
        report.msgs_per_cpu_s = (cpu > 0.0).then(|| report.received as f64 / cpu);
    }
    report.broker_rss_kib_before = before.map(|s| s.rss_kib);
    report.broker_rss_kib_after = after.map(|s| s.rss_kib);
    let us = |ns: Option<u64>| ns.unwrap_or(0) as f64 / 1000.0;
    report.latency_us = (!latency.is_empty()).then(|| Latency {
        p50: us(latency.percentile(0.50)),
        p99: us(latency.percentile(0.99)),
        p999: us(latency.percentile(0.999)),
        max: us(latency.max()),
        samples: latency.len(),
    });
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> RunArgs {
        use clap::Parser;
        let mut argv = vec!["tidemq-bench", "fanin"];
        argv.extend(extra);
        match crate::cli::Cli::try_parse_from(argv).unwrap().command {
            crate::cli::Command::Fanin(args) => args,
            _ => unreachable!(),
        }
    }

    #[test]
    fn subscribers_are_clean_and_fresh_unless_persistent() {
        let clean = args(&[]);
        assert_eq!(
            subscriber_identity(&clean, "ab", 3, 5),
            ("tb-ab-s3".into(), SessionMode::Clean)
        );
        let persistent = args(&["--persistent-subscriber", "--session-expiry", "90"]);
        let session = SessionMode::Persistent { expiry_secs: 90 };
        assert_eq!(
            subscriber_identity(&persistent, "ab", 0, 1),
            ("bench-sub".into(), session)
        );
        assert_eq!(
            subscriber_identity(&persistent, "cd", 2, 3),
            ("bench-sub-2".into(), session),
            "fixed across runs, distinct among subscribers"
        );
    }

    #[test]
    fn count_is_shared_out_evenly() {
        let shares: Vec<u64> = (0..8).map(|i| publisher_share(100_000, 8, i)).collect();
        assert!(shares.iter().all(|s| *s == 12_500));
        let shares: Vec<u64> = (0..3).map(|i| publisher_share(10, 3, i)).collect();
        assert_eq!(shares, vec![4, 3, 3]);
        assert_eq!(publisher_share(2, 4, 3), 0);
        assert_eq!(publisher_share(5, 0, 0), 5);
    }

    #[test]
    fn errors_are_counted_by_kind() {
        let list = summarize_errors(["b".to_string(), "a".into(), "b".into()]);
        assert_eq!(list, vec!["2 x b".to_string(), "1 x a".into()]);
    }
}
