//! WebSocket messages from clients: any text. The only accepted message is a ping, and only
//! from a JSON object whose `type` is "ping"; everything else is refused with a message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_proto::ClientMessage;

fuzz_target!(|text: &str| {
    match ClientMessage::parse(text) {
        Ok(ClientMessage::Ping) => {
            let value: serde_json::Value = serde_json::from_str(text).expect("accepted non-JSON");
            assert_eq!(value.get("type").and_then(|t| t.as_str()), Some("ping"), "{text:?}");
        }
        Err(error) => assert!(!error.message.is_empty(), "a refusal without words"),
    }
});
