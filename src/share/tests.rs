//! The share policy and the shared buckets together, on simulated ticks:
//! every tick each VM's device takes requests from its bucket as long as it
//! has work and tokens, then the tick reads the buckets, asks the policy
//! and refills them.

use super::*;
use crate::config::HostShareSpec;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const TICK_MS: u32 = 10;
const TICK_NS: u64 = 10_000_000;

fn policy(bytes_per_s: Option<u64>, ops_per_s: Option<u64>) -> SharePolicy {
    SharePolicy::new(&HostShareSpec {
        bytes_per_s,
        ops_per_s,
        tick_ms: TICK_MS,
    })
    .expect("a valid budget")
}

/// One VM's device: a queue of equal requests.
struct Dev {
    bucket: SharedBucket,
    /// Requests that arrive every tick; `None`: always more (backlogged).
    arrivals: Option<u64>,
    queued: u64,
    request: u64,
    done_bytes: u64,
}

struct Sim {
    policy: SharePolicy,
    devs: Vec<Dev>,
}

impl Sim {
    /// VMs of `(weight, request bytes, arrivals per tick or None)`.
    fn new(policy: SharePolicy, vms: &[(u32, u64, Option<u64>)]) -> Sim {
        let mut sim = Sim {
            policy,
            devs: Vec::new(),
        };
        for (w, request, arrivals) in vms {
            sim.add(*w, *request, *arrivals);
        }
        sim
    }

    fn add(&mut self, weight: u32, request: u64, arrivals: Option<u64>) {
        self.policy.add_vm(self.devs.len(), weight);
        self.devs.push(Dev {
            bucket: SharedBucket::new(),
            arrivals,
            queued: 0,
            request,
            done_bytes: 0,
        });
    }

    /// One tick of device work, then the policy's tick. Returns the grants.
    fn step(&mut self) -> Vec<Grant> {
        for d in &mut self.devs {
            d.queued = match d.arrivals {
                None => u64::MAX,
                Some(n) => d.queued.saturating_add(n),
            };
            while d.queued > 0 && d.bucket.try_take(d.request, 1) {
                d.queued -= 1;
                d.done_bytes += d.request;
            }
        }
        let usage: Vec<(VmId, Usage)> = self
            .devs
            .iter()
            .enumerate()
            .map(|(i, d)| (i, d.bucket.usage(TICK_NS)))
            .collect();
        let grants = self.policy.tick(&usage);
        for g in &grants {
            self.devs[g.vm].bucket.fill(g);
        }
        grants
    }

    /// Bytes each VM moved over `ticks` ticks.
    fn run(&mut self, ticks: usize) -> Vec<u64> {
        let start: Vec<u64> = self.devs.iter().map(|d| d.done_bytes).collect();
        for _ in 0..ticks {
            self.step();
        }
        self.devs
            .iter()
            .zip(start)
            .map(|(d, s)| d.done_bytes - s)
            .collect()
    }

    /// The device stops getting work; it keeps the request it holds.
    fn go_idle(&mut self, vm: usize) {
        let d = &mut self.devs[vm];
        d.arrivals = Some(0);
        d.queued = d.queued.min(1);
    }
}

/// 10 MiB/s in 10 ms ticks: bytes per tick.
const BUDGET_10_MIB: f64 = 10.0 * MIB as f64 / 100.0;

fn ratio(a: u64, b: u64) -> f64 {
    a as f64 / b as f64
}

#[test]
fn two_backlogged_vms_of_weights_100_and_300_get_1_to_3_within_1_percent() {
    let mut sim = Sim::new(
        policy(Some(10 * MIB), None),
        &[(100, 4 * KIB, None), (300, 4 * KIB, None)],
    );
    sim.run(20);
    let done = sim.run(1000);
    let r = ratio(done[1], done[0]);
    assert!((r - 3.0).abs() <= 0.03, "ratio {r:.4}: {done:?}");
    let total = (done[0] + done[1]) as f64;
    assert!(
        total >= 0.99 * 1000.0 * BUDGET_10_MIB,
        "work-conserving: {done:?}"
    );
    assert!(
        total <= 1000.0 * BUDGET_10_MIB + 8.0 * KIB as f64,
        "within budget"
    );
}

#[test]
fn a_budget_of_a_few_ops_per_tick_still_divides_1_to_3() {
    // 1000 ops/s: 10 ops per tick, 2.5 and 7.5 by weight.
    let mut sim = Sim::new(
        policy(Some(100 * MIB), Some(1000)),
        &[(100, 4 * KIB, None), (300, 4 * KIB, None)],
    );
    sim.run(20);
    let done = sim.run(2000);
    let r = ratio(done[1], done[0]);
    assert!((r - 3.0).abs() <= 0.03, "ratio {r:.4}: {done:?}");
    let ops = (done[0] + done[1]) / (4 * KIB);
    assert!((19_800..=20_002).contains(&ops), "{ops} ops in 20 s");
}

#[test]
fn one_backlogged_vm_gets_the_whole_budget() {
    let mut sim = Sim::new(policy(Some(10 * MIB), None), &[(100, 4 * KIB, None)]);
    sim.run(5);
    let done = sim.run(1000);
    assert!(done[0] as f64 >= 0.995 * 1000.0 * BUDGET_10_MIB, "{done:?}");
    // Alongside idle VMs of any weight, it still gets 99 %.
    let mut sim = Sim::new(
        policy(Some(10 * MIB), None),
        &[
            (100, 4 * KIB, None),
            (10_000, 4 * KIB, Some(0)),
            (5000, 4 * KIB, Some(0)),
        ],
    );
    sim.run(5);
    let done = sim.run(1000);
    assert!(done[0] as f64 >= 0.99 * 1000.0 * BUDGET_10_MIB, "{done:?}");
}

#[test]
fn a_vm_that_goes_idle_gives_its_share_to_the_other_within_one_tick() {
    let mut sim = Sim::new(
        policy(Some(10 * MIB), None),
        &[(100, 4 * KIB, None), (300, 4 * KIB, None)],
    );
    sim.run(50);
    sim.go_idle(1);
    // In the tick it goes idle it still finishes the request it held, and
    // keeps that much (plus an eighth and its probe) for the next tick:
    // the other VM gets the rest at once.
    let g = sim.step();
    let kept = (4.0 * KIB as f64) * 9.0 / 8.0 + 0.75 * BUDGET_10_MIB / 100.0;
    let a = g[0].bytes_milli.unwrap_or(0) as f64 / MILLI as f64;
    assert!(a >= BUDGET_10_MIB - kept - 1.0, "{g:?}");
    // The tick after, it has used nothing: the other gets all but its probe.
    let g = sim.step();
    let a = g[0].bytes_milli.unwrap_or(0) as f64 / MILLI as f64;
    assert!(a >= 0.99 * BUDGET_10_MIB, "{g:?}");
    let done = sim.run(10);
    assert!(done[0] as f64 >= 0.98 * 10.0 * BUDGET_10_MIB, "{done:?}");
    assert_eq!(done[1], 0, "{done:?}");
}

#[test]
fn a_light_user_keeps_what_it_uses_and_the_backlogged_vm_gets_the_rest() {
    // VM 1 (weight 300) uses 20 KiB a tick, under its share (75 KiB):
    // it is never held back and VM 0 gets the rest, above its own share.
    let mut sim = Sim::new(
        policy(Some(10 * MIB), None),
        &[(100, 4 * KIB, None), (300, 4 * KIB, Some(5))],
    );
    sim.run(20);
    let events = sim.devs[1].bucket.stats().throttle_events;
    let done = sim.run(1000);
    assert_eq!(done[1], 1000 * 20 * KIB);
    let rest = 1000.0 * BUDGET_10_MIB - done[1] as f64;
    assert!(done[0] as f64 >= 0.96 * rest, "{done:?}");
    assert_eq!(sim.devs[1].bucket.stats().throttle_events, events);
}

#[test]
fn weights_changed_at_run_time_take_effect_at_the_next_tick() {
    let mut sim = Sim::new(
        policy(Some(10 * MIB), None),
        &[(100, 4 * KIB, None), (100, 4 * KIB, None)],
    );
    sim.run(10);
    sim.policy.set_weight(1, 300);
    let g = sim.step();
    let (a, b) = (g[0].bytes_milli.unwrap_or(0), g[1].bytes_milli.unwrap_or(0));
    assert!((ratio(b, a) - 3.0).abs() < 0.001, "{g:?}");
    let done = sim.run(1000);
    assert!((ratio(done[1], done[0]) - 3.0).abs() <= 0.03, "{done:?}");
}

#[test]
fn vms_added_and_removed_share_from_the_next_tick() {
    let mut sim = Sim::new(policy(Some(10 * MIB), None), &[(100, 4 * KIB, None)]);
    sim.run(10);
    sim.add(100, 4 * KIB, None);
    let g = sim.step();
    assert_eq!(g.len(), 2);
    sim.run(10);
    let done = sim.run(500);
    assert!((ratio(done[1], done[0]) - 1.0).abs() <= 0.01, "{done:?}");
    sim.policy.remove_vm(0);
    sim.devs[0].arrivals = Some(0);
    let g = sim.step();
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].vm, 1);
    let done = sim.run(100);
    assert!(done[1] as f64 >= 0.995 * 100.0 * BUDGET_10_MIB, "{done:?}");
}

#[test]
fn an_idle_vm_banks_no_credit() {
    let mut sim = Sim::new(
        policy(Some(10 * MIB), None),
        &[(100, 4 * KIB, None), (100, 4 * KIB, Some(0))],
    );
    sim.run(500);
    // It wakes with a long queue: in its first tick it gets what its last
    // grant allows (its probe, on which one request goes into debt), not
    // credit for the 500 ticks it sat idle.
    sim.devs[1].arrivals = None;
    let done = sim.run(1);
    assert_eq!(done[1], 4 * KIB, "{done:?}");
    sim.run(10);
    let done = sim.run(500);
    assert!((ratio(done[1], done[0]) - 1.0).abs() <= 0.01, "{done:?}");
}

#[test]
fn a_request_larger_than_a_tick_grant_is_not_starved() {
    // The light VM's grant is about 26 KiB a tick; its requests are 1 MiB.
    let mut sim = Sim::new(
        policy(Some(10 * MIB), None),
        &[(100, MIB, None), (300, 4 * KIB, None)],
    );
    sim.run(100);
    let done = sim.run(4000);
    let r = ratio(done[1], done[0]);
    assert!((r - 3.0).abs() <= 0.06, "ratio {r:.4}: {done:?}");
}

#[test]
fn water_fill_gives_the_modest_their_want_and_splits_the_rest() {
    // Budget 1000000, equal weights; VM 0 wants 100000 (+ probe 3333).
    let g = water_fill(1_000_000, &[1, 1, 1], &[Some(100_000), None, None]);
    assert_eq!(g, vec![103_333, 448_333, 448_333]);
    // Nobody wants it all: everyone gets its want and the slack by weight.
    let g = water_fill(1000, &[1, 3], &[Some(0), Some(0)]);
    assert_eq!(g, vec![249, 750]);
    // Wants above the share are cut to the weighted share.
    let g = water_fill(1000, &[1, 3], &[Some(900), Some(900)]);
    assert_eq!(g, vec![250, 750]);
    assert!(water_fill(1000, &[], &[]).is_empty());
}

#[test]
fn a_budget_too_large_or_a_zero_tick_is_refused() {
    let spec = HostShareSpec {
        bytes_per_s: Some(u64::MAX / 2),
        ops_per_s: None,
        tick_ms: 10,
    };
    assert_eq!(
        SharePolicy::new(&spec).err(),
        Some(ShareError::BudgetTooLarge {
            field: "bytes_per_s",
            per_s: u64::MAX / 2,
            tick_ms: 10
        })
    );
    let spec = HostShareSpec { tick_ms: 0, ..spec };
    assert_eq!(SharePolicy::new(&spec).err(), Some(ShareError::ZeroTick));
}
