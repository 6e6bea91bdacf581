//! The subscription trie: one node per topic level, `+` and `#` as ordinary
//! children that matching treats specially. Owned by the router task alone.

use std::collections::HashMap;
use std::sync::Arc;

use foldhash::fast::RandomState;

use tidemq_protocol::{SubscriptionOptions, TopicFilter, TopicName};

use crate::registry::SessionSlot;
use crate::types::ClientId;

#[derive(Debug, Clone)]
pub struct Subscriber {
    pub options: SubscriptionOptions,
    /// MQTT 5 Subscription Identifier, carried on each delivery.
    pub id: Option<u32>,
    pub slot: Arc<SessionSlot>,
}

/// Topic levels come from clients, so the maps are keyed with a randomly
/// seeded hash (foldhash: several times faster than SipHash here, and still
/// not predictable by a client).
type Map<K, V> = HashMap<K, V, RandomState>;

/// One topic level. The wildcard children are fields, not map entries, so
/// matching does one map lookup per level instead of three.
#[derive(Debug, Default)]
struct Node {
    children: Map<Box<str>, Node>,
    plus: Option<Box<Node>>,
    hash: Option<Box<Node>>,
    subscribers: Map<ClientId, Subscriber>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.subscribers.is_empty()
    }

    fn child(&self, level: &str) -> Option<&Node> {
        match level {
            "+" => self.plus.as_deref(),
            "#" => self.hash.as_deref(),
            _ => self.children.get(level),
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node> {
        match level {
            "+" => self.plus.as_deref_mut(),
            "#" => self.hash.as_deref_mut(),
            _ => self.children.get_mut(level),
        }
    }

    fn child_or_insert(&mut self, level: &str) -> &mut Node {
        match level {
            "+" => self.plus.get_or_insert_with(Box::default),
            "#" => self.hash.get_or_insert_with(Box::default),
            _ => self.children.entry(Box::from(level)).or_default(),
        }
    }

    fn remove_child(&mut self, level: &str) {
        match level {
            "+" => self.plus = None,
            "#" => self.hash = None,
            _ => {
                self.children.remove(level);
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct Subscriptions {
    root: Node,
    count: usize,
}

impl Subscriptions {
    /// Adds or replaces (new options) a client's subscription; `true` if
    /// it is new.
    pub fn insert(
        &mut self,
        filter: &TopicFilter,
        client_id: &ClientId,
        subscriber: Subscriber,
    ) -> bool {
        let mut node = &mut self.root;
        for level in filter.levels() {
            node = node.child_or_insert(level);
        }
        let new = node
            .subscribers
            .insert(client_id.clone(), subscriber)
            .is_none();
        if new {
            self.count += 1;
        }
        new
    }

    /// Removes one subscription; `true` if it existed. Empty nodes are pruned.
    pub fn remove(&mut self, filter: &TopicFilter, client_id: &ClientId) -> bool {
        let removed = remove_at(&mut self.root, filter.levels(), client_id);
        if removed {
            self.count -= 1;
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.count
    }

    /// Calls `visit` for every subscription matching `topic`, once per
    /// matching filter (a client with overlapping filters is seen twice).
    pub fn for_each_match(&self, topic: &TopicName, mut visit: impl FnMut(&ClientId, &Subscriber)) {
        walk(&self.root, topic.levels(), topic.is_system(), &mut visit);
    }
}

/// Recursion depth is bounded by `MAX_TOPIC_LEVELS`.
fn remove_at(node: &mut Node, mut levels: std::str::Split<'_, char>, client_id: &ClientId) -> bool {
    let Some(first) = levels.next() else {
        return node.subscribers.remove(client_id).is_some();
    };
    let Some(child) = node.child_mut(first) else {
        return false;
    };
    let removed = remove_at(child, levels, client_id);
    if child.is_empty() {
        node.remove_child(first);
    }
    removed
}

/// Recursion depth is bounded by `MAX_TOPIC_LEVELS`. `levels` is a cheap
/// iterator over the rest of the topic, cloned where the walk branches.
/// `at_root_of_system_topic`: the first level of a `$` topic is not matched
/// by `+` or `#` [MQTT-4.7.2-1].
fn walk(
    node: &Node,
    mut levels: std::str::Split<'_, char>,
    at_root_of_system_topic: bool,
    visit: &mut impl FnMut(&ClientId, &Subscriber),
) {
    if !at_root_of_system_topic {
        // `#` also matches the parent level: "a/#" matches "a".
        if let Some(hash) = &node.hash {
            hash.subscribers.iter().for_each(|(c, s)| visit(c, s));
        }
    }
    let Some(first) = levels.next() else {
        node.subscribers.iter().for_each(|(c, s)| visit(c, s));
        return;
    };
    if !at_root_of_system_topic {
        if let Some(plus) = &node.plus {
            walk(plus, levels.clone(), false, visit);
        }
    }
    if let Some(child) = node.child(first) {
        walk(child, levels, false, visit);
    }
}
