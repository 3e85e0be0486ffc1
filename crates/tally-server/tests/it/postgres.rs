//! A fresh PostgreSQL database per test, on the machine's own PostgreSQL.
//!
//! PostgreSQL is part of what these tests test, so it is never mocked and never optional: when
//! it cannot be reached, the setup starts it the way this machine starts it, and when that fails
//! too the test fails, saying so. A cluster test that quietly skipped would let CI pass with the
//! cluster untested.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

/// The database the setup connects to for CREATE and DROP DATABASE; `TALLY_TEST_POSTGRES`
/// overrides it.
fn admin_url() -> String {
    std::env::var("TALLY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database made for one test and dropped after it.
pub(crate) struct TestDatabase {
    /// Where it is, for `PostgresStore::open`.
    pub(crate) url: String,
    name: String,
}

impl TestDatabase {
    /// Creates an empty database with a name no other test (or run) uses.
    pub(crate) async fn create() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let admin = connect_admin().await;
        let name = format!(
            "tally_test_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            fastrand_suffix()
        );
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|error| panic!("cannot create test database {name}: {error}"));
        let url = database_url(&name);
        Self { url, name }
    }

    /// Runs `sql` on this database and returns the first column of the first row as a number.
    pub(crate) async fn count(&self, sql: &str) -> i64 {
        let (client, connection) =
            tokio_postgres::connect(&self.url, NoTls).await.expect("connect to the test database");
        tokio::spawn(connection);
        client.batch_execute("SET search_path = tally").await.expect("search path");
        client.query_one(sql, &[]).await.unwrap_or_else(|error| panic!("{sql}: {error}")).get(0)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime's async context: a thread of its own with a small
        // runtime, so a test's database never outlives it (FORCE ends the nodes' connections).
        let dropped = std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let (client, connection) =
                    tokio_postgres::connect(&admin_url(), NoTls).await.ok()?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("note: could not drop test database {}", self.name);
        }
    }
}

/// The URL of database `name` on the test server.
fn database_url(name: &str) -> String {
    let admin = admin_url();
    match admin.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => panic!("TALLY_TEST_POSTGRES must end with /DATABASE: {admin}"),
    }
}

fn fastrand_suffix() -> u32 {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).expect("random bytes");
    u32::from_le_bytes(bytes)
}

/// A connection to the admin database, starting PostgreSQL first if it is down.
async fn connect_admin() -> tokio_postgres::Client {
    let url = admin_url();
    let mut started = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match tokio_postgres::connect(&url, NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                return client;
            }
            Err(error) if Instant::now() > deadline => panic!(
                "PostgreSQL at {url} is unreachable ({error}) and could not be started; the cluster tests need it (scripts/ensure-postgres.sh starts this machine's)"
            ),
            Err(_) if !started => {
                started = true;
                start_postgres();
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Starts the machine's PostgreSQL with the project's own script; its outcome shows in whether
/// the next connection succeeds.
fn start_postgres() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/ensure-postgres.sh");
    match std::process::Command::new("bash").arg(script).status() {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!("{script} failed: {status}"),
        Err(error) => eprintln!("cannot run {script}: {error}"),
    }
}
