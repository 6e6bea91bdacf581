//! `tidemq-bench`: a load generator for MQTT brokers in the spirit of
//! emqtt-bench, with its own lean client on tokio and the protocol crate.
//! It counts what arrives (run id, publisher id and sequence number in every
//! payload) and reports loss, duplicates and reordering, latency percentiles,
//! and the broker's CPU seconds and RSS read from `/proc`.
//!
//! | module       | owns                                                      |
//! |--------------|-----------------------------------------------------------|
//! | `cli`        | the command line, durations, the loopback-only rule       |
//! | `scenario`   | one run: setup, clock, drain, summary; the topologies     |
//! | `topology`   | who publishes where and who listens to whom, per scenario |
//! | `conns`      | the idle-connections scenario                             |
//! | `publisher`  | one publisher task: batches, rate, in-flight window       |
//! | `subscriber` | one subscriber task: counting, acks, latency              |
//! | `client`     | a connection: socket, read buffer + framer, write buffer  |
//! | `wire`       | client packets out, server packets in (MQTT 3.1.1 and 5)  |
//! | `window`     | packet ids in flight and the QoS 1/2 ack state machine    |
//! | `payload`    | the message header and the shared clock                   |
//! | `tracker`    | loss, duplicates, reordering per publisher                |
//! | `histogram`  | latency percentiles                                       |
//! | `procfs`     | the broker's CPU time and RSS; our open-file limit        |
//! | `progress`   | shared counters and the progress line                     |
//! | `report`     | the JSON object and the human tables                      |
//!
//! The only place that exits the process.

mod cli;
mod client;
mod conns;
mod error;
mod histogram;
mod payload;
mod procfs;
mod progress;
mod publisher;
mod report;
mod scenario;
mod subscriber;
mod topology;
mod tracker;
mod transport;
mod window;
mod wire;

use std::io::{BufRead, BufReader};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use cli::{Cli, Command, ReportArgs, Scenario};
use report::RunReport;

/// A run that could not be done (the report says why).
const EXIT_RUN_FAILED: u8 = 1;
/// How long the runtime waits for stray tasks when the run is over.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (scenario, args) = match cli.command {
        Command::Fanin(args) => (Scenario::Fanin, args),
        Command::Fanout(args) => (Scenario::Fanout, args),
        Command::Pairs(args) => (Scenario::Pairs, args),
        Command::Conns(args) => (Scenario::Conns, args),
        Command::Latency(args) => (Scenario::Latency, args),
        Command::Report(args) => return report_files(&args),
    };
    let threads = args
        .threads
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
        .max(1);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tidemq-bench: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let json = args.json;
    let report = runtime.block_on(scenario::run(scenario, args));
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    if json {
        match serde_json::to_string(&report) {
            Ok(line) => println!("{line}"),
            Err(error) => eprintln!("tidemq-bench: {error}"),
        }
    } else {
        print!("{}", report::runs_table(std::slice::from_ref(&report)));
    }
    match &report.error {
        Some(error) => {
            eprintln!(
                "tidemq-bench: {} against {}: {error}",
                report.scenario, report.label
            );
            ExitCode::from(EXIT_RUN_FAILED)
        }
        None => ExitCode::SUCCESS,
    }
}

/// `tidemq-bench report FILE...`: every run, then the ratio table.
fn report_files(args: &ReportArgs) -> ExitCode {
    let mut reports = Vec::new();
    for path in &args.files {
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(error) => {
                eprintln!("tidemq-bench: {}: {error}", path.display());
                return ExitCode::FAILURE;
            }
        };
        for (number, line) in BufReader::new(file).lines().enumerate() {
            let line = match line {
                Ok(line) => line,
                Err(error) => {
                    eprintln!("tidemq-bench: {}: {error}", path.display());
                    return ExitCode::FAILURE;
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<RunReport>(&line) {
                Ok(report) => reports.push(report),
                Err(error) => eprintln!(
                    "tidemq-bench: {}:{}: skipped: {error}",
                    path.display(),
                    number + 1
                ),
            }
        }
    }
    println!("{}", report::runs_table(&reports));
    println!("Ratios, {} / peer:", args.baseline);
    print!("{}", report::ratio_table(&reports, &args.baseline));
    ExitCode::SUCCESS
}
