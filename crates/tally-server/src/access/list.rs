//! What `counter.list` may show a principal: the name ranges its grants let it read, so that a
//! listing reads only rows it may show (and every page makes progress however many counters
//! it may not read), and the check of each row, both decided here like every other access.

use tally_proto::{Action, CounterName, ErrorCode, ProtocolError};

use super::{Access, Principal};

/// Names from `start` (inclusive) to `end` (exclusive; no end when `None`), in byte order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NameRange {
    /// The first name the range may hold.
    pub(crate) start: String,
    /// The first name past the range.
    pub(crate) end: Option<String>,
}

/// The first text past every name starting with `prefix` (`None` for the empty prefix, which
/// every name starts with). Name characters are ASCII below `z`, so the last one can always be
/// raised by one, and no name starting with `prefix` reaches the result.
pub(crate) fn prefix_end(prefix: &str) -> Option<String> {
    let (last, head) = prefix.as_bytes().split_last()?;
    let mut end = head.to_vec();
    end.push(last + 1);
    // ASCII in, ASCII out (`last` is at most `z`), so this cannot fail; `None` if it ever did.
    String::from_utf8(end).ok()
}

/// The smallest name after `name`: `name` followed by `-`, the smallest name character.
pub(crate) fn after(name: &CounterName) -> String {
    format!("{name}-")
}

impl Access {
    /// The ranges of names starting with `prefix` that `principal` may read, sorted and
    /// disjoint: one per grant allowing `read` (or `admin`), cut to the prefix. A row in them
    /// is one [`Access::may_list`] allows, since a grant's pattern is a prefix or one name
    /// ([`tally_proto::NamePattern::covers`]).
    ///
    /// # Errors
    /// `unauthenticated` when a request without credentials may read no counter at all, so
    /// that a forgotten token is not mistaken for an empty server; a principal with
    /// credentials that may read none gets no ranges (an empty list).
    pub(crate) fn list_ranges(
        &self,
        principal: &Principal,
        prefix: &str,
    ) -> Result<Vec<NameRange>, ProtocolError> {
        let asked = NameRange { start: prefix.to_owned(), end: prefix_end(prefix) };
        if principal.everything {
            return Ok(vec![asked]);
        }
        let readable = principal
            .grants
            .iter()
            .chain(principal.anonymous.iter())
            .filter(|grant| {
                grant
                    .allowed
                    .iter()
                    .any(|allowed| matches!(allowed.action, Action::Read | Action::Admin))
            })
            .filter_map(|grant| grant.pattern.covers(principal.subject.as_deref()))
            .map(|(text, is_prefix)| {
                // One name alone is the range up to the smallest name after it.
                let end = if is_prefix { prefix_end(&text) } else { Some(format!("{text}-")) };
                NameRange { start: text, end }
            });
        let mut ranges: Vec<NameRange> = Vec::new();
        let mut any = false;
        for range in readable {
            any = true;
            if let Some(cut) = intersect(&range, &asked) {
                ranges.push(cut);
            }
        }
        if !any && !principal.credentialed {
            let error = ProtocolError::new(
                ErrorCode::Unauthenticated,
                "listing counters needs credentials (anonymous requests may read no counter here): send Authorization: Bearer TOKEN",
            );
            return Err(self.refuse(principal, error));
        }
        Ok(merge(ranges))
    }

    /// Whether `principal` may see counter `name` in a listing: `read` on it. Not a refusal
    /// (a listing leaves out what it may not show), so nothing is logged.
    pub(crate) fn may_list(&self, principal: &Principal, name: &CounterName) -> bool {
        principal.permissions(name).allows(Action::Read)
    }
}

/// The names in both ranges, if any.
fn intersect(a: &NameRange, b: &NameRange) -> Option<NameRange> {
    let start = a.start.clone().max(b.start.clone());
    let end = match (&a.end, &b.end) {
        (None, None) => None,
        (Some(end), None) | (None, Some(end)) => Some(end.clone()),
        (Some(x), Some(y)) => Some(x.clone().min(y.clone())),
    };
    match &end {
        Some(end) if *end <= start => None,
        _ => Some(NameRange { start, end }),
    }
}

/// `ranges` sorted, with overlapping or touching ones joined.
fn merge(mut ranges: Vec<NameRange>) -> Vec<NameRange> {
    ranges.sort_by(|a, b| a.start.cmp(&b.start));
    let mut merged: Vec<NameRange> = Vec::with_capacity(ranges.len());
    for range in ranges {
        if let Some(last) = merged.last_mut() {
            let touches = last.end.as_ref().is_none_or(|end| range.start <= *end);
            if touches {
                last.end = match (&last.end, &range.end) {
                    (Some(x), Some(y)) => Some(x.clone().max(y.clone())),
                    _ => None,
                };
                continue;
            }
        }
        merged.push(range);
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: &str, end: Option<&str>) -> NameRange {
        NameRange { start: start.into(), end: end.map(str::to_owned) }
    }

    /// A principal from a real HS256 token for `sub` with `grants`, as a request would bring.
    fn principal(grants: &[&str]) -> (Access, Principal) {
        use std::time::{SystemTime, UNIX_EPOCH};
        let secret = b"a secret of at least thirty-two bytes, for tests";
        let mut config = super::super::AuthConfig::default();
        config.jwt.add_secret(secret).unwrap();
        let access = Access::new(&config, &[], &[]);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let claims = serde_json::json!({"sub": "alice", "iat": now, "exp": now + 600,
                                        "tally": {"grants": grants}});
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap();
        let principal = access.authenticate_token(&token).unwrap();
        (access, principal)
    }

    #[test]
    fn ranges_are_the_names_read_grants_cover_with_the_subject_put_in() {
        let (access, alice) = principal(&[
            "user:{sub}:*=read",
            "likes=read",
            "votes:*=increment",
            "pub:*=admin",
            "pub:a:*=read",
        ]);
        assert_eq!(
            access.list_ranges(&alice, "").unwrap(),
            vec![
                range("likes", Some("likes-")),
                range("pub:", Some("pub;")),
                range("user:alice:", Some("user:alice;")),
            ],
            "votes:* allows no read; pub:a:* is inside pub:*"
        );
        assert_eq!(
            access.list_ranges(&alice, "user:").unwrap(),
            vec![range("user:alice:", Some("user:alice;"))]
        );
        assert_eq!(
            access.list_ranges(&alice, "user:alice:x").unwrap(),
            vec![range("user:alice:x", Some("user:alice:y"))]
        );
        assert_eq!(access.list_ranges(&alice, "user:bob:").unwrap(), vec![]);
        assert_eq!(
            access.list_ranges(&alice, "lik").unwrap(),
            vec![range("likes", Some("likes-"))]
        );
        // Every name in a range is one the per-row check allows, and names outside are not.
        for (name, shown) in [
            ("likes", true),
            ("likes2", false),
            ("user:alice:x", true),
            ("user:bob:x", false),
            ("votes:1", false),
            ("pub:z", true),
        ] {
            assert_eq!(
                access.may_list(&alice, &CounterName::parse(name).unwrap()),
                shown,
                "{name}"
            );
        }
        // A credentialed principal that may read nothing gets an empty list, not a refusal.
        let (access, writer) = principal(&["votes:*=increment"]);
        assert_eq!(access.list_ranges(&writer, "").unwrap(), vec![]);
        let anonymous = access.anonymous(None);
        assert_eq!(
            access.list_ranges(&anonymous, "").unwrap_err().code,
            ErrorCode::Unauthenticated
        );
    }

    #[test]
    fn a_prefix_ends_where_its_last_character_is_raised() {
        assert_eq!(prefix_end(""), None);
        assert_eq!(prefix_end("likes:").as_deref(), Some("likes;"));
        assert_eq!(prefix_end("z").as_deref(), Some("{"));
        assert_eq!(after(&CounterName::parse("a").unwrap()), "a-");
    }

    #[test]
    fn ranges_are_cut_to_the_prefix_and_merged() {
        let asked = range("likes:", Some("likes;"));
        assert_eq!(intersect(&range("", None), &asked), Some(asked.clone()));
        assert_eq!(intersect(&range("votes:", Some("votes;")), &asked), None);
        assert_eq!(
            intersect(&range("likes:a", Some("likes:b")), &asked),
            Some(range("likes:a", Some("likes:b")))
        );
        assert_eq!(
            merge(vec![
                range("b", Some("c")),
                range("a", Some("a-")),
                range("b:", Some("b;")),
                range("x", None),
                range("y", Some("z")),
            ]),
            vec![range("a", Some("a-")), range("b", Some("c")), range("x", None)]
        );
    }
}
