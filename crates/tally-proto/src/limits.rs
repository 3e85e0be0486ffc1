//! The limits the protocol promises to clients. Servers enforce them; clients may check them early.

/// The largest integer a JavaScript number holds exactly (2^53 - 1). Every value, amount and
/// result stays within `-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER` so that browser clients read them
/// exactly.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// The longest counter name, in bytes.
pub const NAME_MAX_BYTES: usize = 128;

/// The largest RPC request body, in bytes (answered with 413 above it).
pub const MAX_REQUEST_BODY_BYTES: usize = 64 * 1024;

/// The largest message a client may send over a WebSocket (closed with 1009 above it).
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 4 * 1024;

/// The range `getHistory`'s `limit` must fall in.
pub const HISTORY_PAGE_MAX: u32 = 1000;

/// `getHistory`'s `limit` when the request has none.
pub const HISTORY_PAGE_DEFAULT: u32 = 50;

/// The range `counter.list`'s `limit` must fall in.
pub const LIST_PAGE_MAX: u32 = 1000;

/// `counter.list`'s `limit` when the request has none.
pub const LIST_PAGE_DEFAULT: u32 = 100;
