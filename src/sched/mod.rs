//! The proportional vCPU scheduler: the policy (`policy.rs`, pure) driven
//! by a timerfd tick in the event loop. Each tick reads every vCPU
//! thread's CPU-time clock (which counts time inside KVM_RUN) and run
//! state, asks the policy how many vCPUs each VM may run, and parks or
//! releases vCPUs through their handles (Throttle/Unthrottle + kick).

pub mod policy;

use std::io;
use std::time::Duration;

use vmm_sys_util::timerfd::TimerFd;

use crate::vm::Vm;
use policy::{Policy, Sample, VmId};

/// Per-VM scheduler figures for statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VmSchedStats {
    /// Whether the VM is held back now (fairness or cap).
    pub throttled: bool,
    /// How many times it has been throttled.
    pub throttle_events: u64,
}

pub struct CpuScheduler {
    policy: Policy,
    tick: Duration,
    timer: TimerFd,
    rotation: usize,
    ticks: u64,
    cost_ns: u64,
}

impl CpuScheduler {
    /// A scheduler for `cpus` allowed host CPUs, ticking every `tick_ms`.
    pub fn new(cpus: usize, tick_ms: u32) -> io::Result<Self> {
        let tick = Duration::from_millis(u64::from(tick_ms.max(1)));
        Ok(CpuScheduler {
            policy: Policy::new(cpus as u32, tick.as_nanos() as u64),
            tick,
            timer: TimerFd::new().map_err(io::Error::from)?,
            rotation: 0,
            ticks: 0,
            cost_ns: 0,
        })
    }

    pub fn timer(&self) -> &TimerFd {
        &self.timer
    }

    /// Arms the periodic tick.
    pub fn start(&mut self) -> io::Result<()> {
        self.timer
            .reset(self.tick, Some(self.tick))
            .map_err(io::Error::from)
    }

    pub fn add_vm(&mut self, id: VmId, vm: &Vm) {
        self.policy.add_vm(
            id,
            vm.cpu.weight,
            vm.cpu.max,
            vm.vcpu_count() as u32,
            vm.cpu_ns(),
        );
    }

    pub fn remove_vm(&mut self, id: VmId) {
        self.policy.remove_vm(id);
    }

    pub fn set_weight(&mut self, id: VmId, weight: u32) {
        self.policy.set_weight(id, weight);
    }

    pub fn set_max(&mut self, id: VmId, max: Option<f64>) {
        self.policy.set_max(id, max);
    }

    /// One tick over the running VMs (`(id, vm)` pairs).
    pub fn on_tick<'a>(&mut self, vms: impl Iterator<Item = (VmId, &'a mut Vm)>) {
        let start = crate::host::current_thread_cpu_ns();
        let _ = self.timer.wait();
        let tick_ns = self.tick.as_nanos() as u64;
        let mut vms: Vec<(VmId, &mut Vm)> = vms.collect();
        let samples: Vec<(VmId, Sample)> = vms
            .iter_mut()
            .map(|(id, vm)| (*id, vm.sample(tick_ns)))
            .collect();
        let allowances = self.policy.tick(&samples);
        self.rotation = self.rotation.wrapping_add(1);
        for a in allowances {
            if let Some((_, vm)) = vms.iter_mut().find(|(id, _)| *id == a.vm) {
                vm.allow_vcpus(a.vcpus as usize, self.rotation);
            }
        }
        self.ticks += 1;
        self.cost_ns += crate::host::current_thread_cpu_ns().saturating_sub(start);
    }

    pub fn vm_stats(&self, id: VmId) -> VmSchedStats {
        self.policy
            .throttle(id)
            .map(|(t, events)| VmSchedStats {
                throttled: t.fair || t.cap,
                throttle_events: events,
            })
            .unwrap_or_default()
    }

    /// Ticks so far and the CPU time they cost the event loop, in ns.
    pub fn cost(&self) -> (u64, u64) {
        (self.ticks, self.cost_ns)
    }
}
