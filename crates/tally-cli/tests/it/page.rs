//! The web pages the binary embeds: the counter page at `/` and the admin page at `/admin`,
//! each served with its security headers, and complete (every file it refers to is served).

use crate::process::Tally;

/// The values of `src="..."` and `href="..."` attributes in `html`.
fn references(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attribute in [" src=", " href="] {
        for (start, _) in html.match_indices(attribute) {
            let rest = &html[start + attribute.len()..];
            let Some(quote) = rest.chars().next().filter(|quote| *quote == '"' || *quote == '\'')
            else {
                continue;
            };
            if let Some(value) = rest[1..].split(quote).next() {
                found.push(value.to_owned());
            }
        }
    }
    found
}

#[tokio::test]
async fn the_binary_serves_its_whole_pages_at_root_and_admin() {
    if let Some(reason) = tally_web::fallback_reason() {
        panic!(
            "this tally binary embeds the fallback page, not the real one: {reason} \
             Install Node.js 20 or newer (with npm), then `cargo clean -p tally-web` and test \
             again; CI has npm, so the real page must be there"
        );
    }
    let dir = tempfile::tempdir().expect("dir");
    let server = Tally::start(&dir.path().join("tally.db"), &[]);
    let http = reqwest::Client::new();
    let base = format!("http://{}", server.addr);

    // The counter page at `/`, and the admin page, a second page of the same build.
    for page in ["/", "/admin"] {
        check_page(&http, &base, page).await;
    }

    // The API is there beside it.
    let update = server.ok("increment", serde_json::json!({"name": "page"})).await;
    assert_eq!(update["value"], 1);
}

/// Checks that `page` is served as HTML with its security headers, and every file it refers to.
async fn check_page(http: &reqwest::Client, base: &str, page: &str) {
    let response = http.get(format!("{base}{page}")).send().await.expect("GET page");
    assert_eq!(response.status().as_u16(), 200, "{page}");
    let header = |name: &str| {
        response.headers().get(name).and_then(|value| value.to_str().ok()).unwrap_or_default()
    };
    assert!(header("content-type").starts_with("text/html"), "{:?}", response.headers());
    assert!(header("content-security-policy").contains("script-src 'self'"));
    assert_eq!(header("x-content-type-options"), "nosniff");
    let html = response.text().await.expect("the page");

    let references = references(&html);
    assert!(
        references.iter().any(|reference| reference.ends_with(".js")),
        "{page} loads no script: {html}"
    );
    for reference in &references {
        // The page's CSP allows only this server, so every file must come from it.
        assert!(
            reference.starts_with('/') && !reference.starts_with("//"),
            "{page} refers to {reference:?}, which is not a path on this server"
        );
        let path = reference.split(['?', '#']).next().unwrap_or_default();
        let response = http.get(format!("{base}{path}")).send().await.expect("GET file");
        assert_eq!(response.status().as_u16(), 200, "{path} is referred to but not served");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        // With `nosniff`, browsers run scripts and apply styles only of the right type.
        if path.ends_with(".js") {
            assert!(content_type.starts_with("text/javascript"), "{path}: {content_type}");
        }
        if path.ends_with(".css") {
            assert!(content_type.starts_with("text/css"), "{path}: {content_type}");
        }
        assert!(!response.bytes().await.expect("body").is_empty(), "{path} is empty");
    }
}

#[test]
fn references_are_read_from_both_attributes_and_quotes() {
    let html = r#"<link rel="icon" href="/favicon.svg"><script type="module" src='/assets/a.js'></script><a href=x>"#;
    assert_eq!(references(html), ["/assets/a.js", "/favicon.svg"]);
}
