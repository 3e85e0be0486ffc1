//! The write rate per principal: a token bucket each (`--write-rate` per second, up to
//! `--write-burst` at once), with `governor`'s keyed limiter.
//!
//! Anonymous principals are keyed by client address, an IPv6 address by its /64 (one host
//! usually holds a whole /64). Buckets that have refilled are dropped every few seconds, so the
//! map holds only principals that wrote recently: its size is bounded by the write rate the
//! server takes in, and counted in `/metrics`.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// Whose bucket a write draws from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum RateKey {
    /// A token's subject or an API key (`key:NAME`).
    Principal(Arc<str>),
    /// An anonymous client, by address (IPv6 by /64).
    Address(IpAddr),
}

impl RateKey {
    /// The key of an anonymous client at `ip`.
    pub(crate) fn address(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => RateKey::Address(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => RateKey::Address(IpAddr::V4(v4)),
                None => {
                    let network = u128::from(v6) & !((1_u128 << 64) - 1);
                    RateKey::Address(IpAddr::V6(network.into()))
                }
            },
        }
    }
}

/// The limiter, or nothing when `--write-rate` is 0.
pub(crate) struct WriteLimiter {
    limiter: DefaultKeyedRateLimiter<RateKey>,
    rate: u32,
    burst: u32,
}

impl WriteLimiter {
    /// `rate` writes a second with bursts of `burst` (at least `rate`); `None` for rate 0.
    pub(crate) fn new(rate: u32, burst: u32) -> Option<Self> {
        let per_second = NonZeroU32::new(rate)?;
        let burst = burst.max(rate);
        let quota = Quota::per_second(per_second).allow_burst(NonZeroU32::new(burst)?);
        Some(Self { limiter: DefaultKeyedRateLimiter::keyed(quota), rate, burst })
    }

    /// `Ok` if `key` may write now (taking one token), else how long until it may.
    pub(crate) fn check(&self, key: &RateKey) -> Result<(), Duration> {
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets buckets that are full again.
    pub(crate) fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// How many buckets are held.
    pub(crate) fn len(&self) -> usize {
        self.limiter.len()
    }

    pub(crate) fn describe(&self) -> String {
        format!("{} writes per second (burst {})", self.rate, self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_groups_by_64_and_mapped_v4_is_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(RateKey::address(a), RateKey::address(b));
        assert_ne!(RateKey::address(a), RateKey::address(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(RateKey::address(mapped), RateKey::Address("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn a_burst_then_a_wait_and_keys_apart() {
        let limiter = WriteLimiter::new(1, 3).unwrap();
        let alice = RateKey::Principal(Arc::from("alice"));
        for _ in 0..3 {
            assert!(limiter.check(&alice).is_ok());
        }
        let wait = limiter.check(&alice).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(limiter.check(&RateKey::Principal(Arc::from("bob"))).is_ok());
        assert!(WriteLimiter::new(0, 10).is_none());
    }
}
