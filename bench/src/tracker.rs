//! What one subscriber received, per publisher: unique messages, duplicates
//! and reordering; loss is computed at the end against what was sent.
//!
//! Each publisher numbers its messages 0, 1, 2, ... A [`SeqTracker`] keeps a
//! bitset of the sequence numbers seen (one bit per message) and the highest
//! one so far:
//!
//! | sequence number `s` arrives           | counted as  |
//! |---------------------------------------|-------------|
//! | bit `s` already set                   | duplicate   |
//! | `s` > highest (or first message)      | in order    |
//! | `s` < highest and bit not set         | reordered   |
//! | `s` >= [`MAX_SEQ`]                    | out of range (corrupt) |
//!
//! Loss = sent - unique, so a late message is not loss and a duplicate does
//! not hide one. Pure code: no I/O, no time.

use std::ops::Range;

use crate::payload::Header;

/// Sequence numbers at or above this are treated as corrupt rather than
/// growing the bitset without bound (2^32 bits = 512 MiB for one publisher).
pub const MAX_SEQ: u64 = 1 << 32;

/// How one message was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    InOrder,
    Reordered,
    Duplicate,
    /// Another run's message, a publisher this subscriber does not expect,
    /// or a sequence number beyond [`MAX_SEQ`].
    Foreign,
}

/// The messages of one publisher as seen by one subscriber.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    seen: Vec<u64>,
    highest: Option<u64>,
    unique: u64,
    duplicates: u64,
    reordered: u64,
}

impl SeqTracker {
    pub fn record(&mut self, seq: u64) -> Arrival {
        if seq >= MAX_SEQ {
            return Arrival::Foreign;
        }
        let word = (seq / 64) as usize;
        let bit = 1u64 << (seq % 64);
        if word >= self.seen.len() {
            // Grow geometrically so a steady stream costs O(1) amortised.
            let len = (word + 1).max(self.seen.len() * 2);
            self.seen.resize(len, 0);
        }
        let Some(slot) = self.seen.get_mut(word) else {
            return Arrival::Foreign;
        };
        if *slot & bit != 0 {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        *slot |= bit;
        self.unique += 1;
        match self.highest {
            Some(highest) if seq < highest => {
                self.reordered += 1;
                Arrival::Reordered
            }
            _ => {
                self.highest = Some(seq);
                Arrival::InOrder
            }
        }
    }
}

/// Totals over a set of trackers, also used to add up subscribers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Every PUBLISH that arrived, ours or not.
    pub received: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub foreign: u64,
    /// Expected (sent by the publishers this subscriber listens to) minus
    /// unique; filled in by [`Tracker::counts`].
    pub lost: u64,
    pub expected: u64,
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.received += other.received;
        self.unique += other.unique;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
        self.foreign += other.foreign;
        self.lost += other.lost;
        self.expected += other.expected;
    }
}

/// Everything one subscriber received in one run.
#[derive(Debug, Clone)]
pub struct Tracker {
    run_id: u64,
    /// The publisher ids this subscriber should hear from.
    expected: Range<u32>,
    publishers: Vec<SeqTracker>,
    received: u64,
    foreign: u64,
}

impl Tracker {
    pub fn new(run_id: u64, expected: Range<u32>) -> Tracker {
        let count = expected.len();
        Tracker {
            run_id,
            expected,
            publishers: vec![SeqTracker::default(); count],
            received: 0,
            foreign: 0,
        }
    }

    pub fn record(&mut self, header: Option<&Header>) -> Arrival {
        self.received += 1;
        let arrival = match header {
            Some(h) if h.run_id == self.run_id && self.expected.contains(&h.publisher) => {
                let index = (h.publisher - self.expected.start) as usize;
                match self.publishers.get_mut(index) {
                    Some(tracker) => tracker.record(h.seq),
                    None => Arrival::Foreign,
                }
            }
            _ => Arrival::Foreign,
        };
        if arrival == Arrival::Foreign {
            self.foreign += 1;
        }
        arrival
    }

    /// Totals, with loss against `sent[publisher id]`.
    pub fn counts(&self, sent: &[u64]) -> Counts {
        let mut counts = Counts {
            received: self.received,
            foreign: self.foreign,
            ..Counts::default()
        };
        for (id, tracker) in self.expected.clone().zip(&self.publishers) {
            let expected = sent.get(id as usize).copied().unwrap_or(0);
            counts.expected += expected;
            counts.unique += tracker.unique;
            counts.duplicates += tracker.duplicates;
            counts.reordered += tracker.reordered;
            counts.lost += expected.saturating_sub(tracker.unique);
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: u64 = 42;

    fn msg(publisher: u32, seq: u64) -> Header {
        Header {
            run_id: RUN,
            publisher,
            seq,
            sent_ns: 0,
        }
    }

    fn feed(tracker: &mut Tracker, publisher: u32, seqs: &[u64]) -> Vec<Arrival> {
        seqs.iter()
            .map(|s| tracker.record(Some(&msg(publisher, *s))))
            .collect()
    }

    #[test]
    fn in_order_stream_has_no_loss_dup_or_reorder() {
        let mut t = Tracker::new(RUN, 0..1);
        let seqs: Vec<u64> = (0..1000).collect();
        assert!(feed(&mut t, 0, &seqs)
            .iter()
            .all(|a| *a == Arrival::InOrder));
        let c = t.counts(&[1000]);
        assert_eq!((c.received, c.unique, c.lost), (1000, 1000, 0));
        assert_eq!((c.duplicates, c.reordered, c.foreign), (0, 0, 0));
    }

    #[test]
    fn gaps_are_loss_and_late_arrivals_are_reordering_not_loss() {
        let mut t = Tracker::new(RUN, 0..1);
        let arrivals = feed(&mut t, 0, &[0, 1, 3, 4, 2, 6]);
        use Arrival::*;
        assert_eq!(
            arrivals,
            vec![InOrder, InOrder, InOrder, InOrder, Reordered, InOrder]
        );
        // 8 sent: 5 and 7 never came.
        let c = t.counts(&[8]);
        assert_eq!((c.unique, c.lost, c.reordered, c.duplicates), (6, 2, 1, 0));
    }

    #[test]
    fn duplicates_are_counted_once_and_do_not_hide_loss() {
        let mut t = Tracker::new(RUN, 0..1);
        let arrivals = feed(&mut t, 0, &[0, 1, 1, 0, 2, 2]);
        assert_eq!(
            arrivals
                .iter()
                .filter(|a| **a == Arrival::Duplicate)
                .count(),
            3
        );
        // 4 sent, 6 received: still one lost (seq 3).
        let c = t.counts(&[4]);
        assert_eq!((c.received, c.unique, c.duplicates, c.lost), (6, 3, 3, 1));
        assert_eq!(c.reordered, 0);
    }

    #[test]
    fn a_duplicate_of_a_late_message_is_a_duplicate() {
        let mut t = Tracker::new(RUN, 0..1);
        feed(&mut t, 0, &[0, 2, 1]);
        assert_eq!(t.record(Some(&msg(0, 1))), Arrival::Duplicate);
    }

    #[test]
    fn other_runs_and_unexpected_publishers_are_foreign() {
        let mut t = Tracker::new(RUN, 3..4);
        let stale = Header {
            run_id: RUN + 1,
            ..msg(3, 0)
        };
        assert_eq!(t.record(Some(&stale)), Arrival::Foreign);
        assert_eq!(t.record(Some(&msg(2, 0))), Arrival::Foreign);
        assert_eq!(t.record(None), Arrival::Foreign);
        assert_eq!(t.record(Some(&msg(3, MAX_SEQ))), Arrival::Foreign);
        assert_eq!(t.record(Some(&msg(3, 0))), Arrival::InOrder);
        let c = t.counts(&[0, 0, 0, 1]);
        assert_eq!((c.received, c.foreign, c.unique, c.lost), (5, 4, 1, 0));
    }

    #[test]
    fn loss_is_per_publisher_against_what_it_sent() {
        let mut t = Tracker::new(RUN, 0..3);
        feed(&mut t, 0, &[0, 1, 2]);
        feed(&mut t, 2, &[0]);
        let c = t.counts(&[3, 2, 4]);
        assert_eq!(c.expected, 9);
        assert_eq!(c.unique, 4);
        assert_eq!(c.lost, 5);
    }

    #[test]
    fn counts_add_up() {
        let mut a = Counts {
            received: 1,
            unique: 2,
            duplicates: 3,
            reordered: 4,
            foreign: 5,
            lost: 6,
            expected: 7,
        };
        a.add(&a.clone());
        assert_eq!(a.received + a.expected, 16);
    }
}
