//! The task behind a [`Connection`](super::Connection): it owns the socket, tells the reconnect
//! machine (`reconnect.rs`) what happens, and does what the machine answers. Everything the
//! rules decide is decided there; this file only moves bytes, timers and tokens.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value};
use tally_proto::socket::{Call, Command, CommandKind, Frame, Subscribe};
use tally_proto::{
    CounterName, Epoch, ErrorBody, IdempotencyKey, Procedure, Resumed, WsError, close,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::{ConnectionEvent, Ended, SubscribeOptions, SubscriptionEvent};
use crate::client::{rejected, socket_refusal};
use crate::error::{ClientError, duplicate};
use crate::reconnect::{Action, CloseWhy, Event, Machine, Rules, TimerKind};
use crate::token::{Credentials, Token};

/// At most this many commands wait for their replies at once; the rest queue here. Below the
/// server's default `--max-in-flight` (256), so that resubscribing hundreds of counters after a
/// reconnect is never refused for it.
const MAX_IN_FLIGHT: usize = 128;

/// How many events a subscription buffers for its reader. A reader that lets it fill is not
/// waited for (that would stall every subscription on the socket): the subscription is paused
/// and resumed from the last version it was given once the reader has read half of it.
pub(crate) const SUBSCRIPTION_BUFFER: usize = 1024;

/// Room kept in a subscription's buffer for the events that are never dropped for a slow
/// reader (a resume, a disconnect, the end).
const RESERVE: usize = 16;

/// How often paused subscriptions are checked for a reader that caught up.
const DRAIN_CHECK: Duration = Duration::from_millis(50);

/// How long one frame may take to be written before the socket is given up as dead.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a [`Connection`](super::Connection) asks its task.
pub(crate) enum Request {
    Subscribe {
        name: CounterName,
        serial: u64,
        options: SubscribeOptions,
        events: mpsc::Sender<SubscriptionEvent>,
    },
    Unsubscribe {
        name: String,
        serial: u64,
    },
    Call {
        procedure: Procedure,
        body: Map<String, Value>,
        key: Option<IdempotencyKey>,
        reply: oneshot::Sender<Answer>,
    },
}

/// How a call ended.
pub(crate) enum Answer {
    /// The RPC's answer.
    Result(Value),
    /// The server refused it (the caller decides whether to send it again).
    Refused(WsError),
    /// The connection stopped for good.
    Stopped(ClientError),
}

/// One subscription the application holds.
struct Sub {
    serial: u64,
    name: CounterName,
    options: SubscribeOptions,
    events: mpsc::Sender<SubscriptionEvent>,
}

impl Sub {
    fn send(&self, event: SubscriptionEvent) {
        // Full only for a reader far behind (its updates are paused before that, see
        // `RESERVE`), or closed: a dropped Subscription's unsubscribe is on its way.
        let _ = self.events.try_send(event);
    }

    /// Whether the reader is so far behind that updates must stop.
    fn is_behind(&self) -> bool {
        self.events.capacity() <= RESERVE
    }
}

/// A call waiting for its answer.
struct Pending {
    procedure: Procedure,
    body: Map<String, Value>,
    key: Option<IdempotencyKey>,
    reply: oneshot::Sender<Answer>,
}

/// A command to send when the socket and the in-flight limit allow.
enum Outgoing {
    Subscribe { name: String, since: Option<u64>, epoch: Option<String> },
    Unsubscribe { name: String },
    Call(u64),
    Ping,
    Auth,
}

/// A command sent on this socket, by its id, until its reply.
enum InFlight {
    Subscribe(String),
    Unsubscribe,
    Call(u64),
    Ping,
    Auth,
}

/// The socket, or the attempt to get one.
enum Link {
    Down,
    Connecting(BoxFuture<Result<Box<Opened>, ConnectFailure>>),
    Up {
        /// To the writer task (which owns the sending half).
        outgoing: mpsc::UnboundedSender<Message>,
        incoming: SplitStream<Socket>,
    },
}

struct Opened {
    socket: Socket,
    /// The token the upgrade carried.
    token: Option<Token>,
}

enum ConnectFailure {
    /// The upgrade was answered with an HTTP error.
    Refused { status: u16, body: Vec<u8> },
    /// No connection (or no token to make it with); try again later.
    Lost(String),
    /// The request cannot be made at all.
    Fatal(ClientError),
}

enum LinkEvent {
    /// The socket is boxed: it is large, and this event is passed by value.
    Connected(Result<Box<Opened>, ConnectFailure>),
    Message(Option<Result<Message, tungstenite::Error>>),
}

pub(crate) struct Driver {
    /// The socket URLs (`ws://host/ws` or `wss://host/ws`), one per server; never empty.
    urls: Vec<String>,
    /// The index in `urls` of the current (or last) attempt, as the machine chose it; shared
    /// with the connection's handles for [`Connection::server_url`](super::Connection::server_url).
    current: Arc<AtomicUsize>,
    credentials: Option<Arc<Credentials>>,
    tls: Arc<rustls::ClientConfig>,
    machine: Machine,
    /// Reused for the machine's answers.
    actions: Vec<Action>,
    requests: mpsc::UnboundedReceiver<Request>,
    events: broadcast::Sender<ConnectionEvent>,
    link: Link,
    /// The token of the open (or last) socket: sent in band when replaced, and the stale one
    /// to renew after 4502.
    socket_token: Option<Token>,
    /// A token being fetched.
    token_job: Option<BoxFuture<Result<Token, ClientError>>>,
    /// When each of the machine's timers fires, by [`TimerKind`] index.
    timers: [Option<Instant>; TimerKind::ALL.len()],
    /// When each subscription refused for now is tried again.
    later: HashMap<String, Instant>,
    /// Subscriptions paused for a reader that is behind, and when to look at them again.
    paused: Vec<String>,
    drain_check: Option<Instant>,
    subs: HashMap<String, Sub>,
    /// Calls not answered yet, by a local number (in order, so re-sends keep it).
    calls: BTreeMap<u64, Pending>,
    next_call: u64,
    queue: VecDeque<Outgoing>,
    in_flight: HashMap<u64, InFlight>,
    next_id: u64,
    /// What ended the last connection, in words (told to the application with the wait).
    reason: String,
    /// The error to stop with if the event being handled stops the machine.
    failure: Option<ClientError>,
    /// The snapshot or update being handled, passed on if the machine says `deliver`.
    held: Option<SubscriptionEvent>,
    /// The refusal of the subscribe being handled, for an `end`.
    refusal: Option<ClientError>,
    /// Once stopped, the error every later request gets.
    stopped: Option<ClientError>,
}

impl Driver {
    pub(crate) fn new(
        urls: Vec<String>,
        current: Arc<AtomicUsize>,
        credentials: Option<Arc<Credentials>>,
        tls: Arc<rustls::ClientConfig>,
        rules: Rules,
        requests: mpsc::UnboundedReceiver<Request>,
        events: broadcast::Sender<ConnectionEvent>,
    ) -> Self {
        Self {
            urls,
            current,
            credentials,
            tls,
            machine: Machine::new(rules),
            actions: Vec::new(),
            requests,
            events,
            link: Link::Down,
            socket_token: None,
            token_job: None,
            timers: [None; TimerKind::ALL.len()],
            later: HashMap::new(),
            paused: Vec::new(),
            drain_check: None,
            subs: HashMap::new(),
            calls: BTreeMap::new(),
            next_call: 0,
            queue: VecDeque::new(),
            in_flight: HashMap::new(),
            next_id: 1,
            reason: String::new(),
            failure: None,
            held: None,
            refusal: None,
            stopped: None,
        }
    }

    /// Runs until every handle (connections and subscriptions) is gone.
    pub(crate) async fn run(mut self) {
        let urls = Some(self.urls.len());
        self.feed(Event::Start { credentials: self.credentials.is_some(), urls });
        loop {
            self.pump();
            let deadline = self.next_deadline();
            tokio::select! {
                request = self.requests.recv() => match request {
                    Some(request) => self.on_request(request),
                    None => return,
                },
                event = next_on(&mut self.link) => self.on_link(event),
                token = next_token(&mut self.token_job) => {
                    self.token_job = None;
                    self.on_token(token);
                }
                () = sleep_until(deadline) => self.on_deadline(),
            }
        }
    }

    /// Tells the machine `event` and does what it answers.
    fn feed(&mut self, event: Event) {
        let mut actions = std::mem::take(&mut self.actions);
        self.machine.handle(event, &mut actions);
        for action in actions.drain(..) {
            self.act(action);
        }
        self.actions = actions;
        // What was kept for this event's actions belongs to it alone.
        self.held = None;
        self.refusal = None;
        self.failure = None;
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Connect { url } => {
                self.timers[slot(TimerKind::Retry)] = None;
                // The machine counts within the list it was given; `min` only guards the index.
                let index = url.unwrap_or(0).min(self.urls.len().saturating_sub(1));
                self.current.store(index, Ordering::Relaxed);
                self.link = Link::Connecting(self.connect());
            }
            Action::Close { why } => {
                self.reason = match why {
                    CloseWhy::ConnectTimeout => "no answer from the server in time; retrying",
                    CloseWhy::Silent => "nothing heard from the server after a ping; reconnecting",
                }
                .to_owned();
                self.drop_link();
            }
            Action::Wait { min_ms, max_ms } => {
                let retry_in = Duration::from_millis(pick(min_ms, max_ms));
                self.timers[slot(TimerKind::Retry)] = Some(Instant::now() + retry_in);
                for sub in self.subs.values() {
                    let reason = self.reason.clone();
                    sub.send(SubscriptionEvent::Disconnected { reason, retry_in });
                }
                let reason = self.reason.clone();
                let _ = self.events.send(ConnectionEvent::Disconnected { reason, retry_in });
            }
            Action::Timer { timer, ms } => {
                self.timers[slot(timer)] = Some(Instant::now() + Duration::from_millis(ms));
            }
            Action::Connected => {
                let _ = self.events.send(ConnectionEvent::Connected);
            }
            Action::Subscribe { name, since, epoch } => {
                self.queue.push_back(Outgoing::Subscribe { name, since, epoch });
            }
            Action::Unsubscribe { name } => {
                self.later.remove(&name);
                self.queue.push_back(Outgoing::Unsubscribe { name });
            }
            Action::Deliver { name, .. } => {
                if let (Some(event), Some(sub)) = (self.held.take(), self.subs.get(&name)) {
                    sub.send(event);
                }
            }
            Action::Ping => self.queue.push_back(Outgoing::Ping),
            Action::RefreshToken => self.token_job = Some(self.refresh()),
            Action::SendAuth => self.queue.push_back(Outgoing::Auth),
            Action::Later { name, min_ms, max_ms } => {
                let at = Instant::now() + Duration::from_millis(pick(min_ms, max_ms));
                self.later.insert(name, at);
            }
            Action::End { name } => {
                if let Some(sub) = self.subs.remove(&name) {
                    let error = self.refusal.take().unwrap_or_else(|| self.stop_error());
                    sub.send(SubscriptionEvent::Ended(Ended::Refused(error)));
                }
            }
            Action::Stop { .. } => self.stop(),
        }
    }

    fn on_request(&mut self, request: Request) {
        match request {
            Request::Subscribe { name, serial, options, events } => {
                if let Some(error) = &self.stopped {
                    let ended = Ended::Stopped(duplicate(error));
                    let _ = events.try_send(SubscriptionEvent::Ended(ended));
                    return;
                }
                if self.subs.contains_key(name.as_str()) {
                    let error = ClientError::Rejected {
                        status: 409,
                        code: "already_subscribed".into(),
                        message: format!(
                            "this connection already subscribes to {name}; use that subscription, or drop it first"
                        ),
                        temporary: false,
                    };
                    let _ = events.try_send(SubscriptionEvent::Ended(Ended::Refused(error)));
                    return;
                }
                let jumps = options.types.is_some() || options.max_rate.is_some();
                let since = options.since;
                let epoch = options.epoch.as_ref().map(|epoch| epoch.to_string());
                let key = name.as_str().to_owned();
                self.subs.insert(key.clone(), Sub { serial, name, options, events });
                self.feed(Event::Subscribe { name: key, since, epoch, jumps });
            }
            Request::Unsubscribe { name, serial } => {
                if self.subs.get(&name).is_some_and(|sub| sub.serial == serial) {
                    self.subs.remove(&name);
                    self.later.remove(&name);
                    self.feed(Event::Unsubscribe { name });
                }
            }
            Request::Call { procedure, body, key, reply } => {
                if let Some(error) = &self.stopped {
                    let _ = reply.send(Answer::Stopped(duplicate(error)));
                    return;
                }
                let call = self.next_call;
                self.next_call += 1;
                self.calls.insert(call, Pending { procedure, body, key, reply });
                self.queue.push_back(Outgoing::Call(call));
            }
        }
    }

    fn on_link(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Connected(Ok(opened)) => {
                let Opened { socket, token } = *opened;
                let (sink, incoming) = socket.split();
                let (outgoing, queued) = mpsc::unbounded_channel();
                tokio::spawn(write_all(sink, queued));
                self.link = Link::Up { outgoing, incoming };
                let token_refresh_ms = token.as_ref().and_then(Token::refresh_at).map(ms_until);
                self.socket_token = token;
                self.feed(Event::Opened { token_refresh_ms });
            }
            LinkEvent::Connected(Err(ConnectFailure::Refused { status, body })) => {
                self.drop_link();
                let error = rejected(self.url(), status, &body, None);
                let (code, temporary) = match serde_json::from_slice::<ErrorBody>(&body) {
                    Ok(ErrorBody { error }) => (error.code, error.temporary),
                    Err(_) => (String::new(), status >= 500),
                };
                self.reason = format!("the server refused the connection: {error}");
                self.failure = Some(error);
                self.feed(Event::Refused { status, code, temporary });
            }
            LinkEvent::Connected(Err(ConnectFailure::Lost(reason))) => {
                self.drop_link();
                self.reason = reason;
                self.feed(Event::Lost);
            }
            LinkEvent::Connected(Err(ConnectFailure::Fatal(error))) => {
                self.drop_link();
                self.reason = error.to_string();
                self.failure = Some(error);
                // Nothing the server says can fix the request itself.
                self.feed(Event::Refused { status: 0, code: String::new(), temporary: false });
            }
            LinkEvent::Message(None) => {
                self.drop_link();
                self.reason = "connection lost".into();
                self.feed(Event::Lost);
            }
            LinkEvent::Message(Some(Err(error))) => {
                self.drop_link();
                self.reason = format!("connection lost: {error}");
                self.feed(Event::Lost);
            }
            LinkEvent::Message(Some(Ok(Message::Text(text)))) => self.on_text(&text),
            LinkEvent::Message(Some(Ok(Message::Close(frame)))) => {
                let (code, reason) = frame.map_or((1005, String::new()), |frame| {
                    (u16::from(frame.code), frame.reason.to_string())
                });
                self.drop_link();
                self.reason = format!("server closed the connection with {code} {reason}");
                self.failure = Some(self.close_error(code, &reason));
                self.feed(Event::Closed { code, reason });
            }
            // Pings are answered by tungstenite as we read; any frame is a sign of life.
            LinkEvent::Message(Some(Ok(_))) => self.feed(Event::Heard),
        }
    }

    fn on_text(&mut self, text: &str) {
        // Frames of types newer than this client are skipped (but are a sign of life).
        let Ok(frame) = Frame::from_json(text) else {
            self.feed(Event::Heard);
            return;
        };
        let reply = frame.reply_id();
        match frame {
            Frame::Update { name, .. } | Frame::Snapshot { name, .. }
                if self.subs.get(&name).is_some_and(Sub::is_behind) =>
            {
                if let Some(id) = reply {
                    self.in_flight.remove(&id);
                }
                self.pause(name);
            }
            Frame::Update { name, update, conflated } => {
                let version = update.version;
                self.held = Some(if conflated {
                    SubscriptionEvent::Conflated(update)
                } else {
                    SubscriptionEvent::Update(update)
                });
                self.feed(Event::Update { name, version, conflated });
            }
            Frame::Snapshot { id, name, snapshot } => {
                if let Some(id) = id {
                    self.in_flight.remove(&id);
                }
                let version = snapshot.version;
                let epoch = snapshot.epoch.as_ref().map(|epoch| epoch.to_string());
                self.held = Some(SubscriptionEvent::Snapshot(snapshot));
                self.feed(Event::Snapshot { name, version, push: id.is_none(), epoch });
            }
            Frame::Resumed { id, name, resumed } => {
                self.in_flight.remove(&id);
                if let Some(sub) = self.subs.get(&name) {
                    sub.send(SubscriptionEvent::Resumed {
                        since: resumed.since,
                        version: resumed.version,
                        epoch: resumed.epoch.clone(),
                    });
                }
                let Resumed { since, version, epoch } = resumed;
                let epoch = epoch.map(|epoch| epoch.to_string());
                self.feed(Event::Resumed { name, since, version, epoch });
            }
            Frame::Result { id, result } => {
                self.feed(Event::Heard);
                if let Some(InFlight::Call(call)) = self.in_flight.remove(&id)
                    && let Some(pending) = self.calls.remove(&call)
                {
                    let _ = pending.reply.send(Answer::Result(result));
                }
            }
            Frame::Error { id: Some(id), error } => match self.in_flight.remove(&id) {
                Some(InFlight::Subscribe(name)) => {
                    let (temporary, retry_after_ms) = (error.temporary, error.retry_after_ms);
                    self.refusal = Some(socket_refusal(error));
                    self.feed(Event::SubscribeRefused { name, temporary, retry_after_ms });
                }
                Some(InFlight::Call(call)) => {
                    self.feed(Event::Heard);
                    if let Some(pending) = self.calls.remove(&call) {
                        let _ = pending.reply.send(Answer::Refused(error));
                    }
                }
                // A refused fresh token leaves the socket on its current principal until that
                // one expires (then 4502 and a reconnect with another fresh token); an
                // unsubscribe of a subscription already gone needs nothing either.
                _ => self.feed(Event::Heard),
            },
            Frame::Error { id: None, .. } => self.feed(Event::Heard),
            Frame::Authenticated { id, authenticated } => {
                self.in_flight.remove(&id);
                self.feed(Event::Heard);
                for sub in self.subs.values() {
                    sub.send(SubscriptionEvent::Authenticated(authenticated.clone()));
                }
                let _ = self.events.send(ConnectionEvent::Authenticated(authenticated));
            }
            Frame::Pong { id, .. } | Frame::Unsubscribed { id: Some(id), .. } => {
                self.in_flight.remove(&id);
                self.feed(Event::Heard);
            }
            Frame::Presence { name, presence } => {
                self.feed(Event::Heard);
                // The next push will say it again; a reader that is behind can miss one.
                if let Some(sub) = self.subs.get(&name).filter(|sub| !sub.is_behind()) {
                    sub.send(SubscriptionEvent::Presence(presence));
                }
            }
            Frame::Unsubscribed { id: None, name, code, reason } => {
                if let Some(sub) = self.subs.remove(&name) {
                    sub.send(SubscriptionEvent::Ended(Ended::Unsubscribed {
                        code: code.unwrap_or_default(),
                        reason: reason.unwrap_or_default(),
                    }));
                }
                self.later.remove(&name);
                self.feed(Event::Ended { name });
            }
            Frame::Reconnect { after_ms, .. } => self.feed(Event::Advised { after_ms }),
            // This client never sends `watchServer` (the admin page does): a sign of life only.
            Frame::ServerStats { .. } | Frame::ServerUnwatched { .. } => self.feed(Event::Heard),
        }
    }

    fn on_token(&mut self, token: Result<Token, ClientError>) {
        match token {
            Ok(token) => {
                let fresh = self.socket_token.as_ref().is_none_or(|old| !token.same_as(old));
                let refresh_ms = token.refresh_at().map(ms_until);
                if fresh {
                    self.socket_token = Some(token);
                } else {
                    self.failure = Some(ClientError::Unauthenticated {
                        code: "token_expired".into(),
                        message: "the token expired and the token source gave no fresh one".into(),
                    });
                }
                self.feed(Event::TokenRefreshed { fresh, refresh_ms });
            }
            Err(error) => {
                self.reason = format!("cannot get a token: {error}");
                self.feed(Event::TokenFailed);
            }
        }
    }

    /// Stops the updates of a subscription whose reader is behind (see
    /// [`SUBSCRIPTION_BUFFER`]).
    fn pause(&mut self, name: String) {
        self.feed(Event::Heard);
        if !self.paused.contains(&name) {
            self.paused.push(name.clone());
        }
        self.drain_check.get_or_insert_with(|| Instant::now() + DRAIN_CHECK);
        self.feed(Event::Full { name });
    }

    /// Resumes the paused subscriptions whose readers caught up.
    fn check_drained(&mut self) {
        let paused = std::mem::take(&mut self.paused);
        for name in paused {
            match self.subs.get(&name) {
                None => {}
                Some(sub) if sub.events.capacity() >= SUBSCRIPTION_BUFFER / 2 => {
                    self.feed(Event::Drained { name });
                }
                Some(_) => self.paused.push(name),
            }
        }
        self.drain_check = (!self.paused.is_empty()).then(|| Instant::now() + DRAIN_CHECK);
    }

    fn on_deadline(&mut self) {
        let now = Instant::now();
        if self.drain_check.is_some_and(|at| at <= now) {
            self.check_drained();
            return;
        }
        for timer in TimerKind::ALL {
            if self.timers[slot(timer)].is_some_and(|at| at <= now) {
                self.timers[slot(timer)] = None;
                self.feed(Event::Timer { timer });
                return;
            }
        }
        let due = self.later.iter().find(|(_, at)| **at <= now).map(|(name, _)| name.clone());
        if let Some(name) = due {
            self.later.remove(&name);
            self.feed(Event::Due { name });
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.timers
            .iter()
            .flatten()
            .chain(self.later.values())
            .chain(&self.drain_check)
            .min()
            .copied()
    }

    /// Sends queued commands while the socket is up and the in-flight limit allows.
    fn pump(&mut self) {
        let Link::Up { outgoing, .. } = &self.link else { return };
        while self.in_flight.len() < MAX_IN_FLIGHT {
            let Some(next) = self.queue.pop_front() else { break };
            let (kind, flight) = match next {
                Outgoing::Subscribe { name, since, epoch } => {
                    let Some(sub) = self.subs.get(&name) else { continue };
                    let subscribe = Subscribe {
                        name: sub.name.clone(),
                        since,
                        // Each came from a server's `epoch`, which was checked on arrival.
                        epoch: epoch.and_then(|epoch| Epoch::parse(&epoch).ok()),
                        types: sub.options.types.clone(),
                        max_rate: sub.options.max_rate,
                        presence: sub.options.presence,
                    };
                    (CommandKind::Subscribe(subscribe), InFlight::Subscribe(name))
                }
                Outgoing::Unsubscribe { name } => {
                    // Names here were checked when subscribed.
                    let Ok(name) = CounterName::parse(&name) else { continue };
                    (CommandKind::Unsubscribe { name }, InFlight::Unsubscribe)
                }
                Outgoing::Call(call) => {
                    let Some(pending) = self.calls.get(&call) else { continue };
                    if pending.reply.is_closed() {
                        // Its caller gave up waiting.
                        self.calls.remove(&call);
                        continue;
                    }
                    let call_command = Call {
                        procedure: pending.procedure,
                        body: pending.body.clone(),
                        idempotency_key: pending.key.clone(),
                    };
                    (CommandKind::Call(call_command), InFlight::Call(call))
                }
                Outgoing::Ping => (CommandKind::Ping, InFlight::Ping),
                Outgoing::Auth => {
                    let Some(token) = &self.socket_token else { continue };
                    (CommandKind::Auth { token: token.secret().to_owned() }, InFlight::Auth)
                }
            };
            let id = self.next_id;
            self.next_id += 1;
            if outgoing.send(Message::text(Command { id, kind }.to_json())).is_err() {
                // The writer is gone; the reading half reports the loss.
                break;
            }
            self.in_flight.insert(id, flight);
        }
    }

    /// Forgets the socket (or the attempt) and what was on its way over it: calls go back to
    /// the front of the queue, to be sent again on the next socket with the same key; the
    /// machine sends the subscriptions again itself.
    fn drop_link(&mut self) {
        self.link = Link::Down;
        for timer in
            [TimerKind::ConnectTimeout, TimerKind::MinUptime, TimerKind::Ping, TimerKind::Token]
        {
            self.timers[slot(timer)] = None;
        }
        self.later.clear();
        self.token_job = None;
        let mut calls: Vec<u64> = self
            .in_flight
            .drain()
            .filter_map(|(_, flight)| match flight {
                InFlight::Call(call) => Some(call),
                _ => None,
            })
            .collect();
        self.queue.retain(|outgoing| matches!(outgoing, Outgoing::Call(_)));
        calls.sort_unstable();
        for call in calls.into_iter().rev() {
            self.queue.push_front(Outgoing::Call(call));
        }
    }

    fn stop(&mut self) {
        let error = self.failure.take().unwrap_or_else(|| self.stop_error());
        self.drop_link();
        self.timers = [None; TimerKind::ALL.len()];
        self.queue.clear();
        for (_, sub) in self.subs.drain() {
            sub.send(SubscriptionEvent::Ended(Ended::Stopped(duplicate(&error))));
        }
        for (_, pending) in std::mem::take(&mut self.calls) {
            let _ = pending.reply.send(Answer::Stopped(duplicate(&error)));
        }
        let _ = self.events.send(ConnectionEvent::Stopped { reason: error.to_string() });
        self.stopped = Some(error);
    }

    /// The error to stop with when no event gave a better one.
    fn stop_error(&self) -> ClientError {
        match &self.stopped {
            Some(error) => duplicate(error),
            None => {
                ClientError::Protocol { url: self.url().to_owned(), reason: self.reason.clone() }
            }
        }
    }

    /// What a close with `code` means if it stops the connection (PROTOCOL §7 and §9.5).
    fn close_error(&self, code: u16, reason: &str) -> ClientError {
        let said = format!("server closed the connection with {code} {reason}");
        let message = if reason.is_empty() { said.clone() } else { reason.to_owned() };
        match code {
            close::UNAUTHENTICATED => {
                ClientError::Unauthenticated { code: "unauthenticated".into(), message }
            }
            close::TOKEN_EXPIRED => {
                ClientError::Unauthenticated { code: "token_expired".into(), message }
            }
            close::FORBIDDEN => ClientError::Forbidden { message },
            _ => ClientError::Protocol { url: self.url().to_owned(), reason: said },
        }
    }

    /// The socket URL of the current (or last) attempt.
    fn url(&self) -> &str {
        self.urls.get(self.current.load(Ordering::Relaxed)).map_or("", String::as_str)
    }

    /// Gets a token (if there are credentials) and opens the socket to the current URL with it.
    fn connect(&self) -> BoxFuture<Result<Box<Opened>, ConnectFailure>> {
        let url = self.url().to_owned();
        let credentials = self.credentials.clone();
        let tls = Arc::clone(&self.tls);
        Box::pin(async move {
            let token = match &credentials {
                None => None,
                Some(credentials) => Some(credentials.get().await.map_err(|error| {
                    ConnectFailure::Lost(format!("cannot get a token: {error}"))
                })?),
            };
            let mut request = url.as_str().into_client_request().map_err(|error| {
                ConnectFailure::Fatal(ClientError::InvalidUrl {
                    url: url.clone(),
                    reason: error.to_string(),
                })
            })?;
            if let Some(token) = &token {
                let mut value = HeaderValue::from_str(&token.header_value()).map_err(|_| {
                    ConnectFailure::Fatal(ClientError::TokenSource(
                        "the token is not a valid HTTP header value".into(),
                    ))
                })?;
                value.set_sensitive(true);
                request.headers_mut().insert(AUTHORIZATION, value);
            }
            let connector = Connector::Rustls(tls);
            match tokio_tungstenite::connect_async_tls_with_config(
                request,
                None,
                true,
                Some(connector),
            )
            .await
            {
                Ok((socket, _)) => Ok(Box::new(Opened { socket, token })),
                Err(tungstenite::Error::Http(response)) => Err(ConnectFailure::Refused {
                    status: response.status().as_u16(),
                    body: response.body().clone().unwrap_or_default(),
                }),
                Err(error) => {
                    Err(ConnectFailure::Lost(format!("cannot connect to {url}: {error}")))
                }
            }
        })
    }

    /// Asks the token source for a token to replace the socket's.
    fn refresh(&self) -> BoxFuture<Result<Token, ClientError>> {
        let credentials = self.credentials.clone();
        let stale = self.socket_token.clone();
        Box::pin(async move {
            let Some(credentials) = credentials else {
                return Err(ClientError::TokenSource("there is no token source".into()));
            };
            match stale {
                Some(stale) => credentials.renew(&stale).await,
                None => credentials.get().await,
            }
        })
    }
}

/// Writes what the task queues until the queue closes (the socket was dropped), then closes
/// the socket politely. A peer that takes more than [`SEND_TIMEOUT`] for one frame is given up.
async fn write_all(
    mut sink: SplitSink<Socket, Message>,
    mut queued: mpsc::UnboundedReceiver<Message>,
) {
    while let Some(message) = queued.recv().await {
        match tokio::time::timeout(SEND_TIMEOUT, sink.send(message)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
}

async fn next_on(link: &mut Link) -> LinkEvent {
    match link {
        Link::Down => std::future::pending().await,
        Link::Connecting(attempt) => LinkEvent::Connected(attempt.await),
        Link::Up { incoming, .. } => LinkEvent::Message(incoming.next().await),
    }
}

async fn next_token(
    job: &mut Option<BoxFuture<Result<Token, ClientError>>>,
) -> Result<Token, ClientError> {
    match job {
        Some(job) => job.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn slot(timer: TimerKind) -> usize {
    TimerKind::ALL.iter().position(|kind| *kind == timer).unwrap_or(0)
}

/// A uniform random whole number within `[min, max]`.
fn pick(min: u64, max: u64) -> u64 {
    if max > min { fastrand::u64(min..=max) } else { min }
}

/// Milliseconds from now until `at` (0 if it has passed).
fn ms_until(at: SystemTime) -> u64 {
    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
    u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
}
