//! Socket commands (`GET /ws`, version 2): any text. Besides never panicking, an accepted
//! command must have come from a JSON object with an id within 0..=2^53 - 1, must read back the
//! same from its own JSON (a call's body fields by name: the body is checked later, as the
//! RPC's, and serde_json does not promise that a float far outside any allowed value prints
//! back to the same bits), and a call must name a procedure callable over the socket, with a
//! key only on a write; every refusal must say what was wrong in words.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_proto::limits::MAX_SAFE_INTEGER;
use tally_proto::socket::{Command, CommandKind};

fuzz_target!(|text: &str| {
    match Command::parse(text) {
        Ok(command) => {
            let value: serde_json::Value = serde_json::from_str(text).expect("accepted non-JSON");
            assert_eq!(value.get("id").and_then(|id| id.as_u64()), Some(command.id), "{text:?}");
            assert!(command.id <= MAX_SAFE_INTEGER as u64, "accepted id {}", command.id);
            if let CommandKind::Call(call) = &command.kind {
                assert!(call.procedure.callable_over_socket(), "{text:?}");
                assert!(call.idempotency_key.is_none() || call.procedure.is_write(), "{text:?}");
            }
            let again = Command::parse(&command.to_json()).expect("its own JSON is refused");
            assert_eq!(again.id, command.id, "{text:?}");
            match (&again.kind, &command.kind) {
                (CommandKind::Call(again), CommandKind::Call(call)) => {
                    assert_eq!(again.procedure, call.procedure, "{text:?}");
                    assert_eq!(again.idempotency_key, call.idempotency_key, "{text:?}");
                    assert!(again.body.keys().eq(call.body.keys()), "{text:?}");
                }
                (again, kind) => assert!(again == kind, "{text:?}"),
            }
        }
        Err(bad) => assert!(!bad.error.message.is_empty(), "a refusal without words"),
    }
});
