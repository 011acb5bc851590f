//! The monitor: the VMs it hosts, each kept as a value whose type says
//! its state, and the event loop that drives them.
//!
//! - [`startup`]: `run()` and `serve()`, from a spec to a running loop;
//! - [`dispatch`]: the event-loop subscriber (signals, ticks, VM exits,
//!   life-cycle work finishing);
//! - [`control`]: what the control socket can do, and statistics;
//! - [`workers`]: the threads that build and tear down VMs off the loop.
//!
//! ```text
//!  create ──> Building ──> Created ──start──> Building ──> Running ──exit──> Stopping ──> Stopped
//!                 └──────────────(start: true)──────────────────┘    stop/guest end        │
//!                                                                          restart ────────┘ delete: gone
//! ```
//!
//! Building and tearing down run on the workers; only then does the
//! memory allocator hand a stopped VM's share of the budget to the others.

mod control;
mod dispatch;
mod retry;
mod startup;
mod statsfile;
mod workers;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::api::Waiter;
use crate::config::{CpuSpec, HostSpec, MemorySpec, VmSpec};
use crate::host::Signals;
use crate::lifecycle::ExitQueue;
use crate::mem::MemoryManager;
use crate::output::{OutputRing, OutputWriter};
use crate::sched::CpuScheduler;
use crate::vm::{BuildOptions, Vm, VmReport};

pub use startup::{run, serve, MonitorError, MonitorReport, RunOptions};
use workers::{Job, Workers};

/// A VM's id in this monitor: given in creation order, never reused.
pub type VmId = usize;

/// Where a VM is in its life.
pub enum VmState {
    /// A worker is building or starting it.
    Building,
    /// Built; its vCPUs have not started.
    Created(Box<Vm>),
    /// Its vCPUs run (or are paused).
    Running(Box<Vm>),
    /// A worker is stopping it and freeing what it held.
    Stopping,
    /// Gone; what it did.
    Stopped(Box<VmReport>),
}

/// A state without what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Building,
    Created,
    Running,
    Stopping,
    Stopped,
}

/// The transitions of the life cycle (the diagram above), in one place.
fn allowed(from: Kind, to: Kind) -> bool {
    use Kind::*;
    matches!(
        (from, to),
        (Building, Created | Running)
            | (Created, Building | Stopping)
            | (Running, Stopping)
            | (Stopping, Stopped)
            | (Stopped, Building)
    )
}

impl VmState {
    fn kind(&self) -> Kind {
        match self {
            VmState::Building => Kind::Building,
            VmState::Created(_) => Kind::Created,
            VmState::Running(_) => Kind::Running,
            VmState::Stopping => Kind::Stopping,
            VmState::Stopped(_) => Kind::Stopped,
        }
    }

    fn name(&self) -> &'static str {
        match self.kind() {
            Kind::Building => "building",
            Kind::Created => "created",
            Kind::Running => "running",
            Kind::Stopping => "stopping",
            Kind::Stopped => "stopped",
        }
    }

    fn valid_transition(&self, to: &VmState) -> bool {
        allowed(self.kind(), to.kind())
    }
}

/// What to do once a VM has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterStop {
    Keep,
    Delete,
    Restart,
}

/// One VM of the monitor.
pub struct VmEntry {
    pub name: String,
    /// The name again, shared: the once-a-second statistics take it
    /// without allocating on the real-time loop.
    pub label: Arc<str>,
    pub spec: Box<VmSpec>,
    pub state: VmState,
    /// Paused through the control socket.
    pub paused: bool,
    /// The CPU and memory policy now (the control socket may change them).
    pub cpu: CpuSpec,
    pub memory: MemorySpec,
    /// The balloon's figures when the VM stopped (kept for statistics).
    pub last_balloon: Option<crate::mem::BalloonStats>,
    /// The network interfaces' figures when the VM stopped.
    pub last_net: Vec<crate::virtio::net::NetStats>,
    pub last_vsock: Option<crate::virtio::vsock::VsockStats>,
    /// Its serial output's ring (for the written and dropped counts).
    pub output: Option<Arc<OutputRing>>,
    /// `io.weight` now (the control socket may change it).
    pub io_weight: u32,
    /// `net.weight`: its share of `host.net`.
    pub net_weight: u32,
    /// Its disks' figures when it stopped (kept for statistics).
    pub last_io: Option<serde_json::Value>,
    /// Control-socket requests answered when the VM reaches its next state.
    waiting: Vec<Waiter>,
    after_stop: AfterStop,
    /// One of the monitor file's VMs: if it cannot be built, the run fails.
    from_file: bool,
}

impl VmEntry {
    fn new(spec: VmSpec) -> Self {
        VmEntry {
            name: spec.name.clone(),
            label: spec.name.as_str().into(),
            cpu: spec.cpu.clone(),
            memory: spec.memory,
            io_weight: spec.io.weight,
            net_weight: spec.net_share.weight,
            last_io: None,
            spec: Box::new(spec),
            state: VmState::Building,
            paused: false,
            last_balloon: None,
            last_net: Vec::new(),
            last_vsock: None,
            output: None,
            waiting: Vec::new(),
            after_stop: AfterStop::Keep,
            from_file: false,
        }
    }

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

    pub fn vcpus(&self) -> usize {
        usize::from(self.spec.vcpus)
    }
}

/// How the VMs of the monitor get their serial output and seccomp filters.
pub(crate) struct BuildPlan {
    pub terminal: Arc<OutputWriter>,
    /// Prefix terminal lines with the VM's name.
    pub prefix: bool,
    pub affinity: Option<Vec<usize>>,
    pub vcpu: Option<Arc<seccompiler::BpfProgram>>,
    pub device: Option<Arc<seccompiler::BpfProgram>>,
    pub output: Option<Arc<seccompiler::BpfProgram>>,
}

impl BuildPlan {
    fn options(&self) -> BuildOptions {
        BuildOptions {
            affinity: self.affinity.clone(),
            vcpu_seccomp: self.vcpu.clone(),
            device_seccomp: self.device.clone(),
            ..BuildOptions::default()
        }
    }
}

/// The event-loop subscriber that owns the VMs and their life cycle.
pub(crate) struct Monitor {
    vms: BTreeMap<VmId, VmEntry>,
    next_id: VmId,
    host: HostSpec,
    plan: BuildPlan,
    workers: Workers,
    /// A worker was handing a result in when the loop looked: look again
    /// at the next tick.
    workers_busy: bool,
    /// Requests whose device a vCPU held, tried again at each tick.
    retries: retry::Retries,
    /// `serve`: run until asked to shut down, even with no VM.
    serving: bool,
    shutting_down: bool,
    signals: Signals,
    quit: EventFd,
    signal: Option<i32>,
    sched: CpuScheduler,
    mem: MemoryManager,
    /// `host.io` shared by `io.weight` (docs/shares.md).
    io: crate::share::ShareRuntime,
    /// `host.net` shared by `net.weight`.
    net: crate::share::ShareRuntime,
    stats_timer: TimerFd,
    stats_file: Option<statsfile::StatsWriter>,
    started: Instant,
    /// Where VMs say they stop.
    exits: Arc<ExitQueue>,
    /// The VM (by id) whose serial port the console feeds, once built.
    console: Option<(VmId, crate::console::ConsoleTarget)>,
    /// A startup VM failed to build: the run ends with this error.
    fatal: Option<String>,
    /// The Firecracker API sockets it serves (`create` with `api_socket`).
    fc_apis: Option<Arc<crate::fcapi::Registry>>,
    /// `hearth firecracker`: the run ends when its VM has come and gone.
    exit_with_vm: bool,
}

impl Monitor {
    /// Whether the loop is done: every VM stopped (and, when serving, a
    /// shutdown was asked for).
    fn done(&self) -> bool {
        let all_stopped = self
            .vms
            .values()
            .all(|e| matches!(e.state, VmState::Stopped(_)));
        let vm_gone = self.exit_with_vm && !self.vms.is_empty();
        all_stopped && (!self.serving || self.shutting_down || vm_gone)
    }

    fn stop_all(&mut self, why: &str) {
        self.shutting_down = true;
        // Nothing runs after this but the tear-downs and the process's exit.
        crate::process::linger();
        let ids: Vec<VmId> = self.vms.keys().copied().collect();
        for id in ids {
            self.stop_vm(id, why);
        }
    }

    /// Asks a VM to stop: a running one through its vCPUs (its exit event
    /// then hands it to a worker), a created one straight to a worker.
    fn stop_vm(&mut self, id: VmId, why: &str) {
        let Some(e) = self.vms.get_mut(&id) else {
            return;
        };
        match &e.state {
            VmState::Running(vm) => {
                vm.request_stop(crate::lifecycle::VmOutcome::Stopped(why.to_string()));
            }
            VmState::Created(vm) => {
                vm.shared
                    .request_stop(crate::lifecycle::VmOutcome::Stopped(why.to_string()));
                if let Some(VmState::Created(vm)) = e.transition(VmState::Stopping) {
                    self.submit(Job::TearDown {
                        id,
                        vm,
                        throttle_events: 0,
                    });
                }
            }
            _ => {}
        }
    }

    /// Queues a build of VM `id` (its entry is in `Building`), launched
    /// as `launch` says.
    fn build(&mut self, id: VmId, launch: workers::Launch) {
        let Some(e) = self.vms.get(&id) else { return };
        let mut opts = self.plan.options();
        opts.exits = Some((self.exits.clone(), id));
        let job = Job::Build {
            id,
            spec: e.spec.clone(),
            opts,
            output: workers::OutputPlan {
                terminal: self.plan.terminal.clone(),
                prefix: self.plan.prefix,
                seccomp: self.plan.output.clone(),
            },
            launch,
        };
        self.submit(job);
    }

    fn submit(&mut self, job: Job) {
        if let Err(job) = self.workers.submit(job) {
            // No worker is left (they only end with the monitor): do it here.
            let done = workers::run_job(self.workers.kvm(), *job);
            self.finished(done);
        }
    }

    /// Looks a VM up by name.
    fn by_name(&self, name: &str) -> Option<VmId> {
        self.vms
            .iter()
            .find(|(_, e)| e.name == name)
            .map(|(id, _)| *id)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_life_cycle_only_goes_its_way() {
        use Kind::*;
        let all = [Building, Created, Running, Stopping, Stopped];
        let ok: Vec<(Kind, Kind)> = all
            .iter()
            .flat_map(|a| all.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| allowed(*a, *b))
            .collect();
        assert_eq!(
            ok,
            [
                (Building, Created),
                (Building, Running),
                (Created, Building),
                (Created, Stopping),
                (Running, Stopping),
                (Stopping, Stopped),
                (Stopped, Building),
            ]
        );
    }
}
