//! The publish-to-delivery latency histogram of `GET /metrics`
//! (`tidemq_delivery_latency_seconds`).
//!
//! What is measured: from the session task taking a client's PUBLISH to a
//! subscriber's session task encoding that message for its write task. The
//! router's queue, the mailbox and a subscriber's backlog are inside it; the
//! socket write is not. One PUBLISH in [`SAMPLE_EVERY`] per connection is
//! sampled (a connection's first one always), and every delivery of a
//! sampled message is recorded, so the clock is read twice per sampled
//! message and fan-out, not per delivery. Retained PUBLISHes are not
//! sampled: a retained message handed to a new subscriber hours later is not
//! a delivery delay. Messages restored from the store carry no stamp.
//!
//! The stamp lives in padding [`crate::types::Message`] already had (48 bits
//! of microseconds since the process's first stamp: it wraps after 8.9
//! years), so a message costs no more memory. Each session task tallies its
//! deliveries locally ([`LatencyTally`]) and adds them to the shared
//! [`Latency`] when it hands a batch to its writer, as with packet counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// One PUBLISH in this many, per connection, is stamped.
pub const SAMPLE_EVERY: u32 = 16;

/// The buckets' upper bounds, in microseconds (Prometheus `le`, which is in
/// seconds); one more bucket above the last is `+Inf`.
pub const BOUNDS_MICROS: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];

const BUCKETS: usize = BOUNDS_MICROS.len() + 1;

/// When a sampled message was published: microseconds since [`epoch`] in
/// 48 bits, as three `u16`s so that it fits the two-byte alignment of the
/// padding beside `Message`'s `qos` and `retain`. Zero: not sampled.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stamp([u16; 3]);

impl Stamp {
    /// Now.
    pub fn now() -> Stamp {
        // Never zero, which means "not sampled".
        let micros = micros_now().max(1);
        Stamp([(micros >> 32) as u16, (micros >> 16) as u16, micros as u16])
    }

    pub fn is_set(self) -> bool {
        self != Stamp::default()
    }

    fn micros(self) -> u64 {
        let [high, middle, low] = self.0.map(u64::from);
        (high << 32) | (middle << 16) | low
    }

    /// Microseconds from this stamp to `now` (48-bit wrapping).
    pub fn micros_until(self, now: Stamp) -> u64 {
        now.micros().wrapping_sub(self.micros()) & ((1 << 48) - 1)
    }
}

/// The process's time origin for stamps.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn micros_now() -> u64 {
    u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Deliveries by latency bucket, shared by every session task.
#[derive(Debug, Default)]
pub struct Latency {
    buckets: [AtomicU64; BUCKETS],
    sum_micros: AtomicU64,
}

impl Latency {
    /// Adds what a session tallied and empties the tally.
    pub fn add(&self, tally: &mut LatencyTally) {
        if !tally.any {
            return;
        }
        tally.any = false;
        for (bucket, count) in self.buckets.iter().zip(&mut tally.buckets) {
            if *count > 0 {
                bucket.fetch_add(u64::from(*count), Ordering::Relaxed);
                *count = 0;
            }
        }
        self.sum_micros
            .fetch_add(tally.sum_micros, Ordering::Relaxed);
        tally.sum_micros = 0;
    }

    /// The sum of the recorded latencies in seconds, and the count in each
    /// bucket by its upper bound in seconds, not cumulative:
    /// `prometheus-client` adds them up as it writes them. The last bound
    /// is `f64::MAX`, which that crate writes as `+Inf`.
    pub fn buckets(&self) -> (f64, Vec<(f64, u64)>) {
        let bounds = BOUNDS_MICROS
            .iter()
            .map(|&micros| micros as f64 / 1e6)
            .chain([f64::MAX]);
        let buckets = bounds
            .zip(&self.buckets)
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, buckets)
    }
}

/// One session task's recorded latencies since its last hand-over.
#[derive(Debug, Default, Clone)]
pub struct LatencyTally {
    buckets: [u32; BUCKETS],
    sum_micros: u64,
    /// Something was recorded since the last hand-over (most flushes have
    /// nothing to add).
    any: bool,
}

impl LatencyTally {
    /// Records the delivery of a message stamped `stamp` at `now`.
    pub fn record(&mut self, stamp: Stamp, now: Stamp) {
        let micros = stamp.micros_until(now);
        let bucket = BOUNDS_MICROS.partition_point(|&bound| bound < micros);
        self.buckets[bucket] = self.buckets[bucket].saturating_add(1);
        self.sum_micros = self.sum_micros.saturating_add(micros);
        self.any = true;
    }
}

/// Counts a connection's PUBLISHes to pick the ones to stamp.
#[derive(Debug, Default)]
pub struct Sampler {
    seen: u32,
}

impl Sampler {
    /// The stamp for the next non-retained PUBLISH: now for one in
    /// [`SAMPLE_EVERY`] (the first included), else unset.
    pub fn next(&mut self) -> Stamp {
        let sampled = self.seen.is_multiple_of(SAMPLE_EVERY);
        self.seen = self.seen.wrapping_add(1);
        if sampled {
            Stamp::now()
        } else {
            Stamp::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(micros: u64) -> Stamp {
        Stamp([(micros >> 32) as u16, (micros >> 16) as u16, micros as u16])
    }

    #[test]
    fn a_stamp_keeps_48_bits_and_differences_wrap() {
        let at = stamp(0x1234_5678_9abc);
        assert_eq!(at.micros(), 0x1234_5678_9abc);
        assert_eq!(at.micros_until(stamp(0x1234_5678_9abc + 750)), 750);
        // Across the 48-bit wrap.
        assert_eq!(stamp((1 << 48) - 10).micros_until(stamp(5)), 15);
        assert!(Stamp::now().is_set());
        assert!(!Stamp::default().is_set());
    }

    #[test]
    fn deliveries_land_in_the_first_bucket_that_holds_them() {
        let latency = Latency::default();
        let mut tally = LatencyTally::default();
        let start = stamp(1_000);
        tally.record(start, stamp(1_000 + 50)); // le 50 µs
        tally.record(start, stamp(1_000 + 51)); // le 100 µs
        tally.record(start, stamp(1_000 + 20_000_000)); // +Inf
        latency.add(&mut tally);
        latency.add(&mut tally); // emptied: adds nothing
        let (sum, buckets) = latency.buckets();
        assert!((sum - 20.000101).abs() < 1e-9, "{sum}");
        assert_eq!(buckets[0], (50e-6, 1));
        assert_eq!(buckets[1], (100e-6, 1));
        assert_eq!(buckets[BUCKETS - 2], (10.0, 0));
        assert_eq!(buckets[BUCKETS - 1], (f64::MAX, 1));
        assert_eq!(buckets.iter().map(|&(_, n)| n).sum::<u64>(), 3);
    }

    #[test]
    fn one_publish_in_sample_every_is_stamped_the_first_included() {
        let mut sampler = Sampler::default();
        let stamped: Vec<bool> = (0..2 * SAMPLE_EVERY)
            .map(|_| sampler.next().is_set())
            .collect();
        assert!(stamped[0] && stamped[SAMPLE_EVERY as usize]);
        assert_eq!(stamped.iter().filter(|&&s| s).count(), 2);
    }
}
