//! Shared subscriptions (`$share/{group}/{filter}`, MQTT 5 section 4.8.2,
//! offered to 3.1.1 clients too, as mosquitto and EMQX do): the rules of a
//! share name, and which member of a group gets a message.
//!
//! | strategy (`limits.shared_subscription_strategy`) | member chosen           |
//! |-------------------------------------------------|--------------------------|
//! | `round_robin` (default)                         | the next one, in turn    |
//! | `random`                                        | any one                  |
//! | `hash`                                          | by the publisher's client id (by topic for a will, which has none): one publisher's messages stay with one member |
//!
//! Members whose session is online are preferred; when none is, an offline
//! persistent member's queue takes it.

use std::cell::Cell;
use std::hash::{BuildHasher, Hash, Hasher};

use tidemq_protocol::{TopicFilter, TopicName};

use super::subs::Subscriber;
use crate::types::{ClientId, Message};

const PREFIX: &str = "$share/";

/// How a group's member is chosen for a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    #[default]
    RoundRobin,
    Random,
    Hash,
}

/// A share name that breaks the rules [MQTT-4.8.2-1], [MQTT-4.8.2-2]:
/// answered with SUBACK 0x8F.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadShareName;

/// `Some((group, filter))` for a shared subscription, `None` for an ordinary
/// filter. The group is at least one character, without `/`, `+` or `#`;
/// the filter after it is a valid, non-empty filter.
pub fn split(filter: &TopicFilter) -> Option<Result<(&str, TopicFilter), BadShareName>> {
    let rest = filter.as_str().strip_prefix(PREFIX)?;
    let Some((group, inner)) = rest.split_once('/') else {
        return Some(Err(BadShareName));
    };
    if group.is_empty() || group.contains(['+', '#']) {
        return Some(Err(BadShareName));
    }
    Some(
        TopicFilter::new(inner)
            .map(|inner| (group, inner))
            .map_err(|_| BadShareName),
    )
}

/// Whether a filter names a shared subscription at all.
pub fn is_shared(filter: &TopicFilter) -> bool {
    filter.as_str().starts_with(PREFIX)
}

/// The members of one group on one filter.
#[derive(Debug, Default)]
pub struct Group {
    pub members: Vec<(ClientId, Subscriber)>,
    /// Round robin's position.
    next: Cell<usize>,
}

impl Group {
    /// Adds or replaces a member; `true` if new.
    pub fn insert(&mut self, client_id: &ClientId, subscriber: Subscriber) -> bool {
        match self.members.iter_mut().find(|(id, _)| id == client_id) {
            Some(member) => {
                member.1 = subscriber;
                false
            }
            None => {
                self.members.push((client_id.clone(), subscriber));
                true
            }
        }
    }

    /// Removes a member; `true` if it was one.
    pub fn remove(&mut self, client_id: &ClientId) -> bool {
        let before = self.members.len();
        self.members.retain(|(id, _)| id != client_id);
        self.members.len() < before
    }

    /// The member that gets `message`: an online one if any is.
    pub fn pick(&self, picker: &Picker, message: &Message) -> Option<&(ClientId, Subscriber)> {
        let online = self
            .members
            .iter()
            .filter(|(_, sub)| sub.slot.mailbox.is_online())
            .count();
        let (candidates, only_online) = if online > 0 {
            (online, true)
        } else {
            (self.members.len(), false)
        };
        if candidates == 0 {
            return None;
        }
        let nth = match picker.strategy {
            Strategy::RoundRobin => {
                let n = self.next.get();
                self.next.set(n.wrapping_add(1));
                n % candidates
            }
            Strategy::Random => (picker.random() % candidates as u64) as usize,
            Strategy::Hash => (picker.hash_of(message) % candidates as u64) as usize,
        };
        self.members
            .iter()
            .filter(|(_, sub)| !only_online || sub.slot.mailbox.is_online())
            .nth(nth)
    }
}

/// The strategy and the state it needs, owned by the router.
#[derive(Debug)]
pub struct Picker {
    pub strategy: Strategy,
    /// xorshift state for `random`.
    seed: Cell<u64>,
    hasher: foldhash::fast::RandomState,
}

impl Picker {
    pub fn new(strategy: Strategy) -> Picker {
        let hasher = foldhash::fast::RandomState::default();
        let seed = hasher.hash_one(std::time::SystemTime::now()) | 1;
        Picker {
            strategy,
            seed: Cell::new(seed),
            hasher,
        }
    }

    fn random(&self) -> u64 {
        let mut x = self.seed.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed.set(x);
        x
    }

    fn hash_of(&self, message: &Message) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        match &message.origin {
            Some(origin) => origin.hash(&mut hasher),
            None => hash_topic(&message.topic, &mut hasher),
        }
        hasher.finish()
    }
}

fn hash_topic(topic: &TopicName, hasher: &mut impl Hasher) {
    topic.as_str().hash(hasher);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::new(s).unwrap()
    }

    #[test]
    fn mqtt_4_8_2_1_and_2_share_names_are_checked() {
        let shared = filter("$share/g1/a/+/c");
        let (group, inner) = split(&shared).unwrap().unwrap();
        assert_eq!((group, inner.as_str()), ("g1", "a/+/c"));
        assert!(split(&filter("a/b")).is_none());
        // ("$share/g+/a" is no filter at all: the decoder refuses it.)
        for bad in ["$share/g", "$share//a", "$share/#", "$share/+/a"] {
            assert_eq!(split(&filter(bad)), Some(Err(BadShareName)), "{bad}");
        }
    }
}
