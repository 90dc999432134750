//! Per-token rate limits: one token bucket per token subject (`sub`), counted in events, with
//! separate quotas for user tokens and service tokens (scope `topk:ingest`). `governor`'s GCRA
//! is the bucket; the caller is told how long to wait (`Retry-After`).
//!
//! Keyed by subject rather than by the token's bytes: a client that fetches a new token keeps
//! its bucket. With auth off every request shares the service quota under one key.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::config::IngestConfig;

/// Which quota a caller draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaClass {
    User,
    Service,
}

impl QuotaClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Service => "service",
        }
    }
}

/// The buckets of every caller seen lately.
#[derive(Debug)]
pub struct RateLimits {
    user: Option<DefaultKeyedRateLimiter<String>>,
    service: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

fn limiter(per_second: u32, burst: u32) -> Option<DefaultKeyedRateLimiter<String>> {
    let per_second = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(burst).unwrap_or(per_second);
    Some(DefaultKeyedRateLimiter::keyed(
        Quota::per_second(per_second).allow_burst(burst),
    ))
}

impl RateLimits {
    pub fn from_config(config: &IngestConfig) -> Self {
        Self {
            user: limiter(config.user_events_per_second, config.user_burst_events),
            service: limiter(
                config.service_events_per_second,
                config.service_burst_events,
            ),
            clock: DefaultClock::default(),
        }
    }

    /// Takes `events` from `subject`'s bucket, or says how long until they would fit.
    pub fn check(&self, class: QuotaClass, subject: &str, events: u32) -> Result<(), Duration> {
        let limiter = match class {
            QuotaClass::User => &self.user,
            QuotaClass::Service => &self.service,
        };
        let (Some(limiter), Some(events)) = (limiter, NonZeroU32::new(events)) else {
            return Ok(());
        };
        match limiter.check_key_n(&subject.to_owned(), events) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(self.clock.now())),
            // More than the bucket holds: `IngestConfig::validate` keeps the burst at least a
            // full batch, so only a changed limit gets here; ask for a full refill.
            Err(_) => Err(Duration::from_secs(1)),
        }
    }

    /// Forgets buckets that are full again (their callers were quiet long enough), so memory
    /// follows the active callers, not every caller ever seen.
    pub fn forget_idle(&self) {
        for limiter in [&self.user, &self.service].into_iter().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_second: u32, burst: u32) -> RateLimits {
        let mut config = IngestConfig::with_kafka("127.0.0.1:1", "plays");
        config.user_events_per_second = per_second;
        config.user_burst_events = burst;
        config.service_events_per_second = 0;
        RateLimits::from_config(&config)
    }

    #[test]
    fn a_bucket_per_subject_in_events() {
        let limits = limits(10, 20);
        assert!(limits.check(QuotaClass::User, "alice", 15).is_ok());
        let wait = limits.check(QuotaClass::User, "alice", 10).unwrap_err();
        // 5 left, 10 wanted: 5 more at 10/s.
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        // Another subject has its own bucket.
        assert!(limits.check(QuotaClass::User, "bob", 20).is_ok());
        // The service quota is off.
        assert!(limits.check(QuotaClass::Service, "svc", 1_000_000).is_ok());
    }

    #[test]
    fn more_than_the_bucket_holds_waits_a_second() {
        let limits = limits(10, 20);
        assert_eq!(
            limits.check(QuotaClass::User, "alice", 21),
            Err(Duration::from_secs(1))
        );
    }
}
