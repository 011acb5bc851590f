//! `run()`: from a validated monitor spec to a running event loop, and the
//! report once the last VM has stopped.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::Kvm;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::{Monitor, VmEntry, VmState};
use crate::api::ApiServer;
use crate::bus::lock;
use crate::config::{MonitorSpec, SerialOutput};
use crate::console::Console;
use crate::devices::serial::SerialOut;
use crate::host::{RawTerminal, Signals};
use crate::mem::MemoryManager;
use crate::output::{OutputRing, OutputWriter, RingWriter, Sink};
use crate::sched::CpuScheduler;
use crate::seccomp::{self, ThreadClass};
use crate::vm::{build_vm, BuildOptions, VmError, VmReport};

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
    #[error("host.io: {0}")]
    Io(crate::share::RuntimeError),
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

/// How often the statistics file is rewritten.
const STATS_PERIOD: Duration = Duration::from_secs(1);

/// The serial output of every VM: one writer thread for the terminal
/// (each line prefixed with the VM's name when several VMs share it), one
/// per log file; each VM writes into a bounded ring of its own.
struct Outputs {
    writers: Vec<OutputWriter>,
    rings: Vec<Option<Arc<OutputRing>>>,
}

fn open_outputs(spec: &MonitorSpec) -> Result<Outputs, MonitorError> {
    let on_terminal = spec
        .vms
        .iter()
        .filter(|v| v.serial.output == SerialOutput::Stdout)
        .count();
    let mut stdout = (on_terminal > 0).then(|| OutputWriter::new(Sink::Stdout));
    let mut writers = Vec::new();
    let mut rings = Vec::new();
    for vm in &spec.vms {
        let ring = match &vm.serial.output {
            SerialOutput::Stdout => stdout
                .as_mut()
                .map(|w| w.ring((on_terminal > 1).then_some(vm.name.as_str()))),
            SerialOutput::Off => None,
            SerialOutput::File(path) => {
                let file = File::create(path).map_err(|source| MonitorError::SerialFile {
                    name: vm.name.clone(),
                    path: path.display().to_string(),
                    source,
                })?;
                let mut w = OutputWriter::new(Sink::File(file));
                let ring = w.ring(None);
                writers.push(w);
                Some(ring)
            }
        };
        rings.push(ring);
    }
    writers.extend(stdout);
    let filter = match spec.host.seccomp {
        true => Some(Arc::new(seccomp::filter(ThreadClass::Output)?)),
        false => None,
    };
    for w in &mut writers {
        w.start(filter.clone())
            .map_err(setup_err("start a serial output writer"))?;
    }
    Ok(Outputs { writers, rings })
}

/// Builds every VM of `spec` (nothing runs yet).
fn build_all(
    kvm: &Kvm,
    spec: &MonitorSpec,
    rings: &[Option<Arc<OutputRing>>],
) -> Result<BTreeMap<usize, VmEntry>, MonitorError> {
    let filter = |class| -> Result<_, MonitorError> {
        Ok(match spec.host.seccomp {
            true => Some(Arc::new(seccomp::filter(class)?)),
            false => None,
        })
    };
    let (vcpu_filter, device_filter) = (filter(ThreadClass::Vcpu)?, filter(ThreadClass::Device)?);
    let mut vms = BTreeMap::new();
    for (id, vm_spec) in spec.vms.iter().enumerate() {
        let opts = BuildOptions {
            serial_out: rings
                .get(id)
                .cloned()
                .flatten()
                .map(|r| Box::new(RingWriter(r)) as SerialOut),
            affinity: spec.host.cpus.clone(),
            vcpu_seccomp: vcpu_filter.clone(),
            device_seccomp: device_filter.clone(),
            ..BuildOptions::default()
        };
        let vm = build_vm(kvm, vm_spec, opts).map_err(|source| MonitorError::Vm {
            name: vm_spec.name.clone(),
            source,
        })?;
        vms.insert(
            id,
            VmEntry {
                name: vm_spec.name.clone(),
                vcpus: vm.vcpu_count(),
                state: VmState::Running(Box::new(vm)),
                paused: false,
                cpu: vm_spec.cpu.clone(),
                memory: vm_spec.memory,
                last_balloon: None,
                output: rings.get(id).cloned().flatten(),
                io_weight: vm_spec.io.weight,
                last_io: None,
            },
        );
    }
    Ok(vms)
}

/// The monitor with every VM built and started, its ticks armed.
fn start_monitor(
    spec: &MonitorSpec,
    opts: &RunOptions,
    kvm: &Kvm,
    signals: Signals,
    rings: &[Option<Arc<OutputRing>>],
) -> Result<Monitor, MonitorError> {
    let mut vms = build_all(kvm, spec, rings)?;
    let allowed_cpus = spec
        .host
        .cpus
        .as_ref()
        .map_or_else(crate::host::online_cpus, Vec::len);
    let mut sched = CpuScheduler::new(allowed_cpus, spec.host.sched_tick_ms)
        .map_err(setup_err("scheduler timer"))?;
    let mut mem = MemoryManager::new(spec.host.memory).map_err(setup_err("memory timer"))?;
    let mut io = crate::share::ShareRuntime::new(spec.host.io).map_err(MonitorError::Io)?;
    let mut stats_timer = TimerFd::new().map_err(|e| setup_err("statistics timer")(e.into()))?;
    if opts.stats_file.is_some() {
        stats_timer
            .reset(STATS_PERIOD, Some(STATS_PERIOD))
            .map_err(|e| setup_err("statistics timer")(e.into()))?;
    }
    for (id, e) in vms.iter_mut() {
        let VmState::Running(vm) = &mut e.state else {
            continue;
        };
        // Before the vCPUs run, so a drive's first request finds its share.
        if let Some(d) = &vm.devices.disks {
            io.add_vm(*id, e.io_weight, d.share.clone(), d.wakers());
        }
        vm.start().map_err(|source| MonitorError::Vm {
            name: e.name.clone(),
            source,
        })?;
        sched.add_vm(*id, vm, &e.cpu);
        if let Some(b) = &vm.devices.balloon {
            mem.add_vm(*id, b, &e.memory);
        }
    }
    if spec.host.scheduler {
        sched.start().map_err(setup_err("scheduler timer"))?;
    } else {
        log::info!("the CPU scheduler is off (host.cpu.scheduler): the host's scheduler alone shares the CPUs");
    }
    mem.start().map_err(setup_err("memory timer"))?;
    io.start().map_err(MonitorError::Io)?;
    let (reap_tx, reaped) = std::sync::mpsc::channel();
    Ok(Monitor {
        vms,
        signals,
        quit: EventFd::new(libc::EFD_NONBLOCK).map_err(setup_err("quit eventfd"))?,
        signal: None,
        sched,
        mem,
        io,
        stats_timer,
        stats_file: opts.stats_file.clone(),
        started: Instant::now(),
        reaped,
        reap_tx,
        reaped_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(setup_err("reap eventfd"))?,
    })
}

type Loop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Runs every VM of `spec` until the last one stops.
pub fn run(spec: &MonitorSpec, opts: &RunOptions) -> Result<MonitorReport, MonitorError> {
    // Before any thread exists, so every thread inherits the blocked mask
    // and SIGINT/SIGTERM only ever arrive through the signalfd.
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
    let mut em: Loop = EventManager::new().map_err(MonitorError::EventLoop)?;
    let mut outputs = open_outputs(spec)?;
    let monitor = start_monitor(spec, opts, &kvm, signals, &outputs.rings)?;
    let console_vm = spec.vms.iter().position(|v| v.serial.stdin);
    let _raw_terminal = match console_vm {
        Some(_) => {
            RawTerminal::enter(libc::STDIN_FILENO).map_err(setup_err("terminal raw mode"))?
        }
        None => None,
    };
    if let Some(VmState::Running(vm)) = console_vm
        .and_then(|i| monitor.vms.get(&i))
        .map(|e| &e.state)
    {
        let quit = monitor
            .quit
            .try_clone()
            .map_err(setup_err("quit eventfd"))?;
        let console = Console::new(vm.serial.clone(), quit).map_err(setup_err("console"))?;
        em.add_subscriber(Arc::new(Mutex::new(console)));
    }
    let monitor = Arc::new(Mutex::new(monitor));
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
    event_loop(&mut em, &monitor)?;
    // The guests are gone; give their last output a moment to reach its
    // destination, but never wait on a reader that does not drain.
    let deadline = Instant::now() + Duration::from_secs(1);
    for w in &mut outputs.writers {
        w.finish(deadline.saturating_duration_since(Instant::now()));
    }
    let mut m = lock(&monitor);
    let vms = std::mem::take(&mut m.vms)
        .into_values()
        .filter_map(|e| match e.state {
            VmState::Stopped(r) => Some(*r),
            _ => None,
        })
        .collect();
    Ok(MonitorReport {
        vms,
        signal: m.signal,
        peak_rss_kib: crate::host::peak_rss_kib(),
    })
}

/// Dispatches events until every VM has stopped.
fn event_loop(em: &mut Loop, monitor: &Arc<Mutex<Monitor>>) -> Result<(), MonitorError> {
    while !lock(monitor).done() {
        match em.run() {
            Ok(_) => {}
            Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EINTR => {}
            Err(e) => {
                let mut m = lock(monitor);
                m.stop_all("event loop failed");
                for e in std::mem::take(&mut m.vms).into_values() {
                    if let VmState::Running(vm) = e.state {
                        (*vm).finish(crate::lifecycle::VmOutcome::Stopped(
                            "event loop failed".into(),
                        ));
                    }
                }
                return Err(MonitorError::EventLoop(e));
            }
        }
    }
    Ok(())
}
