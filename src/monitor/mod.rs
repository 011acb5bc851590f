//! The monitor: the VMs it hosts, each kept as a value whose type says
//! its state, and the event loop that drives them.
//!
//! - [`startup`]: `run()`, building every VM and starting the loop;
//! - [`dispatch`]: the event-loop subscriber (signals, ticks, VM exits,
//!   tear-downs finishing);
//! - [`control`]: what the control socket can do, and statistics.
//!
//! A VM is `Running` until its exit eventfd fires (a guest reset, a
//! failure, a stop request); it is then `Stopping` while a tear-down
//! thread stops its vCPUs and frees its memory and fds off the event
//! loop; once that is done it is `Stopped` with its report, and only then
//! does the memory allocator hand its share of the budget to the others.

mod control;
mod dispatch;
mod startup;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::time::Instant;

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::config::{CpuSpec, MemorySpec};
use crate::host::Signals;
use crate::mem::MemoryManager;
use crate::sched::CpuScheduler;
use crate::vm::{Vm, VmReport};

pub use startup::{run, MonitorError, MonitorReport, RunOptions};

/// A VM's id in this monitor: given in creation order, never reused.
pub type VmId = usize;

/// Where a VM is in its life.
pub enum VmState {
    /// Its vCPUs run (or are paused).
    Running(Box<Vm>),
    /// A tear-down thread is stopping it and freeing what it held.
    Stopping,
    /// Gone; what it did.
    Stopped(Box<VmReport>),
}

impl VmState {
    fn name(&self) -> &'static str {
        match self {
            VmState::Running(_) => "running",
            VmState::Stopping => "stopping",
            VmState::Stopped(_) => "stopped",
        }
    }

    /// The life cycle only goes forward: running, stopping, stopped.
    fn valid_transition(&self, to: &VmState) -> bool {
        matches!(
            (self, to),
            (VmState::Running(_), VmState::Stopping) | (VmState::Stopping, VmState::Stopped(_))
        )
    }
}

/// One VM of the monitor.
pub struct VmEntry {
    pub name: String,
    pub vcpus: usize,
    pub state: VmState,
    /// Paused through the control socket.
    pub paused: bool,
    /// The CPU and memory policy now (the control socket may change them).
    pub cpu: CpuSpec,
    pub memory: MemorySpec,
    /// The balloon's figures when the VM stopped (kept for statistics).
    pub last_balloon: Option<crate::mem::BalloonStats>,
    /// Its serial output's ring (for the dropped-bytes count).
    pub output: Option<std::sync::Arc<crate::output::OutputRing>>,
    /// `io.weight` now (the control socket may change it).
    pub io_weight: u32,
    /// Its disks' figures when it stopped (kept for statistics).
    pub last_io: Option<serde_json::Value>,
}

impl VmEntry {
    /// Moves to `to`, if the life cycle allows it; returns the old state.
    fn transition(&mut self, to: VmState) -> Option<VmState> {
        if !self.state.valid_transition(&to) {
            log::error!(
                "{}: refused the transition from {} to {}",
                self.name,
                self.state.name(),
                to.name()
            );
            return None;
        }
        Some(std::mem::replace(&mut self.state, to))
    }

    pub fn running(&self) -> Option<&Vm> {
        match &self.state {
            VmState::Running(vm) => Some(vm),
            _ => None,
        }
    }

    pub fn report(&self) -> Option<&VmReport> {
        match &self.state {
            VmState::Stopped(r) => Some(r),
            _ => None,
        }
    }
}

/// The event-loop subscriber that owns the VMs and their life cycle.
pub(crate) struct Monitor {
    vms: BTreeMap<VmId, VmEntry>,
    signals: Signals,
    quit: EventFd,
    signal: Option<i32>,
    sched: CpuScheduler,
    mem: MemoryManager,
    /// `host.io` shared by `io.weight` (docs/shares.md).
    io: crate::share::ShareRuntime,
    stats_timer: TimerFd,
    stats_file: Option<PathBuf>,
    started: Instant,
    /// Tear-down threads send each stopped VM's report here, then write
    /// `reaped_evt`.
    reaped: Receiver<(VmId, VmReport)>,
    reap_tx: Sender<(VmId, VmReport)>,
    reaped_evt: EventFd,
}

impl Monitor {
    /// Whether every VM has stopped.
    fn done(&self) -> bool {
        self.vms
            .values()
            .all(|e| matches!(e.state, VmState::Stopped(_)))
    }

    fn stop_all(&mut self, why: &str) {
        for e in self.vms.values() {
            if let Some(vm) = e.running() {
                vm.shared
                    .request_stop(crate::lifecycle::VmOutcome::Stopped(why.to_string()));
            }
        }
    }

    /// The VM at position `index` in creation order (the control API's
    /// way of naming VMs).
    fn nth(&self, index: usize) -> Option<(VmId, &VmEntry)> {
        self.vms.iter().nth(index).map(|(id, e)| (*id, e))
    }

    fn nth_mut(&mut self, index: usize) -> Option<(VmId, &mut VmEntry)> {
        self.vms.iter_mut().nth(index).map(|(id, e)| (*id, e))
    }
}
