//! The PostgreSQL that cluster tests run against: the one on this machine (trust auth, user
//! `postgres`, 127.0.0.1:5432), with a fresh database for each test.
//!
//! A cluster test must never pass by not running: when PostgreSQL cannot be reached, the setup
//! starts it with `scripts/ensure-postgres.sh`, and if it still cannot be reached the test
//! fails, saying why.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Where the server is, without a database name: `TALLY_TEST_POSTGRES` (as for the server's
/// tests) without its database, or this machine's.
fn server() -> String {
    let admin = std::env::var("TALLY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    match admin.rsplit_once('/') {
        Some((server, _)) if server.contains("://") && !server.ends_with('/') => server.to_owned(),
        _ => panic!("TALLY_TEST_POSTGRES must end with /DATABASE: {admin}"),
    }
}
/// How long the setup waits for PostgreSQL to accept connections after starting it.
const START_PATIENCE: Duration = Duration::from_secs(30);

/// A database made for one test, dropped (connections and all) when this is dropped.
pub(crate) struct TestDatabase {
    /// `postgres://…/NAME`, for `tally serve --database`.
    pub(crate) url: String,
    pub(crate) name: String,
}

/// Creates an empty database with a name no other test uses, starting PostgreSQL first if it
/// is down; panics (failing the test) when PostgreSQL cannot be reached even then.
pub(crate) fn fresh_database() -> TestDatabase {
    static MADE: AtomicUsize = AtomicUsize::new(0);
    ensure_running();
    let name = format!(
        "tally_test_{}_{}_{:08x}",
        std::process::id(),
        MADE.fetch_add(1, Ordering::Relaxed),
        fastrand::u32(..)
    );
    admin(&format!("CREATE DATABASE {name}"))
        .unwrap_or_else(|error| panic!("cannot create test database {name}: {error}"));
    TestDatabase { url: format!("{}/{name}", server()), name }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Err(error) = admin(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)) {
            // Not a panic: a panic in a drop during a failing test's unwinding aborts the
            // process and hides that test's own message.
            eprintln!("could not drop test database {}: {error}", self.name);
        }
    }
}

/// Makes sure PostgreSQL accepts connections: if it does not, starts the cluster and waits for
/// it; panics with what was tried when it still does not.
pub(crate) fn ensure_running() {
    let Err(first) = admin("SELECT 1") else { return };
    // The project's one way of starting this machine's PostgreSQL, as CI and the server's
    // tests use it.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/ensure-postgres.sh");
    let started = match Command::new("bash").arg(script).output() {
        Ok(output) => format!(
            "{} ({})",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim().replace('\n', "; ")
        ),
        Err(error) => format!("not run: {error}"),
    };
    let deadline = Instant::now() + START_PATIENCE;
    loop {
        match admin("SELECT 1") {
            Ok(()) => return,
            Err(error) if Instant::now() >= deadline => panic!(
                "PostgreSQL is unreachable at {} ({first}); scripts/ensure-postgres.sh said {started}; still unreachable after {START_PATIENCE:?}: {error}. Cluster tests need it: install PostgreSQL or start it.",
                server()
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Connects to database `name` (a task drives the connection until the client is dropped).
pub(crate) async fn connect(name: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) =
        tokio_postgres::connect(&format!("{}/{name}", server()), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Runs `sql` on the `postgres` database, on a thread and runtime of its own, so that it can be
/// called from a drop and from inside a test's runtime alike.
fn admin(sql: &str) -> Result<(), String> {
    let sql = sql.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| error.to_string())?;
        runtime.block_on(async {
            let client = tokio::time::timeout(Duration::from_secs(5), connect("postgres"))
                .await
                .map_err(|_| "connecting timed out".to_owned())?
                .map_err(|error| error.to_string())?;
            client.batch_execute(&sql).await.map_err(|error| error.to_string())
        })
    })
    .join()
    .unwrap_or_else(|_| Err("the admin thread panicked".into()))
}

impl TestDatabase {
    /// How many `tally serve` nodes are listening for notifications on this database.
    pub(crate) async fn listeners(&self) -> i64 {
        let client = connect(&self.name).await.expect("connect to the test database");
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tally-listen' AND datname = $1",
                &[&self.name],
            )
            .await
            .expect("count listeners");
        row.get(0)
    }

    /// Waits until `nodes` nodes listen for notifications on this database.
    pub(crate) async fn wait_for_listeners(&self, nodes: i64) {
        let deadline = tokio::time::Instant::now() + crate::process::PATIENCE;
        loop {
            let listening = self.listeners().await;
            if listening == nodes {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{listening} of {nodes} nodes listen for notifications on {}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Makes PostgreSQL refuse new connections to this database and ends those it has (as
    /// when the database is taken away), or (`false`) lets them in again.
    pub(crate) fn refuse_connections(&self, refuse: bool) {
        let allow = if refuse { "false" } else { "true" };
        admin(&format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {allow}", self.name))
            .unwrap_or_else(|error| panic!("cannot change {}: {error}", self.name));
        if refuse {
            admin(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
                self.name
            ))
            .unwrap_or_else(|error| panic!("cannot end connections to {}: {error}", self.name));
        }
    }

    /// Ends every node's notification connection on this database; says how many it ended.
    pub(crate) async fn cut_listeners(&self) -> usize {
        let client = connect(&self.name).await.expect("connect to the test database");
        let rows = client
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'tally-listen' AND datname = $1",
                &[&self.name],
            )
            .await
            .expect("terminate listeners");
        rows.iter().filter(|row| row.get::<_, bool>(0)).count()
    }
}
