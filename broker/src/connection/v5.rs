//! What an MQTT 5 connection keeps beyond a 3.1.1 one: the limits its client
//! announced in CONNECT and the topic aliases both ways. Boxed in the
//! client, so a 3.1.1 connection (and a resting one) pays one word for it.
//!
//! | state           | set by                      | used for                     |
//! |-----------------|-----------------------------|------------------------------|
//! | `max_packet_size` | CONNECT Maximum Packet Size | dropping larger deliveries |
//! | `problem_info`  | CONNECT Request Problem Info | Reason Strings on acks      |
//! | `aliases_in`    | client PUBLISHes            | topics sent by alias alone   |
//! | `aliases_out`   | deliveries                  | topics replaced by an alias  |

use std::collections::HashMap;

use bytes::BytesMut;
use tidemq_protocol::{
    encode, AckProperties, Connect, Outgoing, ProtocolVersion, TopicAliases, TopicName,
};

/// The MQTT 5 side of a connection.
#[derive(Debug)]
pub struct V5Conn {
    /// The largest packet the client accepts [MQTT-3.1.2-24]; `None`: no limit
    /// beyond the protocol's.
    pub max_packet_size: Option<u32>,
    /// Request Problem Information: Reason Strings and User Properties may go
    /// on packets other than PUBLISH, CONNACK and DISCONNECT [MQTT-3.1.2-29].
    pub problem_info: bool,
    pub aliases_in: TopicAliases,
    pub aliases_out: OutboundAliases,
    /// The enhanced authentication method the connection authenticated
    /// with; re-authentication must use it [MQTT-4.12.1-1].
    pub auth_method: Option<String>,
    pub username: Option<String>,
    /// A re-authentication in progress, and its rounds so far.
    pub reauth: Option<(Box<dyn crate::auth::AuthExchange>, usize)>,
}

impl V5Conn {
    /// `alias_maximum` is the broker's Topic Alias Maximum (what the client
    /// may use); the client's own caps the aliases the broker assigns.
    pub fn new(connect: &Connect, alias_maximum: u16) -> V5Conn {
        let properties = &connect.properties;
        V5Conn {
            max_packet_size: properties.maximum_packet_size,
            problem_info: properties.request_problem_information != Some(0),
            aliases_in: TopicAliases::new(alias_maximum),
            aliases_out: OutboundAliases::new(
                properties
                    .topic_alias_maximum
                    .unwrap_or(0)
                    .min(alias_maximum),
            ),
            auth_method: None,
            username: None,
            reauth: None,
        }
    }
}

impl V5Conn {
    /// Writes `packet` for this client, without its Reason String and User
    /// Properties if they would make it larger than the client's Maximum
    /// Packet Size [MQTT-3.1.2-24], [MQTT-3.14.2-3], [MQTT-3.9.2-1]. PUBLISHes
    /// are checked before they get here (too large: dropped).
    pub fn encode(&self, mut packet: Outgoing, out: &mut BytesMut) {
        let start = out.len();
        encode(&packet, ProtocolVersion::V5, out);
        let Some(max) = self.max_packet_size else {
            return;
        };
        if out.len() - start <= max as usize {
            return;
        }
        match &mut packet {
            Outgoing::PubAck(ack)
            | Outgoing::PubRec(ack)
            | Outgoing::PubRel(ack)
            | Outgoing::PubComp(ack) => ack.properties = AckProperties::default(),
            Outgoing::SubAck { properties, .. } | Outgoing::UnsubAck { properties, .. } => {
                *properties = AckProperties::default();
            }
            Outgoing::Disconnect(disconnect) => {
                disconnect.properties.reason_string = None;
                disconnect.properties.user_properties.clear();
            }
            Outgoing::Auth(auth) => {
                auth.reason_string = None;
                auth.user_properties.clear();
            }
            _ => return,
        }
        out.truncate(start);
        encode(&packet, ProtocolVersion::V5, out);
    }
}

/// Aliases the broker assigns for its deliveries, up to the client's Topic
/// Alias Maximum; when all are taken, the least recently used is replaced.
#[derive(Debug, Default)]
pub struct OutboundAliases {
    maximum: u16,
    /// Topic -> (alias, last use).
    by_topic: HashMap<TopicName, (u16, u64)>,
    clock: u64,
}

/// How a delivery names its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliasUse {
    /// No alias: the client allows none.
    None,
    /// Send the topic and set this alias for it.
    Set(u16),
    /// Send this alias and an empty topic.
    Known(u16),
}

impl OutboundAliases {
    pub fn new(maximum: u16) -> OutboundAliases {
        OutboundAliases {
            maximum,
            by_topic: HashMap::new(),
            clock: 0,
        }
    }

    /// The alias to use for `topic`, assigning one if there is room or the
    /// least recently used one can be taken over.
    pub fn alias_for(&mut self, topic: &TopicName) -> AliasUse {
        if self.maximum == 0 {
            return AliasUse::None;
        }
        self.clock += 1;
        if let Some((alias, used)) = self.by_topic.get_mut(topic) {
            *used = self.clock;
            return AliasUse::Known(*alias);
        }
        let alias = if self.by_topic.len() < usize::from(self.maximum) {
            // Aliases 1..=len are taken, in order of first use.
            u16::try_from(self.by_topic.len() + 1).unwrap_or(self.maximum)
        } else {
            let oldest = self
                .by_topic
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(topic, (alias, _))| (topic.clone(), *alias));
            let Some((old_topic, alias)) = oldest else {
                return AliasUse::None;
            };
            self.by_topic.remove(&old_topic);
            alias
        };
        self.by_topic.insert(topic.clone(), (alias, self.clock));
        AliasUse::Set(alias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str) -> TopicName {
        TopicName::new(name).unwrap()
    }

    #[test]
    fn outbound_aliases_replace_the_least_recently_used() {
        let mut aliases = OutboundAliases::new(2);
        assert_eq!(aliases.alias_for(&topic("a")), AliasUse::Set(1));
        assert_eq!(aliases.alias_for(&topic("b")), AliasUse::Set(2));
        assert_eq!(aliases.alias_for(&topic("a")), AliasUse::Known(1));
        // "b" is the least recently used: "c" takes its alias.
        assert_eq!(aliases.alias_for(&topic("c")), AliasUse::Set(2));
        assert_eq!(aliases.alias_for(&topic("a")), AliasUse::Known(1));
        assert_eq!(aliases.alias_for(&topic("b")), AliasUse::Set(2));
    }

    #[test]
    fn no_aliases_when_the_client_allows_none() {
        let mut aliases = OutboundAliases::new(0);
        assert_eq!(aliases.alias_for(&topic("a")), AliasUse::None);
    }
}
