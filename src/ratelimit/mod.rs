//! Per-device rate limiters, Firecracker's meaning (`rate_limiter` of a
//! drive, `rx_rate_limiter`/`tx_rate_limiter` of a network interface): an
//! optional bandwidth bucket (bytes) and an optional ops bucket. Pure: no
//! clocks, timers or fds; time is passed in as a monotonic ns value, so a
//! device thread reads its clock, asks, and arms its own timerfd with
//! [`RateLimiter::wait_ns`] when told to wait.
//!
//! A request is all-or-nothing across both buckets: its bytes and one op
//! go together or not at all. A request larger than a bucket goes when that
//! bucket is full and leaves it in debt (see [`bucket`]): a 1 MiB request
//! behind a 64 KiB bucket is not starved, and the debt, paid by the refill
//! before anything else may go, keeps the rate. This holds as long as the
//! device serves a queue in order: a later, smaller request must not
//! overtake one that is waiting, or it would keep the bucket from ever
//! being full.

pub mod bucket;

pub use bucket::TokenBucket;

use crate::config::{RateLimiterSpec, TokenBucketSpec};

/// What a run-time update does to one bucket (Firecracker's PATCH of a
/// drive's or an interface's rate limiter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketUpdate {
    /// Leave the bucket as it is (the field was absent).
    Keep,
    /// Remove the bucket: no more limiting on it.
    Disable,
    /// A new bucket, full and with its one-time burst; a spec with size or
    /// refill time 0 disables it (as in Firecracker).
    Replace(TokenBucketSpec),
}

impl BucketUpdate {
    /// This update followed by `later`, as one.
    pub fn then(self, later: BucketUpdate) -> BucketUpdate {
        match later {
            BucketUpdate::Keep => self,
            other => other,
        }
    }

    /// The bucket that `old` becomes (a bucket's spec, as
    /// [`RateLimiter::spec`] reports it).
    pub fn applied_to(self, old: Option<TokenBucketSpec>) -> Option<TokenBucketSpec> {
        match self {
            BucketUpdate::Keep => old,
            BucketUpdate::Disable => None,
            BucketUpdate::Replace(spec) => TokenBucket::new(&spec, 0).map(|b| b.spec()),
        }
    }
}

/// The buckets a limiter of `spec` has after [`RateLimiter::update`] with
/// `bandwidth` and `ops`, computed without the limiter: the event loop
/// reports a change at once even when it applies it later.
pub fn patched(
    spec: RateLimiterSpec,
    bandwidth: BucketUpdate,
    ops: BucketUpdate,
) -> RateLimiterSpec {
    RateLimiterSpec {
        bandwidth: bandwidth.applied_to(spec.bandwidth),
        ops: ops.applied_to(spec.ops),
    }
}

/// A rate limiter's figures, for statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimiterStats {
    /// Bytes and ops let through.
    pub bytes: u64,
    pub ops: u64,
    /// How many times it started holding requests back.
    pub throttled_events: u64,
    /// How long it has held requests back in all, in ns (from a first
    /// refusal to the next success; the current wait included).
    pub throttled_ns: u64,
    /// Whether it is holding a request back now.
    pub throttled: bool,
}

/// A bandwidth bucket and an ops bucket, either optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    bytes_done: u64,
    ops_done: u64,
    throttled_events: u64,
    throttled_ns: u64,
    throttled_since: Option<u64>,
}

impl RateLimiter {
    /// The limiter a spec describes, its buckets full as of `now_ns`.
    pub fn new(spec: &RateLimiterSpec, now_ns: u64) -> Self {
        RateLimiter {
            bandwidth: spec.bandwidth.and_then(|b| TokenBucket::new(&b, now_ns)),
            ops: spec.ops.and_then(|b| TokenBucket::new(&b, now_ns)),
            ..RateLimiter::default()
        }
    }

    /// Whether it limits nothing (no bucket): a device may skip it.
    pub fn is_unlimited(&self) -> bool {
        self.bandwidth.is_none() && self.ops.is_none()
    }

    /// The buckets' specs now (for the API's GET).
    pub fn spec(&self) -> RateLimiterSpec {
        RateLimiterSpec {
            bandwidth: self.bandwidth.as_ref().map(TokenBucket::spec),
            ops: self.ops.as_ref().map(TokenBucket::spec),
        }
    }

    /// The bandwidth bucket and the ops bucket.
    pub fn buckets(&self) -> (Option<&TokenBucket>, Option<&TokenBucket>) {
        (self.bandwidth.as_ref(), self.ops.as_ref())
    }

    fn refill(&mut self, now_ns: u64) {
        for b in [&mut self.bandwidth, &mut self.ops].into_iter().flatten() {
            b.refill(now_ns);
        }
    }

    /// Takes `bytes` from the bandwidth bucket and one op from the ops
    /// bucket, both or neither. False: the request must wait (ask
    /// [`RateLimiter::wait_ns`] for how long) and be retried first.
    pub fn try_consume(&mut self, bytes: u64, now_ns: u64) -> bool {
        self.refill(now_ns);
        let fits = self.bandwidth.as_ref().is_none_or(|b| b.can_take(bytes))
            && self.ops.as_ref().is_none_or(|b| b.can_take(1));
        if !fits {
            if self.throttled_since.is_none() {
                self.throttled_since = Some(now_ns);
                self.throttled_events += 1;
            }
            return false;
        }
        if let Some(b) = &mut self.bandwidth {
            b.take(bytes);
        }
        if let Some(b) = &mut self.ops {
            b.take(1);
        }
        if let Some(since) = self.throttled_since.take() {
            self.throttled_ns += now_ns.saturating_sub(since);
        }
        self.bytes_done = self.bytes_done.saturating_add(bytes);
        self.ops_done += 1;
        true
    }

    /// Gives back a request's tokens (it was let through here but could
    /// not go for another reason, e.g. a host-wide share said no).
    pub fn refund(&mut self, bytes: u64) {
        if let Some(b) = &mut self.bandwidth {
            b.give_back(bytes);
        }
        if let Some(b) = &mut self.ops {
            b.give_back(1);
        }
        self.bytes_done = self.bytes_done.saturating_sub(bytes);
        self.ops_done = self.ops_done.saturating_sub(1);
    }

    /// How long from `now_ns` until a request of `bytes` may go: 0 if it
    /// may go now. What a device arms its timerfd with.
    pub fn wait_ns(&mut self, bytes: u64, now_ns: u64) -> u64 {
        self.refill(now_ns);
        let bw = self.bandwidth.as_ref().map_or(0, |b| b.wait_ns(bytes));
        let ops = self.ops.as_ref().map_or(0, |b| b.wait_ns(1));
        bw.max(ops)
    }

    /// Replaces, removes or keeps each bucket (Firecracker's PATCH). The
    /// counters carry on.
    pub fn update(&mut self, bandwidth: BucketUpdate, ops: BucketUpdate, now_ns: u64) {
        for (slot, update) in [(&mut self.bandwidth, bandwidth), (&mut self.ops, ops)] {
            match update {
                BucketUpdate::Keep => {}
                BucketUpdate::Disable => *slot = None,
                BucketUpdate::Replace(spec) => *slot = TokenBucket::new(&spec, now_ns),
            }
        }
    }

    /// The counters as of `now_ns`.
    pub fn stats(&self, now_ns: u64) -> RateLimiterStats {
        let waiting = self
            .throttled_since
            .map_or(0, |since| now_ns.saturating_sub(since));
        RateLimiterStats {
            bytes: self.bytes_done,
            ops: self.ops_done,
            throttled_events: self.throttled_events,
            throttled_ns: self.throttled_ns + waiting,
            throttled: self.throttled_since.is_some(),
        }
    }
}

#[cfg(test)]
mod tests;
