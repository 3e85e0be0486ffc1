//! The HTTP side: the router, the RPC handlers, `/metrics` and `/healthz` (and the web page's
//! files, from `static_files`, when one is configured).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tally_proto::limits::{HISTORY_PAGE_MAX, MAX_REQUEST_BODY_BYTES};
use tally_proto::{
    CounterName, Entry, ErrorBody, ErrorCode, HistoryPage, Procedure, ProtocolError, Request,
    ValueAnswer,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::clock;
use crate::config::Config;
use crate::counter::ApplyError;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::{HistoryRecord, Store};
use crate::{static_files, ws};

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
    /// Storage, for history reads that need no actor.
    pub(crate) store: Arc<dyn Store>,
    /// What the server counts.
    pub(crate) metrics: Arc<Metrics>,
    /// Settings.
    pub(crate) config: Arc<Config>,
    /// Cancelled when the server starts shutting down; every socket watches it.
    pub(crate) shutdown: CancellationToken,
    /// Every WebSocket task, so shutdown can wait for them (they outlive their HTTP connection).
    pub(crate) sockets: TaskTracker,
}

impl AppState {
    /// State for a server over `store`.
    pub fn new(store: Arc<dyn Store>, config: Config) -> Self {
        let metrics = Arc::new(Metrics::with_store(store.as_ref()));
        let registry = Registry::new(Arc::clone(&store), Arc::clone(&metrics), config.clone());
        Self(Arc::new(Shared {
            registry,
            store,
            metrics,
            config: Arc::new(config),
            shutdown: CancellationToken::new(),
            sockets: TaskTracker::new(),
        }))
    }

    /// Answers `error`, counting it; server faults are logged, client faults are not.
    pub(crate) fn error_response(&self, error: &ProtocolError) -> Response {
        self.metrics.error(error.code);
        if !error.code.is_client_fault() {
            tracing::warn!(code = %error.code, message = %error.message, "request failed");
        }
        let status = StatusCode::from_u16(error.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, json_body(&ErrorBody::from(error))).into_response()
    }
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let cors = cors_layer(&state.config.allowed_origins);
    let router = Router::new()
        .route("/rpc/{procedure}", post(rpc).fallback(rpc_wrong_method))
        .route("/ws/counter/{name}", get(ws::upgrade))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi));
    // The page's paths are not routes: the fallback looks each request path up in its table
    // (when there is a page), so routes above always win and other paths get a plain 404.
    let router = router.fallback(static_files::serve);
    // No `DefaultBodyLimit`: no handler uses a body extractor; `read_body` enforces the limit.
    router.layer(cors).with_state(state)
}

/// A JSON answer from any serializable value.
fn json_body<T: Serialize>(value: &T) -> Response {
    // Our answer types are plain data and always serialize.
    let text = serde_json::to_vec(value).unwrap_or_default();
    json_bytes(Bytes::from(text))
}

fn json_bytes(bytes: Bytes) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes).into_response()
}

async fn rpc(
    State(state): State<AppState>,
    Path(procedure): Path<String>,
    request: axum::extract::Request,
) -> Response {
    // The request taken whole, not through a `HeaderMap` extractor, which would copy every
    // header of every request.
    let (parts, body) = request.into_parts();
    match answer_rpc(&state, &procedure, &parts.headers, body).await {
        Ok(response) => response,
        Err(error) => state.error_response(&error),
    }
}

async fn answer_rpc(
    state: &AppState,
    procedure: &str,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ProtocolError> {
    let body = read_body(state, body).await?;
    check_origin(headers, &state.config.allowed_origins)?;
    let procedure = Procedure::from_path(procedure)?;
    check_json_content_type(headers)?;
    let to_protocol = |error: ApplyError| error.to_protocol();
    Ok(match Request::parse(procedure, &body)? {
        Request::Apply { name, op } => {
            let published = state.registry.apply(&name, op).await.map_err(to_protocol)?;
            json_bytes(Bytes::from(published.json))
        }
        Request::GetValue { name } => {
            let counter = state.registry.read(&name).await.map_err(to_protocol)?;
            json_body(&ValueAnswer { value: counter.value, version: counter.version })
        }
        Request::GetMetadata { name } => {
            let counter = state.registry.read(&name).await.map_err(to_protocol)?;
            json_body(&counter.metadata(&name))
        }
        Request::GetHistory { name, limit, before } => {
            json_body(&history_page(state, &name, limit, before).await?)
        }
        Request::KeyCreate { .. } | Request::KeyList | Request::KeyRevoke { .. } => {
            return Err(ProtocolError::new(ErrorCode::Unavailable, "API keys are not built yet"));
        }
    })
}

/// Reads one page of history straight from storage: only committed operations are there, and
/// every answered write is committed, so no actor is needed.
async fn history_page(
    state: &AppState,
    name: &CounterName,
    limit: u32,
    before: Option<u64>,
) -> Result<HistoryPage, ProtocolError> {
    debug_assert!(limit <= HISTORY_PAGE_MAX);
    // One more than asked tells whether older entries remain.
    let mut records = state
        .store
        .history(name, before, limit + 1)
        .await
        .map_err(|error| ApplyError::Store(error).to_protocol())?;
    let more = records.len() > limit as usize;
    records.truncate(limit as usize);
    let next = if more { records.last().map(|record| record.version) } else { None };
    Ok(HistoryPage { entries: records.iter().map(entry).collect(), next })
}

fn entry(record: &HistoryRecord) -> Entry {
    Entry {
        version: record.version,
        kind: record.kind,
        amount: record.amount,
        previous_value: record.previous_value,
        value: record.value,
        timestamp: clock::format_ms(record.at_ms),
        by: None,
    }
}

fn check_json_content_type(headers: &HeaderMap) -> Result<(), ProtocolError> {
    let content_type =
        headers.get(header::CONTENT_TYPE).map(|value| value.to_str().unwrap_or("(not text)"));
    let essence = content_type.map(|value| value.split(';').next().unwrap_or_default().trim());
    match essence {
        Some(essence) if essence.eq_ignore_ascii_case("application/json") => Ok(()),
        Some(_) | None => Err(ProtocolError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "content type is {}; allowed: application/json",
                content_type.map_or_else(|| "missing".to_owned(), |value| format!("{value:?}"))
            ),
        )),
    }
}

/// Reads an RPC's body within `--request-timeout`, so that a client sending it byte by byte
/// cannot hold a connection and a task for long: past the deadline it is answered 408
/// `request_timeout` and nothing is done. Only receiving is timed; once the body is in, the
/// request is handled to its end (a write is never cut off half-answered).
async fn read_body(state: &AppState, body: axum::body::Body) -> Result<Bytes, ProtocolError> {
    let limit = state.config.request_timeout;
    match tokio::time::timeout(limit, axum::body::to_bytes(body, MAX_REQUEST_BODY_BYTES)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(error)) => Err(unreadable_body(&error)),
        Err(_) => Err(ProtocolError::new(
            ErrorCode::RequestTimeout,
            format!(
                "the request body took longer than {} s to arrive, the most allowed; nothing was done",
                limit.as_secs_f64()
            ),
        )),
    }
}

/// Why a body could not be read: too large, or the client failed mid-body.
fn unreadable_body(error: &axum::Error) -> ProtocolError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if current.is::<http_body_util::LengthLimitError>() {
            return ProtocolError::new(
                ErrorCode::PayloadTooLarge,
                format!("request body is over {MAX_REQUEST_BODY_BYTES} bytes, the most allowed"),
            );
        }
        source = current.source();
    }
    ProtocolError::new(ErrorCode::BadJson, format!("cannot read the request body: {error}"))
}

/// CORS answers for the allowed origins: browsers on those pages may POST JSON to the RPCs.
fn cors_layer(allowed_origins: &[String]) -> CorsLayer {
    let origins = if allowed_origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            allowed_origins.iter().filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
        .allow_headers([header::CONTENT_TYPE])
}

/// Refuses a browser request from a web origin other than the server's own and the allowed
/// ones. Browsers send `Origin` on every cross-origin request and on every WebSocket upgrade;
/// programs usually send none, and are not refused for that.
pub(crate) fn check_origin(
    headers: &HeaderMap,
    allowed_origins: &[String],
) -> Result<(), ProtocolError> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    let origin = origin.to_str().unwrap_or_default();
    let own = headers.get(header::HOST).and_then(|host| host.to_str().ok()).is_some_and(|host| {
        origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host)
    });
    if own || allowed_origins.iter().any(|allowed| allowed == "*" || allowed == origin) {
        return Ok(());
    }
    Err(ProtocolError::new(
        ErrorCode::OriginNotAllowed,
        format!(
            "requests from pages at {origin:?} are not allowed; allowed: this server's own pages{}",
            if allowed_origins.is_empty() {
                " (start the server with --allow-origin ORIGIN to allow others)".to_owned()
            } else {
                format!(" and {}", allowed_origins.join(", "))
            }
        ),
    ))
}

async fn rpc_wrong_method(State(state): State<AppState>, method: axum::http::Method) -> Response {
    state.error_response(&ProtocolError::new(
        ErrorCode::MethodNotAllowed,
        format!("method {method} is not allowed on RPC paths; allowed: POST with a JSON body"),
    ))
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// The OpenAPI description, built once: it depends only on the code.
async fn openapi() -> Response {
    static DOCUMENT: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    let document = DOCUMENT.get_or_init(|| {
        Bytes::from(serde_json::to_vec(&crate::openapi::document()).unwrap_or_default())
    });
    json_bytes(document.clone())
}

async fn healthz() -> Response {
    #[derive(Serialize)]
    struct Health {
        status: &'static str,
    }
    json_body(&Health { status: "ok" })
}
