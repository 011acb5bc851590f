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
            net: e.last_net.clone(),
            vsock: e.last_vsock.clone(),
        };
        match &e.state {
            VmState::Running(vm) => VmStats {
                cpu_ns: vm.cpu_ns(),
                sched: self.sched.vm_stats(id),
                parked_vcpus: self.sched.parked_vcpus(id),
                exits: vm.exit_stats(),
                acl: vm.verifier.stats(),
                balloon: vm.devices.balloon.as_ref().map(|b| self.mem.stats(id, b)),
                net: vm.devices.net.iter().map(|n| n.stats()).collect(),
                vsock: vm.devices.vsock.as_ref().map(|v| v.stats()),
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

    fn set_net(
        &mut self,
        vm: usize,
        iface: &str,
        rx: Option<crate::api::limits::LimiterPatch>,
        tx: Option<crate::api::limits::LimiterPatch>,
    ) -> Result<serde_json::Value, String> {
        use crate::virtio::net::Direction;
        let (_, e) = self.nth(vm).ok_or_else(|| "no such VM".to_string())?;
        let v = e
            .running()
            .ok_or_else(|| format!("vm {} has stopped", e.name))?;
        let net = v
            .devices
            .net
            .iter()
            .find(|n| n.id == iface)
            .ok_or_else(|| {
                let ids: Vec<&str> = v.devices.net.iter().map(|n| n.id.as_str()).collect();
                format!(
                    "vm {} has no interface {iface:?} (its interfaces: {ids:?})",
                    e.name
                )
            })?;
        for (dir, patch) in [(Direction::Rx, rx), (Direction::Tx, tx)] {
            if let Some(patch) = patch {
                let (bandwidth, ops) = patch.updates();
                net.update_limiter(dir, bandwidth, ops);
            }
        }
        let show = |d| crate::api::limits::limiter_json(&net.limiter_spec(d));
        Ok(serde_json::json!({
            "vm": e.name,
            "iface": iface,
            "rx_rate_limiter": show(Direction::Rx),
            "tx_rate_limiter": show(Direction::Tx),
        }))
    }

    fn access_counters(&self, vm: usize) -> Result<serde_json::Value, String> {
        let (_, e) = self.nth(vm).ok_or_else(|| "no such VM".to_string())?;
        match &e.state {
            VmState::Running(v) => Ok(v.verifier.stats().to_json()),
            VmState::Stopped(r) => Ok(r.acl.to_json()),
            VmState::Stopping => Err(format!("vm {} is stopping", e.name)),
        }
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
