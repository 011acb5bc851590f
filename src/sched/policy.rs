//! The proportional-share policy, as pure arithmetic: no threads, clocks or
//! KVM. The runtime (`sched::Scheduler`) feeds it, every tick, how much CPU
//! each VM's vCPU threads have used and how many of them want to run; it
//! answers how many vCPUs of each VM may run until the next tick.
//!
//! The rule (see docs/scheduler.md for the fairness bound):
//! - each VM has a virtual time `v = CPU used × 100 / weight`;
//! - a VM is *active* when at least one of its vCPUs wants CPU (or it is
//!   throttled, since a parked vCPU cannot show that it wants to run);
//! - the allowed host CPUs are *contended* when the active VMs want more
//!   vCPUs than there are CPUs; without contention nobody is throttled and
//!   virtual times are pulled level, so no VM is later punished for CPU
//!   that nobody else wanted (work conservation);
//! - under contention, an active VM whose virtual time runs more than
//!   `bound` ahead of the slowest unthrottled active VM is throttled, and is
//!   released when that VM has caught up (hysteresis: release at 0 lead);
//! - a throttled VM may still run as many vCPUs as are needed to keep every
//!   allowed CPU busy (never leave a CPU idle while a VM wants one);
//! - an idle VM's virtual time is pulled up to `bound` behind the slowest
//!   active VM, so it cannot bank credit while idle and then monopolise the
//!   CPUs when it wakes;
//! - `cpu.max` is a hard cap: over each period (10 ticks) a VM may use at
//!   most `max × period` of CPU; past that all its vCPUs are parked until the
//!   period ends.

use std::collections::BTreeMap;

/// A VM's identity in the policy (the monitor's VM index).
pub type VmId = usize;

/// Weight that makes virtual time equal CPU time.
const UNIT_WEIGHT: f64 = 100.0;

/// Ticks per `cpu.max` accounting period.
pub const CAP_PERIOD_TICKS: u32 = 10;

/// What the runtime measured for one VM over the last tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// CPU time used by the VM's vCPU threads since it started, in ns.
    pub used_ns: u64,
    /// How many of its running (not parked) vCPUs want CPU now.
    pub busy_vcpus: u32,
}

/// How many vCPUs a VM may run until the next tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub vm: VmId,
    pub vcpus: u32,
}

/// Why a VM is held back, for statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Throttle {
    /// Ahead of its share under contention.
    pub fair: bool,
    /// Over its `cpu.max` for this period.
    pub cap: bool,
}

#[derive(Debug, Clone)]
struct VmState {
    weight: u32,
    max: Option<f64>,
    vcpus: u32,
    vtime: f64,
    last_used: u64,
    demand: u32,
    period_used: u64,
    throttle: Throttle,
    throttle_events: u64,
}

/// The policy's state across ticks.
#[derive(Debug, Clone)]
pub struct Policy {
    cpus: u32,
    tick_ns: u64,
    bound: f64,
    tick_in_period: u32,
    vms: BTreeMap<VmId, VmState>,
}

impl Policy {
    /// A policy for `cpus` allowed host CPUs and a tick of `tick_ns`. The
    /// fairness bound is one tick of virtual time.
    pub fn new(cpus: u32, tick_ns: u64) -> Self {
        Policy {
            cpus: cpus.max(1),
            tick_ns,
            bound: tick_ns as f64,
            tick_in_period: 0,
            vms: BTreeMap::new(),
        }
    }

    /// The fairness bound, in ns of virtual time.
    pub fn bound_ns(&self) -> f64 {
        self.bound
    }

    /// Adds a VM. It starts level with the slowest active VM.
    pub fn add_vm(&mut self, vm: VmId, weight: u32, max: Option<f64>, vcpus: u32, used_ns: u64) {
        let vtime = self.min_active_vtime().unwrap_or(0.0);
        self.vms.insert(
            vm,
            VmState {
                weight: weight.max(1),
                max,
                vcpus,
                vtime,
                last_used: used_ns,
                demand: 0,
                period_used: 0,
                throttle: Throttle::default(),
                throttle_events: 0,
            },
        );
    }

    /// Removes a VM (it stopped).
    pub fn remove_vm(&mut self, vm: VmId) {
        self.vms.remove(&vm);
    }

    /// Changes a VM's weight; its past virtual time stays as it was.
    pub fn set_weight(&mut self, vm: VmId, weight: u32) {
        if let Some(s) = self.vms.get_mut(&vm) {
            s.weight = weight.max(1);
        }
    }

    /// Changes a VM's cap.
    pub fn set_max(&mut self, vm: VmId, max: Option<f64>) {
        if let Some(s) = self.vms.get_mut(&vm) {
            s.max = max;
        }
    }

    /// The VM's current throttle state and how often it has been throttled.
    pub fn throttle(&self, vm: VmId) -> Option<(Throttle, u64)> {
        self.vms.get(&vm).map(|s| (s.throttle, s.throttle_events))
    }

    /// The VM's virtual time (ns of CPU at weight 100).
    pub fn vtime(&self, vm: VmId) -> Option<f64> {
        self.vms.get(&vm).map(|s| s.vtime)
    }

    fn min_active_vtime(&self) -> Option<f64> {
        self.vms
            .values()
            .filter(|s| s.demand > 0)
            .map(|s| s.vtime)
            .min_by(f64::total_cmp)
    }

    /// One tick: account `samples` and decide every VM's allowance.
    pub fn tick(&mut self, samples: &[(VmId, Sample)]) -> Vec<Allowance> {
        self.tick_in_period += 1;
        let new_period = self.tick_in_period >= CAP_PERIOD_TICKS;
        if new_period {
            self.tick_in_period = 0;
        }
        let period_ns = self.tick_ns * u64::from(CAP_PERIOD_TICKS);

        for (vm, sample) in samples {
            let Some(s) = self.vms.get_mut(vm) else {
                continue;
            };
            let delta = sample.used_ns.saturating_sub(s.last_used);
            s.last_used = sample.used_ns;
            s.vtime += delta as f64 * UNIT_WEIGHT / f64::from(s.weight);
            s.period_used += delta;
            // A parked vCPU cannot show it wants CPU: while throttled, the
            // VM keeps the demand it had (or more, if more became busy).
            s.demand = if s.throttle.fair || s.throttle.cap {
                s.demand.max(sample.busy_vcpus)
            } else {
                sample.busy_vcpus
            }
            .min(s.vcpus);
            // The cap.
            if new_period {
                s.period_used = 0;
                s.throttle.cap = false;
            }
            if let Some(max) = s.max {
                if s.period_used as f64 >= max * period_ns as f64 && !s.throttle.cap {
                    s.throttle.cap = true;
                    s.throttle_events += 1;
                }
            }
        }

        // How many CPUs each active VM can use at once.
        let usable = |s: &VmState| -> u32 {
            if s.throttle.cap {
                return 0;
            }
            let cap = s.max.map_or(u32::MAX, |m| m.ceil() as u32);
            s.demand.min(cap)
        };
        let wanted: u32 = self.vms.values().map(usable).sum();
        let contended = wanted > self.cpus;

        if !contended {
            // Nobody waits for a CPU: release everyone and level the
            // virtual times so that uncontended use is never held against
            // a VM later.
            let top = self
                .vms
                .values()
                .map(|s| s.vtime)
                .max_by(f64::total_cmp)
                .unwrap_or(0.0);
            for s in self.vms.values_mut() {
                s.throttle.fair = false;
                s.vtime = top;
            }
        } else {
            let runnable_min = self
                .vms
                .values()
                .filter(|s| usable(s) > 0 && !s.throttle.fair)
                .map(|s| s.vtime)
                .min_by(f64::total_cmp);
            let v_min = runnable_min.or_else(|| {
                self.vms
                    .values()
                    .filter(|s| usable(s) > 0)
                    .map(|s| s.vtime)
                    .min_by(f64::total_cmp)
            });
            if let Some(v_min) = v_min {
                let bound = self.bound;
                for s in self.vms.values_mut() {
                    if usable(s) == 0 {
                        // Idle (or capped): no banking of credit.
                        s.vtime = s.vtime.max(v_min - bound);
                        s.throttle.fair = false;
                    } else if s.throttle.fair {
                        if s.vtime <= v_min {
                            s.throttle.fair = false;
                        }
                    } else if s.vtime - v_min > bound {
                        s.throttle.fair = true;
                        s.throttle_events += 1;
                    }
                }
            }
        }

        // Allowances: unthrottled VMs run every vCPU; capped ones none;
        // fairly throttled ones fill whatever CPUs the others leave idle,
        // the least-ahead first.
        let mut gap = i64::from(self.cpus)
            - self
                .vms
                .values()
                .filter(|s| !s.throttle.fair && !s.throttle.cap)
                .map(|s| i64::from(usable(s)))
                .sum::<i64>();
        let mut throttled: Vec<(&VmId, &VmState)> = self
            .vms
            .iter()
            .filter(|(_, s)| s.throttle.fair && !s.throttle.cap)
            .collect();
        throttled.sort_by(|a, b| a.1.vtime.total_cmp(&b.1.vtime));
        let mut partial: BTreeMap<VmId, u32> = BTreeMap::new();
        for (vm, s) in throttled {
            let give = gap.clamp(0, i64::from(usable(s))) as u32;
            gap -= i64::from(give);
            partial.insert(*vm, give);
        }
        self.vms
            .iter()
            .map(|(vm, s)| Allowance {
                vm: *vm,
                vcpus: if s.throttle.cap {
                    0
                } else if s.throttle.fair {
                    partial.get(vm).copied().unwrap_or(0)
                } else {
                    s.vcpus
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: u64 = 10_000_000;

    /// A toy host: `cpus` CPUs shared equally among the runnable vCPU
    /// threads (as Linux's CFS would), each VM with `busy` spinning vCPUs.
    struct Host {
        policy: Policy,
        cpus: u32,
        vms: Vec<(u32, u64)>, // (busy vCPUs, used ns)
        allowed: Vec<u32>,
    }

    impl Host {
        fn new(cpus: u32, vms: &[(u32, u32, u32)]) -> Host {
            // (weight, vcpus, busy)
            let mut policy = Policy::new(cpus, TICK);
            for (i, (w, n, _)) in vms.iter().enumerate() {
                policy.add_vm(i, *w, None, *n, 0);
            }
            Host {
                policy,
                cpus,
                vms: vms.iter().map(|v| (v.2, 0)).collect(),
                allowed: vms.iter().map(|v| v.1).collect(),
            }
        }

        /// Runs one tick of the toy host, then the policy.
        fn step(&mut self) {
            let running: Vec<u32> = self
                .vms
                .iter()
                .zip(&self.allowed)
                .map(|((busy, _), a)| (*busy).min(*a))
                .collect();
            let threads: u32 = running.iter().sum();
            if threads > 0 {
                let per_thread = (TICK * u64::from(self.cpus.min(threads))) / u64::from(threads);
                for (vm, r) in self.vms.iter_mut().zip(&running) {
                    vm.1 += per_thread.min(TICK) * u64::from(*r);
                }
            }
            let samples: Vec<(VmId, Sample)> = self
                .vms
                .iter()
                .enumerate()
                .zip(&running)
                .map(|((i, (_, used)), r)| {
                    (
                        i,
                        Sample {
                            used_ns: *used,
                            busy_vcpus: *r,
                        },
                    )
                })
                .collect();
            for a in self.policy.tick(&samples) {
                self.allowed[a.vm] = a.vcpus;
            }
        }

        fn run(&mut self, ticks: usize) -> Vec<u64> {
            let start: Vec<u64> = self.vms.iter().map(|v| v.1).collect();
            for _ in 0..ticks {
                self.step();
            }
            self.vms.iter().zip(start).map(|(v, s)| v.1 - s).collect()
        }
    }

    fn ratio(a: u64, b: u64) -> f64 {
        a as f64 / b as f64
    }

    #[test]
    fn weights_100_and_300_on_one_cpu_share_1_to_3() {
        let mut host = Host::new(1, &[(100, 1, 1), (300, 1, 1)]);
        host.run(50);
        let used = host.run(1000);
        let r = ratio(used[1], used[0]);
        assert!((r - 3.0).abs() < 0.1, "ratio {r}");
        assert!(
            used[0] + used[1] >= 1000 * TICK * 99 / 100,
            "work conserving"
        );
    }

    #[test]
    fn vcpu_count_does_not_buy_cpu() {
        // 4 busy vCPUs at weight 100 against 1 busy vCPU at weight 100.
        let mut host = Host::new(1, &[(100, 4, 4), (100, 1, 1)]);
        host.run(50);
        let used = host.run(1000);
        let r = ratio(used[0], used[1]);
        assert!((r - 1.0).abs() < 0.05, "ratio {r}");
    }

    #[test]
    fn an_idle_vm_does_not_hold_a_busy_one_back() {
        let mut host = Host::new(1, &[(100, 1, 1), (10_000, 2, 0)]);
        let used = host.run(500);
        assert!(used[0] >= 500 * TICK * 99 / 100, "busy VM got {}", used[0]);
        assert_eq!(used[1], 0);
        assert_eq!(
            host.policy.throttle(0).map(|t| t.1),
            Some(0),
            "never throttled"
        );
    }

    #[test]
    fn no_contention_no_throttling() {
        // Two CPUs, two single-vCPU VMs: each has a CPU of its own, so
        // weights do not matter and nobody is held back.
        let mut host = Host::new(2, &[(100, 1, 1), (300, 1, 1)]);
        let used = host.run(200);
        assert_eq!(used[0], 200 * TICK);
        assert_eq!(used[1], 200 * TICK);
    }

    #[test]
    fn throttled_vm_still_fills_idle_cpus() {
        // Two CPUs: a 4-vCPU VM and a 1-vCPU VM, equal weights. The small
        // VM can use only one CPU; the big one gets the other, not less.
        let mut host = Host::new(2, &[(100, 4, 4), (100, 1, 1)]);
        host.run(50);
        let used = host.run(500);
        assert!((ratio(used[0], used[1]) - 1.0).abs() < 0.05, "{used:?}");
        assert!(used[0] + used[1] >= 2 * 500 * TICK * 98 / 100, "{used:?}");
    }

    #[test]
    fn entitlements_follow_weights_1_2_5() {
        let mut host = Host::new(1, &[(100, 1, 1), (200, 1, 1), (500, 1, 1)]);
        host.run(50);
        let used = host.run(2000);
        let total: u64 = used.iter().sum();
        for (u, w) in used.iter().zip([1.0, 2.0, 5.0]) {
            let share = *u as f64 / total as f64;
            assert!((share - w / 8.0).abs() < 0.01, "{used:?}");
        }
    }

    #[test]
    fn cap_limits_a_vm_even_without_contention() {
        let mut policy = Policy::new(2, TICK);
        policy.add_vm(0, 100, Some(0.5), 1, 0);
        let mut used = 0;
        let mut allowed = 1;
        let mut total = 0;
        for _ in 0..(CAP_PERIOD_TICKS * 20) {
            let d = if allowed > 0 { TICK } else { 0 };
            used += d;
            total += d;
            let a = policy.tick(&[(
                0,
                Sample {
                    used_ns: used,
                    busy_vcpus: allowed.min(1),
                },
            )]);
            allowed = a[0].vcpus;
        }
        let share = total as f64 / (f64::from(CAP_PERIOD_TICKS * 20) * TICK as f64);
        assert!((share - 0.5).abs() < 0.06, "share {share}");
    }

    #[test]
    fn weight_change_at_run_time_moves_the_ratio() {
        let mut host = Host::new(1, &[(100, 1, 1), (100, 1, 1)]);
        let used = host.run(400);
        assert!((ratio(used[1], used[0]) - 1.0).abs() < 0.05);
        host.policy.set_weight(1, 400);
        host.run(50);
        let used = host.run(1000);
        assert!((ratio(used[1], used[0]) - 4.0).abs() < 0.2, "{used:?}");
    }

    #[test]
    fn a_vm_leaving_gives_its_share_to_the_others() {
        let mut host = Host::new(1, &[(100, 1, 1), (300, 1, 1)]);
        host.run(200);
        host.policy.remove_vm(1);
        host.vms[1].0 = 0; // it no longer runs
        host.allowed[1] = 0;
        host.run(20);
        let used = host.run(200);
        assert_eq!(used[0], 200 * TICK, "the remaining VM gets the whole CPU");
    }

    #[test]
    fn a_vm_waking_from_idle_cannot_monopolise_the_cpu() {
        let mut host = Host::new(1, &[(100, 1, 1), (100, 1, 0)]);
        host.run(1000); // VM 1 idle for 10 s
        host.vms[1].0 = 1; // wakes
        let used = host.run(100);
        // Within a second it gets about half, not the whole CPU for seconds.
        assert!(used[0] >= 100 * TICK * 40 / 100, "{used:?}");
    }
}
