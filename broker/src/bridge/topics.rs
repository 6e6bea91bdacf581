//! A bridge's `topics` lines, read as mosquitto reads its `topic` lines:
//! `PATTERN [in|out|both [QOS [LOCAL_PREFIX REMOTE_PREFIX]]]` (direction
//! `out` and QoS 0 when left out; `""` for an empty prefix, and as the
//! pattern, with both prefixes given, for one topic mapped to another:
//! `"" in 1 here/lamp there/lamp`). Prefixes are topic names (no
//! wildcards), as mosquitto checks them. Pure: parsing and the mapping of a
//! topic between the two sides, nothing else.
//!
//! | direction | subscribed on          | republished on                                 |
//! |-----------|------------------------|------------------------------------------------|
//! | `out`     | local: `LOCAL_PREFIX` + pattern  | remote: `REMOTE_PREFIX` + (topic - `LOCAL_PREFIX`) |
//! | `in`      | remote: `REMOTE_PREFIX` + pattern | local: `LOCAL_PREFIX` + (topic - `REMOTE_PREFIX`)  |
//! | `both`    | both                   | both                                           |

use tidemq_protocol::{QoS, TopicFilter, TopicName};

/// Which way a rule carries messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
    Both,
}

impl Direction {
    pub fn carries_out(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }

    pub fn carries_in(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }
}

/// One parsed `topics` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRule {
    pub direction: Direction,
    pub qos: QoS,
    /// `LOCAL_PREFIX` + pattern: the filter subscribed on this broker.
    pub local_filter: String,
    /// `REMOTE_PREFIX` + pattern: the filter subscribed on the remote.
    pub remote_filter: String,
    local_prefix: String,
    remote_prefix: String,
}

impl TopicRule {
    /// Parses one line; the error says what is wrong with it.
    pub fn parse(line: &str) -> Result<TopicRule, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (pattern, rest) = words.split_first().ok_or("is empty")?;
        let direction = match rest.first().copied() {
            None | Some("out") => Direction::Out,
            Some("in") => Direction::In,
            Some("both") => Direction::Both,
            Some(other) => return Err(format!("direction {other:?} is not in, out or both")),
        };
        let qos = match rest.get(1).copied() {
            None | Some("0") => QoS::AtMostOnce,
            Some("1") => QoS::AtLeastOnce,
            Some("2") => QoS::ExactlyOnce,
            Some(other) => return Err(format!("QoS {other:?} is not 0, 1 or 2")),
        };
        let (local_prefix, remote_prefix) = match rest.get(2..) {
            None | Some([]) => (String::new(), String::new()),
            Some([local, remote]) => (unquoted(local), unquoted(remote)),
            Some(_) => return Err("needs both prefixes or neither".to_owned()),
        };
        for prefix in [&local_prefix, &remote_prefix] {
            if prefix.contains(['+', '#']) {
                return Err(format!("prefix {prefix:?} has a wildcard"));
            }
        }
        // mosquitto's empty pattern: the prefixes are the whole topics.
        let pattern = unquoted(pattern);
        if pattern.is_empty() && (local_prefix.is_empty() || remote_prefix.is_empty()) {
            return Err("pattern \"\" needs a local and a remote topic as prefixes".to_owned());
        }
        let local_filter = format!("{local_prefix}{pattern}");
        let remote_filter = format!("{remote_prefix}{pattern}");
        for filter in [&local_filter, &remote_filter] {
            TopicFilter::new(filter).map_err(|error| format!("{filter:?}: {error}"))?;
        }
        Ok(TopicRule {
            direction,
            qos,
            local_filter,
            remote_filter,
            local_prefix,
            remote_prefix,
        })
    }

    /// The remote topic for a local one, if this rule carries it out.
    pub fn outgoing(&self, local: &str) -> Option<String> {
        if !self.direction.carries_out() || !matches(&self.local_filter, local) {
            return None;
        }
        let rest = local.strip_prefix(&self.local_prefix)?;
        Some(format!("{}{rest}", self.remote_prefix))
    }

    /// The local topic for a remote one, if this rule carries it in.
    pub fn incoming(&self, remote: &str) -> Option<String> {
        if !self.direction.carries_in() || !matches(&self.remote_filter, remote) {
            return None;
        }
        let rest = remote.strip_prefix(&self.remote_prefix)?;
        Some(format!("{}{rest}", self.local_prefix))
    }
}

/// A word of the line, with `""` read as the empty string.
fn unquoted(word: &str) -> String {
    match word {
        "\"\"" => String::new(),
        word => word.to_owned(),
    }
}

fn matches(filter: &str, topic: &str) -> bool {
    match (TopicFilter::new(filter), TopicName::new(topic)) {
        (Ok(filter), Ok(topic)) => filter.matches(&topic),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_pattern_goes_out_at_qos_0() {
        let rule = TopicRule::parse("sensors/#").unwrap();
        assert_eq!(rule.direction, Direction::Out);
        assert_eq!(rule.qos, QoS::AtMostOnce);
        assert_eq!(rule.outgoing("sensors/a").as_deref(), Some("sensors/a"));
        assert_eq!(rule.incoming("sensors/a"), None);
    }

    #[test]
    fn prefixes_are_swapped_as_mosquitto_does() {
        let rule = TopicRule::parse("t/# both 1 local/ remote/").unwrap();
        assert_eq!(rule.local_filter, "local/t/#");
        assert_eq!(rule.remote_filter, "remote/t/#");
        assert_eq!(rule.outgoing("local/t/x").as_deref(), Some("remote/t/x"));
        assert_eq!(rule.incoming("remote/t/x").as_deref(), Some("local/t/x"));
        assert_eq!(rule.outgoing("t/x"), None);
        let rule = TopicRule::parse("t/# in 2 \"\" site1/").unwrap();
        assert_eq!(rule.incoming("site1/t/y").as_deref(), Some("t/y"));
    }

    #[test]
    fn an_empty_pattern_maps_one_topic_to_another_as_mosquitto_does() {
        let rule = TopicRule::parse("\"\" both 1 here/lamp there/lamp").unwrap();
        assert_eq!(rule.local_filter, "here/lamp");
        assert_eq!(rule.remote_filter, "there/lamp");
        assert_eq!(rule.outgoing("here/lamp").as_deref(), Some("there/lamp"));
        assert_eq!(rule.incoming("there/lamp").as_deref(), Some("here/lamp"));
        assert_eq!(rule.outgoing("here/lamp/x"), None);
        assert_eq!(rule.incoming("there/lampshade"), None);
        assert!(TopicRule::parse("\"\" in 1").is_err());
        assert!(TopicRule::parse("\"\" in 1 \"\" there/lamp").is_err());
    }

    #[test]
    fn bad_lines_say_why() {
        assert!(TopicRule::parse("t in 1 here/+/ there/")
            .unwrap_err()
            .contains("wildcard"));
        assert!(TopicRule::parse("").is_err());
        assert!(TopicRule::parse("a sideways 1")
            .unwrap_err()
            .contains("direction"));
        assert!(TopicRule::parse("a in 3").unwrap_err().contains("QoS"));
        assert!(TopicRule::parse("a in 1 only-one").is_err());
        assert!(TopicRule::parse("a/#/b in 1").is_err());
    }
}
