//! What the control socket can do to the monitor (`api::Control`), and
//! the statistics document (`--stats-file`, `hearth ctl stats`).

use super::{Monitor, VmEntry, VmId, VmState};
use crate::api::Control;
use crate::config::{CpuSpec, MAX_CPU_WEIGHT, MIN_CPU_WEIGHT};
use crate::lifecycle::VmOutcome;
use crate::sched::VmSchedStats;
use crate::stats::{self, VmStats};
use crate::vcpu::VcpuCommand;

impl Monitor {
    /// One VM's statistics now.
    fn vm_stats(&self, id: VmId, e: &VmEntry) -> VmStats {
        let base = VmStats {
            name: e.name.clone(),
            state: e.state_name(),
            vcpus: e.vcpus,
            weight: e.cpu.weight,
            max: e.cpu.max,
            cpu_ns: 0,
            sched: VmSchedStats::default(),
            parked_vcpus: 0,
            exits: Default::default(),
            acl: Default::default(),
            balloon: e.last_balloon.clone(),
            serial: e.output.as_ref().map(|r| (r.written(), r.dropped())),
            io: e.last_io.clone(),
        };
        match &e.state {
            VmState::Running(vm) => VmStats {
                cpu_ns: vm.cpu_ns(),
                sched: self.sched.vm_stats(id),
                parked_vcpus: self.sched.parked_vcpus(id),
                exits: vm.exit_stats(),
                acl: vm.verifier.stats(),
                balloon: vm.devices.balloon.as_ref().map(|b| self.mem.stats(id, b)),
                io: vm
                    .devices
                    .disks
                    .as_ref()
                    .map(|d| d.to_json(e.io_weight, self.io.vm_stats(id))),
                ..base
            },
            VmState::Stopping => base,
            VmState::Stopped(r) => VmStats {
                cpu_ns: r.cpu_ns,
                sched: VmSchedStats {
                    throttled: false,
                    throttle_events: r.throttle_events,
                },
                exits: r.exits,
                acl: r.acl.clone(),
                ..base
            },
        }
    }

    pub(super) fn write_stats(&self) {
        let Some(path) = &self.stats_file else { return };
        let value = self.stats_json();
        if let Err(e) = stats::write_atomically(path, &value) {
            log::warn!("cannot write statistics to {}: {e}", path.display());
        }
    }
}

impl VmEntry {
    /// "running", "paused", "stopping" or how it ended.
    fn state_name(&self) -> String {
        match &self.state {
            VmState::Running(_) if self.paused => "paused".into(),
            VmState::Running(_) => "running".into(),
            VmState::Stopping => "stopping".into(),
            VmState::Stopped(r) => r.outcome.to_string(),
        }
    }
}

/// The control socket's view of the monitor (`api::ops`). VMs are named
/// by their position in creation order.
impl Control for Monitor {
    fn vm_names(&self) -> Vec<String> {
        self.vms.values().map(|e| e.name.clone()).collect()
    }

    fn stats_json(&self) -> serde_json::Value {
        let (ticks, cost) = self.sched.cost();
        let vms: Vec<VmStats> = self
            .vms
            .iter()
            .map(|(id, e)| self.vm_stats(*id, e))
            .collect();
        let mut value = stats::to_json(
            self.started.elapsed().as_secs_f64(),
            &vms,
            ticks,
            cost,
            crate::host::current_thread_cpu_ns(),
        );
        let (mem_ticks, mem_cost) = self.mem.cost();
        stats::add_memory(&mut value, self.mem.budget_mib(), mem_ticks, mem_cost);
        let (io_ticks, io_cost) = self.io.cost();
        let budget = self.io.budget();
        value["io"] = serde_json::json!({
            "bytes_per_s": budget.and_then(|b| b.bytes_per_s),
            "ops_per_s": budget.and_then(|b| b.ops_per_s),
            "ticks": io_ticks,
            "missed_ticks": self.io.missed_ticks(),
            "cost_ns": io_cost,
        });
        value
    }

    fn is_running(&self, vm: usize) -> bool {
        self.nth(vm)
            .and_then(|(_, e)| e.running())
            .is_some_and(|v| !v.shared.stopping())
    }

    fn vcpus(&self, vm: usize) -> usize {
        self.nth(vm).map_or(0, |(_, e)| e.vcpus)
    }

    fn set_paused(&mut self, vm: usize, paused: bool) {
        if let Some((_, e)) = self.nth_mut(vm) {
            if let Some(v) = e.running() {
                v.command(if paused {
                    VcpuCommand::Pause
                } else {
                    VcpuCommand::Resume
                });
                e.paused = paused;
            }
        }
    }

    fn stop(&mut self, vm: usize, why: &str) {
        if let Some(v) = self.nth(vm).and_then(|(_, e)| e.running()) {
            v.shared.request_stop(VmOutcome::Stopped(why.to_string()));
        }
    }

    fn cpu(&self, vm: usize) -> CpuSpec {
        self.nth(vm).map(|(_, e)| e.cpu.clone()).unwrap_or_default()
    }

    fn set_cpu(&mut self, vm: usize, cpu: CpuSpec) {
        let Some((id, e)) = self.nth_mut(vm) else {
            return;
        };
        e.cpu = cpu.clone();
        self.sched.set_weight(id, cpu.weight);
        self.sched.set_max(id, cpu.max);
    }

    fn shutdown(&mut self, why: &str) {
        self.stop_all(why);
    }

    fn access_counters(&self, vm: usize) -> Result<serde_json::Value, String> {
        let (_, e) = self.nth(vm).ok_or_else(|| "no such VM".to_string())?;
        match &e.state {
            VmState::Running(v) => Ok(v.verifier.stats().to_json()),
            VmState::Stopped(r) => Ok(r.acl.to_json()),
            VmState::Stopping => Err(format!("vm {} is stopping", e.name)),
        }
    }

    fn set_io_weight(&mut self, vm: usize, weight: u32) -> Result<serde_json::Value, String> {
        let Some((id, e)) = self.nth_mut(vm) else {
            return Err("no such VM".into());
        };
        let name = e.name.clone();
        e.io_weight = weight;
        self.io.set_weight(id, weight);
        Ok(serde_json::json!({"vm": name, "io_weight": weight}))
    }

    fn set_drive_limits(
        &mut self,
        vm: usize,
        drive: &str,
        bandwidth: crate::ratelimit::BucketUpdate,
        ops: crate::ratelimit::BucketUpdate,
    ) -> Result<serde_json::Value, String> {
        let (_, e) = self.nth(vm).ok_or_else(|| "no such VM".to_string())?;
        let disks = e.running().and_then(|v| v.devices.disks.as_ref());
        let Some(handle) = disks.and_then(|d| d.drive(drive)) else {
            return Err(format!("vm {} has no drive {drive:?}", e.name));
        };
        handle.update_limits(bandwidth, ops);
        Ok(handle.stats().to_json())
    }

    fn set_memory(
        &mut self,
        vm: usize,
        weight: Option<u64>,
        floor_mib: Option<u64>,
    ) -> Result<serde_json::Value, String> {
        // The same range as memory.weight in a config file.
        const RANGE: std::ops::RangeInclusive<u32> = MIN_CPU_WEIGHT..=MAX_CPU_WEIGHT;
        let weight = match weight {
            Some(w) => match u32::try_from(w) {
                Ok(w) if RANGE.contains(&w) => Some(w),
                _ => {
                    return Err(format!(
                        "memory weight {w} is out of range ({MIN_CPU_WEIGHT}..={MAX_CPU_WEIGHT})"
                    ))
                }
            },
            None => None,
        };
        let Some((id, _)) = self.nth(vm) else {
            return Err("no such VM".into());
        };
        let limits = self.mem.set_limits(id, weight, floor_mib)?;
        if let Some((_, e)) = self.nth_mut(vm) {
            e.memory.weight = limits.weight;
            e.memory.floor_mib = limits.floor;
        }
        Ok(serde_json::json!({"weight": limits.weight, "floor_mib": limits.floor}))
    }
}
