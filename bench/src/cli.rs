//! The command line: one subcommand per scenario (all sharing [`RunArgs`])
//! and `report`, which merges `--json` lines into one table with ratios.
//! Parsing helpers here are pure and tested; resolving the host is not.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Messages per second of the latency scenario unless `--rate` says.
pub const DEFAULT_LATENCY_RATE: f64 = 10_000.0;
/// Seconds a persistent subscriber's MQTT 5 session outlives its connection
/// unless `--session-expiry` says: long enough to survive a broker restart.
pub const DEFAULT_SESSION_EXPIRY_SECS: u32 = 3600;

#[derive(Debug, Parser)]
#[command(
    name = "tidemq-bench",
    version,
    about = "Load generator for MQTT brokers; counts what arrives (loss, duplicates, reordering)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// --publishers publishers, each on its own topic, -> 1 wildcard subscriber
    Fanin(RunArgs),
    /// 1 publisher -> --subscribers subscribers on one topic
    Fanout(RunArgs),
    /// --pairs publisher/subscriber pairs, each pair on its own topic
    Pairs(RunArgs),
    /// --conns idle connections held with keepalive: connect rate, broker RSS per connection
    Conns(RunArgs),
    /// 1 publisher at --rate msg/s (default 10 000) -> 1 subscriber: latency percentiles
    Latency(RunArgs),
    /// Print the runs in --json files (one object per line) as one table, with ratios
    Report(ReportArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Fanin,
    Fanout,
    Pairs,
    Conns,
    Latency,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fanin => "fanin",
            Scenario::Fanout => "fanout",
            Scenario::Pairs => "pairs",
            Scenario::Conns => "conns",
            Scenario::Latency => "latency",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Broker host: must resolve to loopback addresses only
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// QoS of publishes and subscriptions
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload bytes (at least the 28-byte header)
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// MQTT version: 4 (3.1.1) or 5
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(4..=5))]
    pub mqtt: u8,
    /// How long publishers publish (or conns holds): 10s, 500ms, 2m, 1.5
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// After --duration, how long to wait for what is still on its way
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Unacknowledged QoS 1/2 messages per publisher (capped by the broker's MQTT 5 Receive Maximum)
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..))]
    pub inflight: u16,
    /// Publishers of fanin
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub publishers: u32,
    /// Subscribers of fanout
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub subscribers: u32,
    /// Publisher/subscriber pairs of pairs
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    pub pairs: u32,
    /// Idle connections of conns
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub conns: u32,
    /// Total messages per second over all publishers; unlimited unless given (latency: 10000)
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Total messages over all publishers: each stops after its share, or at --duration if sooner
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Subscribers keep a persistent session (clean session 0 / MQTT 5 clean start 0 with
    /// --session-expiry) under a fixed client id (--subscriber-id), so a broker with storage
    /// writes their QoS 1/2 messages to disk
    #[arg(long)]
    pub persistent_subscriber: bool,
    /// Client id of a persistent subscriber; with several, the i-th is ID-i
    #[arg(long, default_value = "bench-sub")]
    pub subscriber_id: String,
    /// MQTT 5 Session Expiry Interval of a persistent subscriber, seconds
    #[arg(long, default_value_t = DEFAULT_SESSION_EXPIRY_SECS)]
    pub session_expiry: u32,
    /// MQTT keepalive; clients ping when they have sent nothing for this long
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub keepalive: Duration,
    /// The broker's pid, for its CPU seconds and RSS from /proc
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Broker name in the report
    #[arg(long, default_value = "broker")]
    pub label: String,
    /// Print one JSON object for the run on stdout instead of the table
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr
    #[arg(long)]
    pub quiet: bool,
    /// Connect over TLS (needs --tls-ca)
    #[arg(long, requires = "tls_ca")]
    pub tls: bool,
    /// The CA to trust for TLS, a PEM file (the broker's certificate must
    /// name the --host address); implies --tls
    #[arg(long = "tls-ca", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Speak MQTT over WebSocket (over TLS too with --tls-ca)
    #[arg(long)]
    pub ws: bool,
    /// The WebSocket path
    #[arg(long, default_value = "/mqtt")]
    pub ws_path: String,
    /// Runtime worker threads (default: the CPUs this process may use)
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// Files of --json lines
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The label the others are compared with (ratio = baseline / other)
    #[arg(long, default_value = "tidemq")]
    pub baseline: String,
}

/// `10s`, `500ms`, `250us`, `2m`, `1h`, or a bare number of seconds (`1.5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (try 10s, 500ms, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}` (use ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "`{text}` is not a positive number of messages per second"
        )),
    }
}

/// The address to use when every address `host` resolved to is loopback
/// (127.0.0.0/8 or ::1); an error naming the first that is not. This tool
/// sends load only to the machine it runs on.
pub fn check_loopback(host: &str, addrs: &[SocketAddr]) -> Result<SocketAddr, String> {
    if let Some(outside) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return Err(format!(
            "refusing to connect to {host} ({}): only loopback addresses (127.0.0.0/8, ::1) are allowed",
            outside.ip()
        ));
    }
    addrs
        .first()
        .copied()
        .ok_or_else(|| format!("{host} resolved to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 3 s "), Ok(Duration::from_secs(3)));
    }

    #[test]
    fn bad_durations_are_errors() {
        for bad in ["", "s", "ten", "10 parsecs", "-1s", "1e3"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_must_be_positive() {
        assert_eq!(parse_rate("10000"), Ok(10_000.0));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-5").is_err());
        assert!(parse_rate("inf").is_err());
    }

    #[test]
    fn only_loopback_is_allowed() {
        let local: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        let local6: SocketAddr = "[::1]:1883".parse().unwrap();
        let other: SocketAddr = "127.1.2.3:1883".parse().unwrap();
        assert_eq!(check_loopback("h", &[local, local6]), Ok(local));
        assert_eq!(check_loopback("h", &[other]), Ok(other));
        for outside in [
            "10.0.0.1:1883",
            "192.168.1.5:1883",
            "[2001:db8::1]:1883",
            "0.0.0.0:1883",
        ] {
            let addr: SocketAddr = outside.parse().unwrap();
            assert!(check_loopback("h", &[local, addr]).is_err(), "{outside}");
        }
        assert!(check_loopback("h", &[]).is_err());
    }

    #[test]
    fn command_line_parses_with_defaults() {
        let cli = Cli::try_parse_from(["tidemq-bench", "fanin"]).unwrap();
        let Command::Fanin(args) = cli.command else {
            panic!("not fanin")
        };
        assert_eq!(
            (args.host.as_str(), args.port, args.qos),
            ("127.0.0.1", 1883, 0)
        );
        assert_eq!((args.payload, args.mqtt, args.inflight), (64, 4, 100));
        assert_eq!(args.duration, Duration::from_secs(10));
        assert_eq!(
            (args.publishers, args.subscribers, args.conns),
            (8, 100, 10_000)
        );
        assert_eq!(args.rate, None);
        assert_eq!(args.count, None);
        assert!(!args.persistent_subscriber);
        assert_eq!(args.subscriber_id, "bench-sub");
        assert_eq!(args.session_expiry, DEFAULT_SESSION_EXPIRY_SECS);
        assert!(!args.json);
    }

    #[test]
    fn persistent_subscriber_and_count_options() {
        let cli = Cli::try_parse_from([
            "tidemq-bench",
            "fanin",
            "--persistent-subscriber",
            "--subscriber-id",
            "soak-sub",
            "--session-expiry",
            "60",
            "--count",
            "100000",
        ])
        .unwrap();
        let Command::Fanin(args) = cli.command else {
            panic!("not fanin")
        };
        assert!(args.persistent_subscriber);
        assert_eq!(args.subscriber_id, "soak-sub");
        assert_eq!((args.session_expiry, args.count), (60, Some(100_000)));
    }

    #[test]
    fn command_line_takes_every_option() {
        let cli = Cli::try_parse_from([
            "tidemq-bench",
            "latency",
            "--host",
            "localhost",
            "--port",
            "1884",
            "--qos",
            "2",
            "--payload",
            "256",
            "--mqtt",
            "5",
            "--duration",
            "5s",
            "--drain",
            "1s",
            "--inflight",
            "20",
            "--rate",
            "5000",
            "--broker-pid",
            "42",
            "--label",
            "mosquitto",
            "--json",
        ])
        .unwrap();
        let Command::Latency(args) = cli.command else {
            panic!("not latency")
        };
        assert_eq!(
            (args.qos, args.mqtt, args.inflight, args.payload),
            (2, 5, 20, 256)
        );
        assert_eq!(
            (args.duration, args.drain),
            (Duration::from_secs(5), Duration::from_secs(1))
        );
        assert_eq!((args.rate, args.broker_pid), (Some(5000.0), Some(42)));
        assert_eq!(args.label, "mosquitto");
        assert!(args.json);
    }

    #[test]
    fn out_of_range_options_are_refused() {
        for bad in [
            vec!["tidemq-bench", "fanin", "--qos", "3"],
            vec!["tidemq-bench", "fanin", "--mqtt", "3"],
            vec!["tidemq-bench", "fanin", "--inflight", "0"],
            vec!["tidemq-bench", "fanin", "--duration", "soon"],
            vec!["tidemq-bench", "fanin", "--count", "0"],
            vec!["tidemq-bench", "nope"],
        ] {
            assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?}");
        }
    }
}
