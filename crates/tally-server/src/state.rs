//! The server's shared parts, built once in `lib.rs` and handed to every handler.

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tally_proto::{ErrorBody, ErrorCode, ProtocolError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::Access;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::replay::ReplayLimits;
use crate::sampler::StatsChannel;
use crate::store::{KeyRecord, Readiness, Store};

/// What every handler shares: one pointer, because axum clones the state for every request
/// (cloning six shared fields meant six atomic increments and decrements per request, on cache
/// lines both cores write).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The server's shared parts, behind [`AppState`].
pub struct Shared {
    /// The counters.
    pub(crate) registry: Registry,
    /// Storage, for history reads that need no actor, and API keys.
    pub(crate) store: Arc<dyn Store>,
    /// Who may do what: every request check.
    pub(crate) access: Access,
    /// What the server counts.
    pub(crate) metrics: Arc<Metrics>,
    /// Settings.
    pub(crate) config: Arc<Config>,
    /// Cancelled when the server starts shutting down; every socket watches it.
    pub(crate) shutdown: CancellationToken,
    /// Every WebSocket task, so shutdown can wait for them (they outlive their HTTP connection).
    pub(crate) sockets: TaskTracker,
    /// The bounds on replays from history, which every socket's resumes share.
    pub(crate) replays: Arc<ReplayLimits>,
    /// The server's figures, sampled once a second for sockets that `watchServer`.
    pub(crate) server_stats: StatsChannel,
}

impl AppState {
    /// State for a server over `store`, which holds the API keys `keys` (see
    /// [`Store::keys`]).
    pub fn new(store: Arc<dyn Store>, config: Config, keys: &[KeyRecord]) -> Self {
        let metrics = Arc::new(Metrics::with_store(store.as_ref()));
        let config = Arc::new(config);
        let registry = Registry::new(Arc::clone(&store), Arc::clone(&metrics), Arc::clone(&config));
        let access = Access::new(&config.auth, &config.allowed_origins, keys);
        let replays = ReplayLimits::new(
            config.max_replays,
            config.max_replays_per_address,
            config.replay_bytes_per_second,
            Arc::clone(&metrics),
        );
        Self(Arc::new(Shared {
            registry,
            store,
            access,
            metrics,
            config,
            shutdown: CancellationToken::new(),
            sockets: TaskTracker::new(),
            replays,
            server_stats: StatsChannel::new(),
        }))
    }

    /// Whether the server can store writes now (`GET /readyz`), also set in the metrics. A
    /// server shutting down is not ready: a load balancer should stop sending it work.
    pub(crate) async fn readiness(&self) -> tally_proto::Readiness {
        let readiness = if self.shutdown.is_cancelled() {
            Readiness::Unavailable("the server is shutting down".into())
        } else {
            self.store.readiness().await
        };
        self.metrics.store_readiness(&readiness);
        match readiness {
            Readiness::Ready => {
                tally_proto::Readiness { ready: true, reason: None, restart_required: false }
            }
            Readiness::Unavailable(reason) => tally_proto::Readiness {
                ready: false,
                reason: Some(reason),
                restart_required: false,
            },
            Readiness::Stopped(reason) => tally_proto::Readiness {
                ready: false,
                reason: Some(format!("the store stopped taking writes after {reason}")),
                restart_required: true,
            },
        }
    }

    /// Answers `error`, counting it; server faults are logged, client faults are not (refusals
    /// were logged where they were decided).
    pub(crate) fn error_response(&self, error: &ProtocolError) -> Response {
        self.metrics.error(error.code);
        // A failing store fails every request: one line a second per code, with how many
        // were left out.
        // 507 quota_exceeded is the operator's limit doing its job, not a fault.
        if !error.code.is_client_fault()
            && error.code != ErrorCode::QuotaExceeded
            && let Some(suppressed) =
                crate::log_limit::storage().allow(("request failed", error.code.as_str()))
        {
            tracing::warn!(code = %error.code, message = %error.message, suppressed, "request failed");
        }
        let status = StatusCode::from_u16(error.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&ErrorBody::from(error)).unwrap_or_default();
        let mut response =
            (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body)
                .into_response();
        let headers = response.headers_mut();
        match error.code {
            ErrorCode::Unauthenticated | ErrorCode::TokenExpired => {
                let challenge = if error.code == ErrorCode::TokenExpired {
                    "Bearer error=\"invalid_token\", error_description=\"the token has expired\""
                } else {
                    "Bearer"
                };
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
            }
            ErrorCode::RateLimited => {
                let seconds =
                    error.retry_after.map_or(1, |wait| wait.as_secs_f64().ceil().max(1.0) as u64);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            _ => {}
        }
        response
    }
}
