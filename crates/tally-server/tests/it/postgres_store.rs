//! The PostgreSQL store's own schema: migrations applied once however many nodes start at once,
//! and a schema newer than this Tally refused rather than written to.

use tally_server::{PostgresOptions, PostgresStore, StoreError};

use crate::postgres::TestDatabase;

#[tokio::test]
async fn three_nodes_starting_at_once_apply_each_migration_once() {
    let database = TestDatabase::create().await;
    let opens = (0..3).map(|_| PostgresStore::open(&database.url, PostgresOptions::default()));
    for opened in futures_util::future::join_all(opens).await {
        opened.expect("every node opens the database");
    }
    let applied = database.count("SELECT count(*) FROM schema_migrations").await;
    let distinct = database.count("SELECT count(DISTINCT version) FROM schema_migrations").await;
    assert!(applied >= 1);
    assert_eq!(applied, distinct, "no migration was applied twice");
    assert_eq!(
        tally_server::store::postgres::migrate(&database.url).await.expect("migrate"),
        0,
        "nothing is left to apply"
    );
}

#[tokio::test]
async fn a_schema_newer_than_this_tally_is_refused() {
    let database = TestDatabase::create().await;
    PostgresStore::open(&database.url, PostgresOptions::default()).await.expect("opens");
    database.count("WITH v AS (INSERT INTO schema_migrations (version) VALUES (1000) RETURNING version) SELECT count(*) FROM v").await;
    match PostgresStore::open(&database.url, PostgresOptions::default()).await {
        Err(StoreError::Open { reason, .. }) => {
            assert!(reason.contains("newer"), "{reason}");
        }
        Err(other) => panic!("expected an open error, got {other}"),
        Ok(_) => panic!("a newer schema must be refused"),
    }
}

#[tokio::test]
async fn every_connection_commits_synchronously_whatever_the_database_default() {
    let database = TestDatabase::create().await;
    // An operator (or a managed service) turned durability off for the database...
    let (admin, connection) =
        tokio_postgres::connect(&database.url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let name: String =
        admin.query_one("SELECT current_database()", &[]).await.expect("name").get(0);
    admin
        .batch_execute(&format!("ALTER DATABASE {name} SET synchronous_commit = off"))
        .await
        .expect("alter database");
    // ...and the store's connections still commit durably: they are made from this config.
    let config = tally_server::store::postgres::connection_config(&database.url).expect("config");
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let setting: String =
        client.query_one("SHOW synchronous_commit", &[]).await.expect("show").get(0);
    assert_eq!(setting, "on");
}
