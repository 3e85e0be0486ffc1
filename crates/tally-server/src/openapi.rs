//! The OpenAPI 3.1 description of the RPC API, served at `GET /openapi.json`.
//!
//! It is built from the code, not written by hand: the paths from `Procedure::ALL`, the request
//! and answer schemas from the wire types' `JsonSchema` derives (with the same limits the
//! validation enforces), and the error answers from `Procedure::error_codes` and
//! `ErrorCode::http_status`. A new procedure, field or limit changes it by itself; a new error
//! code appears once it is added to the hand-written `Procedure::error_codes`.

use std::collections::BTreeMap;

use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{Map, Value, json};
use tally_proto::keys::{CreatedKey, EmptyBody, KeyCreateBody, KeyInfo, KeyList, KeyNameBody};
use tally_proto::rpc::{AmountBody, ConfigureBody, HistoryBody, ListBody, NameBody, SetValueBody};
use tally_proto::{
    CounterList, Deleted, ErrorBody, ErrorCode, HistoryPage, Metadata, Presence, Procedure,
    Readiness, Update, ValueAnswer,
};

/// The whole OpenAPI document.
pub fn document() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|settings| settings.definitions_path = "/components/schemas".into())
        .into_generator();
    let error_schema = generator.subschema_for::<ErrorBody>();
    let mut paths = Map::new();
    for procedure in Procedure::ALL {
        let (request, answer) = schemas(&mut generator, procedure);
        let path = format!("/rpc/{}", procedure.path_name());
        paths.insert(path, operation(procedure, &request, &answer, &error_schema));
    }
    paths.insert(
        "/healthz".into(),
        json!({"get": {
            "operationId": "healthz",
            "summary": "Health check",
            "responses": {"200": {
                "description": "The server accepts connections.",
                "content": {"application/json": {"schema": {
                    "type": "object",
                    "properties": {"status": {"const": "ok"}},
                    "required": ["status"],
                    "additionalProperties": false
                }}}
            }}
        }}),
    );
    let readiness = generator.subschema_for::<Readiness>();
    paths.insert(
        "/readyz".into(),
        json!({"get": {
            "operationId": "readyz",
            "summary": "Readiness: whether the server can store writes now",
            "responses": {
                "200": {
                    "description": "The store takes writes: {\"ready\":true}.",
                    "content": {"application/json": {"schema": readiness}}
                },
                "503": {
                    "description": "The store does not take writes (a full disk, a read-only or failing file system, the database away, the writer stopped, a failed fsync, or the server shutting down): ready is false, reason says why, and restartRequired is true when only a restart of the server brings writes back (after a failed fsync).",
                    "content": {"application/json": {"schema": readiness}}
                }
            }
        }}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Tally",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Real-time counters: HTTP RPC to change and read them, and to manage API keys. Watching them live is a WebSocket at GET /ws/counter/{name}[?since=V], described in docs/PROTOCOL.md with every message and close code.",
        },
        "paths": paths,
        "components": {
            "schemas": generator.take_definitions(true),
            "securitySchemes": {"bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A JWT signed by a key the server is configured with, or an API key (tally_…). Without one a request acts as anonymous: in open mode (no auth configured) that may do everything, otherwise only what --anonymous grants. See docs/SECURITY.md.",
            }},
        },
        "security": [{"bearer": []}, {}],
    })
}

/// The request body and answer schemas of `procedure`.
fn schemas(generator: &mut SchemaGenerator, procedure: Procedure) -> (Schema, Schema) {
    fn pair<Q: JsonSchema, A: JsonSchema>(generator: &mut SchemaGenerator) -> (Schema, Schema) {
        (generator.subschema_for::<Q>(), generator.subschema_for::<A>())
    }
    match procedure {
        Procedure::Increment | Procedure::Decrement => pair::<AmountBody, Update>(generator),
        Procedure::SetValue => pair::<SetValueBody, Update>(generator),
        Procedure::Reset => pair::<NameBody, Update>(generator),
        Procedure::GetValue => pair::<NameBody, ValueAnswer>(generator),
        Procedure::GetMetadata => pair::<NameBody, Metadata>(generator),
        Procedure::GetHistory => pair::<HistoryBody, HistoryPage>(generator),
        Procedure::GetPresence => pair::<NameBody, Presence>(generator),
        Procedure::List => pair::<ListBody, CounterList>(generator),
        Procedure::Delete => pair::<NameBody, Deleted>(generator),
        Procedure::Configure => pair::<ConfigureBody, Metadata>(generator),
        Procedure::KeyCreate => pair::<KeyCreateBody, CreatedKey>(generator),
        Procedure::KeyList => pair::<EmptyBody, KeyList>(generator),
        Procedure::KeyRevoke => pair::<KeyNameBody, KeyInfo>(generator),
    }
}

/// One `POST /rpc/counter.<procedure>` operation with its answers.
fn operation(procedure: Procedure, request: &Schema, answer: &Schema, error: &Schema) -> Value {
    // Several codes share a status (400 above all): one answer per status, naming its codes.
    let mut by_status: BTreeMap<u16, Vec<ErrorCode>> = BTreeMap::new();
    for code in procedure.error_codes() {
        by_status.entry(code.http_status()).or_default().push(code);
    }
    let mut responses = Map::new();
    responses.insert(
        "200".into(),
        json!({"description": "Done.", "content": {"application/json": {"schema": answer}}}),
    );
    for (status, codes) in by_status {
        let names: Vec<&str> = codes.iter().map(|code| code.as_str()).collect();
        responses.insert(
            status.to_string(),
            json!({
                "description": format!("Refused: {}.", names.join(", ")),
                "content": {"application/json": {"schema": error}},
            }),
        );
    }
    let name = procedure.path_name();
    let mut operation = json!({"post": {
        "operationId": name,
        "summary": summary(procedure),
        "requestBody": {"required": true, "content": {"application/json": {"schema": request}}},
        "responses": responses,
    }});
    if procedure.is_write() {
        operation["post"]["parameters"] = json!([idempotency_key_header()]);
    }
    operation
}

/// The `Idempotency-Key` header a write may carry (docs/PROTOCOL.md §3.4).
fn idempotency_key_header() -> Value {
    use tally_proto::idempotency::{IDEMPOTENCY_KEY_MAX_BYTES, IDEMPOTENCY_KEY_RULE};
    json!({
        "name": "Idempotency-Key",
        "in": "header",
        "required": false,
        "description": format!("Makes the write safe to send again: a retry with the same key (by the same principal, on the same counter, within --idempotency-window) is answered the first answer and changes nothing; the same key with another body is refused 422 idempotency_key_reused. {IDEMPOTENCY_KEY_RULE}."),
        "schema": {"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX_BYTES, "pattern": "^[!-~]+$"},
    })
}

fn summary(procedure: Procedure) -> &'static str {
    match procedure {
        Procedure::Increment => "Add an amount (1 by default)",
        Procedure::Decrement => "Subtract an amount (1 by default)",
        Procedure::SetValue => "Set the value",
        Procedure::Reset => "Set the value to 0",
        Procedure::GetValue => "The committed value and version",
        Procedure::GetMetadata => "The counter's metadata",
        Procedure::GetHistory => "One page of history, newest first",
        Procedure::GetPresence => "How many watch the counter now (watchers and distinct users)",
        Procedure::List => {
            "The counters the principal may read, by name prefix, in name order, one page at a time (pass next as after), each with its operations of the last minute; watchers are this node's"
        }
        Procedure::Delete => {
            "Delete the counter (admin on it): its value, history and idempotency keys; its watchers are unsubscribed (close 4004 on /ws/counter), a later write starts it at version 1 under a new epoch; deleting a counter not stored answers deleted: false"
        }
        Procedure::Configure => {
            "Replace the counter's bounds (min, max, clamp; admin on the counter): writes that would leave them are refused 409 out_of_bounds, or stopped at the bound in clamp mode"
        }
        Procedure::KeyCreate => "Create an API key (admin on every counter)",
        Procedure::KeyList => "List the API keys (admin on every counter)",
        Procedure::KeyRevoke => "Revoke an API key at once (admin on every counter)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_procedure_is_described_with_its_limits_and_errors() {
        let doc = document();
        for procedure in Procedure::ALL {
            let path = format!("/rpc/{}", procedure.path_name());
            assert!(doc["paths"][&path]["post"]["responses"]["200"].is_object(), "{path}");
        }
        let schemas = &doc["components"]["schemas"];
        let amount = &schemas["AmountBody"]["properties"]["amount"];
        assert_eq!(amount["minimum"], 1, "{amount}");
        assert_eq!(amount["maximum"], tally_proto::limits::MAX_SAFE_INTEGER, "{amount}");
        assert_eq!(schemas["AmountBody"]["additionalProperties"], false);
        assert_eq!(schemas["NameBody"]["properties"]["name"]["maxLength"], 128);
        let list = &schemas["ListBody"]["properties"];
        assert_eq!(
            (&list["limit"]["minimum"], &list["limit"]["maximum"]),
            (&json!(1), &json!(1000))
        );
        assert_eq!(list["prefix"]["maxLength"], 128);
        assert_eq!(schemas["ListBody"]["additionalProperties"], false);
        let listed = &schemas["ListedCounter"]["required"];
        for field in ["watchers", "opsLastMinute"] {
            assert!(listed.as_array().is_some_and(|fields| fields.contains(&json!(field))));
        }
        let increment = &doc["paths"]["/rpc/counter.increment"]["post"]["responses"];
        assert!(
            increment["422"]["description"].as_str().is_some_and(|d| d.contains("out_of_range"))
        );
        assert!(doc["paths"]["/rpc/counter.getValue"]["post"]["responses"]["422"].is_null());
        let header = &doc["paths"]["/rpc/counter.increment"]["post"]["parameters"][0];
        assert_eq!((&header["name"], &header["in"]), (&json!("Idempotency-Key"), &json!("header")));
        assert!(doc["paths"]["/rpc/counter.getValue"]["post"]["parameters"].is_null());
        let configure = &schemas["ConfigureBody"]["properties"];
        assert_eq!(configure["max"]["maximum"], tally_proto::limits::MAX_SAFE_INTEGER);
        assert_eq!(schemas["ConfigureBody"]["additionalProperties"], false);
        let answers = &doc["paths"]["/rpc/counter.configure"]["post"]["responses"];
        assert!(
            answers["409"]["description"].as_str().is_some_and(|d| d.contains("out_of_bounds"))
        );
        assert!(doc["paths"]["/rpc/counter.configure"]["post"]["parameters"].is_null());
    }
}
