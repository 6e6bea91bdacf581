//! Retained messages: one per topic name, set by a PUBLISH with RETAIN,
//! replaced by the next, cleared by one with an empty payload
//! [MQTT-3.3.1-10], [MQTT-3.3.1-11]. Owned by the router task alone.
//!
//! They are kept in a trie of topic levels whose children are sorted, so
//! that a new subscription is matched by walking the trie with its filter
//! (work in proportion to what the filter reaches, not to everything stored)
//! and the matches can be taken a batch at a time: a [`RetainedCursor`]
//! remembers the last topic handed out, and the next batch starts after it
//! in the trie's order (level by level, a topic before the topics below it).
//!
//! The store is capped by `limits.max_retained_messages` and
//! `limits.max_retained_bytes` (topic + payload): a message that would go
//! over either is not stored ([`Update::Refused`]); when it would have
//! replaced a stored one, that one is cleared too, so a subscriber never
//! gets a value older than the last one published.

use std::collections::{btree_map, BTreeMap};
use std::ops::Bound;
use std::sync::Arc;

use tidemq_protocol::TopicName;

use crate::types::{Message, RetainedCursor};

#[derive(Debug, Default)]
struct Node {
    children: BTreeMap<Box<str>, Node>,
    message: Option<Arc<Message>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.message.is_none()
    }
}

/// What the store did with a retained message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    Stored,
    Cleared,
    /// Over `max_retained_messages` or `max_retained_bytes`.
    Refused,
}

#[derive(Debug)]
pub struct Retained {
    root: Node,
    count: usize,
    bytes: usize,
    max_count: usize,
    max_bytes: usize,
}

impl Retained {
    pub fn new(max_count: usize, max_bytes: usize) -> Retained {
        Retained {
            root: Node::default(),
            count: 0,
            bytes: 0,
            max_count,
            max_bytes,
        }
    }

    /// Reloaded caps: what is stored stays; new messages are refused while
    /// over them.
    pub fn set_caps(&mut self, max_count: usize, max_bytes: usize) {
        self.max_count = max_count;
        self.max_bytes = max_bytes;
    }

    /// Stores, replaces or clears the retained message of its topic.
    pub fn update(&mut self, message: &Arc<Message>) -> Update {
        let old = self.remove(&message.topic);
        if message.payload.is_empty() {
            return Update::Cleared;
        }
        let weight = message.weight();
        if self.count >= self.max_count || self.bytes.saturating_add(weight) > self.max_bytes {
            return Update::Refused;
        }
        let mut node = &mut self.root;
        for level in message.topic.levels() {
            node = node.children.entry(Box::from(level)).or_default();
        }
        node.message = Some(Arc::clone(message));
        self.count += 1;
        self.bytes += weight;
        drop(old);
        Update::Stored
    }

    /// Removes the message of `topic`, pruning empty nodes.
    fn remove(&mut self, topic: &TopicName) -> Option<Arc<Message>> {
        let levels: Vec<&str> = topic.levels().collect();
        let removed = remove_at(&mut self.root, &levels)?;
        self.count -= 1;
        self.bytes -= removed.weight();
        Some(removed)
    }

    /// Appends to `out` up to `max` retained messages matching the cursor's
    /// filter, after the cursor's last topic, in the trie's order, and moves
    /// the cursor to the last one taken. Returns whether the cursor may have
    /// more (it had to stop at `max`).
    pub fn next_batch(
        &self,
        cursor: &mut RetainedCursor,
        max: usize,
        out: &mut Vec<Arc<Message>>,
    ) -> bool {
        let start = out.len();
        let filter: Vec<&str> = cursor.filter.levels().collect();
        let after: Option<Vec<&str>> = cursor.after.as_ref().map(|t| t.levels().collect());
        let mut walk = Walk {
            out,
            limit: start.saturating_add(max),
        };
        walk.filter(&self.root, &filter, after.as_deref(), true);
        let full = walk.out.len() >= walk.limit;
        if let Some(last) = out.get(start..).and_then(<[_]>::last) {
            cursor.after = Some(last.topic.clone());
        }
        full
    }

    /// Every retained message matching `filter`.
    #[cfg(test)]
    pub fn matching(&self, filter: &tidemq_protocol::TopicFilter) -> Vec<Arc<Message>> {
        let mut cursor = RetainedCursor::new(filter.clone(), tidemq_protocol::QoS::AtMostOnce);
        let mut out = Vec::new();
        self.next_batch(&mut cursor, usize::MAX, &mut out);
        out
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Recursion depth is bounded by the topic's levels (`max_topic_levels`).
fn remove_at(node: &mut Node, levels: &[&str]) -> Option<Arc<Message>> {
    let Some((first, rest)) = levels.split_first() else {
        return node.message.take();
    };
    let child = node.children.get_mut(*first)?;
    let removed = remove_at(child, rest);
    if child.is_empty() {
        node.children.remove(*first);
    }
    removed
}

/// One walk of the trie with a filter, collecting matches until `limit`.
///
/// `after` is where the walk resumes: `Some(rest)` while the node visited is
/// on the path of the cursor's last topic (`rest` being that topic's levels
/// below the node), `None` once the walk is past it, where everything
/// matching is taken. A node on the path is the last topic itself or a
/// level above it: both come before it in the order, so its own message is
/// skipped.
struct Walk<'o> {
    out: &'o mut Vec<Arc<Message>>,
    limit: usize,
}

impl Walk<'_> {
    fn full(&self) -> bool {
        self.out.len() >= self.limit
    }

    fn take(&mut self, node: &Node, after: Option<&[&str]>) {
        if let (None, Some(message)) = (after, &node.message) {
            self.out.push(Arc::clone(message));
        }
    }

    /// `at_root`: a `+` or `#` in the first level does not match topics that
    /// start with `$` [MQTT-4.7.2-1].
    fn filter(&mut self, node: &Node, filter: &[&str], after: Option<&[&str]>, at_root: bool) {
        if self.full() {
            return;
        }
        match filter.split_first() {
            None => self.take(node, after),
            Some((&"#", _)) => self.subtree(node, after, at_root),
            Some((&"+", rest)) => {
                for (level, child, child_after) in children_after(node, after) {
                    if at_root && level.starts_with('$') {
                        continue;
                    }
                    self.filter(child, rest, child_after, false);
                    if self.full() {
                        return;
                    }
                }
            }
            Some((level, rest)) => {
                let Some(child) = node.children.get(*level) else {
                    return;
                };
                let child_after = match after {
                    Some([next, below @ ..]) if next == level => Some(below),
                    // The cursor's topic is past this branch: nothing left.
                    Some([next, ..]) if *next > *level => return,
                    _ => None,
                };
                self.filter(child, rest, child_after, false);
            }
        }
    }

    /// `#`: the node itself ("a/#" matches "a") and everything below it.
    fn subtree(&mut self, node: &Node, after: Option<&[&str]>, at_root: bool) {
        self.take(node, after);
        for (level, child, child_after) in children_after(node, after) {
            if self.full() {
                return;
            }
            if at_root && level.starts_with('$') {
                continue;
            }
            self.subtree(child, child_after, false);
        }
    }
}

/// The children of `node` that can hold topics after the cursor, in order,
/// each with where the cursor stands below it.
fn children_after<'n, 'a>(node: &'n Node, after: Option<&'a [&'a str]>) -> ChildrenAfter<'n, 'a> {
    match after {
        Some([from, below @ ..]) => ChildrenAfter {
            range: node
                .children
                .range::<str, _>((Bound::Included(*from), Bound::Unbounded)),
            from: Some(from),
            below,
        },
        // On the cursor's topic itself, or past it: every child comes after.
        Some([]) | None => ChildrenAfter {
            range: node.children.range::<str, _>(..),
            from: None,
            below: &[],
        },
    }
}

struct ChildrenAfter<'n, 'a> {
    range: btree_map::Range<'n, Box<str>, Node>,
    /// The cursor's level at this depth: the child of that name is on its
    /// path, the later ones are past it.
    from: Option<&'a str>,
    below: &'a [&'a str],
}

impl<'n, 'a> Iterator for ChildrenAfter<'n, 'a> {
    type Item = (&'n str, &'n Node, Option<&'a [&'a str]>);

    fn next(&mut self) -> Option<Self::Item> {
        let (level, child) = self.range.next()?;
        let on_path = self.from == Some(&**level);
        Some((&**level, child, on_path.then_some(self.below)))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tidemq_protocol::{QoS, TopicFilter};

    use super::*;

    fn retained(topic: &str, payload: &'static [u8]) -> Arc<Message> {
        Arc::new(Message::new(
            TopicName::new(topic).unwrap(),
            Bytes::from_static(payload),
            QoS::AtMostOnce,
            true,
        ))
    }

    fn store(topics: &[&str]) -> Retained {
        let mut store = Retained::new(usize::MAX, usize::MAX);
        for topic in topics {
            store.update(&retained(topic, b"x"));
        }
        store
    }

    fn topics(messages: &[Arc<Message>]) -> Vec<&str> {
        messages.iter().map(|m| m.topic.as_str()).collect()
    }

    fn matching(store: &Retained, filter: &str) -> Vec<Arc<Message>> {
        store.matching(&TopicFilter::new(filter).unwrap())
    }

    const TOPICS: &[&str] = &[
        "a", "a/b", "a/b/c", "a/c", "b", "b/b", "$SYS/x", "/x", "a//c",
    ];

    #[test]
    fn filters_match_as_the_subscription_trie_does() {
        let store = store(TOPICS);
        let table: &[(&str, &[&str])] = &[
            ("#", &["/x", "a", "a//c", "a/b", "a/b/c", "a/c", "b", "b/b"]),
            ("a/#", &["a", "a//c", "a/b", "a/b/c", "a/c"]),
            ("a/+", &["a/b", "a/c"]),
            ("+/b", &["a/b", "b/b"]),
            ("+/+/c", &["a//c", "a/b/c"]),
            ("+", &["a", "b"]),
            ("a/b", &["a/b"]),
            ("z/#", &[]),
            ("$SYS/#", &["$SYS/x"]),
            ("+/x", &["/x"]),
        ];
        for (filter, expected) in table {
            assert_eq!(topics(&matching(&store, filter)), *expected, "{filter}");
        }
    }

    /// Every split of the matches into batches gives the same messages, in
    /// the same order, once each.
    #[test]
    fn a_cursor_resumes_after_its_last_topic() {
        let store = store(TOPICS);
        for filter in ["#", "a/#", "+/+", "+/+/c", "+"] {
            let whole = topics(&matching(&store, filter)).join(",");
            for batch in 1..=4 {
                let mut cursor =
                    RetainedCursor::new(TopicFilter::new(filter).unwrap(), QoS::AtMostOnce);
                let mut out = Vec::new();
                while store.next_batch(&mut cursor, batch, &mut out) {}
                assert_eq!(topics(&out).join(","), whole, "{filter} by {batch}");
            }
        }
    }

    #[test]
    fn mqtt_3_3_1_10_and_11_replace_and_clear() {
        let mut store = store(&["a/b"]);
        store.update(&retained("a/b", b"new"));
        assert_eq!(
            matching(&store, "a/b")[0].payload,
            Bytes::from_static(b"new")
        );
        assert_eq!(store.update(&retained("a/b", b"")), Update::Cleared);
        assert!(matching(&store, "#").is_empty());
        assert_eq!((store.len(), store.bytes()), (0, 0));
        assert!(store.root.is_empty(), "empty levels are pruned");
    }

    #[test]
    fn the_count_cap_refuses_new_topics_at_the_limit() {
        let mut store = Retained::new(2, usize::MAX);
        assert_eq!(store.update(&retained("a", b"1")), Update::Stored);
        assert_eq!(store.update(&retained("b", b"1")), Update::Stored);
        assert_eq!(store.update(&retained("c", b"1")), Update::Refused);
        assert_eq!(store.update(&retained("a", b"2")), Update::Stored);
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn the_byte_cap_refuses_and_clears_what_it_would_replace() {
        // "a" + 3 bytes = 4; "b" + 3 = 4: two fit in 8 bytes.
        let mut store = Retained::new(usize::MAX, 8);
        assert_eq!(store.update(&retained("a", b"123")), Update::Stored);
        assert_eq!(store.update(&retained("b", b"123")), Update::Stored);
        assert_eq!(store.update(&retained("c", b"1")), Update::Refused);
        assert_eq!(store.update(&retained("b", b"1234")), Update::Refused);
        assert_eq!(topics(&matching(&store, "#")), ["a"], "stale b is gone");
        assert_eq!(store.bytes(), 4);
    }
}
