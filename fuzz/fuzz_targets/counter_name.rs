//! Counter names (RPC bodies and WebSocket URLs): any text. What is accepted must follow the
//! naming rule exactly, and must come back unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_proto::CounterName;
use tally_proto::limits::NAME_MAX_BYTES;

fn follows_the_rule(name: &str) -> bool {
    (1..=NAME_MAX_BYTES).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

fuzz_target!(|name: &str| {
    match CounterName::parse(name) {
        Ok(parsed) => {
            assert!(follows_the_rule(name), "accepted {name:?}");
            assert_eq!(parsed.as_str(), name);
        }
        Err(error) => {
            assert!(!follows_the_rule(name), "refused {name:?}: {}", error.message);
            assert!(!error.message.is_empty());
        }
    }
});
