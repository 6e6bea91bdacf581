//! Entry points for the criterion benchmarks in `broker/benches/`. Not part
//! of the broker's API: they reach into the router, which is private.

use std::sync::Arc;

use bytes::Bytes;
use tidemq_protocol::{QoS, TopicFilter, TopicName};
use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::registry::SessionSlot;
use crate::router::{Router, RouterLimits, RouterMsg, SubscribeRequest};
use crate::types::{ClientId, ConnId, Message};

/// A router filled with subscriptions, one client each.
pub struct RouterBench {
    router: Router,
    slots: Vec<Arc<SessionSlot>>,
}

impl RouterBench {
    /// `filters[i]` is subscribed by client `i` at QoS 0.
    pub fn new(filters: impl IntoIterator<Item = String>) -> RouterBench {
        let mut router = Router::new(Arc::new(Metrics::default()), RouterLimits::unlimited());
        let mut slots = Vec::new();
        for (i, filter) in filters.into_iter().enumerate() {
            let Ok(filter) = TopicFilter::new(&filter) else {
                continue;
            };
            let slot = Arc::new(SessionSlot::new(
                ClientId::new(&format!("c{i}")),
                ConnId(0),
                usize::MAX,
            ));
            slot.set_online(true);
            let (done, _answer) = oneshot::channel();
            router.handle(RouterMsg::Subscribe {
                slot: slot.clone(),
                request: SubscribeRequest::qos(vec![(filter, QoS::AtMostOnce)]),
                done,
            });
            slots.push(slot);
        }
        RouterBench { router, slots }
    }

    /// How many subscriptions match `topic` (the trie walk alone).
    pub fn count_matches(&self, topic: &TopicName) -> usize {
        let mut count = 0;
        self.router.for_each_match(topic, |_, _| count += 1);
        count
    }

    /// Routes one message and drains every mailbox it reached (the whole
    /// fan-out path short of the sockets). Returns the deliveries.
    pub fn publish_and_drain(&mut self, topic: &TopicName, payload: &Bytes) -> usize {
        let message = Arc::new(Message::new(
            topic.clone(),
            payload.clone(),
            QoS::AtMostOnce,
            false,
        ));
        self.router.handle(RouterMsg::Publish {
            hold: None,
            message,
            receipt: None,
        });
        self.slots
            .iter()
            .filter(|slot| slot.mailbox.pop_if(|_| true).is_some())
            .count()
    }
}

/// A retained store filled with messages, for the cost of matching a new
/// subscription against it.
pub struct RetainedBench {
    retained: crate::router::Retained,
}

impl RetainedBench {
    /// One retained message per topic.
    pub fn new(topics: impl IntoIterator<Item = String>) -> RetainedBench {
        let mut retained = crate::router::Retained::new(usize::MAX, usize::MAX);
        let payload = Bytes::from_static(b"x");
        for topic in topics {
            let Ok(topic) = TopicName::new(&topic) else {
                continue;
            };
            let message = Message::new(topic, payload.clone(), QoS::AtMostOnce, true);
            retained.update(&Arc::new(message));
        }
        RetainedBench { retained }
    }

    /// Retained messages a new subscription to `filter` receives, taken in
    /// batches of `batch` as a session pulls them.
    pub fn count_matching(&self, filter: &TopicFilter, batch: usize) -> usize {
        let mut cursor = crate::types::RetainedCursor::new(filter.clone(), QoS::AtMostOnce);
        let mut out = Vec::new();
        let mut count = 0;
        loop {
            let more = self.retained.next_batch(&mut cursor, batch, &mut out);
            count += out.len();
            out.clear();
            if !more {
                return count;
            }
        }
    }
}
