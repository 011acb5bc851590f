//! `cpu.max` under simulated time: a VM whose vCPUs spin, a runtime whose
//! ticks arrive late by a random amount (as an event loop's do), parking
//! that takes effect a kick later, and (optionally) the one-shot cap timer
//! the policy asks for with `next_deadline_ns`.

use super::*;

const TICK: u64 = 10_000_000;
const MS: u64 = 1_000_000;
/// Simulation step.
const STEP: u64 = 10_000;
/// From a park/unpark decision until the vCPU thread obeys it (a signal
/// to a thread inside KVM_RUN takes about 50 µs here).
const KICK: u64 = 50_000;

/// xorshift64: deterministic, good enough for jitter.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// How late the runtime handles a tick and a one-shot timer: usually
/// within `typical`, and one time in `rare_one_in` up to `rare` later still.
#[derive(Clone, Copy)]
struct Jitter {
    typical: u64,
    rare: u64,
    rare_one_in: u64,
}

const REALISTIC: Jitter = Jitter {
    typical: 500_000,
    rare: 3 * MS,
    rare_one_in: 100,
};

struct CapSim {
    policy: Policy,
    cpus: u32,
    vcpus: u32,
    one_shot: bool,
    jitter: Jitter,
    rng: Rng,
    now: u64,
    used: u64,
    allowed: u32,
    pending: Option<(u64, u32)>,
    ticks: u64,
    tick_due: u64,
    deadline_due: Option<u64>,
    /// CPU used at the end of every simulated ms.
    trace: Vec<u64>,
    checks: u64,
}

impl CapSim {
    /// One VM of `vcpus` spinning vCPUs capped at `max`, on `cpus` CPUs.
    fn new(cpus: u32, vcpus: u32, max: f64, one_shot: bool, jitter: Jitter) -> CapSim {
        let mut policy = Policy::new(cpus, TICK);
        policy.add_vm(0, 100, Some(max), vcpus, 0);
        CapSim {
            policy,
            cpus,
            vcpus,
            one_shot,
            jitter,
            rng: Rng(0x9e37_79b9_7f4a_7c15),
            now: 0,
            used: 0,
            allowed: vcpus,
            pending: None,
            ticks: 0,
            tick_due: TICK,
            deadline_due: None,
            trace: vec![0],
            checks: 0,
        }
    }

    fn lateness(&mut self) -> u64 {
        let mut late = self.rng.below(self.jitter.typical);
        if self.rng.below(self.jitter.rare_one_in) == 0 {
            late += self.rng.below(self.jitter.rare);
        }
        late
    }

    /// What the runtime does after every tick and check: arm the one-shot
    /// timer for the policy's deadline, or disarm it.
    fn arm(&mut self) {
        self.deadline_due = if self.one_shot {
            self.policy
                .next_deadline_ns()
                .map(|d| self.now + d + self.lateness() / 4)
        } else {
            None
        };
    }

    fn step(&mut self) {
        if self.now >= self.tick_due {
            let busy = self.allowed.min(self.vcpus);
            let a = self.policy.tick(&[(
                0,
                Sample {
                    used_ns: self.used,
                    busy_vcpus: busy,
                },
            )]);
            self.pending = Some((self.now + KICK, a[0].vcpus));
            self.ticks += 1;
            self.tick_due = (self.ticks + 1) * TICK + self.lateness();
            self.arm();
        }
        if self.deadline_due.is_some_and(|d| self.now >= d) {
            self.checks += 1;
            for a in self.policy.check_caps(&[(0, self.used)]) {
                self.pending = Some((self.now + KICK, a.vcpus));
            }
            self.arm();
        }
        if let Some((at, vcpus)) = self.pending {
            if self.now >= at {
                self.allowed = vcpus;
                self.pending = None;
            }
        }
        let running = self.allowed.min(self.vcpus).min(self.cpus);
        self.used += u64::from(running) * STEP;
        self.now += STEP;
        if self.now % MS == 0 {
            self.trace.push(self.used);
        }
    }

    fn run_ms(&mut self, ms: u64) {
        let end = self.now + ms * MS;
        while self.now < end {
            self.step();
        }
    }

    /// The largest relative error, against `max`, of the CPU used over any
    /// window of `window_ms` that starts after `skip_ms`.
    fn worst_window_error(&self, max: f64, window_ms: usize, skip_ms: usize) -> f64 {
        let want = max * (window_ms as u64 * MS) as f64;
        self.trace[skip_ms..]
            .iter()
            .zip(&self.trace[skip_ms + window_ms..])
            .map(|(a, b)| ((b - a) as f64 - want).abs() / want)
            .fold(0.0, f64::max)
    }

    fn average(&self, max: f64) -> f64 {
        let used = self.used as f64 / self.now as f64;
        (used - max) / max
    }
}

#[test]
fn a_cap_holds_within_5_percent_over_every_1_s_window_with_the_one_shot_timer() {
    for max in [0.1, 0.3, 0.5, 0.8] {
        let mut sim = CapSim::new(1, 1, max, true, REALISTIC);
        sim.run_ms(20_000);
        let worst = sim.worst_window_error(max, 1000, 100);
        assert!(
            worst <= 0.05,
            "max {max}: worst 1 s window off by {worst:.3}"
        );
        let avg = sim.average(max);
        assert!(avg.abs() <= 0.01, "max {max}: off by {avg:.4} over 20 s");
    }
}

#[test]
fn a_cap_on_two_vcpus_holds_with_the_one_shot_timer() {
    // 1.5 CPUs of a 2-vCPU VM on 2 CPUs: the quota runs out twice as fast.
    let mut sim = CapSim::new(2, 2, 1.5, true, REALISTIC);
    sim.run_ms(20_000);
    let worst = sim.worst_window_error(1.5, 1000, 100);
    assert!(worst <= 0.05, "worst 1 s window off by {worst:.3}");
}

#[test]
fn one_shot_checks_cost_about_one_wakeup_per_period() {
    let mut sim = CapSim::new(1, 1, 0.3, true, REALISTIC);
    sim.run_ms(10_000);
    let periods = 10_000 / (TICK / MS * u64::from(CAP_PERIOD_TICKS));
    assert!(sim.checks <= 2 * periods, "{} checks", sim.checks);
}

#[test]
fn ticks_alone_hold_a_cap_on_average_by_carrying_the_overrun() {
    // Without the one-shot timer the VM can only be parked at a tick, one
    // tick late at worst; the overrun is paid in the next period, so over
    // 20 s the cap holds within 1 % (before, 0.1 gave 0.20 and 0.5 gave 0.60).
    for max in [0.1, 0.3, 0.5, 0.8] {
        let mut sim = CapSim::new(1, 1, max, false, REALISTIC);
        sim.run_ms(20_000);
        let avg = sim.average(max);
        assert!(avg.abs() <= 0.01, "max {max}: off by {avg:.4} over 20 s");
        // Over 1 s windows it is off by at most about one tick of CPU.
        let worst = sim.worst_window_error(max, 1000, 100);
        let tick_share = TICK as f64 / (max * 1e9);
        assert!(
            worst <= tick_share * 1.5,
            "max {max}: worst window {worst:.3}"
        );
    }
}

#[test]
fn a_vcpu_that_uses_a_little_less_than_each_tick_is_not_let_run_a_tick_more() {
    // The defect: a tick's CPU use is a little less than the tick, so a
    // quota of one tick was "not reached" after one tick and the VM ran
    // two. The one-shot check stops it at the quota.
    let mut policy = Policy::new(1, TICK);
    policy.add_vm(0, 100, Some(0.1), 1, 0);
    let used = TICK - TICK / 100;
    let a = policy.tick(&[(
        0,
        Sample {
            used_ns: used,
            busy_vcpus: 1,
        },
    )]);
    assert_eq!(a[0].vcpus, 1, "quota not used up yet");
    assert_eq!(policy.next_deadline_ns(), Some(MIN_CAP_CHECK_NS));
    let parked = policy.check_caps(&[(0, TICK + MIN_CAP_CHECK_NS / 2)]);
    assert_eq!(parked, vec![Allowance { vm: 0, vcpus: 0 }]);
    assert_eq!(policy.next_deadline_ns(), None, "nothing left to watch");
}

#[test]
fn debt_is_paid_in_the_next_period() {
    let mut policy = Policy::new(1, TICK);
    policy.add_vm(0, 100, Some(0.3), 1, 0);
    // Quota 30 ms per 100 ms period; it runs 35 ms before being parked.
    let mut used = 0;
    for _ in 0..2 {
        used += TICK;
        policy.tick(&[(
            0,
            Sample {
                used_ns: used,
                busy_vcpus: 1,
            },
        )]);
    }
    used += 15 * MS;
    assert_eq!(policy.check_caps(&[(0, used)]).len(), 1, "parked");
    for _ in 2..CAP_PERIOD_TICKS {
        policy.tick(&[(
            0,
            Sample {
                used_ns: used,
                busy_vcpus: 0,
            },
        )]);
    }
    // A new period: 30 ms less the 5 ms overrun.
    assert_eq!(policy.throttle(0).map(|t| t.0.cap), Some(false));
    assert_eq!(policy.next_deadline_ns(), Some(25 * MS));
}

#[test]
fn a_vm_added_late_in_a_period_gets_only_the_rest_of_its_quota() {
    let mut policy = Policy::new(1, TICK);
    for _ in 0..5 {
        policy.tick(&[]);
    }
    policy.add_vm(0, 100, Some(0.4), 1, 0);
    // Half the period has gone: 20 ms of the 40 ms quota are left.
    assert_eq!(policy.next_deadline_ns(), Some(20 * MS));
}

#[test]
fn removing_a_cap_forgives_the_debt_and_releases_the_vm() {
    let mut policy = Policy::new(1, TICK);
    policy.add_vm(0, 100, Some(0.1), 1, 0);
    policy.tick(&[(
        0,
        Sample {
            used_ns: 3 * TICK,
            busy_vcpus: 1,
        },
    )]);
    assert_eq!(policy.throttle(0).map(|t| t.0.cap), Some(true));
    policy.set_max(0, None);
    let a = policy.tick(&[(
        0,
        Sample {
            used_ns: 3 * TICK,
            busy_vcpus: 1,
        },
    )]);
    assert_eq!(a[0].vcpus, 1);
    assert_eq!(policy.next_deadline_ns(), None);
}
