//! The SQLite store's own file: a file of an earlier schema migrated, and given an epoch.

use tally_server::{SqliteOptions, SqliteStore, Store};

use crate::store::{EVERY_KEY, increments_at, key_ref, name, now_ms, remembered};

#[tokio::test]
async fn a_version_2_database_is_migrated_and_keeps_its_counters() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let path = folder.path().join("tally.db");
    {
        // The schema as Tally 2 wrote it.
        let conn = rusqlite::Connection::open(&path).expect("create");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE counters (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, value INTEGER NOT NULL, version INTEGER NOT NULL, created_at_ms INTEGER NOT NULL, updated_at_ms INTEGER NOT NULL);
             CREATE TABLE history (counter_id INTEGER NOT NULL REFERENCES counters (id), version INTEGER NOT NULL, kind TEXT NOT NULL, amount INTEGER, previous_value INTEGER NOT NULL, value INTEGER NOT NULL, at_ms INTEGER NOT NULL, by TEXT, PRIMARY KEY (counter_id, version)) WITHOUT ROWID;
             CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, secret_hash BLOB NOT NULL, grants TEXT NOT NULL, created_at_ms INTEGER NOT NULL, revoked_at_ms INTEGER);
             INSERT INTO counters VALUES (1, 'c', 7, 1, 1700000000000, 1700000000000);
             INSERT INTO history VALUES (1, 1, 'increment', 7, 0, 7, 1700000000000, 'tester');
             PRAGMA application_id = 1413565529;
             PRAGMA user_version = 2;",
        )
        .expect("a version 2 file");
    }
    let store = SqliteStore::open(&path, SqliteOptions::default()).expect("migrates");
    let loaded = store.load(&name("c"), EVERY_KEY).await.expect("load").expect("kept");
    assert_eq!((loaded.record.value, loaded.record.version), (7, 1));
    let mut batch = increments_at("c", 1, 1, now_ms());
    batch.entries[0].previous_value = 7;
    batch.entries[0].value = 8;
    batch.remember = vec![key_ref("k", 2)];
    store.append(batch).await.expect("queued").await.expect("stored");
    assert_eq!(remembered(&store, "c", EVERY_KEY).await, [("k".into(), 2)]);
    // Migration 4 gave the database an epoch, kept from then on.
    let epoch = store.epoch().clone();
    store.close().await;
    drop(store);
    let conn = rusqlite::Connection::open(&path).expect("open");
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0)).expect("read");
    assert_eq!(version, 6, "migrated to the newest schema (6: counter_epochs)");
    let epochs: i64 = conn
        .query_row("SELECT count(*) FROM counter_epochs", [], |row| row.get(0))
        .expect("migration 6 made the table of deleted names' epochs");
    assert_eq!(epochs, 0);
    let stored: String =
        conn.query_row("SELECT epoch FROM meta", [], |row| row.get(0)).expect("read");
    assert_eq!(stored, epoch.as_str());
    drop(conn);
    let reopened = SqliteStore::open(&path, SqliteOptions::default()).expect("reopens");
    assert_eq!(reopened.epoch(), &epoch);
}
