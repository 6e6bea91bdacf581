//! The `conns` scenario: `--conns` idle connections, opened
//! [`CONNECT_CONCURRENCY`] at a time as fast as the broker answers, then held
//! for `--duration` with a PINGREQ per keepalive interval. Reports the
//! connect rate and the broker's RSS growth per connection.
//!
//! | phase   | bounded by                                   | broker sample |
//! |---------|----------------------------------------------|---------------|
//! | connect | [`CONNECT_PHASE_LIMIT`]                      | before        |
//! | hold    | `--duration`                                 | after         |
//! | close   | [`JOIN_GRACE`], then tasks are aborted       |               |

use std::sync::Arc;
use std::time::Duration;

use tidemq_protocol::Packet;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::error::BenchError;
use crate::procfs;
use crate::progress::{self, Counters, Show};
use crate::report::{ConnsReport, RunReport};
use crate::scenario::{summarize_errors, Context, JOIN_GRACE, SETUP_TIMEOUT};
use crate::wire::{self, ServerPacket, SessionMode};

/// Handshakes in progress at once: enough to keep a broker busy, and no more
/// than the smallest listen backlog among the brokers compared (mosquitto's
/// 100), so that a full accept queue never drops a SYN that the kernel then
/// retries a second later (counted in `listen_overflows`).
const CONNECT_CONCURRENCY: usize = 100;
/// The connect phase gives up after this long.
const CONNECT_PHASE_LIMIT: Duration = Duration::from_secs(120);
/// File descriptors this process keeps for itself beyond the connections.
const SPARE_FDS: u64 = 64;

#[derive(Debug, Default)]
struct Held {
    connected: bool,
    pings: u64,
    pongs: u64,
    error: Option<String>,
}

pub async fn run(ctx: &Context) -> Result<RunReport, BenchError> {
    let target = ctx.args.conns;
    if let Some(limit) = procfs::max_open_files() {
        if u64::from(target) + SPARE_FDS > limit {
            return Err(BenchError::Setup(format!(
                "--conns {target} needs more open files than this process may have ({limit}): raise `ulimit -n`"
            )));
        }
    }
    let counters = Arc::new(Counters::default());
    let overflows_before = procfs::listen_overflows();
    let before = ctx.sample();
    let start = Instant::now();
    let stop = CancellationToken::new();
    let progress_stop = CancellationToken::new();
    let progress = (!ctx.args.quiet).then(|| {
        tokio::spawn(progress::run(
            "conns",
            Show::Connections,
            counters.clone(),
            start,
            progress_stop.clone(),
        ))
    });

    let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut tasks = JoinSet::new();
    let run = format!("{:x}", ctx.run_id);
    for i in 0..target {
        let id = format!("tb-{run}-c{i}");
        let (target, version, keep_alive) = (ctx.target.clone(), ctx.version, ctx.args.keepalive);
        let max_packet = ctx.max_packet();
        let (permits, counters, stop) = (permits.clone(), counters.clone(), stop.clone());
        tasks.spawn(async move {
            let mut held = Held::default();
            let client = {
                let Ok(_permit) = permits.acquire().await else {
                    return held;
                };
                Client::connect(
                    &target,
                    version,
                    &id,
                    SessionMode::Clean,
                    keep_alive,
                    max_packet,
                    SETUP_TIMEOUT,
                )
                .await
            };
            match client {
                Ok(client) => {
                    held.connected = true;
                    Counters::add(&counters.connected, 1);
                    hold(client, keep_alive, &stop, &mut held).await;
                }
                Err(e) => {
                    Counters::add(&counters.failed, 1);
                    held.error = Some(e.to_string());
                }
            }
            held
        });
    }

    // Connect phase: until every connection succeeded or failed.
    let connect_limit = start + CONNECT_PHASE_LIMIT;
    let mut last_progress = (0, start);
    while Instant::now() < connect_limit {
        let done = Counters::get(&counters.connected) + Counters::get(&counters.failed);
        if done > last_progress.0 {
            last_progress = (done, Instant::now());
        }
        if done >= u64::from(target) {
            break;
        }
        sleep(Duration::from_millis(5)).await;
    }
    let connect_s = last_progress.1.duration_since(start).as_secs_f64();
    let connected = Counters::get(&counters.connected);
    let overflows = overflows_before
        .zip(procfs::listen_overflows())
        .map(|(before, after)| after.saturating_sub(before));

    // Hold phase.
    sleep(ctx.args.duration).await;
    let after = ctx.sample();
    stop.cancel();
    let limit = Instant::now() + JOIN_GRACE;
    let mut results = Vec::new();
    while let Ok(Some(joined)) = tokio::time::timeout_at(limit, tasks.join_next()).await {
        results.push(joined.map_err(|e| e.to_string()));
    }
    tasks.abort_all();
    progress_stop.cancel();
    if let Some(task) = progress {
        let _ = task.await;
    }

    let mut report = ctx.report();
    report.duration_s = ctx.args.duration.as_secs_f64();
    report.elapsed_s = start.elapsed().as_secs_f64();
    let mut conns = ConnsReport {
        target,
        connected,
        failed: Counters::get(&counters.failed),
        connect_s,
        connects_per_s: if connect_s > 0.0 {
            connected as f64 / connect_s
        } else {
            0.0
        },
        listen_overflows: overflows,
        ..ConnsReport::default()
    };
    let mut errors = Vec::new();
    for held in results {
        match held {
            Ok(held) => {
                conns.pings += held.pings;
                conns.pongs += held.pongs;
                errors.extend(held.error);
            }
            Err(e) => errors.push(e),
        }
    }
    report.client_errors = summarize_errors(errors);
    if let (Some(b), Some(a)) = (before, after) {
        report.broker_cpu_s = Some(b.cpu_seconds_until(&a));
        report.broker_rss_kib_before = Some(b.rss_kib);
        report.broker_rss_kib_after = Some(a.rss_kib);
        if connected > 0 {
            let grown = a.rss_kib.saturating_sub(b.rss_kib) as f64 * 1024.0;
            conns.rss_per_conn_bytes = Some(grown / connected as f64);
        }
    }
    report.conns = Some(conns);
    if connected == 0 {
        report.error = report.client_errors.first().cloned();
    }
    Ok(report)
}

/// Keeps one connection open until `stop`, pinging every keepalive.
async fn hold(mut client: Client, keep_alive: Duration, stop: &CancellationToken, held: &mut Held) {
    let outcome: Result<(), BenchError> = async {
        let mut next_ping = Instant::now() + keep_alive;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                read = client.read() => if !read? { return Err(BenchError::Closed) },
                _ = sleep_until(next_ping) => {
                    wire::encode_control(&mut client.write_buf, &Packet::PingReq);
                    client.flush_until(next_ping + keep_alive).await?;
                    held.pings += 1;
                    next_ping += keep_alive;
                }
            }
            while let Some(packet) = client.next_packet()? {
                match packet {
                    ServerPacket::PingResp => held.pongs += 1,
                    ServerPacket::Disconnect { reason } => {
                        return Err(BenchError::Disconnected(reason))
                    }
                    other => {
                        return Err(BenchError::Unexpected(format!(
                            "{other:?} on an idle connection"
                        )))
                    }
                }
            }
        }
    }
    .await;
    if let Err(e) = outcome {
        held.error = Some(e.to_string());
    }
    client.disconnect(Duration::from_millis(500)).await;
}
