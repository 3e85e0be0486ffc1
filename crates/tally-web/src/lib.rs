//! The Tally web page, embedded in the binary: the files of `web/page/dist` as a static table.
//!
//! `build.rs` decides where the files come from, in this order:
//! 1. `TALLY_WEB_DIST` is set: that directory, as it is (for packagers with a prebuilt page).
//! 2. `npm` is on `PATH`: it runs `npm install` and `npm run build` in `web/` when their
//!    inputs are newer than their outputs, under a file lock, then embeds `web/page/dist`.
//! 3. Otherwise: a one-page fallback that says the page was not built and how to build it;
//!    the build does not fail, since the RPC and WebSocket API work without the page.
//!
//! The table is served by `tally-server` (which knows nothing of npm); `tally-cli` joins them.
//!
//! ```
//! let index = tally_web::assets().iter().find(|asset| asset.path == "/index.html");
//! assert!(index.is_some_and(|asset| asset.content_type.starts_with("text/html")));
//! ```

/// One embedded file of the page.
#[derive(Clone, Copy)]
pub struct Asset {
    /// The URL path that serves it: `/` followed by its path inside the dist directory, e.g.
    /// `/index.html` or `/assets/index-3f2a9c.js`.
    pub path: &'static str,
    /// Its `Content-Type`, guessed from the file name when the page was built.
    pub content_type: &'static str,
    /// The file as built.
    pub bytes: &'static [u8],
    /// The same bytes gzip-compressed, for text files where that saves at least a tenth.
    pub gzip: Option<&'static [u8]>,
}

impl std::fmt::Debug for Asset {
    // The bytes themselves would drown everything else in a debug print.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Asset")
            .field("path", &self.path)
            .field("content_type", &self.content_type)
            .field("bytes", &self.bytes.len())
            .field("gzip", &self.gzip.map(<[u8]>::len))
            .finish()
    }
}

mod generated {
    // Written by build.rs: `ASSETS`, sorted by path, and `FALLBACK_REASON`.
    include!(concat!(env!("OUT_DIR"), "/assets.rs"));
}

/// Every file of the page, sorted by path; `/index.html` is always among them.
pub fn assets() -> &'static [Asset] {
    generated::ASSETS
}

/// Why the real page is not embedded, when the built-in fallback page is (npm was not found,
/// or `web/` was not there); `None` when the page was built.
pub fn fallback_reason() -> Option<&'static str> {
    generated::FALLBACK_REASON
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_an_index_and_no_path_twice() {
        let paths: Vec<&str> = assets().iter().map(|asset| asset.path).collect();
        assert!(paths.contains(&"/index.html"), "{paths:?}");
        assert!(
            paths.windows(2).all(|pair| pair[0] < pair[1]),
            "not sorted or repeated: {paths:?}"
        );
        for asset in assets() {
            assert!(asset.path.starts_with('/') && !asset.path.contains(".."), "{asset:?}");
            assert!(!asset.content_type.is_empty(), "{asset:?}");
            if let Some(gzip) = asset.gzip {
                assert!(gzip.len() < asset.bytes.len(), "{asset:?}");
            }
        }
    }
}
