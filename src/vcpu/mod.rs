//! vCPU threads: one per vCPU, each looping on KVM_RUN and dispatching
//! port-I/O and MMIO exits to the buses, driven through a [`VcpuHandle`]
//! (a command channel plus a kick signal).

use std::sync::atomic::{AtomicI32, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::sync::OnceLock;
use std::thread::JoinHandle;

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::bus::Bus;
use crate::lifecycle::{VmOutcome, VmShared};
use crate::verifier::{Op, Verdict, Verifier};

mod kick;
use kick::KickTarget;
pub use kick::{install_kick_handler, kick_signal};

/// Where a vCPU thread is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum VcpuState {
    Created = 0,
    Running = 1,
    Paused = 2,
    Throttled = 3,
    Stopped = 4,
}

impl VcpuState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => VcpuState::Created,
            1 => VcpuState::Running,
            2 => VcpuState::Paused,
            3 => VcpuState::Throttled,
            _ => VcpuState::Stopped,
        }
    }
}

/// What the monitor can ask of a vCPU. Pause/Resume are the user's (or
/// the control API's); Throttle/Unthrottle are the CPU scheduler's. A vCPU
/// runs guest code only when it is neither paused nor throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuCommand {
    Pause,
    Resume,
    Throttle,
    Unthrottle,
    Stop,
}

/// Exit counts of one vCPU (a snapshot of its [`VcpuCounters`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VcpuStats {
    pub pio_reads: u64,
    pub pio_writes: u64,
    pub mmio_reads: u64,
    pub mmio_writes: u64,
    /// KVM_RUN interrupted by a kick (or any signal).
    pub interrupted: u64,
    pub other: u64,
}

impl VcpuStats {
    pub fn add(&mut self, o: &VcpuStats) {
        self.pio_reads += o.pio_reads;
        self.pio_writes += o.pio_writes;
        self.mmio_reads += o.mmio_reads;
        self.mmio_writes += o.mmio_writes;
        self.interrupted += o.interrupted;
        self.other += o.other;
    }

    pub fn total(&self) -> u64 {
        self.pio_reads
            + self.pio_writes
            + self.mmio_reads
            + self.mmio_writes
            + self.interrupted
            + self.other
    }
}

/// Live exit counters of one vCPU: written only by its own thread
/// (relaxed increments on a cache line no other thread writes), read by the
/// monitor for statistics.
#[derive(Debug, Default)]
pub struct VcpuCounters {
    pio_reads: AtomicU64,
    pio_writes: AtomicU64,
    mmio_reads: AtomicU64,
    mmio_writes: AtomicU64,
    interrupted: AtomicU64,
    other: AtomicU64,
    /// The thread's CPU time when it ended (its clock is gone after that).
    final_cpu_ns: AtomicU64,
    /// Its [`VcpuState`], next to what the scheduler's tick reads with it.
    state: AtomicU8,
}

impl VcpuCounters {
    #[inline]
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> VcpuStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        VcpuStats {
            pio_reads: get(&self.pio_reads),
            pio_writes: get(&self.pio_writes),
            mmio_reads: get(&self.mmio_reads),
            mmio_writes: get(&self.mmio_writes),
            interrupted: get(&self.interrupted),
            other: get(&self.other),
        }
    }
}

/// How the monitor reads a thread's CPU time and run state.
#[derive(Debug, Clone, Copy)]
pub struct ThreadIds {
    /// Kernel thread id (for /proc/self/task/TID).
    pub tid: libc::pid_t,
    /// The thread's CPU-time clock (counts time spent inside KVM_RUN).
    pub cpu_clock: libc::clockid_t,
}

/// A configured vCPU, not yet running.
pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
    pub vm: Arc<VmShared>,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    /// Checks every port-I/O and MMIO access before the bus sees it.
    pub verifier: Arc<Verifier>,
    pub mem: GuestMemoryMmap,
    /// Host CPUs this vCPU's thread may run on (`None`: any).
    pub affinity: Option<Vec<usize>>,
    /// The vCPU thread class's system call filter (`None`: none).
    pub seccomp: Option<Arc<seccompiler::BpfProgram>>,
}

/// The monitor's grip on a running vCPU thread.
pub struct VcpuHandle {
    pub id: u8,
    commands: Sender<VcpuCommand>,
    counters: Arc<VcpuCounters>,
    /// The thread's kernel id, which it publishes first thing (0 until then).
    tid: Arc<AtomicI32>,
    /// Its CPU-time clock (`None` if the system would not say).
    cpu_clock: Option<libc::clockid_t>,
    /// Whether the vCPU waits in KVM for an interrupt (src/kvmstat.rs).
    halted: Option<crate::kvmstat::Halted>,
    /// Without that figure: the thread's /proc stat file, opened by the
    /// thread itself first thing (so it is there inside the sandbox).
    stat: Arc<OnceLock<crate::host::ProcFile>>,
    /// Disconnected once the thread has closed its vCPU (or ended).
    closed: Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl VcpuHandle {
    pub fn state(&self) -> VcpuState {
        VcpuState::from_u8(self.counters.state.load(Ordering::Acquire))
    }

    /// The live exit counts.
    pub fn stats(&self) -> VcpuStats {
        self.counters.snapshot()
    }

    /// The thread's ids, for CPU accounting (`None` until the thread has
    /// run, or if the system would not say).
    pub fn thread_ids(&self) -> Option<ThreadIds> {
        let tid = self.tid.load(Ordering::Acquire);
        match (tid, self.cpu_clock) {
            (1.., Some(cpu_clock)) => Some(ThreadIds { tid, cpu_clock }),
            _ => None,
        }
    }

    /// CPU time the vCPU thread has used, including time inside KVM_RUN.
    pub fn cpu_ns(&self) -> u64 {
        // The thread stores its final figure before it reports itself
        // stopped, and its clock is valid until it ends after that (a
        // clock read that fails, as after a panic, gives the final figure).
        let live = match self.cpu_clock {
            Some(clock) if self.state() != VcpuState::Stopped => crate::host::thread_cpu_ns(clock),
            _ => None,
        };
        live.unwrap_or_else(|| self.counters.final_cpu_ns.load(Ordering::Acquire))
    }

    /// Whether the thread has what [`Self::runnable`] reads (or ended without).
    pub fn settled(&self) -> bool {
        self.halted.is_some()
            || self.stat.get().is_some()
            || self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Whether reading [`Self::runnable`] is cheap (KVM's figure, not /proc).
    pub fn runnable_is_cheap(&self) -> bool {
        self.halted.is_some()
    }

    /// Whether the vCPU wants a CPU right now: it runs or waits for one (a
    /// thread that has not run yet is waiting for one), as opposed to
    /// halted in the guest, paused, throttled or stopped.
    pub fn runnable(&self) -> bool {
        let not_run = || self.thread.as_ref().is_some_and(|t| !t.is_finished());
        match (&self.halted, self.state()) {
            (_, VcpuState::Created) => not_run(),
            (Some(h), VcpuState::Running) => h.blocked() == Some(false),
            (Some(_), _) => false,
            (None, _) => match self.stat.get() {
                Some(stat) => crate::host::thread_runnable(stat).unwrap_or(false),
                // Not run yet (waiting for a CPU), or it could not open it.
                None => not_run(),
            },
        }
    }

    /// Sends `cmd` and kicks the thread out of KVM_RUN so it sees it.
    pub fn command(&self, cmd: VcpuCommand) {
        // A send fails only when the thread has already ended, which is
        // what every command wants eventually anyway.
        let _ = self.commands.send(cmd);
        self.kick();
    }

    /// Makes KVM_RUN return on this vCPU's thread (now, or at its next entry).
    pub fn kick(&self) {
        use std::os::unix::thread::JoinHandleExt;
        if let Some(t) = &self.thread {
            if !t.is_finished() {
                // SAFETY: the pthread is alive (not finished and not yet
                // joined, as we still hold its JoinHandle); pthread_kill
                // only queues a signal whose handler is installed.
                unsafe { libc::pthread_kill(t.as_pthread_t(), kick_signal()) };
            }
        }
    }

    /// Waits for the thread to end (when the process lingers, only for it
    /// to close its vCPU: it may not end before the process does, and its
    /// handle is let go) and returns its exit counts.
    pub fn join(&mut self) -> VcpuStats {
        let mut thread = self.thread.take();
        if crate::process::lingering() {
            let _ = self.closed.recv();
            thread = thread.filter(JoinHandle::is_finished);
        }
        if let Some(Err(_)) = thread.map(JoinHandle::join) {
            log::error!("vCPU {} thread panicked", self.id);
        }
        self.counters.snapshot()
    }
}

/// What to do after an exit.
enum Next {
    Continue,
    Stop(VmOutcome),
}

/// A guest read: checked by the verifier, then dispatched by the bus. A
/// denied read returns all ones, as an unclaimed one does.
#[inline]
fn read(verifier: &Verifier, bus: &Bus, addr: u64, data: &mut [u8]) -> Next {
    match verifier.check(bus.space(), addr, data.len(), Op::Read) {
        Verdict::Allow => {
            bus.read(addr, data);
            Next::Continue
        }
        Verdict::Deny => {
            data.fill(0xff);
            Next::Continue
        }
        Verdict::Stop(v) => {
            data.fill(0xff);
            Next::Stop(violation_outcome(verifier, &v))
        }
    }
}

/// A guest write: checked by the verifier, then dispatched by the bus. A
/// denied write is dropped.
#[inline]
fn write(verifier: &Verifier, bus: &Bus, addr: u64, data: &[u8]) -> Next {
    match verifier.check(bus.space(), addr, data.len(), Op::Write) {
        Verdict::Allow => {
            bus.write(addr, data);
            Next::Continue
        }
        Verdict::Deny => Next::Continue,
        Verdict::Stop(v) => Next::Stop(violation_outcome(verifier, &v)),
    }
}

#[cold]
fn violation_outcome(verifier: &Verifier, v: &crate::verifier::Violation) -> VmOutcome {
    VmOutcome::AccessViolation {
        count: v.count,
        last: verifier.describe(v),
    }
}

impl Vcpu {
    /// Starts the vCPU's thread. It does not wait for the thread to run:
    /// with many busy vCPUs on the host CPUs that can take a while, and
    /// the caller (a life-cycle worker) has other VMs to build. A `paused`
    /// thread sets itself up (stack, filter) and waits for a
    /// [`VcpuCommand::Resume`] before it first enters the guest.
    pub fn spawn(self, thread_name: String, paused: bool) -> std::io::Result<VcpuHandle> {
        let (tx, rx) = channel();
        let (closed_tx, closed) = channel();
        if paused {
            let _ = tx.send(VcpuCommand::Pause);
        }
        let counters = Arc::new(VcpuCounters::default());
        let tid = Arc::new(AtomicI32::new(0));
        let id = self.id;
        let ct = counters.clone();
        let published = tid.clone();
        let halted = crate::kvmstat::Halted::open(&self.fd);
        let stat = Arc::new(OnceLock::new());
        let own_stat = halted.is_none().then(|| stat.clone());
        let thread = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                // SAFETY: gettid has no arguments and cannot fail.
                published.store(unsafe { libc::gettid() }, Ordering::Release);
                if let Some(own) = own_stat {
                    if let Ok(file) = crate::host::own_stat() {
                        let _ = own.set(file);
                    }
                }
                self.run(rx, &ct, closed_tx)
            })?;
        Ok(VcpuHandle {
            id,
            commands: tx,
            counters,
            tid,
            cpu_clock: crate::host::thread_cpu_clock(&thread),
            halted,
            stat,
            closed,
            thread: Some(thread),
        })
    }

    fn log_first_entry(&self) {
        log::debug!(
            "{}: first KVM_RUN {:.3} ms after process start",
            self.vm.name,
            crate::since_start().as_secs_f64() * 1e3
        );
    }

    /// The thread's own set-up: the VMs' priority, its CPUs, its seccomp
    /// filter. False (the VM asked to stop) if the filter cannot be installed.
    fn set_up_thread(&self) -> bool {
        // Started by a life-cycle worker: back to the VMs' priority.
        if let Err(e) = crate::host::leave_monitor_priority() {
            log::warn!(
                "{}: vCPU {}: cannot set its priority: {e}",
                self.vm.name,
                self.id
            );
        }
        if let Some(cpus) = &self.affinity {
            if let Err(e) = crate::host::set_thread_affinity(cpus) {
                log::warn!(
                    "{}: vCPU {}: cannot set CPU affinity {cpus:?}: {e}",
                    self.vm.name,
                    self.id
                );
            }
        }
        if let Some(filter) = &self.seccomp {
            if let Err(e) = crate::seccomp::apply(filter) {
                self.vm.request_stop(VmOutcome::Error(format!(
                    "vCPU {}: cannot install its seccomp filter: {e}",
                    self.id
                )));
                return false;
            }
        }
        true
    }

    fn run(mut self, commands: Receiver<VcpuCommand>, stats: &VcpuCounters, closed: Sender<()>) {
        let set_state = |s: VcpuState| stats.state.store(s as u8, Ordering::Release);
        if !self.set_up_thread() {
            set_state(VcpuState::Stopped);
            return;
        }
        let kick = KickTarget::set(&mut self.fd);
        let (mut paused, mut throttled) = (false, false);
        set_state(VcpuState::Running);
        let mut first_entry = self.id == 0;
        'run: loop {
            // Apply every pending command; while not allowed to run, wait
            // for the next one instead of entering the guest.
            loop {
                let next = if paused || throttled {
                    commands.recv().map_err(|_| TryRecvError::Disconnected)
                } else {
                    commands.try_recv()
                };
                match next {
                    Ok(VcpuCommand::Stop) | Err(TryRecvError::Disconnected) => break 'run,
                    Ok(VcpuCommand::Pause) => paused = true,
                    Ok(VcpuCommand::Resume) => paused = false,
                    Ok(VcpuCommand::Throttle) => throttled = true,
                    Ok(VcpuCommand::Unthrottle) => throttled = false,
                    Err(TryRecvError::Empty) => break,
                }
                set_state(if paused {
                    VcpuState::Paused
                } else if throttled {
                    VcpuState::Throttled
                } else {
                    VcpuState::Running
                });
            }
            if self.vm.stopping() {
                break;
            }
            if std::mem::take(&mut first_entry) {
                self.log_first_entry();
            }
            match self.run_once(stats) {
                Next::Continue => {}
                Next::Stop(outcome) => {
                    self.vm.request_stop(outcome);
                    break;
                }
            }
        }
        stats
            .final_cpu_ns
            .store(crate::host::current_thread_cpu_ns(), Ordering::Release);
        // The vCPU (its fd and its kvm_run mapping) closes before the
        // thread reports itself stopped: the VM can go once all have.
        drop(kick);
        drop(self);
        set_state(VcpuState::Stopped);
        drop(closed);
        // Lingering, it waits for the exit; kicks find no kvm_run now.
        while crate::process::lingering() {
            std::thread::park();
        }
    }

    /// One KVM_RUN and the handling of its exit. This is the hot path:
    /// no allocation, no lock but the device's own.
    fn run_once(&mut self, stats: &VcpuCounters) -> Next {
        let id = self.id;
        match self.fd.run() {
            Ok(exit) => match exit {
                VcpuExit::IoIn(port, data) => {
                    VcpuCounters::bump(&stats.pio_reads);
                    read(&self.verifier, &self.pio, u64::from(port), data)
                }
                VcpuExit::IoOut(port, data) => {
                    VcpuCounters::bump(&stats.pio_writes);
                    write(&self.verifier, &self.pio, u64::from(port), data)
                }
                VcpuExit::MmioRead(addr, data) => {
                    VcpuCounters::bump(&stats.mmio_reads);
                    read(&self.verifier, &self.mmio, addr, data)
                }
                VcpuExit::MmioWrite(addr, data) => {
                    VcpuCounters::bump(&stats.mmio_writes);
                    write(&self.verifier, &self.mmio, addr, data)
                }
                VcpuExit::Intr => {
                    VcpuCounters::bump(&stats.interrupted);
                    Next::Continue
                }
                VcpuExit::SystemEvent(kind, _) => match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => Next::Stop(VmOutcome::PowerOff),
                    KVM_SYSTEM_EVENT_RESET => Next::Stop(VmOutcome::Reset),
                    KVM_SYSTEM_EVENT_CRASH => Next::Stop(VmOutcome::Crash { vcpu: id }),
                    other => {
                        VcpuCounters::bump(&stats.other);
                        log::warn!("vCPU {id}: unknown system event {other}, ignored");
                        Next::Continue
                    }
                },
                VcpuExit::Shutdown => Next::Stop(VmOutcome::TripleFault {
                    vcpu: id,
                    rip: self.rip(),
                }),
                VcpuExit::FailEntry(reason, _cpu) => {
                    Next::Stop(VmOutcome::FailEntry { vcpu: id, reason })
                }
                VcpuExit::InternalError => {
                    let (suberror, ndata, data) = self.internal_error_data();
                    let rip = self.rip();
                    let code = self.code_at_rip();
                    log::debug!("vCPU {id}: internal error data: {:x?}", &data[..ndata]);
                    Next::Stop(VmOutcome::InternalError {
                        vcpu: id,
                        suberror,
                        rip,
                        code,
                    })
                }
                VcpuExit::Hlt => Next::Stop(VmOutcome::Error(format!(
                    "vCPU {id} halted with no interrupt controller to wake it"
                ))),
                other => {
                    VcpuCounters::bump(&stats.other);
                    Next::Stop(VmOutcome::Error(format!(
                        "vCPU {id}: unexpected exit {other:?}"
                    )))
                }
            },
            Err(e) => match e.errno() {
                libc::EINTR => {
                    self.fd.set_kvm_immediate_exit(0);
                    VcpuCounters::bump(&stats.interrupted);
                    Next::Continue
                }
                libc::EAGAIN => Next::Continue,
                _ => Next::Stop(VmOutcome::Error(format!("vCPU {id}: KVM_RUN failed: {e}"))),
            },
        }
    }

    /// Suberror and data of a KVM_EXIT_INTERNAL_ERROR.
    fn internal_error_data(&mut self) -> (u32, usize, [u64; 16]) {
        let run = self.fd.get_kvm_run();
        // SAFETY: called right after KVM_RUN returned KVM_EXIT_INTERNAL_ERROR,
        // for which `internal` is the union member KVM filled in.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let ndata = (internal.ndata as usize).min(internal.data.len());
        (internal.suberror, ndata, internal.data)
    }

    /// The linear address of the current instruction (CS base + RIP).
    fn rip(&self) -> u64 {
        let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
        let cs_base = self.fd.get_sregs().map(|s| s.cs.base).unwrap_or(0);
        cs_base.wrapping_add(rip)
    }

    /// Up to 16 bytes of guest code at RIP, for the error report.
    fn code_at_rip(&self) -> Vec<u8> {
        let Ok(t) = self.fd.translate_gva(self.rip()) else {
            return Vec::new();
        };
        if t.valid == 0 {
            return Vec::new();
        }
        let mut code = [0u8; 16];
        let page_left = 0x1000 - (t.physical_address & 0xfff) as usize;
        let n = code.len().min(page_left);
        match self
            .mem
            .read_slice(&mut code[..n], GuestAddress(t.physical_address))
        {
            Ok(()) => code[..n].to_vec(),
            Err(_) => Vec::new(),
        }
    }
}
