//! Grants (`--anonymous`, `tally token --grant`, API keys, a token's `tally.grants` claim): any
//! text. What is accepted must print back to a grant that parses to the same thing, and a
//! pattern must never match a name it does not cover by its own rule.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_proto::{Grant, Permissions};

fuzz_target!(|input: (&str, &str, &str)| {
    let (text, name, subject) = input;
    match Grant::parse(text) {
        Ok(grant) => {
            let printed = grant.to_string();
            let again = Grant::parse(&printed).expect("a printed grant parses");
            assert_eq!(again, grant, "{text:?} printed as {printed:?}");
            let pattern = printed.split('=').next().unwrap_or_default();
            // Without {sub}, a match is an exact name or a prefix before the trailing `*`.
            if !pattern.contains("{sub}") && grant.pattern.matches(name, Some(subject)) {
                match pattern.strip_suffix('*') {
                    Some(prefix) => assert!(name.starts_with(prefix)),
                    None => assert_eq!(name, pattern),
                }
            }
            let grants = [grant];
            let _ = Permissions::of(&grants, name, Some(subject)).actions();
        }
        Err(error) => assert!(!error.message.is_empty()),
    }
});
