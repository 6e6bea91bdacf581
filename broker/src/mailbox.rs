//! A session's mailbox: the bounded queue from the router to one session.
//!
//! The router pushes without ever waiting; the session task drains. Unlike a
//! channel, the mailbox outlives a connection, so messages for a persistent
//! session queue here while its client is offline and are drained by the next
//! connection. At `max_queued_messages` a push is refused and the router
//! counts the drop (the policy mosquitto's `max_queued_messages` follows).
//!
//! The lock is held only for a push or a pop of a few items, never across an
//! `.await`.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::types::Delivery;

#[derive(Debug)]
pub struct Mailbox {
    queue: Mutex<VecDeque<Delivery>>,
    notify: Notify,
    limit: usize,
}

/// The mailbox held `limit` deliveries; the one offered was not taken.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

impl Mailbox {
    pub fn new(limit: usize) -> Mailbox {
        Mailbox {
            queue: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            limit,
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Delivery>> {
        // A panic while holding this lock cannot leave the queue half-changed
        // (every critical section is one VecDeque call), so poison is ignored.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends a delivery and wakes the session, unless the mailbox is full.
    pub fn push(&self, delivery: Delivery) -> Result<(), Full> {
        {
            let mut queue = self.queue();
            if queue.len() >= self.limit {
                return Err(Full);
            }
            queue.push_back(delivery);
        }
        self.notify.notify_one();
        Ok(())
    }

    /// Pops the front delivery if `accept` takes it.
    pub fn pop_if(&self, accept: impl FnOnce(&Delivery) -> bool) -> Option<Delivery> {
        let mut queue = self.queue();
        if accept(queue.front()?) {
            queue.pop_front()
        } else {
            None
        }
    }

    pub fn clear(&self) {
        self.queue().clear();
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
    use tidemq_protocol::{QoS, TopicName};

    use super::*;
    use crate::types::Message;

    fn delivery(n: u8) -> Delivery {
        Delivery {
            message: Arc::new(Message {
                topic: TopicName::new("t").unwrap(),
                payload: Bytes::from(vec![n]),
                qos: QoS::AtLeastOnce,
                retain: false,
            }),
            qos: QoS::AtLeastOnce,
            retain: false,
        }
    }

    #[test]
    fn refuses_beyond_the_limit_and_keeps_order() {
        let mailbox = Mailbox::new(2);
        assert_eq!(mailbox.push(delivery(1)), Ok(()));
        assert_eq!(mailbox.push(delivery(2)), Ok(()));
        assert_eq!(mailbox.push(delivery(3)), Err(Full));
        let first = mailbox.pop_if(|_| true).unwrap();
        assert_eq!(first.message.payload.as_ref(), &[1]);
        assert_eq!(
            mailbox.pop_if(|_| true).unwrap().message.payload.as_ref(),
            &[2]
        );
        assert!(mailbox.pop_if(|_| true).is_none());
        assert_eq!(
            mailbox.push(delivery(4)),
            Ok(()),
            "room again after draining"
        );
    }

    #[tokio::test]
    async fn a_push_before_waiting_is_not_lost() {
        let mailbox = Mailbox::new(4);
        mailbox.push(delivery(1)).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), mailbox.notified())
            .await
            .unwrap();
    }
}
