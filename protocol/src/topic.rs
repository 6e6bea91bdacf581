//! Topic names (what a PUBLISH goes to) and topic filters (what a SUBSCRIBE
//! asks for), validated once at the edge so the router can trust them.

use std::fmt;
use std::sync::Arc;

use crate::error::SpecViolation;

/// Most levels a topic name or filter may have. The specification sets no
/// limit; mosquitto uses 200. Bounds the depth of the router's trie walk.
pub const MAX_TOPIC_LEVELS: usize = 200;

/// A topic name: non-empty UTF-8 without U+0000 and without wildcards.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(Arc<str>);

/// A topic filter: non-empty UTF-8 without U+0000, `+` and `#` only as whole
/// levels and `#` only last.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(Arc<str>);

/// The rules shared by names and filters, in one pass over the bytes.
/// Returns whether the string holds a wildcard character.
fn check_string(s: &str) -> Result<bool, SpecViolation> {
    if s.is_empty() {
        return Err(SpecViolation::EmptyTopic);
    }
    if s.len() > usize::from(u16::MAX) {
        return Err(SpecViolation::StringTooLong);
    }
    let mut separators = 0;
    let mut wildcard = false;
    for byte in s.bytes() {
        match byte {
            b'/' => separators += 1,
            b'\0' => return Err(SpecViolation::NullCharacter),
            b'+' | b'#' => wildcard = true,
            _ => {}
        }
    }
    if separators >= MAX_TOPIC_LEVELS {
        return Err(SpecViolation::TopicTooDeep);
    }
    Ok(wildcard)
}

impl TopicName {
    /// Validates a topic name [MQTT-4.7.3-1], [MQTT-1.5.3-2], [MQTT-3.3.2-2].
    pub fn new(s: &str) -> Result<TopicName, SpecViolation> {
        if check_string(s)? {
            return Err(SpecViolation::WildcardInTopicName);
        }
        Ok(TopicName(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The empty name a decoded MQTT 5 PUBLISH carries when it names its
    /// topic by alias alone [MQTT-3.3.2-12]; never routed.
    pub fn alias_only() -> TopicName {
        TopicName(Arc::from(""))
    }

    /// True only for the name of an alias-only MQTT 5 PUBLISH (made by the
    /// crate-private `alias_only`): a validated name is never empty
    /// [MQTT-4.7.3-1].
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Names that begin with `$` are not matched by a filter that begins
    /// with a wildcard [MQTT-4.7.2-1].
    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }

    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }
}

impl TopicFilter {
    /// Validates a topic filter [MQTT-4.7.1-2], [MQTT-4.7.1-3].
    pub fn new(s: &str) -> Result<TopicFilter, SpecViolation> {
        if !check_string(s)? {
            return Ok(TopicFilter(Arc::from(s)));
        }
        let mut levels = s.split('/').peekable();
        while let Some(level) = levels.next() {
            if level.contains('#') && (level != "#" || levels.peek().is_some()) {
                return Err(SpecViolation::MultiLevelWildcard);
            }
            if level.contains('+') && level != "+" {
                return Err(SpecViolation::SingleLevelWildcard);
            }
        }
        Ok(TopicFilter(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// Whether a message published to `name` matches this filter.
    pub fn matches(&self, name: &TopicName) -> bool {
        if name.is_system() && self.0.starts_with(['+', '#']) {
            return false;
        }
        let mut names = name.levels();
        for level in self.levels() {
            match (level, names.next()) {
                ("#", _) => return true,
                ("+", Some(_)) => {}
                (filter, Some(name)) if filter == name => {}
                _ => return false,
            }
        }
        names.next().is_none()
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> TopicName {
        TopicName::new(s).unwrap()
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::new(s).unwrap()
    }

    #[test]
    fn mqtt_3_3_2_2_wildcards_are_not_allowed_in_topic_names() {
        assert_eq!(
            TopicName::new("a/+"),
            Err(SpecViolation::WildcardInTopicName)
        );
        assert_eq!(
            TopicName::new("a/#"),
            Err(SpecViolation::WildcardInTopicName)
        );
        assert_eq!(
            TopicName::new("a+b"),
            Err(SpecViolation::WildcardInTopicName)
        );
    }

    #[test]
    fn mqtt_4_7_3_1_topics_are_at_least_one_character() {
        assert_eq!(TopicName::new(""), Err(SpecViolation::EmptyTopic));
        assert_eq!(TopicFilter::new(""), Err(SpecViolation::EmptyTopic));
        assert!(TopicName::new("/").is_ok());
    }

    #[test]
    fn mqtt_1_5_3_2_null_character_is_refused() {
        assert_eq!(TopicName::new("a\0b"), Err(SpecViolation::NullCharacter));
        assert_eq!(TopicFilter::new("a/\0"), Err(SpecViolation::NullCharacter));
    }

    #[test]
    fn mqtt_4_7_1_2_multi_level_wildcard_is_last_and_alone() {
        for bad in ["a/#/b", "a#", "a/b#", "#/a", "##"] {
            assert_eq!(
                TopicFilter::new(bad),
                Err(SpecViolation::MultiLevelWildcard),
                "{bad}"
            );
        }
        for good in ["#", "a/#", "/#", "+/#"] {
            assert!(TopicFilter::new(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn mqtt_4_7_1_3_single_level_wildcard_is_a_whole_level() {
        for bad in ["a+", "a/+b", "+a/b", "++"] {
            assert_eq!(
                TopicFilter::new(bad),
                Err(SpecViolation::SingleLevelWildcard),
                "{bad}"
            );
        }
        for good in ["+", "+/+", "a/+/b", "/+"] {
            assert!(TopicFilter::new(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn matching_table() {
        let table = [
            ("a/b/c", "a/b/c", true),
            ("a/b/c", "a/b", false),
            ("a/b", "a/b/c", false),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a/b/d", false),
            ("a/+", "a/", true),
            ("+/+", "/b", true),
            ("+", "/b", false),
            ("#", "a/b/c", true),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("a/#", "b/a", false),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("+/tennis/#", "sport/tennis/player1/ranking", true),
        ];
        for (f, n, expected) in table {
            assert_eq!(filter(f).matches(&name(n)), expected, "{f} vs {n}");
        }
    }

    #[test]
    fn mqtt_4_7_2_1_dollar_topics_are_not_matched_by_leading_wildcards() {
        assert!(!filter("#").matches(&name("$SYS/broker")));
        assert!(!filter("+/broker").matches(&name("$SYS/broker")));
        assert!(filter("$SYS/#").matches(&name("$SYS/broker")));
        assert!(filter("$SYS/+").matches(&name("$SYS/broker")));
    }
}
