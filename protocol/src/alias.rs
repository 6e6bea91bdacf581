//! Inbound Topic Aliases (section 3.3.2.3.4): the per-connection table a
//! version-5 client fills by sending a topic with an alias, and then uses by
//! sending the alias alone. Owned by the connection's session; the decoder
//! leaves an alias-only PUBLISH with an empty topic for [`TopicAliases::resolve`].

use crate::error::{ProtocolError, SpecViolation};
use crate::packet::Publish;
use crate::topic::TopicName;

/// The topics a client has named by alias on one connection. Memory grows
/// with the highest alias used, never past the Topic Alias Maximum this
/// broker sent in its CONNACK.
#[derive(Debug, Clone, Default)]
pub struct TopicAliases {
    maximum: u16,
    topics: Vec<Option<TopicName>>,
}

impl TopicAliases {
    /// `maximum` is the Topic Alias Maximum sent in CONNACK; 0 allows none.
    pub fn new(maximum: u16) -> TopicAliases {
        TopicAliases {
            maximum,
            topics: Vec::new(),
        }
    }

    /// Remembers the topic of a PUBLISH that names one with its alias, or
    /// fills in the topic of one that sends the alias alone. Aliases live
    /// only as long as the connection [MQTT-3.3.2-10].
    pub fn resolve(&mut self, publish: &mut Publish) -> Result<(), ProtocolError> {
        let Some(alias) = publish.properties.as_ref().and_then(|p| p.topic_alias) else {
            return Ok(());
        };
        if alias == 0 {
            return Err(SpecViolation::TopicAliasZero.into());
        }
        if alias > self.maximum {
            return Err(SpecViolation::TopicAliasAboveMaximum {
                alias,
                maximum: self.maximum,
            }
            .into());
        }
        let index = usize::from(alias - 1);
        if publish.topic.is_empty() {
            let topic = self
                .topics
                .get(index)
                .and_then(Option::as_ref)
                .ok_or(SpecViolation::TopicAliasUnknown(alias))?;
            publish.topic = topic.clone();
        } else {
            if self.topics.len() <= index {
                self.topics.resize(index + 1, None);
            }
            if let Some(slot) = self.topics.get_mut(index) {
                *slot = Some(publish.topic.clone());
            }
        }
        Ok(())
    }
}
