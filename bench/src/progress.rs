//! Counters shared by every client task of a run (relaxed atomics, added to
//! once per batch) and the once-a-second progress line on stderr.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::report::si;

#[derive(Debug, Default)]
pub struct Counters {
    /// PUBLISHes written to the socket.
    pub sent: AtomicU64,
    /// PUBLISHes that arrived at a subscriber, ours or not.
    pub received: AtomicU64,
    /// Arrivals that were not duplicates or foreign.
    pub unique: AtomicU64,
    pub connected: AtomicU64,
    pub failed: AtomicU64,
}

impl Counters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// What the progress line shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    Messages,
    Connections,
}

/// Prints a progress line every second until `stop`; on a terminal the line
/// is redrawn in place.
pub async fn run(
    scenario: &'static str,
    show: Show,
    counters: Arc<Counters>,
    start: Instant,
    stop: CancellationToken,
) {
    let tty = std::io::stderr().is_terminal();
    let mut ticker =
        tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let (mut last_sent, mut last_received) = (0, 0);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let elapsed = start.elapsed().as_secs_f64();
        let line = match show {
            Show::Messages => {
                let sent = Counters::get(&counters.sent);
                let received = Counters::get(&counters.received);
                let line = format!(
                    "{scenario} {elapsed:5.1}s  sent {} ({}/s)  received {} ({}/s)",
                    si(sent as f64),
                    si(sent.saturating_sub(last_sent) as f64),
                    si(received as f64),
                    si(received.saturating_sub(last_received) as f64),
                );
                (last_sent, last_received) = (sent, received);
                line
            }
            Show::Connections => format!(
                "{scenario} {elapsed:5.1}s  connected {}  failed {}",
                Counters::get(&counters.connected),
                Counters::get(&counters.failed),
            ),
        };
        let mut err = std::io::stderr().lock();
        let _ = if tty {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
    }
    if tty {
        let _ = writeln!(std::io::stderr());
    }
}
