//! The client's reconnect rules as a pure state machine: events in, actions out, with no clock,
//! no randomness and no I/O, so that one file of scripted scenarios
//! (`protocol/reconnect-scenarios.json`) can check every rule, in this crate and in the
//! TypeScript client alike. docs/PROTOCOL.md ("Client reconnect rules") says each rule and why.
//!
//! The machine never reads the time: it asks for timers ([`Action::Timer`], [`Action::Wait`],
//! [`Action::Later`]) and is told when they fire ([`Event::Timer`], [`Event::Due`]). A wait is
//! given as bounds (`[min, max]` ms); the driver picks a uniform random delay within them, so
//! the scenarios stay deterministic while real clients get full jitter.
//!
//! What the machine owns: the phase of the connection, the backoff attempt, which of the
//! server URLs the next attempt goes to, each subscription's last delivered version (what a
//! resume sends as `since`), and whether an update is passed on, dropped, or shows a gap. What it
//! does not: sockets, tokens, calls, payloads.
//!
//! With several server URLs (the nodes of one cluster), each attempt goes to one of them
//! ([`Action::Connect`]'s `url`, an index into the list): the first attempt to the first URL,
//! and every end of a connection or an attempt that calls for a reconnect moves on to the next
//! one, round robin, before the wait. So a lost node's clients come back on another node, and
//! resume there with `since` as they would on the same one.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tally_proto::close;

use crate::backoff::Backoff;

/// The numbers the rules use. [`Rules::default`] is the one set both clients ship with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rules {
    /// Delays between failed attempts.
    pub(crate) backoff: Backoff,
    /// A connection established this long resets the backoff to its first step.
    pub(crate) min_uptime: Duration,
    /// How long from starting a connection to its first frame before it is abandoned.
    pub(crate) connect_timeout: Duration,
    /// How often a quiet connection is checked (pinged, then given up).
    pub(crate) ping_interval: Duration,
    /// The longest server-advised delay honoured; a longer one is cut to this.
    pub(crate) max_advised_delay: Duration,
    /// How soon to ask a failing token source again while the socket's token still works.
    pub(crate) token_retry: Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            min_uptime: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            max_advised_delay: Duration::from_secs(300),
            token_retry: Duration::from_secs(1),
        }
    }
}

/// The timers of a connection. At most one of each kind is armed; arming one again replaces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum TimerKind {
    /// The end of a wait between attempts.
    Retry,
    /// The deadline for a new connection's first frame.
    ConnectTimeout,
    /// The moment an established connection has stayed up for the minimum uptime.
    MinUptime,
    /// The liveness check of an established connection.
    Ping,
    /// The time to fetch a fresh token and send it over the open socket.
    Token,
}

impl TimerKind {
    /// Every kind, for drivers that keep one slot per kind.
    pub(crate) const ALL: [TimerKind; 5] = [
        TimerKind::Retry,
        TimerKind::ConnectTimeout,
        TimerKind::MinUptime,
        TimerKind::Ping,
        TimerKind::Token,
    ];
}

/// What happened, as the driver tells the machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub(crate) enum Event {
    /// The connection is wanted (its first use). `credentials`: whether there is a token
    /// source to refresh from; `urls`: how many server URLs there are to rotate through (1 when
    /// not given).
    Start {
        #[serde(default)]
        credentials: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        urls: Option<usize>,
    },
    /// The application subscribes to a counter. `jumps`: the subscription has `types` or
    /// `maxRate`, so its delivered versions may jump by design.
    Subscribe {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        #[serde(default)]
        jumps: bool,
    },
    /// The application ends a subscription.
    Unsubscribe { name: String },
    /// The socket is open (the upgrade succeeded). `token_refresh_ms`: when the socket's token
    /// should be replaced in band, if it expires.
    Opened {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_refresh_ms: Option<u64>,
    },
    /// A frame arrived that is none of the ones below (a pong, a result, …): a sign of life.
    Heard,
    /// A snapshot of `name`: the reply to its subscribe, or (`push`) a resync the server sent.
    /// `epoch`: the database's, which a later resume names beside `since`.
    Snapshot {
        name: String,
        version: u64,
        #[serde(default)]
        push: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
    },
    /// The reply to a resuming subscribe: the updates after `since` follow.
    Resumed {
        name: String,
        since: u64,
        version: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
    },
    /// An update of `name`; `conflated` ones jump by design.
    Update {
        name: String,
        version: u64,
        #[serde(default)]
        conflated: bool,
    },
    /// The server refused a subscribe; `temporary` ones are tried again.
    SubscribeRefused {
        name: String,
        #[serde(default)]
        temporary: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// The server ended a subscription (an `unsubscribed` push); the socket goes on.
    Ended { name: String },
    /// The application has not read subscription `name`, and its buffer is full: pause it.
    Full { name: String },
    /// The application read the paused subscription `name`'s buffer down: resume it.
    Drained { name: String },
    /// The v2 `reconnect{afterMs}` push, sent just before the server closes.
    Advised { after_ms: u64 },
    /// The server closed the socket with `code` and `reason`.
    Closed {
        code: u16,
        #[serde(default)]
        reason: String,
    },
    /// The connection failed or broke without a close frame (refused TCP connection, TLS
    /// failure, reset, 1006).
    Lost,
    /// The upgrade was answered with an HTTP error: `status`, and the body's `code` and
    /// `temporary`.
    Refused {
        status: u16,
        code: String,
        #[serde(default)]
        temporary: bool,
    },
    /// A timer fired.
    Timer { timer: TimerKind },
    /// A subscription's retry wait ([`Action::Later`]) ended.
    Due { name: String },
    /// The token source answered. `fresh`: it gave another token than the one in use;
    /// `refresh_ms`: when that one should be replaced, if it expires.
    TokenRefreshed {
        fresh: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refresh_ms: Option<u64>,
    },
    /// The token source failed.
    TokenFailed,
    /// The environment says the network may be back (a browser's `online` event, a visible tab).
    Wake,
}

/// Why the machine gave up a connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum CloseWhy {
    /// No first frame within the connect timeout.
    ConnectTimeout,
    /// Nothing heard for a whole ping interval after a ping.
    Silent,
}

/// Why the connection stops for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum StopKind {
    /// 4501, or an upgrade refused with `unauthenticated`: new credentials are needed.
    Unauthenticated,
    /// 4503, or an upgrade refused with `forbidden`.
    Forbidden,
    /// 4502 (or `token_expired`) with no way to get a fresh token.
    TokenExpired,
    /// The upgrade was refused for good (an HTTP error that is not temporary).
    Refused,
    /// A close code that says not to reconnect (1000, 1002, 1007, 1008, 1009, 4500–4999).
    Closed,
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub(crate) enum Action {
    /// Open a socket (getting a token first when there are credentials) to server URL number
    /// `url` (from 0); it is given only when there is more than one URL, and is 0 otherwise.
    Connect {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<usize>,
    },
    /// Drop the current socket or connection attempt.
    Close { why: CloseWhy },
    /// The connection is lost: tell the application, wait a uniform random delay within
    /// `[min_ms, max_ms]`, then fire [`TimerKind::Retry`].
    Wait { min_ms: u64, max_ms: u64 },
    /// Arm `timer` to fire in `ms` (replacing one already armed).
    Timer { timer: TimerKind, ms: u64 },
    /// The connection is established (its first frame arrived): tell the application.
    Connected,
    /// Send `subscribe{name, since?, epoch?}` (with the subscription's own options). `epoch`
    /// is the one `since` belongs to, when known; never sent without `since`.
    Subscribe {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
    },
    /// Send `unsubscribe{name}`.
    Unsubscribe { name: String },
    /// Pass the snapshot or update just reported to the application.
    Deliver { name: String, version: u64 },
    /// Send `ping`.
    Ping,
    /// Ask the token source for a fresh token (then report [`Event::TokenRefreshed`] or
    /// [`Event::TokenFailed`]).
    RefreshToken,
    /// Send the fresh token over the open socket (`auth`).
    SendAuth,
    /// Try subscription `name` again after a uniform random delay within `[min_ms, max_ms]`,
    /// then report [`Event::Due`].
    Later { name: String, min_ms: u64, max_ms: u64 },
    /// Subscription `name` is over (refused for good): tell the application.
    End { name: String },
    /// Stop for good: end every subscription with the error.
    Stop { stop: StopKind },
}

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not started.
    Idle,
    /// Connecting: getting a token, TCP, TLS, upgrade.
    Connecting,
    /// The socket is open, no frame yet.
    Opening,
    /// A frame arrived on this socket.
    Established,
    /// Waiting for [`TimerKind::Retry`].
    Waiting,
    /// Getting a fresh token before reconnecting (after 4502): once it comes, connect at once
    /// if the closed connection had been established, else after the backoff.
    Refreshing,
    /// Given up.
    Stopped,
}

/// Where one subscription is on the current connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubState {
    /// Not sent on this connection yet (there is no open socket).
    Queued,
    /// Sent, waiting for its reply.
    Sent,
    /// Its reply came; pushes flow.
    Live,
    /// A gap was seen: unsubscribed and subscribed again; pushes are dropped until the reply.
    Resubscribing,
    /// Refused for now; waiting for [`Event::Due`].
    Later,
    /// Its reader is behind: unsubscribed until [`Event::Drained`], and kept so across
    /// reconnects.
    Paused,
}

#[derive(Debug, Clone)]
struct Sub {
    /// The last version passed on (or given as the first `since`): what a resume sends.
    since: Option<u64>,
    /// The epoch of the database `since` is a version of (from the last snapshot or
    /// `resumed`), sent with it so that a resume against another database resyncs.
    epoch: Option<String>,
    /// Versions may jump by design (`types`, `maxRate`).
    jumps: bool,
    state: SubState,
    /// Temporary refusals in a row, for this subscription's own backoff.
    attempt: u32,
}

impl Sub {
    /// The `subscribe` that resumes this subscription from where it is: `since` and its epoch.
    fn subscribe(&self, name: String) -> Action {
        let epoch = self.since.and(self.epoch.clone());
        Action::Subscribe { name, since: self.since, epoch }
    }
}

/// The reconnect rules of one connection and its subscriptions.
#[derive(Debug)]
pub(crate) struct Machine {
    rules: Rules,
    phase: Phase,
    /// Whether a token source can give fresh tokens.
    credentials: bool,
    /// How many server URLs there are (at least 1).
    urls: usize,
    /// The index of the URL the next (or current) attempt goes to.
    url: usize,
    /// Failed attempts in a row: the backoff step of the next wait.
    attempt: u32,
    /// The delay the server advised (a `reconnect` push) for the coming reconnect.
    advised: Option<u64>,
    /// Whether the next reconnect must get a fresh token first (after 4502).
    refresh_first: bool,
    /// Whether the connection that ended had been established (for 4502: reconnect at once).
    was_established: bool,
    /// Whether anything arrived since the last ping tick.
    heard: bool,
    /// Whether a ping is out, unanswered.
    ping_out: bool,
    /// Whether a token fetch for the open socket is under way.
    refreshing_in_band: bool,
    /// Subscriptions by name (a BTreeMap, so that resumes go out in name order, which the
    /// scenarios can spell out).
    subs: BTreeMap<String, Sub>,
}

impl Machine {
    pub(crate) fn new(rules: Rules) -> Self {
        Self {
            rules,
            phase: Phase::Idle,
            credentials: false,
            urls: 1,
            url: 0,
            attempt: 0,
            advised: None,
            refresh_first: false,
            was_established: false,
            heard: false,
            ping_out: false,
            refreshing_in_band: false,
            subs: BTreeMap::new(),
        }
    }

    /// Handles `event`, appending what to do to `out` (which it does not clear).
    pub(crate) fn handle(&mut self, event: Event, out: &mut Vec<Action>) {
        if self.phase == Phase::Stopped {
            // Nothing revives a stopped connection; a new subscription ends at once.
            if let Event::Subscribe { name, .. } = event {
                out.push(Action::End { name });
            }
            return;
        }
        match event {
            Event::Start { credentials, urls } => {
                self.credentials = credentials;
                if self.phase == Phase::Idle {
                    self.urls = urls.unwrap_or(1).max(1);
                    self.connect(out);
                }
            }
            Event::Subscribe { name, since, epoch, jumps } => {
                let open = self.is_open();
                let state = if open { SubState::Sent } else { SubState::Queued };
                let sub = Sub { since, epoch, jumps, state, attempt: 0 };
                if open {
                    out.push(sub.subscribe(name.clone()));
                }
                self.subs.insert(name, sub);
            }
            Event::Unsubscribe { name } => {
                if let Some(sub) = self.subs.remove(&name)
                    && self.is_open()
                    && matches!(
                        sub.state,
                        SubState::Sent | SubState::Live | SubState::Resubscribing
                    )
                {
                    out.push(Action::Unsubscribe { name });
                }
            }
            Event::Opened { token_refresh_ms } => {
                if self.phase != Phase::Connecting {
                    return;
                }
                self.phase = Phase::Opening;
                self.refreshing_in_band = false;
                if self.subs.is_empty() {
                    // Something must come back to establish the connection.
                    out.push(Action::Ping);
                }
                for (name, sub) in &mut self.subs {
                    if sub.state != SubState::Paused {
                        sub.state = SubState::Sent;
                        out.push(sub.subscribe(name.clone()));
                    }
                }
                if let Some(ms) = token_refresh_ms {
                    out.push(Action::Timer { timer: TimerKind::Token, ms });
                }
            }
            Event::Heard => self.heard(out),
            Event::Snapshot { name, version, push, epoch } => {
                self.heard(out);
                let Some(sub) = self.subs.get_mut(&name) else { return };
                if (push && sub.state == SubState::Resubscribing) || sub.state == SubState::Paused {
                    // From the subscription being replaced, or for a reader that is behind.
                    return;
                }
                sub.since = Some(version);
                sub.epoch = epoch;
                sub.state = SubState::Live;
                sub.attempt = 0;
                out.push(Action::Deliver { name, version });
            }
            Event::Resumed { name, since, epoch, .. } => {
                self.heard(out);
                if let Some(sub) = self.subs.get_mut(&name)
                    && sub.state != SubState::Paused
                {
                    sub.since = sub.since.or(Some(since));
                    if epoch.is_some() {
                        sub.epoch = epoch;
                    }
                    sub.state = SubState::Live;
                    sub.attempt = 0;
                }
            }
            Event::Update { name, version, conflated } => {
                self.heard(out);
                self.update(name, version, conflated, out);
            }
            Event::SubscribeRefused { name, temporary, retry_after_ms } => {
                self.heard(out);
                let backoff = self.rules.backoff;
                let Some(sub) = self.subs.get_mut(&name) else { return };
                if !temporary {
                    self.subs.remove(&name);
                    out.push(Action::End { name });
                    return;
                }
                let (min_ms, max_ms) = match retry_after_ms {
                    Some(ms) => (ms, ms),
                    None => (0, millis(backoff.ceiling(sub.attempt))),
                };
                sub.attempt = sub.attempt.saturating_add(1);
                sub.state = SubState::Later;
                out.push(Action::Later { name, min_ms, max_ms });
            }
            Event::Ended { name } => {
                self.heard(out);
                self.subs.remove(&name);
            }
            Event::Full { name } => {
                let open = self.is_open();
                let Some(sub) = self.subs.get_mut(&name) else { return };
                let subscribed =
                    matches!(sub.state, SubState::Sent | SubState::Live | SubState::Resubscribing);
                if sub.state == SubState::Paused {
                    return;
                }
                // Pausing costs the server nothing and the socket no stall; the resume starts
                // after the last version the reader was given, so nothing is skipped.
                sub.state = SubState::Paused;
                if open && subscribed {
                    out.push(Action::Unsubscribe { name });
                }
            }
            Event::Drained { name } => {
                let open = self.is_open();
                if let Some(sub) = self.subs.get_mut(&name)
                    && sub.state == SubState::Paused
                {
                    if open {
                        sub.state = SubState::Sent;
                        out.push(sub.subscribe(name));
                    } else {
                        sub.state = SubState::Queued;
                    }
                }
            }
            Event::Advised { after_ms } => {
                self.heard(out);
                self.advised = Some(after_ms);
            }
            Event::Closed { code, reason } => {
                if self.is_live() {
                    self.closed(code, &reason, out);
                }
            }
            Event::Lost => {
                if self.is_live() {
                    self.lost(out);
                }
            }
            Event::Refused { code, temporary, .. } => {
                if self.phase != Phase::Connecting {
                    return;
                }
                match code.as_str() {
                    "token_expired" if self.credentials => {
                        self.refresh_first = true;
                        self.lost(out);
                    }
                    "token_expired" => self.stop(StopKind::TokenExpired, out),
                    "unauthenticated" => self.stop(StopKind::Unauthenticated, out),
                    "forbidden" => self.stop(StopKind::Forbidden, out),
                    _ if temporary => self.lost(out),
                    _ => self.stop(StopKind::Refused, out),
                }
            }
            Event::Timer { timer } => self.timer(timer, out),
            Event::Due { name } => {
                let open = self.is_open();
                if let Some(sub) = self.subs.get_mut(&name)
                    && sub.state == SubState::Later
                    && open
                {
                    sub.state = SubState::Sent;
                    out.push(sub.subscribe(name));
                }
            }
            Event::TokenRefreshed { fresh, refresh_ms } => {
                if self.phase == Phase::Refreshing {
                    if fresh {
                        self.refresh_first = false;
                        self.connect(out);
                    } else {
                        // The source has nothing newer than the token the server called
                        // expired: reconnecting with it would only be refused again.
                        self.stop(StopKind::TokenExpired, out);
                    }
                } else if self.is_open() && self.refreshing_in_band {
                    self.refreshing_in_band = false;
                    if fresh {
                        out.push(Action::SendAuth);
                        if let Some(ms) = refresh_ms {
                            out.push(Action::Timer { timer: TimerKind::Token, ms });
                        }
                    }
                    // Nothing fresher yet: the server closes with 4502 at expiry, and the
                    // reconnect asks again.
                }
            }
            Event::TokenFailed => {
                if self.phase == Phase::Refreshing {
                    self.phase = Phase::Waiting;
                    self.backoff_wait(out);
                } else if self.is_open() && self.refreshing_in_band {
                    self.refreshing_in_band = false;
                    let ms = millis(self.rules.token_retry);
                    out.push(Action::Timer { timer: TimerKind::Token, ms });
                }
            }
            Event::Wake => {
                if self.phase == Phase::Waiting {
                    self.retry(out);
                }
            }
        }
    }

    /// Whether a socket is open (subscribes can be sent).
    fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Opening | Phase::Established)
    }

    /// Whether there is a connection (or an attempt) that can end.
    fn is_live(&self) -> bool {
        matches!(self.phase, Phase::Connecting | Phase::Opening | Phase::Established)
    }

    fn connect(&mut self, out: &mut Vec<Action>) {
        self.phase = Phase::Connecting;
        self.advised = None;
        self.was_established = false;
        let url = (self.urls > 1).then_some(self.url);
        out.push(Action::Connect { url });
        out.push(Action::Timer {
            timer: TimerKind::ConnectTimeout,
            ms: millis(self.rules.connect_timeout),
        });
    }

    /// The end of a wait: connect, or get a fresh token first.
    fn retry(&mut self, out: &mut Vec<Action>) {
        if self.refresh_first && self.credentials {
            self.phase = Phase::Refreshing;
            out.push(Action::RefreshToken);
        } else {
            self.connect(out);
        }
    }

    fn heard(&mut self, out: &mut Vec<Action>) {
        self.heard = true;
        if self.phase == Phase::Opening {
            self.phase = Phase::Established;
            self.was_established = true;
            // The ping check measures from here.
            self.heard = false;
            self.ping_out = false;
            out.push(Action::Connected);
            out.push(Action::Timer {
                timer: TimerKind::MinUptime,
                ms: millis(self.rules.min_uptime),
            });
            out.push(Action::Timer {
                timer: TimerKind::Ping,
                ms: millis(self.rules.ping_interval),
            });
        }
    }

    fn update(&mut self, name: String, version: u64, conflated: bool, out: &mut Vec<Action>) {
        let Some(sub) = self.subs.get_mut(&name) else { return };
        if matches!(sub.state, SubState::Resubscribing | SubState::Paused) {
            return;
        }
        match sub.since {
            // Already passed on: a replay overlapping what we had, or an own write seen twice.
            Some(last) if version <= last => {}
            Some(last) if version != last + 1 && !sub.jumps && !conflated => {
                // A hole in the history: start this subscription over from what we have
                // rather than pass on a state with a gap. The socket goes on.
                sub.state = SubState::Resubscribing;
                out.push(Action::Unsubscribe { name: name.clone() });
                out.push(sub.subscribe(name));
            }
            _ => {
                sub.since = Some(version);
                out.push(Action::Deliver { name, version });
            }
        }
    }

    fn timer(&mut self, timer: TimerKind, out: &mut Vec<Action>) {
        match timer {
            TimerKind::Retry if self.phase == Phase::Waiting => self.retry(out),
            TimerKind::ConnectTimeout
                if matches!(self.phase, Phase::Connecting | Phase::Opening) =>
            {
                out.push(Action::Close { why: CloseWhy::ConnectTimeout });
                self.ended();
                self.backoff_wait(out);
            }
            TimerKind::MinUptime if self.phase == Phase::Established => self.attempt = 0,
            TimerKind::Ping if self.phase == Phase::Established => {
                if self.heard {
                    self.heard = false;
                    self.ping_out = false;
                } else if self.ping_out {
                    out.push(Action::Close { why: CloseWhy::Silent });
                    self.ended();
                    self.backoff_wait(out);
                    return;
                } else {
                    self.ping_out = true;
                    out.push(Action::Ping);
                }
                out.push(Action::Timer {
                    timer: TimerKind::Ping,
                    ms: millis(self.rules.ping_interval),
                });
            }
            TimerKind::Token if self.is_open() && !self.refreshing_in_band => {
                self.refreshing_in_band = true;
                out.push(Action::RefreshToken);
            }
            // A timer of a phase that is over.
            _ => {}
        }
    }

    /// Bookkeeping when a connection (or attempt) ends and a reconnect follows: the next
    /// attempt goes to the next URL. A node that failed is as likely to fail again as not, and
    /// the others serve the same counters, so there is no reason to stay on it; round robin
    /// reaches every node in turn while the backoff grows as for one server.
    fn ended(&mut self) {
        self.phase = Phase::Waiting;
        self.url = (self.url + 1) % self.urls;
        self.refreshing_in_band = false;
        for sub in self.subs.values_mut().filter(|sub| sub.state != SubState::Paused) {
            sub.state = SubState::Queued;
        }
    }

    fn closed(&mut self, code: u16, reason: &str, out: &mut Vec<Action>) {
        match code {
            close::TOKEN_EXPIRED if self.credentials => {
                let at_once = self.was_established;
                self.ended();
                self.refresh_first = true;
                if at_once {
                    // The connection worked; only its token ran out.
                    out.push(Action::Wait { min_ms: 0, max_ms: 0 });
                } else {
                    self.backoff_wait(out);
                }
            }
            close::TOKEN_EXPIRED => self.stop(StopKind::TokenExpired, out),
            close::UNAUTHENTICATED => self.stop(StopKind::Unauthenticated, out),
            close::FORBIDDEN => self.stop(StopKind::Forbidden, out),
            code if !close::should_reconnect(code) => self.stop(StopKind::Closed, out),
            _ => {
                if let Some(ms) = advised_in(reason) {
                    self.advised = Some(ms);
                }
                self.lost(out);
            }
        }
    }

    /// A connection that ends in a way that calls for a reconnect: after the server's advised
    /// delay if it gave one, else after the backoff.
    fn lost(&mut self, out: &mut Vec<Action>) {
        let advised = self.advised.take();
        self.ended();
        match advised {
            Some(ms) => {
                // The server spread its clients itself; the advice is not a failure of ours,
                // so the backoff does not grow.
                let ms = ms.min(millis(self.rules.max_advised_delay));
                out.push(Action::Wait { min_ms: ms, max_ms: ms });
            }
            None => self.backoff_wait(out),
        }
    }

    /// A full-jitter wait at the current backoff step, which then grows.
    fn backoff_wait(&mut self, out: &mut Vec<Action>) {
        let max_ms = millis(self.rules.backoff.ceiling(self.attempt));
        self.attempt = self.attempt.saturating_add(1);
        out.push(Action::Wait { min_ms: 0, max_ms });
    }

    fn stop(&mut self, stop: StopKind, out: &mut Vec<Action>) {
        self.phase = Phase::Stopped;
        self.subs.clear();
        out.push(Action::Stop { stop });
    }
}

/// The delay in a close reason that says `reconnect after N ms`.
pub(crate) fn advised_in(reason: &str) -> Option<u64> {
    const MARK: &str = "reconnect after ";
    let start = reason.find(MARK)? + MARK.len();
    let rest = &reason[start..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || !rest[digits..].trim_start().starts_with("ms") {
        return None;
    }
    rest[..digits].parse().ok()
}

/// A duration in whole milliseconds.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
