use super::*;

fn lim(floor: u64, ceiling: u64, weight: u32) -> Limits {
    Limits {
        floor,
        ceiling,
        weight,
    }
}

fn claim(limits: Limits, demand: u64) -> Claim {
    Claim { limits, demand }
}

#[test]
fn floors_first_then_weighted_shares_of_the_rest() {
    let a = lim(100, 1000, 100);
    let b = lim(100, 1000, 300);
    // Demands at the ceiling: no idle memory, no tax.
    assert_eq!(
        allocate(1000, &[claim(a, 1000), claim(b, 1000)], 0.75),
        [300, 700]
    );
    // No tax: pure weights whatever the demand.
    assert_eq!(
        allocate(1000, &[claim(a, 100), claim(b, 100)], 0.0),
        [300, 700]
    );
    // The whole budget is handed out (rounding included).
    let three = [claim(lim(10, 900, 1), 900); 3];
    assert_eq!(allocate(1000, &three, 0.0).iter().sum::<u64>(), 1000);
}

#[test]
fn ceilings_cap_and_the_excess_goes_to_the_others() {
    let a = lim(100, 200, 100);
    let b = lim(100, 1000, 100);
    assert_eq!(
        allocate(1000, &[claim(a, 200), claim(b, 1000)], 0.75),
        [200, 800]
    );
    // A budget above every ceiling: everybody at its ceiling, the rest unused.
    assert_eq!(
        allocate(5000, &[claim(a, 200), claim(b, 1000)], 0.75),
        [200, 1000]
    );
}

#[test]
fn floors_are_never_crossed() {
    let a = lim(300, 800, 10_000);
    let b = lim(200, 800, 1);
    assert_eq!(
        allocate(500, &[claim(a, 800), claim(b, 800)], 0.75),
        [300, 200]
    );
    let got = allocate(600, &[claim(a, 800), claim(b, 200)], 0.75);
    assert!(
        got[0] >= 300 && got[1] >= 200 && got.iter().sum::<u64>() == 600,
        "{got:?}"
    );
}

#[test]
fn the_idle_tax_moves_idle_memory_to_the_vm_that_uses_it() {
    // The worked example of docs/memory.md.
    let a = lim(128, 768, 100);
    let b = lim(128, 768, 100);
    let taxed = allocate(1024, &[claim(a, 600), claim(b, 200)], 0.75);
    assert_eq!(taxed, [662, 362]);
    // Without the tax both get 512, short of A's demand of 600.
    assert_eq!(
        allocate(1024, &[claim(a, 600), claim(b, 200)], 0.0),
        [512, 512]
    );
    // Both short of their demand: weights decide.
    assert_eq!(
        allocate(1024, &[claim(a, 768), claim(b, 700)], 0.75),
        [512, 512]
    );
}

#[test]
fn demand_is_used_memory_plus_headroom_within_the_limits() {
    let p = Params::with_budget(1024);
    let l = lim(64, 512, 100);
    let obs = |current, available| Observation { current, available };
    assert_eq!(demand(obs(512, Some(400)), l, &p), 112 + 16);
    assert_eq!(
        demand(obs(512, Some(12)), l, &p),
        512,
        "500 + 50 is capped by the ceiling"
    );
    assert_eq!(demand(obs(300, Some(100)), l, &p), 220, "200 + 10 %");
    assert_eq!(demand(obs(512, Some(510)), l, &p), 64, "the floor");
    assert_eq!(demand(obs(512, None), l, &p), 512, "no statistics yet");
}

/// A simulated host: guests follow their targets at once; `avail(vm, held)`.
fn simulate(
    policy: &mut Policy,
    sizes: &[u64],
    ticks: usize,
    used: impl Fn(usize, usize) -> u64,
) -> Vec<Vec<u64>> {
    let mut held: Vec<u64> = sizes.to_vec();
    let mut history = Vec::new();
    for t in 0..ticks {
        let obs: Vec<(VmId, Observation)> = held
            .iter()
            .enumerate()
            .map(|(i, &h)| {
                (
                    i,
                    Observation {
                        current: h,
                        available: Some(h.saturating_sub(used(i, t))),
                    },
                )
            })
            .collect();
        let decisions = policy.tick(&obs);
        for d in decisions {
            held[d.vm] = d.target;
        }
        history.push(held.clone());
    }
    history
}

#[test]
fn steps_are_bounded_and_targets_settle() {
    let mut policy = Policy::new(Params::with_budget(768));
    for i in 0..2 {
        policy.add_vm(i, lim(64, 512, 100), 512);
    }
    let h = simulate(&mut policy, &[512, 512], 30, |_, _| 100);
    let mut prev = vec![512u64, 512];
    for held in &h {
        for i in 0..2 {
            assert!(held[i].abs_diff(prev[i]) <= 64, "{h:?}");
            assert!(held[i] >= 64);
        }
        prev = held.clone();
    }
    assert_eq!(h[2], [384, 384]);
    // Settled: nothing moves any more.
    assert_eq!(h[28], h[29]);
}

#[test]
fn a_growing_vm_takes_memory_from_an_idle_one_within_a_few_ticks_inside_the_budget() {
    let budget = 768;
    let mut policy = Policy::new(Params::with_budget(budget));
    policy.add_vm(0, lim(64, 512, 100), 512);
    policy.add_vm(1, lim(64, 512, 100), 512);
    // VM 0 uses 40 MiB until tick 10, then 400 MiB; VM 1 stays at 40.
    let h = simulate(&mut policy, &[512, 512], 30, |vm, t| {
        if vm == 0 && t >= 10 {
            400
        } else {
            40
        }
    });
    // Before the growth: equal shares (both idle).
    assert_eq!(h[9], [384, 384]);
    // After: VM 0 gets its demand (440) and more, VM 1 keeps the rest.
    let settled = h
        .iter()
        .skip(10)
        .position(|x| x[0] >= 440)
        .expect("VM 0 reaches its demand");
    assert!(settled <= 3, "{settled} ticks: {h:?}");
    for held in h.iter().skip(3) {
        assert!(held.iter().sum::<u64>() <= budget, "{held:?}");
        assert!(held[1] >= 64);
    }
    // Never oscillates: once settled, stays.
    assert_eq!(h[25], h[29]);
}

#[test]
fn hysteresis_ignores_small_changes() {
    let mut policy = Policy::new(Params::with_budget(1000));
    policy.add_vm(0, lim(100, 1000, 100), 500);
    policy.add_vm(1, lim(100, 1000, 100), 500);
    let obs = |a: u64, b: u64| {
        vec![
            (
                0,
                Observation {
                    current: 500,
                    available: Some(500 - a),
                },
            ),
            (
                1,
                Observation {
                    current: 500,
                    available: Some(500 - b),
                },
            ),
        ]
    };
    let first = policy.tick(&obs(300, 300));
    assert_eq!((first[0].target, first[1].target), (500, 500));
    // Demand shifts by a couple of MiB: ideal moves by less than 4, targets stay.
    let next = policy.tick(&obs(302, 300));
    assert_eq!((next[0].target, next[1].target), (500, 500), "{next:?}");
}

#[test]
fn a_vm_that_leaves_gives_its_share_to_the_others() {
    let mut policy = Policy::new(Params::with_budget(600));
    policy.add_vm(0, lim(100, 600, 100), 300);
    policy.add_vm(7, lim(100, 600, 100), 300);
    policy.remove_vm(7);
    let mut target = 0;
    for _ in 0..10 {
        let d = policy.tick(&[(
            0,
            Observation {
                current: target.max(300),
                available: None,
            },
        )]);
        target = d[0].target;
    }
    assert_eq!(target, 600);
}
