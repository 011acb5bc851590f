//! What each request does, against the monitor seen through [`Control`].
//! The monitor implements `Control`; everything here is plain logic,
//! unit-tested with a fake.

use serde_json::{json, Value};

use std::path::{Path, PathBuf};

use crate::config::{CpuSpec, Grant, MAX_CPU_WEIGHT, MAX_IO_WEIGHT, MIN_CPU_WEIGHT, MIN_IO_WEIGHT};
use crate::ratelimit::BucketUpdate;

use super::deferred::{Answer, Waiter};

use super::acl::{Acl, Peer};
use super::protocol::Request;

/// Why a VM was stopped through the socket (its outcome in stats and logs).
pub const STOPPED_BY_API: &str = "stopped through the control socket";

/// The monitor's side of the control API. VMs are named by their index
/// in [`Control::vm_names`].
pub trait Control {
    /// Every VM's name, in order (stopped ones too).
    fn vm_names(&self) -> Vec<String>;
    /// The statistics document (`stats::to_json`) of every VM.
    fn stats_json(&self) -> Value;
    /// Whether the VM still runs (it has not stopped).
    fn is_running(&self, vm: usize) -> bool;
    fn vcpus(&self, vm: usize) -> usize;
    /// Pauses (or resumes) every vCPU of the VM.
    fn set_paused(&mut self, vm: usize, paused: bool);
    /// Stops the VM with `VmOutcome::Stopped(why)`.
    fn stop(&mut self, vm: usize, why: &str);
    fn cpu(&self, vm: usize) -> CpuSpec;
    /// Applies a CPU weight and cap (scheduler and stats).
    fn set_cpu(&mut self, vm: usize, cpu: CpuSpec);
    /// Stops every VM.
    fn shutdown(&mut self, why: &str);

    /// Adds a VM from its definition; answered now (an invalid definition,
    /// every error with its JSON path) or through `waiter` once built.
    fn create(
        &mut self,
        definition: Value,
        base_dir: &Path,
        start: bool,
        waiter: Waiter,
    ) -> Result<Answer, String>;

    /// Starts a created VM (answered once its vCPUs run).
    fn start(&mut self, vm: usize, waiter: Waiter) -> Result<Answer, String>;

    /// Stops (if needed), tears down and forgets a VM.
    fn delete(&mut self, vm: usize, waiter: Waiter) -> Result<Answer, String>;

    /// Stops (if needed) and builds and starts a VM again.
    fn restart(&mut self, vm: usize, waiter: Waiter) -> Result<Answer, String>;

    /// Sets a VM's memory weight and/or floor (the ballooning allocator).
    fn set_memory(
        &mut self,
        vm: usize,
        weight: Option<u64>,
        floor_mib: Option<u64>,
    ) -> Result<Value, String>;

    /// Changes the rate limiters of a VM's network interface `iface`;
    /// replies with both limiters as they are now.
    fn set_net(
        &mut self,
        vm: usize,
        iface: &str,
        rx: Option<super::limits::LimiterPatch>,
        tx: Option<super::limits::LimiterPatch>,
    ) -> Result<Value, String>;

    /// Sets a VM's `io.weight` (checked to be 1..=10000).
    fn set_io_weight(&mut self, _vm: usize, _weight: u32) -> Result<Value, String> {
        Err("not supported: this monitor has no disks".into())
    }

    /// Changes the rate limiter of a VM's drive `drive`.
    fn set_drive_limits(
        &mut self,
        _vm: usize,
        _drive: &str,
        _bandwidth: BucketUpdate,
        _ops: BucketUpdate,
    ) -> Result<Value, String> {
        Err("not supported: this monitor has no disks".into())
    }

    /// The device-access verifier's counters of a VM.
    fn access_counters(&self, vm: usize) -> Result<Value, String>;

    /// Sets a running VM's balloon to a fixed size (Firecracker's `PATCH
    /// /balloon`).
    fn set_balloon(&mut self, _vm: usize, _amount_mib: u64) -> Result<Value, String> {
        Err("not supported yet: setting a balloon's size".into())
    }

    /// Presses Ctrl+Alt+Del on a running VM's keyboard controller
    /// (Firecracker's `SendCtrlAltDel`).
    fn send_ctrl_alt_del(&mut self, _vm: usize) -> Result<(), String> {
        Err("SendCtrlAltDel is not supported by Hearth yet".into())
    }

    /// The Firecracker API sockets of this monitor (`create` with
    /// `api_socket`), when it serves them.
    fn firecracker_apis(&self) -> Option<std::sync::Arc<crate::fcapi::Registry>> {
        None
    }
}

fn find(ctl: &dyn Control, name: &str) -> Result<usize, String> {
    ctl.vm_names()
        .iter()
        .position(|n| n == name)
        .ok_or_else(|| format!("no vm named {name:?}"))
}

fn running(ctl: &dyn Control, name: &str) -> Result<usize, String> {
    let idx = find(ctl, name)?;
    if ctl.is_running(idx) {
        Ok(idx)
    } else {
        Err(format!("vm {name} has stopped"))
    }
}

/// The statistics document with only the VMs `peer` may read.
fn readable_stats(ctl: &dyn Control, acl: &Acl, peer: &Peer) -> Value {
    let mut doc = ctl.stats_json();
    if let Some(vms) = doc.get_mut("vms").and_then(Value::as_array_mut) {
        vms.retain(|vm| {
            vm["name"]
                .as_str()
                .is_some_and(|n| acl.allows(peer, Grant::Read, Some(n)))
        });
    }
    doc
}

/// Carries out `request` for `peer` (whose access was already checked).
/// A request that waits for a VM to be built or torn down takes a
/// [`Waiter`] from `waiter` and is answered through it.
pub fn execute(
    ctl: &mut dyn Control,
    acl: &Acl,
    peer: &Peer,
    request: Request,
    waiter: &mut dyn FnMut() -> Waiter,
) -> Result<Answer, String> {
    match request {
        Request::Create {
            vm,
            base_dir,
            start,
            api_socket,
        } => {
            let base_dir = match base_dir {
                Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
                Some(d) => return Err(format!("base_dir {d:?} is not an absolute path")),
                None => PathBuf::from("/"),
            };
            match api_socket {
                None => ctl.create(vm, &base_dir, start, waiter()),
                Some(socket) => crate::fcapi::create_with_api(
                    ctl,
                    vm,
                    &base_dir,
                    start,
                    Path::new(&socket),
                    waiter,
                ),
            }
        }
        Request::Start { vm } => {
            let idx = find(ctl, &vm)?;
            ctl.start(idx, waiter())
        }
        Request::Delete { vm } => match find(ctl, &vm) {
            Ok(idx) => ctl.delete(idx, waiter()),
            // A Firecracker API socket whose VM was never started.
            Err(e) => crate::fcapi::delete_unstarted(ctl, &vm)
                .map(Answer::Now)
                .ok_or(e),
        },
        Request::Restart { vm } => {
            let idx = find(ctl, &vm)?;
            ctl.restart(idx, waiter())
        }
        other => immediate(ctl, acl, peer, other).map(Answer::Now),
    }
}

/// The requests answered at once.
fn immediate(
    ctl: &mut dyn Control,
    acl: &Acl,
    peer: &Peer,
    request: Request,
) -> Result<Value, String> {
    match request {
        r @ (Request::List {} | Request::Stats { .. } | Request::Metrics {}) => {
            reads(ctl, acl, peer, r)
        }
        Request::Pause { vm } => {
            let idx = running(ctl, &vm)?;
            ctl.set_paused(idx, true);
            Ok(json!({ "vm": vm, "state": "paused" }))
        }
        Request::Resume { vm } => {
            let idx = running(ctl, &vm)?;
            ctl.set_paused(idx, false);
            Ok(json!({ "vm": vm, "state": "running" }))
        }
        Request::Stop { vm } => {
            let idx = running(ctl, &vm)?;
            ctl.stop(idx, STOPPED_BY_API);
            Ok(json!({ "vm": vm, "state": "stopping" }))
        }
        r @ (Request::SetCpu { .. } | Request::SetMemory { .. } | Request::SetNet { .. }) => {
            settings(ctl, r)
        }
        r @ (Request::SetIo { .. } | Request::SetDrive { .. }) => disks(ctl, r),
        Request::AccessCounters { vm } => {
            let idx = find(ctl, &vm)?;
            ctl.access_counters(idx)
        }
        Request::Shutdown {} => {
            ctl.shutdown("shutdown through the control socket");
            Ok(json!({ "state": "stopping" }))
        }
        Request::Create { .. }
        | Request::Start { .. }
        | Request::Delete { .. }
        | Request::Restart { .. } => {
            Err("internal: a life-cycle request reached the wrong path".into())
        }
    }
}

/// `list`, `stats` and `metrics`: what the client may read.
fn reads(ctl: &mut dyn Control, acl: &Acl, peer: &Peer, request: Request) -> Result<Value, String> {
    match request {
        Request::List {} => {
            let doc = readable_stats(ctl, acl, peer);
            let vms: Vec<Value> = doc["vms"]
                .as_array()
                .map(|vms| {
                    vms.iter()
                        .map(|v| json!({"name": v["name"], "state": v["state"], "vcpus": v["vcpus"]}))
                        .collect()
                })
                .unwrap_or_default();
            Ok(json!({ "vms": vms }))
        }
        Request::Stats { vm: None } => Ok(readable_stats(ctl, acl, peer)),
        Request::Metrics {} => Ok(Value::String(crate::metrics::prometheus_text(
            &readable_stats(ctl, acl, peer),
        ))),
        Request::Stats { vm: Some(name) } => {
            find(ctl, &name)?;
            let doc = ctl.stats_json();
            doc["vms"]
                .as_array()
                .and_then(|vms| vms.iter().find(|v| v["name"] == name.as_str()))
                .cloned()
                .ok_or_else(|| format!("no statistics for vm {name}"))
        }
        _ => Err("internal: not a read request".into()),
    }
}

/// `set-cpu`, `set-memory` and `set-net` on a running VM.
fn settings(ctl: &mut dyn Control, request: Request) -> Result<Value, String> {
    match request {
        Request::SetCpu { vm, weight, max } => {
            let idx = running(ctl, &vm)?;
            let cpu = new_cpu(ctl.cpu(idx), ctl.vcpus(idx), weight, max)?;
            ctl.set_cpu(idx, cpu.clone());
            Ok(json!({ "vm": vm, "weight": cpu.weight, "max": cpu.max }))
        }
        Request::SetMemory {
            vm,
            weight,
            floor_mib,
        } => {
            let idx = running(ctl, &vm)?;
            if weight.is_none() && floor_mib.is_none() {
                return Err("set-memory needs \"weight\" and/or \"floor_mib\"".into());
            }
            ctl.set_memory(idx, weight, floor_mib)
        }
        Request::SetNet {
            vm,
            iface,
            rx_rate_limiter,
            tx_rate_limiter,
        } => {
            let idx = running(ctl, &vm)?;
            if rx_rate_limiter.is_none() && tx_rate_limiter.is_none() {
                return Err("set-net needs \"rx_rate_limiter\" and/or \"tx_rate_limiter\"".into());
            }
            ctl.set_net(idx, &iface, rx_rate_limiter, tx_rate_limiter)
        }
        _ => Err("internal: not a setting request".into()),
    }
}

/// `set-io` and `set-drive`: a VM's share of `host.io`, a drive's buckets.
fn disks(ctl: &mut dyn Control, request: Request) -> Result<Value, String> {
    match request {
        Request::SetIo { vm, weight } => {
            let idx = running(ctl, &vm)?;
            match u32::try_from(weight) {
                Ok(w) if (MIN_IO_WEIGHT..=MAX_IO_WEIGHT).contains(&w) => ctl.set_io_weight(idx, w),
                _ => Err(format!(
                    "io weight {weight} is out of range ({MIN_IO_WEIGHT}..={MAX_IO_WEIGHT})"
                )),
            }
        }
        Request::SetDrive {
            vm,
            drive,
            rate_limiter,
        } => {
            let idx = running(ctl, &vm)?;
            let (bandwidth, ops) = rate_limiter.updates();
            ctl.set_drive_limits(idx, &drive, bandwidth, ops)
        }
        _ => Err("not a disk request".into()),
    }
}

/// The CPU policy after a `set-cpu`, checked as the config checks it.
fn new_cpu(
    old: CpuSpec,
    vcpus: usize,
    weight: Option<u64>,
    max: Option<Option<f64>>,
) -> Result<CpuSpec, String> {
    if weight.is_none() && max.is_none() {
        return Err("set-cpu needs \"weight\" and/or \"max\"".into());
    }
    let weight = match weight {
        None => old.weight,
        Some(w) => match u32::try_from(w) {
            Ok(w) if (MIN_CPU_WEIGHT..=MAX_CPU_WEIGHT).contains(&w) => w,
            _ => {
                return Err(format!(
                    "weight {w} is out of range ({MIN_CPU_WEIGHT}..={MAX_CPU_WEIGHT})"
                ))
            }
        },
    };
    let max = match max {
        None => old.max,
        Some(None) => None,
        Some(Some(m)) if !m.is_finite() || m <= 0.0 => {
            return Err(format!("max {m} must be greater than 0 (a number of CPUs)"))
        }
        Some(Some(m)) if m > vcpus as f64 => {
            return Err(format!("max {m} is more than the VM's {vcpus} vCPUs"))
        }
        Some(Some(m)) => Some(m),
    };
    Ok(CpuSpec { weight, max })
}
