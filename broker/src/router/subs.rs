//! The subscription trie: one node per topic level, `+` and `#` as ordinary
//! children that matching treats specially. A shared subscription
//! (`$share/{group}/{filter}`) sits at its filter's node in that group, and
//! a message matching it goes to one member of the group. Owned by the
//! router task alone.

use std::collections::HashMap;
use std::sync::Arc;

use foldhash::fast::RandomState;

use tidemq_protocol::{SubscriptionOptions, TopicFilter, TopicName};

use super::shared::{self, Group, Picker};
use crate::registry::SessionSlot;
use crate::types::{ClientId, DeliveryExtra, Message};

#[derive(Debug, Clone)]
pub struct Subscriber {
    pub options: SubscriptionOptions,
    pub slot: Arc<SessionSlot>,
    /// What few subscriptions have: what each of their deliveries carries
    /// (the Subscription Identifier, the `$share/{group}/{filter}`). Boxed:
    /// the trie holds one per subscription, and matching walks them all.
    pub extra: Option<Box<DeliveryExtra>>,
}

impl Subscriber {
    /// The MQTT 5 Subscription Identifier, if it has one.
    pub fn id(&self) -> Option<u32> {
        self.extra
            .as_ref()
            .and_then(|extra| extra.subscription_ids.first().copied())
    }
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
    /// Shared subscriptions on this node's filter, by group name; boxed, as
    /// most nodes have none.
    groups: Option<Box<Map<Box<str>, Group>>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.subscribers.is_empty()
            && self.groups.is_none()
    }

    /// Adds or replaces a member of `group` here; `true` if new.
    fn insert_shared(&mut self, group: &str, client_id: &ClientId, subscriber: Subscriber) -> bool {
        let groups = self.groups.get_or_insert_with(Box::default);
        groups
            .entry(Box::from(group))
            .or_default()
            .insert(client_id, subscriber)
    }

    /// Removes a member of `group` here; `true` if it was one.
    fn remove_shared(&mut self, group: &str, client_id: &ClientId) -> bool {
        let Some(groups) = self.groups.as_mut() else {
            return false;
        };
        let Some(members) = groups.get_mut(group) else {
            return false;
        };
        let removed = members.remove(client_id);
        if members.members.is_empty() {
            groups.remove(group);
        }
        if groups.is_empty() {
            self.groups = None;
        }
        removed
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
    /// it is new. A `$share/{group}/{filter}` must have been checked with
    /// [`shared::split`].
    pub fn insert(
        &mut self,
        filter: &TopicFilter,
        client_id: &ClientId,
        subscriber: Subscriber,
    ) -> bool {
        let (group, filter) = match shared::split(filter) {
            Some(Ok((group, inner))) => (Some(group), inner),
            _ => (None, filter.clone()),
        };
        let mut node = &mut self.root;
        for level in filter.levels() {
            node = node.child_or_insert(level);
        }
        let new = match group {
            Some(group) => node.insert_shared(group, client_id, subscriber),
            None => node
                .subscribers
                .insert(client_id.clone(), subscriber)
                .is_none(),
        };
        if new {
            self.count += 1;
        }
        new
    }

    /// Removes one subscription; `true` if it existed. Empty nodes are pruned.
    pub fn remove(&mut self, filter: &TopicFilter, client_id: &ClientId) -> bool {
        let removed = match shared::split(filter) {
            Some(Ok((group, inner))) => {
                remove_at(&mut self.root, inner.levels(), client_id, Some(group))
            }
            Some(Err(_)) => false,
            None => remove_at(&mut self.root, filter.levels(), client_id, None),
        };
        if removed {
            self.count -= 1;
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.count
    }

    /// A client's subscription on `filter` (a `$share/...` one included).
    pub fn get(&self, filter: &TopicFilter, client_id: &ClientId) -> Option<&Subscriber> {
        let (group, inner) = match shared::split(filter) {
            Some(Ok((group, inner))) => (Some(group), inner),
            Some(Err(_)) => return None,
            None => (None, filter.clone()),
        };
        let mut node = &self.root;
        for level in inner.levels() {
            node = node.child(level)?;
        }
        match group {
            Some(group) => node
                .groups
                .as_ref()?
                .get(group)?
                .members
                .iter()
                .find(|(id, _)| id == client_id)
                .map(|(_, subscriber)| subscriber),
            None => node.subscribers.get(client_id),
        }
    }

    /// The group of a `$share/{group}/{filter}`, if it has members.
    pub fn group(&self, shared: &TopicFilter) -> Option<&Group> {
        let Some(Ok((group, filter))) = shared::split(shared) else {
            return None;
        };
        let mut node = &self.root;
        for level in filter.levels() {
            node = node.child(level)?;
        }
        node.groups.as_ref()?.get(group)
    }

    /// Calls `visit` for every ordinary subscription matching `topic`, once
    /// per matching filter (a client with overlapping filters is seen
    /// twice). Shared subscriptions are left out.
    pub fn for_each_match(&self, topic: &TopicName, mut visit: impl FnMut(&ClientId, &Subscriber)) {
        walk(
            &self.root,
            topic.levels(),
            topic.is_system(),
            None,
            &mut visit,
        );
    }

    /// As [`Subscriptions::for_each_match`], and one member per matching
    /// shared group, chosen by `picker` [MQTT-4.8.2-3].
    pub fn for_each_delivery(
        &self,
        message: &Message,
        picker: &Picker,
        mut visit: impl FnMut(&ClientId, &Subscriber),
    ) {
        let topic = &message.topic;
        let shared = Some((picker, message));
        walk(
            &self.root,
            topic.levels(),
            topic.is_system(),
            shared,
            &mut visit,
        );
    }
}

/// Recursion depth is bounded by `MAX_TOPIC_LEVELS`.
fn remove_at(
    node: &mut Node,
    mut levels: std::str::Split<'_, char>,
    client_id: &ClientId,
    group: Option<&str>,
) -> bool {
    let Some(first) = levels.next() else {
        return match group {
            Some(group) => node.remove_shared(group, client_id),
            None => node.subscribers.remove(client_id).is_some(),
        };
    };
    let Some(child) = node.child_mut(first) else {
        return false;
    };
    let removed = remove_at(child, levels, client_id, group);
    if child.is_empty() {
        node.remove_child(first);
    }
    removed
}

/// With shared groups to visit: how to pick a member, and for which message.
type SharedVisit<'a> = Option<(&'a Picker, &'a Message)>;

/// Visits a matching node's subscribers (and one member per group).
fn visit_node(
    node: &Node,
    shared: SharedVisit<'_>,
    visit: &mut impl FnMut(&ClientId, &Subscriber),
) {
    node.subscribers.iter().for_each(|(c, s)| visit(c, s));
    if let (Some(groups), Some((picker, message))) = (&node.groups, shared) {
        for group in groups.values() {
            if let Some((client_id, subscriber)) = group.pick(picker, message) {
                visit(client_id, subscriber);
            }
        }
    }
}

/// Recursion depth is bounded by `MAX_TOPIC_LEVELS`. `levels` is a cheap
/// iterator over the rest of the topic, cloned where the walk branches.
/// `at_root_of_system_topic`: the first level of a `$` topic is not matched
/// by `+` or `#` [MQTT-4.7.2-1].
fn walk(
    node: &Node,
    mut levels: std::str::Split<'_, char>,
    at_root_of_system_topic: bool,
    shared: SharedVisit<'_>,
    visit: &mut impl FnMut(&ClientId, &Subscriber),
) {
    if !at_root_of_system_topic {
        // `#` also matches the parent level: "a/#" matches "a".
        if let Some(hash) = &node.hash {
            visit_node(hash, shared, visit);
        }
    }
    let Some(first) = levels.next() else {
        visit_node(node, shared, visit);
        return;
    };
    if !at_root_of_system_topic {
        if let Some(plus) = &node.plus {
            walk(plus, levels.clone(), false, shared, visit);
        }
    }
    if let Some(child) = node.child(first) {
        walk(child, levels, false, shared, visit);
    }
}
