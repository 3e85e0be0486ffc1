//! Presence over several nodes on one PostgreSQL database, in this process: every node shows
//! the watchers of all of them, a node that stops takes its share with it at once, and the share
//! of a node that died stops counting within the documented expiry.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tally_proto::Presence;
use tally_proto::socket::Frame;
use tally_server::presence::EXPIRY;
use tally_server::{Config, SqliteOptions};
use tokio::time::Instant;

use crate::harness::{CrashableNode, PATIENCE, TestServer, Watcher, test_config};
use crate::postgres::TestDatabase;

async fn node(database: &Arc<TestDatabase>) -> TestServer {
    node_with(test_config(), database).await
}

async fn node_with(config: Config, database: &Arc<TestDatabase>) -> TestServer {
    TestServer::start_node(config, SqliteOptions::default(), Arc::clone(database)).await
}

/// A version-2 socket on `server` subscribed to `name` with presence; its first presence push.
async fn watch_presence(server: &TestServer, name: &str) -> (Watcher, Presence) {
    let mut socket = server.socket().await;
    let subscribe = json!({"id": 1, "type": "subscribe", "name": name, "presence": true});
    socket.send_text(&subscribe.to_string()).await;
    match socket.next_frame().await {
        Frame::Snapshot { id: Some(1), .. } => {}
        other => panic!("expected the subscription's snapshot, got {other:?}"),
    }
    let first = next_presence(&mut socket, name).await;
    (socket, first)
}

/// The next presence push of `name` on `socket`.
async fn next_presence(socket: &mut Watcher, name: &str) -> Presence {
    match socket.next_frame().await {
        Frame::Presence { name: pushed, presence } if pushed == name => presence,
        other => panic!("expected a presence push of {name}, got {other:?}"),
    }
}

/// Reads `socket`'s presence pushes of `name` until one says `watchers`; how long it took.
async fn until_watchers(socket: &mut Watcher, name: &str, watchers: u64) -> Duration {
    let started = Instant::now();
    loop {
        let presence = next_presence(socket, name).await;
        if presence.watchers == watchers {
            return started.elapsed();
        }
        assert!(started.elapsed() < PATIENCE, "presence never reached {watchers}: {presence:?}");
    }
}

async fn presence_of(server: &TestServer, name: &str) -> Presence {
    let answer = server.ok("getPresence", json!({"name": name})).await;
    serde_json::from_value(answer).expect("a presence answer")
}

fn counts(watchers: u64, users: u64) -> Presence {
    Presence { watchers, users }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_shows_the_watchers_of_all_and_a_stopped_nodes_share_goes_at_once() {
    let database = Arc::new(TestDatabase::create().await);
    // Node one's counters hibernate quickly, so that a topic there can go and come back.
    let quick = Config { idle_timeout: Duration::from_millis(300), ..test_config() };
    let (one, two) = (node_with(quick, &database).await, node(&database).await);

    let (mut on_one, first) = watch_presence(&one, "room").await;
    assert_eq!(first, counts(1, 1));
    let (mut on_two, _) = watch_presence(&two, "room").await;
    // Each node hears of the other's watcher at one of its next ticks.
    for socket in [&mut on_one, &mut on_two] {
        let waited = until_watchers(socket, "room", 2).await;
        assert!(waited < Duration::from_secs(3), "took {waited:?}");
    }
    assert_eq!(presence_of(&one, "room").await, counts(2, 2));
    assert_eq!(presence_of(&two, "room").await, counts(2, 2));

    // With the same nodes live, a node reads only the counters whose counts changed
    // elsewhere: a second watcher on node two, then its leaving, reach node one.
    let (more, _) = watch_presence(&two, "room").await;
    let waited = until_watchers(&mut on_one, "room", 3).await;
    assert!(waited < Duration::from_secs(3), "took {waited:?}");
    more.close().await;
    let waited = until_watchers(&mut on_one, "room", 2).await;
    assert!(waited < Duration::from_secs(3), "took {waited:?}");
    // A topic that went and came back (nobody watched the counter here, and its actor
    // hibernated) learns the other nodes' counts again, though theirs did not change.
    on_one.close().await;
    let started = Instant::now();
    while presence_of(&two, "room").await != counts(1, 1) {
        assert!(started.elapsed() < Duration::from_secs(3), "node two never saw one leave");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut again, first) = watch_presence(&one, "room").await;
    if first.watchers != 2 {
        let waited = until_watchers(&mut again, "room", 2).await;
        assert!(waited < Duration::from_secs(3), "took {waited:?}");
    }
    let mut on_one = again;

    // A counter watched on one node only is read from the others by getPresence.
    let (_solo, _) = watch_presence(&one, "solo").await;
    let started = Instant::now();
    while presence_of(&two, "solo").await != counts(1, 1) {
        assert!(started.elapsed() < Duration::from_secs(3), "node two never counted solo");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Node two stops: its share is removed as it goes, well before it would have expired.
    two.stop().await;
    let waited = until_watchers(&mut on_one, "room", 1).await;
    assert!(waited < EXPIRY / 3, "took {waited:?}");
    assert_eq!(presence_of(&one, "room").await, counts(1, 1));
    assert_eq!(database.count("SELECT count(*) FROM presence_nodes").await, 1);
    assert_eq!(database.count("SELECT count(*) FROM presence").await, 2, "room and solo");
    one.stop().await;
    assert_eq!(database.count("SELECT count(*) FROM presence_nodes").await, 0);
    assert_eq!(database.count("SELECT count(*) FROM presence").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_nodes_share_stops_counting_within_the_expiry_and_is_swept() {
    let database = Arc::new(TestDatabase::create().await);
    let survivor = node(&database).await;
    let doomed = CrashableNode::start(test_config(), Arc::clone(&database)).await;

    let (mut watcher, _) = watch_presence(&survivor, "room").await;
    let (_lost, _) = watch_presence(&doomed.server, "room").await;
    until_watchers(&mut watcher, "room", 2).await;

    // Killed: nothing of its shutdown runs, so its rows stay until they expire.
    doomed.crash();
    let crashed = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(presence_of(&survivor, "room").await, counts(2, 2), "counted until it expires");
    assert_eq!(database.count("SELECT count(*) FROM presence_nodes").await, 2);

    until_watchers(&mut watcher, "room", 1).await;
    let waited = crashed.elapsed();
    // Its last heartbeat was at most a tick (and an exchange) before the crash; the survivor
    // notices at its first tick after the expiry.
    assert!(waited > EXPIRY - Duration::from_secs(3), "expired early: {waited:?}");
    assert!(waited < EXPIRY + Duration::from_secs(3), "expired late: {waited:?}");
    assert_eq!(presence_of(&survivor, "room").await, counts(1, 1));
    // The survivor swept the dead node's rows in the same exchange.
    assert_eq!(database.count("SELECT count(*) FROM presence_nodes").await, 1);
    assert_eq!(database.count("SELECT count(*) FROM presence").await, 1);
    survivor.stop().await;
}
