//! One [`Connection`] (the v2 socket) against a real server: many subscriptions at once, calls
//! over the socket, resumes after a restart, writes that count once although their answer was
//! lost, and reconnects spread by the server's advised delay.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::select_all;
use tally_client::{
    Backoff, Client, ClientError, Connection, ConnectionOptions, OpKind, Procedure,
    SubscribeOptions, Subscription, SubscriptionEvent, Write,
};
use tally_server::Config;

use crate::support::{PATIENCE, Proxy, next_event, serve, serve_with};

/// Reconnects after 10 to 50 ms, so tests do not wait for the real backoff.
fn fast() -> ConnectionOptions {
    ConnectionOptions {
        backoff: Backoff {
            min: Duration::from_millis(10),
            max: Duration::from_millis(50),
            factor: 2.0,
        },
        ..ConnectionOptions::default()
    }
}

/// Reads `subscription` until its first snapshot, and answers its version.
async fn snapshot_version(subscription: &mut Subscription) -> u64 {
    loop {
        match next_event(subscription).await {
            SubscriptionEvent::Snapshot(snapshot) => return snapshot.version,
            SubscriptionEvent::Disconnected { .. } => {}
            other => panic!("{}: expected a snapshot, got {other:?}", subscription.name()),
        }
    }
}

/// Polls `check` until it holds, within [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 100 counters on one socket while 4 writers change them: each subscription sees its own
/// counter's versions, once each, in order. Dropping one subscription unsubscribes exactly that
/// counter; the others go on.
#[tokio::test]
async fn many_subscriptions_on_one_connection_see_every_version_once_in_order() {
    const COUNTERS: usize = 100;
    const WRITES: u64 = 3;
    let dir = tempfile::tempdir().expect("dir");
    let (server, addr) = serve(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let client = Client::new(&format!("http://{addr}")).expect("client");
    let connection = client.connect_with(fast());
    let names: Vec<String> = (0..COUNTERS).map(|i| format!("many-{i}")).collect();
    let mut subscriptions: Vec<Subscription> =
        names.iter().map(|name| connection.subscribe(name)).collect();
    for subscription in &mut subscriptions {
        assert_eq!(snapshot_version(subscription).await, 0);
    }

    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let client = client.clone();
            let names: Vec<String> = names.iter().skip(writer).step_by(4).cloned().collect();
            tokio::spawn(async move {
                for _ in 0..WRITES {
                    for name in &names {
                        client.increment(name, 1).await.expect("write");
                    }
                }
            })
        })
        .collect();
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut all = select_all(subscriptions.into_iter().map(|subscription| {
        let name = subscription.name().to_owned();
        subscription.map(move |event| (name.clone(), event))
    }));
    let mut updates = 0;
    while updates < COUNTERS * WRITES as usize {
        let (name, event) =
            tokio::time::timeout(PATIENCE, all.next()).await.expect("in time").expect("open");
        match event {
            SubscriptionEvent::Update(update) => {
                assert_eq!(update.metadata.name, name, "each update reaches its own counter");
                seen.entry(name).or_default().push(update.version);
                updates += 1;
            }
            other => panic!("{name}: unexpected {other:?}"),
        }
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    assert_eq!(seen.len(), COUNTERS);
    for (name, versions) in &seen {
        assert_eq!(versions, &(1..=WRITES).collect::<Vec<_>>(), "{name}");
    }

    // Unsubscribing one counter (by dropping its stream) leaves the others subscribed.
    let mut streams: Vec<_> = all.into_iter().collect();
    let dropped = streams.iter().position(|s| s.get_ref().name() == "many-0").expect("many-0");
    drop(streams.remove(dropped));
    eventually("many-0 has no watcher left", || async {
        connection.get_presence("many-0").await.expect("presence").watchers == 0
    })
    .await;
    assert_eq!(connection.get_presence("many-1").await.expect("presence").watchers, 1);
    client.increment("many-1", 1).await.expect("write");
    let many_1 = streams.iter_mut().find(|s| s.get_ref().name() == "many-1").expect("many-1");
    match tokio::time::timeout(PATIENCE, many_1.next()).await.expect("in time") {
        Some((_, SubscriptionEvent::Update(update))) => assert_eq!(update.version, WRITES + 1),
        other => panic!("expected many-1's update, got {other:?}"),
    }
    drop(streams);
    server.stop().await;
}

/// Calls over the socket answer exactly what the RPC answers, after the commit; a bad call is
/// refused with the RPC's error and the socket stays usable.
#[tokio::test]
async fn calls_over_the_socket_answer_as_the_rpc_does() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, addr) = serve(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let client = Client::new(&format!("http://{addr}")).expect("client");
    let connection = client.connect_with(fast());

    let update = connection.increment("calls", 5).await.expect("increment");
    assert_eq!((update.kind, update.value, update.version), (OpKind::Increment, 5, 1));
    // Answered after the commit: the RPC sees it at once.
    let value = client.get_value("calls").await.expect("value");
    assert_eq!((value.value, value.version), (5, 1));
    assert_eq!(connection.set_value("calls", -2).await.expect("set").previous_value, 5);
    assert_eq!(connection.get_value("calls").await.expect("value").value, -2);
    let page = connection.get_history("calls", Some(1), None).await.expect("history");
    assert_eq!(page.entries.iter().map(|entry| entry.version).collect::<Vec<_>>(), vec![2]);
    let raw = connection
        .call(Procedure::GetMetadata, serde_json::json!({"name": "calls"}))
        .await
        .expect("raw call");
    assert_eq!(raw["operationCount"], 2);

    let refused = connection.increment("bad name", 1).await.expect_err("invalid name");
    assert_eq!(refused.code(), Some("invalid_name"));
    assert!(matches!(refused, ClientError::Rejected { status: 400, .. }), "{refused:?}");
    let refused = connection.increment("calls", 0).await.expect_err("invalid amount");
    assert_eq!(refused.code(), Some("invalid_amount"));
    let refused =
        connection.call(Procedure::KeyList, serde_json::json!({})).await.expect_err("RPC-only");
    assert_eq!(refused.code(), Some("unknown_procedure"));
    // Still usable after the refusals.
    assert_eq!(connection.reset("calls").await.expect("reset").value, 0);
    drop(connection);
    server.stop().await;
}

/// A restart of the server: every subscription of the connection resumes after the last version
/// it delivered, and sees the changes made while it was away once each, in order.
#[tokio::test]
async fn subscriptions_resume_after_a_server_restart_with_no_gap() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, addr) = serve(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let client = Client::new(&format!("http://{addr}")).expect("client");
    let names = ["restart-a", "restart-b", "restart-c"];
    for name in names {
        client.increment(name, 1).await.expect("first write");
    }
    let connection = client.connect_with(fast());
    let mut subscriptions: Vec<Subscription> =
        names.iter().map(|name| connection.subscribe(name)).collect();
    for subscription in &mut subscriptions {
        assert_eq!(snapshot_version(subscription).await, 1);
    }

    server.stop().await;
    let (server, _) = serve(dir.path(), addr).await;
    for name in names {
        for _ in 0..3 {
            client.increment(name, 1).await.expect("write after restart");
        }
    }
    for subscription in &mut subscriptions {
        let mut versions = Vec::new();
        let mut resumed = None;
        while versions.len() < 3 {
            match next_event(subscription).await {
                SubscriptionEvent::Update(update) => versions.push(update.version),
                SubscriptionEvent::Resumed { since, .. } => resumed = Some(since),
                SubscriptionEvent::Disconnected { .. } => {}
                other => panic!("{}: unexpected {other:?}", subscription.name()),
            }
        }
        assert_eq!(resumed, Some(1), "{} resumed after what it had", subscription.name());
        assert_eq!(versions, vec![2, 3, 4], "{}", subscription.name());
    }
    drop(subscriptions);
    server.stop().await;
}

/// The server comes back on another database (replaced, or restored from an older backup)
/// whose counter has other operations at the versions the client had: the subscription resumes
/// with its `since` and the epoch it came with, and is sent a resync snapshot of the new
/// database instead of updates that would continue another history.
#[tokio::test]
async fn a_resume_against_a_replaced_database_resyncs_instead_of_mixing_histories() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, addr) = serve(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let client = Client::new(&format!("http://{addr}")).expect("client");
    for _ in 0..2 {
        client.increment("replaced", 1).await.expect("write");
    }
    let connection = client.connect_with(fast());
    let mut subscription = connection.subscribe("replaced");
    let first = match next_event(&mut subscription).await {
        SubscriptionEvent::Snapshot(snapshot) => snapshot,
        other => panic!("expected a snapshot, got {other:?}"),
    };
    assert_eq!((first.value, first.version), (2, 2));
    let old_epoch = first.epoch.expect("the server names its epoch");

    server.stop().await;
    for file in ["tally.db", "tally.db-wal", "tally.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(file));
    }
    // The new database's history is written first, on another port, so that the client meets
    // it at version 4 when it comes back: the versions it had exist there too.
    let (elsewhere, other_addr) = serve(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let other = Client::new(&format!("http://{other_addr}")).expect("client");
    for amount in [50, 1, 1, 1] {
        other.increment("replaced", amount).await.expect("write to the new database");
    }
    elsewhere.stop().await;
    let (server, _) = serve(dir.path(), addr).await;
    let resync = loop {
        match next_event(&mut subscription).await {
            SubscriptionEvent::Disconnected { .. } => {}
            SubscriptionEvent::Snapshot(snapshot) => break snapshot,
            other => panic!("expected a resync snapshot, got {other:?}"),
        }
    };
    assert!(resync.resync, "marked as a resync");
    assert_eq!((resync.value, resync.version), (53, 4), "the new database's state");
    assert_ne!(resync.epoch, Some(old_epoch), "the new database's epoch");
    client.increment("replaced", 1).await.expect("a live write");
    match next_event(&mut subscription).await {
        SubscriptionEvent::Update(update) => assert_eq!((update.value, update.version), (54, 5)),
        other => panic!("expected the live update, got {other:?}"),
    }
    drop(subscription);
    server.stop().await;
}

/// A write reaches the server and is applied, but the network drops its answer: the client
/// sends it again on a new connection with the same idempotency key, and it counts once. Over
/// the socket, the call is sent again after the reconnect.
#[tokio::test]
async fn a_socket_write_whose_answer_was_lost_is_sent_again_and_counts_once() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, addr) = serve(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let direct = Client::new(&format!("http://{addr}")).expect("direct client");
    let proxy = Proxy::start(addr).await;
    let through = Client::new(&format!("http://{}", proxy.addr)).expect("client via the proxy");

    // Once established (and quiet), the next bytes the client sends are the call.
    let connection = through.connect_with(fast());
    let mut watching = connection.subscribe("once");
    assert_eq!(snapshot_version(&mut watching).await, 0);
    let held = proxy.hold_next();
    let write = Write::increment("once", 1);
    let writing = {
        let connection = connection.clone();
        let write = write.clone();
        tokio::spawn(async move { connection.write(&write).await })
    };
    held.held.await.expect("the call went through the proxy");
    eventually("the held write was applied", || async {
        direct.get_value("once").await.expect("value").value == 1
    })
    .await;
    held.cut.send(()).expect("cut");
    let update = writing.await.expect("task").expect("the write is answered after a reconnect");
    assert_eq!((update.value, update.version), (1, 1), "the original answer");
    let value = direct.get_value("once").await.expect("value");
    assert_eq!((value.value, value.version), (1, 1), "counted once");

    // The same write (same key) sent again later, over HTTP this time: the original answer.
    let again = through.write(&write).await.expect("same key again");
    assert_eq!((again.value, again.version), (1, 1));
    assert_eq!(direct.get_value("once").await.expect("value").version, 1);
    drop((watching, connection));
    server.stop().await;
}

/// The same over HTTP: the request is applied, its answer is lost with the connection, and the
/// client sends it again with the same `Idempotency-Key`.
#[tokio::test]
async fn an_rpc_write_whose_answer_was_lost_is_sent_again_and_counts_once() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, addr) = serve(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let direct = Client::new(&format!("http://{addr}")).expect("direct client");
    let proxy = Proxy::start(addr).await;
    let through = Client::new(&format!("http://{}", proxy.addr)).expect("client via the proxy");
    through.increment("once", 1).await.expect("a first write, answered");

    let held = proxy.hold_next();
    let writing = {
        let through = through.clone();
        tokio::spawn(async move { through.increment("once", 1).await })
    };
    held.held.await.expect("the request went through the proxy");
    eventually("the held RPC was applied", || async {
        direct.get_value("once").await.expect("value").value == 2
    })
    .await;
    held.cut.send(()).expect("cut");
    let update = writing.await.expect("task").expect("the RPC is answered after a retry");
    assert_eq!((update.value, update.version), (2, 2), "the original answer");
    let value = direct.get_value("once").await.expect("value");
    assert_eq!((value.value, value.version), (2, 2), "counted once");
    server.stop().await;
}

/// A shutdown tells each socket to come back after a delay chosen at random over
/// `--reconnect-spread` (2 s here); the connections wait that long instead of their own (10 ms)
/// backoff, so their reconnects spread out instead of arriving as one spike.
#[tokio::test]
async fn the_advised_delay_spreads_reconnects_after_a_shutdown() {
    const CONNECTIONS: usize = 20;
    let dir = tempfile::tempdir().expect("dir");
    let spread_config = || Config { reconnect_spread: Duration::from_secs(2), ..Config::default() };
    let (server, addr) =
        serve_with(dir.path(), "127.0.0.1:0".parse().expect("addr"), spread_config()).await;
    let client = Client::new(&format!("http://{addr}")).expect("client");
    let immediate = ConnectionOptions {
        backoff: Backoff {
            min: Duration::from_millis(10),
            max: Duration::from_millis(10),
            factor: 1.0,
        },
        ..ConnectionOptions::default()
    };
    let mut watchers: Vec<(Connection, Subscription)> = (0..CONNECTIONS)
        .map(|_| {
            let connection = client.connect_with(immediate);
            let subscription = connection.subscribe("spread");
            (connection, subscription)
        })
        .collect();
    for (_, subscription) in &mut watchers {
        snapshot_version(subscription).await;
    }
    let stopped_at = tokio::time::Instant::now();
    server.stop().await;
    let (server, _) = serve_with(dir.path(), addr, spread_config()).await;

    // Each connection is followed by its own task, so the times are when each came back.
    let followers: Vec<_> = watchers
        .into_iter()
        .map(|(connection, mut subscription)| {
            tokio::spawn(async move {
                let mut advised = None;
                loop {
                    match next_event(&mut subscription).await {
                        SubscriptionEvent::Disconnected { retry_in, .. } => {
                            advised.get_or_insert(retry_in);
                        }
                        SubscriptionEvent::Resumed { .. } => break,
                        other => panic!("unexpected {other:?}"),
                    }
                }
                let back_after = stopped_at.elapsed();
                drop((subscription, connection));
                (advised.expect("a disconnect before the resume"), back_after)
            })
        })
        .collect();
    let mut advised = Vec::new();
    let mut back_after = Vec::new();
    for follower in followers {
        let (delay, back) = follower.await.expect("follower");
        advised.push(delay);
        back_after.push(back);
    }
    let spread = |times: &[Duration]| {
        let (min, max) = (times.iter().min().copied(), times.iter().max().copied());
        max.unwrap_or_default() - min.unwrap_or_default()
    };
    // Twenty uniform delays over 2 s span more than 400 ms but for a chance of about 1e-12; the
    // clients' own 10 ms backoff would span nothing.
    assert!(advised.iter().all(|delay| *delay <= Duration::from_secs(2)), "{advised:?}");
    assert!(spread(&advised) >= Duration::from_millis(400), "advised delays {advised:?}");
    // Those advised less than the restart took come back together when it is up; the others
    // later, each at its own time.
    assert!(spread(&back_after) >= Duration::from_millis(200), "reconnects {back_after:?}");
    server.stop().await;
}

/// A subscription with `maxRate` gets conflated updates whose versions jump, ending at the last
/// state, without taking the jumps for gaps (no resume). One with `presence` hears when another
/// socket starts watching the counter.
#[tokio::test]
async fn conflated_and_presence_subscriptions() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, addr) = serve(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let client = Client::new(&format!("http://{addr}")).expect("client");
    let connection = client.connect_with(fast());
    let options = SubscribeOptions { max_rate: Some(5.0), presence: true, ..Default::default() };
    let mut conflated = connection.subscribe_with("hot", options);
    assert_eq!(snapshot_version(&mut conflated).await, 0);
    for _ in 0..50 {
        connection.increment("hot", 1).await.expect("write");
    }
    let other = client.connect_with(fast());
    let mut second = other.subscribe("hot");
    snapshot_version(&mut second).await;

    let mut versions = Vec::new();
    let mut watchers = None;
    while versions.last() != Some(&50) || watchers != Some(2) {
        match next_event(&mut conflated).await {
            SubscriptionEvent::Conflated(update) => versions.push(update.version),
            SubscriptionEvent::Presence(counts) => watchers = Some(counts.watchers),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(versions.len() < 50, "conflated, not one per write: {versions:?}");
    assert!(versions.windows(2).all(|pair| pair[0] < pair[1]), "{versions:?}");
    drop((second, other, conflated, connection));
    server.stop().await;
}

/// A subscription whose reader does not read while 1 200 updates flow: the socket is not held
/// up (the other subscription sees every update live), the unread one is paused when its
/// buffer fills and resumed once read, and in the end it too has every version once, in order.
#[tokio::test]
async fn a_subscription_not_read_is_paused_without_stalling_the_others_and_skips_nothing() {
    const WRITES: u64 = 1200;
    let dir = tempfile::tempdir().expect("dir");
    let (server, addr) = serve(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let client = Client::new(&format!("http://{addr}")).expect("client");
    let connection = client.connect_with(fast());
    let mut slow = connection.subscribe("slow-reader");
    let mut live = connection.subscribe("live-reader");
    assert_eq!(snapshot_version(&mut slow).await, 0);
    assert_eq!(snapshot_version(&mut live).await, 0);

    let writers: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                for _ in 0..WRITES / 8 {
                    client.increment("slow-reader", 1).await.expect("write");
                    client.increment("live-reader", 1).await.expect("write");
                }
            })
        })
        .collect();
    let mut live_versions = Vec::new();
    while live_versions.len() < WRITES as usize {
        match next_event(&mut live).await {
            SubscriptionEvent::Update(update) => live_versions.push(update.version),
            other => panic!("live-reader: unexpected {other:?}"),
        }
    }
    assert_eq!(live_versions, (1..=WRITES).collect::<Vec<_>>());
    for writer in writers {
        writer.await.expect("writer");
    }

    let mut slow_versions = Vec::new();
    while slow_versions.last() != Some(&WRITES) {
        match next_event(&mut slow).await {
            SubscriptionEvent::Update(update) => slow_versions.push(update.version),
            SubscriptionEvent::Resumed { since, .. } => {
                assert_eq!(slow_versions.last(), Some(&since), "resumed after what it had");
            }
            other => panic!("slow-reader: unexpected {other:?}"),
        }
    }
    assert_eq!(slow_versions, (1..=WRITES).collect::<Vec<_>>());
    drop((slow, live, connection));
    server.stop().await;
}

/// A server close that says the client itself sent something wrong (here 1009, a message over
/// 4 KiB) stops the connection for good: no reconnect sends it again (issue 16; the shared
/// scenarios hold the same rule for 1002 and 1007). The call that did it gets the close's
/// error, and so does the next one.
#[tokio::test]
async fn a_message_over_the_limit_stops_the_connection_without_a_reconnect() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, addr) = serve(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let client = Client::new(&format!("http://{addr}")).expect("client");
    let connection = client.connect_with(fast());
    let mut events = connection.events();
    assert_eq!(connection.get_value("fine").await.expect("value").value, 0);

    let big = serde_json::json!({"name": "fine", "pad": "x".repeat(5000)});
    let refused = connection.call(Procedure::GetValue, big).await.expect_err("closed with 1009");
    assert!(refused.to_string().contains("1009"), "{refused}");
    let refused = connection.get_value("fine").await.expect_err("stopped");
    assert!(refused.to_string().contains("1009"), "{refused}");
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(PATIENCE, events.next())
            .await
            .expect("an event in time")
            .expect("events until the stop");
        match event {
            tally_client::ConnectionEvent::Stopped { reason } => {
                assert!(reason.contains("1009"), "{reason}");
                break;
            }
            other => seen.push(format!("{other:?}")),
        }
    }
    assert_eq!(seen, ["Connected"], "one connection, never lost and retried");
    drop(connection);
    server.stop().await;
}

/// A deleted counter's subscription ends with `counter_deleted` and is not resumed; the
/// connection goes on, and a new subscription sees the counter start again at version 0.
#[tokio::test]
async fn a_deleted_counters_subscription_ends_and_a_new_one_starts_at_version_0() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, addr) = serve(dir.path(), "127.0.0.1:0".parse().expect("addr")).await;
    let client = Client::new(&format!("http://{addr}")).expect("client");
    for _ in 0..3 {
        client.increment("doomed", 1).await.expect("write");
    }
    let connection = client.connect_with(fast());
    let mut subscription = connection.subscribe("doomed");
    assert_eq!(snapshot_version(&mut subscription).await, 3);
    let deleted = client.delete("doomed").await.expect("delete");
    assert_eq!((deleted.deleted, deleted.version), (true, 3));
    match next_event(&mut subscription).await {
        SubscriptionEvent::Ended(tally_client::Ended::Unsubscribed { code, reason }) => {
            assert_eq!(code, "counter_deleted");
            assert!(reason.contains("doomed"), "{reason}");
        }
        other => panic!("expected the end, got {other:?}"),
    }
    assert!(subscription.next().await.is_none(), "nothing follows the end");
    let again = client.delete("doomed").await.expect("a retry of the delete");
    assert_eq!((again.deleted, again.version), (false, 0));
    let mut fresh = connection.subscribe("doomed");
    assert_eq!(snapshot_version(&mut fresh).await, 0);
    client.increment("doomed", 5).await.expect("write");
    match next_event(&mut fresh).await {
        SubscriptionEvent::Update(update) => assert_eq!((update.value, update.version), (5, 1)),
        other => panic!("expected the update, got {other:?}"),
    }
    drop(fresh);
    server.stop().await;
}
