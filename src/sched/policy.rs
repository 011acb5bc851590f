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
//! - a VM that joins while others run starts as an idle VM wakes up,
//!   `bound` behind the slowest established VM, so it boots ahead of the
//!   running VMs for at most `bound` of virtual time;
//! - `cpu.max` is a hard cap, accounted as CFS bandwidth control does: each
//!   period (10 ticks) grants a quota of `max × period` of CPU; a VM that
//!   has used its quota is parked until a period refills it, and what it
//!   used beyond the quota (it can only be stopped at a tick or at a
//!   deadline, so it always overruns a little) is carried into the next
//!   period as debt. [`Policy::next_deadline_ns`] tells the runtime when
//!   the first capped VM may run out, so that it can check between ticks
//!   ([`Policy::check_caps`]) instead of letting the VM overrun by a tick.

use std::collections::BTreeMap;

/// A VM's identity in the policy (the monitor's VM index).
pub type VmId = usize;

/// Weight that makes virtual time equal CPU time.
const UNIT_WEIGHT: f64 = 100.0;

/// Ticks per `cpu.max` accounting period.
pub const CAP_PERIOD_TICKS: u32 = 10;

/// The shortest delay [`Policy::next_deadline_ns`] asks for: a VM with less
/// quota left than this overruns by at most this much (carried as debt)
/// rather than making the runtime wake up over and over.
pub const MIN_CAP_CHECK_NS: u64 = 200_000;

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
    /// CPU used in this cap period, including debt carried from earlier ones.
    period_used: u64,
    /// The vCPUs it was last allowed to run.
    allowed: u32,
    throttle: Throttle,
    throttle_events: u64,
    /// Added with a join credit and not yet caught up with the slowest
    /// established VM (the reference a later VM joins against).
    joining: bool,
}

impl VmState {
    /// Accounts CPU used up to `used_ns` (the VM's total).
    fn account(&mut self, used_ns: u64) {
        let delta = used_ns.saturating_sub(self.last_used);
        self.last_used = used_ns;
        self.vtime += delta as f64 * UNIT_WEIGHT / f64::from(self.weight);
        self.period_used = self.period_used.saturating_add(delta);
    }

    /// The CPU a period grants under the cap, in ns.
    fn quota(&self, period_ns: u64) -> Option<u64> {
        self.max.map(|m| (m * period_ns as f64) as u64)
    }

    /// Parks the VM if it has used its quota; true when it was just parked.
    fn enforce_cap(&mut self, period_ns: u64) -> bool {
        match self.quota(period_ns) {
            Some(q) if !self.throttle.cap && self.period_used >= q => {
                self.throttle.cap = true;
                self.throttle_events += 1;
                true
            }
            _ => false,
        }
    }

    /// A new period: the quota refills, paying the debt first. Unused
    /// quota is not carried (no banking).
    fn new_period(&mut self, period_ns: u64) {
        match self.quota(period_ns) {
            Some(q) => {
                self.period_used = self.period_used.saturating_sub(q);
                if self.period_used < q {
                    self.throttle.cap = false;
                }
            }
            None => {
                self.period_used = 0;
                self.throttle.cap = false;
            }
        }
    }

    /// How many CPUs it can use at once now.
    fn usable(&self) -> u32 {
        if self.throttle.cap {
            return 0;
        }
        let cap = self.max.map_or(u32::MAX, |m| m.ceil() as u32);
        self.demand.min(cap)
    }
}

/// The policy's state across ticks.
#[derive(Debug, Clone)]
pub struct Policy {
    cpus: u32,
    tick_ns: u64,
    bound: f64,
    tick_in_period: u32,
    vms: BTreeMap<VmId, VmState>,
    /// The throttled VMs of a tick, in the order they get idle CPUs.
    throttled: Vec<(VmId, f64, u32)>,
    /// The last tick's allowances. Both kept so that a tick allocates
    /// nothing once they have grown to the number of VMs.
    allowances: Vec<Allowance>,
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
            throttled: Vec::new(),
            allowances: Vec::new(),
        }
    }

    /// The fairness bound, in ns of virtual time.
    pub fn bound_ns(&self) -> f64 {
        self.bound
    }

    fn period_ns(&self) -> u64 {
        self.tick_ns * u64::from(CAP_PERIOD_TICKS)
    }

    /// Adds a VM. It joins as an idle VM wakes up: `bound` behind the
    /// slowest active established VM, so that it boots at once instead of
    /// waiting for a 1/N share (but gets at most `bound` ahead of its
    /// share). VMs that join together all join against the same
    /// established VM, so a burst of N joins costs the others at most
    /// N × `bound` of virtual time, not more for every later one. With no
    /// established VM to join against, it starts level with the slowest
    /// active VM. It is charged for the part of the current cap period
    /// already gone (a VM starting late in a period does not get a whole
    /// quota for it).
    pub fn add_vm(&mut self, vm: VmId, weight: u32, max: Option<f64>, vcpus: u32, used_ns: u64) {
        let (vtime, joining) = match self.min_established_vtime() {
            Some(v) => (v - self.bound, true),
            None => (self.min_active_vtime().unwrap_or(0.0), false),
        };
        let period_used = max.map_or(0, |m| {
            let gone = f64::from(self.tick_in_period) / f64::from(CAP_PERIOD_TICKS);
            (m * self.period_ns() as f64 * gone) as u64
        });
        self.vms.insert(
            vm,
            VmState {
                weight: weight.max(1),
                max,
                vcpus,
                vtime,
                last_used: used_ns,
                demand: 0,
                period_used,
                allowed: vcpus,
                throttle: Throttle::default(),
                throttle_events: 0,
                joining,
            },
        );
        // Room for every VM in the tick's buffers, so no tick grows them.
        let n = self.vms.len();
        self.throttled
            .reserve(n.saturating_sub(self.throttled.len()));
        self.allowances
            .reserve(n.saturating_sub(self.allowances.len()));
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

    /// Changes a VM's cap. What it used in this period counts against the
    /// new cap; removing the cap forgives its debt.
    pub fn set_max(&mut self, vm: VmId, max: Option<f64>) {
        if let Some(s) = self.vms.get_mut(&vm) {
            s.max = max;
            if max.is_none() {
                s.period_used = 0;
                s.throttle.cap = false;
            }
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

    /// The slowest active VM that is not catching up after joining.
    fn min_established_vtime(&self) -> Option<f64> {
        self.vms
            .values()
            .filter(|s| s.demand > 0 && !s.joining)
            .map(|s| s.vtime)
            .min_by(f64::total_cmp)
    }

    /// A joining VM is established once it has caught up with the slowest
    /// established VM (or there is none left to catch up with).
    fn settle_joiners(&mut self) {
        let reference = self.min_established_vtime();
        for s in self.vms.values_mut().filter(|s| s.joining) {
            if reference.is_none_or(|v| s.vtime >= v) {
                s.joining = false;
            }
        }
    }

    fn min_active_vtime(&self) -> Option<f64> {
        self.vms
            .values()
            .filter(|s| s.demand > 0)
            .map(|s| s.vtime)
            .min_by(f64::total_cmp)
    }

    /// One tick: account `samples` and decide every VM's allowance. Call
    /// once per periodic tick (the cap periods count these calls).
    pub fn tick(&mut self, samples: &[(VmId, Sample)]) -> &[Allowance] {
        self.tick_in_period += 1;
        let new_period = self.tick_in_period >= CAP_PERIOD_TICKS;
        if new_period {
            self.tick_in_period = 0;
        }
        let period_ns = self.period_ns();

        for (vm, sample) in samples {
            let Some(s) = self.vms.get_mut(vm) else {
                continue;
            };
            // The CPU used since the last sample belongs to the period
            // that is ending: account it before the refill.
            s.account(sample.used_ns);
            // A parked vCPU cannot show it wants CPU: while throttled, the
            // VM keeps the demand it had (or more, if more became busy).
            s.demand = if s.throttle.fair || s.throttle.cap {
                s.demand.max(sample.busy_vcpus)
            } else {
                sample.busy_vcpus
            }
            .min(s.vcpus);
        }
        for s in self.vms.values_mut() {
            if new_period {
                s.new_period(period_ns);
            }
            s.enforce_cap(period_ns);
        }

        self.settle_joiners();
        let wanted: u32 = self.vms.values().map(VmState::usable).sum();
        if wanted > self.cpus {
            self.throttle_the_leaders();
        } else {
            self.level();
        }
        self.allowances()
    }

    /// Nobody waits for a CPU: release everyone and level the virtual times
    /// so that uncontended use is never held against a VM later.
    fn level(&mut self) {
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
    }

    /// Under contention: throttle the VMs more than `bound` ahead of the
    /// slowest runnable one, release those that it has caught up with.
    fn throttle_the_leaders(&mut self) {
        let runnable_min = self
            .vms
            .values()
            .filter(|s| s.usable() > 0 && !s.throttle.fair)
            .map(|s| s.vtime)
            .min_by(f64::total_cmp);
        let v_min = runnable_min.or_else(|| {
            self.vms
                .values()
                .filter(|s| s.usable() > 0)
                .map(|s| s.vtime)
                .min_by(f64::total_cmp)
        });
        let Some(v_min) = v_min else {
            return;
        };
        let bound = self.bound;
        for s in self.vms.values_mut() {
            if s.usable() == 0 {
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

    /// Unthrottled VMs run every vCPU; capped ones none; fairly throttled
    /// ones fill whatever CPUs the others leave idle, the least-ahead first.
    fn allowances(&mut self) -> &[Allowance] {
        let mut gap = i64::from(self.cpus)
            - self
                .vms
                .values()
                .filter(|s| !s.throttle.fair && !s.throttle.cap)
                .map(|s| i64::from(s.usable()))
                .sum::<i64>();
        for s in self.vms.values_mut() {
            s.allowed = if s.throttle.cap || s.throttle.fair {
                0
            } else {
                s.vcpus
            };
        }
        self.throttled.clear();
        self.throttled.extend(
            self.vms
                .iter()
                .filter(|(_, s)| s.throttle.fair && !s.throttle.cap)
                .map(|(vm, s)| (*vm, s.vtime, s.usable())),
        );
        // Unstable: a stable sort allocates a buffer for more than 20.
        self.throttled
            .sort_unstable_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        for &(vm, _, usable) in &self.throttled {
            let give = gap.clamp(0, i64::from(usable)) as u32;
            gap -= i64::from(give);
            if let Some(s) = self.vms.get_mut(&vm) {
                s.allowed = give;
            }
        }
        self.allowances.clear();
        self.allowances
            .extend(self.vms.iter().map(|(vm, s)| Allowance {
                vm: *vm,
                vcpus: s.allowed,
            }));
        &self.allowances
    }

    /// When, in ns after the samples of the last [`Policy::tick`] or
    /// [`Policy::check_caps`], the first capped VM may run out of quota
    /// (if all the vCPUs it may run spin on a CPU each), at least
    /// [`MIN_CAP_CHECK_NS`]; `None` when no running VM has a cap. After
    /// every tick and check the runtime arms a one-shot timer for it (or
    /// disarms the timer on `None`) and, when it fires, calls
    /// [`Policy::check_caps`]. A deadline past the next tick is harmless:
    /// that tick re-arms the timer.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        let period_ns = self.period_ns();
        self.vms
            .values()
            .filter(|s| !s.throttle.cap && s.allowed > 0)
            .filter_map(|s| {
                let left = s.quota(period_ns)?.saturating_sub(s.period_used);
                let rate = u64::from(s.allowed.min(self.cpus));
                Some((left / rate).max(MIN_CAP_CHECK_NS))
            })
            .min()
    }

    /// A check between ticks: accounts each VM's CPU total (`used`: VM and
    /// the sum of its vCPU threads' CPU clocks, in ns) and parks the VMs
    /// that have used their quota. Returns only the allowances that changed
    /// (always to 0 vCPUs); the others stand until the next tick. Does not
    /// count as a tick.
    pub fn check_caps(&mut self, used: &[(VmId, u64)]) -> Vec<Allowance> {
        let period_ns = self.period_ns();
        let mut parked = Vec::new();
        for (vm, used_ns) in used {
            let Some(s) = self.vms.get_mut(vm) else {
                continue;
            };
            s.account(*used_ns);
            if s.enforce_cap(period_ns) {
                s.allowed = 0;
                parked.push(Allowance { vm: *vm, vcpus: 0 });
            }
        }
        parked
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "policy_cap_tests.rs"]
mod cap_tests;
