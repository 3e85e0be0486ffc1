//! Cross-origin browser requests: refused unless the origin is the server's own or allowed by
//! configuration, for the RPCs (with CORS answers) and for WebSocket upgrades.

use serde_json::json;
use tally_server::{Config, SqliteOptions};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::{TestServer, test_config};

const ALLOWED: &str = "http://localhost:5173";
const FOREIGN: &str = "https://evil.example";

async fn post_from(server: &TestServer, origin: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(server.url("/rpc/counter.increment"))
        .header("content-type", "application/json")
        .header("origin", origin)
        .body(json!({"name": "o"}).to_string())
        .send()
        .await
        .expect("request")
}

async fn watch_from(server: &TestServer, origin: &str) -> Result<(), u16> {
    let mut request =
        format!("ws://{}/ws/counter/o", server.addr).into_client_request().expect("request");
    request.headers_mut().insert("origin", origin.parse().expect("header"));
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(other) => panic!("unexpected {other}"),
    }
}

#[tokio::test]
async fn pages_of_other_origins_are_refused_and_change_nothing() {
    let server = TestServer::start().await;
    let response = post_from(&server, FOREIGN).await;
    assert_eq!(response.status().as_u16(), 403);
    assert!(response.headers().get("access-control-allow-origin").is_none());
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "origin_not_allowed");
    assert!(
        body["error"]["message"].as_str().unwrap_or_default().contains("--allow-origin"),
        "{body}"
    );
    assert_eq!(watch_from(&server, FOREIGN).await, Err(403));
    assert_eq!(server.value("o").await, (0, 0));

    // The server's own pages are always allowed.
    let own = format!("http://{}", server.addr);
    assert_eq!(post_from(&server, &own).await.status().as_u16(), 200);
    assert_eq!(watch_from(&server, &own).await, Ok(()));
}

#[tokio::test]
async fn allowed_origins_get_cors_answers_and_may_watch() {
    let config = Config { allowed_origins: vec![ALLOWED.to_owned()], ..test_config() };
    let server = TestServer::start_with(config, SqliteOptions::default()).await;

    // The browser's preflight for a JSON POST.
    let preflight = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, server.url("/rpc/counter.increment"))
        .header("origin", ALLOWED)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .expect("preflight");
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(
        preflight
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap_or_default()),
        Some(ALLOWED)
    );
    let methods = preflight
        .headers()
        .get("access-control-allow-methods")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    assert!(methods.is_some_and(|methods| methods.contains("POST")));

    let response = post_from(&server, ALLOWED).await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap_or_default()),
        Some(ALLOWED)
    );
    assert_eq!(watch_from(&server, ALLOWED).await, Ok(()));

    // Others still are not.
    assert_eq!(post_from(&server, FOREIGN).await.status().as_u16(), 403);
    assert_eq!(watch_from(&server, FOREIGN).await, Err(403));
    assert_eq!(server.value("o").await, (1, 1));
}
