//! The MQTT state of one session, as pure state machines: no I/O, no tasks,
//! no time. The connection's session task drives them; when a persistent
//! session's connection ends, its [`SessionState`] is parked in the session's
//! slot and taken up by the next connection with the same client id.

mod inbound;
mod outbound;

pub use inbound::Inbound;
pub use outbound::{Outbound, RestoredInflight};

use tidemq_protocol::TopicFilter;

use crate::types::RetainedCursor;

/// Everything about a session that must survive a reconnect, besides its
/// subscriptions (owned by the router) and its queued messages (its mailbox).
#[derive(Debug)]
pub struct SessionState {
    pub outbound: Outbound,
    pub inbound: Inbound,
    /// New subscriptions whose retained messages are still to be pulled from
    /// the router, the next one last. Boxed: almost always empty, and this
    /// struct is part of what a resting connection costs (8 bytes, not 24).
    #[allow(clippy::box_collection)]
    retained: Option<Box<Vec<RetainedCursor>>>,
}

impl SessionState {
    pub fn new(max_inflight: usize) -> SessionState {
        SessionState {
            outbound: Outbound::new(max_inflight),
            inbound: Inbound::default(),
            retained: None,
        }
    }

    /// Queues the cursors of one SUBSCRIBE, behind those of earlier ones. A
    /// filter subscribed again starts over [MQTT-3.8.4-3]: its earlier
    /// cursor goes, so there is at most one cursor per subscription.
    pub fn add_retained_cursors(&mut self, cursors: Vec<RetainedCursor>) {
        if cursors.is_empty() {
            return;
        }
        let filters: Vec<TopicFilter> = cursors.iter().map(|c| c.filter.clone()).collect();
        self.drop_retained_cursors(&filters);
        let earlier = self.retained.take().map_or_else(Vec::new, |boxed| *boxed);
        let mut all: Vec<RetainedCursor> = cursors.into_iter().rev().collect();
        all.extend(earlier);
        self.retained = Some(Box::new(all));
    }

    pub fn has_retained_cursors(&self) -> bool {
        self.retained.is_some()
    }

    pub fn next_retained_cursor(&mut self) -> Option<RetainedCursor> {
        let cursors = self.retained.as_mut()?;
        let next = cursors.pop();
        if cursors.is_empty() {
            self.retained = None;
        }
        next
    }

    /// Puts a cursor with more to come back at the front.
    pub fn put_back_retained_cursor(&mut self, cursor: RetainedCursor) {
        self.retained.get_or_insert_with(Box::default).push(cursor);
    }

    /// An UNSUBSCRIBE ends the retained messages still due to those filters.
    pub fn drop_retained_cursors(&mut self, filters: &[TopicFilter]) {
        if let Some(cursors) = self.retained.as_mut() {
            // A set: an UNSUBSCRIBE may list a great many filters.
            let filters: std::collections::HashSet<&TopicFilter> = filters.iter().collect();
            cursors.retain(|cursor| !filters.contains(&cursor.filter));
            if cursors.is_empty() {
                self.retained = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tidemq_protocol::QoS;

    use super::*;

    fn cursor(filter: &str) -> RetainedCursor {
        RetainedCursor::new(TopicFilter::new(filter).unwrap(), QoS::AtMostOnce)
    }

    #[test]
    fn retained_cursors_are_taken_in_subscription_order() {
        let mut state = SessionState::new(1);
        state.add_retained_cursors(vec![cursor("a"), cursor("b")]);
        state.add_retained_cursors(vec![cursor("c")]);
        // Subscribed again: one cursor, starting over, last in line.
        state.add_retained_cursors(vec![cursor("a")]);
        let first = state.next_retained_cursor().unwrap();
        assert_eq!(first.filter.as_str(), "b");
        state.put_back_retained_cursor(first);
        state.drop_retained_cursors(&[TopicFilter::new("b").unwrap()]);
        let order: Vec<_> = std::iter::from_fn(|| state.next_retained_cursor())
            .map(|c| c.filter.as_str().to_string())
            .collect();
        assert_eq!(order, ["c", "a"]);
    }
}
