//! The bucket between the share policy's tick and a VM's device thread:
//! atomics only, no fds, no locks. The tick fills it with the VM's grant;
//! the device thread takes from it before each request.
//!
//! Rules (both lanes, bytes and ops, alike):
//! - a request goes if the lane holds enough, **or if the lane is full**
//!   (nothing taken since the fill, and the grant not zero): a request
//!   larger than a tick's grant would never go otherwise. It then leaves
//!   the lane in debt, which later grants pay first;
//! - a fill sets the lane to the grant plus the debt (negative), or plus
//!   what is left only while the device waits for tokens (a backlogged VM
//!   keeps the remainder its next request did not fit in, at most one
//!   grant); an idle VM's leftovers are dropped: **no banking**;
//! - a refused request marks the bucket *waiting*; the tick wakes the
//!   device of every waiting bucket after filling it. The device marks
//!   itself waiting before it re-checks, and the tick fills before it
//!   reads the mark (both sequentially consistent), so a device that goes
//!   to sleep is never missed.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::SeqCst};

use super::policy::{Grant, Usage, MILLI};

/// One resource's tokens, in milli-tokens.
#[derive(Debug, Default)]
struct Lane {
    unlimited: AtomicBool,
    level: AtomicI64,
    /// The last grant: the level of a full lane.
    full: AtomicI64,
}

impl Lane {
    fn take(&self, n: u64) -> bool {
        if n == 0 || self.unlimited.load(SeqCst) {
            return true;
        }
        let n = i64::try_from(n.saturating_mul(MILLI)).unwrap_or(i64::MAX);
        let full = self.full.load(SeqCst);
        self.level
            .fetch_update(SeqCst, SeqCst, |l| {
                (l >= n || (full > 0 && l >= full)).then(|| l - n)
            })
            .is_ok()
    }

    fn give_back(&self, n: u64) {
        if !self.unlimited.load(SeqCst) {
            let n = i64::try_from(n.saturating_mul(MILLI)).unwrap_or(i64::MAX);
            self.level.fetch_add(n, SeqCst);
        }
    }

    fn fill(&self, grant: Option<u64>, waiting: bool) {
        let Some(grant) = grant else {
            self.unlimited.store(true, SeqCst);
            return;
        };
        // Grants are at most MAX_TICK_BUDGET_MILLI (2^62).
        let grant = i64::try_from(grant).unwrap_or(i64::MAX / 2);
        let full = self.full.swap(grant, SeqCst);
        let _ = self.level.fetch_update(SeqCst, SeqCst, |l| {
            let carried = if l < 0 {
                l
            } else if waiting {
                l.min(full)
            } else {
                0
            };
            Some(carried.saturating_add(grant))
        });
        self.unlimited.store(false, SeqCst);
    }
}

/// Counters of a shared bucket, for statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShareStats {
    /// Bytes and ops taken.
    pub bytes: u64,
    pub ops: u64,
    /// How many times the device started waiting for tokens.
    pub throttle_events: u64,
    /// Time it waited, at tick resolution: a tick for every tick at which
    /// it was found waiting, in ns.
    pub throttled_ns: u64,
}

/// A VM's bucket of the host budget, shared by the tick and a device thread.
#[derive(Debug, Default)]
pub struct SharedBucket {
    bytes: Lane,
    ops: Lane,
    /// Work is waiting for tokens now.
    waiting: AtomicBool,
    /// Work waited at some point since the last tick.
    held: AtomicBool,
    taken_bytes: AtomicU64,
    taken_ops: AtomicU64,
    throttle_events: AtomicU64,
    throttled_ns: AtomicU64,
    /// The totals the last [`SharedBucket::usage`] saw (tick side only).
    seen_bytes: AtomicU64,
    seen_ops: AtomicU64,
}

impl SharedBucket {
    /// An empty bucket: nothing goes until the first fill.
    pub fn new() -> Self {
        SharedBucket::default()
    }

    fn take_both(&self, bytes: u64, ops: u64) -> bool {
        if !self.bytes.take(bytes) {
            return false;
        }
        if !self.ops.take(ops) {
            self.bytes.give_back(bytes);
            return false;
        }
        true
    }

    /// Device side: takes `bytes` and `ops` together, or nothing. False:
    /// the bucket is now marked waiting; the device sleeps until the tick
    /// wakes it, and then retries the same request first.
    pub fn try_take(&self, bytes: u64, ops: u64) -> bool {
        let ok = self.take_both(bytes, ops) || {
            // Mark, then look again: a fill in between is not missed.
            if !self.waiting.swap(true, SeqCst) {
                self.throttle_events.fetch_add(1, SeqCst);
            }
            self.held.store(true, SeqCst);
            self.take_both(bytes, ops)
        };
        if ok {
            self.waiting.store(false, SeqCst);
            self.taken_bytes.fetch_add(bytes, SeqCst);
            self.taken_ops.fetch_add(ops, SeqCst);
        }
        ok
    }

    /// Whether work is waiting for tokens now: the tick wakes the device
    /// after filling.
    pub fn is_waiting(&self) -> bool {
        self.waiting.load(SeqCst)
    }

    /// Tick side (one caller): what was taken since the last call and
    /// whether work was held back meanwhile; counts `tick_ns` of throttled
    /// time if work is waiting now.
    pub fn usage(&self, tick_ns: u64) -> Usage {
        let bytes = self.taken_bytes.load(SeqCst);
        let ops = self.taken_ops.load(SeqCst);
        let held = self.held.swap(false, SeqCst);
        if self.waiting.load(SeqCst) {
            self.throttled_ns.fetch_add(tick_ns, SeqCst);
        }
        Usage {
            bytes: bytes.wrapping_sub(self.seen_bytes.swap(bytes, SeqCst)),
            ops: ops.wrapping_sub(self.seen_ops.swap(ops, SeqCst)),
            held: held || self.waiting.load(SeqCst),
        }
    }

    /// Tick side: sets the grant for the next tick. Returns whether work
    /// is waiting, i.e. whether to wake the device.
    pub fn fill(&self, grant: &Grant) -> bool {
        let waiting = self.waiting.load(SeqCst);
        self.bytes.fill(grant.bytes_milli, waiting);
        self.ops.fill(grant.ops_milli, waiting);
        self.waiting.load(SeqCst)
    }

    /// The counters so far.
    pub fn stats(&self) -> ShareStats {
        ShareStats {
            bytes: self.taken_bytes.load(SeqCst),
            ops: self.taken_ops.load(SeqCst),
            throttle_events: self.throttle_events.load(SeqCst),
            throttled_ns: self.throttled_ns.load(SeqCst),
        }
    }
}
