//! A session's mailbox: the bounded queue from the router to one session.
//!
//! The router offers deliveries without ever waiting; the session task
//! drains them. Unlike a channel, the mailbox outlives a connection, so
//! messages for a persistent session queue here while its client is offline
//! and are drained by the next connection.
//!
//! | offered                    | session online                  | offline |
//! |----------------------------|---------------------------------|---------|
//! | QoS 0, below the limit     | queued                          | dropped |
//! | QoS 0, at the limit        | dropped                         | dropped |
//! | QoS 1/2, below the limit   | queued                          | queued  |
//! | QoS 1/2, at the limit      | queued; the session is closed as too slow (`Overflowed`) | dropped |
//! | QoS 1/2, at twice the limit| dropped                         | dropped |
//!
//! So a subscriber that is online never loses an acknowledged QoS 1/2
//! message to the limit: it is disconnected instead, and its messages wait
//! for it (persistent session) or go with it (clean session). Messages for
//! an offline session beyond the limit are dropped and counted, as
//! mosquitto's `max_queued_messages` does. Twice the limit bounds what
//! arrives between the overflow and the session going offline. Retained
//! messages for a new subscription waive the limit ([MQTT-3.3.1-6]; they are
//! bounded by the retained store).
//!
//! The lock is held only for one offer or one pop, never across an `.await`.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tidemq_protocol::QoS;
use tokio::sync::Notify;

use crate::types::Delivery;

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Delivery>,
    online: bool,
    /// An overflow was reported since the session came online.
    overflowed: bool,
}

#[derive(Debug)]
pub struct Mailbox {
    inner: Mutex<Inner>,
    notify: Notify,
    limit: usize,
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
    /// Queued beyond the limit of an online session, for the first time
    /// since it came online: the session must be disconnected as too slow.
    Overflowed,
    /// QoS 0 for an offline session.
    DroppedOffline,
    /// The limit was reached (offline, QoS 0, or twice the limit).
    DroppedFull,
}

impl Mailbox {
    pub fn new(limit: usize) -> Mailbox {
        Mailbox {
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
            limit,
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Every critical section is one queue operation or one flag, so a
        // poisoned lock still guards consistent data.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Offers a delivery, following the table in the module docs, and wakes
    /// the session when it was queued.
    pub fn offer(&self, delivery: Delivery, limit: Limit) -> Offered {
        let offered = {
            let mut inner = self.inner();
            let offered = self.decide(&mut inner, delivery.qos, limit);
            if matches!(offered, Offered::Queued | Offered::Overflowed) {
                inner.queue.push_back(delivery);
            }
            offered
        };
        if matches!(offered, Offered::Queued | Offered::Overflowed) {
            self.notify.notify_one();
        }
        offered
    }

    fn decide(&self, inner: &mut Inner, qos: QoS, limit: Limit) -> Offered {
        let qos0 = qos == QoS::AtMostOnce;
        let len = inner.queue.len();
        if qos0 && !inner.online {
            return Offered::DroppedOffline;
        }
        if len < self.limit || limit == Limit::Waived {
            return Offered::Queued;
        }
        if qos0 || !inner.online || len >= self.limit.saturating_mul(2) {
            return Offered::DroppedFull;
        }
        if inner.overflowed {
            return Offered::Queued;
        }
        inner.overflowed = true;
        Offered::Overflowed
    }

    /// Pops the front delivery if `accept` takes it.
    pub fn pop_if(&self, accept: impl FnOnce(&Delivery) -> bool) -> Option<Delivery> {
        let mut inner = self.inner();
        if accept(inner.queue.front()?) {
            inner.queue.pop_front()
        } else {
            None
        }
    }

    /// Marks the session online or offline.
    pub fn set_online(&self, online: bool) {
        let mut inner = self.inner();
        inner.online = online;
        inner.overflowed = false;
    }

    pub fn clear(&self) {
        self.inner().queue.clear();
    }

    /// Resolves after the next push (or at once if a push happened since the
    /// last wake-up). Cancel-safe.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use tidemq_protocol::TopicName;

    use super::*;
    use crate::types::Message;

    fn delivery(n: u8, qos: QoS) -> Delivery {
        Delivery {
            message: Arc::new(Message {
                topic: TopicName::new("t").unwrap(),
                payload: Bytes::from(vec![n]),
                qos,
                retain: false,
            }),
            qos,
            retain: false,
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
        assert_eq!(
            mailbox.offer(delivery(1, QoS::AtMostOnce), Limit::Enforced),
            Offered::Queued
        );
        assert_eq!(
            mailbox.offer(delivery(2, QoS::AtMostOnce), Limit::Enforced),
            Offered::Queued
        );
        assert_eq!(
            mailbox.offer(delivery(3, QoS::AtMostOnce), Limit::Enforced),
            Offered::DroppedFull
        );
        assert_eq!(
            (pop(&mailbox), pop(&mailbox), pop(&mailbox)),
            (Some(1), Some(2), None)
        );
        assert_eq!(
            mailbox.offer(delivery(4, QoS::AtMostOnce), Limit::Enforced),
            Offered::Queued
        );
    }

    #[test]
    fn qos1_beyond_the_limit_is_kept_and_reported_once_up_to_twice_the_limit() {
        let mailbox = online(2);
        let offer = |n| mailbox.offer(delivery(n, QoS::AtLeastOnce), Limit::Enforced);
        assert_eq!((offer(1), offer(2)), (Offered::Queued, Offered::Queued));
        assert_eq!(offer(3), Offered::Overflowed);
        assert_eq!(offer(4), Offered::Queued, "reported once");
        assert_eq!(offer(5), Offered::DroppedFull, "twice the limit");
        let all: Vec<_> = std::iter::from_fn(|| pop(&mailbox)).collect();
        assert_eq!(all, vec![1, 2, 3, 4]);
    }

    #[test]
    fn offline_drops_qos0_and_qos1_beyond_the_limit() {
        let mailbox = Mailbox::new(1);
        let offer = |n, qos| mailbox.offer(delivery(n, qos), Limit::Enforced);
        assert_eq!(offer(0, QoS::AtMostOnce), Offered::DroppedOffline);
        assert_eq!(offer(1, QoS::AtLeastOnce), Offered::Queued);
        assert_eq!(offer(2, QoS::AtLeastOnce), Offered::DroppedFull);
    }

    #[test]
    fn retained_for_a_new_subscription_waives_the_limit() {
        let mailbox = online(1);
        mailbox.offer(delivery(1, QoS::AtMostOnce), Limit::Enforced);
        assert_eq!(
            mailbox.offer(delivery(2, QoS::AtMostOnce), Limit::Waived),
            Offered::Queued
        );
    }

    #[tokio::test]
    async fn a_push_before_waiting_is_not_lost() {
        let mailbox = online(4);
        mailbox.offer(delivery(1, QoS::AtMostOnce), Limit::Enforced);
        tokio::time::timeout(std::time::Duration::from_secs(1), mailbox.notified())
            .await
            .unwrap();
    }
}
