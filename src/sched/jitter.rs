//! How late the event loop serves its ticks: each scheduler tick's
//! lateness against the timer's own schedule, in a fixed histogram (no
//! allocation, whatever the run's length), and the ticks it missed
//! outright. With many VMs in one monitor, this is the figure that says
//! whether the loop keeps up.

use std::time::{Duration, Instant};

/// Buckets of lateness: bucket `i` holds [2^(i-1), 2^i) µs, bucket 0 < 1 µs.
const BUCKETS: usize = 24;

#[derive(Debug, Clone)]
pub struct Jitter {
    period: Duration,
    next: Option<Instant>,
    buckets: [u64; BUCKETS],
    max_ns: u64,
    missed: u64,
    ticks: u64,
}

/// What [`Jitter`] measured, in µs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    pub ticks: u64,
    /// Ticks that came and went while the loop was busy elsewhere.
    pub missed: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Jitter {
    pub fn new(period: Duration) -> Self {
        Jitter {
            period,
            next: None,
            buckets: [0; BUCKETS],
            max_ns: 0,
            missed: 0,
            ticks: 0,
        }
    }

    /// The timer was armed at `now` (its first expiry is one period later).
    pub fn armed(&mut self, now: Instant) {
        self.next = Some(now + self.period);
    }

    /// A tick served at `now`, for `expirations` periods of the timer.
    pub fn tick(&mut self, now: Instant, expirations: u64) {
        let expirations = expirations.max(1);
        self.ticks += 1;
        self.missed += expirations - 1;
        if expirations > 1 {
            log::debug!("scheduler: the event loop missed {} ticks", expirations - 1);
        }
        let Some(next) = self.next else {
            self.next = Some(now + self.period);
            return;
        };
        // The latest expiry this read covers.
        let due = next + self.period * (expirations - 1) as u32;
        let late = now.saturating_duration_since(due).as_nanos() as u64;
        self.max_ns = self.max_ns.max(late);
        let us = late / 1000;
        let bucket = if us == 0 {
            0
        } else {
            (64 - us.leading_zeros() as usize).min(BUCKETS - 1)
        };
        self.buckets[bucket] += 1;
        self.next = Some(due + self.period);
    }

    pub fn stats(&self) -> JitterStats {
        let total: u64 = self.buckets.iter().sum();
        // The upper edge of the bucket holding the q-th quantile.
        let quantile = |q: f64| -> u64 {
            let want = (total as f64 * q).ceil() as u64;
            let mut seen = 0;
            for (i, n) in self.buckets.iter().enumerate() {
                seen += n;
                if seen >= want && *n > 0 {
                    return if i == 0 { 1 } else { 1 << i };
                }
            }
            0
        };
        JitterStats {
            ticks: self.ticks,
            missed: self.missed,
            p50_us: quantile(0.5),
            p99_us: quantile(0.99),
            max_us: self.max_ns / 1000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lateness_is_measured_against_the_schedule() {
        let t0 = Instant::now();
        let mut j = Jitter::new(Duration::from_millis(10));
        j.armed(t0);
        for k in 1..=98 {
            j.tick(t0 + Duration::from_micros(k * 10_000 + 50), 1);
        }
        // One tick 3 ms late, then one read covering two periods.
        j.tick(t0 + Duration::from_micros(99 * 10_000 + 3_000), 1);
        j.tick(t0 + Duration::from_micros(101 * 10_000 + 100), 2);
        let s = j.stats();
        assert_eq!((s.ticks, s.missed), (100, 1));
        assert_eq!(s.p50_us, 64, "50 us late falls in [32, 64)");
        assert_eq!(s.max_us, 3000);
        assert!(s.p99_us >= 64 && s.p99_us <= 4096, "{s:?}");
    }
}
