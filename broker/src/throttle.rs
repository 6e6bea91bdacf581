//! Log lines for refusals a client can repeat at will (a flood of silent
//! sockets, a SUBSCRIBE with a million filters): at most one line a second
//! for each kind of refusal, carrying how many were not logged since the
//! last one. The refusals themselves are always counted in `metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Shortest gap between two log lines of one kind, in milliseconds.
const LOG_INTERVAL_MS: u64 = 1000;

#[derive(Debug)]
pub struct LogThrottle {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last line; `u64::MAX`: none yet.
    last_ms: AtomicU64,
    /// Refusals not logged since the last line.
    suppressed: AtomicU64,
}

impl Default for LogThrottle {
    fn default() -> LogThrottle {
        LogThrottle {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(u64::MAX),
            suppressed: AtomicU64::new(0),
        }
    }
}

impl LogThrottle {
    /// `Some(n)` when a line may be logged now, `n` being how many refusals
    /// went unlogged before it; `None` when this one is only counted.
    pub fn allow(&self) -> Option<u64> {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= LOG_INTERVAL_MS;
        if due
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Counts one refusal in `counter` (always), then answers as
    /// [`LogThrottle::allow`] whether it may be logged now.
    pub fn count(&self, counter: &AtomicU64) -> Option<u64> {
        counter.fetch_add(1, Ordering::Relaxed);
        self.allow()
    }
}

/// One throttle per kind of refusal, shared by every connection.
#[derive(Debug, Default)]
pub struct Throttles {
    pub pending_evicted: LogThrottle,
    pub per_address: LogThrottle,
    pub connection_limit: LogThrottle,
    pub packet_read_timeout: LogThrottle,
    pub client_id: LogThrottle,
    pub topic: LogThrottle,
    pub memory: LogThrottle,
    pub connect_timeout: LogThrottle,
    pub session_expired: LogThrottle,
    pub handshake: LogThrottle,
    pub login: LogThrottle,
    pub acl: LogThrottle,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_then_silence_with_a_count() {
        let throttle = LogThrottle::default();
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.allow(), None);
        // A second later the next line says two were suppressed.
        throttle.last_ms.store(0, Ordering::Relaxed);
        let later = LogThrottle {
            epoch: Instant::now() - std::time::Duration::from_millis(LOG_INTERVAL_MS + 1),
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(throttle.suppressed.load(Ordering::Relaxed)),
        };
        assert_eq!(later.allow(), Some(2));
        assert_eq!(later.allow(), None);
    }
}
