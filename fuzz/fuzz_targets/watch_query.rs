//! The query string of a watch (`?since=V&epoch=E`): any text. An accepted `since` and `epoch`
//! must be what the query says, and a refusal must say what was wrong.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_proto::WatchQuery;

fuzz_target!(|query: &str| {
    match WatchQuery::parse(Some(query)) {
        Ok(accepted) => {
            // Whatever was accepted, the same query with only those parameters gives it back.
            let mut alone = Vec::new();
            if let Some(since) = accepted.since {
                alone.push(format!("since={since}"));
            }
            if let Some(epoch) = &accepted.epoch {
                alone.push(format!("epoch={epoch}"));
            }
            let again = WatchQuery::parse(Some(&alone.join("&")));
            assert_eq!(again, Ok(accepted));
        }
        Err(error) => assert!(!error.message.is_empty(), "a refusal without words"),
    }
});
