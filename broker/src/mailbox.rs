//! A session's mailbox: the bounded queue from the router to one session.
//!
//! The router offers deliveries without ever waiting; the session task
//! drains them. Unlike a channel, the mailbox outlives a connection, so
//! messages for a persistent session queue here while its client is offline
//! and are drained by the next connection.
//!
//! | offered                       | session online                   | offline |
//! |-------------------------------|----------------------------------|---------|
//! | QoS 0, below the limit        | queued                           | dropped |
//! | QoS 0, at the limit           | dropped                          | dropped |
//! | QoS 1/2, below the limit      | queued                           | queued  |
//! | QoS 1/2 from a client, at it  | held: queued with the receipt    | dropped |
//! | QoS 1/2 will/`$SYS`, at it    | queued up to twice the limit     | dropped |
//!
//! A held delivery carries its publisher's [`Receipt`], so that publisher's
//! PUBACK/PUBREC waits until this session takes the delivery: an online
//! subscriber that falls behind slows the QoS 1/2 publishers feeding it
//! instead of losing what they were told was received. What can be held is
//! bounded by the publishers' own in-flight windows (at most 65535 each). A
//! session that stays over its limit for `limits.slow_subscriber_timeout_ms`
//! is disconnected as too slow; going offline releases its receipts (the
//! messages stay queued), so no subscriber blocks publishers for long, and
//! an absent one never does. Beyond the limit, messages for an offline
//! session are dropped and counted, as mosquitto's `max_queued_messages`
//! does. Retained messages for a new subscription waive the limit
//! ([MQTT-3.3.1-6]), one batch at a time: the session pulls the next batch
//! only once the mailbox is empty (see `RetainedCursor`).
//!
//! "The limit" is two: `max_queued_messages` deliveries and
//! `max_queued_bytes` of topic and payload, whichever comes first (a lone
//! message larger than the byte limit is still queued in an empty mailbox,
//! so it can be delivered at all). Each queued delivery is also counted in
//! the broker's memory budget until the session takes it.
//!
//! The lock is held only for one offer or one pop, never across an `.await`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tidemq_protocol::QoS;
use tokio::sync::Notify;

use crate::budget::Budget;
use crate::dormitory::Alarm;
use crate::types::{Delivery, Receipt};

/// What one queued delivery costs the memory budget (its message is
/// counted once, by the message's own charge). The router charges it, once
/// per message for all the deliveries it queued; the mailbox gives it back
/// as the session takes them (or when it is cleared or dropped).
pub const DELIVERY_COST: u64 = std::mem::size_of::<Delivery>() as u64;

/// A mailbox's limits.
#[derive(Debug, Clone)]
pub struct MailboxLimits {
    pub messages: usize,
    pub bytes: usize,
    /// Where taken deliveries are given back; `None` in tests and benches.
    pub budget: Option<Arc<Budget>>,
}

/// A message-count limit alone (tests and benches).
impl From<usize> for MailboxLimits {
    fn from(messages: usize) -> MailboxLimits {
        MailboxLimits {
            messages,
            bytes: usize::MAX,
            budget: None,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Delivery>,
    /// Topic and payload bytes of the queued deliveries.
    bytes: usize,
    online: bool,
    /// Set while the session's connection rests in the dormitory: the next
    /// delivery (or a takeover) rings it.
    alarm: Option<Alarm>,
}

#[derive(Debug)]
pub struct Mailbox {
    inner: Mutex<Inner>,
    notify: Notify,
    limit: usize,
    max_bytes: usize,
    budget: Option<Arc<Budget>>,
}

/// Whether an offer respects the mailbox's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Enforced,
    /// Retained messages sent because of a new subscription.
    Waived,
}

/// What became of an offered delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    Queued,
    /// Queued beyond the limit, holding the publisher's receipt.
    Held,
    /// QoS 0 for an offline session.
    DroppedOffline,
    /// The limit was reached and the delivery could not be held.
    DroppedFull,
}

impl Mailbox {
    pub fn new(limits: impl Into<MailboxLimits>) -> Mailbox {
        let limits = limits.into();
        Mailbox {
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
            limit: limits.messages,
            max_bytes: limits.bytes,
            budget: limits.budget,
        }
    }

    fn release(&self, deliveries: usize) {
        if let (Some(budget), true) = (&self.budget, deliveries > 0) {
            budget.release(DELIVERY_COST * deliveries as u64);
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Every critical section is one queue operation or one flag.
        crate::registry::lock(&self.inner)
    }

    /// Offers a delivery, following the table in the module docs, and wakes
    /// the session when it was queued.
    pub fn offer(
        &self,
        mut delivery: Delivery,
        limit: Limit,
        receipt: Option<&Receipt>,
    ) -> Offered {
        let (offered, alarm) = {
            let mut inner = self.inner();
            let weight = delivery.message.weight();
            let offered = self.decide(&inner, &delivery, weight, limit, receipt.is_some());
            if offered == Offered::Held {
                delivery.set_receipt(receipt.cloned());
            }
            let queued = matches!(offered, Offered::Queued | Offered::Held);
            if queued {
                inner.queue.push_back(delivery);
                inner.bytes += weight;
            }
            (offered, if queued { inner.alarm.take() } else { None })
        };
        if matches!(offered, Offered::Queued | Offered::Held) {
            self.notify.notify_one();
        }
        if let Some(alarm) = alarm {
            alarm.ring();
        }
        offered
    }

    pub fn is_empty(&self) -> bool {
        self.inner().queue.is_empty()
    }

    /// Deliveries queued now.
    pub fn len(&self) -> usize {
        self.inner().queue.len()
    }

    /// Deliveries and their bytes queued now, and whether a resting
    /// connection's alarm is armed (admin API).
    pub fn depth(&self) -> (usize, usize, bool) {
        let inner = self.inner();
        (inner.queue.len(), inner.bytes, inner.alarm.is_some())
    }

    /// Arms the alarm of a resting connection. Returns `true`, without
    /// arming it, when mail is already waiting (the connection must not rest).
    pub fn install_alarm(&self, alarm: Alarm) -> bool {
        let mut inner = self.inner();
        if !inner.queue.is_empty() {
            return true;
        }
        inner.alarm = Some(alarm);
        false
    }

    /// Disarms the alarm: the connection is awake.
    pub fn clear_alarm(&self) {
        self.inner().alarm = None;
    }

    /// Rings the alarm, if armed (a newer connection claims the session);
    /// returns whether it was.
    pub fn ring_alarm(&self) -> bool {
        let alarm = self.inner().alarm.take();
        if let Some(alarm) = &alarm {
            alarm.ring();
        }
        alarm.is_some()
    }

    fn decide(
        &self,
        inner: &Inner,
        delivery: &Delivery,
        weight: usize,
        limit: Limit,
        has_receipt: bool,
    ) -> Offered {
        let qos0 = delivery.qos == QoS::AtMostOnce;
        let len = inner.queue.len();
        if qos0 && !inner.online {
            return Offered::DroppedOffline;
        }
        let bytes_fit = len == 0 || inner.bytes.saturating_add(weight) <= self.max_bytes;
        if (len < self.limit && bytes_fit) || limit == Limit::Waived {
            return Offered::Queued;
        }
        if qos0 || !inner.online {
            return Offered::DroppedFull;
        }
        if has_receipt {
            return Offered::Held;
        }
        if len < self.limit.saturating_mul(2) && inner.bytes < self.max_bytes.saturating_mul(2) {
            return Offered::Queued;
        }
        Offered::DroppedFull
    }

    /// Whether the mailbox holds more than its limits allow.
    fn over_limit(&self, inner: &Inner) -> bool {
        inner.queue.len() > self.limit || (inner.bytes > self.max_bytes && inner.queue.len() > 1)
    }

    /// Moves up to `max` deliveries from the front into `out`, under one
    /// lock: QoS 0 always, QoS 1/2 while `room` (the in-flight window) lasts,
    /// stopping at the first that does not fit so order is kept. Returns
    /// whether the mailbox is still over its limit.
    pub fn take_front(&self, max: usize, mut room: usize, out: &mut Vec<Delivery>) -> bool {
        let mut inner = self.inner();
        let start = out.len();
        while out.len() < max {
            let Some(front) = inner.queue.front() else {
                break;
            };
            if front.qos != QoS::AtMostOnce {
                if room == 0 {
                    break;
                }
                room -= 1;
            }
            if let Some(delivery) = inner.queue.pop_front() {
                inner.bytes -= delivery.message.weight();
                out.push(delivery);
            }
        }
        let over = self.over_limit(&inner);
        drop(inner);
        self.release(out.len() - start);
        over
    }

    /// Pops the front delivery if `accept` takes it.
    pub fn pop_if(&self, accept: impl FnOnce(&Delivery) -> bool) -> Option<Delivery> {
        let mut inner = self.inner();
        if !accept(inner.queue.front()?) {
            return None;
        }
        let delivery = inner.queue.pop_front()?;
        inner.bytes -= delivery.message.weight();
        drop(inner);
        self.release(1);
        Some(delivery)
    }

    /// Marks the session online or offline; going offline releases every
    /// held receipt (the deliveries stay queued).
    pub fn set_online(&self, online: bool) {
        let mut inner = self.inner();
        inner.online = online;
        if !online {
            inner.queue.iter_mut().for_each(|d| d.set_receipt(None));
        }
    }

    /// Whether the session is connected (shared subscriptions prefer
    /// members that are).
    pub fn is_online(&self) -> bool {
        self.inner().online
    }

    pub fn clear(&self) {
        drop(self.drain());
    }

    /// Empties the mailbox and returns what it held.
    pub fn drain(&self) -> Vec<Delivery> {
        let dropped = {
            let mut inner = self.inner();
            inner.bytes = 0;
            std::mem::take(&mut inner.queue)
        };
        self.release(dropped.len());
        dropped.into()
    }

    /// Resolves after the next push (or at once if a push happened since the
    /// last wake-up). Cancel-safe.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }
}

/// A session removed with mail still queued gives its deliveries' share of
/// the budget back.
impl Drop for Mailbox {
    fn drop(&mut self) {
        let queued = self.inner().queue.len();
        self.release(queued);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use tidemq_protocol::TopicName;

    use tokio::sync::oneshot::error::TryRecvError;

    use super::*;
    use crate::types::Message;

    fn delivery(n: u8, qos: QoS) -> Delivery {
        Delivery {
            message: Arc::new(Message::new(
                TopicName::new("t").unwrap(),
                Bytes::from(vec![n]),
                qos,
                false,
            )),
            qos,
            retain: false,
            extra: None,
        }
    }

    fn online(limit: usize) -> Mailbox {
        let mailbox = Mailbox::new(limit);
        mailbox.set_online(true);
        mailbox
    }

    fn pop(mailbox: &Mailbox) -> Option<u8> {
        mailbox
            .pop_if(|_| true)
            .map(|d| d.message.payload.first().copied().unwrap_or_default())
    }

    #[test]
    fn keeps_order_and_drops_qos0_at_the_limit() {
        let mailbox = online(2);
        let offer = |n| mailbox.offer(delivery(n, QoS::AtMostOnce), Limit::Enforced, None);
        assert_eq!(
            (offer(1), offer(2), offer(3)),
            (Offered::Queued, Offered::Queued, Offered::DroppedFull)
        );
        assert_eq!(
            (pop(&mailbox), pop(&mailbox), pop(&mailbox)),
            (Some(1), Some(2), None)
        );
        assert_eq!(offer(4), Offered::Queued);
    }

    #[test]
    fn qos1_beyond_the_limit_is_held_until_taken() {
        let mailbox = online(1);
        let (receipt, mut released) = Receipt::new();
        let offer = |n| {
            mailbox.offer(
                delivery(n, QoS::AtLeastOnce),
                Limit::Enforced,
                Some(&receipt),
            )
        };
        assert_eq!((offer(1), offer(2)), (Offered::Queued, Offered::Held));
        assert!(mailbox.inner().queue.len() > mailbox.limit);
        drop(receipt);
        assert_eq!(pop(&mailbox), Some(1));
        assert_eq!(
            released.try_recv(),
            Err(TryRecvError::Empty),
            "held by delivery 2"
        );
        assert_eq!(pop(&mailbox), Some(2));
        assert!(released.try_recv().is_ok(), "released");
    }

    #[test]
    fn going_offline_releases_receipts_but_keeps_the_messages() {
        let mailbox = online(1);
        let (receipt, mut released) = Receipt::new();
        mailbox.offer(
            delivery(1, QoS::AtLeastOnce),
            Limit::Enforced,
            Some(&receipt),
        );
        mailbox.offer(
            delivery(2, QoS::AtLeastOnce),
            Limit::Enforced,
            Some(&receipt),
        );
        drop(receipt);
        mailbox.set_online(false);
        assert!(released.try_recv().is_ok(), "released");
        assert_eq!((pop(&mailbox), pop(&mailbox)), (Some(1), Some(2)));
    }

    #[test]
    fn without_a_receipt_qos1_is_queued_up_to_twice_the_limit() {
        let mailbox = online(1);
        let offer = |n| mailbox.offer(delivery(n, QoS::AtLeastOnce), Limit::Enforced, None);
        assert_eq!(
            (offer(1), offer(2), offer(3)),
            (Offered::Queued, Offered::Queued, Offered::DroppedFull)
        );
    }

    #[test]
    fn offline_drops_qos0_and_qos1_beyond_the_limit() {
        let mailbox = Mailbox::new(1);
        let (receipt, _released) = Receipt::new();
        let offer = |n, qos| mailbox.offer(delivery(n, qos), Limit::Enforced, Some(&receipt));
        assert_eq!(offer(0, QoS::AtMostOnce), Offered::DroppedOffline);
        assert_eq!(offer(1, QoS::AtLeastOnce), Offered::Queued);
        assert_eq!(offer(2, QoS::AtLeastOnce), Offered::DroppedFull);
    }

    #[test]
    fn retained_for_a_new_subscription_waives_the_limit() {
        let mailbox = online(1);
        mailbox.offer(delivery(1, QoS::AtMostOnce), Limit::Enforced, None);
        assert_eq!(
            mailbox.offer(delivery(2, QoS::AtMostOnce), Limit::Waived, None),
            Offered::Queued
        );
    }

    /// Each delivery weighs 2 bytes ("t" + one byte of payload).
    #[test]
    fn max_queued_bytes_is_a_limit_beside_the_count() {
        let budget = Arc::new(Budget::new(Arc::default(), u64::MAX));
        let mailbox = Mailbox::new(MailboxLimits {
            messages: 100,
            bytes: 4,
            budget: Some(budget.clone()),
        });
        mailbox.set_online(true);
        let offer = |n| mailbox.offer(delivery(n, QoS::AtMostOnce), Limit::Enforced, None);
        assert_eq!(
            (offer(1), offer(2), offer(3)),
            (Offered::Queued, Offered::Queued, Offered::DroppedFull)
        );
        // What the router charges for the two it queued.
        budget.charge(2 * DELIVERY_COST);
        assert_eq!(pop(&mailbox), Some(1));
        assert_eq!(budget.used(), DELIVERY_COST);
        budget.charge(DELIVERY_COST);
        assert_eq!(offer(4), Offered::Queued);
        mailbox.clear();
        assert_eq!(budget.used(), 0, "every delivery's cost is given back");
        assert_eq!(offer(5), Offered::Queued);
    }

    #[test]
    fn a_lone_message_over_the_byte_limit_still_fits_an_empty_mailbox() {
        let mailbox = Mailbox::new(MailboxLimits {
            messages: 100,
            bytes: 1,
            budget: None,
        });
        mailbox.set_online(true);
        let offer = |n| mailbox.offer(delivery(n, QoS::AtMostOnce), Limit::Enforced, None);
        assert_eq!(
            (offer(1), offer(2)),
            (Offered::Queued, Offered::DroppedFull)
        );
    }

    #[tokio::test]
    async fn a_push_before_waiting_is_not_lost() {
        let mailbox = online(4);
        mailbox.offer(delivery(1, QoS::AtMostOnce), Limit::Enforced, None);
        tokio::time::timeout(std::time::Duration::from_secs(1), mailbox.notified())
            .await
            .unwrap();
    }
}
