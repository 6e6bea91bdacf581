//! Retained messages: one per topic name, set by a PUBLISH with RETAIN,
//! replaced by the next, cleared by one with an empty payload
//! [MQTT-3.3.1-10], [MQTT-3.3.1-11]. Owned by the router task alone.

use std::collections::HashMap;
use std::sync::Arc;

use tidemq_protocol::{TopicFilter, TopicName};

use crate::types::Message;

#[derive(Debug, Default)]
pub struct Retained {
    messages: HashMap<TopicName, Arc<Message>>,
}

impl Retained {
    /// Stores, replaces or clears the retained message of its topic.
    pub fn update(&mut self, message: &Arc<Message>) {
        if message.payload.is_empty() {
            self.messages.remove(&message.topic);
        } else {
            self.messages
                .insert(message.topic.clone(), Arc::clone(message));
        }
    }

    /// The retained messages a new subscription to `filter` receives.
    pub fn matching<'a>(
        &'a self,
        filter: &'a TopicFilter,
    ) -> impl Iterator<Item = &'a Arc<Message>> {
        self.messages
            .iter()
            .filter(|(topic, _)| filter.matches(topic))
            .map(|(_, message)| message)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.messages.len()
    }
}
