//! Reconnect delays: exponential growth with full jitter.

use std::time::Duration;

/// Delays between reconnect attempts: attempt `n` waits a random time in
/// `0..=min(max, min * factor^n)` ("full jitter"), so that many clients cut off at once do not
/// come back at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The ceiling of the first delay.
    pub min: Duration,
    /// The largest ceiling.
    pub max: Duration,
    /// How much the ceiling grows per failed attempt.
    pub factor: f64,
}

impl Default for Backoff {
    /// The seed's 3 s reconnect interval as the minimum, growing by 2 up to 60 s.
    fn default() -> Self {
        Self { min: Duration::from_secs(3), max: Duration::from_secs(60), factor: 2.0 }
    }
}

impl Backoff {
    /// The ceiling for attempt `attempt` (0 for the first retry).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let growth = self.factor.max(1.0).powi(attempt.min(64) as i32);
        let ceiling = self.min.as_secs_f64() * growth;
        Duration::from_secs_f64(ceiling.min(self.max.as_secs_f64()).max(0.0))
    }

    /// A random delay for attempt `attempt`, within `0..=ceiling(attempt)`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.ceiling(attempt).mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_grow_then_stop_at_max() {
        let backoff = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            factor: 2.0,
        };
        let ceilings: Vec<u128> =
            (0..6).map(|attempt| backoff.ceiling(attempt).as_millis()).collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_millis(1000));
    }

    #[test]
    fn delays_stay_within_the_ceiling() {
        let backoff = Backoff::default();
        for attempt in 0..10 {
            assert!(backoff.delay(attempt) <= backoff.ceiling(attempt));
        }
    }
}
