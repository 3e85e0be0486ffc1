//! The TypeScript client's copy of this crate's constants (error codes, close codes, the name
//! and idempotency-key rules, the limits), rendered from the Rust definitions and compared with
//! the committed file, so that the two cannot disagree silently.
//!
//! Regenerate the file with `TALLY_BLESS=1 cargo test -p tally-proto --lib typescript`.

use std::fmt::Write as _;

use crate::error::{ErrorCode, close};
use crate::idempotency::{IDEMPOTENCY_KEY_MAX_BYTES, IDEMPOTENCY_KEY_RULE, IdempotencyKey};
use crate::limits::{
    HISTORY_PAGE_DEFAULT, HISTORY_PAGE_MAX, LIST_PAGE_DEFAULT, LIST_PAGE_MAX,
    MAX_CLIENT_MESSAGE_BYTES, MAX_REQUEST_BODY_BYTES, MAX_SAFE_INTEGER, NAME_MAX_BYTES,
};
use crate::name::{NAME_PATTERN, NAME_RULE};
use crate::socket::MAX_RATE_LIMIT;

/// The generated file, from the workspace root.
const PATH: &str = "web/packages/client/src/generated/protocol-constants.ts";

/// The command that rewrites [`PATH`].
const REGENERATE: &str = "TALLY_BLESS=1 cargo test -p tally-proto --lib typescript";

/// A JavaScript string literal (JSON's string syntax is a subset of JavaScript's).
fn js_string(text: &str) -> String {
    // Serializing a `&str` cannot fail.
    serde_json::to_string(text).unwrap()
}

/// The characters a one-character idempotency key may be, as a regular expression over the
/// whole key, found by asking [`IdempotencyKey::parse`] about every ASCII character (the rule
/// refuses every other one, since it counts bytes and allows printable ASCII only).
fn idempotency_key_pattern() -> String {
    let allowed: Vec<u8> = (0..=127u8)
        .filter(|&byte| IdempotencyKey::parse(&char::from(byte).to_string()).is_ok())
        .collect();
    let mut class = String::new();
    let mut rest = allowed.as_slice();
    while let Some((&first, _)) = rest.split_first() {
        let run =
            rest.iter().zip(first..).take_while(|(byte, expected)| **byte == *expected).count();
        let last = rest[run - 1];
        write!(class, "\\x{first:02x}").unwrap();
        if last != first {
            write!(class, "-\\x{last:02x}").unwrap();
        }
        rest = &rest[run..];
    }
    format!("^[{class}]+$")
}

/// The text of the generated file.
fn render() -> String {
    // Writing to a `String` cannot fail, hence the `unwrap`s below.
    let mut out = String::new();
    let o = &mut out;
    writeln!(o, "// Generated from crates/tally-proto by `{REGENERATE}`: do not edit.").unwrap();
    writeln!(o, "// `cargo test` fails while this file differs from what tally-proto renders.")
        .unwrap();
    writeln!(o).unwrap();

    writeln!(o, "/** Every error code: its HTTP status and whether it is temporary (tally-proto's `ErrorCode`). */").unwrap();
    writeln!(o, "export const ERROR_CODES = {{").unwrap();
    for &code in ErrorCode::ALL {
        writeln!(
            o,
            "  {}: {{ status: {}, temporary: {} }},",
            js_string(code.as_str()),
            code.http_status(),
            code.is_temporary()
        )
        .unwrap();
    }
    writeln!(o, "}} as const;").unwrap();
    writeln!(o).unwrap();

    writeln!(o, "/** WebSocket close codes the server sends (tally-proto's `close`). */").unwrap();
    writeln!(o, "export const CLOSE_CODES = {{").unwrap();
    for &(name, code) in close::ALL {
        writeln!(o, "  {name}: {code},").unwrap();
    }
    writeln!(o, "}} as const;").unwrap();
    writeln!(o).unwrap();

    let no_reconnect: Vec<String> = close::NO_RECONNECT.iter().map(u16::to_string).collect();
    writeln!(o, "/** Standard close codes after which a client does not reconnect as it is. */")
        .unwrap();
    writeln!(
        o,
        "export const NO_RECONNECT_CLOSE_CODES: readonly number[] = [{}];",
        no_reconnect.join(", ")
    )
    .unwrap();
    writeln!(o).unwrap();
    writeln!(o, "/** Close codes (inclusive) after which a client does not reconnect without changing something. */").unwrap();
    writeln!(
        o,
        "export const NO_RECONNECT_CLOSE_RANGE = {{ min: {}, max: {} }} as const;",
        close::NO_RECONNECT_RANGE.start(),
        close::NO_RECONNECT_RANGE.end()
    )
    .unwrap();
    writeln!(o).unwrap();

    let numbers: [(&str, &str, String); 9] = [
        (
            "MAX_SAFE_INTEGER",
            "Every value, amount and result stays within ±MAX_SAFE_INTEGER (2^53 − 1).",
            MAX_SAFE_INTEGER.to_string(),
        ),
        ("NAME_MAX_BYTES", "The longest counter name, in bytes.", NAME_MAX_BYTES.to_string()),
        (
            "MAX_REQUEST_BODY_BYTES",
            "The largest RPC request body, in bytes (answered with 413 above it).",
            MAX_REQUEST_BODY_BYTES.to_string(),
        ),
        (
            "MAX_CLIENT_MESSAGE_BYTES",
            "The largest WebSocket message a client may send, in bytes (closed with 1009 above it).",
            MAX_CLIENT_MESSAGE_BYTES.to_string(),
        ),
        ("HISTORY_PAGE_MAX", "The largest `limit` of `getHistory`.", HISTORY_PAGE_MAX.to_string()),
        (
            "HISTORY_PAGE_DEFAULT",
            "`getHistory`'s `limit` when the request has none.",
            HISTORY_PAGE_DEFAULT.to_string(),
        ),
        ("LIST_PAGE_MAX", "The largest `limit` of `counter.list`.", LIST_PAGE_MAX.to_string()),
        (
            "LIST_PAGE_DEFAULT",
            "`counter.list`'s `limit` when the request has none.",
            LIST_PAGE_DEFAULT.to_string(),
        ),
        (
            "IDEMPOTENCY_KEY_MAX_BYTES",
            "The longest idempotency key, in bytes.",
            IDEMPOTENCY_KEY_MAX_BYTES.to_string(),
        ),
    ];
    let strings: [(&str, &str, String); 4] = [
        (
            "NAME_PATTERN",
            "The characters of a counter name, as a regular expression (the length is checked apart).",
            NAME_PATTERN.to_owned(),
        ),
        (
            "NAME_RULE",
            "What a counter name may contain, worded for error messages.",
            NAME_RULE.to_owned(),
        ),
        (
            "IDEMPOTENCY_KEY_PATTERN",
            "The characters of an idempotency key, as a regular expression (the length is checked apart).",
            idempotency_key_pattern(),
        ),
        (
            "IDEMPOTENCY_KEY_RULE",
            "The idempotency-key rule, worded for error messages.",
            IDEMPOTENCY_KEY_RULE.to_owned(),
        ),
    ];
    for (name, doc, value) in numbers {
        writeln!(o, "/** {doc} */\nexport const {name} = {value};\n").unwrap();
    }
    for (name, doc, value) in strings {
        writeln!(o, "/** {doc} */\nexport const {name} = {};\n", js_string(&value)).unwrap();
    }
    writeln!(o, "/** The fastest conflated rate (`maxRate`) a subscription may ask for, in updates per second. */").unwrap();
    writeln!(o, "export const MAX_RATE_LIMIT = {MAX_RATE_LIMIT};").unwrap();
    out
}

#[test]
fn generated_typescript_constants_match_tally_proto() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(PATH);
    let expected = render();
    if std::env::var_os("TALLY_BLESS").is_some() {
        std::fs::write(&path, &expected).unwrap_or_else(|error| panic!("writing {PATH}: {error}"));
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == expected,
        "{PATH} differs from what tally-proto renders; regenerate it with `{REGENERATE}`"
    );
}

#[test]
fn the_idempotency_key_pattern_is_printable_ascii() {
    assert_eq!(idempotency_key_pattern(), "^[\\x21-\\x7e]+$");
}
