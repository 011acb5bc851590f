//! What the control socket can do to the monitor (`api::Control`), and
//! the statistics document (`--stats-file`, `hearth ctl stats`).

use std::borrow::Cow;
use std::path::Path;

use serde_json::{json, Value};

use super::retry::{DeviceRequest, Limiter};
use super::workers::{Job, Launch};
use super::{AfterStop, Monitor, VmEntry, VmId, VmState};
use crate::api::{Answer, Control, Waiter, STOPPED_BY_API};
use crate::config::VmSpec;
use crate::config::{CpuSpec, MAX_CPU_WEIGHT, MIN_CPU_WEIGHT};
use crate::lifecycle::VmOutcome;
use crate::sched::VmSchedStats;
use crate::stats::{self, VmStats};
use crate::vcpu::VcpuCommand;
use crate::verifier::VerifierStats;

impl Monitor {
    /// One VM's statistics now; `acl` is a recycled `VerifierStats` whose
    /// room its access counters take.
    fn vm_stats(&self, id: VmId, e: &VmEntry, acl: VerifierStats) -> VmStats {
        let base = VmStats {
            name: e.label.clone(),
            state: e.state_name(),
            vcpus: e.vcpus(),
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
            net_share: None,
            io: e.last_io.clone(),
        };
        match &e.state {
            VmState::Running(vm) => VmStats {
                cpu_ns: vm.cpu_ns(),
                sched: self.sched.vm_stats(id),
                parked_vcpus: self.sched.parked_vcpus(id),
                exits: vm.exit_stats(),
                acl: vm.verifier.stats_into(acl),
                balloon: vm.devices.balloon.as_ref().map(|b| self.mem.stats(id, b)),
                net: vm.devices.net.iter().map(|n| n.stats()).collect(),
                vsock: vm.devices.vsock.as_ref().map(|v| v.stats()),
                net_share: self.net.vm_stats(id).map(|s| {
                    json!({
                        "weight": e.net_weight,
                        "bytes": s.bytes,
                        "ops": s.ops,
                        "throttle_events": s.throttle_events,
                        "throttled_ns": s.throttled_ns,
                    })
                }),
                io: vm
                    .devices
                    .disks
                    .as_ref()
                    .map(|d| d.to_json(e.io_weight, self.io.vm_stats(id))),
                ..base
            },
            VmState::Building | VmState::Created(_) | VmState::Stopping => base,
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

    /// The figures as they are now (called on the event loop).
    pub(super) fn stats_snapshot(&self) -> stats::Snapshot {
        self.stats_snapshot_in(None)
    }

    /// [`Monitor::stats_snapshot`] in the room of `spare`, a snapshot the
    /// statistics writer has written: its vector of VMs and each VM's
    /// access counters are reused, so that once a second the real-time
    /// loop allocates nothing per VM (for a VM without virtio devices),
    /// and shares malloc's lock with the other threads that much less.
    fn stats_snapshot_in(&self, spare: Option<stats::Snapshot>) -> stats::Snapshot {
        let mut vms = spare.map(|s| s.vms).unwrap_or_default();
        vms.truncate(self.vms.len());
        let recycled = vms.len();
        for (i, (id, e)) in self.vms.iter().enumerate() {
            if i < recycled {
                let acl = std::mem::take(&mut vms[i].acl);
                vms[i] = self.vm_stats(*id, e, acl);
            } else {
                vms.push(self.vm_stats(*id, e, VerifierStats::default()));
            }
        }
        let (sched_ticks, sched_cost_ns) = self.sched.cost();
        let (mem_ticks, mem_cost) = self.mem.cost();
        stats::Snapshot {
            elapsed_s: self.started.elapsed().as_secs_f64(),
            vms,
            sched_ticks,
            sched_cost_ns,
            sched_clock_reads: self.sched.clock_reads(),
            monitor_cpu_ns: crate::host::current_thread_cpu_ns(),
            jitter: self.sched.jitter(),
            memory: (self.mem.budget_mib(), mem_ticks, mem_cost, self.mem.busy()),
            io: share_json(&self.io),
            net: share_json(&self.net),
        }
    }

    /// Hands the statistics file its figures; `last` waits until they are
    /// written (the monitor's final figures).
    pub(super) fn write_stats(&self, last: bool) {
        if let Some(writer) = &self.stats_file {
            writer.submit(self.stats_snapshot_in(writer.take_spare()), last);
        }
    }
}

impl VmEntry {
    /// "building", "created", "running", "paused", "stopping" or how it
    /// ended (only that one is made, not borrowed).
    fn state_name(&self) -> Cow<'static, str> {
        match &self.state {
            VmState::Running(_) if self.paused => Cow::Borrowed("paused"),
            VmState::Stopped(r) => Cow::Owned(r.outcome.to_string()),
            other => Cow::Borrowed(other.name()),
        }
    }
}

/// A host budget's figures (`host.io`, `host.net`).
fn share_json(runtime: &crate::share::ShareRuntime) -> stats::ShareJson {
    let (ticks, cost_ns) = runtime.cost();
    let budget = runtime.budget();
    stats::ShareJson {
        bytes_per_s: budget.and_then(|b| b.bytes_per_s),
        cost_ns,
        missed_ticks: runtime.missed_ticks(),
        ops_per_s: budget.and_then(|b| b.ops_per_s),
        ticks,
    }
}

/// Why a sandboxed monitor builds no VM after start-up.
const SANDBOXED: &str = "this monitor runs in its sandbox: it opens no file after start-up, \
     so it builds no VM (list the VMs in its monitor file instead)";

impl Monitor {
    /// Validates a VM definition for this monitor: as a VM of its file
    /// would be, against its host policy and the VMs it holds.
    fn validate_new(&self, definition: &Value, base_dir: &Path) -> Result<VmSpec, String> {
        let holding: Vec<VmSpec> = self
            .vms
            .values()
            .filter(|e| !matches!(e.state, VmState::Stopped(_)))
            .map(|e| (*e.spec).clone())
            .collect();
        let spec = crate::config::parse_vm_for_monitor(
            &definition.to_string(),
            base_dir,
            &self.host,
            &holding,
        )
        .map_err(|e| e.to_string())?;
        if self.by_name(&spec.name).is_some() {
            return Err(format!(
                "name: {:?} is already used by a VM of this monitor (delete it first)",
                spec.name
            ));
        }
        if spec.serial.stdin {
            return Err(
                "serial.stdin: true, but a VM added at run time cannot read the monitor's stdin"
                    .into(),
            );
        }
        Ok(spec)
    }
}

/// The control socket's view of the monitor (`api::ops`). VMs are named
/// by their position in creation order.
impl Control for Monitor {
    fn vm_names(&self) -> Vec<String> {
        self.vms.values().map(|e| e.name.clone()).collect()
    }

    fn stats_json(&self) -> serde_json::Value {
        self.stats_snapshot().into_json()
    }

    fn is_running(&self, vm: usize) -> bool {
        self.nth(vm)
            .and_then(|(_, e)| e.running())
            .is_some_and(|v| !v.shared.stopping())
    }

    fn vcpus(&self, vm: usize) -> usize {
        self.nth(vm).map_or(0, |(_, e)| e.vcpus())
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
            v.request_stop(VmOutcome::Stopped(why.to_string()));
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

    fn create(
        &mut self,
        definition: Value,
        base_dir: &Path,
        start: bool,
        waiter: Waiter,
    ) -> Result<Answer, String> {
        if self.shutting_down {
            return Err("the monitor is shutting down".into());
        }
        if self.host.sandbox.is_some() {
            return Err(SANDBOXED.into());
        }
        let spec = self.validate_new(&definition, base_dir)?;
        let id = self.next_id;
        self.next_id += 1;
        let mut entry = VmEntry::new(spec);
        entry.waiting.push(waiter);
        self.vms.insert(id, entry);
        self.build(id, if start { Launch::Now } else { Launch::Later });
        Ok(Answer::Later)
    }

    fn start(&mut self, vm: usize, waiter: Waiter) -> Result<Answer, String> {
        let (id, e) = self.nth_mut(vm).ok_or("no such VM")?;
        if !matches!(e.state, VmState::Created(_)) {
            return Err(format!("vm {} is {}, not created", e.name, e.state_name()));
        }
        let Some(VmState::Created(vm)) = e.transition(VmState::Building) else {
            return Err("internal: the VM changed state".into());
        };
        e.waiting.push(waiter);
        self.submit(Job::Start { id, vm });
        Ok(Answer::Later)
    }

    fn delete(&mut self, vm: usize, waiter: Waiter) -> Result<Answer, String> {
        let (id, e) = self.nth_mut(vm).ok_or("no such VM")?;
        match &e.state {
            VmState::Stopped(_) => {
                let name = e.name.clone();
                if let Some(e) = self.vms.remove(&id) {
                    if let Some(ring) = &e.output {
                        self.plan.terminal.remove(ring);
                    }
                }
                Ok(Answer::Now(json!({"vm": name, "state": "deleted"})))
            }
            VmState::Building => Err(format!("vm {} is being built; try again", e.name)),
            _ => {
                e.after_stop = AfterStop::Delete;
                e.waiting.push(waiter);
                self.stop_vm(id, STOPPED_BY_API);
                Ok(Answer::Later)
            }
        }
    }

    fn restart(&mut self, vm: usize, waiter: Waiter) -> Result<Answer, String> {
        if self.host.sandbox.is_some() {
            return Err(SANDBOXED.into());
        }
        let terminal = self.plan.terminal.clone();
        let (id, e) = self.nth_mut(vm).ok_or("no such VM")?;
        match &e.state {
            VmState::Building => Err(format!("vm {} is being built; try again", e.name)),
            VmState::Stopped(_) => {
                e.waiting.push(waiter);
                e.last_balloon = None;
                e.last_net.clear();
                e.last_vsock = None;
                e.last_io = None;
                if let Some(ring) = e.output.take() {
                    terminal.remove(&ring);
                }
                e.transition(VmState::Building);
                self.build(id, Launch::Now);
                Ok(Answer::Later)
            }
            _ => {
                e.after_stop = AfterStop::Restart;
                e.waiting.push(waiter);
                self.stop_vm(id, "restarting");
                Ok(Answer::Later)
            }
        }
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
        let Some(index) = v.devices.net.iter().position(|n| n.id == iface) else {
            let ids: Vec<&str> = v.devices.net.iter().map(|n| n.id.as_str()).collect();
            return Err(format!(
                "vm {} has no interface {iface:?} (its interfaces: {ids:?})",
                e.name
            ));
        };
        for (dir, patch) in [(Direction::Rx, rx), (Direction::Tx, tx)] {
            if let Some(patch) = patch {
                let (bandwidth, ops) = patch.updates();
                let req = DeviceRequest::limits(Limiter::Net(index, dir), bandwidth, ops);
                self.device_request(vm, req)?;
            }
        }
        // What it reports: the new buckets, whether or not they have
        // reached the device yet.
        let (_, e) = self.nth(vm).ok_or_else(|| "no such VM".to_string())?;
        let net = e
            .running()
            .and_then(|v| v.devices.net.get(index))
            .ok_or("the interface is gone")?;
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
            VmState::Running(v) | VmState::Created(v) => Ok(v.verifier.stats().to_json()),
            VmState::Stopped(r) => Ok(r.acl.to_json()),
            other => Err(format!("vm {} is {}", e.name, other.name())),
        }
    }

    fn send_ctrl_alt_del(&mut self, vm: usize) -> Result<(), String> {
        self.device_request(vm, DeviceRequest::CtrlAltDel)
    }

    fn firecracker_apis(&self) -> Option<std::sync::Arc<crate::fcapi::Registry>> {
        self.fc_apis.clone()
    }

    fn set_balloon(&mut self, vm: usize, amount_mib: u64) -> Result<serde_json::Value, String> {
        if self.mem.budget_mib().is_some() {
            return Err(
                "this monitor's memory allocator sizes every balloon (host.memory); \
                        change the VM's memory weight or floor instead (set-memory)"
                    .into(),
            );
        }
        let (_, e) = self.nth(vm).ok_or("no such VM")?;
        let v = e
            .running()
            .ok_or_else(|| format!("vm {} is not running", e.name))?;
        let b = v
            .devices
            .balloon
            .as_ref()
            .ok_or("No balloon device found.")?;
        if amount_mib > b.size_mib {
            return Err(format!(
                "Amount of pages requested is too large: {amount_mib} MiB, the VM has {} MiB",
                b.size_mib
            ));
        }
        let name = e.name.clone();
        self.device_request(vm, DeviceRequest::Balloon { mib: amount_mib })?;
        Ok(json!({"vm": name, "amount_mib": amount_mib}))
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
        fn disks(m: &Monitor, vm: usize) -> Option<&crate::virtio::block::VmDisks> {
            m.nth(vm)?.1.running()?.devices.disks.as_ref()
        }
        let Some(index) = disks(self, vm).and_then(|d| d.drives.iter().position(|h| h.id == drive))
        else {
            let name = self.nth(vm).map(|(_, e)| e.name.clone());
            return Err(match name {
                Some(name) => format!("vm {name} has no drive {drive:?}"),
                None => "no such VM".to_string(),
            });
        };
        let req = DeviceRequest::limits(Limiter::Drive(index), bandwidth, ops);
        self.device_request(vm, req)?;
        // What it reports: the new buckets, whether or not they have
        // reached the device yet.
        disks(self, vm)
            .and_then(|d| d.drives.get(index))
            .map(|h| h.stats().to_json())
            .ok_or_else(|| "the drive is gone".to_string())
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
