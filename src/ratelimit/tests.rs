//! Rate limiters under simulated time: consumers that retry when the
//! limiter's `wait_ns` says (as a device arming a timerfd would).

use super::*;

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;
const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

fn bucket(size: u64, one_time_burst: u64, refill_time_ms: u64) -> Option<TokenBucketSpec> {
    Some(TokenBucketSpec {
        size,
        one_time_burst,
        refill_time_ms,
    })
}

fn limiter(bandwidth: Option<TokenBucketSpec>, ops: Option<TokenBucketSpec>) -> RateLimiter {
    RateLimiter::new(&RateLimiterSpec { bandwidth, ops }, 0)
}

/// xorshift64 for request sizes.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A consumer that always has a request ready (sizes from `size`), sends
/// it as soon as the limiter lets it and otherwise sleeps exactly as long
/// as `wait_ns` says, from `start` for `duration`. Returns the bytes sent
/// and the time of every send.
fn greedy(
    rl: &mut RateLimiter,
    start: u64,
    duration: u64,
    mut size: impl FnMut() -> u64,
) -> (u64, Vec<(u64, u64)>) {
    let mut now = start;
    let mut sent = 0;
    let mut log = Vec::new();
    let mut next = size();
    while now < start + duration {
        if rl.try_consume(next, now) {
            sent += next;
            log.push((now, next));
            next = size();
        } else {
            let wait = rl.wait_ns(next, now);
            assert!(wait > 0, "refused, yet told to wait 0 ns at {now}");
            now += wait;
        }
    }
    (sent, log)
}

#[test]
fn a_10_mib_per_s_bucket_holds_a_greedy_consumer_within_1_percent() {
    // 1 MiB refilled every 100 ms: 10 MiB/s.
    let mut rl = limiter(bucket(MIB, 0, 100), None);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let (sent, log) = greedy(&mut rl, 0, 60 * S, || 1 + rng.below(256 * KIB));
    let rate = sent as f64 / 60.0;
    let want = 10.0 * MIB as f64;
    assert!(
        (rate - want).abs() / want <= 0.01,
        "{rate:.0} B/s, want {want:.0}"
    );
    // And over every 1 s window after the first (the initial full bucket
    // is a burst of 1 MiB): at most a bucket's worth away.
    for w in 1..59 {
        let in_window: u64 = log
            .iter()
            .filter(|(t, _)| *t >= w * S && *t < (w + 1) * S)
            .map(|(_, n)| n)
            .sum();
        let err = (in_window as f64 - want).abs() / want;
        assert!(err <= 0.1 + 256.0 / 10240.0, "window {w}: {in_window} B");
    }
}

#[test]
fn the_one_time_burst_is_spent_once() {
    // 1000 ops/s, size 100, with a one-time burst of 5000.
    let mut rl = limiter(None, bucket(100, 5000, 100));
    let mut now_ops = 0;
    while rl.try_consume(0, 0) {
        now_ops += 1;
    }
    assert_eq!(now_ops, 5100, "burst plus a full bucket at once");
    assert_eq!(
        rl.buckets().1.map(TokenBucket::one_time_burst_left),
        Some(0)
    );
    // Ten seconds idle: the bucket refills to its size, the burst does not.
    let mut later = 0;
    while rl.try_consume(0, 10 * S) {
        later += 1;
    }
    assert_eq!(later, 100);
}

#[test]
fn a_1_mib_request_behind_a_64_kib_bucket_is_not_starved() {
    // 64 KiB every 10 ms: 6.4 MiB/s, a bucket 16 times smaller than a request.
    let mut rl = limiter(bucket(64 * KIB, 0, 10), None);
    assert!(rl.try_consume(MIB, 0), "a full bucket lets it go");
    // It left the bucket 960 KiB in debt: the next one waits for the debt
    // to be paid and the bucket to fill (1 MiB of refill: 160 ms).
    let wait = rl.wait_ns(MIB, 0);
    assert_eq!(wait, 160 * MS);
    assert!(!rl.try_consume(MIB, wait - 1));
    assert!(rl.try_consume(MIB, wait));
    // A stream of them gets the bucket's rate.
    let mut rl = limiter(bucket(64 * KIB, 0, 10), None);
    let (sent, _) = greedy(&mut rl, 0, 10 * S, || MIB);
    let rate = sent as f64 / 10.0;
    let want = 6.4 * MIB as f64;
    assert!((rate - want).abs() / want <= 0.02, "{rate:.0} B/s");
}

#[test]
fn wait_ns_is_exact() {
    let mut rl = limiter(bucket(1000, 0, 1000), None);
    assert!(rl.try_consume(1000, 0));
    // 1000 tokens per s: 300 tokens in 300 ms.
    let wait = rl.wait_ns(300, 0);
    assert_eq!(wait, 300 * MS);
    assert!(!rl.try_consume(300, wait - 1));
    assert!(rl.try_consume(300, wait));
    // Odd rates: 7 tokens per 3 ms; waiting in small steps loses nothing.
    let mut rl = limiter(bucket(7, 0, 3), None);
    assert!(rl.try_consume(7, 0));
    let mut now = 0;
    let mut got = 0;
    while now < 3 * S {
        now += 1 + now % 99_991;
        while rl.try_consume(1, now) {
            got += 1;
        }
    }
    assert!((6993..=7000).contains(&got), "{got} tokens in 3 s");
}

#[test]
fn bytes_and_the_op_go_together_or_not_at_all() {
    let mut rl = limiter(bucket(1000, 0, 1000), bucket(1, 0, 1000));
    assert!(rl.try_consume(100, 0));
    // The ops bucket is empty: the request waits and its bytes stay.
    assert!(!rl.try_consume(100, 0));
    assert_eq!(rl.buckets().0.map(TokenBucket::budget), Some(900));
    assert_eq!(rl.wait_ns(100, 0), S, "the op comes back in 1 s");
    // Both must be there: bandwidth empty, ops full.
    let mut rl = limiter(bucket(1000, 0, 1000), bucket(10, 0, 1000));
    assert!(rl.try_consume(1000, 0));
    assert!(!rl.try_consume(1, 0));
    assert_eq!(rl.buckets().1.map(TokenBucket::budget), Some(9));
}

#[test]
fn a_patch_replaces_removes_or_keeps_each_bucket() {
    let mut rl = limiter(bucket(1000, 0, 1000), bucket(10, 0, 1000));
    assert!(rl.try_consume(1000, 0));
    assert!(!rl.try_consume(1, 0));
    // A new, bigger bandwidth bucket, full at once; the ops bucket stays.
    rl.update(
        BucketUpdate::Replace(TokenBucketSpec {
            size: 5000,
            one_time_burst: 0,
            refill_time_ms: 1000,
        }),
        BucketUpdate::Keep,
        0,
    );
    assert!(rl.try_consume(4000, 0));
    assert_eq!(rl.spec().ops.map(|b| b.size), Some(10));
    assert_eq!(rl.buckets().1.map(TokenBucket::budget), Some(8));
    // Disabling both: anything goes.
    rl.update(BucketUpdate::Disable, BucketUpdate::Disable, 0);
    assert!(rl.is_unlimited());
    assert!(rl.try_consume(u64::MAX, 0));
    // A spec of size 0 means no limit (Firecracker).
    rl.update(
        BucketUpdate::Replace(TokenBucketSpec {
            size: 0,
            one_time_burst: 0,
            refill_time_ms: 1000,
        }),
        BucketUpdate::Keep,
        0,
    );
    assert!(rl.is_unlimited());
}

#[test]
fn counters_record_what_went_and_how_long_it_was_held_back() {
    let mut rl = limiter(bucket(1000, 0, 1000), None);
    assert!(rl.try_consume(1000, 0));
    assert!(!rl.try_consume(500, 100 * MS));
    assert!(!rl.try_consume(500, 200 * MS), "still the same wait");
    let s = rl.stats(300 * MS);
    assert!(s.throttled);
    assert_eq!((s.throttled_events, s.throttled_ns), (1, 200 * MS));
    assert!(rl.try_consume(500, 500 * MS));
    let s = rl.stats(900 * MS);
    assert_eq!(
        s,
        RateLimiterStats {
            bytes: 1500,
            ops: 2,
            throttled_events: 1,
            throttled_ns: 400 * MS,
            throttled: false,
        }
    );
}

#[test]
fn a_refund_gives_the_tokens_back() {
    let mut rl = limiter(bucket(1000, 0, 1000), bucket(1, 0, 1000));
    assert!(rl.try_consume(600, 0));
    rl.refund(600);
    assert!(rl.try_consume(1000, 0), "both buckets full again");
    assert_eq!(rl.stats(0).bytes, 1000);
}

#[test]
fn time_going_backwards_adds_no_tokens() {
    let mut rl = limiter(bucket(1000, 0, 1000), None);
    assert!(rl.try_consume(1000, 5 * S));
    assert!(!rl.try_consume(1, S));
    assert!(!rl.try_consume(1, 5 * S));
    assert!(rl.try_consume(1, 5 * S + MS));
}

#[test]
fn huge_values_do_not_overflow() {
    // Refill time u64::MAX ms saturates to u64::MAX ns: one token per ns.
    let mut rl = limiter(bucket(u64::MAX, u64::MAX, u64::MAX), bucket(u64::MAX, 0, 1));
    assert!(rl.try_consume(u64::MAX, 0), "from the burst");
    assert!(rl.try_consume(u64::MAX, 0), "from the full bucket");
    assert!(!rl.try_consume(1, 0));
    assert_eq!(rl.wait_ns(1, 0), 1);
    assert!(rl.try_consume(u64::MAX, u64::MAX), "refilled");
    // The deepest debt: the wait saturates.
    let mut rl = limiter(bucket(1, 0, u64::MAX), None);
    assert!(rl.try_consume(u64::MAX, 0));
    assert_eq!(rl.wait_ns(1, 0), u64::MAX);
    assert!(!rl.try_consume(1, u64::MAX));
}

#[test]
fn a_patch_computed_aside_is_what_the_limiter_gets_and_two_patches_merge() {
    let specs = [
        None,
        bucket(4096, 0, 100),
        bucket(1, 5, 1),
        bucket(0, 0, 100),
        bucket(4096, 0, 0),
    ];
    let mut updates = vec![BucketUpdate::Keep, BucketUpdate::Disable];
    updates.extend(specs.iter().flatten().map(|s| BucketUpdate::Replace(*s)));
    for &bw in &specs {
        for &ops in &specs {
            for &u in &updates {
                for &v in &updates {
                    let mut l = limiter(bw, ops);
                    let before = l.spec();
                    l.update(u, v, 7);
                    assert_eq!(
                        l.spec(),
                        patched(before, u, v),
                        "{bw:?} {ops:?} {u:?} {v:?}"
                    );
                    // Two changes in a row, and the same two merged.
                    let mut merged = limiter(bw, ops);
                    l.update(v, u, 9);
                    merged.update(u.then(v), v.then(u), 9);
                    assert_eq!(l.spec(), merged.spec(), "{u:?} then {v:?}");
                }
            }
        }
    }
}
