//! The HTTP side: the router, the RPC handlers, `/metrics` and `/healthz` (and the web page's
//! files, from `static_files`, when one is configured).

use std::net::IpAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tally_proto::keys::{CreatedKey, KeyInfo, KeyList};
use tally_proto::limits::MAX_REQUEST_BODY_BYTES;
use tally_proto::{ErrorCode, IdempotencyKey, Procedure, ProtocolError, Request};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::accept::client_ip;
use crate::access::{Principal, new_key};
use crate::clock;
use crate::counter::ApplyError;
use crate::state::AppState;
use crate::store::{KeyRecord, StoreError};
use crate::{calls, session, static_files, ws};

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let cors = cors_layer(&state.config.allowed_origins);
    let router = Router::new()
        .route("/rpc/{procedure}", post(rpc).fallback(rpc_wrong_method))
        // A catch-all, so that a path with more segments reaches the handler and is refused
        // with the error body too (PROTOCOL.md §5.1), not the fallback's plain 404.
        .route("/ws/counter/{*name}", get(ws::upgrade))
        .route("/ws/counter", get(ws::no_name))
        .route("/ws/counter/", get(ws::no_name))
        .route("/ws", get(session::upgrade))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi));
    // The page's paths are not routes: the fallback looks each request path up in its table
    // (when there is a page), so routes above always win and other paths get a plain 404.
    let router = router.fallback(page);
    // No `DefaultBodyLimit`: no handler uses a body extractor; `read_body` enforces the limit.
    // The Host check wraps everything, CORS answers included, and runs before any body is read.
    router
        .layer(cors)
        .layer(middleware::from_fn_with_state(state.clone(), check_host))
        .with_state(state)
}

/// Refuses, before anything else, a request whose `Host` this server does not answer to.
async fn check_host(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    match state.access.check_host(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(error) => state.error_response(&error),
    }
}

async fn page(State(state): State<AppState>, request: axum::extract::Request) -> Response {
    static_files::serve(
        state.config.web_page.as_ref(),
        request.method(),
        request.uri(),
        request.headers(),
    )
}

/// A JSON answer from any serializable value.
fn json_body<T: Serialize>(value: &T) -> Response {
    json_bytes(calls::json(value))
}

/// The header that carries a write's idempotency key.
const IDEMPOTENCY_KEY: header::HeaderName = header::HeaderName::from_static("idempotency-key");

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
    let peer = client_ip(&parts.extensions);
    match answer_rpc(&state, &procedure, &parts.headers, peer, body).await {
        Ok(response) => response,
        Err(error) => state.error_response(&error),
    }
}

/// One RPC, checked in the order PROTOCOL.md §9.4 gives: the request's form, then who sends
/// it, then what it asks, then whether that principal may.
async fn answer_rpc(
    state: &AppState,
    procedure: &str,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    body: axum::body::Body,
) -> Result<Response, ProtocolError> {
    let body = read_body(state, body).await?;
    let access = &state.access;
    access.check_origin(headers)?;
    let procedure = Procedure::from_path(procedure)?;
    check_json_content_type(headers)?;
    let principal = access.authenticate(headers, peer)?;
    let action = procedure.action();
    let key = idempotency_key(headers, procedure)?;
    Ok(match Request::parse(procedure, &body)? {
        request @ (Request::Apply { .. }
        | Request::GetValue { .. }
        | Request::GetMetadata { .. }
        | Request::GetPresence { .. }
        | Request::GetHistory { .. }
        | Request::List { .. }
        | Request::Delete { .. }) => {
            json_bytes(calls::counter_call(state, &principal, action, request, key.as_ref()).await?)
        }
        Request::KeyCreate { name, grants } => {
            access.authorize_admin(&principal)?;
            // The first key of an open server turns auth on for good, so whoever makes it owns
            // the server: only a program on this machine may, not a web page nor a remote peer.
            let local = peer.is_some_and(|ip| ip.is_loopback());
            if access.is_open() && (!local || headers.contains_key(header::ORIGIN)) {
                return Err(ProtocolError::new(
                    ErrorCode::Forbidden,
                    "the first API key of a server without auth can be created only by a program on the server's own machine (not a web page, not a remote client); it turns auth on for good",
                ));
            }
            let (key, record) = new_key(&name, &grants, clock::now_ms())?;
            state.store.create_key(record.clone()).await.map_err(key_store_error)?;
            access.keys.insert(&record);
            access.turn_auth_on();
            tracing::info!(key = %name, by = %principal.id, "API key created");
            json_body(&CreatedKey { key, info: key_info(&record) })
        }
        Request::KeyList => {
            access.authorize_admin(&principal)?;
            let records = state.store.keys().await.map_err(key_store_error)?;
            json_body(&KeyList { keys: records.iter().map(key_info).collect() })
        }
        Request::KeyRevoke { name } => {
            access.authorize_admin(&principal)?;
            let revoked =
                state.store.revoke_key(&name, clock::now_ms()).await.map_err(key_store_error)?;
            let Some(record) = revoked else {
                return Err(ProtocolError::new(
                    ErrorCode::UnknownKey,
                    format!("there is no API key named {name:?}; key.list lists them"),
                ));
            };
            access.revoke_key(&record.id);
            tracing::info!(key = %name, by = %principal.id, "API key revoked");
            json_body(&key_info(&record))
        }
    })
}

fn key_info(record: &KeyRecord) -> KeyInfo {
    KeyInfo {
        name: record.name.clone(),
        grants: record.grants.clone(),
        created_at: clock::format_ms(record.created_at_ms),
        revoked_at: record.revoked_at_ms.map(clock::format_ms),
    }
}

fn key_store_error(error: StoreError) -> ProtocolError {
    match error {
        StoreError::KeyExists(name) => ProtocolError::new(
            ErrorCode::KeyExists,
            format!(
                "an API key named {name:?} exists already (names of revoked keys stay taken); choose another name"
            ),
        ),
        other => ApplyError::from(other).to_protocol(),
    }
}

/// Who a request acts as, for handlers outside the RPC path (metrics).
fn principal_of(
    state: &AppState,
    parts: &axum::http::request::Parts,
) -> Result<Principal, ProtocolError> {
    state.access.authenticate(&parts.headers, client_ip(&parts.extensions))
}

/// The `Idempotency-Key` header of a write, checked.
fn idempotency_key(
    headers: &HeaderMap,
    procedure: Procedure,
) -> Result<Option<IdempotencyKey>, ProtocolError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else { return Ok(None) };
    if !procedure.is_write() {
        return Err(ProtocolError::new(
            ErrorCode::InvalidField,
            format!(
                "{} does not change the counter, so it takes no Idempotency-Key header",
                procedure.path_name()
            ),
        ));
    }
    IdempotencyKey::parse(value.to_str().unwrap_or("(not ASCII)")).map(Some)
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
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION, IDEMPOTENCY_KEY])
}

async fn rpc_wrong_method(State(state): State<AppState>, method: axum::http::Method) -> Response {
    state.error_response(&ProtocolError::new(
        ErrorCode::MethodNotAllowed,
        format!("method {method} is not allowed on RPC paths; allowed: POST with a JSON body"),
    ))
}

/// Metrics tell how busy the server is and which counters' errors are counted: once auth
/// is on they need `admin` on every counter (a Prometheus scraper sends a key as its bearer
/// token).
async fn metrics(State(state): State<AppState>, request: axum::extract::Request) -> Response {
    let (parts, _) = request.into_parts();
    let allowed =
        principal_of(&state, &parts).and_then(|principal| state.access.authorize_admin(&principal));
    if let Err(error) = allowed {
        return state.error_response(&error);
    }
    // Sets `tally_store_ready`: fresh at every scrape, at the cost of a probe when the store
    // wrote nothing in the last half second.
    state.readiness().await;
    // Counted now rather than on every change: the registry's map knows its size.
    state.metrics.counters_held.set(i64::try_from(state.registry.held()).unwrap_or(i64::MAX));
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

/// Whether this server can store writes now: `200 {"ready":true}`, or `503` with why (a full
/// disk, the database away, a stopped store, shutting down). Anyone may ask, like `/healthz`:
/// it tells no more than a refused write would, and load balancers ask without credentials.
async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = state.readiness().await;
    let status = if readiness.ready {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (status, json_body(&readiness)).into_response()
}

async fn healthz() -> Response {
    #[derive(Serialize)]
    struct Health {
        status: &'static str,
    }
    json_body(&Health { status: "ok" })
}
