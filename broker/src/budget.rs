//! The broker's memory budget (`limits.memory_limit_mb`): the bytes it holds
//! on behalf of clients, counted where they are taken and given back where
//! they are freed, so one number says whether the broker is over its limit.
//!
//! | counted                        | charged by         | released when       |
//! |--------------------------------|--------------------|---------------------|
//! | a message (topic + payload)    | its [`Charge`]     | the last copy drops |
//! | a queued delivery (its slot)   | the router, once   | the session takes it|
//! |                                | per message        | (or it was refused) |
//! | a partly read packet's buffer  | the read task (the | the packet is whole |
//! |                                | handshake: CONNECT)|                     |
//!
//! Retained messages are messages: their charge lasts as long as the store
//! keeps them. The gauge is `metrics.memory_accounted_bytes`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::metrics::Metrics;

#[derive(Debug)]
pub struct Budget {
    metrics: Arc<Metrics>,
    /// Bytes; a reload may change it.
    limit: AtomicU64,
}

impl Budget {
    pub fn new(metrics: Arc<Metrics>, limit: u64) -> Budget {
        Budget {
            metrics,
            limit: AtomicU64::new(limit),
        }
    }

    /// A reloaded `memory_limit_mb`. Nothing held is freed: over a lowered
    /// limit, new work is refused until enough is.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    pub fn used(&self) -> u64 {
        self.metrics.memory_accounted_bytes.load(Ordering::Relaxed)
    }

    /// Whether the broker holds more than its limit now: new work is refused.
    pub fn is_over(&self) -> bool {
        self.used() > self.limit()
    }

    pub fn charge(&self, bytes: u64) {
        Metrics::add(&self.metrics.memory_accounted_bytes, bytes);
    }

    pub fn release(&self, bytes: u64) {
        Metrics::sub(&self.metrics.memory_accounted_bytes, bytes);
    }

    /// Charges `bytes` only if that keeps the broker within its limit.
    pub fn try_charge(&self, bytes: u64) -> bool {
        if self.used().saturating_add(bytes) > self.limit() {
            return false;
        }
        self.charge(bytes);
        true
    }
}

/// The budget's share of one message: charged when the message is made,
/// released when its last copy is dropped (every delivery and the retained
/// store share one message).
#[derive(Debug, Default)]
pub struct Charge {
    held: Option<(Arc<Budget>, u64)>,
}

impl Charge {
    pub fn new(budget: &Arc<Budget>, bytes: u64) -> Charge {
        budget.charge(bytes);
        Charge {
            held: Some((Arc::clone(budget), bytes)),
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some((budget, bytes)) = self.held.take() {
            budget.release(bytes);
        }
    }
}

// Charges never decide equality: two messages are equal by their content.
impl PartialEq for Charge {
    fn eq(&self, _: &Charge) -> bool {
        true
    }
}

impl Eq for Charge {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_is_released_when_dropped() {
        let budget = Arc::new(Budget::new(Arc::default(), 100));
        let charge = Charge::new(&budget, 60);
        assert_eq!(budget.used(), 60);
        assert!(!budget.try_charge(41), "over the limit");
        assert!(budget.try_charge(40));
        assert!(!budget.is_over());
        budget.charge(1);
        assert!(budget.is_over());
        drop(charge);
        assert_eq!(budget.used(), 41);
    }
}
