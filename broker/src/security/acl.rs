//! The ACL file (`acl_file`, in mosquitto's syntax): which topics a client
//! may publish to (write) and receive from (read), and whether a SUBSCRIBE
//! filter can be granted at all. This module owns the parse and the
//! decision only: it keeps no per-connection state, does no I/O after
//! [`AclFile::load`], and never looks at subscriptions or sessions. It is
//! immutable once loaded, so any task may share it behind an `Arc`.
//!
//! | line                      | meaning                                             |
//! |---------------------------|-----------------------------------------------------|
//! | `# ...`, blank            | ignored (`#` only as the first non-blank character) |
//! | `user NAME`               | the `topic` lines that follow apply to NAME only    |
//! | `topic [ACCESS] FILTER`   | before any `user` line: anonymous clients only      |
//! | `pattern [ACCESS] FILTER` | every client; `%c` client id, `%u` user name        |
//!
//! ACCESS is `read`, `write`, `readwrite` or `deny`. As in mosquitto 2, a
//! rule of one word is a topic with access `readwrite` (so `topic read`
//! grants the topic named `read`); with more words the first must be an
//! access word and FILTER is the rest of the line, spaces included, so a
//! misspelt `topic raed a/b` is an error rather than a grant on `raed a/b`.
//! Repeated `user` sections for one name add to each other.
//!
//! The decision, as in mosquitto 2: access is refused unless an applicable
//! rule grants it, and a `deny` rule matching the topic refuses even when
//! another rule grants. The applicable rules are the client's own section
//! (the anonymous one for a client without a user name) plus every pattern.
//!
//! Substitution never widens a pattern: one with `%u` matches nothing for an
//! anonymous client, and one whose client id or user name holds `+`, `#` or
//! `/` matches nothing for that client (substituted, they would act as
//! wildcards or add levels). A pattern starting with `%c` or `%u` never
//! reaches a `$` topic, as if it started with a wildcard [MQTT-4.7.2-1].
//!
//! SUBSCRIBE, a tidemq addition (mosquitto's `acl_file` refuses none): a
//! filter is refused when no read-granting rule shares a topic with it, or
//! when a single `deny` rule covers all of it. Each delivery is still checked
//! with [`AclFile::allows`], so a filter allowed in part delivers that part.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// What a client asks to do with a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Receive the messages published to it.
    Read,
    /// Publish to it.
    Write,
}

/// Why an ACL file could not be loaded.
#[derive(Debug, Error)]
pub enum AclError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("cannot read ACL file {}: {source}", path.display())]
    Read {
        /// The file asked for.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// One line is not valid; the whole file is refused so that a typo
    /// never silently grants or withholds access.
    #[error("{origin}:{line}: {problem}")]
    Line {
        /// The file name (or the name given to [`AclFile::parse`]).
        origin: String,
        /// Counted from 1.
        line: usize,
        /// What is wrong with it.
        problem: LineProblem,
    },
}

/// What is wrong with one line of an ACL file.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LineProblem {
    /// The first word is not `user`, `topic` or `pattern`.
    #[error("unknown keyword `{0}` (expected `user`, `topic` or `pattern`)")]
    UnknownKeyword(String),
    /// `user` with nothing after it.
    #[error("`user` without a user name")]
    MissingUserName,
    /// `topic` or `pattern` with nothing after it.
    #[error("no topic after the keyword")]
    EmptyTopic,
    /// A rule of several words whose first is not an access word.
    #[error("unknown access `{0}` (expected `read`, `write`, `readwrite` or `deny`)")]
    UnknownAccess(String),
    /// `#` somewhere other than the last level [MQTT-4.7.1-1].
    #[error("`#` is not the last level of `{0}`")]
    HashNotLast(String),
    /// `+` or `#` sharing a level with other characters [MQTT-4.7.1-1], [MQTT-4.7.1-2].
    #[error("`+` or `#` is not alone in its level in `{0}`")]
    WildcardNotAlone(String),
}

/// The rules of one ACL file, indexed for the per-message check.
#[derive(Debug, Default)]
pub struct AclFile {
    /// `topic` lines before any `user` line.
    anonymous: RuleSet,
    /// `topic` lines by the user name of their section.
    users: HashMap<Box<str>, RuleSet>,
    /// `pattern` lines, for every client.
    patterns: RuleSet,
}

/// The access word of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RuleAccess {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl RuleAccess {
    fn from_word(word: &str) -> Option<Self> {
        match word {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "readwrite" => Some(Self::ReadWrite),
            "deny" => Some(Self::Deny),
            _ => None,
        }
    }

    fn grants(self, access: Access) -> bool {
        matches!(
            (self, access),
            (Self::Read | Self::ReadWrite, Access::Read)
                | (Self::Write | Self::ReadWrite, Access::Write)
        )
    }
}

/// Rules split by kind, so that the denials can be checked first and the
/// grants can stop at the first match.
#[derive(Debug, Default)]
struct RuleSet {
    denies: Vec<Filter>,
    grants: Vec<(Filter, RuleAccess)>,
}

impl RuleSet {
    fn add(&mut self, access: RuleAccess, filter: Filter) {
        match access {
            RuleAccess::Deny => self.denies.push(filter),
            _ => self.grants.push((filter, access)),
        }
    }

    fn len(&self) -> usize {
        self.denies.len() + self.grants.len()
    }
}

/// A rule's topic filter, split into levels once at load.
#[derive(Debug)]
struct Filter {
    /// As written; what `may_subscribe` compares when nothing is substituted.
    text: Box<str>,
    levels: Box<[Level]>,
    /// Early outs: a pattern whose values this client lacks is skipped
    /// before the topic is walked.
    needs_client_id: bool,
    needs_user: bool,
    /// Whether a topic starting with `$` can never match: the first level is
    /// a wildcard [MQTT-4.7.2-1], or starts with a substitution (the client,
    /// not the file, would then decide whether the rule names a `$` topic).
    dollar_blind: bool,
}

#[derive(Debug)]
enum Level {
    /// Compared byte for byte.
    Exact(Box<str>),
    /// A pattern level holding `%c` or `%u`, compared piece by piece.
    Template(Box<[Piece]>),
    /// `+`
    AnyOne,
    /// `#`
    AnyRest,
}

#[derive(Debug)]
enum Piece {
    Text(Box<str>),
    ClientId,
    UserName,
}

/// The values a pattern substitutes for one client. Each is `None` when the
/// client has none, or when it holds `+`, `#` or `/`: substituted, those
/// would turn one level of the rule into a wildcard or into several levels,
/// widening what the file grants, so a pattern needing that value matches
/// nothing for this client.
struct Who<'a> {
    client_id: Option<&'a str>,
    user: Option<&'a str>,
}

impl<'a> Who<'a> {
    fn new(user: Option<&'a str>, client_id: &'a str) -> Self {
        let safe = |value: &&str| !value.contains(['+', '#', '/']);
        Who {
            client_id: Some(client_id).filter(safe),
            user: user.filter(safe),
        }
    }
}

impl Piece {
    fn value<'a>(&'a self, who: &Who<'a>) -> Option<&'a str> {
        match self {
            Piece::Text(text) => Some(text),
            Piece::ClientId => who.client_id,
            Piece::UserName => who.user,
        }
    }
}

impl AclFile {
    /// Reads and parses the file at `path`; errors name the file and line.
    pub fn load(path: &Path) -> Result<AclFile, AclError> {
        let text = std::fs::read_to_string(path).map_err(|source| AclError::Read {
            path: path.to_owned(),
            source,
        })?;
        let acl = Self::parse(&path.display().to_string(), &text)?;
        tracing::debug!(
            path = %path.display(),
            users = acl.users.len(),
            patterns = acl.patterns.len(),
            "ACL file loaded"
        );
        Ok(acl)
    }

    /// Parses the text of an ACL file; `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> Result<AclFile, AclError> {
        let mut acl = AclFile::default();
        let mut section: Option<&str> = None;
        for (index, raw) in text.lines().enumerate() {
            let at = |problem| AclError::Line {
                origin: origin.to_owned(),
                line: index + 1,
                problem,
            };
            match parse_line(raw).map_err(at)? {
                Line::Nothing => {}
                Line::User(name) => section = Some(name),
                Line::Topic(access, text) => {
                    let filter = Filter::parse(text, false).map_err(at)?;
                    acl.section_mut(section).add(access, filter);
                }
                Line::Pattern(access, text) => {
                    let filter = Filter::parse(text, true).map_err(at)?;
                    acl.patterns.add(access, filter);
                }
            }
        }
        Ok(acl)
    }

    /// Whether this client may `access` the topic name `topic` (already
    /// validated by the protocol layer: no wildcards).
    ///
    /// Cost: one hash of the user name, then at most one walk of
    /// `topic.split('/')` per applicable rule, comparing level by level; a
    /// `%c`/`%u` level is compared piece by piece against the topic level,
    /// so nothing is allocated. Rules are scanned in a list, as mosquitto
    /// does; a file with thousands of rules per user would want a trie.
    pub fn allows(&self, user: Option<&str>, client_id: &str, topic: &str, access: Access) -> bool {
        let who = Who::new(user, client_id);
        let sets = self.applicable(user);
        let denied = sets
            .clone()
            .flat_map(|set| &set.denies)
            .any(|filter| filter.matches(topic, &who));
        !denied
            && sets
                .flat_map(|set| &set.grants)
                .any(|(filter, rule)| rule.grants(access) && filter.matches(topic, &who))
    }

    /// Whether a SUBSCRIBE to `filter` may be granted: false when no
    /// read-granting rule shares a topic with it, or when one `deny` rule
    /// covers every topic it can match (an invalid filter is refused too).
    /// A filter allowed only in part is granted; each delivery is then
    /// checked with [`AclFile::allows`]. Runs once per SUBSCRIBE filter, so
    /// substituted patterns are built into a `String` here.
    pub fn may_subscribe(&self, user: Option<&str>, client_id: &str, filter: &str) -> bool {
        if Filter::parse(filter, false).is_err() {
            return false;
        }
        let who = Who::new(user, client_id);
        let sets = self.applicable(user);
        let denied = sets
            .clone()
            .flat_map(|set| &set.denies)
            .filter_map(|rule| rule.resolve(&who))
            .any(|rule| filter_covers(&rule, filter));
        !denied
            && sets
                .flat_map(|set| &set.grants)
                .filter(|(_, access)| access.grants(Access::Read))
                .filter_map(|(rule, _)| rule.resolve(&who))
                .any(|rule| filters_intersect(&rule, filter))
    }

    /// The client's own section (if the file has one), then the patterns;
    /// cloned rather than called twice, so the user name is hashed once.
    fn applicable(&self, user: Option<&str>) -> impl Iterator<Item = &RuleSet> + Clone {
        let own = match user {
            None => Some(&self.anonymous),
            Some(name) => self.users.get(name),
        };
        own.into_iter().chain(std::iter::once(&self.patterns))
    }

    fn section_mut(&mut self, user: Option<&str>) -> &mut RuleSet {
        match user {
            None => &mut self.anonymous,
            Some(name) => self.users.entry(name.into()).or_default(),
        }
    }
}

/// One meaningful line, borrowing from the file's text.
enum Line<'a> {
    Nothing,
    User(&'a str),
    Topic(RuleAccess, &'a str),
    Pattern(RuleAccess, &'a str),
}

fn parse_line(raw: &str) -> Result<Line<'_>, LineProblem> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(Line::Nothing);
    }
    let (keyword, rest) = split_word(line);
    match keyword {
        "user" if rest.is_empty() => Err(LineProblem::MissingUserName),
        "user" => Ok(Line::User(rest)),
        "topic" => parse_rule(rest).map(|(access, text)| Line::Topic(access, text)),
        "pattern" => parse_rule(rest).map(|(access, text)| Line::Pattern(access, text)),
        other => Err(LineProblem::UnknownKeyword(other.to_owned())),
    }
}

/// The access and the topic of a `topic` or `pattern` line: one word is a
/// topic with access `readwrite`; more words start with the access.
fn parse_rule(rest: &str) -> Result<(RuleAccess, &str), LineProblem> {
    if rest.is_empty() {
        return Err(LineProblem::EmptyTopic);
    }
    match split_word(rest) {
        (topic, "") => Ok((RuleAccess::ReadWrite, topic)),
        (word, topic) => RuleAccess::from_word(word)
            .map(|access| (access, topic))
            .ok_or_else(|| LineProblem::UnknownAccess(word.to_owned())),
    }
}

/// The first word of a trimmed line and the rest, without its leading blanks.
fn split_word(line: &str) -> (&str, &str) {
    match line.split_once([' ', '\t']) {
        Some((word, rest)) => (word, rest.trim_start()),
        None => (line, ""),
    }
}

impl Filter {
    /// Splits and checks a filter; `substitute` reads `%c` and `%u` (patterns only).
    fn parse(text: &str, substitute: bool) -> Result<Filter, LineProblem> {
        if text.is_empty() {
            return Err(LineProblem::EmptyTopic);
        }
        let mut levels = Vec::new();
        let mut parts = text.split('/').peekable();
        while let Some(part) = parts.next() {
            let last = parts.peek().is_none();
            levels.push(parse_level(text, part, last, substitute)?);
        }
        let pieces = || {
            levels.iter().flat_map(|level| match level {
                Level::Template(pieces) => &pieces[..],
                _ => &[],
            })
        };
        let dollar_blind = match levels.first() {
            Some(Level::AnyOne | Level::AnyRest) => true,
            Some(Level::Template(pieces)) => !matches!(pieces.first(), Some(Piece::Text(_))),
            _ => false,
        };
        Ok(Filter {
            text: text.into(),
            needs_client_id: pieces().any(|piece| matches!(piece, Piece::ClientId)),
            needs_user: pieces().any(|piece| matches!(piece, Piece::UserName)),
            dollar_blind,
            levels: levels.into(),
        })
    }

    /// Whether this rule's values exist (and are safe) for the client.
    fn applies_to(&self, who: &Who) -> bool {
        (!self.needs_client_id || who.client_id.is_some())
            && (!self.needs_user || who.user.is_some())
    }

    /// MQTT topic matching (section 4.7) of this rule against a topic name.
    fn matches(&self, topic: &str, who: &Who) -> bool {
        if !self.applies_to(who) || (self.dollar_blind && topic.starts_with('$')) {
            return false;
        }
        let mut names = topic.split('/');
        for level in self.levels.iter() {
            let matched = match level {
                Level::AnyRest => return true,
                Level::AnyOne => names.next().is_some(),
                Level::Exact(text) => names.next() == Some(&**text),
                Level::Template(pieces) => names
                    .next()
                    .is_some_and(|name| template_matches(pieces, name, who)),
            };
            if !matched {
                return false;
            }
        }
        names.next().is_none()
    }

    /// The rule as a plain filter for this client, or `None` when it cannot
    /// match any of the client's topics.
    fn resolve<'a>(&'a self, who: &Who<'a>) -> Option<Cow<'a, str>> {
        if !self.applies_to(who) {
            return None;
        }
        if !self.needs_client_id && !self.needs_user {
            return Some(Cow::Borrowed(&self.text));
        }
        let mut out = String::with_capacity(self.text.len());
        for (index, level) in self.levels.iter().enumerate() {
            if index > 0 {
                out.push('/');
            }
            match level {
                Level::Exact(text) => out.push_str(text),
                Level::AnyOne => out.push('+'),
                Level::AnyRest => out.push('#'),
                Level::Template(pieces) => {
                    for piece in pieces.iter() {
                        out.push_str(piece.value(who)?);
                    }
                }
            }
        }
        // The same rule as `dollar_blind` in `matches`: a `$` brought in by
        // a substituted value names no topic.
        if self.dollar_blind && out.starts_with('$') {
            return None;
        }
        Some(Cow::Owned(out))
    }
}

fn parse_level(
    filter: &str,
    part: &str,
    last: bool,
    substitute: bool,
) -> Result<Level, LineProblem> {
    match part {
        "#" if last => Ok(Level::AnyRest),
        "#" => Err(LineProblem::HashNotLast(filter.to_owned())),
        "+" => Ok(Level::AnyOne),
        _ if part.contains(['+', '#']) => Err(LineProblem::WildcardNotAlone(filter.to_owned())),
        _ if substitute && (part.contains("%c") || part.contains("%u")) => {
            Ok(Level::Template(parse_template(part).into()))
        }
        _ => Ok(Level::Exact(part.into())),
    }
}

/// Splits a pattern level at each `%c` and `%u`; any other `%` is text.
fn parse_template(part: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = part;
    while let Some((before, after)) = rest.split_once('%') {
        text.push_str(before);
        let (piece, after) = if let Some(after) = after.strip_prefix('c') {
            (Piece::ClientId, after)
        } else if let Some(after) = after.strip_prefix('u') {
            (Piece::UserName, after)
        } else {
            text.push('%');
            rest = after;
            continue;
        };
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut text).into()));
        }
        pieces.push(piece);
        rest = after;
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(text.into()));
    }
    pieces
}

/// Whether one topic level equals the template with the client's values in
/// place. A level holds no wildcard, so a left-to-right prefix walk decides.
fn template_matches(pieces: &[Piece], name: &str, who: &Who) -> bool {
    let mut rest = name;
    for piece in pieces {
        let Some(after) = piece.value(who).and_then(|value| rest.strip_prefix(value)) else {
            return false;
        };
        rest = after;
    }
    rest.is_empty()
}

/// Whether the filter's first level is `+` or `#`, so that it matches no
/// topic starting with `$` [MQTT-4.7.2-1].
fn starts_with_wildcard(filter: &str) -> bool {
    matches!(filter.split('/').next(), Some("+" | "#"))
}

/// Whether some topic name is matched by both (valid) filters.
fn filters_intersect(a: &str, b: &str) -> bool {
    // A filter starting with `$` matches only `$` topics; one starting with
    // a wildcard matches none.
    if (starts_with_wildcard(a) && b.starts_with('$'))
        || (starts_with_wildcard(b) && a.starts_with('$'))
    {
        return false;
    }
    let (mut a, mut b) = (a.split('/'), b.split('/'));
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) | (None, None) => return true,
            (Some(x), Some(y)) if x == "+" || y == "+" || x == y => {}
            _ => return false,
        }
    }
}

/// Whether every topic name `narrow` matches is also matched by `wide`
/// (both valid filters).
fn filter_covers(wide: &str, narrow: &str) -> bool {
    if starts_with_wildcard(wide) && narrow.starts_with('$') {
        return false;
    }
    // `#` alone matches every topic without `$`; so does `+/#`, because
    // every topic has a first level and `#` also matches its parent.
    if narrow == "#" {
        return wide == "#" || wide == "+/#";
    }
    let (mut w, mut n) = (wide.split('/'), narrow.split('/'));
    loop {
        match (w.next(), n.next()) {
            (Some("#"), _) | (None, None) => return true,
            // `narrow` goes on to any depth; `wide` (not `#` here) does not.
            (_, Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(x), Some(y)) if x == y => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> AclFile {
        AclFile::parse("test.acl", text).expect("valid ACL text")
    }

    fn problem_at(text: &str) -> (usize, LineProblem, String) {
        let error = AclFile::parse("bad.acl", text).expect_err("invalid ACL text");
        let shown = error.to_string();
        match error {
            AclError::Line { line, problem, .. } => (line, problem, shown),
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    const R: Access = Access::Read;
    const W: Access = Access::Write;

    #[test]
    fn anonymous_section_applies_only_to_anonymous_clients() {
        let acl = parsed("topic open/#\nuser alice\ntopic alice/#\n");
        assert!(acl.allows(None, "c", "open/x", R));
        assert!(acl.allows(None, "c", "open/x", W));
        assert!(!acl.allows(Some("alice"), "c", "open/x", R));
        assert!(!acl.allows(Some("bob"), "c", "open/x", R));
        assert!(!acl.allows(None, "c", "alice/x", R));
    }

    #[test]
    fn user_section_applies_only_to_that_user() {
        let acl = parsed("user alice\ntopic alice/#\nuser bob\ntopic bob/#\n");
        assert!(acl.allows(Some("alice"), "c", "alice/x", W));
        assert!(!acl.allows(Some("bob"), "c", "alice/x", W));
        assert!(!acl.allows(Some("Alice"), "c", "alice/x", W));
        assert!(acl.allows(Some("bob"), "c", "bob/x", R));
    }

    #[test]
    fn repeated_user_sections_add_to_each_other() {
        let acl = parsed("user alice\ntopic a\nuser bob\ntopic b\nuser alice\ntopic c\n");
        assert!(acl.allows(Some("alice"), "c", "a", R));
        assert!(acl.allows(Some("alice"), "c", "c", R));
        assert!(!acl.allows(Some("alice"), "c", "b", R));
    }

    #[test]
    fn pattern_substitutes_the_client_id() {
        let acl = parsed("pattern write devices/%c/state\npattern read cmd/dev-%c\n");
        assert!(acl.allows(None, "d1", "devices/d1/state", W));
        assert!(acl.allows(Some("u"), "d1", "devices/d1/state", W));
        assert!(!acl.allows(None, "d1", "devices/d2/state", W));
        assert!(!acl.allows(None, "d1", "devices/d1/state", R));
        assert!(acl.allows(None, "d1", "cmd/dev-d1", R));
        assert!(!acl.allows(None, "d1", "cmd/dev-d12", R));
        assert!(!acl.allows(None, "d1", "cmd/d1", R));
    }

    #[test]
    fn pattern_substitutes_the_user_name_and_mixes_with_the_client_id() {
        let acl = parsed("pattern home/%u/#\npattern x/%u-%c\n");
        assert!(acl.allows(Some("alice"), "c", "home/alice/lamp", W));
        assert!(!acl.allows(Some("alice"), "c", "home/bob/lamp", W));
        assert!(acl.allows(Some("al"), "ice", "x/al-ice", R));
        assert!(!acl.allows(Some("al"), "ice", "x/alice", R));
    }

    #[test]
    fn pattern_with_user_name_never_matches_an_anonymous_client() {
        let acl = parsed("pattern home/%u/#\npattern home/%u\n");
        assert!(!acl.allows(None, "c", "home//x", R));
        assert!(!acl.allows(None, "c", "home/", R));
        assert!(!acl.allows(None, "c", "home/%u", R));
        assert!(!acl.may_subscribe(None, "c", "home/#"));
    }

    #[test]
    fn pattern_substitution_with_a_wildcard_or_separator_matches_nothing() {
        let acl = parsed("pattern c/%c\npattern u/%u/#\n");
        assert!(!acl.allows(None, "a/b", "c/a/b", R));
        assert!(!acl.allows(None, "+", "c/+", R));
        assert!(!acl.allows(None, "+", "c/x", R));
        assert!(!acl.allows(None, "#", "c/#", R));
        assert!(!acl.allows(Some("x/y"), "c", "u/x/y/z", R));
        assert!(!acl.allows(Some("#"), "c", "u/#/z", R));
        assert!(!acl.may_subscribe(None, "+", "c/+"));
        assert!(!acl.may_subscribe(Some("#"), "c", "u/#"));
    }

    #[test]
    fn pattern_starting_with_a_substitution_does_not_reach_dollar_topics() {
        let acl = parsed("pattern %c/#\npattern $%u/#\n");
        assert!(acl.allows(None, "dev", "dev/x", R));
        assert!(!acl.allows(None, "$SYS", "$SYS/broker/load", R));
        assert!(!acl.may_subscribe(None, "$SYS", "$SYS/#"));
        // A `$` written in the file itself still counts.
        assert!(acl.allows(Some("u"), "c", "$u/x", R));
    }

    #[test]
    fn pattern_without_substitution_applies_to_everyone_wherever_it_stands() {
        let acl = parsed("user alice\npattern read news/#\ntopic alice\n");
        assert!(acl.allows(None, "c", "news/x", R));
        assert!(acl.allows(Some("bob"), "c", "news/x", R));
        assert!(!acl.allows(Some("bob"), "c", "news/x", W));
        // The `topic` after the pattern is still in alice's section.
        assert!(acl.allows(Some("alice"), "c", "alice", R));
        assert!(!acl.allows(None, "c", "alice", R));
    }

    #[test]
    fn deny_beats_readwrite_whatever_the_order() {
        let acl = parsed("user u\ntopic a/#\ntopic deny a/secret\ntopic deny b/#\ntopic b/+\n");
        assert!(acl.allows(Some("u"), "c", "a/public", W));
        assert!(!acl.allows(Some("u"), "c", "a/secret", R));
        assert!(!acl.allows(Some("u"), "c", "a/secret", W));
        assert!(!acl.allows(Some("u"), "c", "b/x", R));
    }

    #[test]
    fn pattern_deny_beats_a_user_grant() {
        let acl = parsed("user u\ntopic readwrite #\npattern deny private/%c\n");
        assert!(acl.allows(Some("u"), "c", "private/other", R));
        assert!(!acl.allows(Some("u"), "c", "private/c", R));
    }

    #[test]
    fn read_only_rule_refuses_write_and_write_only_refuses_read() {
        let acl = parsed("topic read r/#\ntopic write w/#\ntopic rw/#\n");
        assert!(acl.allows(None, "c", "r/x", R));
        assert!(!acl.allows(None, "c", "r/x", W));
        assert!(acl.allows(None, "c", "w/x", W));
        assert!(!acl.allows(None, "c", "w/x", R));
        assert!(acl.allows(None, "c", "rw/x", R));
        assert!(acl.allows(None, "c", "rw/x", W));
    }

    #[test]
    fn nothing_is_allowed_without_a_rule() {
        let acl = parsed("");
        assert!(!acl.allows(None, "c", "a", R));
        assert!(!acl.allows(Some("u"), "c", "a", W));
        assert!(!acl.may_subscribe(None, "c", "#"));
    }

    #[test]
    fn hash_rule_does_not_grant_dollar_sys_but_an_explicit_rule_does() {
        let acl = parsed("user u\ntopic #\ntopic +/x\nuser admin\ntopic read $SYS/#\n");
        assert!(acl.allows(Some("u"), "c", "anything/at/all", R));
        assert!(!acl.allows(Some("u"), "c", "$SYS/broker/uptime", R));
        assert!(!acl.allows(Some("u"), "c", "$SYS/x", R));
        assert!(acl.allows(Some("admin"), "c", "$SYS/broker/uptime", R));
        assert!(acl.allows(Some("admin"), "c", "$SYS", R));
        assert!(!acl.allows(Some("admin"), "c", "$SYS/broker/uptime", W));
    }

    #[test]
    fn topic_matching_follows_the_spec() {
        let acl = parsed("topic a/#\ntopic +/b\ntopic c/+\ntopic d//e\ntopic /f\n");
        for (topic, allowed) in [
            ("a", true),
            ("a/x/y", true),
            ("ab", false),
            ("x/b", true),
            ("/b", true),
            ("x/b/c", false),
            ("c/", true),
            ("c", false),
            ("c/x/y", false),
            ("d//e", true),
            ("d/e", false),
            ("/f", true),
            ("f", false),
        ] {
            assert_eq!(acl.allows(None, "c", topic, R), allowed, "{topic}");
        }
    }

    #[test]
    fn user_name_and_topic_may_contain_spaces() {
        let acl = parsed("user Jane Doe\ntopic read my room/temp\npattern write %u's room\n");
        assert!(acl.allows(Some("Jane Doe"), "c", "my room/temp", R));
        assert!(!acl.allows(Some("Jane"), "c", "my room/temp", R));
        assert!(acl.allows(Some("Jane Doe"), "c", "Jane Doe's room", W));
    }

    #[test]
    fn one_word_rule_is_a_readwrite_topic_even_when_it_is_an_access_word() {
        let acl = parsed("topic read\npattern deny\n");
        assert!(acl.allows(None, "c", "read", W));
        assert!(acl.allows(None, "c", "deny", R));
        assert!(!acl.allows(None, "c", "x", R));
    }

    #[test]
    fn comments_blank_lines_and_surrounding_blanks_are_ignored() {
        let text =
            "# a comment\n\n   \n  # indented comment\r\n\tuser  bob \r\n\ttopic\tread  a/b  \r\n";
        let acl = parsed(text);
        assert!(acl.allows(Some("bob"), "c", "a/b", R));
        assert!(!acl.allows(Some("bob"), "c", "a/b", W));
        assert!(!acl.allows(None, "c", "# a comment", R));
    }

    #[test]
    fn each_load_error_names_its_line() {
        use LineProblem as P;
        let cases = [
            ("topic a\nusr bob\n", 2, P::UnknownKeyword("usr".into())),
            (
                "\n\ntopic readonly a/b\n",
                3,
                P::UnknownAccess("readonly".into()),
            ),
            ("topic my room\n", 1, P::UnknownAccess("my".into())),
            ("# c\ntopic\n", 2, P::EmptyTopic),
            ("pattern \n", 1, P::EmptyTopic),
            ("user\n", 1, P::MissingUserName),
            ("topic a\ntopic a/#/b\n", 2, P::HashNotLast("a/#/b".into())),
            ("topic read #/b\n", 1, P::HashNotLast("#/b".into())),
            ("topic a/b#\n", 1, P::WildcardNotAlone("a/b#".into())),
            (
                "\npattern read a/x+/%c\n",
                2,
                P::WildcardNotAlone("a/x+/%c".into()),
            ),
        ];
        for (text, line, problem) in cases {
            let (got_line, got_problem, shown) = problem_at(text);
            assert_eq!((got_line, &got_problem), (line, &problem), "{text:?}");
            assert!(shown.starts_with(&format!("bad.acl:{line}: ")), "{shown}");
        }
    }

    #[test]
    fn load_reads_a_file_and_its_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("tidemq-acl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.acl");
        let bad = dir.join("bad.acl");
        std::fs::write(&good, "user u\ntopic read a\n").unwrap();
        std::fs::write(&bad, "topic a\nbogus\n").unwrap();
        assert!(AclFile::load(&good).unwrap().allows(Some("u"), "c", "a", R));
        let error = AclFile::load(&bad).unwrap_err().to_string();
        assert!(
            error.contains("bad.acl:2: unknown keyword `bogus`"),
            "{error}"
        );
        let missing = AclFile::load(&dir.join("missing.acl")).unwrap_err();
        assert!(matches!(missing, AclError::Read { .. }), "{missing:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn filters_intersect_on_a_table_of_cases() {
        for (a, b, expected) in [
            ("a/+/c", "a/b/#", true),
            ("a/b", "a/c", false),
            ("a/b", "a/b", true),
            ("a/+", "+/b", true),
            ("a/+", "a", false),
            ("a/#", "a", true),
            ("a/b/c", "a/#", true),
            ("a/b/c", "a/+", false),
            ("#", "x/y/z", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("+", "$SYS", false),
            ("$SYS/#", "$SYS/broker/x", true),
            ("$SYS/#", "#", false),
            ("$SYS/+", "$SYS/#", true),
            ("+/+", "#", true),
            ("/+", "+/x", true),
            ("a//b", "a/+/b", true),
            ("a//b", "a/x/b", false),
        ] {
            assert_eq!(filters_intersect(a, b), expected, "{a} ∩ {b}");
            assert_eq!(filters_intersect(b, a), expected, "{b} ∩ {a}");
        }
    }

    #[test]
    fn filter_covers_on_a_table_of_cases() {
        for (wide, narrow, expected) in [
            ("#", "a/b", true),
            ("#", "#", true),
            ("#", "+/x", true),
            ("#", "$SYS/x", false),
            ("#", "$SYS/#", false),
            ("+/#", "#", true),
            ("+/#", "$SYS/x", false),
            ("+/+/#", "#", false),
            ("$SYS/#", "$SYS/broker/+", true),
            ("$SYS/#", "$SYS", true),
            ("a/#", "a", true),
            ("a/#", "a/#", true),
            ("a/#", "#", false),
            ("a/+", "a/b", true),
            ("a/+", "a/+", true),
            ("a/+", "a/#", false),
            ("a/+", "a/b/c", false),
            ("a/b", "a/+", false),
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/b", "a", false),
            ("a", "a/b", false),
            ("a/+/#", "a/#", false),
            ("a/+/#", "a/b/#", true),
            ("+", "a", true),
            ("+", "+", true),
            ("+", "#", false),
        ] {
            assert_eq!(filter_covers(wide, narrow), expected, "{wide} ⊇ {narrow}");
        }
    }

    #[test]
    fn may_subscribe_to_exactly_an_allowed_filter() {
        let acl = parsed("user u\ntopic read a/b\ntopic read s/#\n");
        assert!(acl.may_subscribe(Some("u"), "c", "a/b"));
        assert!(acl.may_subscribe(Some("u"), "c", "s/#"));
        assert!(acl.may_subscribe(Some("u"), "c", "s/x/+"));
    }

    #[test]
    fn may_subscribe_to_a_wider_filter_allowed_in_part() {
        let acl = parsed("user u\ntopic read a/b\n");
        assert!(acl.may_subscribe(Some("u"), "c", "a/+"));
        assert!(acl.may_subscribe(Some("u"), "c", "#"));
        assert!(acl.may_subscribe(Some("u"), "c", "+/b"));
    }

    #[test]
    fn may_not_subscribe_to_a_filter_wholly_outside_the_rules() {
        let acl = parsed("user u\ntopic read a/b\ntopic write w/#\npattern read p/%c\n");
        assert!(!acl.may_subscribe(Some("u"), "c", "a/c"));
        assert!(!acl.may_subscribe(Some("u"), "c", "a/b/c"));
        assert!(!acl.may_subscribe(Some("u"), "c", "w/#"));
        assert!(!acl.may_subscribe(Some("u"), "c", "p/other"));
        assert!(acl.may_subscribe(Some("u"), "c", "p/c"));
        assert!(acl.may_subscribe(Some("u"), "c", "p/+"));
        assert!(!acl.may_subscribe(Some("v"), "c", "a/b"));
    }

    #[test]
    fn may_not_subscribe_to_everything_with_only_dollar_sys_read() {
        let acl = parsed("user admin\ntopic read $SYS/#\n");
        assert!(!acl.may_subscribe(Some("admin"), "c", "#"));
        assert!(!acl.may_subscribe(Some("admin"), "c", "+/broker/#"));
        assert!(acl.may_subscribe(Some("admin"), "c", "$SYS/#"));
        assert!(acl.may_subscribe(Some("admin"), "c", "$SYS/broker/+"));
    }

    #[test]
    fn may_not_subscribe_to_a_filter_wholly_covered_by_a_deny() {
        let acl = parsed("user u\ntopic read a/#\ntopic deny a/secret/#\npattern deny own/%c/#\npattern read own/#\n");
        assert!(!acl.may_subscribe(Some("u"), "c", "a/secret/#"));
        assert!(!acl.may_subscribe(Some("u"), "c", "a/secret/+/x"));
        assert!(!acl.may_subscribe(Some("u"), "c", "a/secret"));
        assert!(acl.may_subscribe(Some("u"), "c", "a/+/x"));
        assert!(acl.may_subscribe(Some("u"), "c", "a/#"));
        assert!(!acl.may_subscribe(Some("u"), "c", "own/c/x"));
        assert!(acl.may_subscribe(Some("u"), "c", "own/d/x"));
    }

    #[test]
    fn may_not_subscribe_to_an_invalid_filter() {
        let acl = parsed("topic #\n");
        assert!(!acl.may_subscribe(None, "c", "a/#/b"));
        assert!(!acl.may_subscribe(None, "c", "a+"));
        assert!(!acl.may_subscribe(None, "c", ""));
    }
}
