//! The web page: `GET /` and the files beside it, from a table embedded in the binary, with
//! caching and security headers.
//!
//! A request path is looked up byte for byte in the table and never joined to a directory,
//! so no path can reach a file that is not in it; anything else is the usual plain 404.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

/// The page's Content Security Policy: everything from this server only, no inline script or
/// style, no plugins, no framing. `connect-src 'self'` covers the RPCs and, under CSP Level 3
/// (Chrome, Firefox, current Safari), WebSockets to this same host and port.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self'; \
     img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; \
     base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// Cache settings of files under `/assets/`: their names carry a hash of their content, so a
/// changed file has a new name and the old one may be kept forever.
const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Cache settings of every other file (`index.html` first of all): keep, but ask each time,
/// so a new release is seen at once; the `ETag` makes asking cheap.
const CACHE_REVALIDATE: &str = "no-cache";

/// One file of the page, as embedded in the binary.
#[derive(Clone, Copy)]
pub struct StaticFile {
    /// The URL path that serves it, e.g. `/index.html` or `/assets/index-3f2a9c.js`.
    pub path: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// The file.
    pub bytes: &'static [u8],
    /// The same bytes gzip-compressed, sent to clients that accept gzip; `None` to always send
    /// `bytes`.
    pub gzip: Option<&'static [u8]>,
}

impl fmt::Debug for StaticFile {
    // The bytes themselves would drown everything else in a debug print.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("StaticFile")
            .field("path", &self.path)
            .field("content_type", &self.content_type)
            .field("bytes", &self.bytes.len())
            .field("gzip", &self.gzip.map(<[u8]>::len))
            .finish()
    }
}

/// Why a set of files cannot be served as the page.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebPageError {
    /// A path that no request could match as it is.
    #[error(
        "web page file path {0:?} is not allowed; allowed: `/` and segments of letters, digits \
         and -._~!$&'()*+,;=:@ (not `.` or `..`), e.g. /assets/index-3f2a9c.js"
    )]
    BadPath(String),
    /// The same path twice.
    #[error("web page file {0:?} is given twice; allowed: each path once")]
    Duplicate(String),
    /// No `/index.html`, so `/` could not be answered.
    #[error("the web page has no /index.html; allowed: a set of files that includes /index.html")]
    NoIndex,
    /// A content type that cannot be a header value.
    #[error(
        "content type {content_type:?} of {path:?} is not allowed; allowed: visible ASCII, e.g. text/html"
    )]
    BadContentType {
        /// The file.
        path: String,
        /// Its content type.
        content_type: String,
    },
}

/// The page's files, ready to serve: looked up by exact path, with headers prepared once.
#[derive(Clone)]
pub struct WebPage {
    /// URL path → file; shared by every clone of the config.
    files: Arc<HashMap<&'static str, Prepared>>,
}

/// A file with the header values every answer for it carries.
struct Prepared {
    file: StaticFile,
    content_type: HeaderValue,
    cache_control: HeaderValue,
    /// A strong validator of `file.bytes`.
    etag: HeaderValue,
    /// A strong validator of `file.gzip`: another representation, so another tag.
    etag_gzip: Option<HeaderValue>,
}

impl fmt::Debug for WebPage {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("WebPage").field("files", &self.paths()).finish()
    }
}

impl WebPage {
    /// The page made of `files`, one of which must be `/index.html` (served at `/` too).
    ///
    /// ```
    /// use tally_server::{StaticFile, WebPage};
    /// let index = StaticFile {
    ///     path: "/index.html",
    ///     content_type: "text/html; charset=utf-8",
    ///     bytes: b"<!doctype html><title>Tally</title>",
    ///     gzip: None,
    /// };
    /// let page = WebPage::new([index]).expect("a valid page");
    /// assert_eq!(page.paths(), ["/index.html"]);
    /// ```
    ///
    /// # Errors
    /// When a path could not be requested as it is written (see [`WebPageError::BadPath`]), is
    /// given twice, a content type is not a valid header value, or `/index.html` is missing.
    pub fn new(files: impl IntoIterator<Item = StaticFile>) -> Result<Self, WebPageError> {
        let mut prepared = HashMap::new();
        for file in files {
            if !is_plain_path(file.path) {
                return Err(WebPageError::BadPath(file.path.to_owned()));
            }
            let content_type = HeaderValue::from_str(file.content_type).map_err(|_| {
                WebPageError::BadContentType {
                    path: file.path.to_owned(),
                    content_type: file.content_type.to_owned(),
                }
            })?;
            let cache_control = HeaderValue::from_static(if file.path.starts_with("/assets/") {
                CACHE_IMMUTABLE
            } else {
                CACHE_REVALIDATE
            });
            let entry = Prepared {
                file,
                content_type,
                cache_control,
                etag: etag(file.bytes, ""),
                etag_gzip: file.gzip.map(|gzip| etag(gzip, "-gzip")),
            };
            if prepared.insert(file.path, entry).is_some() {
                return Err(WebPageError::Duplicate(file.path.to_owned()));
            }
        }
        if !prepared.contains_key("/index.html") {
            return Err(WebPageError::NoIndex);
        }
        Ok(Self { files: Arc::new(prepared) })
    }

    /// Every path served, sorted (`/` is not listed; it serves `/index.html`, as `/admin`
    /// serves `/admin.html`).
    pub fn paths(&self) -> Vec<&'static str> {
        let mut paths: Vec<&'static str> = self.files.keys().copied().collect();
        paths.sort_unstable();
        paths
    }

    fn get(&self, path: &str) -> Option<&Prepared> {
        // `/admin` is the admin page's address (`admin.html`, a second page of the same build);
        // a page built without one answers it 404.
        let path = match path {
            "/" => "/index.html",
            "/admin" => "/admin.html",
            path => path,
        };
        self.files.get(path)
    }
}

/// Whether `path` is `/` followed by segments that a request path carries byte for byte:
/// RFC 3986 path characters without percent-escapes, and no `.`, `..` or empty segment.
fn is_plain_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else { return false };
    rest.split('/').all(|segment| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&byte))
    })
}

/// A strong entity tag for `bytes`: 64-bit FNV-1a of the content and its length. Not for
/// security, only to tell versions of one file apart; computed once at start.
fn etag(bytes: &[u8], suffix: &str) -> HeaderValue {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let tag = format!("\"{hash:016x}-{:x}{suffix}\"", bytes.len());
    // Hex digits, a dash and quotes are always a valid header value.
    HeaderValue::from_str(&tag).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

/// The router's fallback: a file of the page (when there is one), or the plain 404 every
/// other unknown path gets. It takes the page, not the server's state, so that this module
/// depends on nothing else of the server.
pub(crate) fn serve(
    page: Option<&WebPage>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response {
    let Some(page) = page else { return StatusCode::NOT_FOUND.into_response() };
    let Some(prepared) = page.get(uri.path()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if method != Method::GET && method != Method::HEAD {
        let mut response = (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, HeaderValue::from_static("GET, HEAD"))],
            format!("method {method} is not allowed on the web page; allowed: GET, HEAD\n"),
        )
            .into_response();
        add_security_headers(response.headers_mut());
        return response;
    }
    let gzip = match (prepared.file.gzip, &prepared.etag_gzip) {
        (Some(bytes), Some(etag)) if accepts_gzip(headers) => Some((bytes, etag)),
        _ => None,
    };
    let (bytes, etag) = gzip.unwrap_or((prepared.file.bytes, &prepared.etag));
    let mut response = if none_match(headers, etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        // HEAD gets the same answer; hyper sends its headers and leaves out the body.
        let mut response = Body::from(Bytes::from_static(bytes)).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, prepared.content_type.clone());
        if gzip.is_some() {
            response
                .headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        response
    };
    let response_headers = response.headers_mut();
    response_headers.insert(header::CACHE_CONTROL, prepared.cache_control.clone());
    response_headers.insert(header::ETAG, etag.clone());
    if prepared.file.gzip.is_some() {
        // Caches must keep the gzip and plain answers apart.
        response_headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    add_security_headers(response_headers);
    response
}

fn add_security_headers(headers: &mut HeaderMap) {
    let fixed: [(HeaderName, &'static str); 4] = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        // Browsers must take the content type as given, never guess a script out of a file.
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Counter names in URLs are nobody else's business.
        (header::REFERRER_POLICY, "no-referrer"),
        // For browsers that predate `frame-ancestors`.
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

/// Whether `Accept-Encoding` allows gzip: named (or `*`) without `q=0`; a named entry wins
/// over `*`.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut named = None;
    let mut wildcard = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim();
            let mut quality = 1.0_f32;
            for parameter in parts {
                if let Some((name, value)) = parameter.split_once('=')
                    && name.trim().eq_ignore_ascii_case("q")
                {
                    // A weight that cannot be read refuses: plain bytes are always safe.
                    quality = value.trim().parse().unwrap_or(0.0);
                }
            }
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                named = Some(quality);
            } else if coding == "*" {
                wildcard = Some(quality);
            }
        }
    }
    named.or(wildcard).is_some_and(|quality| quality > 0.0)
}

/// Whether `If-None-Match` lists `etag` (weak comparison, as RFC 9110 asks for this header)
/// or is `*`.
fn none_match(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let Ok(etag) = etag.to_str() else { return false };
    headers.get_all(header::IF_NONE_MATCH).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value.split(',').map(str::trim).any(|candidate| {
                candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: HeaderName, value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn gzip_is_accepted_only_when_allowed() {
        let accept = |value| accepts_gzip(&headers(header::ACCEPT_ENCODING, value));
        assert!(accept("gzip, deflate, br"));
        assert!(accept("br;q=1.0, GZIP;q=0.5"));
        assert!(accept("*"));
        assert!(!accept("gzip;q=0"));
        assert!(!accept("gzip;q=0.0, *"));
        assert!(!accept("br, deflate"));
        assert!(!accept("identity"));
        assert!(!accept("*;q=0"));
        assert!(!accept("gzipx"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn entity_tags_match_weakly_and_by_list() {
        let tag = HeaderValue::from_static("\"abc-3\"");
        let matches = |value| none_match(&headers(header::IF_NONE_MATCH, value), &tag);
        assert!(matches("\"abc-3\""));
        assert!(matches("W/\"abc-3\""));
        assert!(matches("\"x\", \"abc-3\""));
        assert!(matches("*"));
        assert!(!matches("\"abc-4\""));
        assert!(!matches("abc-3"));
    }

    #[test]
    fn only_plain_paths_are_accepted() {
        for good in ["/index.html", "/assets/index-3f2a9c.js", "/favicon.svg", "/.well-known/x"] {
            assert!(is_plain_path(good), "{good}");
        }
        for bad in
            ["", "index.html", "/", "//x", "/a//b", "/../x", "/a/./b", "/a/..", "/a b", "/%2e"]
        {
            assert!(!is_plain_path(bad), "{bad}");
        }
    }

    #[test]
    fn a_page_needs_an_index_and_unique_paths() {
        let file = |path| StaticFile { path, content_type: "text/plain", bytes: b"x", gzip: None };
        assert!(matches!(WebPage::new([file("/a.txt")]), Err(WebPageError::NoIndex)));
        assert!(matches!(
            WebPage::new([file("/index.html"), file("/index.html")]),
            Err(WebPageError::Duplicate(_))
        ));
        assert!(matches!(WebPage::new([file("/../etc")]), Err(WebPageError::BadPath(_))));
        let bad_type = StaticFile { content_type: "text/html\n", ..file("/index.html") };
        assert!(matches!(WebPage::new([bad_type]), Err(WebPageError::BadContentType { .. })));
    }

    #[test]
    fn entity_tags_tell_contents_apart() {
        assert_ne!(etag(b"one", ""), etag(b"two", ""));
        assert_ne!(etag(b"one", ""), etag(b"one", "-gzip"));
        assert_eq!(etag(b"one", ""), etag(b"one", ""));
    }
}
