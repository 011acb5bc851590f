//! vCPU threads: one per vCPU, each looping on KVM_RUN and dispatching
//! port-I/O and MMIO exits to the buses, driven through a [`VcpuHandle`]
//! (a command channel plus a kick signal).

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_bindings::{
    kvm_run, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::bus::Bus;
use crate::lifecycle::{VmOutcome, VmShared};

/// The signal that kicks a vCPU out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

thread_local! {
    /// This thread's `kvm_run`, for the kick handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is this thread's own kvm_run mapping, set by
        // `KickTarget` and cleared before the VcpuFd (and its mapping) is
        // dropped; the handler runs on that same thread. A volatile byte
        // store is async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick handler (once per process, before any vCPU starts).
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    register_signal_handler(kick_signal(), handle_kick)
}

/// Points the kick handler at this thread's kvm_run while alive.
struct KickTarget;

impl KickTarget {
    fn set(fd: &mut VcpuFd) -> Self {
        let run: *mut kvm_run = fd.get_kvm_run();
        KVM_RUN.with(|c| c.set(run));
        KickTarget
    }
}

impl Drop for KickTarget {
    fn drop(&mut self) {
        KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
    }
}

/// Where a vCPU thread is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum VcpuState {
    Created = 0,
    Running = 1,
    Paused = 2,
    Stopped = 3,
}

impl VcpuState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => VcpuState::Created,
            1 => VcpuState::Running,
            2 => VcpuState::Paused,
            _ => VcpuState::Stopped,
        }
    }
}

/// What the monitor can ask of a vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuCommand {
    Pause,
    Resume,
    Stop,
}

/// Exit counts of one vCPU.
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

/// A configured vCPU, not yet running.
pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
    pub vm: Arc<VmShared>,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub mem: GuestMemoryMmap,
}

/// The monitor's grip on a running vCPU thread.
pub struct VcpuHandle {
    pub id: u8,
    commands: Sender<VcpuCommand>,
    state: Arc<AtomicU8>,
    thread: Option<JoinHandle<VcpuStats>>,
}

impl VcpuHandle {
    pub fn state(&self) -> VcpuState {
        VcpuState::from_u8(self.state.load(Ordering::Acquire))
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

    /// Waits for the thread to end and returns its exit counts.
    pub fn join(&mut self) -> VcpuStats {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(stats)) => stats,
            Some(Err(_)) => {
                log::error!("vCPU {} thread panicked", self.id);
                VcpuStats::default()
            }
            None => VcpuStats::default(),
        }
    }
}

/// What to do after an exit.
enum Next {
    Continue,
    Stop(VmOutcome),
}

impl Vcpu {
    /// Starts the vCPU's thread.
    pub fn spawn(self, thread_name: String) -> std::io::Result<VcpuHandle> {
        let (tx, rx) = channel();
        let state = Arc::new(AtomicU8::new(VcpuState::Created as u8));
        let id = self.id;
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || self.run(rx, st))?;
        Ok(VcpuHandle {
            id,
            commands: tx,
            state,
            thread: Some(thread),
        })
    }

    fn run(mut self, commands: Receiver<VcpuCommand>, state: Arc<AtomicU8>) -> VcpuStats {
        let set_state = |s: VcpuState| state.store(s as u8, Ordering::Release);
        let _kick = KickTarget::set(&mut self.fd);
        let mut stats = VcpuStats::default();
        set_state(VcpuState::Running);
        if self.id == 0 {
            log::debug!(
                "{}: first KVM_RUN {:.3} ms after process start",
                self.vm.name,
                crate::since_start().as_secs_f64() * 1e3
            );
        }
        'run: loop {
            loop {
                match commands.try_recv() {
                    Ok(VcpuCommand::Stop) | Err(TryRecvError::Disconnected) => break 'run,
                    Ok(VcpuCommand::Resume) => {}
                    Ok(VcpuCommand::Pause) => {
                        set_state(VcpuState::Paused);
                        loop {
                            match commands.recv() {
                                Ok(VcpuCommand::Resume) => break,
                                Ok(VcpuCommand::Pause) => {}
                                Ok(VcpuCommand::Stop) | Err(_) => break 'run,
                            }
                        }
                        set_state(VcpuState::Running);
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
            if self.vm.stopping() {
                break;
            }
            match self.run_once(&mut stats) {
                Next::Continue => {}
                Next::Stop(outcome) => {
                    self.vm.request_stop(outcome);
                    break;
                }
            }
        }
        set_state(VcpuState::Stopped);
        stats
    }

    /// One KVM_RUN and the handling of its exit. This is the hot path:
    /// no allocation, no lock but the device's own.
    fn run_once(&mut self, stats: &mut VcpuStats) -> Next {
        let id = self.id;
        match self.fd.run() {
            Ok(exit) => match exit {
                VcpuExit::IoIn(port, data) => {
                    stats.pio_reads += 1;
                    self.pio.read(u64::from(port), data);
                    Next::Continue
                }
                VcpuExit::IoOut(port, data) => {
                    stats.pio_writes += 1;
                    self.pio.write(u64::from(port), data);
                    Next::Continue
                }
                VcpuExit::MmioRead(addr, data) => {
                    stats.mmio_reads += 1;
                    self.mmio.read(addr, data);
                    Next::Continue
                }
                VcpuExit::MmioWrite(addr, data) => {
                    stats.mmio_writes += 1;
                    self.mmio.write(addr, data);
                    Next::Continue
                }
                VcpuExit::Intr => {
                    stats.interrupted += 1;
                    Next::Continue
                }
                VcpuExit::SystemEvent(kind, _) => match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => Next::Stop(VmOutcome::PowerOff),
                    KVM_SYSTEM_EVENT_RESET => Next::Stop(VmOutcome::Reset),
                    KVM_SYSTEM_EVENT_CRASH => Next::Stop(VmOutcome::Crash { vcpu: id }),
                    other => {
                        stats.other += 1;
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
                    stats.other += 1;
                    Next::Stop(VmOutcome::Error(format!(
                        "vCPU {id}: unexpected exit {other:?}"
                    )))
                }
            },
            Err(e) => match e.errno() {
                libc::EINTR => {
                    self.fd.set_kvm_immediate_exit(0);
                    stats.interrupted += 1;
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
