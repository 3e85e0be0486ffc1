//! Whether a store can write now, for `GET /readyz` and the `tally_store_ready` metric.
//!
//! A store records the outcome of every group commit here; that is the freshest word on its
//! health while writes come. A store nobody writes to would never learn that its disk filled or
//! its database went away, so when the last outcome is older than [`FRESH`], asking runs a
//! probe (a small real write for SQLite, a connection and a check for PostgreSQL), one at a
//! time however many ask, within [`PROBE_TIMEOUT`]: a change is seen within a second either
//! way, and an idle store costs one probe per [`FRESH`] at most, and only while someone asks.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::StoreError;

/// Whether a store can write now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Writes are stored.
    Ready,
    /// Writes are refused now (a full disk, the database away, the writer gone); this may mend
    /// by itself. The reason is for people.
    Unavailable(String),
    /// Writes are refused until the server is restarted, after a failed fsync (see
    /// docs/RELIABILITY.md, "A failed fsync"). The reason is for people.
    Stopped(String),
}

impl Readiness {
    /// Whether writes are stored.
    pub fn is_ready(&self) -> bool {
        matches!(self, Readiness::Ready)
    }
}

/// An outcome this recent is taken as the store's state, with no probe.
pub(crate) const FRESH: Duration = Duration::from_millis(500);
/// How long a probe may take; one that takes longer makes the store unready (a stuck disk or a
/// database that does not answer is as unable to write as a failing one).
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// A store's write health: its latest outcome, and whether it stopped for good.
#[derive(Debug, Default)]
pub(crate) struct WriteHealth {
    /// The latest outcome. A `std` mutex: held for a few instructions, never across an await.
    state: Mutex<State>,
    /// Held while a probe runs, so that many callers at once cost one probe.
    probing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    /// When the latest commit or probe ended, and why it failed if it did.
    last: Option<(Instant, Option<String>)>,
    /// Why the store stopped taking writes, once it has (never cleared: only a restart is).
    stopped: Option<String>,
}

impl WriteHealth {
    /// A commit or probe stored what it wrote.
    pub(crate) fn succeeded(&self) {
        self.lock().last = Some((Instant::now(), None));
    }

    /// A commit or probe failed with `error`; nothing of it was stored.
    pub(crate) fn failed(&self, error: &StoreError) {
        self.failed_because(error.to_string());
    }

    fn failed_because(&self, reason: String) {
        self.lock().last = Some((Instant::now(), Some(reason)));
    }

    /// The store stops taking writes for good, because `reason`.
    pub(crate) fn stop(&self, reason: String) {
        let mut state = self.lock();
        if state.stopped.is_none() {
            state.stopped = Some(reason);
        }
    }

    /// Why the store stopped taking writes, if it has.
    pub(crate) fn stopped(&self) -> Option<String> {
        self.lock().stopped.clone()
    }

    /// The store's readiness: from the latest outcome when it is fresh, else from `probe`
    /// (which records nothing itself: its result is recorded here).
    pub(crate) async fn readiness<F>(&self, probe: F) -> Readiness
    where
        F: Future<Output = Result<(), StoreError>>,
    {
        if let Some(readiness) = self.current(Some(FRESH)) {
            return readiness;
        }
        let _probing = self.probing.lock().await;
        // Another caller's probe may have ended while this one waited.
        if let Some(readiness) = self.current(Some(FRESH)) {
            return readiness;
        }
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(())) => self.succeeded(),
            Ok(Err(error)) => self.failed(&error),
            Err(_) => self.failed_because(format!(
                "storage did not complete a test write within {} ms",
                PROBE_TIMEOUT.as_millis()
            )),
        }
        self.current(None).unwrap_or(Readiness::Ready)
    }

    /// The state the latest outcome says, if it is younger than `fresh` (any age for `None`).
    fn current(&self, fresh: Option<Duration>) -> Option<Readiness> {
        let state = self.lock();
        if let Some(reason) = &state.stopped {
            return Some(Readiness::Stopped(reason.clone()));
        }
        let (at, failure) = state.last.as_ref()?;
        if fresh.is_some_and(|fresh| at.elapsed() >= fresh) {
            return None;
        }
        Some(match failure {
            None => Readiness::Ready,
            Some(reason) => Readiness::Unavailable(format!("the last write failed: {reason}")),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is two plain fields, whole after any panic.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn unavailable() -> StoreError {
        StoreError::Unavailable("database or disk is full".into())
    }

    /// A probe that counts its runs and answers `outcome`.
    fn probe(
        runs: &Arc<AtomicUsize>,
        outcome: fn() -> Result<(), StoreError>,
    ) -> impl Future<Output = Result<(), StoreError>> + use<> {
        let runs = Arc::clone(runs);
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            outcome()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_fresh_outcome_is_answered_without_a_probe_and_a_stale_one_probes() {
        let health = WriteHealth::default();
        let runs = Arc::new(AtomicUsize::new(0));
        health.failed(&unavailable());
        let readiness = health.readiness(probe(&runs, || Ok(()))).await;
        assert!(
            matches!(&readiness, Readiness::Unavailable(reason) if reason.contains("full")),
            "{readiness:?}"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 0, "a fresh failure needs no probe");

        // Space came back and nobody writes: the probe finds out.
        tokio::time::advance(FRESH).await;
        assert_eq!(health.readiness(probe(&runs, || Ok(()))).await, Readiness::Ready);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // And its answer is fresh in turn.
        assert_eq!(health.readiness(probe(&runs, || Err(unavailable()))).await, Readiness::Ready);
        assert_eq!(runs.load(Ordering::SeqCst), 1);

        // The disk fills while nobody writes: the next probe sees it.
        tokio::time::advance(FRESH).await;
        let readiness = health.readiness(probe(&runs, || Err(unavailable()))).await;
        assert!(matches!(readiness, Readiness::Unavailable(_)), "{readiness:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_hangs_makes_the_store_unready() {
        let health = WriteHealth::default();
        let readiness = health.readiness(std::future::pending()).await;
        assert!(
            matches!(&readiness, Readiness::Unavailable(reason) if reason.contains("did not complete")),
            "{readiness:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_store_stays_stopped_whatever_commits_or_probes_say() {
        let health = WriteHealth::default();
        let runs = Arc::new(AtomicUsize::new(0));
        health.stop("an fsync failed".into());
        health.succeeded();
        tokio::time::advance(FRESH * 4).await;
        let readiness = health.readiness(probe(&runs, || Ok(()))).await;
        assert_eq!(readiness, Readiness::Stopped("an fsync failed".into()));
        assert_eq!(runs.load(Ordering::SeqCst), 0, "a stopped store is not probed");
        assert_eq!(health.stopped().as_deref(), Some("an fsync failed"));
    }
}
