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
    let run = async {
        let signal = shutdown_signal();
        tidemq::run(settings, signal).await
    };
    match runtime.block_on(run) {
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

/// Installs the SIGINT and SIGTERM handlers now (before the listeners
/// open, so an early signal is not fatal) and returns a future that resolves
/// on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        match (interrupt, terminate) {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
