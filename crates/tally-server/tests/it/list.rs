//! `counter.list` against a real server, over the RPC and over the socket's `call`: paging
//! covers every counter once in name order, the prefix filter, a key that may read only some
//! counters sees only those (and pages through the rest without being shown them), values are
//! the committed ones while writes go on, and bad input is refused with the same error on both
//! transports and changes nothing.

use std::collections::BTreeMap;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::harness::{PATIENCE, TestServer};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A version-2 socket, with `credential` as its bearer token if given.
async fn socket(server: &TestServer, credential: Option<&str>) -> Socket {
    let mut request = format!("ws://{}/ws", server.addr).into_client_request().expect("request");
    if let Some(credential) = credential {
        let value = format!("Bearer {credential}").parse().expect("header");
        request.headers_mut().insert("authorization", value);
    }
    tokio_tungstenite::connect_async(request).await.expect("upgrade").0
}

/// Sends `counter.list` with `body` as call `id` on `socket`; the reply frame (`result` or
/// `error`), skipping anything else the socket sends meanwhile.
async fn list_over_socket(socket: &mut Socket, id: u64, body: &Value) -> Value {
    let mut command = json!({"id": id, "type": "call", "procedure": "counter.list"});
    for (field, value) in body.as_object().expect("an object body") {
        command[field] = value.clone();
    }
    socket.send(Message::text(command.to_string())).await.expect("send");
    loop {
        let message = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("a reply in time")
            .expect("the socket stays open")
            .expect("a frame");
        let Message::Text(text) = message else { continue };
        let frame: Value = serde_json::from_str(&text).expect("JSON frame");
        if frame["id"] == id {
            return frame;
        }
    }
}

/// POSTs `counter.list` with `body` and an optional bearer `credential`.
async fn list_rpc(server: &TestServer, body: &Value, credential: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(server.url("/rpc/counter.list"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(credential) = credential {
        request = request.bearer_auth(credential);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON answer: {text}")))
}

/// Every page of a listing with `prefix` and `limit`, following `next`; each page checked to
/// hold at most `limit` counters in name order.
async fn all_pages(
    server: &TestServer,
    prefix: &str,
    limit: u32,
    credential: Option<&str>,
) -> Vec<Value> {
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    for _page in 0..10_000 {
        let mut body = json!({"prefix": prefix, "limit": limit});
        if let Some(after) = &after {
            body["after"] = json!(after);
        }
        let (status, page) = list_rpc(server, &body, credential).await;
        assert_eq!(status, 200, "{body}: {page}");
        let counters = page["counters"].as_array().expect("counters").clone();
        assert!(counters.len() <= limit as usize, "a page holds at most limit: {page}");
        listed.extend(counters);
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return listed,
        }
    }
    panic!("the listing never ended");
}

fn names(counters: &[Value]) -> Vec<String> {
    counters.iter().map(|counter| counter["name"].as_str().expect("name").to_owned()).collect()
}

/// Writes `count` counters `PREFIX{i:03}`, counter `i` incremented by `i + 1`; their values.
async fn write_counters(server: &TestServer, prefix: &str, count: usize) -> BTreeMap<String, i64> {
    let mut written = BTreeMap::new();
    for index in 0..count {
        let name = format!("{prefix}{index:03}");
        server.increment(&name, index as i64 + 1).await;
        written.insert(name, index as i64 + 1);
    }
    written
}

#[tokio::test]
async fn paging_covers_every_counter_once_in_name_order_with_its_state_and_watchers() {
    let server = TestServer::start().await;
    let mut written = write_counters(&server, "likes:", 60).await;
    written.extend(write_counters(&server, "votes:", 25).await);
    written.extend(write_counters(&server, "likes", 3).await);
    // One is watched: its watcher count says so.
    let mut watcher = server.watch("likes:007").await;
    watcher.next().await;

    for limit in [1, 7, 100, 1000] {
        let listed = all_pages(&server, "", limit, None).await;
        let expected: Vec<String> = written.keys().cloned().collect();
        assert_eq!(names(&listed), expected, "limit {limit}: every counter once, in name order");
        for counter in &listed {
            let name = counter["name"].as_str().expect("name");
            assert_eq!(counter["value"], written[name], "{counter}");
            assert_eq!(counter["version"], 1, "{counter}");
            assert!(counter["updatedAt"].as_str().is_some_and(|at| at.ends_with('Z')), "{counter}");
            let watchers = if name == "likes:007" { 1 } else { 0 };
            assert_eq!(counter["watchers"], watchers, "{counter}");
        }
    }
    // The default page is 100 counters: all 88 here, with no `next`.
    let (status, page) = list_rpc(&server, &json!({}), None).await;
    assert_eq!(status, 200);
    assert_eq!(page["counters"].as_array().map(Vec::len), Some(88));
    assert!(page.get("next").is_none(), "{page}");
    // A name never written is not a counter yet: reading it lists nothing new.
    server.value("likes:never").await;
    assert_eq!(all_pages(&server, "likes:never", 10, None).await.len(), 0);
    watcher.close().await;
}

#[tokio::test]
async fn the_prefix_keeps_only_names_that_start_with_it() {
    let server = TestServer::start().await;
    let likes = write_counters(&server, "likes:", 12).await;
    write_counters(&server, "likes", 2).await;
    write_counters(&server, "likes_", 2).await;
    write_counters(&server, "LIKES:", 2).await;
    write_counters(&server, "votes:", 5).await;

    let listed = all_pages(&server, "likes:", 5, None).await;
    assert_eq!(names(&listed), likes.keys().cloned().collect::<Vec<_>>());
    assert_eq!(names(&all_pages(&server, "likes:01", 100, None).await), ["likes:010", "likes:011"]);
    assert_eq!(names(&all_pages(&server, "likes:000", 100, None).await), ["likes:000"]);
    assert!(all_pages(&server, "nothing", 100, None).await.is_empty());
    assert_eq!(all_pages(&server, "", 3, None).await.len(), 23);
}

/// Makes an API key with `grants` using `admin`'s credential (or, for the first key, as the
/// local program that may turn auth on).
pub(crate) async fn create_key(
    server: &TestServer,
    name: &str,
    grants: &[&str],
    admin: Option<&str>,
) -> String {
    let mut request = reqwest::Client::new()
        .post(server.url("/rpc/key.create"))
        .header("content-type", "application/json")
        .body(json!({"name": name, "grants": grants}).to_string());
    if let Some(admin) = admin {
        request = request.bearer_auth(admin);
    }
    let response = request.send().await.expect("request");
    assert_eq!(response.status().as_u16(), 200);
    let created: Value = response.json().await.expect("JSON");
    created["key"].as_str().expect("key").to_owned()
}

#[tokio::test]
async fn a_key_that_may_read_likes_only_lists_only_likes_over_rpc_and_socket() {
    let server = TestServer::start().await;
    // Interleaved, so pages of the whole name space mix what it may and may not read.
    let mut likes = write_counters(&server, "likes:", 30).await;
    write_counters(&server, "likes", 2).await;
    write_counters(&server, "a:", 40).await;
    write_counters(&server, "m:", 40).await;
    write_counters(&server, "zz:", 40).await;
    server.increment("secret", 1).await;
    let admin = create_key(&server, "root", &["*=admin"], None).await;
    let reader =
        create_key(&server, "reader", &["likes:*=read", "secret=increment"], Some(&admin)).await;
    let one = create_key(&server, "one", &["m:005=read", "m:0*=increment"], Some(&admin)).await;

    let expected: Vec<String> = likes.keys().cloned().collect();
    for limit in [1, 4, 1000] {
        let listed = all_pages(&server, "", limit, Some(&reader)).await;
        assert_eq!(names(&listed), expected, "limit {limit}: only what it may read");
    }
    // A prefix wider than its grant, and one outside it.
    assert_eq!(names(&all_pages(&server, "lik", 7, Some(&reader)).await), expected);
    assert!(all_pages(&server, "m:", 7, Some(&reader)).await.is_empty());
    // A grant of one counter lists that counter (and a grant without read lists nothing).
    assert_eq!(names(&all_pages(&server, "", 2, Some(&one)).await), ["m:005"]);
    // The admin sees everything.
    assert_eq!(all_pages(&server, "", 1000, Some(&admin)).await.len(), 153);
    // Without credentials now that auth is on: refused, not an empty list.
    let (status, answer) = list_rpc(&server, &json!({}), None).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (401, Some("unauthenticated")),
        "{answer}"
    );

    // The socket's call answers exactly what the RPC answers.
    let mut socket = socket(&server, Some(&reader)).await;
    let body = json!({"limit": 10, "after": "likes:004"});
    let (status, rpc) = list_rpc(&server, &body, Some(&reader)).await;
    assert_eq!(status, 200);
    let frame = list_over_socket(&mut socket, 1, &body).await;
    assert_eq!(frame["type"], "result", "{frame}");
    assert_eq!(frame["result"], rpc);
    assert_eq!(names(rpc["counters"].as_array().expect("counters"))[0], "likes:005");
    assert_eq!(rpc["next"], "likes:014");
    likes.retain(|name, _| name.as_str() > "likes:004");
    assert_eq!(rpc["counters"][0]["value"], likes["likes:005"]);
}

#[tokio::test]
async fn values_are_the_committed_ones_while_writes_go_on() {
    let server = TestServer::start().await;
    server.increment("hot", 1).await;
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let url = server.url("/rpc/counter.increment");
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                for _ in 0..25 {
                    let response = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(r#"{"name":"hot"}"#)
                        .send()
                        .await
                        .expect("request");
                    assert_eq!(response.status().as_u16(), 200);
                }
            })
        })
        .collect();
    // Every listing shows a committed state: value equal to version (every write adds 1),
    // never going back.
    let mut seen = 0;
    while !writers.iter().all(|writer| writer.is_finished()) {
        let (_, page) = list_rpc(&server, &json!({"prefix": "hot"}), None).await;
        let (value, version) = (&page["counters"][0]["value"], &page["counters"][0]["version"]);
        assert_eq!(value.as_u64(), version.as_u64(), "{page}");
        let value = value.as_u64().expect("value");
        assert!(value >= seen, "went back from {seen} to {value}");
        seen = value;
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    // Once every write is answered, the list shows all of them.
    let (_, page) = list_rpc(&server, &json!({"prefix": "hot"}), None).await;
    assert_eq!(page["counters"][0]["value"], 101);
}

#[tokio::test]
async fn bad_input_is_refused_with_what_is_allowed_on_both_transports_and_changes_nothing() {
    let server = TestServer::start().await;
    write_counters(&server, "c:", 3).await;
    let before = all_pages(&server, "", 100, None).await;
    let mut socket = socket(&server, None).await;
    let cases = [
        (json!({"limit": 0}), 400, "invalid_limit", "from 1 to 1000"),
        (json!({"limit": 1001}), 400, "invalid_limit", "from 1 to 1000"),
        (json!({"limit": 2.5}), 400, "invalid_limit", "from 1 to 1000"),
        (json!({"prefix": 5}), 400, "invalid_field", "prefix"),
        (json!({"prefix": "c d"}), 400, "invalid_field", "allowed"),
        (json!({"prefix": "x".repeat(129)}), 400, "invalid_field", "129 bytes"),
        (json!({"after": ""}), 400, "invalid_name", "after must be a counter name"),
        (json!({"after": "a/b"}), 400, "invalid_name", "allowed"),
        (json!({"perfix": "c"}), 400, "invalid_field", "perfix"),
    ];
    for (id, (body, status, code, says)) in cases.iter().enumerate() {
        let (got, answer) = list_rpc(&server, body, None).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (*status, Some(*code)),
            "{body}: {answer}"
        );
        let message = answer["error"]["message"].as_str().expect("message");
        assert!(message.contains(says), "{body}: {message:?} should say {says:?}");
        let frame = list_over_socket(&mut socket, id as u64 + 1, body).await;
        assert_eq!(frame["type"], "error", "{frame}");
        assert_eq!(frame["code"], *code, "{frame}");
        assert_eq!(frame["message"], message, "the socket says what the RPC says");
    }
    // Not an object at all, over the RPC.
    let (status, answer) = list_rpc(&server, &json!([]), None).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("invalid_field")),
        "{answer}"
    );
    assert_eq!(all_pages(&server, "", 100, None).await, before, "nothing changed");
}

/// Issue 16, the rate meter in the list: each listed counter carries `opsLastMinute`, the same
/// count `getMetadata` gives, read for the whole page at once.
#[tokio::test]
async fn issue_16_each_listed_counter_carries_its_operations_of_the_last_minute() {
    let server = TestServer::start().await;
    for (name, writes) in [("rate:a", 5), ("rate:b", 2), ("rate:c", 1)] {
        for _ in 0..writes {
            server.increment(name, 1).await;
        }
    }
    server.ok("reset", json!({"name": "rate:c"})).await;
    let listed = all_pages(&server, "rate:", 2, None).await;
    let meters: Vec<(String, u64)> = listed
        .iter()
        .map(|counter| {
            let name = counter["name"].as_str().expect("name").to_owned();
            (name, counter["opsLastMinute"].as_u64().expect("opsLastMinute"))
        })
        .collect();
    let expected = [("rate:a", 5), ("rate:b", 2), ("rate:c", 2)];
    assert_eq!(meters, expected.map(|(name, ops)| (name.to_owned(), ops)));
    for (name, ops) in expected {
        let metadata = server.ok("getMetadata", json!({"name": name})).await;
        assert_eq!(metadata["opsLastMinute"], ops, "the list and getMetadata agree: {metadata}");
    }
}
