//! The subscription trie: one node per topic level, `+` and `#` as ordinary
//! children that matching treats specially. Owned by the router task alone.

use std::collections::HashMap;
use std::sync::Arc;

use tidemq_protocol::{QoS, TopicFilter, TopicName};

use crate::registry::SessionSlot;
use crate::types::ClientId;

#[derive(Debug, Clone)]
pub struct Subscriber {
    pub qos: QoS,
    pub slot: Arc<SessionSlot>,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    subscribers: HashMap<ClientId, Subscriber>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty()
    }
}

#[derive(Debug, Default)]
pub struct Subscriptions {
    root: Node,
    count: usize,
}

impl Subscriptions {
    /// Adds or replaces (a new QoS) a client's subscription.
    pub fn insert(&mut self, filter: &TopicFilter, client_id: &ClientId, subscriber: Subscriber) {
        let mut node = &mut self.root;
        for level in filter.levels() {
            node = node.children.entry(Box::from(level)).or_default();
        }
        if node
            .subscribers
            .insert(client_id.clone(), subscriber)
            .is_none()
        {
            self.count += 1;
        }
    }

    /// Removes one subscription; `true` if it existed. Empty nodes are pruned.
    pub fn remove(&mut self, filter: &TopicFilter, client_id: &ClientId) -> bool {
        let levels: Vec<&str> = filter.levels().collect();
        let removed = remove_at(&mut self.root, &levels, client_id);
        if removed {
            self.count -= 1;
        }
        removed
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.count
    }

    /// Calls `visit` for every subscription matching `topic`, once per
    /// matching filter (a client with overlapping filters is seen twice).
    pub fn for_each_match(&self, topic: &TopicName, mut visit: impl FnMut(&ClientId, &Subscriber)) {
        let levels: Vec<&str> = topic.levels().collect();
        walk(&self.root, &levels, topic.is_system(), &mut visit);
    }
}

fn remove_at(node: &mut Node, levels: &[&str], client_id: &ClientId) -> bool {
    let Some((first, rest)) = levels.split_first() else {
        return node.subscribers.remove(client_id).is_some();
    };
    let Some(child) = node.children.get_mut(*first) else {
        return false;
    };
    let removed = remove_at(child, rest, client_id);
    if child.is_empty() {
        node.children.remove(*first);
    }
    removed
}

/// `at_root_of_system_topic`: the first level of a `$` topic is not matched by
/// `+` or `#` [MQTT-4.7.2-1].
fn walk(
    node: &Node,
    levels: &[&str],
    at_root_of_system_topic: bool,
    visit: &mut impl FnMut(&ClientId, &Subscriber),
) {
    if !at_root_of_system_topic {
        // `#` also matches the parent level: "a/#" matches "a".
        if let Some(hash) = node.children.get("#") {
            hash.subscribers.iter().for_each(|(c, s)| visit(c, s));
        }
    }
    let Some((first, rest)) = levels.split_first() else {
        node.subscribers.iter().for_each(|(c, s)| visit(c, s));
        return;
    };
    if let Some(child) = node.children.get(*first) {
        walk(child, rest, false, visit);
    }
    if !at_root_of_system_topic {
        if let Some(plus) = node.children.get("+") {
            walk(plus, rest, false, visit);
        }
    }
}
