//! The query string of a watch, `GET /ws/counter/{name}?since=V&epoch=E`: `since` is a whole
//! number >= 0, `epoch` an [`Epoch`], and every other parameter is ignored.

use serde::Deserialize;

use crate::epoch::Epoch;
use crate::error::{ErrorCode, ProtocolError};

/// What the query string of a watch asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WatchQuery {
    /// Resume after this version; `None` starts with a snapshot.
    pub since: Option<u64>,
    /// The epoch the client's `since` belongs to (from its last snapshot or `resumed`): a
    /// resume against another epoch gets a resync snapshot. Optional; ignored without `since`.
    pub epoch: Option<Epoch>,
}

/// The query string as written, before `since` is checked to be a number.
#[derive(Deserialize)]
struct RawWatchQuery {
    since: Option<String>,
    epoch: Option<String>,
}

impl WatchQuery {
    /// Reads a raw (still percent-encoded) query string; `None` when the URL has no `?`.
    ///
    /// # Errors
    /// `invalid_field` when the query string cannot be decoded, names `since` twice, or `since`
    /// is not a whole number >= 0; the message says which and what is allowed.
    pub fn parse(query: Option<&str>) -> Result<Self, ProtocolError> {
        let Some(query) = query else { return Ok(Self::default()) };
        let raw: RawWatchQuery = serde_urlencoded::from_str(query).map_err(|error| {
            ProtocolError::new(ErrorCode::InvalidField, format!("bad query string: {error}"))
        })?;
        let since = match raw.since {
            None => None,
            Some(text) => Some(text.parse::<u64>().map_err(|_| {
                ProtocolError::new(
                    ErrorCode::InvalidField,
                    format!("since is {text:?}; allowed: a version, a whole number >= 0"),
                )
            })?),
        };
        let epoch = raw.epoch.as_deref().map(Epoch::parse).transpose()?;
        Ok(Self { since, epoch })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_optional_and_other_parameters_are_ignored() {
        assert_eq!(WatchQuery::parse(None), Ok(WatchQuery { since: None, epoch: None }));
        assert_eq!(WatchQuery::parse(Some("")), Ok(WatchQuery { since: None, epoch: None }));
        assert_eq!(
            WatchQuery::parse(Some("since=0")),
            Ok(WatchQuery { since: Some(0), epoch: None })
        );
        assert_eq!(
            WatchQuery::parse(Some("x=1&since=%34%32&y")),
            Ok(WatchQuery { since: Some(42), epoch: None })
        );
    }

    #[test]
    fn an_epoch_is_read_beside_since_and_checked() {
        assert_eq!(
            WatchQuery::parse(Some("since=3&epoch=00ff00ff00ff00ff")),
            Ok(WatchQuery {
                since: Some(3),
                epoch: Some(Epoch::parse("00ff00ff00ff00ff").unwrap())
            })
        );
        let error = WatchQuery::parse(Some("since=3&epoch=nope")).expect_err("bad epoch");
        assert_eq!(error.code, ErrorCode::InvalidField);
        assert!(error.message.contains("16 lowercase hexadecimal digits"), "{}", error.message);
    }

    #[test]
    fn a_bad_since_is_refused_in_words() {
        for query in ["since=-1", "since=1.5", "since=", "since=abc", "since=18446744073709551616"]
        {
            let error = WatchQuery::parse(Some(query)).expect_err(query);
            assert_eq!(error.code, ErrorCode::InvalidField, "{query}");
            assert!(error.message.contains("whole number >= 0"), "{query}: {}", error.message);
        }
        let twice = WatchQuery::parse(Some("since=1&since=2")).expect_err("twice");
        assert_eq!(twice.code, ErrorCode::InvalidField);
        assert!(twice.message.starts_with("bad query string"), "{}", twice.message);
    }
}
