//! The commands of a version-2 socket, each answered with exactly one reply carrying its id:
//! `auth`, `subscribe`, `unsubscribe`, `call`, `ping`, `watchServer` and `unwatchServer`
//! (docs/PROTOCOL.md §10.3).
//!
//! Every command but `call` is answered before the next message is read. A call is put with
//! the socket's other calls in flight and answered when it is done, so a write waiting for its
//! commit delays nothing else; its answer is the RPC's, from the same code (`calls`).

use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes};
use tally_proto::socket::{BadCommand, Call, Command, CommandKind, Frame, SocketAuthenticated};
use tally_proto::{Action, CounterName, ErrorCode, Pong, ProtocolError, Request, Resumed};
use tokio::time::Instant;

use super::subscription::{Conflation, Types, Watched};
use super::{Session, deliver};
use crate::calls::counter_call;
use crate::clock;
use crate::connection::{End, Transport, binary_refused, reconnect_delay};
use crate::counter::CounterState;
use crate::framing::result_frame;
use crate::replay::{self, Origin, Start};
use crate::topic::User;

impl<T: Transport> Session<T> {
    /// One frame from the client.
    pub(super) async fn on_incoming(
        &mut self,
        incoming: Option<Result<Message, axum::Error>>,
    ) -> Result<(), End> {
        let message = self.link.receive(incoming)?;
        // Every frame but Close counts, Ping and Pong frames too: each costs a wake-up.
        let over_rate = if matches!(message, Message::Close(_)) {
            None
        } else {
            self.rate_window.count(self.state.config.max_commands_per_second).err()
        };
        match message {
            Message::Text(text) => self.on_command(&text, over_rate).await,
            Message::Binary(_) => self.reply_error(None, &binary_refused()).await,
            // tungstenite answers pings itself; pongs only tell us the peer is alive.
            Message::Ping(_) | Message::Pong(_) => Ok(()),
            Message::Close(_) => Err(self.link.closed_by_peer().await),
        }
    }

    /// One command; `over_rate` says how long until the client may send again, when this one
    /// is over `--max-commands-per-second` (it is then refused, whatever it asks).
    async fn on_command(
        &mut self,
        text: &str,
        over_rate: Option<std::time::Duration>,
    ) -> Result<(), End> {
        let command = match Command::parse(text) {
            Ok(command) => command,
            Err(BadCommand { id, error }) => return self.reply_error(id, &error).await,
        };
        let id = command.id;
        if let Some(wait) = over_rate {
            let limit = self.state.config.max_commands_per_second;
            let error = ProtocolError::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {limit} commands per second on this socket; retry in {:.1} s",
                    wait.as_secs_f64()
                ),
            )
            .with_retry_after(wait.max(std::time::Duration::from_millis(1)));
            return self.reply_error(Some(id), &error).await;
        }
        // Rights may have shrunk since the last look (a revoked key must authorize nothing).
        self.check_access().await?;
        match command.kind {
            CommandKind::Auth { token } => self.auth(id, &token).await,
            CommandKind::Subscribe(subscribe) => self.subscribe(id, subscribe).await,
            CommandKind::Unsubscribe { name } => self.unsubscribe(id, &name).await,
            CommandKind::Call(call) => self.call(id, call).await,
            CommandKind::Ping => {
                let pong =
                    Frame::Pong { id, pong: Pong { timestamp: clock::format_ms(clock::now_ms()) } };
                self.link.feed(Utf8Bytes::from(pong.to_json())).await
            }
            CommandKind::WatchServer => self.watch_server(id).await,
            CommandKind::UnwatchServer => self.unwatch_server(id).await,
        }
    }

    /// `watchServer`: replies with the latest figures, then pushes each new sample.
    async fn watch_server(&mut self, id: u64) -> Result<(), End> {
        if let Err(error) = self.state.access.authorize_server_stats(&self.principal) {
            return self.reply_error(Some(id), &error).await;
        }
        if self.server_stats.is_some() {
            let error = ProtocolError::new(
                ErrorCode::AlreadySubscribed,
                "this socket already watches the server; one watch per socket",
            );
            return self.reply_error(Some(id), &error).await;
        }
        let mut feed = self.state.server_stats.subscribe();
        // Marked seen, so that the next push is the next sample, not this one again.
        let latest = feed.borrow_and_update().clone();
        self.server_stats = Some(feed);
        let stats = match latest {
            Some(stats) => (*stats).clone(),
            // Nothing published yet (the sampler publishes only while someone watches, from
            // its next tick): the figures as they are now, without rates.
            None => crate::sampler::now(&self.state).await,
        };
        let reply = Frame::ServerStats { id: Some(id), stats };
        self.link.feed(Utf8Bytes::from(reply.to_json())).await
    }

    /// `unwatchServer`: no `serverStats` push follows the reply.
    async fn unwatch_server(&mut self, id: u64) -> Result<(), End> {
        if self.server_stats.take().is_none() {
            let error = ProtocolError::new(
                ErrorCode::NotSubscribed,
                "this socket does not watch the server; send watchServer first",
            );
            return self.reply_error(Some(id), &error).await;
        }
        let reply = Frame::ServerUnwatched { id: Some(id), code: None, reason: None };
        self.link.feed(Utf8Bytes::from(reply.to_json())).await
    }

    /// Pushes the sampler's new figures, if the principal may still see them; one that lost
    /// the right (an `auth` as someone else, a revoked key) gets a `serverUnwatched` push and
    /// no more.
    pub(super) async fn push_server_stats(&mut self) -> Result<(), End> {
        // A socket that only watches the server looks at its rights here, as others do on
        // their commands and wakes: a revoked key must see nothing more.
        self.check_access().await?;
        let Some(feed) = self.server_stats.as_mut() else { return Ok(()) };
        let latest = feed.borrow_and_update().clone();
        if !self.state.access.may_watch_server(&self.principal) {
            self.server_stats = None;
            let code = if self.principal.credentialed {
                ErrorCode::Forbidden
            } else {
                ErrorCode::Unauthenticated
            };
            let push = Frame::ServerUnwatched {
                id: None,
                code: Some(code.as_str().to_owned()),
                reason: Some(format!(
                    "{} may no longer watch the server's figures (that needs admin on every counter)",
                    self.principal.id
                )),
            };
            return self.link.feed(Utf8Bytes::from(push.to_json())).await;
        }
        let Some(stats) = latest else { return Ok(()) };
        let push = Frame::ServerStats { id: None, stats: (*stats).clone() };
        self.link.feed(Utf8Bytes::from(push.to_json())).await
    }

    /// `auth`: acts as the token's principal from now on, with no gap in any subscription; a
    /// bad token is refused and the socket keeps its principal. Subscriptions the new
    /// principal may not read end with an `unsubscribed` push.
    async fn auth(&mut self, id: u64, token: &str) -> Result<(), End> {
        let principal = match self.state.access.authenticate_token(token) {
            Ok(principal) => principal,
            Err(error) => return self.reply_error(Some(id), &error).await,
        };
        self.principal = Arc::new(principal);
        self.renewed = true;
        let authenticated = SocketAuthenticated {
            principal: self.principal.id.to_string(),
            expires_at: crate::ws::expires_at(&self.principal),
        };
        let reply = Frame::Authenticated { id, authenticated };
        self.link.feed(Utf8Bytes::from(reply.to_json())).await?;
        self.recheck_subscriptions(None).await
    }

    /// `subscribe`: checks the limits and the grant, takes the counter's state and a
    /// subscription in one step, and replies with a snapshot, or `resumed` followed by the
    /// replay. Live updates follow, after the reply.
    async fn subscribe(
        &mut self,
        id: u64,
        subscribe: tally_proto::socket::Subscribe,
    ) -> Result<(), End> {
        let name = subscribe.name;
        if self.subscriptions.contains(&name) {
            let error = ProtocolError::new(
                ErrorCode::AlreadySubscribed,
                format!(
                    "this socket already subscribes to counter {name}; unsubscribe first to change how"
                ),
            );
            return self.reply_error(Some(id), &error).await;
        }
        let limit = self.state.config.max_subscriptions;
        if self.subscriptions.len() >= limit {
            let error = ProtocolError::new(
                ErrorCode::TooManySubscriptions,
                format!(
                    "this socket already holds {limit} subscriptions, the most allowed; unsubscribe from one first"
                ),
            );
            return self.reply_error(Some(id), &error).await;
        }
        let permissions =
            match self.state.access.authorize(&self.principal, &name, Action::Read, None) {
                Ok(permissions) => permissions,
                Err(error) => return self.reply_error(Some(id), &error).await,
            };
        let limit = self.state.config.max_watchers_per_counter;
        if self.state.registry.watchers(&name) >= limit {
            // A load refusal: the retry is spread like a reconnect after shutdown.
            let wait = reconnect_delay(self.state.config.reconnect_spread).max(1);
            let error = ProtocolError::new(
                ErrorCode::TooManyWatchers,
                format!("counter {name} already has {limit} watchers, the most allowed; try again in {wait} ms"),
            )
            .with_retry_after(std::time::Duration::from_millis(wait));
            return self.reply_error(Some(id), &error).await;
        }
        let user = User::of(&self.principal, self.socket_id);
        let (counter, mut subscription) = match self.state.registry.watch(&name, user).await {
            Ok(watched) => watched,
            Err(error) => return self.reply_error(Some(id), &error.to_protocol()).await,
        };
        self.state.metrics.subscriptions.inc();
        let key = self.subscriptions.next_key();
        subscription.attach(&self.wakes, key, subscribe.presence);
        let presence = subscribe.presence.then(|| subscription.topic().presence_announced());
        let watched = Watched {
            name: Arc::new(name),
            subscription,
            seen: counter.version,
            types: subscribe.types.as_deref().map_or(Types::ALL, Types::only),
            admin: permissions.allows(Action::Admin),
            presence,
            rate: subscribe.max_rate.map(Conflation::new),
        };
        let key = self.subscriptions.insert(watched);
        // The counter's epoch: the database's, or its own once it was deleted.
        let ours = counter.epoch(self.state.store.epoch());
        let start_from = Start::asked(subscribe.since, subscribe.epoch.as_ref(), &ours);
        self.start(id, key, counter, start_from).await
    }

    /// Sends subscription `key`'s first messages: the snapshot, or for a resume `resumed` and
    /// the missed updates; then its presence, if it asked for it.
    async fn start(
        &mut self,
        id: u64,
        key: u32,
        counter: CounterState,
        start_from: Start,
    ) -> Result<(), End> {
        let resync = match start_from {
            Start::Snapshot => false,
            Start::OtherEpoch => true,
            Start::After(since) if since > counter.version => true,
            Start::After(since) => match self.replay(id, key, counter, since).await? {
                Replayed::Sent => false,
                Replayed::Gone => true,
                Replayed::Failed => return Ok(()),
            },
        };
        let Some(watched) = self.subscriptions.get_mut(key) else { return Ok(()) };
        if resync || start_from == Start::Snapshot {
            let name = Arc::clone(&watched.name);
            let can = self.principal.permissions(&name).actions();
            let snapshot = counter.snapshot(&name, resync, can, self.state.store.epoch());
            let reply = Frame::Snapshot { id: Some(id), name: name.to_string(), snapshot };
            self.link.feed(Utf8Bytes::from(reply.to_json())).await?;
        }
        let Some(watched) = self.subscriptions.get_mut(key) else { return Ok(()) };
        // The counts as they are now, then each announced change: a fresh subscriber need not
        // wait for the next tick to know who else is there.
        if let Some(seen) = &mut watched.presence {
            let presence = watched.subscription.topic().presence_now();
            seen.presence = presence;
            let push = Frame::Presence { name: watched.name.to_string(), presence };
            self.link.feed(Utf8Bytes::from(push.to_json())).await?;
        }
        Ok(())
    }

    /// Replies `resumed` to command `id` and delivers subscription `key` the updates after
    /// `since` up to the counter's version, from history a page at a time.
    async fn replay(
        &mut self,
        id: u64,
        key: u32,
        counter: CounterState,
        since: u64,
    ) -> Result<Replayed, End> {
        let Some(watched) = self.subscriptions.get_mut(key) else { return Ok(Replayed::Failed) };
        // Conflated without filters, only the latest update is sent: that needs no place.
        let latest_only = watched.wants_latest_only();
        // Bounded (`replay::ReplayLimits`): waits for a place, then gets a `resync` snapshot,
        // as when history no longer reaches back. The socket's commands wait behind this one,
        // so all its resumes together wait at most `--send-timeout`. Nothing to replay takes
        // no place.
        let permit = if latest_only {
            None
        } else {
            let started = tokio::time::Instant::now();
            let wait = self.replay_wait_left;
            let permit =
                self.state.replays.for_resume(since, counter.version, self.peer, wait).await;
            self.replay_wait_left = wait.saturating_sub(started.elapsed());
            match permit {
                Ok(permit) => permit,
                Err(_) => return Ok(Replayed::Gone),
            }
        };
        let Some(watched) = self.subscriptions.get_mut(key) else { return Ok(Replayed::Failed) };
        let name = Arc::clone(&watched.name);
        let origin = Origin::of_state(&name, &counter);
        // Conflated without filters, only the latest update would be sent: start there.
        let mut cursor = if watched.wants_latest_only() {
            since.max(counter.version.saturating_sub(1))
        } else {
            since
        };
        let mut first_page = true;
        loop {
            let up_to = counter.version.min(cursor + replay::PAGE);
            let page = replay::page(&self.state, origin.as_ref(), cursor, up_to).await;
            let updates = match page {
                Ok(Some(updates)) => updates,
                Ok(None) if first_page => return Ok(Replayed::Gone),
                // Trimmed during the replay: what was sent is good; start over from now.
                Ok(None) => {
                    self.resync(key).await?;
                    return Ok(Replayed::Sent);
                }
                Err(error) if first_page => {
                    self.forget(key);
                    self.reply_error(Some(id), &error).await?;
                    return Ok(Replayed::Failed);
                }
                Err(error) => {
                    self.end_subscription(key, &error).await?;
                    return Ok(Replayed::Failed);
                }
            };
            let Some(watched) = self.subscriptions.get_mut(key) else {
                return Ok(Replayed::Failed);
            };
            if first_page {
                let epoch = Some(counter.epoch(self.state.store.epoch()));
                let resumed = Resumed { since, version: counter.version, epoch };
                let reply = Frame::Resumed { id, name: name.to_string(), resumed };
                self.link.feed(Utf8Bytes::from(reply.to_json())).await?;
                watched.seen = cursor;
                first_page = false;
            }
            let now = Instant::now();
            for update in updates {
                let update = Arc::new(update);
                let permit = permit.as_ref();
                deliver(&mut self.link, &mut self.schedule, key, watched, update, now, permit)
                    .await?;
            }
            cursor = up_to;
            if cursor >= counter.version {
                return Ok(Replayed::Sent);
            }
        }
    }

    /// `unsubscribe`: nothing of the counter follows the reply.
    async fn unsubscribe(&mut self, id: u64, name: &CounterName) -> Result<(), End> {
        let Some(key) = self.subscriptions.key_of(name) else {
            let error = ProtocolError::new(
                ErrorCode::NotSubscribed,
                format!("this socket does not subscribe to counter {name}"),
            );
            return self.reply_error(Some(id), &error).await;
        };
        self.forget(key);
        let reply =
            Frame::Unsubscribed { id: Some(id), name: name.to_string(), code: None, reason: None };
        self.link.feed(Utf8Bytes::from(reply.to_json())).await
    }

    /// `call`: validated as the RPC validates its body, then run beside the socket's other
    /// work; answered when done (`on_call_done`).
    async fn call(&mut self, id: u64, call: Call) -> Result<(), End> {
        let limit = self.state.config.max_in_flight;
        if self.calls.len() >= limit {
            let error = ProtocolError::new(
                ErrorCode::TooManyInFlight,
                format!(
                    "this socket already has {limit} calls waiting for their answers, the most allowed; send more as answers arrive"
                ),
            );
            self.state.metrics.socket_call(error.code.as_str());
            return self.reply_error(Some(id), &error).await;
        }
        let Call { procedure, body, idempotency_key } = call;
        let body = serde_json::Value::Object(body).to_string();
        let request = match Request::parse(procedure, body.as_bytes()) {
            Ok(request) => request,
            Err(error) => {
                self.state.metrics.socket_call(error.code.as_str());
                return self.reply_error(Some(id), &error).await;
            }
        };
        let state = self.state.clone();
        let principal = Arc::clone(&self.principal);
        self.calls.push(Box::pin(async move {
            let action = procedure.action();
            let answer =
                counter_call(&state, &principal, action, request, idempotency_key.as_ref()).await;
            (id, answer)
        }));
        Ok(())
    }

    /// A call is done: its reply.
    pub(super) async fn on_call_done(
        &mut self,
        id: u64,
        answer: Result<axum::body::Bytes, ProtocolError>,
    ) -> Result<(), End> {
        match answer {
            Ok(answer) => {
                self.state.metrics.socket_call("ok");
                self.link.feed(result_frame(id, &answer)).await
            }
            Err(error) => {
                self.state.metrics.socket_call(error.code.as_str());
                if !error.code.is_client_fault()
                    && let Some(suppressed) = crate::log_limit::storage()
                        .allow(("socket call failed", error.code.as_str()))
                {
                    tracing::warn!(code = %error.code, message = %error.message, suppressed, "socket call failed");
                }
                self.reply_error(Some(id), &error).await
            }
        }
    }
}

/// How a resume's replay went.
enum Replayed {
    /// `resumed` and the updates were sent (or the subscription started over).
    Sent,
    /// History no longer reaches back: nothing was sent; reply with a resync snapshot.
    Gone,
    /// Storage failed: the subscription was ended and the client told.
    Failed,
}
