//! A session's mailbox: the bounded queue from the router to one session.
//!
//! The router offers deliveries without ever waiting; the session task
//! drains them. Unlike a channel, the mailbox outlives a connection, so
//! messages for a persistent session queue here while its client is offline
//! and are drained by the next connection.
//!
//! | offered                  | session online                | offline       |
//! |--------------------------|-------------------------------|---------------|
//! | QoS 0, below the limit   | queued                        | dropped       |
//! | QoS 0, at the limit      | dropped                       | dropped       |
//! | QoS 1/2, below the limit | queued                        | queued        |
//! | QoS 1/2, at the limit    | held: queued with the receipt | dropped       |
//!
//! "Held" deliveries carry the publisher's [`Receipt`], so its PUBACK waits
//! until this session takes them: slow subscribers slow QoS 1/2 publishers
//! down instead of losing what was acknowledged. Each publisher has at most
//! `limits.max_inbound_unacked` messages waiting so, which bounds what can be
//! held. When the session goes offline the receipts are released (the
//! deliveries stay queued), so an absent client never blocks publishers; from
//! then on the limit drops, as mosquitto's `max_queued_messages` does.
//!
//! The lock is held only for one offer or one pop, never across an `.await`.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tidemq_protocol::QoS;
use tokio::sync::Notify;

use crate::types::{Delivery, Receipt};

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Delivery>,
    online: bool,
}

#[derive(Debug)]
pub struct Mailbox {
    inner: Mutex<Inner>,
    notify: Notify,
    limit: usize,
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
    pub fn offer(&self, mut delivery: Delivery, receipt: Option<&Receipt>) -> Offered {
        let offered = {
            let mut inner = self.inner();
            let qos0 = delivery.qos == QoS::AtMostOnce;
            if qos0 && !inner.online {
                return Offered::DroppedOffline;
            }
            let offered = if inner.queue.len() < self.limit {
                Offered::Queued
            } else {
                match receipt {
                    Some(receipt) if inner.online && !qos0 => {
                        delivery.receipt = Some(receipt.clone());
                        Offered::Held
                    }
                    _ => return Offered::DroppedFull,
                }
            };
            inner.queue.push_back(delivery);
            offered
        };
        self.notify.notify_one();
        offered
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

    /// Marks the session online or offline; going offline releases every
    /// held receipt.
    pub fn set_online(&self, online: bool) {
        let mut inner = self.inner();
        inner.online = online;
        if !online {
            inner.queue.iter_mut().for_each(|d| d.receipt = None);
        }
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
            receipt: None,
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
            mailbox.offer(delivery(1, QoS::AtMostOnce), None),
            Offered::Queued
        );
        assert_eq!(
            mailbox.offer(delivery(2, QoS::AtMostOnce), None),
            Offered::Queued
        );
        assert_eq!(
            mailbox.offer(delivery(3, QoS::AtMostOnce), None),
            Offered::DroppedFull
        );
        assert_eq!(
            (pop(&mailbox), pop(&mailbox), pop(&mailbox)),
            (Some(1), Some(2), None)
        );
        assert_eq!(
            mailbox.offer(delivery(4, QoS::AtMostOnce), None),
            Offered::Queued
        );
    }

    #[test]
    fn qos1_beyond_the_limit_is_held_until_taken() {
        let mailbox = online(1);
        let (receipt, mut released) = Receipt::new();
        assert_eq!(
            mailbox.offer(delivery(1, QoS::AtLeastOnce), Some(&receipt)),
            Offered::Queued
        );
        assert_eq!(
            mailbox.offer(delivery(2, QoS::AtLeastOnce), Some(&receipt)),
            Offered::Held
        );
        drop(receipt);
        assert!(released.try_recv().is_err(), "still held by delivery 2");
        assert_eq!(pop(&mailbox), Some(1));
        assert!(matches!(
            released.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        ));
        assert_eq!(pop(&mailbox), Some(2));
        assert!(matches!(
            released.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed)
        ));
    }

    #[test]
    fn going_offline_releases_receipts_but_keeps_the_messages() {
        let mailbox = online(1);
        let (receipt, mut released) = Receipt::new();
        mailbox.offer(delivery(1, QoS::AtLeastOnce), Some(&receipt));
        mailbox.offer(delivery(2, QoS::AtLeastOnce), Some(&receipt));
        drop(receipt);
        mailbox.set_online(false);
        assert!(matches!(
            released.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed)
        ));
        assert_eq!((pop(&mailbox), pop(&mailbox)), (Some(1), Some(2)));
    }

    #[test]
    fn offline_drops_qos0_and_qos1_beyond_the_limit() {
        let mailbox = Mailbox::new(1);
        let (receipt, _released) = Receipt::new();
        assert_eq!(
            mailbox.offer(delivery(0, QoS::AtMostOnce), None),
            Offered::DroppedOffline
        );
        assert_eq!(
            mailbox.offer(delivery(1, QoS::AtLeastOnce), Some(&receipt)),
            Offered::Queued
        );
        assert_eq!(
            mailbox.offer(delivery(2, QoS::AtLeastOnce), Some(&receipt)),
            Offered::DroppedFull
        );
    }

    #[tokio::test]
    async fn a_push_before_waiting_is_not_lost() {
        let mailbox = online(4);
        mailbox.offer(delivery(1, QoS::AtMostOnce), None);
        tokio::time::timeout(std::time::Duration::from_secs(1), mailbox.notified())
            .await
            .unwrap();
    }
}
