//! The monitor: builds every VM, runs the epoll event loop (signals, the
//! console's quit request, each VM's exit eventfd, the CPU scheduler's tick,
//! the statistics timer) until the last VM has stopped, and reports how
//! each ended.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::Kvm;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::api::{ApiServer, Control};
use crate::bus::lock;
use crate::config::{MonitorSpec, SerialOutput, VmSpec};
use crate::console::Console;
use crate::devices::serial::SerialOut;
use crate::host::{signal_name, RawTerminal, Signals};
use crate::lifecycle::VmOutcome;
use crate::mem::MemoryManager;
use crate::output::{Prefixed, Stdout};
use crate::sched::CpuScheduler;
use crate::seccomp::{self, ThreadClass};
use crate::stats::{self, VmStats};
use crate::vcpu::VcpuCommand;
use crate::vm::{Vm, VmError, VmReport};

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("cannot open /dev/kvm: {0} (is KVM available, and may this user use it?)")]
    Kvm(kvm_ioctls::Error),
    #[error("VM {name}: {source}")]
    Vm { name: String, source: VmError },
    #[error("VM {name}: cannot open serial output {path}: {source}")]
    SerialFile {
        name: String,
        path: String,
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Setup {
        what: &'static str,
        source: io::Error,
    },
    #[error("event loop: {0}")]
    EventLoop(event_manager::Error),
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    #[error("seccomp: {0}")]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

fn setup_err(what: &'static str) -> impl FnOnce(io::Error) -> MonitorError {
    move |source| MonitorError::Setup { what, source }
}

/// Options of a run beyond the VM definitions.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Rewrite this file with the statistics (JSON) every second.
    pub stats_file: Option<PathBuf>,
}

/// How the monitor's run ended.
#[derive(Debug)]
pub struct MonitorReport {
    pub vms: Vec<VmReport>,
    /// The signal that stopped the monitor, if one did.
    pub signal: Option<i32>,
    pub peak_rss_kib: Option<u64>,
}

/// Where each VM's serial output goes. When several VMs write to the
/// terminal, each line is prefixed with the VM's name.
fn serial_out(spec: &VmSpec, shared_terminal: bool) -> Result<SerialOut, MonitorError> {
    Ok(match &spec.serial.output {
        SerialOutput::Stdout if shared_terminal => Box::new(Prefixed::new(&spec.name, Stdout)),
        SerialOutput::Stdout => Box::new(Stdout),
        SerialOutput::Off => Box::new(io::sink()),
        SerialOutput::File(path) => {
            Box::new(
                File::create(path).map_err(|source| MonitorError::SerialFile {
                    name: spec.name.clone(),
                    path: path.display().to_string(),
                    source,
                })?,
            )
        }
    })
}

const TAG_SIGNAL: u32 = 0;
const TAG_QUIT: u32 = 1;
const TAG_SCHED: u32 = 2;
const TAG_STATS: u32 = 3;
const TAG_MEM: u32 = 4;
const TAG_VM_EXIT: u32 = 16;
/// Virtio queue notifications: `TAG_QUEUE + (vm << 8) + queue`.
const TAG_QUEUE: u32 = 1 << 24;

/// How often the statistics file is rewritten.
const STATS_PERIOD: Duration = Duration::from_secs(1);

/// The event-loop subscriber that owns the VMs and their lifecycle.
struct Monitor {
    vms: Vec<Vm>,
    reports: Vec<Option<VmReport>>,
    signals: Signals,
    quit: EventFd,
    signal: Option<i32>,
    sched: CpuScheduler,
    mem: MemoryManager,
    stats_timer: TimerFd,
    stats_file: Option<PathBuf>,
    started: Instant,
    /// Whether each VM is paused (through the control socket).
    paused: Vec<bool>,
}

impl Monitor {
    fn done(&self) -> bool {
        self.reports.iter().all(Option::is_some)
    }

    fn stop_all(&mut self, why: &str) {
        for vm in &self.vms {
            vm.shared.request_stop(VmOutcome::Stopped(why.to_string()));
        }
    }

    fn vm_exited(&mut self, idx: usize, ops: &mut EventOps) {
        let (Some(vm), Some(slot)) = (self.vms.get_mut(idx), self.reports.get_mut(idx)) else {
            return;
        };
        let _ = vm.shared.exit_evt.read();
        if slot.is_some() {
            return;
        }
        let sched = self.sched.vm_stats(idx);
        self.sched.remove_vm(idx);
        self.mem.remove_vm(idx);
        let mut report = vm.finish(VmOutcome::Error("exit event without a reason".into()));
        report.throttle_events = sched.throttle_events;
        let _ = ops.remove(Events::with_data(
            &vm.shared.exit_evt,
            TAG_VM_EXIT + idx as u32,
            EventSet::IN,
        ));
        let e = &report.exits;
        let level = if report.outcome.is_clean() {
            log::Level::Info
        } else {
            log::Level::Error
        };
        log::log!(
            level,
            "{}: ran {:.3} s, ended: {} (CPU {:.3} s, throttled {} times; exits: {} pio-in, {} pio-out, {} mmio-read, {} mmio-write, {} interrupted; unclaimed: {} pio, {} mmio; acl denied: {} pio-in, {} pio-out, {} mmio-read, {} mmio-write, {} violations)",
            report.name,
            report.seconds,
            report.outcome,
            report.cpu_ns as f64 / 1e9,
            report.throttle_events,
            e.pio_reads,
            e.pio_writes,
            e.mmio_reads,
            e.mmio_writes,
            e.interrupted,
            report.unclaimed_pio,
            report.unclaimed_mmio,
            report.acl.denied[0],
            report.acl.denied[1],
            report.acl.denied[2],
            report.acl.denied[3],
            report.acl.violations
        );
        *slot = Some(report);
        if self.done() {
            self.write_stats();
        }
    }

    fn on_sched_tick(&mut self) {
        let reports = &self.reports;
        let running = self
            .vms
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| reports[*i].is_none());
        self.sched.on_tick(running);
    }

    fn on_mem_tick(&mut self) {
        let reports = &self.reports;
        let running = self
            .vms
            .iter()
            .enumerate()
            .filter(|(i, _)| reports[*i].is_none());
        self.mem.on_tick(running);
    }

    fn on_queue(&mut self, tag: u32) {
        let vm = ((tag - TAG_QUEUE) >> 8) as usize;
        let queue = ((tag - TAG_QUEUE) & 0xff) as usize;
        if let Some(b) = self.vms.get(vm).and_then(|v| v.balloon.as_ref()) {
            b.on_notify(queue);
        }
    }

    /// The statistics of every VM now.
    fn stats(&self) -> Vec<VmStats> {
        self.vms
            .iter()
            .enumerate()
            .map(|(i, vm)| {
                let report = self.reports[i].as_ref();
                VmStats {
                    name: vm.name.clone(),
                    state: match report {
                        Some(r) => r.outcome.to_string(),
                        None if self.paused[i] => "paused".to_string(),
                        None => "running".to_string(),
                    },
                    vcpus: vm.vcpu_count(),
                    weight: vm.cpu.weight,
                    max: vm.cpu.max,
                    cpu_ns: report.map_or_else(|| vm.cpu_ns(), |r| r.cpu_ns),
                    sched: report.map_or_else(
                        || self.sched.vm_stats(i),
                        |r| crate::sched::VmSchedStats {
                            throttled: false,
                            throttle_events: r.throttle_events,
                        },
                    ),
                    parked_vcpus: if report.is_some() {
                        0
                    } else {
                        vm.parked_vcpus()
                    },
                    exits: report.map_or_else(|| vm.exit_stats(), |r| r.exits),
                    acl: report.map_or_else(|| vm.verifier.stats(), |r| r.acl.clone()),
                    balloon: self.mem.stats(i, vm),
                }
            })
            .collect()
    }

    fn write_stats(&self) {
        let Some(path) = &self.stats_file else { return };
        let value = self.stats_json();
        if let Err(e) = stats::write_atomically(path, &value) {
            log::warn!("cannot write statistics to {}: {e}", path.display());
        }
    }
}

/// The control socket's view of the monitor (`api::ops`).
impl Control for Monitor {
    fn vm_names(&self) -> Vec<String> {
        self.vms.iter().map(|vm| vm.name.clone()).collect()
    }

    fn stats_json(&self) -> serde_json::Value {
        let (ticks, cost) = self.sched.cost();
        let mut value = stats::to_json(
            self.started.elapsed().as_secs_f64(),
            &self.stats(),
            ticks,
            cost,
            crate::host::current_thread_cpu_ns(),
        );
        let (mem_ticks, mem_cost) = self.mem.cost();
        stats::add_memory(&mut value, self.mem.budget_mib(), mem_ticks, mem_cost);
        value
    }

    fn is_running(&self, vm: usize) -> bool {
        matches!(self.reports.get(vm), Some(None))
            && self.vms.get(vm).is_some_and(|v| !v.shared.stopping())
    }

    fn vcpus(&self, vm: usize) -> usize {
        self.vms.get(vm).map_or(0, Vm::vcpu_count)
    }

    fn set_paused(&mut self, vm: usize, paused: bool) {
        if let (Some(v), Some(flag)) = (self.vms.get(vm), self.paused.get_mut(vm)) {
            v.command(if paused {
                VcpuCommand::Pause
            } else {
                VcpuCommand::Resume
            });
            *flag = paused;
        }
    }

    fn stop(&mut self, vm: usize, why: &str) {
        if let Some(v) = self.vms.get(vm) {
            v.shared.request_stop(VmOutcome::Stopped(why.to_string()));
        }
    }

    fn cpu(&self, vm: usize) -> crate::config::CpuSpec {
        self.vms.get(vm).map(|v| v.cpu.clone()).unwrap_or_default()
    }

    fn set_cpu(&mut self, vm: usize, cpu: crate::config::CpuSpec) {
        self.sched.set_weight(vm, cpu.weight);
        self.sched.set_max(vm, cpu.max);
        if let Some(v) = self.vms.get_mut(vm) {
            v.cpu = cpu;
        }
    }

    fn shutdown(&mut self, why: &str) {
        self.stop_all(why);
    }

    fn access_counters(&self, vm: usize) -> Result<serde_json::Value, String> {
        let vm = self.vms.get(vm).ok_or_else(|| "no such VM".to_string())?;
        Ok(vm.verifier.stats().to_json())
    }

    fn set_memory(
        &mut self,
        vm: usize,
        weight: Option<u64>,
        floor_mib: Option<u64>,
    ) -> Result<serde_json::Value, String> {
        // The same range as memory.weight in a config file.
        use crate::config::{
            MAX_CPU_WEIGHT as MAX_MEMORY_WEIGHT, MIN_CPU_WEIGHT as MIN_MEMORY_WEIGHT,
        };
        let weight = match weight {
            Some(w) => match u32::try_from(w) {
                Ok(w) if (MIN_MEMORY_WEIGHT..=MAX_MEMORY_WEIGHT).contains(&w) => Some(w),
                _ => {
                    return Err(format!(
                    "memory weight {w} is out of range ({MIN_MEMORY_WEIGHT}..={MAX_MEMORY_WEIGHT})"
                ))
                }
            },
            None => None,
        };
        let limits = self.mem.set_limits(vm, weight, floor_mib)?;
        if let Some(v) = self.vms.get_mut(vm) {
            v.memory.weight = limits.weight;
            v.memory.floor_mib = limits.floor;
        }
        Ok(serde_json::json!({"weight": limits.weight, "floor_mib": limits.floor}))
    }
}

impl MutEventSubscriber for Monitor {
    fn init(&mut self, ops: &mut EventOps) {
        let mut add = |ev: Events| {
            if let Err(e) = ops.add(ev) {
                log::error!("monitor: cannot watch an fd: {e}");
            }
        };
        add(Events::with_data(&self.signals, TAG_SIGNAL, EventSet::IN));
        add(Events::with_data(&self.quit, TAG_QUIT, EventSet::IN));
        add(Events::with_data(
            self.sched.timer(),
            TAG_SCHED,
            EventSet::IN,
        ));
        add(Events::with_data(self.mem.timer(), TAG_MEM, EventSet::IN));
        for (i, vm) in self.vms.iter().enumerate() {
            let Some(b) = &vm.balloon else { continue };
            for (q, evt) in b.queue_evts.iter().enumerate() {
                let tag = TAG_QUEUE + ((i as u32) << 8) + q as u32;
                add(Events::with_data(evt, tag, EventSet::IN));
            }
        }
        if self.stats_file.is_some() {
            add(Events::with_data(
                &self.stats_timer,
                TAG_STATS,
                EventSet::IN,
            ));
        }
        for (i, vm) in self.vms.iter().enumerate() {
            add(Events::with_data(
                &vm.shared.exit_evt,
                TAG_VM_EXIT + i as u32,
                EventSet::IN,
            ));
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TAG_SIGNAL => {
                while let Some(sig) = self.signals.read() {
                    log::info!("received {}, stopping every VM", signal_name(sig));
                    self.signal.get_or_insert(sig);
                    self.stop_all(&format!("monitor received {}", signal_name(sig)));
                }
            }
            TAG_QUIT => {
                let _ = self.quit.read();
                log::info!("console: quit requested, stopping every VM");
                self.stop_all("quit from the console");
            }
            TAG_SCHED => self.on_sched_tick(),
            TAG_STATS => {
                let _ = self.stats_timer.wait();
                self.write_stats();
            }
            TAG_MEM => self.on_mem_tick(),
            tag if tag >= TAG_QUEUE => self.on_queue(tag),
            tag if tag >= TAG_VM_EXIT => self.vm_exited((tag - TAG_VM_EXIT) as usize, ops),
            other => log::warn!("monitor: unexpected event tag {other}"),
        }
    }
}

/// Runs every VM of `spec` until the last one stops.
pub fn run(spec: &MonitorSpec, opts: &RunOptions) -> Result<MonitorReport, MonitorError> {
    // Before any thread exists, so every thread inherits the blocked mask.
    let signals = Signals::block_and_open().map_err(setup_err("signalfd"))?;
    crate::vcpu::install_kick_handler().map_err(|e| MonitorError::Setup {
        what: "install the vCPU kick handler",
        source: io::Error::from_raw_os_error(e.errno()),
    })?;
    let kvm = Kvm::new().map_err(MonitorError::Kvm)?;
    // Bound before any VM exists, so a socket in use fails the run early.
    let api = spec
        .host
        .api
        .as_ref()
        .map(crate::api::Listener::bind)
        .transpose()?;

    let on_terminal = spec
        .vms
        .iter()
        .filter(|v| v.serial.output == SerialOutput::Stdout)
        .count();
    let mut vms = Vec::with_capacity(spec.vms.len());
    for vm_spec in &spec.vms {
        let out = serial_out(vm_spec, on_terminal > 1)?;
        let vm = Vm::build_full(&kvm, vm_spec, out, Vec::new(), spec.host.cpus.clone()).map_err(
            |source| MonitorError::Vm {
                name: vm_spec.name.clone(),
                source,
            },
        )?;
        vms.push(vm);
    }

    let allowed_cpus = spec
        .host
        .cpus
        .as_ref()
        .map_or_else(crate::host::online_cpus, Vec::len);
    let mut sched = CpuScheduler::new(allowed_cpus, spec.host.sched_tick_ms)
        .map_err(setup_err("scheduler timer"))?;
    let mut stats_timer = TimerFd::new().map_err(|e| MonitorError::Setup {
        what: "statistics timer",
        source: io::Error::from(e),
    })?;
    if opts.stats_file.is_some() {
        stats_timer
            .reset(STATS_PERIOD, Some(STATS_PERIOD))
            .map_err(|e| MonitorError::Setup {
                what: "statistics timer",
                source: io::Error::from(e),
            })?;
    }

    let quit = EventFd::new(libc::EFD_NONBLOCK).map_err(setup_err("quit eventfd"))?;
    let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().map_err(MonitorError::EventLoop)?;
    let console_vm = spec.vms.iter().position(|v| v.serial.stdin);
    let _raw_terminal = match console_vm {
        Some(_) => {
            RawTerminal::enter(libc::STDIN_FILENO).map_err(setup_err("terminal raw mode"))?
        }
        None => None,
    };
    if let Some(idx) = console_vm {
        let console = Console::new(
            vms[idx].serial.clone(),
            quit.try_clone().map_err(setup_err("quit eventfd"))?,
        )
        .map_err(setup_err("console"))?;
        em.add_subscriber(Arc::new(Mutex::new(console)));
    }

    let vcpu_filter = match spec.host.seccomp {
        true => Some(Arc::new(seccomp::filter(ThreadClass::Vcpu)?)),
        false => None,
    };
    let mut mem = MemoryManager::new(spec.host.memory).map_err(setup_err("memory timer"))?;
    for (i, vm) in vms.iter_mut().enumerate() {
        let name = vm.name.clone();
        vm.set_seccomp(vcpu_filter.clone());
        vm.start()
            .map_err(|source| MonitorError::Vm { name, source })?;
        sched.add_vm(i, vm);
        mem.add_vm(i, vm);
    }
    if spec.host.scheduler {
        sched.start().map_err(setup_err("scheduler timer"))?;
    } else {
        log::info!("the CPU scheduler is off (host.cpu.scheduler): the host's scheduler alone shares the CPUs");
    }
    mem.start().map_err(setup_err("memory timer"))?;

    let count = vms.len();
    let monitor = Arc::new(Mutex::new(Monitor {
        vms,
        reports: vec![None; count],
        signals,
        quit,
        signal: None,
        sched,
        mem,
        stats_timer,
        stats_file: opts.stats_file.clone(),
        started: Instant::now(),
        paused: vec![false; count],
    }));
    em.add_subscriber(monitor.clone());
    if let Some(listener) = api {
        let server =
            ApiServer::new(listener, monitor.clone()).map_err(setup_err("control socket"))?;
        em.add_subscriber(Arc::new(Mutex::new(server)));
    }
    if spec.host.seccomp {
        // Everything is built: from here on the loop only uses the calls
        // in its allowlist (docs/security.md).
        seccomp::install(ThreadClass::EventLoop)?;
    }

    while !lock(&monitor).done() {
        match em.run() {
            Ok(_) => {}
            Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EINTR => {}
            Err(e) => {
                let mut m = lock(&monitor);
                m.stop_all("event loop failed");
                for vm in &mut m.vms {
                    vm.finish(VmOutcome::Stopped("event loop failed".into()));
                }
                return Err(MonitorError::EventLoop(e));
            }
        }
    }

    let mut m = lock(&monitor);
    let vms = m.reports.iter_mut().filter_map(Option::take).collect();
    Ok(MonitorReport {
        vms,
        signal: m.signal,
        peak_rss_kib: crate::host::peak_rss_kib(),
    })
}
