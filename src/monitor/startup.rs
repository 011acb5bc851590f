//! `run()`: from a validated monitor spec to a running event loop, and the
//! report once it ends. Every VM of the spec is built by the life-cycle
//! workers, several at once, and they start together once all are built.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::Kvm;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::workers::{Done, Launch, Workers};
use super::{BuildPlan, Monitor, VmEntry, VmState};
use crate::api::ApiServer;
use crate::bus::lock;
use crate::config::{MonitorSpec, SerialOutput};
use crate::console::{Console, ConsoleTarget};
use crate::host::{RawTerminal, Signals};
use crate::lifecycle::ExitQueue;
use crate::mem::MemoryManager;
use crate::output::{OutputWriter, Sink};
use crate::sched::CpuScheduler;
use crate::seccomp::{self, ThreadClass};
use crate::vm::{VmError, VmReport};

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("cannot open /dev/kvm: {0} (is KVM available, and may this user use it?)")]
    Kvm(kvm_ioctls::Error),
    #[error("VM {name}: {source}")]
    Vm { name: String, source: VmError },
    #[error("{0}")]
    Build(String),
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
    #[error("hearth serve needs a control socket (--api-socket or host.api)")]
    NoSocket,
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("--stats-file cannot be written from the sandbox (it has no file system); read the statistics with `hearth ctl SOCKET stats`")]
    StatsInSandbox,
    #[error(transparent)]
    FcApi(#[from] crate::fcapi::FcApiError),
}

fn setup_err(what: &'static str) -> impl FnOnce(io::Error) -> MonitorError {
    move |source| MonitorError::Setup { what, source }
}

/// Options of a run beyond the VM definitions.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Rewrite this file with the statistics (JSON) every second.
    pub stats_file: Option<PathBuf>,
    /// Run as a service: until a shutdown request or a signal, whether or
    /// not any VM runs (`hearth serve`).
    pub serve: bool,
    /// `hearth firecracker`: serve Firecracker's API for one VM on this
    /// socket; the run ends when that VM has run and stopped.
    pub firecracker: Option<crate::fcapi::FirecrackerOptions>,
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

/// The seccomp filter of `class`, when the host wants filters.
fn filter(
    spec: &MonitorSpec,
    class: ThreadClass,
) -> Result<Option<Arc<seccompiler::BpfProgram>>, MonitorError> {
    Ok(match spec.host.seccomp {
        true => Some(Arc::new(seccomp::filter(class)?)),
        false => None,
    })
}

/// The terminal's writer and how VMs are built (filters, affinity).
fn build_plan(spec: &MonitorSpec, serving: bool) -> Result<BuildPlan, MonitorError> {
    let on_terminal = spec
        .vms
        .iter()
        .filter(|v| v.serial.output == SerialOutput::Stdout)
        .count();
    let output = filter(spec, ThreadClass::Output)?;
    let mut terminal = OutputWriter::new(Sink::Stdout).realtime(spec.host.realtime_loop);
    terminal
        .start(output.clone())
        .map_err(setup_err("start the terminal's output writer"))?;
    Ok(BuildPlan {
        terminal: Arc::new(terminal),
        prefix: serving || on_terminal > 1,
        affinity: spec.host.cpus.clone(),
        vcpu: filter(spec, ThreadClass::Vcpu)?,
        device: filter(spec, ThreadClass::Device)?,
        output,
    })
}

/// The policies' runtimes, each with its timer armed.
struct Timers {
    sched: CpuScheduler,
    mem: MemoryManager,
    io: crate::share::ShareRuntime,
    net: crate::share::ShareRuntime,
    stats: TimerFd,
}

impl Timers {
    fn start(spec: &MonitorSpec, opts: &RunOptions) -> Result<Self, MonitorError> {
        let allowed_cpus = spec
            .host
            .cpus
            .as_ref()
            .map_or_else(crate::host::online_cpus, Vec::len);
        let sched = CpuScheduler::new(allowed_cpus, spec.host.sched_tick_ms)
            .map_err(setup_err("scheduler timer"))?;
        let mut mem = MemoryManager::new(spec.host.memory).map_err(setup_err("memory timer"))?;
        let mut io = crate::share::ShareRuntime::new(spec.host.io).map_err(MonitorError::Io)?;
        let mut net = crate::share::ShareRuntime::new(spec.host.net).map_err(MonitorError::Io)?;
        let mut stats = TimerFd::new().map_err(|e| setup_err("statistics timer")(e.into()))?;
        if opts.stats_file.is_some() {
            stats
                .reset(STATS_PERIOD, Some(STATS_PERIOD))
                .map_err(|e| setup_err("statistics timer")(e.into()))?;
        }
        // The scheduler's ticks start later, with the loop that serves them
        // (`start_file_vms`): ticks during the file's builds would only count
        // as missed.
        if !spec.host.scheduler {
            log::info!("the CPU scheduler is off (host.cpu.scheduler): the host's scheduler alone shares the CPUs");
        }
        mem.start().map_err(setup_err("memory timer"))?;
        io.start().map_err(MonitorError::Io)?;
        net.start().map_err(MonitorError::Io)?;
        Ok(Timers {
            sched,
            mem,
            io,
            net,
            stats,
        })
    }
}

/// The file's VMs, built and waiting to start together.
type FileVms = Vec<Done>;

/// The file's VMs build on the workers side by side, vCPU threads and
/// all, and start together once they all are ([`start_file_vms`]): a
/// start then changes nothing in the address space that the booting VMs
/// fault their memory in, and builds do not wait behind those faults
/// (design.md, "Starting many VMs").
fn build_file_vms(monitor: &mut Monitor, spec: &MonitorSpec) -> Result<FileVms, MonitorError> {
    for vm in &spec.vms {
        let id = monitor.next_id;
        monitor.next_id += 1;
        let mut entry = VmEntry::new(vm.clone());
        entry.from_file = true;
        monitor.vms.insert(id, entry);
        monitor.build(id, Launch::Paused);
    }
    let mut built = Vec::with_capacity(spec.vms.len());
    for _ in &spec.vms {
        match monitor.workers.wait_done() {
            Some(done) => built.push(done),
            None => {
                return Err(MonitorError::Build(
                    "the life-cycle workers are gone".into(),
                ))
            }
        }
    }
    Ok(built)
}

/// Starts the file's VMs and the scheduler's ticks, as the last step
/// before the loop runs: everything that takes the loop's thread a while
/// (the control sockets, compiling and installing its seccomp filter,
/// the sandbox) is done by then, so the first tick is served on time
/// (with 200 VMs just started it came up to 8 ms late). If one VM failed
/// to build, none starts (the run fails).
fn start_file_vms(
    monitor: &mut Monitor,
    built: FileVms,
    spec: &MonitorSpec,
) -> Result<(), MonitorError> {
    let all_built = built
        .iter()
        .all(|d| matches!(d, Done::Built { result: Ok(_), .. }));
    for done in built {
        let done = match done {
            Done::Built {
                id,
                result: Ok(mut vm),
                output,
                started: false,
            } if all_built => {
                let result = vm.start().map(|()| vm);
                Done::Built {
                    id,
                    result,
                    output,
                    started: true,
                }
            }
            other => other,
        };
        monitor.finished(done);
    }
    if spec.host.scheduler {
        monitor
            .sched
            .start()
            .map_err(setup_err("scheduler timer"))?;
    }
    Ok(())
}

/// The monitor with its policies' timers armed (the scheduler's with the
/// file's VMs, [`start_file_vms`]) and the spec's VMs built.
fn start_monitor(
    spec: &MonitorSpec,
    opts: &RunOptions,
    kvm: Arc<Kvm>,
    signals: Signals,
    console: Option<(usize, ConsoleTarget)>,
) -> Result<(Monitor, FileVms), MonitorError> {
    // `hearth firecracker` writes its one VM's console as Firecracker does: unprefixed.
    let plan = build_plan(spec, opts.serve && opts.firecracker.is_none())?;
    let workers = Workers::start(
        crate::host::online_cpus().max(2),
        kvm,
        filter(spec, ThreadClass::Builder)?,
    )
    .map_err(setup_err("start the life-cycle workers"))?;
    let timers = Timers::start(spec, opts)?;
    let mut monitor = Monitor {
        vms: BTreeMap::new(),
        next_id: 0,
        host: spec.host.clone(),
        plan,
        workers,
        workers_busy: false,
        retries: Default::default(),
        serving: opts.serve,
        shutting_down: false,
        signals,
        quit: EventFd::new(libc::EFD_NONBLOCK).map_err(setup_err("quit eventfd"))?,
        signal: None,
        sched: timers.sched,
        mem: timers.mem,
        io: timers.io,
        net: timers.net,
        stats_timer: timers.stats,
        stats_file: match &opts.stats_file {
            Some(path) => Some(
                super::statsfile::StatsWriter::start(
                    path.clone(),
                    filter(spec, ThreadClass::EventLoop)?,
                    spec.host.realtime_loop,
                )
                .map_err(setup_err("statistics file writer"))?,
            ),
            None => None,
        },
        started: Instant::now(),
        exits: ExitQueue::new().map_err(setup_err("exit eventfd"))?,
        console,
        fatal: None,
        fc_apis: match spec.host.api.is_some() || opts.firecracker.is_some() {
            true => Some(Arc::new(
                crate::fcapi::Registry::new().map_err(setup_err("Firecracker API registry"))?,
            )),
            false => None,
        },
        exit_with_vm: opts.firecracker.is_some(),
    };
    // The loop thread takes the CPU ahead of the VMs it schedules
    // (docs/scheduler.md) from here on: the file's VMs start as they are
    // built, and among hundreds of busy vCPUs a normal thread took seconds
    // to take in the last of them and start the loop. It starts no thread
    // after this but inline tear-downs' (SCHED_RESET_ON_FORK: they would
    // not be real-time).
    if spec.host.realtime_loop {
        crate::host::try_realtime(crate::host::LOOP_RT_PRIORITY, "the event loop");
    }
    let built = build_file_vms(&mut monitor, spec)?;
    Ok((monitor, built))
}

type Loop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// What must happen while the process has one thread, so that every
/// thread inherits it: SIGINT/SIGTERM blocked (they only ever arrive
/// through the signalfd), the sandbox's namespaces, the monitor's raised
/// priority, the vCPU kick handler.
fn prepare_process(spec: &MonitorSpec, opts: &RunOptions) -> Result<Signals, MonitorError> {
    let signals = Signals::block_and_open().map_err(setup_err("signalfd"))?;
    crate::process::one_malloc_arena();
    match crate::process::reserve_fds(spec.vms.len(), &signals) {
        Ok(n) => log::debug!("file table sized for {n} descriptors"),
        Err(e) => log::debug!("file table left to grow as it fills ({e})"),
    }
    if spec.host.sandbox.is_some() {
        if opts.stats_file.is_some() {
            return Err(MonitorError::StatsInSandbox);
        }
        // While this is the only thread: every thread starts in these.
        // A network namespace of its own unless a tap is in the host's.
        crate::sandbox::unshare(spec.vms.iter().all(|v| v.net.is_empty()))?;
    }
    crate::host::open_proc();
    // Also before any thread exists, so the monitor's threads inherit it.
    match crate::host::raise_monitor_priority() {
        Ok((vms, monitor)) => {
            log::debug!("the monitor's threads run at nice {monitor}, vCPU threads at {vms}")
        }
        Err(e) => log::debug!(
            "the monitor's threads keep the vCPU threads' priority ({e}): with more busy vCPUs than CPUs they get one vCPU's share"
        ),
    }
    crate::vcpu::install_kick_handler().map_err(|e| MonitorError::Setup {
        what: "install the vCPU kick handler",
        source: io::Error::from_raw_os_error(e.errno()),
    })?;
    Ok(signals)
}

/// Runs the VMs of `spec` until the last one stops (or, with
/// `opts.serve`, until a shutdown request or a signal).
pub fn run(spec: &MonitorSpec, opts: &RunOptions) -> Result<MonitorReport, MonitorError> {
    let signals = prepare_process(spec, opts)?;
    let kvm = Arc::new(Kvm::new().map_err(MonitorError::Kvm)?);
    if opts.serve && spec.host.api.is_none() && opts.firecracker.is_none() {
        return Err(MonitorError::NoSocket);
    }
    let fc_socket = opts
        .firecracker
        .as_ref()
        .map(|f| crate::fcapi::bind(&f.api_sock, crate::fcapi::DEFAULT_MODE, true))
        .transpose()?;
    // Bound before any VM exists, so a socket in use fails the run early.
    let api = spec
        .host
        .api
        .as_ref()
        .map(crate::api::Listener::bind)
        .transpose()?;
    let mut em: Loop = EventManager::new().map_err(MonitorError::EventLoop)?;
    // The file's VMs get ids 0.. in order; the console feeds the one that
    // reads stdin, once it is built.
    let console_vm = spec.vms.iter().position(|v| v.serial.stdin);
    let target = ConsoleTarget::default();
    let console = console_vm.map(|index| (index, target.clone()));
    let (monitor, file_vms) = start_monitor(spec, opts, kvm, signals, console)?;
    let _raw_terminal = match console_vm {
        Some(_) => {
            RawTerminal::enter(libc::STDIN_FILENO).map_err(setup_err("terminal raw mode"))?
        }
        None => None,
    };
    if console_vm.is_some() {
        let quit = monitor
            .quit
            .try_clone()
            .map_err(setup_err("quit eventfd"))?;
        let console = Console::new(target, quit).map_err(setup_err("console"))?;
        em.add_subscriber(Arc::new(Mutex::new(console)));
    }
    let terminal = monitor.plan.terminal.clone();
    let monitor = Arc::new(Mutex::new(monitor));
    em.add_subscriber(monitor.clone());
    if let Some(listener) = api {
        let server =
            ApiServer::new(listener, monitor.clone()).map_err(setup_err("control socket"))?;
        em.add_subscriber(Arc::new(Mutex::new(server)));
    }
    let registry = lock(&monitor).fc_apis.clone();
    if let Some(registry) = registry {
        if let (Some(f), Some((listener, file))) = (&opts.firecracker, fc_socket) {
            registry.add(crate::fcapi::firecracker_endpoint(f, listener, file));
        }
        let server = crate::fcapi::FcApiServer::new(monitor.clone(), registry)
            .map_err(setup_err("Firecracker API"))?;
        em.add_subscriber(Arc::new(Mutex::new(server)));
    }
    confine(spec, &monitor, &file_vms)?;
    start_file_vms(&mut lock(&monitor), file_vms, spec)?;
    event_loop(&mut em, &monitor)?;
    // The guests are gone; give their last output a moment to reach the
    // terminal, but never wait on a reader that does not drain.
    terminal.finish(Duration::from_secs(1));
    let mut m = lock(&monitor);
    report(&mut m)
}

/// Waits (at most `limit`) until every vCPU thread has what the scheduler
/// reads its run state from: KVM's statistics (open from the start), or,
/// on kernels without them, its /proc stat file, which the sandbox would
/// hide (without it the scheduler takes the thread as always runnable).
fn vcpus_settled(monitor: &Arc<Mutex<Monitor>>, file_vms: &FileVms, limit: Duration) {
    let all_settled = |vm: &crate::vm::Vm| vm.vcpus().iter().all(crate::vcpu::VcpuHandle::settled);
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let waiting = file_vms.iter().all(|d| match d {
            Done::Built { result: Ok(vm), .. } => all_settled(vm),
            _ => true,
        });
        let running = lock(monitor)
            .vms
            .values()
            .filter_map(VmEntry::running)
            .all(all_settled);
        if waiting && running {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    log::warn!("sandbox: some vCPU threads have not run yet; the scheduler takes them as runnable");
}

/// Everything is open and every thread has started: the sandbox, if the
/// host wants one, then the event loop's seccomp filter (docs/security.md).
fn confine(
    spec: &MonitorSpec,
    monitor: &Arc<Mutex<Monitor>>,
    file_vms: &FileVms,
) -> Result<(), MonitorError> {
    if let Some(jail) = &spec.host.sandbox {
        lock(monitor).workers.stop_growing();
        vcpus_settled(monitor, file_vms, Duration::from_secs(5));
        crate::sandbox::enter(jail)?;
        if spec.host.seccomp {
            let sealed = Arc::new(seccomp::sandboxed(ThreadClass::Builder)?);
            lock(monitor).workers.seal(sealed);
        }
    }
    if spec.host.seccomp {
        match spec.host.sandbox {
            Some(_) => seccomp::install_sandboxed(ThreadClass::EventLoop)?,
            None => seccomp::install(ThreadClass::EventLoop)?,
        }
    }
    Ok(())
}

/// How the run ended.
fn report(m: &mut Monitor) -> Result<MonitorReport, MonitorError> {
    if let Some(message) = m.fatal.take() {
        return Err(MonitorError::Build(message));
    }
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

/// `hearth serve`: [`run`] as a service.
pub fn serve(spec: &MonitorSpec, opts: &RunOptions) -> Result<MonitorReport, MonitorError> {
    run(
        spec,
        &RunOptions {
            serve: true,
            ..opts.clone()
        },
    )
}

/// Dispatches events until the monitor is done.
fn event_loop(em: &mut Loop, monitor: &Arc<Mutex<Monitor>>) -> Result<(), MonitorError> {
    while !lock(monitor).done() {
        match em.run() {
            Ok(_) => {}
            Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EINTR => {}
            Err(e) => {
                let mut m = lock(monitor);
                m.stop_all("event loop failed");
                for e in std::mem::take(&mut m.vms).into_values() {
                    if let VmState::Running(vm) | VmState::Created(vm) = e.state {
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
