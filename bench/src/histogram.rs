//! A log-linear latency histogram: exact below 128 ns, then 64 buckets per
//! power of two (a relative error under 1.6 %), in a fixed 30 KiB array so
//! recording never allocates. Percentiles answer the highest value of the
//! bucket they fall in, so they never understate. Pure code.

/// Sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 6;
const SUB_COUNT: usize = 1 << SUB_BITS;
/// Values below this get a bucket each.
const LINEAR_LIMIT: u64 = 1 << (SUB_BITS + 1);
/// Enough buckets for any u64.
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB_COUNT;

#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    min: u64,
    max: u64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("total", &self.total)
            .field("min", &self.min)
            .field("max", &self.max)
            .finish()
    }
}

fn bucket_of(value: u64) -> usize {
    if value < LINEAR_LIMIT {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros();
    let shift = exponent - SUB_BITS;
    let mantissa = (value >> shift) as usize; // in [SUB_COUNT, 2 * SUB_COUNT)
    (shift as usize + 1) * SUB_COUNT + (mantissa - SUB_COUNT)
}

/// The highest value that lands in `bucket`.
fn bucket_high(bucket: usize) -> u64 {
    if (bucket as u64) < LINEAR_LIMIT {
        return bucket as u64;
    }
    let shift = (bucket / SUB_COUNT - 1) as u32;
    let mantissa = (bucket % SUB_COUNT + SUB_COUNT) as u64;
    ((mantissa + 1) << shift).wrapping_sub(1)
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram {
            counts: Box::new([0; BUCKETS]),
            total: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    pub fn record(&mut self, value: u64) {
        if let Some(count) = self.counts.get_mut(bucket_of(value)) {
            *count += 1;
        }
        self.total += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.total += other.total;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn max(&self) -> Option<u64> {
        (!self.is_empty()).then_some(self.max)
    }

    /// The value at or below which `quantile` (0.0 to 1.0) of the samples
    /// lie, clamped to the exact maximum; `None` when empty.
    pub fn percentile(&self, quantile: f64) -> Option<u64> {
        if self.is_empty() {
            return None;
        }
        let rank = (quantile.clamp(0.0, 1.0) * self.total as f64).ceil() as u64;
        let rank = rank.clamp(1, self.total);
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(bucket_high(bucket).min(self.max).max(self.min));
            }
        }
        Some(self.max)
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_u64() {
        let mut previous_high = None;
        for bucket in 0..BUCKETS {
            let high = bucket_high(bucket);
            if let Some(p) = previous_high {
                assert_eq!(bucket_of(p + 1), bucket, "first value of {bucket}");
            }
            assert_eq!(bucket_of(high), bucket, "last value of {bucket}");
            previous_high = Some(high);
        }
        assert_eq!(previous_high, Some(u64::MAX));
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn relative_error_is_under_two_percent() {
        for value in [128u64, 1_000, 54_321, 1_000_000, 987_654_321, 1 << 50] {
            let high = bucket_high(bucket_of(value));
            assert!(high >= value);
            assert!(
                (high - value) as f64 / value as f64 <= 1.0 / 64.0,
                "{value}"
            );
        }
    }

    #[test]
    fn percentiles_of_one_to_ten_thousand() {
        let mut h = Histogram::new();
        for v in 1..=10_000 {
            h.record(v);
        }
        let p50 = h.percentile(0.50).unwrap();
        let p99 = h.percentile(0.99).unwrap();
        let p999 = h.percentile(0.999).unwrap();
        assert!((5_000..=5_080).contains(&p50), "{p50}");
        assert!((9_900..=10_000).contains(&p99), "{p99}");
        assert!((9_990..=10_000).contains(&p999), "{p999}");
        assert_eq!(h.percentile(1.0), Some(10_000));
        assert_eq!(h.percentile(0.0), Some(1));
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in [3, 3, 3, 100] {
            h.record(v);
        }
        assert_eq!(h.percentile(0.5), Some(3));
        assert_eq!(h.percentile(0.75), Some(3));
        assert_eq!(h.percentile(0.76), Some(100));
    }

    #[test]
    fn empty_has_no_percentiles() {
        assert_eq!(Histogram::new().percentile(0.5), None);
        assert_eq!(Histogram::new().max(), None);
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        a.record(10);
        b.record(1_000_000);
        b.record(1_000_000);
        a.merge(&b);
        assert_eq!(a.len(), 3);
        assert_eq!(a.percentile(0.34).map(|v| v >= 1_000_000), Some(true));
        assert_eq!(a.percentile(0.33), Some(10));
        assert_eq!(a.max(), Some(1_000_000));
    }
}
