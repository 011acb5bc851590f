//! The shared bucket's rules, and its use from several threads at once.

use std::sync::Arc;
use std::thread;

use super::*;

fn grant(bytes: Option<u64>, ops: Option<u64>) -> Grant {
    Grant {
        vm: 0,
        bytes_milli: bytes.map(|b| b * MILLI),
        ops_milli: ops.map(|o| o * MILLI),
    }
}

#[test]
fn nothing_goes_before_the_first_fill() {
    let b = SharedBucket::new();
    assert!(!b.try_take(1, 1));
    assert!(b.is_waiting());
    assert!(b.fill(&grant(Some(100), Some(10))), "wake the device");
    assert!(b.try_take(1, 1));
    assert!(!b.is_waiting());
}

#[test]
fn bytes_and_ops_go_together_or_not_at_all() {
    let b = SharedBucket::new();
    b.fill(&grant(Some(1000), Some(2)));
    assert!(b.try_take(100, 1));
    assert!(b.try_take(100, 1));
    assert!(!b.try_take(100, 1), "no op left");
    assert_eq!(b.stats().bytes, 200, "the refused request took no bytes");
    // The bytes it did not take are still there for a request without an op.
    assert!(b.try_take(800, 0));
}

#[test]
fn an_unlimited_lane_does_not_hold_back() {
    let b = SharedBucket::new();
    b.fill(&grant(None, Some(1)));
    assert!(b.try_take(u64::MAX, 1));
    assert!(!b.try_take(0, 1));
}

#[test]
fn an_idle_vm_keeps_no_leftovers_but_a_waiting_one_keeps_its_remainder() {
    let b = SharedBucket::new();
    b.fill(&grant(Some(1000), None));
    assert!(b.try_take(100, 0));
    // Not waiting: the 900 left are dropped at the fill.
    b.fill(&grant(Some(1000), None));
    assert!(b.try_take(1000, 0));
    assert!(!b.try_take(1, 0), "exactly one grant");
    // Waiting for a 600-byte request with 400 left: the 400 are kept.
    let b = SharedBucket::new();
    b.fill(&grant(Some(1000), None));
    assert!(b.try_take(600, 0));
    assert!(!b.try_take(600, 0));
    b.fill(&grant(Some(1000), None));
    assert!(b.try_take(600, 0));
    assert!(b.try_take(600, 0));
    assert!(b.try_take(200, 0));
    assert!(!b.try_take(1, 0));
}

#[test]
fn a_request_larger_than_the_grant_goes_from_a_full_lane_and_leaves_debt() {
    let b = SharedBucket::new();
    b.fill(&grant(Some(1000), None));
    assert!(b.try_take(5000, 0), "full: it goes");
    assert!(!b.try_take(1, 0), "4000 in debt");
    // The debt is paid by the next fills before anything goes.
    for _ in 0..4 {
        b.fill(&grant(Some(1000), None));
        assert!(!b.try_take(1, 0));
    }
    b.fill(&grant(Some(1000), None));
    assert!(b.try_take(5000, 0), "paid and full again");
    // A zero grant is never "full".
    let b = SharedBucket::new();
    b.fill(&grant(Some(0), None));
    assert!(!b.try_take(1, 0));
}

#[test]
fn usage_reports_the_tick_and_the_counters_add_up() {
    let b = SharedBucket::new();
    b.fill(&grant(Some(1000), Some(10)));
    assert!(b.try_take(300, 3));
    assert!(!b.try_take(800, 1));
    let u = b.usage(10);
    assert_eq!(
        u,
        Usage {
            bytes: 300,
            ops: 3,
            held: true
        }
    );
    assert!(b.fill(&grant(Some(1000), Some(10))));
    assert!(b.try_take(800, 1));
    let u = b.usage(10);
    assert_eq!(
        u,
        Usage {
            bytes: 800,
            ops: 1,
            held: false
        }
    );
    assert_eq!(
        b.stats(),
        ShareStats {
            bytes: 1100,
            ops: 4,
            throttle_events: 1,
            throttled_ns: 10,
        }
    );
}

#[test]
fn threads_taking_at_once_never_take_more_than_the_grant() {
    let b = Arc::new(SharedBucket::new());
    for round in 0..50 {
        b.fill(&grant(Some(1_000_000), Some(1000)));
        let takers: Vec<_> = (0..4)
            .map(|_| {
                let b = Arc::clone(&b);
                thread::spawn(move || {
                    let mut n = 0u64;
                    while b.try_take(1000, 1) {
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let taken: u64 = takers
            .into_iter()
            .map(|t| t.join().expect("taker thread"))
            .sum();
        assert_eq!(taken, 1000, "round {round}");
        assert!(b.is_waiting());
        assert!(b.usage(1).held);
    }
    assert_eq!(b.stats().ops, 50 * 1000);
}
