//! One token bucket, Firecracker's meaning: `size` tokens that refill
//! linearly over `refill_time_ms`, plus `one_time_burst` tokens spent first
//! and never refilled. Time comes in as a monotonic ns value.
//!
//! Refill is exact: the bucket keeps the remainder of `elapsed × size /
//! refill_time` between calls, so no tokens are lost to rounding however
//! often it is asked.
//!
//! A request may go when the bucket (burst included) holds enough tokens
//! for it, **or when the bucket is full**: a request larger than `size`
//! could never go otherwise. It then leaves the bucket in debt (a negative
//! budget), which the refill pays before anything else may go, so the rate
//! still holds over time.

use crate::config::TokenBucketSpec;

const NS_PER_MS: u64 = 1_000_000;

/// A token bucket (see the module comment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    size: u64,
    refill_time_ms: u64,
    refill_ns: u64,
    initial_burst: u64,
    /// What is left of the one-time burst.
    burst: u64,
    /// Refilling tokens held now; negative: debt left by a large request.
    budget: i128,
    /// Refill remainder, in token·ns (< `refill_ns`).
    frac: u128,
    last_ns: u64,
}

impl TokenBucket {
    /// A full bucket as of `now_ns`, with its whole one-time burst. `None`
    /// when `size` or `refill_time_ms` is 0: Firecracker's way of saying
    /// "no limit".
    pub fn new(spec: &TokenBucketSpec, now_ns: u64) -> Option<Self> {
        if spec.size == 0 || spec.refill_time_ms == 0 {
            return None;
        }
        Some(TokenBucket {
            size: spec.size,
            refill_time_ms: spec.refill_time_ms,
            refill_ns: spec.refill_time_ms.saturating_mul(NS_PER_MS),
            initial_burst: spec.one_time_burst,
            burst: spec.one_time_burst,
            budget: i128::from(spec.size),
            frac: 0,
            last_ns: now_ns,
        })
    }

    /// The spec it was built from.
    pub fn spec(&self) -> TokenBucketSpec {
        TokenBucketSpec {
            size: self.size,
            one_time_burst: self.initial_burst,
            refill_time_ms: self.refill_time_ms,
        }
    }

    /// Refilling tokens held as of the last refill (negative: debt).
    pub fn budget(&self) -> i128 {
        self.budget
    }

    /// What is left of the one-time burst.
    pub fn one_time_burst_left(&self) -> u64 {
        self.burst
    }

    /// Adds the tokens that have come back since the last refill.
    pub fn refill(&mut self, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        let room = (i128::from(self.size) - self.budget).max(0) as u128;
        let num = u128::from(elapsed)
            .saturating_mul(u128::from(self.size))
            .saturating_add(self.frac);
        let add = num / u128::from(self.refill_ns);
        if add >= room {
            self.budget = i128::from(self.size);
            self.frac = 0;
        } else {
            // add < room <= size + debt, which fits in an i128.
            self.budget += add as i128;
            self.frac = num % u128::from(self.refill_ns);
        }
    }

    fn is_full(&self) -> bool {
        self.budget >= i128::from(self.size)
    }

    /// Whether `n` tokens may go now (as of the last refill).
    pub fn can_take(&self, n: u64) -> bool {
        i128::from(self.burst) + self.budget >= i128::from(n) || self.is_full()
    }

    /// Takes `n` tokens, the one-time burst first. Call only after
    /// [`TokenBucket::can_take`] said yes; a request larger than what is
    /// held leaves the bucket in debt.
    pub fn take(&mut self, n: u64) {
        let from_burst = n.min(self.burst);
        self.burst -= from_burst;
        self.budget -= i128::from(n - from_burst);
    }

    /// Gives back `n` tokens taken for a request that did not go after all
    /// (to the refilling budget, at most up to `size`).
    pub fn give_back(&mut self, n: u64) {
        self.budget = (self.budget + i128::from(n)).min(i128::from(self.size));
    }

    /// How long from the last refill until `n` tokens may go: 0 if they
    /// may go now. Exact: after this many ns, [`TokenBucket::can_take`]
    /// says yes (and one ns earlier, no).
    pub fn wait_ns(&self, n: u64) -> u64 {
        if self.can_take(n) {
            return 0;
        }
        // The budget it needs: enough for n after the burst, or full.
        let target = (i128::from(n) - i128::from(self.burst)).min(i128::from(self.size));
        let missing = (target - self.budget) as u128; // > 0: can_take said no
        let num = missing
            .checked_mul(u128::from(self.refill_ns))
            .map(|m| m.saturating_sub(self.frac));
        match num {
            Some(num) => u64::try_from(num.div_ceil(u128::from(self.size))).unwrap_or(u64::MAX),
            None => u64::MAX,
        }
    }
}
