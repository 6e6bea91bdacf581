//! What the admin API (`crate::http`) asks the router: one client's
//! subscriptions, and the retained messages a page at a time. Answered in
//! the router's own synchronous step like any other message, so the answer
//! is consistent with the deliveries around it; each answer's work is
//! bounded by the client's filters or by the page size, never by the whole
//! store.

use std::sync::Arc;

use tidemq_protocol::{SubscriptionOptions, TopicFilter};
use tokio::sync::oneshot;

use super::{Router, RouterGone, RouterHandle, RouterMsg};
use crate::types::{ClientId, Message, RetainedCursor};

/// Most retained messages one [`Query::Retained`] answers with.
pub const MAX_RETAINED_PAGE: usize = 1000;

#[derive(Debug)]
pub enum Query {
    /// A client's subscriptions, sorted by filter.
    Subscriptions {
        client_id: ClientId,
        done: oneshot::Sender<Vec<SubscriptionInfo>>,
    },
    /// Up to `max` (at most [`MAX_RETAINED_PAGE`]) retained messages
    /// matching the cursor's filter after its last topic, in the trie's
    /// order; answered with them and whether more may follow.
    Retained {
        cursor: RetainedCursor,
        max: usize,
        done: oneshot::Sender<(Vec<Arc<Message>>, bool)>,
    },
}

/// One subscription as the admin API shows it.
#[derive(Debug, Clone)]
pub struct SubscriptionInfo {
    pub filter: TopicFilter,
    pub options: SubscriptionOptions,
    /// The MQTT 5 Subscription Identifier, if it has one.
    pub id: Option<u32>,
}

impl Router {
    pub(super) fn query(&mut self, query: Query) {
        match query {
            Query::Subscriptions { client_id, done } => {
                let _ = done.send(self.subscriptions_of(&client_id));
            }
            Query::Retained {
                mut cursor,
                max,
                done,
            } => {
                let mut out = Vec::new();
                let max = max.min(MAX_RETAINED_PAGE);
                let more = self.retained.next_batch(&mut cursor, max, &mut out);
                let _ = done.send((out, more));
            }
        }
    }

    fn subscriptions_of(&self, client_id: &ClientId) -> Vec<SubscriptionInfo> {
        let Some(filters) = self.filters_by_client.get(client_id) else {
            return Vec::new();
        };
        let mut found: Vec<SubscriptionInfo> = filters
            .iter()
            .filter_map(|filter| {
                let subscriber = self.subscriptions.get(filter, client_id)?;
                Some(SubscriptionInfo {
                    filter: filter.clone(),
                    options: subscriber.options,
                    id: subscriber.id(),
                })
            })
            .collect();
        found.sort_unstable_by(|a, b| a.filter.as_str().cmp(b.filter.as_str()));
        found
    }
}

impl RouterHandle {
    /// Messages waiting in the router's channel now.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// A client's subscriptions (empty when it has none or is unknown).
    pub async fn subscriptions_of(
        &self,
        client_id: ClientId,
    ) -> Result<Vec<SubscriptionInfo>, RouterGone> {
        self.ask(|done| RouterMsg::Query(Query::Subscriptions { client_id, done }))
            .await
    }

    /// The next page of retained messages after `cursor` (see
    /// [`Query::Retained`]); moves the cursor past them.
    pub async fn retained_page(
        &self,
        cursor: &mut RetainedCursor,
        max: usize,
    ) -> Result<(Vec<Arc<Message>>, bool), RouterGone> {
        let asked = cursor.clone();
        let (messages, more) = self
            .ask(|done| {
                RouterMsg::Query(Query::Retained {
                    cursor: asked,
                    max,
                    done,
                })
            })
            .await?;
        if let Some(last) = messages.last() {
            cursor.after = Some(last.topic.clone());
        }
        Ok((messages, more))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::registry::SessionSlot;
    use crate::router::{RouterLimits, SubscribeRequest};
    use crate::types::ConnId;
    use bytes::Bytes;
    use tidemq_protocol::{QoS, TopicName};

    fn router() -> Router {
        Router::new(Arc::new(Metrics::default()), RouterLimits::unlimited())
    }

    fn ask<T>(router: &mut Router, msg: impl FnOnce(oneshot::Sender<T>) -> Query) -> T {
        let (done, mut answer) = oneshot::channel();
        router.handle(RouterMsg::Query(msg(done)));
        answer.try_recv().unwrap()
    }

    #[test]
    fn a_clients_subscriptions_are_listed_with_their_options_shared_ones_included() {
        let mut router = router();
        let slot = Arc::new(SessionSlot::new(ClientId::new("c"), ConnId(1), 10));
        let filters = vec![
            (TopicFilter::new("b/#").unwrap(), QoS::AtLeastOnce),
            (TopicFilter::new("$share/g/a/+").unwrap(), QoS::ExactlyOnce),
        ];
        let (done, _answer) = oneshot::channel();
        router.handle(RouterMsg::Subscribe {
            slot,
            request: SubscribeRequest::qos(filters),
            done,
        });
        let client_id = ClientId::new("c");
        let subs = ask(&mut router, |done| Query::Subscriptions {
            client_id: client_id.clone(),
            done,
        });
        let listed: Vec<(&str, QoS)> = subs
            .iter()
            .map(|s| (s.filter.as_str(), s.options.qos))
            .collect();
        assert_eq!(
            listed,
            [
                ("$share/g/a/+", QoS::ExactlyOnce),
                ("b/#", QoS::AtLeastOnce)
            ]
        );
        let none = ask(&mut router, |done| Query::Subscriptions {
            client_id: ClientId::new("unknown"),
            done,
        });
        assert!(none.is_empty());
    }

    #[test]
    fn retained_messages_come_a_page_at_a_time_in_topic_order() {
        let mut router = router();
        for topic in ["r/3", "r/1", "r/2"] {
            let message = Message::new(
                TopicName::new(topic).unwrap(),
                Bytes::from_static(b"v"),
                QoS::AtMostOnce,
                true,
            );
            router.handle(RouterMsg::Publish {
                message: Arc::new(message),
                receipt: None,
                hold: None,
            });
        }
        let mut cursor = RetainedCursor::new(TopicFilter::new("#").unwrap(), QoS::AtMostOnce);
        let (first, more) = ask(&mut router, |done| Query::Retained {
            cursor: cursor.clone(),
            max: 2,
            done,
        });
        assert!(more);
        let topics: Vec<&str> = first.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(topics, ["r/1", "r/2"]);
        cursor.after = first.last().map(|m| m.topic.clone());
        let (rest, _) = ask(&mut router, |done| Query::Retained {
            cursor,
            max: 2,
            done,
        });
        let topics: Vec<&str> = rest.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(topics, ["r/3"]);
    }
}
