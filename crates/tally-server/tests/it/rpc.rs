//! The seven RPC procedures against a real server.

use serde_json::{Value, json};
use tally_server::{Quotas, SqliteOptions};

use crate::harness::{TestServer, test_config};

#[tokio::test]
async fn increment_answers_the_seed_update_plus_version() {
    let server = TestServer::start().await;
    let first = server.increment("likes", 41).await;
    let second = server.ok("increment", json!({"name": "likes"})).await;

    assert_eq!(first["type"], "increment");
    assert_eq!(first["version"], 1);
    assert_eq!(second["value"], 42);
    assert_eq!(second["previousValue"], 41);
    assert_eq!(second["version"], 2);
    let metadata = &second["metadata"];
    assert_eq!(metadata["name"], "likes");
    assert_eq!(metadata["value"], 42);
    assert_eq!(metadata["operationCount"], 2);
    assert_eq!(metadata["id"], first["metadata"]["id"]);
    assert_eq!(metadata["createdAt"], first["timestamp"]);
    assert_eq!(metadata["updatedAt"], second["timestamp"]);
    let timestamp = second["timestamp"].as_str().expect("timestamp");
    // RFC 3339 UTC with milliseconds: 2025-01-15T12:00:00.000Z
    assert_eq!(timestamp.len(), 24, "{timestamp}");
    assert!(timestamp.ends_with('Z') && timestamp.as_bytes()[19] == b'.', "{timestamp}");
}

#[tokio::test]
async fn every_operation_and_read() {
    let server = TestServer::start().await;
    server.increment("stock", 10).await;
    let decrement = server.ok("decrement", json!({"name": "stock", "amount": 3})).await;
    assert_eq!(
        (decrement["type"].clone(), decrement["value"].clone()),
        (json!("decrement"), json!(7))
    );
    let set = server.ok("setValue", json!({"name": "stock", "value": -5})).await;
    assert_eq!(
        (set["type"].clone(), set["value"].clone(), set["previousValue"].clone()),
        (json!("setValue"), json!(-5), json!(7))
    );
    let reset = server.ok("reset", json!({"name": "stock"})).await;
    assert_eq!(
        (reset["type"].clone(), reset["value"].clone(), reset["version"].clone()),
        (json!("reset"), json!(0), json!(4))
    );
    server.ok("decrement", json!({"name": "stock"})).await;

    assert_eq!(server.value("stock").await, (-1, 5));
    let metadata = server.ok("getMetadata", json!({"name": "stock"})).await;
    assert_eq!(metadata["value"], -1);
    assert_eq!(metadata["operationCount"], 5);
    assert!(metadata["id"].is_i64());

    let history = server.ok("getHistory", json!({"name": "stock"})).await;
    let summary: Vec<(u64, String, Option<i64>, i64, i64)> = history["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|entry| {
            (
                entry["version"].as_u64().unwrap(),
                entry["type"].as_str().unwrap().to_owned(),
                entry["amount"].as_i64(),
                entry["previousValue"].as_i64().unwrap(),
                entry["value"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (5, "decrement".into(), Some(1), 0, -1),
            (4, "reset".into(), None, -5, 0),
            (3, "setValue".into(), None, 7, -5),
            (2, "decrement".into(), Some(3), 10, 7),
            (1, "increment".into(), Some(10), 0, 10),
        ]
    );
    assert!(history.get("next").is_none(), "no older entries remain: {history}");
}

#[tokio::test]
async fn history_pages_newest_first_with_next() {
    let server = TestServer::start().await;
    for _ in 0..7 {
        server.increment("pages", 1).await;
    }
    let mut before: Option<Value> = None;
    let mut pages = Vec::new();
    loop {
        let mut body = json!({"name": "pages", "limit": 3});
        if let Some(before) = &before {
            body["before"] = before.clone();
        }
        let page = server.ok("getHistory", body).await;
        let versions: Vec<u64> = page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["version"].as_u64().unwrap())
            .collect();
        pages.push(versions);
        match page.get("next") {
            Some(next) => before = Some(next.clone()),
            None => break,
        }
    }
    assert_eq!(pages, vec![vec![7, 6, 5], vec![4, 3, 2], vec![1]]);
}

#[tokio::test]
async fn a_counter_never_written_reads_as_zero_and_stores_nothing() {
    let server = TestServer::start().await;
    assert_eq!(server.value("ghost").await, (0, 0));
    let metadata = server.ok("getMetadata", json!({"name": "ghost"})).await;
    assert_eq!(
        metadata,
        json!({"id": null, "name": "ghost", "value": 0, "createdAt": null, "updatedAt": null, "operationCount": 0, "opsLastMinute": 0,
               "bounds": {"min": null, "max": null, "clamp": false}})
    );
    let history = server.ok("getHistory", json!({"name": "ghost"})).await;
    assert_eq!(history, json!({"entries": []}));

    assert_eq!(server.stored_rows("counters").await, 0);
}

#[tokio::test]
async fn history_keeps_only_the_most_recent_operations() {
    let server = TestServer::start_with(
        test_config(),
        SqliteOptions { history_limit: 5, ..SqliteOptions::default() },
    )
    .await;
    for _ in 0..8 {
        server.increment("short", 1).await;
    }
    let history = server.ok("getHistory", json!({"name": "short", "limit": 100})).await;
    let versions: Vec<u64> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![8, 7, 6, 5, 4]);
    assert_eq!(server.value("short").await, (8, 8));
}

#[tokio::test]
async fn counters_are_isolated() {
    let server = TestServer::start().await;
    server.increment("a", 1).await;
    server.increment("b", 100).await;
    server.increment("a", 1).await;
    assert_eq!(server.value("a").await, (2, 2));
    assert_eq!(server.value("b").await, (100, 1));
}

#[tokio::test]
async fn metrics_and_health() {
    let server = TestServer::start().await;
    server.increment("m", 1).await;
    server.call("increment", json!({"name": ""})).await;
    assert_eq!(server.metric("tally_operations_total{operation=\"increment\"}").await, 1.0);
    assert_eq!(server.metric("tally_errors_total{code=\"invalid_name\"}").await, 1.0);
    assert_eq!(
        server.metric("tally_operation_duration_seconds_count{operation=\"increment\"}").await,
        1.0
    );
    assert_eq!(server.metric("tally_counters_in_memory").await, 1.0);
    // One write, one transaction of one operation.
    assert_eq!(server.metric("tally_store_transactions_total").await, 1.0);
    assert_eq!(server.metric("tally_store_transaction_operations_sum").await, 1.0);
    let (status, body) = server.raw(reqwest::Method::GET, "/healthz", None, Vec::new()).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, body) = server.raw(reqwest::Method::GET, "/readyz", None, Vec::new()).await;
    assert_eq!((status, body.as_str()), (200, r#"{"ready":true,"restartRequired":false}"#));
    assert_eq!(server.metric("tally_store_ready").await, 1.0);
    assert_eq!(server.metric("tally_store_stopped").await, 0.0);
}

/// Issue 16: at `--max-counters`, a write that would create a counter is refused 507
/// `quota_exceeded`, saying which quota and its value, and stores nothing; counters that exist
/// keep working.
#[tokio::test]
async fn issue_16_at_max_counters_new_counters_are_refused_and_existing_ones_keep_working() {
    let quotas = Quotas { max_counters: Some(2), max_database_bytes: None };
    let options = SqliteOptions { quotas, ..SqliteOptions::default() };
    let server = TestServer::start_with(test_config(), options).await;
    server.increment("first", 1).await;
    server.increment("second", 1).await;
    for (procedure, body) in [
        ("increment", json!({"name": "third"})),
        ("setValue", json!({"name": "third", "value": 7})),
        ("reset", json!({"name": "third"})),
    ] {
        let (status, answer) = server.call(procedure, body).await;
        assert_eq!(status, 507, "{procedure}: {answer}");
        assert_eq!(answer["error"]["code"], "quota_exceeded", "{answer}");
        assert_eq!(answer["error"]["temporary"], false, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        for says in ["\"third\"", "--max-counters quota is 2", "existing counters still work"] {
            assert!(message.contains(says), "{message} does not say {says}");
        }
    }
    assert_eq!(server.value("third").await, (0, 0), "nothing of a refused write was stored");
    // The counters that exist take writes as before.
    assert_eq!(server.increment("first", 4).await["value"], 5);
    assert_eq!(server.ok("setValue", json!({"name": "second", "value": 9})).await["value"], 9);
}

/// Issue 16: at `--max-database-size` the same, naming that quota.
#[tokio::test]
async fn issue_16_at_max_database_size_new_counters_are_refused() {
    // Any database is over one byte: no counter may be created.
    let quotas = Quotas { max_counters: None, max_database_bytes: Some(1) };
    let options = SqliteOptions { quotas, ..SqliteOptions::default() };
    let server = TestServer::start_with(test_config(), options).await;
    let (status, answer) = server.call("increment", json!({"name": "new"})).await;
    assert_eq!((status, &answer["error"]["code"]), (507, &json!("quota_exceeded")), "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("--max-database-size quota is 1"), "{message}");
    assert!(message.contains("bytes of database"), "{message}");
    assert_eq!(server.value("new").await, (0, 0));
}

/// The rate meter: `getMetadata` says how many operations the last minute saw, read from
/// history (so also after the counter's actor hibernated); updates never carry it.
#[tokio::test]
async fn get_metadata_counts_the_operations_of_the_last_minute() {
    let server = TestServer::start().await;
    let never = server.ok("getMetadata", serde_json::json!({"name": "rate-none"})).await;
    assert_eq!(never["opsLastMinute"], 0, "{never}");
    for _ in 0..3 {
        let update = server.increment("rate", 1).await;
        assert!(update["metadata"].get("opsLastMinute").is_none(), "{update}");
    }
    let metadata = server.ok("getMetadata", serde_json::json!({"name": "rate"})).await;
    assert_eq!(
        (metadata["opsLastMinute"].as_u64(), metadata["operationCount"].as_u64()),
        (Some(3), Some(3))
    );
}
