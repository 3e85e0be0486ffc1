//! The request checks, in one place for HTTP and WebSocket alike: the `Host`, the `Origin`,
//! the credentials (a JWT or an API key) that make a `Principal`, the grants that say what
//! it may do to a counter, and its write rate.
//!
//! Handlers never decide access themselves: they ask `Access`, and every refusal it makes is
//! logged here, once, at info level, with the principal and the reason (never the token).

pub mod jwt;
mod keys;
mod list;
mod rate;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, header};
use tally_proto::{Action, CounterName, ErrorCode, Grant, Op, Permissions, ProtocolError};

pub use jwt::{JwtConfig, JwtKeyError, MIN_SECRET_BYTES};
pub(crate) use keys::KeyRing;
pub use keys::new_key;
pub(crate) use list::after as name_after;
pub(crate) use rate::RateKey;
use rate::WriteLimiter;

use crate::store::KeyRecord;

/// How the server decides who may do what. `Default` is open: no auth configured.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Keys and claim rules for JWTs; none configured means JWTs are refused.
    pub jwt: JwtConfig,
    /// What anonymous requests may do once auth is on (`--anonymous`); `Some` (even empty)
    /// turns auth on by itself.
    pub anonymous: Option<Vec<Grant>>,
    /// Host names (besides loopback names and IP addresses) this server answers to.
    pub public_hosts: Vec<String>,
    /// Writes per second per principal (0: no limit), and the burst above it.
    pub write_rate: u32,
    /// The most writes one principal may make at once before the rate applies.
    pub write_burst: u32,
    /// How long a WebSocket that anonymous may not read waits for an `auth` message.
    pub auth_timeout: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt: JwtConfig::default(),
            anonymous: None,
            public_hosts: Vec::new(),
            write_rate: 0,
            write_burst: 0,
            auth_timeout: Duration::from_secs(10),
        }
    }
}

/// What a server with these settings and keys will let clients do, decided as the server
/// decides it: whether it is open (no auth configured), and a description for people (no
/// secrets). The `tally` binary uses it for protected mode and its start line.
pub fn summarize(config: &AuthConfig, keys: &[KeyRecord]) -> (bool, String) {
    let access = Access::new(config, &[], keys);
    (access.is_open(), access.describe())
}

/// Who a request acts as, and what it was granted.
#[derive(Debug, Clone)]
pub(crate) struct Principal {
    /// What history's `by` records: the subject, `key:NAME` or `anonymous`.
    pub(crate) id: Arc<str>,
    /// The token's subject, which `{sub}` in a grant stands for.
    subject: Option<String>,
    /// What the credentials grant (nothing for anonymous)...
    grants: Arc<[Grant]>,
    /// ...and what `--anonymous` grants everyone: signing in never takes a right away. Kept
    /// apart, so that no request copies the two into one list.
    anonymous: Arc<[Grant]>,
    /// Made while the server was open: everything is allowed until auth turns on (sockets
    /// check again when it does).
    everything: bool,
    /// The API key's public id, so a socket can tell when its key is revoked.
    key_id: Option<String>,
    /// When the token expires, in seconds since the epoch; `None` for keys and anonymous.
    pub(crate) expires_at: Option<u64>,
    /// Whether the request carried credentials at all.
    pub(crate) credentialed: bool,
    rate_key: RateKey,
}

impl Principal {
    /// What this principal may do to counter `name`.
    pub(crate) fn permissions(&self, name: &CounterName) -> Permissions {
        if self.everything {
            return Permissions::everything();
        }
        let grants = self.grants.iter().chain(self.anonymous.iter());
        Permissions::of(grants, name.as_str(), self.subject.as_deref())
    }

    /// Whether this principal holds `admin` on every counter (the key RPCs need it).
    fn is_global_admin(&self) -> bool {
        self.everything
            || self.grants.iter().chain(self.anonymous.iter()).any(|grant| {
                grant.pattern.is_everything()
                    && grant.allowed.iter().any(|allowed| allowed.action == Action::Admin)
            })
    }

    /// How long until the token expires (with `leeway`), if it does; at most a year, which
    /// neither overflows an `Instant` nor leaves the timer's range.
    pub(crate) fn expires_in(&self, leeway: Duration) -> Option<Duration> {
        const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
        let expires_at = Duration::from_secs(self.expires_at?).saturating_add(leeway);
        Some(expires_at.saturating_sub(since_epoch()).min(YEAR))
    }
}

/// The access policy of one server.
pub(crate) struct Access {
    /// Set once any auth is configured, and never unset while the server runs: revoking the
    /// last key must not open the server.
    auth_on: AtomicBool,
    jwt: jwt::Verifier,
    anonymous: Arc<[Grant]>,
    pub(crate) keys: KeyRing,
    /// Bumped whenever rights held by open sockets may have shrunk (auth turned on, a key
    /// revoked): each socket compares it before it sends an update and at each ping tick, and
    /// checks its principal again when it moved. An atomic, not a channel each socket waits
    /// on, which would widen every idle socket.
    generation: AtomicU64,
    /// `anonymous`, shared by every anonymous principal.
    anonymous_id: Arc<str>,
    /// No grants, shared by every anonymous principal (whose rights are `anonymous`'s).
    no_grants: Arc<[Grant]>,
    /// The anonymous principal of sockets (which never write, so need no address), shared by
    /// all of them while it is current: rebuilt when auth turns on.
    anonymous_watcher: std::sync::RwLock<Arc<Principal>>,
    limiter: Option<WriteLimiter>,
    public_hosts: Vec<String>,
    allowed_origins: Vec<String>,
    pub(crate) auth_timeout: Duration,
}

impl Access {
    pub(crate) fn new(config: &AuthConfig, allowed_origins: &[String], keys: &[KeyRecord]) -> Self {
        let keys = KeyRing::new(keys);
        let auth_on = config.jwt.is_configured() || config.anonymous.is_some() || !keys.is_empty();
        let anonymous: Arc<[Grant]> = config.anonymous.clone().unwrap_or_default().into();
        let anonymous_id: Arc<str> = Arc::from("anonymous");
        let no_grants: Arc<[Grant]> = Arc::from([]);
        Self {
            auth_on: AtomicBool::new(auth_on),
            jwt: config.jwt.verifier(),
            anonymous: Arc::clone(&anonymous),
            keys,
            generation: AtomicU64::new(0),
            anonymous_id: Arc::clone(&anonymous_id),
            no_grants: Arc::clone(&no_grants),
            anonymous_watcher: std::sync::RwLock::new(Arc::new(Principal {
                id: anonymous_id,
                subject: None,
                grants: Arc::clone(&no_grants),
                anonymous: Arc::clone(&anonymous),
                everything: !auth_on,
                key_id: None,
                expires_at: None,
                credentialed: false,
                rate_key: RateKey::address(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            })),
            limiter: WriteLimiter::new(config.write_rate, config.write_burst),
            public_hosts: config
                .public_hosts
                .iter()
                .map(|host| host.to_ascii_lowercase())
                .collect(),
            allowed_origins: allowed_origins.to_vec(),
            auth_timeout: config.auth_timeout,
        }
    }

    /// Whether no auth is configured, so everyone may do everything.
    pub(crate) fn is_open(&self) -> bool {
        !self.auth_on.load(Ordering::Acquire)
    }

    /// Turns auth on for good (the first API key was made).
    pub(crate) fn turn_auth_on(&self) {
        if !self.auth_on.swap(true, Ordering::AcqRel) {
            let mut watcher =
                self.anonymous_watcher.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::make_mut(&mut watcher).everything = false;
            drop(watcher);
            self.announce_change();
        }
    }

    /// The anonymous principal of a socket.
    pub(crate) fn anonymous_watcher(&self) -> Arc<Principal> {
        // Only `turn_auth_on` writes, once; a poisoned lock still holds a whole principal.
        Arc::clone(
            &self.anonymous_watcher.read().unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Revokes the key with public id `id` at once, for requests and open sockets alike.
    pub(crate) fn revoke_key(&self, id: &str) {
        self.keys.revoke(id);
        self.announce_change();
    }

    /// Takes in the keys as storage holds them now, after another node created or revoked
    /// some (a cluster): new keys are added, revocations take effect at once, as they do on the
    /// node that made them.
    pub(crate) fn sync_keys(&self, records: &[KeyRecord]) {
        for record in records {
            if !self.keys.contains(&record.id) {
                self.keys.insert(record);
            } else if record.revoked_at_ms.is_some() && !self.keys.is_revoked(&record.id) {
                self.revoke_key(&record.id);
            }
        }
        if !records.is_empty() {
            self.turn_auth_on();
        }
    }

    fn announce_change(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Moves whenever rights may have shrunk: see [`Access::recheck`].
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Brings a principal made earlier up to date: the rights of open mode end once auth is
    /// on, and a revoked key is refused.
    pub(crate) fn recheck(&self, principal: &mut Principal) -> Result<(), ProtocolError> {
        if principal.everything && !self.is_open() {
            principal.everything = false;
        }
        if let Some(id) = &principal.key_id
            && self.keys.is_revoked(id)
        {
            let error = ProtocolError::new(
                ErrorCode::Unauthenticated,
                format!("the API key of {} was revoked", principal.id),
            );
            return Err(self.refuse(principal, error));
        }
        Ok(())
    }

    /// The clock skew allowed on token times.
    pub(crate) fn leeway(&self) -> Duration {
        self.jwt.leeway()
    }

    /// What is configured, for the start line (no secrets).
    pub(crate) fn describe(&self) -> String {
        if self.is_open() {
            return "open: no auth configured, every client may do everything".into();
        }
        let mut parts = Vec::new();
        if self.jwt.is_configured() {
            parts.push(format!("JWTs ({})", self.jwt.algorithms().join(", ")));
        }
        if !self.keys.is_empty() {
            parts.push("API keys".into());
        }
        let anonymous: Vec<String> = self.anonymous.iter().map(ToString::to_string).collect();
        parts.push(if anonymous.is_empty() {
            "anonymous may do nothing".into()
        } else {
            format!("anonymous grants: {}", anonymous.join(" "))
        });
        if let Some(limiter) = &self.limiter {
            parts.push(format!("write rate {}", limiter.describe()));
        }
        format!("auth on: {}", parts.join("; "))
    }

    /// Refuses a request whose `Host` this server does not answer to: only loopback names, IP
    /// address literals and `--public-host` names are allowed, which closes DNS rebinding (an
    /// attacker's name resolving to this machine arrives as that name).
    pub(crate) fn check_host(&self, headers: &HeaderMap) -> Result<(), ProtocolError> {
        let host = headers.get(header::HOST).and_then(|host| host.to_str().ok());
        let Some(host) = host else {
            return Err(ProtocolError::new(
                ErrorCode::HostNotAllowed,
                "the request has no Host header (or one that is not text); send the name or address of this server",
            ));
        };
        let name = host_name(host);
        if is_loopback_name(name)
            || name.parse::<IpAddr>().is_ok()
            || self.public_hosts.iter().any(|public| public.eq_ignore_ascii_case(name))
        {
            return Ok(());
        }
        tracing::info!(host = ?host, "request refused: host not allowed");
        Err(ProtocolError::new(
            ErrorCode::HostNotAllowed,
            format!(
                "this server does not answer to host {name:?}; allowed: localhost, IP addresses{} (start the server with --public-host NAME to add one)",
                if self.public_hosts.is_empty() {
                    String::new()
                } else {
                    format!(", {}", self.public_hosts.join(", "))
                }
            ),
        ))
    }

    /// Refuses a browser request from a web origin other than the server's own and the allowed
    /// ones. Browsers send `Origin` on every cross-origin request and on every WebSocket upgrade;
    /// programs usually send none, and are not refused for that.
    pub(crate) fn check_origin(&self, headers: &HeaderMap) -> Result<(), ProtocolError> {
        let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
        let origin = origin.to_str().unwrap_or_default();
        let own =
            headers.get(header::HOST).and_then(|host| host.to_str().ok()).is_some_and(|host| {
                origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"))
                    == Some(host)
            });
        let allowed = &self.allowed_origins;
        if own || allowed.iter().any(|allowed| allowed == "*" || allowed == origin) {
            return Ok(());
        }
        tracing::info!(origin = ?origin, "request refused: origin not allowed");
        Err(ProtocolError::new(
            ErrorCode::OriginNotAllowed,
            format!(
                "requests from pages at {origin:?} are not allowed; allowed: this server's own pages{}",
                if allowed.is_empty() {
                    " (start the server with --allow-origin ORIGIN to allow others)".to_owned()
                } else {
                    format!(" and {}", allowed.join(", "))
                }
            ),
        ))
    }

    /// The principal of a request: its `Authorization: Bearer` credentials, or anonymous.
    pub(crate) fn authenticate(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Principal, ProtocolError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(self.anonymous(peer));
        };
        let credential = value
            .to_str()
            .ok()
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, credential)| credential.trim())
            .filter(|credential| !credential.is_empty());
        match credential {
            Some(credential) => self.authenticate_token(credential),
            None => Err(self.refuse_credentials(ProtocolError::new(
                ErrorCode::Unauthenticated,
                "the Authorization header must be \"Bearer TOKEN\" with a JWT or an API key",
            ))),
        }
    }

    /// The principal of `credential` (a JWT or an API key).
    /// In open mode a valid credential still names its principal (for `by`), with every right;
    /// a broken one is refused, so a client finds its mistake before auth is turned on.
    pub(crate) fn authenticate_token(&self, credential: &str) -> Result<Principal, ProtocolError> {
        if credential.starts_with(tally_proto::keys::KEY_PREFIX) {
            return match self.keys.check(credential) {
                Ok(key) => {
                    let id: Arc<str> = Arc::from(format!("key:{}", key.name));
                    Ok(Principal {
                        rate_key: RateKey::Principal(Arc::clone(&id)),
                        id,
                        subject: None,
                        grants: key.grants,
                        anonymous: Arc::clone(&self.anonymous),
                        everything: self.is_open(),
                        key_id: Some(key.id),
                        expires_at: None,
                        credentialed: true,
                    })
                }
                Err(reason) => {
                    Err(self
                        .refuse_credentials(ProtocolError::new(ErrorCode::Unauthenticated, reason)))
                }
            };
        }
        if !self.jwt.is_configured() {
            return Err(self.refuse_credentials(ProtocolError::new(
                ErrorCode::Unauthenticated,
                "this server accepts no JWTs (none of --jwt-secret-file, --jwt-public-key or --jwt-jwks is set); send an API key",
            )));
        }
        match self.jwt.verify(credential, since_epoch().as_secs()) {
            Ok(token) => {
                let id: Arc<str> = Arc::from(token.subject.as_str());
                Ok(Principal {
                    rate_key: RateKey::Principal(Arc::clone(&id)),
                    id,
                    subject: Some(token.subject),
                    grants: token.grants.into(),
                    anonymous: Arc::clone(&self.anonymous),
                    everything: self.is_open(),
                    key_id: None,
                    expires_at: Some(token.expires_at),
                    credentialed: true,
                })
            }
            Err(jwt::TokenError::Expired) => Err(self.refuse_credentials(ProtocolError::new(
                ErrorCode::TokenExpired,
                "the token has expired; get a fresh one",
            ))),
            Err(jwt::TokenError::Invalid(reason)) => {
                Err(self.refuse_credentials(ProtocolError::new(ErrorCode::Unauthenticated, reason)))
            }
        }
    }

    /// The anonymous principal of a client at `peer`.
    pub(crate) fn anonymous(&self, peer: Option<IpAddr>) -> Principal {
        Principal {
            id: Arc::clone(&self.anonymous_id),
            subject: None,
            grants: Arc::clone(&self.no_grants),
            anonymous: Arc::clone(&self.anonymous),
            everything: self.is_open(),
            key_id: None,
            expires_at: None,
            credentialed: false,
            rate_key: RateKey::address(peer.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))),
        }
    }

    fn refuse_credentials(&self, error: ProtocolError) -> ProtocolError {
        tracing::info!(principal = "(unauthenticated)", code = %error.code, reason = %error.message, "request refused");
        error
    }

    /// Checks that `principal` may take `action` on counter `name` (and, for a write, that
    /// `op`'s amount is within the grant's cap); answers what it may do there.
    pub(crate) fn authorize(
        &self,
        principal: &Principal,
        name: &CounterName,
        action: Action,
        op: Option<Op>,
    ) -> Result<Permissions, ProtocolError> {
        let permissions = principal.permissions(name);
        let Some(cap) = permissions.cap(action) else {
            let error = if principal.credentialed {
                ProtocolError::new(
                    ErrorCode::Forbidden,
                    format!(
                        "{} may not {action} counter {name} (no grant allows {action} on it)",
                        principal.id
                    ),
                )
            } else {
                ProtocolError::new(
                    ErrorCode::Unauthenticated,
                    format!(
                        "{action} on counter {name} needs credentials: send Authorization: Bearer TOKEN"
                    ),
                )
            };
            return Err(self.refuse(principal, error));
        };
        if let (Some(cap), Some(op)) = (cap, op) {
            let (amount, what) = match op {
                Op::Increment(amount) | Op::Decrement(amount) => (amount.unsigned_abs(), "amount"),
                Op::SetValue(value) => (value.unsigned_abs(), "magnitude"),
                Op::Reset => (0, "amount"),
            };
            if amount > cap {
                let error = ProtocolError::new(
                    ErrorCode::Forbidden,
                    format!(
                        "{} of {amount} on counter {name} is over the cap of {cap} that {}'s grants allow ({what} at most {cap})",
                        op.kind().as_str(),
                        principal.id
                    ),
                );
                return Err(self.refuse(principal, error));
            }
        }
        Ok(permissions)
    }

    /// Checks that `principal` holds `admin` on every counter.
    pub(crate) fn authorize_admin(&self, principal: &Principal) -> Result<(), ProtocolError> {
        self.authorize_everything_admin(principal, "manage API keys", "managing API keys")
    }

    /// Whether `principal` may watch the server's own figures (`watchServer`): they tell
    /// how busy the whole server is, so, like `/metrics`, they need admin on every counter.
    pub(crate) fn authorize_server_stats(
        &self,
        principal: &Principal,
    ) -> Result<(), ProtocolError> {
        self.authorize_everything_admin(
            principal,
            "watch the server's figures",
            "watching the server's figures",
        )
    }

    /// Whether `principal` may still watch the server's figures, asked before each push: a
    /// principal replaced by `auth` may have lost the right. Not logged (the push just stops).
    pub(crate) fn may_watch_server(&self, principal: &Principal) -> bool {
        principal.is_global_admin()
    }

    /// Admin on every counter, or a refusal saying that `what` (`doing`) needs it.
    fn authorize_everything_admin(
        &self,
        principal: &Principal,
        what: &str,
        doing: &str,
    ) -> Result<(), ProtocolError> {
        if principal.is_global_admin() {
            return Ok(());
        }
        let error = if principal.credentialed {
            ProtocolError::new(
                ErrorCode::Forbidden,
                format!(
                    "{} may not {what} (that needs admin on every counter: a grant *=admin)",
                    principal.id
                ),
            )
        } else {
            ProtocolError::new(
                ErrorCode::Unauthenticated,
                format!("{doing} needs credentials with admin on every counter"),
            )
        };
        Err(self.refuse(principal, error))
    }

    /// Takes one write from `principal`'s bucket, or says how long to wait.
    pub(crate) fn check_write_rate(&self, principal: &Principal) -> Result<(), ProtocolError> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        limiter.check(&principal.rate_key).map_err(|wait| {
            let wait = wait.max(Duration::from_millis(1));
            let error = ProtocolError::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {} by {}; retry in {:.1} s",
                    limiter.describe(),
                    principal.id,
                    wait.as_secs_f64()
                ),
            )
            .with_retry_after(wait);
            self.refuse(principal, error)
        })
    }

    /// Forgets idle rate buckets; answers how many are left.
    pub(crate) fn forget_idle_buckets(&self) -> usize {
        self.limiter.as_ref().map_or(0, |limiter| {
            limiter.forget_idle();
            limiter.len()
        })
    }

    fn refuse(&self, principal: &Principal, error: ProtocolError) -> ProtocolError {
        tracing::info!(principal = %principal.id, code = %error.code, reason = %error.message, "request refused");
        error
    }
}

/// The name part of a `Host` header (`[::1]:8094` → `::1`, `localhost:8094` → `localhost`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // `[v6]` or `[v6]:port`, nothing else after the bracket.
        return match rest.split_once(']') {
            Some((address, "")) => address,
            Some((address, port))
                if port
                    .strip_prefix(':')
                    .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit())) =>
            {
                address
            }
            _ => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn is_loopback_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.eq_ignore_ascii_case("localhost")
        || name.len() > ".localhost".len()
            && name[name.len() - ".localhost".len()..].eq_ignore_ascii_case(".localhost")
}

fn since_epoch() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn hosts_loopback_ip_and_public_names_only() {
        let config = AuthConfig {
            public_hosts: vec!["Counters.Example.com".into()],
            ..AuthConfig::default()
        };
        let access = Access::new(&config, &[], &[]);
        for host in [
            "localhost:8094",
            "LOCALHOST",
            "app.localhost:1",
            "127.0.0.1:8094",
            "[::1]:8094",
            "10.0.0.5",
            "counters.example.com:443",
        ] {
            assert!(access.check_host(&headers(&[("host", host)])).is_ok(), "{host}");
        }
        for host in ["evil.example:8094", "localhost.evil.example", "example.com"] {
            let error = access.check_host(&headers(&[("host", host)])).unwrap_err();
            assert_eq!(error.code, ErrorCode::HostNotAllowed, "{host}");
        }
        assert!(access.check_host(&HeaderMap::new()).is_err());
    }

    #[test]
    fn open_until_configured_and_anonymous_grants_then() {
        assert!(Access::new(&AuthConfig::default(), &[], &[]).is_open());
        let config = AuthConfig {
            anonymous: Some(Grant::parse_all(&["public:*=read"]).unwrap()),
            ..AuthConfig::default()
        };
        let access = Access::new(&config, &[], &[]);
        assert!(!access.is_open());
        let anonymous = access.anonymous(None);
        let public = CounterName::parse("public:x").unwrap();
        let private = CounterName::parse("private").unwrap();
        assert!(access.authorize(&anonymous, &public, Action::Read, None).is_ok());
        let refused = access.authorize(&anonymous, &public, Action::Increment, None).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Unauthenticated);
        assert!(access.authorize(&anonymous, &private, Action::Read, None).is_err());
    }
}
