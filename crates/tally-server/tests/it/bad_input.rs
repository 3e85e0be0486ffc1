//! Bad input gets a clear error that says what was wrong and what is allowed, and changes
//! nothing.

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::TestServer;

const JSON: Option<&str> = Some("application/json");

/// Sends one bad request and checks its status, code and message, and that counter "c" is
/// unchanged.
#[track_caller]
fn case(
    method: Method,
    path: &str,
    content_type: Option<&'static str>,
    body: &str,
    status: u16,
    code: &str,
    says: &str,
) -> Case {
    Case {
        method,
        path: path.to_owned(),
        content_type,
        body: body.as_bytes().to_vec(),
        status,
        code: code.to_owned(),
        says: says.to_owned(),
    }
}

struct Case {
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: String,
    says: String,
}

#[tokio::test]
async fn every_bad_request_is_refused_with_its_code_and_changes_nothing() {
    let server = TestServer::start().await;
    server.ok("setValue", json!({"name": "c", "value": 9_007_199_254_740_990_i64})).await;
    let before = server.ok("getMetadata", json!({"name": "c"})).await;
    let rpc = "/rpc/counter.increment";
    let cases = vec![
        case(Method::POST, rpc, JSON, r#"{"name": "c""#, 400, "bad_json", "not valid JSON"),
        case(
            Method::POST,
            rpc,
            Some("text/plain"),
            r#"{"name":"c"}"#,
            415,
            "unsupported_media_type",
            "allowed: application/json",
        ),
        case(Method::POST, rpc, None, r#"{"name":"c"}"#, 415, "unsupported_media_type", "missing"),
        case(
            Method::POST,
            "/rpc/counter.explode",
            JSON,
            r#"{"name":"c"}"#,
            404,
            "unknown_procedure",
            "counter.increment",
        ),
        case(Method::GET, rpc, None, "", 405, "method_not_allowed", "POST"),
        case(Method::POST, rpc, JSON, r#"{}"#, 400, "invalid_field", "missing field `name`"),
        case(Method::POST, rpc, JSON, r#"{"name": 7}"#, 400, "invalid_field", "invalid type"),
        case(
            Method::POST,
            rpc,
            JSON,
            r#"{"name":"c","amout":1}"#,
            400,
            "invalid_field",
            "expected `name` or `amount`",
        ),
        case(
            Method::POST,
            rpc,
            JSON,
            r#"{"name":"c","amount":"1"}"#,
            400,
            "invalid_field",
            "invalid type",
        ),
        case(Method::POST, rpc, JSON, r#"{"name":""}"#, 400, "invalid_name", "A-Z a-z 0-9 _ . : -"),
        case(
            Method::POST,
            rpc,
            JSON,
            &format!(r#"{{"name":"{}"}}"#, "x".repeat(129)),
            400,
            "invalid_name",
            "129 bytes",
        ),
        case(Method::POST, rpc, JSON, r#"{"name":"c d"}"#, 400, "invalid_name", "' '"),
        case(Method::POST, rpc, JSON, r#"{"name":"c","amount":0}"#, 400, "invalid_amount", ">= 1"),
        case(Method::POST, rpc, JSON, r#"{"name":"c","amount":-1}"#, 400, "invalid_amount", ">= 1"),
        case(
            Method::POST,
            rpc,
            JSON,
            r#"{"name":"c","amount":1.5}"#,
            400,
            "invalid_amount",
            "whole number",
        ),
        case(
            Method::POST,
            rpc,
            JSON,
            r#"{"name":"c","amount":9007199254740992}"#,
            422,
            "out_of_range",
            "2^53 - 1",
        ),
        // The result would pass 2^53 - 1: refused, nothing stored.
        case(
            Method::POST,
            rpc,
            JSON,
            r#"{"name":"c","amount":2}"#,
            422,
            "out_of_range",
            "nothing was stored",
        ),
        case(
            Method::POST,
            "/rpc/counter.setValue",
            JSON,
            r#"{"name":"c","value":-9007199254740992}"#,
            422,
            "out_of_range",
            "2^53 - 1",
        ),
        case(
            Method::POST,
            "/rpc/counter.setValue",
            JSON,
            r#"{"name":"c","value":1e400}"#,
            400,
            "bad_json",
            "not valid JSON",
        ),
        case(
            Method::POST,
            "/rpc/counter.getHistory",
            JSON,
            r#"{"name":"c","limit":0}"#,
            400,
            "invalid_limit",
            "1 to 1000",
        ),
        case(
            Method::POST,
            "/rpc/counter.getHistory",
            JSON,
            r#"{"name":"c","limit":1001}"#,
            400,
            "invalid_limit",
            "1 to 1000",
        ),
        case(
            Method::POST,
            "/rpc/counter.getHistory",
            JSON,
            r#"{"name":"c","before":-2}"#,
            400,
            "invalid_field",
            "before",
        ),
        case(
            Method::POST,
            rpc,
            JSON,
            &format!(r#"{{"name":"c","pad":"{}"}}"#, "x".repeat(70_000)),
            413,
            "payload_too_large",
            "65536",
        ),
    ];
    for case in cases {
        let (status, text) =
            server.raw(case.method.clone(), &case.path, case.content_type, case.body.clone()).await;
        let shown = String::from_utf8_lossy(&case.body[..case.body.len().min(60)]).to_string();
        assert_eq!(status, case.status, "{} {} {shown}: {text}", case.method, case.path);
        let answer: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON error body: {text}"));
        assert_eq!(answer["error"]["code"], case.code.as_str(), "{shown}: {text}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&case.says),
            "{shown}: message {message:?} should say {:?}",
            case.says
        );
        assert_eq!(answer["error"]["temporary"], false);
    }
    assert_eq!(
        server.ok("getMetadata", json!({"name": "c"})).await,
        before,
        "bad requests changed the counter"
    );
    let history = server.ok("getHistory", json!({"name": "c"})).await;
    assert_eq!(history["entries"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_body_of_exactly_the_limit_is_served_and_one_byte_more_is_refused() {
    let server = TestServer::start().await;
    let limit = tally_proto::limits::MAX_REQUEST_BODY_BYTES;
    let padded = |size: usize| {
        let json = r#"{"name":"edge"}"#;
        format!("{json}{}", " ".repeat(size - json.len())).into_bytes()
    };
    let path = "/rpc/counter.increment";
    let (status, text) = server.raw(Method::POST, path, JSON, padded(limit)).await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = server.raw(Method::POST, path, JSON, padded(limit + 1)).await;
    assert_eq!(status, 413, "{text}");
    assert_eq!(server.value("edge").await.0, 1);
}
