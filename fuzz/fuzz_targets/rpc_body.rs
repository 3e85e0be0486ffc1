//! RPC bodies: any bytes as the body of any procedure. Besides never panicking,
//! whatever is accepted must be within the protocol's rules, and every refusal must say what was
//! wrong in words.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_proto::limits::{HISTORY_PAGE_MAX, LIST_PAGE_MAX, MAX_SAFE_INTEGER, NAME_MAX_BYTES};
use tally_proto::{Op, Procedure, Request};

fuzz_target!(|input: &[u8]| {
    let Some((&selector, body)) = input.split_first() else { return };
    let procedure = Procedure::ALL[usize::from(selector) % Procedure::ALL.len()];
    match Request::parse(procedure, body) {
        Ok(Request::Apply { op, .. }) => match op {
            Op::Increment(amount) | Op::Decrement(amount) => {
                assert!((1..=MAX_SAFE_INTEGER).contains(&amount), "accepted amount {amount}");
            }
            Op::SetValue(value) => {
                assert!(value.abs() <= MAX_SAFE_INTEGER, "accepted value {value}");
            }
            Op::Reset => {}
        },
        Ok(Request::GetHistory { limit, before, .. }) => {
            assert!((1..=HISTORY_PAGE_MAX).contains(&limit), "accepted limit {limit}");
            assert!(before.is_none_or(|before| before >= 1), "accepted before {before:?}");
        }
        Ok(Request::List { prefix, limit, .. }) => {
            assert!((1..=LIST_PAGE_MAX).contains(&limit), "accepted limit {limit}");
            assert!(prefix.len() <= NAME_MAX_BYTES, "accepted prefix {prefix:?}");
            let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-');
            assert!(prefix.chars().all(allowed), "accepted prefix {prefix:?}");
        }
        Ok(Request::Configure { bounds, .. }) => {
            for bound in [bounds.min, bounds.max].into_iter().flatten() {
                assert!(bound.abs() <= MAX_SAFE_INTEGER, "accepted bound {bound}");
            }
            if let (Some(min), Some(max)) = (bounds.min, bounds.max) {
                assert!(min <= max, "accepted min {min} above max {max}");
            }
        }
        Ok(
            Request::GetValue { .. }
            | Request::GetMetadata { .. }
            | Request::GetPresence { .. }
            | Request::Delete { .. }
            | Request::KeyList,
        ) => {}
        Ok(Request::KeyCreate { name, .. } | Request::KeyRevoke { name }) => {
            assert!(tally_proto::keys::check_key_name(&name).is_ok(), "accepted key name {name:?}");
        }
        Err(error) => assert!(!error.message.is_empty(), "a refusal without words"),
    }
});
