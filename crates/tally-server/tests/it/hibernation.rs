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
