//! Hibernation: an idle counter leaves memory, its watchers stay, the next operation wakes it.

use std::time::Duration;

use tally_proto::ServerMessage;
use tally_server::{Config, SqliteOptions};

use crate::harness::{TestServer, test_config};

#[tokio::test]
async fn an_idle_counter_hibernates_and_wakes_with_the_right_state() {
    let config = Config { idle_timeout: Duration::from_millis(200), ..test_config() };
    let server = TestServer::start_with(config, SqliteOptions::default()).await;
    server.increment("sleepy", 5).await;
    server.increment("sleepy", 2).await;
    let mut watcher = server.watch("sleepy").await;
    assert!(matches!(watcher.next().await, ServerMessage::Snapshot(s) if s.version == 2));
    assert_eq!(server.metric("tally_counters_in_memory").await, 1.0);

    // Nobody touches it: it leaves memory, and the watcher stays connected.
    server.wait_for_metric("tally_counters_in_memory", 0.0).await;
    assert_eq!(server.metric("tally_counter_hibernations_total").await, 1.0);
    assert_eq!(server.metric("tally_watchers").await, 1.0);

    // The next operation wakes it where it was, and the watcher sees it.
    let answer = server.increment("sleepy", 1).await;
    assert_eq!((answer["value"].as_i64(), answer["version"].as_u64()), (Some(8), Some(3)));
    assert_eq!(answer["metadata"]["operationCount"], 3);
    let ServerMessage::Update(update) = watcher.next().await else { panic!("expected an update") };
    assert_eq!((update.value, update.version), (8, 3));
    let loads = server.metric("tally_counter_loads_total").await;
    if crate::harness::POSTGRES {
        // A shared store is read again for the watch's snapshot too (another node may have
        // written), and again for each word from the broker that the counter may be behind
        // (its first LISTEN, which can come after the first write), so at least the two of one
        // node plus the snapshot's.
        assert!(loads >= 3.0, "{loads} loads");
    } else {
        assert_eq!(loads, 2.0);
    }
}

/// Issue 16: reading names nobody wrote used to start an actor per name, each kept for
/// `--idle-timeout`; a read now answers from storage and leaves nothing behind.
#[tokio::test]
async fn issue_16_reads_of_names_never_written_hold_nothing() {
    let config = Config { idle_timeout: Duration::from_millis(200), ..test_config() };
    let server = TestServer::start_with(config, SqliteOptions::default()).await;
    for index in 0..100 {
        let name = format!("unknown-{index}");
        assert_eq!(server.value(&name).await, (0, 0));
        let metadata = server.ok("getMetadata", serde_json::json!({"name": name})).await;
        assert_eq!((metadata["id"].is_null(), &metadata["operationCount"]), (true, &0.into()));
        let history = server.ok("getHistory", serde_json::json!({"name": name})).await;
        assert_eq!(history["entries"].as_array().map(Vec::len), Some(0));
    }
    assert_eq!(server.metric("tally_counters_in_memory").await, 0.0);
    assert_eq!(server.metric("tally_counters_held").await, 0.0);
    assert_eq!(server.metric("tally_counter_loads_total").await, 0.0);

    // A written counter that hibernated is read from storage too, with its state.
    server.increment("written", 3).await;
    server.wait_for_metric("tally_counters_in_memory", 0.0).await;
    assert_eq!(server.value("written").await, (3, 1));
    let metadata = server.ok("getMetadata", serde_json::json!({"name": "written"})).await;
    assert_eq!((&metadata["value"], &metadata["operationCount"]), (&3.into(), &1.into()));
    assert_eq!(server.metric("tally_counters_in_memory").await, 0.0);
    assert_eq!(server.metric("tally_counters_held").await, 0.0);
}

/// Issue 16: a watch of a name nobody wrote starts no actor, gets the first write when someone
/// makes it, and the counter's topic is gone once its last watcher left.
#[tokio::test]
async fn issue_16_a_watch_of_a_name_never_written_holds_only_its_topic() {
    let config = Config { idle_timeout: Duration::from_millis(200), ..test_config() };
    let server = TestServer::start_with(config, SqliteOptions::default()).await;
    let mut first = server.watch("later").await;
    assert!(matches!(first.next().await, ServerMessage::Snapshot(s) if s.version == 0));
    let mut second = server.socket().await;
    second.send_text(r#"{"id":1,"type":"subscribe","name":"later"}"#).await;
    let reply = second.next_text().await;
    assert!(reply.contains(r#""type":"snapshot""#) && reply.contains(r#""version":0"#), "{reply}");
    no_actor_but_for_the_broker(&server).await;
    assert_eq!(server.metric("tally_counters_held").await, 1.0);
    assert_eq!(server.metric("tally_watchers").await, 1.0);

    // The first write starts the actor, which publishes on the topic the watchers hold.
    let answer = server.call_text("increment", serde_json::json!({"name": "later"})).await;
    assert_eq!(first.next_update().await, (1, answer.clone()));
    let pushed = second.next_text().await;
    assert!(pushed.contains(r#""name":"later""#) && pushed.contains(r#""version":1"#), "{pushed}");

    // Watchers gone and the actor hibernated: nothing of the counter is held.
    first.close().await;
    second.close().await;
    server.wait_for_metric("tally_watchers", 0.0).await;
    server.wait_for_metric("tally_subscriptions", 0.0).await;
    server.wait_for_metric("tally_counters_in_memory", 0.0).await;
    server.wait_for_metric("tally_counters_held", 0.0).await;

    // Watched and left without any write: no actor at any point, and nothing left.
    let mut watcher = server.watch("never").await;
    assert!(matches!(watcher.next().await, ServerMessage::Snapshot(s) if s.version == 0));
    assert_eq!(server.metric("tally_counters_held").await, 1.0);
    no_actor_but_for_the_broker(&server).await;
    watcher.close().await;
    server.wait_for_metric("tally_counters_held", 0.0).await;
    assert_eq!(server.metric("tally_counters_in_memory").await, 0.0);
}

/// No actor is live. On PostgreSQL the broker's first word after it connects (that anything
/// may have changed) starts the actor of each watched counter to read it, which then
/// hibernates; that is the broker's doing, not the watch's, so it is waited out there.
async fn no_actor_but_for_the_broker(server: &TestServer) {
    if crate::harness::POSTGRES {
        server.wait_for_metric("tally_counters_in_memory", 0.0).await;
    } else {
        assert_eq!(server.metric("tally_counters_in_memory").await, 0.0);
    }
}
