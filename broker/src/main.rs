//! The `tidemq` binary: CLI, config, logging and signals around
//! [`tidemq::run`]. The only place that exits the process.

use std::process::ExitCode;

use clap::Parser;
use tidemq::{Overrides, Settings};
use tracing_subscriber::EnvFilter;

/// Exit code for a bad configuration or command line.
const EXIT_CONFIG: u8 = 2;

#[derive(Debug, Parser)]
#[command(name = "tidemq", version, about = "An MQTT broker")]
struct Args {
    /// Config file (TOML) layered over the built-in defaults.
    #[arg(short, long, value_name = "FILE")]
    config: Option<String>,
    /// Port of the first listener, overriding the config.
    #[arg(short, long)]
    port: Option<u16>,
    /// More logging: -v for debug, -vv for trace.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let overrides = Overrides { port: args.port };
    let settings = match Settings::load(args.config.as_deref(), &overrides) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("tidemq: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(&settings.log.level, args.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tidemq: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tidemq::run(settings, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tidemq: {error}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str, verbose: u8) {
    let level = match verbose {
        0 => level,
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
