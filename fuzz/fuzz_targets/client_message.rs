//! WebSocket messages from clients: any text. The accepted messages are a ping and an auth
//! message, each only from a JSON object with that `type` (an auth with a string `token`, kept
//! as sent); everything else is refused with a message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_proto::ClientMessage;

fuzz_target!(|text: &str| {
    match ClientMessage::parse(text) {
        Ok(ClientMessage::Ping) => {
            let value: serde_json::Value = serde_json::from_str(text).expect("accepted non-JSON");
            assert_eq!(value.get("type").and_then(|t| t.as_str()), Some("ping"), "{text:?}");
        }
        Ok(ClientMessage::Auth { token }) => {
            let value: serde_json::Value = serde_json::from_str(text).expect("accepted non-JSON");
            assert_eq!(value.get("type").and_then(|t| t.as_str()), Some("auth"), "{text:?}");
            assert_eq!(value.get("token").and_then(|t| t.as_str()), Some(token.as_str()));
        }
        Err(error) => assert!(!error.message.is_empty(), "a refusal without words"),
    }
});
