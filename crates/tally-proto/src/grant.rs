//! Grants: which actions a principal may take on which counters.
//!
//! A grant is written `PATTERN=ACTION[<=CAP],ACTION…`, for example `likes:*=read,increment<=1`.
//! The same text is used by `--anonymous`, by `tally token --grant`, by API keys and inside a
//! token's `tally.grants` claim, so it is parsed here, once, for the server and every client.
//!
//! - `PATTERN` is an exact counter name, or a prefix ending in `*` (`likes:*`; `*` alone is
//!   every counter). `{sub}` stands for the token's subject: `user:{sub}:*` lets each user
//!   reach only their own counters. `{sub}` must be followed by `:` or end the pattern, and
//!   matches only subjects made of `A-Z a-z 0-9 _ . -` (no `:`), taken literally: so one
//!   subject can never reach into another's namespace (`alice` and `alice:x`, or `a` and `ab`).
//! - `ACTION` is `read` (getValue, getMetadata, getHistory, watch), `increment`, `decrement`,
//!   `set` (setValue), `reset`, or `admin` (all of them, uncapped, plus `by` in updates and
//!   history, and the key RPCs when the pattern is `*`).
//! - `<=CAP` caps the amount of one `increment` or `decrement`, or the magnitude of the value
//!   of one `set` (`set<=100` allows -100..=100).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, ProtocolError};
use crate::limits::{MAX_SAFE_INTEGER, NAME_MAX_BYTES};

/// The grant syntax, worded for error messages.
pub const GRANT_SYNTAX: &str = "PATTERN=ACTION[<=CAP],... where PATTERN is a counter name or a \
prefix ending in * (may contain {sub}) and ACTION is read, increment, decrement, set, reset or \
admin; CAP (increment, decrement, set only) is a whole number >= 1";

/// Something a principal may do to a counter.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// getValue, getMetadata, getHistory and watching.
    Read,
    /// counter.increment.
    Increment,
    /// counter.decrement.
    Decrement,
    /// counter.setValue.
    Set,
    /// counter.reset.
    Reset,
    /// Everything, uncapped, and counter.delete; also sees who made each change (`by`).
    Admin,
}

impl Action {
    /// Every action, in documentation order.
    pub const ALL: [Action; 6] = [
        Action::Read,
        Action::Increment,
        Action::Decrement,
        Action::Set,
        Action::Reset,
        Action::Admin,
    ];

    /// The action's name in grants and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Increment => "increment",
            Action::Decrement => "decrement",
            Action::Set => "set",
            Action::Reset => "reset",
            Action::Admin => "admin",
        }
    }

    /// The action named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Action::ALL.into_iter().find(|action| action.as_str() == name)
    }

    fn takes_cap(self) -> bool {
        matches!(self, Action::Increment | Action::Decrement | Action::Set)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One action of a grant, with its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// The action.
    pub action: Action,
    /// The largest amount (or set magnitude) allowed in one operation; `None` for no cap.
    pub cap: Option<u64>,
}

/// Which counters a grant covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern {
    /// The pattern's text before any trailing `*`, split at each `{sub}`.
    parts: Vec<String>,
    /// Whether the pattern ended in `*` (a prefix) rather than naming one counter.
    prefix: bool,
    text: String,
}

impl NamePattern {
    /// Reads a pattern.
    ///
    /// # Errors
    /// `invalid_grant` for an empty pattern, a `*` anywhere but at the end, an unclosed or
    /// unknown `{…}`, or a character no counter name may contain.
    pub fn parse(text: &str) -> Result<Self, ProtocolError> {
        if text.is_empty() {
            return Err(invalid(format!("grant {text:?} has no counter pattern; {GRANT_SYNTAX}")));
        }
        if text.len() > NAME_MAX_BYTES * 2 {
            return Err(invalid(format!(
                "grant pattern is {} bytes long; the most allowed is {}",
                text.len(),
                NAME_MAX_BYTES * 2
            )));
        }
        let (body, prefix) = match text.strip_suffix('*') {
            Some(body) => (body, true),
            None => (text, false),
        };
        let mut parts = vec![String::new()];
        let mut rest = body;
        while let Some(c) = rest.chars().next() {
            if let Some(after) = rest.strip_prefix("{sub}") {
                if !(after.starts_with(':') || after.is_empty() && !prefix) {
                    return Err(invalid(format!(
                        "grant pattern {text:?} has {{sub}} followed by {:?}; {{sub}} must be followed by ':' or end the pattern, so that one subject cannot reach another's counters",
                        if after.is_empty() {
                            "*"
                        } else {
                            &after[..after.chars().next().map_or(0, char::len_utf8)]
                        }
                    )));
                }
                parts.push(String::new());
                rest = after;
                continue;
            }
            if c == '*' {
                return Err(invalid(format!(
                    "grant pattern {text:?} has a * before its end; only a trailing * (a prefix) is allowed"
                )));
            }
            if !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')) {
                return Err(invalid(format!(
                    "grant pattern {text:?} contains {c:?}; allowed: counter-name characters \
                     (A-Z a-z 0-9 _ . : -), {{sub}}, and a trailing *"
                )));
            }
            if let Some(last) = parts.last_mut() {
                last.push(c);
            }
            rest = &rest[c.len_utf8()..];
        }
        Ok(Self { parts, prefix, text: text.to_owned() })
    }

    /// Whether the pattern covers counter `name` for a principal whose subject is `subject`
    /// (`None` for API keys and anonymous principals, which no `{sub}` pattern matches).
    pub fn matches(&self, name: &str, subject: Option<&str>) -> bool {
        let subject = subject.filter(|subject| {
            !subject.is_empty()
                && subject
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        });
        let mut rest = name;
        for (index, part) in self.parts.iter().enumerate() {
            if index > 0 {
                let Some(subject) = subject else { return false };
                let Some(after) = rest.strip_prefix(subject) else { return false };
                rest = after;
            }
            let Some(after) = rest.strip_prefix(part.as_str()) else { return false };
            rest = after;
        }
        self.prefix || rest.is_empty()
    }

    /// The names this pattern covers for `subject`, as one literal: `Some((text, true))` for
    /// every name starting with `text`, `Some((text, false))` for the name `text` alone, and
    /// `None` for none (a `{sub}` pattern without a usable subject). The same names as
    /// [`NamePattern::matches`], which lets a listing read only the names a grant covers.
    pub fn covers(&self, subject: Option<&str>) -> Option<(String, bool)> {
        let subject = subject.filter(|subject| {
            !subject.is_empty()
                && subject
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        });
        let mut text = String::new();
        for (index, part) in self.parts.iter().enumerate() {
            if index > 0 {
                text.push_str(subject?);
            }
            text.push_str(part);
        }
        Some((text, self.prefix))
    }

    /// Whether this pattern covers every counter (`*`).
    pub fn is_everything(&self) -> bool {
        self.prefix && self.parts.len() == 1 && self.parts[0].is_empty()
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A counter pattern and the actions it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Which counters.
    pub pattern: NamePattern,
    /// What may be done to them.
    pub allowed: Vec<Allowed>,
}

impl Grant {
    /// Reads a grant written `PATTERN=ACTION[<=CAP],…`.
    ///
    /// # Errors
    /// `invalid_grant`, with a message that says what was wrong and gives the syntax.
    pub fn parse(text: &str) -> Result<Self, ProtocolError> {
        let text = text.trim();
        let Some((pattern, actions)) = text.split_once('=') else {
            return Err(invalid(format!("grant {text:?} has no '='; {GRANT_SYNTAX}")));
        };
        let pattern = NamePattern::parse(pattern.trim())?;
        let mut allowed: Vec<Allowed> = Vec::new();
        for item in actions.split(',') {
            let item = item.trim();
            let (name, cap) = match item.split_once("<=") {
                Some((name, cap)) => (name.trim(), Some(cap.trim())),
                None => (item, None),
            };
            let Some(action) = Action::from_name(name) else {
                return Err(invalid(format!(
                    "grant {text:?} names action {name:?}; allowed: read, increment, decrement, set, reset, admin"
                )));
            };
            let cap = match cap {
                None => None,
                Some(_) if !action.takes_cap() => {
                    return Err(invalid(format!(
                        "grant {text:?} caps {action}; only increment, decrement and set take a cap"
                    )));
                }
                Some(cap) => match cap.parse::<u64>() {
                    Ok(cap) if (1..=MAX_SAFE_INTEGER.unsigned_abs()).contains(&cap) => Some(cap),
                    _ => {
                        return Err(invalid(format!(
                            "grant {text:?} has cap {cap:?}; a cap is a whole number from 1 to {MAX_SAFE_INTEGER}"
                        )));
                    }
                },
            };
            if allowed.iter().any(|earlier| earlier.action == action) {
                return Err(invalid(format!("grant {text:?} names {action} twice")));
            }
            allowed.push(Allowed { action, cap });
        }
        Ok(Self { pattern, allowed })
    }

    /// Reads several grants, each in the syntax of [`Grant::parse`].
    ///
    /// # Errors
    /// The first grant that does not parse.
    pub fn parse_all<S: AsRef<str>>(texts: &[S]) -> Result<Vec<Grant>, ProtocolError> {
        texts.iter().map(|text| Grant::parse(text.as_ref())).collect()
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=", self.pattern)?;
        for (index, allowed) in self.allowed.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            f.write_str(allowed.action.as_str())?;
            if let Some(cap) = allowed.cap {
                write!(f, "<={cap}")?;
            }
        }
        Ok(())
    }
}

/// What a set of grants allows on one counter: each action with its most generous cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Per action (indexed as [`Action::ALL`]): `None` not allowed, `Some(None)` uncapped,
    /// `Some(Some(cap))` capped.
    actions: [Option<Option<u64>>; 6],
}

impl Permissions {
    /// What `grants` allow on counter `name` for subject `subject` (any iterator of grants,
    /// so that several sets can be joined without copying them).
    pub fn of<'a>(
        grants: impl IntoIterator<Item = &'a Grant>,
        name: &str,
        subject: Option<&str>,
    ) -> Self {
        let mut permissions = Self::default();
        for grant in grants.into_iter().filter(|grant| grant.pattern.matches(name, subject)) {
            for allowed in &grant.allowed {
                permissions.add(allowed.action, allowed.cap);
            }
        }
        if permissions.actions[Action::Admin as usize].is_some() {
            permissions = Self::everything();
        }
        permissions
    }

    /// Every action, uncapped.
    pub fn everything() -> Self {
        Self { actions: [Some(None); 6] }
    }

    fn add(&mut self, action: Action, cap: Option<u64>) {
        let slot = &mut self.actions[action as usize];
        *slot = match (*slot, cap) {
            (None, cap) => Some(cap),
            (Some(None), _) | (_, None) => Some(None),
            (Some(Some(old)), Some(new)) => Some(Some(old.max(new))),
        };
    }

    /// Whether `action` is allowed at all.
    pub fn allows(&self, action: Action) -> bool {
        self.actions[action as usize].is_some()
    }

    /// The cap of `action`: `None` when it is not allowed, `Some(None)` when uncapped.
    pub fn cap(&self, action: Action) -> Option<Option<u64>> {
        self.actions[action as usize]
    }

    /// The allowed actions, in documentation order (what a snapshot's `can` lists).
    pub fn actions(&self) -> Vec<Action> {
        Action::ALL.into_iter().filter(|action| self.allows(*action)).collect()
    }

    /// Whether nothing at all is allowed.
    pub fn is_empty(&self) -> bool {
        self.actions.iter().all(Option::is_none)
    }
}

fn invalid(message: String) -> ProtocolError {
    ProtocolError::new(ErrorCode::InvalidGrant, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(texts: &[&str]) -> Vec<Grant> {
        Grant::parse_all(texts).unwrap()
    }

    #[test]
    fn exact_prefix_and_everything_patterns() {
        let exact = NamePattern::parse("likes").unwrap();
        assert!(exact.matches("likes", None));
        assert!(!exact.matches("likes2", None));
        let prefix = NamePattern::parse("likes:*").unwrap();
        assert!(prefix.matches("likes:post-1", None));
        assert!(prefix.matches("likes:", None));
        assert!(!prefix.matches("likes", None));
        assert!(!prefix.matches("votes:1", None));
        let all = NamePattern::parse("*").unwrap();
        assert!(all.is_everything() && all.matches("anything", None));
        assert!(!prefix.is_everything());
    }

    #[test]
    fn covers_names_the_same_names_as_matches() {
        let cover = |text: &str, subject| NamePattern::parse(text).unwrap().covers(subject);
        assert_eq!(cover("likes", None), Some(("likes".into(), false)));
        assert_eq!(cover("likes:*", None), Some(("likes:".into(), true)));
        assert_eq!(cover("*", None), Some((String::new(), true)));
        assert_eq!(cover("user:{sub}:*", Some("alice")), Some(("user:alice:".into(), true)));
        assert_eq!(cover("user:{sub}", Some("alice")), Some(("user:alice".into(), false)));
        assert_eq!(cover("user:{sub}:*", None), None);
        assert_eq!(cover("user:{sub}:*", Some("a:b")), None);
    }

    #[test]
    fn sub_stands_for_the_subject_only_literally() {
        let own = NamePattern::parse("user:{sub}:*").unwrap();
        assert!(own.matches("user:alice:likes", Some("alice")));
        assert!(!own.matches("user:bob:likes", Some("alice")));
        assert!(!own.matches("user:alice:likes", None), "keys and anonymous have no subject");
        // A subject with a * is no wildcard, and one with a ':' cannot reach into another's.
        assert!(!own.matches("user:alice:x", Some("*")));
        assert!(!own.matches("user:alice:x:likes", Some("alice:x")));
        assert!(NamePattern::parse("user:{sub}*").is_err(), "a matches ab");
        assert!(NamePattern::parse("user:{sub}x:*").is_err());
        let exact = NamePattern::parse("inbox:{sub}").unwrap();
        assert!(exact.matches("inbox:alice", Some("alice")));
        assert!(!exact.matches("inbox:alice2", Some("alice")));
    }

    #[test]
    fn grants_parse_round_trip_and_refuse_mistakes_with_the_syntax() {
        let grant = Grant::parse("likes:*=read,increment<=1").unwrap();
        assert_eq!(grant.to_string(), "likes:*=read,increment<=1");
        assert_eq!(grant.allowed[1], Allowed { action: Action::Increment, cap: Some(1) });
        for (text, says) in [
            ("likes", "no '='"),
            ("=read", "no counter pattern"),
            ("li*kes=read", "before its end"),
            ("likes=fly", "\"fly\""),
            ("likes=read<=2", "only increment"),
            ("likes=increment<=0", "from 1"),
            ("likes=increment<=x", "\"x\""),
            ("likes=read,read", "twice"),
            ("lik es=read", "' '"),
            ("a{bob}=read", "'{'"),
        ] {
            let error = Grant::parse(text).unwrap_err();
            assert_eq!(error.code, ErrorCode::InvalidGrant, "{text}");
            assert!(error.message.contains(says), "{text}: {:?} should say {says}", error.message);
        }
    }

    #[test]
    fn permissions_join_grants_and_admin_is_everything() {
        let set = grants(&["likes:*=read,increment<=1", "likes:vip=increment<=5", "*=read"]);
        let vip = Permissions::of(&set, "likes:vip", None);
        assert_eq!(vip.cap(Action::Increment), Some(Some(5)));
        assert!(!vip.allows(Action::Reset));
        assert_eq!(vip.actions(), vec![Action::Read, Action::Increment]);
        let other = Permissions::of(&set, "votes", None);
        assert_eq!(other.actions(), vec![Action::Read]);
        let uncapped = Permissions::of(&grants(&["a=increment<=1", "a=increment"]), "a", None);
        assert_eq!(uncapped.cap(Action::Increment), Some(None));
        let admin = Permissions::of(&grants(&["a=admin"]), "a", None);
        assert_eq!(admin, Permissions::everything());
        assert!(Permissions::of(&set, "x", None).cap(Action::Set).is_none());
    }
}
