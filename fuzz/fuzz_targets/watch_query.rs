//! The query string of a watch (`?since=V`): any text. An accepted `since` must be what the
//! query says, and a refusal must say what was wrong.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_proto::WatchQuery;

fuzz_target!(|query: &str| {
    match WatchQuery::parse(Some(query)) {
        Ok(WatchQuery { since: Some(since) }) => {
            // Whatever was accepted, the same query with only that parameter gives it back.
            let again = WatchQuery::parse(Some(&format!("since={since}")));
            assert_eq!(again, Ok(WatchQuery { since: Some(since) }));
        }
        Ok(WatchQuery { since: None }) => {}
        Err(error) => assert!(!error.message.is_empty(), "a refusal without words"),
    }
});
