//! The web page: `/` and its files from an embedded table, with caching and security headers;
//! nothing outside the table is reachable, and the API beside it is unchanged.

use reqwest::Method;
use serde_json::json;
use tally_server::{CONTENT_SECURITY_POLICY, Config, SqliteOptions, StaticFile, WebPage};

use crate::harness::{TestServer, test_config};

const INDEX: &[u8] = b"<!doctype html><title>Tally</title><script type=\"module\" \
    src=\"/assets/index-3f2a9c.js\"></script><div id=\"root\"></div>";
const SCRIPT: &[u8] = b"document.getElementById('root').textContent = 'tally';";
/// Stands in for the gzip copy: the server sends it as given, it never decodes it.
const SCRIPT_GZIP: &[u8] = b"\x1f\x8b pretend this is gzip";
const ICON: &[u8] = b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>";

fn test_page() -> WebPage {
    WebPage::new([
        StaticFile {
            path: "/index.html",
            content_type: "text/html; charset=utf-8",
            bytes: INDEX,
            gzip: None,
        },
        StaticFile {
            path: "/assets/index-3f2a9c.js",
            content_type: "text/javascript; charset=utf-8",
            bytes: SCRIPT,
            gzip: Some(SCRIPT_GZIP),
        },
        StaticFile { path: "/favicon.svg", content_type: "image/svg+xml", bytes: ICON, gzip: None },
    ])
    .expect("a valid page")
}

async fn start_with_page() -> TestServer {
    let config = Config { web_page: Some(test_page()), ..test_config() };
    TestServer::start_with(config, SqliteOptions::default()).await
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response.headers().get(name).map_or("(missing)", |value| value.to_str().unwrap_or("(not text)"))
}

#[track_caller]
fn assert_security_headers(response: &reqwest::Response) {
    assert_eq!(header(response, "content-security-policy"), CONTENT_SECURITY_POLICY);
    assert_eq!(header(response, "x-content-type-options"), "nosniff");
    assert_eq!(header(response, "referrer-policy"), "no-referrer");
    assert_eq!(header(response, "x-frame-options"), "DENY");
}

#[tokio::test]
async fn the_page_and_its_files_are_served_with_their_type_caching_and_security_headers() {
    let server = start_with_page().await;
    let html = "text/html; charset=utf-8";
    // Names under /assets/ carry a content hash and are kept forever; other names do not, so
    // browsers must ask again each time.
    let forever = "public, max-age=31536000, immutable";
    for (path, content_type, cache_control, body) in [
        ("/", html, "no-cache", INDEX),
        ("/index.html", html, "no-cache", INDEX),
        ("/?counter=likes", html, "no-cache", INDEX),
        ("/assets/index-3f2a9c.js", "text/javascript; charset=utf-8", forever, SCRIPT),
        ("/favicon.svg", "image/svg+xml", "no-cache", ICON),
    ] {
        let response = server.request(Method::GET, path, &[]).await;
        assert_eq!(response.status().as_u16(), 200, "{path}");
        assert_eq!(header(&response, "content-type"), content_type, "{path}");
        assert_eq!(header(&response, "cache-control"), cache_control, "{path}");
        assert!(response.headers().get("content-encoding").is_none(), "{path}");
        assert_security_headers(&response);
        assert_eq!(response.bytes().await.expect("body").as_ref(), body, "{path}");
    }
}

#[tokio::test]
async fn gzip_goes_only_to_clients_that_accept_it() {
    let server = start_with_page().await;
    let path = "/assets/index-3f2a9c.js";
    let response = server.request(Method::GET, path, &[("accept-encoding", "br, gzip")]).await;
    assert_eq!(header(&response, "content-encoding"), "gzip");
    assert!(
        response.headers().get_all("vary").iter().any(|value| value == "accept-encoding"),
        "{:?}",
        response.headers()
    );
    let gzip_tag = header(&response, "etag").to_owned();
    assert_eq!(response.bytes().await.expect("body").as_ref(), SCRIPT_GZIP);

    let response = server.request(Method::GET, path, &[("accept-encoding", "gzip;q=0")]).await;
    assert!(response.headers().get("content-encoding").is_none());
    assert_ne!(header(&response, "etag"), gzip_tag, "two representations share a tag");
    assert_eq!(response.bytes().await.expect("body").as_ref(), SCRIPT);
}

#[tokio::test]
async fn a_known_entity_tag_is_answered_not_modified() {
    let server = start_with_page().await;
    let response = server.request(Method::GET, "/", &[]).await;
    let tag = header(&response, "etag").to_owned();
    assert!(tag.starts_with('"'), "{tag}");

    let response = server.request(Method::GET, "/", &[("if-none-match", &tag)]).await;
    assert_eq!(response.status().as_u16(), 304);
    assert_eq!(header(&response, "etag"), tag);
    assert_eq!(header(&response, "cache-control"), "no-cache");
    assert_security_headers(&response);
    assert!(response.bytes().await.expect("body").is_empty());

    let response = server.request(Method::GET, "/", &[("if-none-match", "\"other\"")]).await;
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn head_answers_the_headers_without_the_body() {
    let server = start_with_page().await;
    for (path, length) in [("/", INDEX.len()), ("/assets/index-3f2a9c.js", SCRIPT.len())] {
        let response = server.request(Method::HEAD, path, &[]).await;
        assert_eq!(response.status().as_u16(), 200, "{path}");
        assert_eq!(header(&response, "content-length"), length.to_string(), "{path}");
        assert_security_headers(&response);
        assert!(response.bytes().await.expect("body").is_empty(), "{path}");
    }
}

#[tokio::test]
async fn other_methods_on_the_page_are_refused_with_what_is_allowed() {
    let server = start_with_page().await;
    for (method, path) in [
        (Method::POST, "/"),
        (Method::PUT, "/index.html"),
        (Method::DELETE, "/assets/index-3f2a9c.js"),
    ] {
        let response = server.request(method.clone(), path, &[]).await;
        assert_eq!(response.status().as_u16(), 405, "{method} {path}");
        assert_eq!(header(&response, "allow"), "GET, HEAD");
        assert_security_headers(&response);
        let text = response.text().await.expect("body");
        assert!(text.contains("allowed: GET, HEAD"), "{text}");
    }
}

#[tokio::test]
async fn paths_outside_the_table_are_plain_404s_whatever_they_try() {
    let server = start_with_page().await;
    // The same way of asking reaches the page itself.
    assert_eq!(server.raw_get("/index.html").await, (200, String::from_utf8_lossy(INDEX).into()));
    for path in [
        "/../Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/%2E%2E/%2E%2E/Cargo.toml",
        "/assets/../index.html",
        "/assets/%2e%2e/index.html",
        "/./index.html",
        "//etc/passwd",
        "//index.html",
        "/index.html/",
        "/INDEX.HTML",
        "/assets/",
        "/assets",
        "/Cargo.toml",
        "/src/lib.rs",
        "/etc/passwd",
        "/assets/index-3f2a9c.js%00.html",
    ] {
        let (status, body) = server.raw_get(path).await;
        assert_eq!(status, 404, "{path}");
        assert!(body.is_empty(), "{path} answered {body:?}");
    }
    // Absolute-form targets are allowed by HTTP/1.1; only the path counts, and it must match.
    let (status, _) = server.raw_get(&format!("http://{}/../Cargo.toml", server.addr)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_api_beside_the_page_is_unchanged() {
    let server = start_with_page().await;
    let update = server.increment("likes", 2).await;
    assert_eq!(update["value"], 2);
    assert_eq!(server.value("likes").await, (2, 1));
    let (status, answer) = server.call("getValue", json!({"name": "likes"})).await;
    assert_eq!((status, answer["value"].as_i64()), (200, Some(2)));

    let (status, text) = server.raw(Method::GET, "/rpc/counter.getValue", None, vec![]).await;
    assert_eq!(status, 405);
    assert!(text.contains("method_not_allowed"), "{text}");
    let (status, text) = server.raw(Method::GET, "/healthz", None, vec![]).await;
    assert_eq!((status, text.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, _) = server.raw(Method::GET, "/metrics", None, vec![]).await;
    assert_eq!(status, 200);

    let mut watcher = server.watch("likes").await;
    let snapshot = watcher.next_text().await;
    assert!(snapshot.contains("\"value\":2"), "{snapshot}");
}

#[tokio::test]
async fn without_a_page_the_root_is_a_plain_404() {
    let server = TestServer::start().await;
    let response = server.request(Method::GET, "/", &[]).await;
    assert_eq!(response.status().as_u16(), 404);
    assert!(response.headers().get("content-security-policy").is_none());
    assert!(response.bytes().await.expect("body").is_empty());
}
