//! A built VM as the monitor drives it: a plain runtime handle over what
//! `builder::build_vm` made (vCPU threads, buses, devices, the device
//! thread, the VM fd and guest memory). [`Vm::finish`] stops it, waits for
//! its threads and tears it all down.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use crate::boot::{self, cpu, BootPath};
use crate::bus::{Bus, BusError};
use crate::config::VmSpec;
use crate::devices::{IrqLine, SerialDevice};
use crate::lifecycle::{VmOutcome, VmShared};
use crate::vcpu::{Vcpu, VcpuCommand, VcpuHandle, VcpuStats};
use crate::verifier::{CompileError, Verifier, VerifierStats};
use crate::virtio::thread::DeviceThread;

pub use crate::builder::{build_vm, BuildOptions, ExtraDevice};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("KVM: {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot allocate {mib} MiB of guest memory: {source}")]
    Memory {
        mib: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("cannot map guest memory: {0}")]
    HostAddress(vm_memory::GuestMemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error("vCPU {id}: {source}")]
    Cpu { id: u8, source: cpu::CpuError },
    #[error("device layout: {0}")]
    Bus(#[from] BusError),
    #[error("{0}")]
    Acl(#[from] CompileError),
    #[error("{name}: {detail}")]
    Backend { name: String, detail: String },
    #[error(transparent)]
    Block(#[from] crate::virtio::block::BlockError),
    #[error("{0}: this device is not supported yet")]
    Unsupported(String),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

/// The serial port type used in VMs.
pub type Serial = SerialDevice<IrqLine>;

/// A VM's virtio devices as the monitor drives them.
#[derive(Default)]
pub struct VmDevices {
    pub balloon: Option<crate::mem::BalloonHandle>,
    /// The network interfaces, in plan order (`net0`, ...).
    pub net: Vec<crate::virtio::net::NetHandle>,
    /// The vsock device (`vsock0`).
    pub vsock: Option<crate::virtio::vsock::VsockHandle>,
    /// The i8042, for Ctrl+Alt+Del from the host.
    pub keyboard: Option<Arc<Mutex<crate::devices::I8042<I8042Lines>>>>,
    /// The drives (virtio-blk) and the VM's share of `host.io`.
    pub disks: Option<crate::virtio::block::VmDisks>,
}

/// The i8042's keyboard interrupt (ISA IRQ 1).
pub const KEYBOARD_IRQ: u32 = 1;

/// What a VM's i8042 drives: its reset line (the VM stops with
/// `VmOutcome::Reset`) and its keyboard interrupt (an irqfd).
pub struct I8042Lines {
    pub vm: Arc<VmShared>,
    pub keyboard: vmm_sys_util::eventfd::EventFd,
}

impl crate::devices::i8042::ResetLine for I8042Lines {
    fn reset(&mut self) {
        self.vm.request_stop(VmOutcome::Reset);
    }

    fn keyboard_interrupt(&mut self) {
        let _ = self.keyboard.write(1);
    }
}

/// What [`build_vm`] hands over.
pub(crate) struct Parts {
    pub spec: VmSpec,
    pub shared: Arc<VmShared>,
    pub serial: Arc<Mutex<Serial>>,
    pub boot_path: BootPath,
    pub verifier: Arc<Verifier>,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub vcpus: Vec<Vcpu>,
    pub devices: VmDevices,
    pub device_thread: Option<DeviceThread>,
    pub file_writer: Option<crate::output::OutputWriter>,
    pub fd: VmFd,
    pub mem: GuestMemoryMmap,
}

/// A built VM: its vCPUs exist but do not run until [`Vm::start`].
/// Fields drop in order: vCPU threads first, guest memory last.
pub struct Vm {
    pub name: String,
    pub shared: Arc<VmShared>,
    pub serial: Arc<Mutex<Serial>>,
    pub boot_path: BootPath,
    /// The compiled access control list and its counters.
    pub verifier: Arc<Verifier>,
    vcpus: Vec<Vcpu>,
    handles: Vec<VcpuHandle>,
    vcpu_count: usize,
    started: Option<Instant>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    pub devices: VmDevices,
    device_thread: Option<DeviceThread>,
    /// Its serial log's writer (dropped after the vCPUs: drains what is left).
    _file_writer: Option<crate::output::OutputWriter>,
    _fd: VmFd,
    _mem: GuestMemoryMmap,
}

/// What a VM did, once it has stopped.
#[derive(Debug, Clone)]
pub struct VmReport {
    pub name: String,
    pub outcome: VmOutcome,
    pub seconds: f64,
    /// CPU time its vCPU threads and its device thread used, in ns.
    pub cpu_ns: u64,
    /// How often the CPU scheduler held it back.
    pub throttle_events: u64,
    pub exits: VcpuStats,
    pub unclaimed_pio: u64,
    pub unclaimed_mmio: u64,
    /// The access verifier's counters at the end.
    pub acl: VerifierStats,
    /// Its network interfaces' and vsock's final figures (taken once the
    /// device thread has stopped, so nothing is left in flight).
    pub net: Vec<crate::virtio::net::NetStats>,
    pub vsock: Option<crate::virtio::vsock::VsockStats>,
}

impl Vm {
    pub(crate) fn new(p: Parts) -> Vm {
        Vm {
            name: p.spec.name.clone(),
            shared: p.shared,
            serial: p.serial,
            boot_path: p.boot_path,
            verifier: p.verifier,
            vcpu_count: p.vcpus.len(),
            vcpus: p.vcpus,
            handles: Vec::new(),
            started: None,
            pio: p.pio,
            mmio: p.mmio,
            devices: p.devices,
            device_thread: p.device_thread,
            _file_writer: p.file_writer,
            _fd: p.fd,
            _mem: p.mem,
        }
    }

    /// Starts every vCPU thread (or lets the threads of
    /// [`Vm::spawn_paused`] enter the guest). If one cannot start, the VM
    /// is stopped.
    pub fn start(&mut self) -> Result<(), VmError> {
        self.started = Some(Instant::now());
        if !self.handles.is_empty() {
            // Their threads are there, waiting (`spawn_paused`).
            self.command(VcpuCommand::Resume);
            return Ok(());
        }
        self.spawn_vcpus(false)
    }

    /// Starts the vCPU threads without letting them enter the guest: they
    /// wait for [`Vm::start`]. Starting a thread changes the process's
    /// address space (its stack, the signal stack Rust gives every
    /// thread, their guard pages), which every VM of the monitor that is
    /// faulting its memory in then waits for (docs/design.md, "Starting
    /// many VMs"); done at build, a later start changes nothing.
    pub fn spawn_paused(&mut self) -> Result<(), VmError> {
        self.spawn_vcpus(true)
    }

    fn spawn_vcpus(&mut self, paused: bool) -> Result<(), VmError> {
        for vcpu in std::mem::take(&mut self.vcpus) {
            let name = crate::builder::thread_name(&self.name, &format!("-v{}", vcpu.id));
            match vcpu.spawn(name, paused) {
                Ok(h) => self.handles.push(h),
                Err(source) => {
                    self.shared.request_stop(VmOutcome::Error(format!(
                        "cannot start a vCPU thread: {source}"
                    )));
                    self.command(VcpuCommand::Stop);
                    return Err(VmError::Io {
                        what: "spawn vCPU thread",
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Asks the VM to stop for `outcome` (the first reason given is kept)
    /// and takes its vCPUs out of the guest now: a busy guest would
    /// otherwise run on until its next exit, and a halted one until the
    /// worker that tears it down kicks it.
    pub fn request_stop(&self, outcome: VmOutcome) {
        self.shared.request_stop(outcome);
        self.command(VcpuCommand::Stop);
    }

    /// Sends `cmd` to every vCPU.
    pub fn command(&self, cmd: VcpuCommand) {
        for h in &self.handles {
            h.command(cmd);
        }
    }

    /// The running vCPUs' handles (for the CPU scheduler).
    pub fn vcpus(&self) -> &[VcpuHandle] {
        &self.handles
    }

    /// Number of vCPUs (before, during and after the run).
    pub fn vcpu_count(&self) -> usize {
        self.vcpu_count
    }

    /// CPU time used by its vCPU threads and its device thread so far, in ns.
    pub fn cpu_ns(&self) -> u64 {
        self.handles.iter().map(VcpuHandle::cpu_ns).sum::<u64>() + self.device_cpu_ns()
    }

    /// The CPU time of the VM's device thread (0 without one).
    pub fn device_cpu_ns(&self) -> u64 {
        self.device_thread.as_ref().map_or(0, DeviceThread::cpu_ns)
    }

    /// Live exit counts, summed over the vCPUs.
    pub fn exit_stats(&self) -> VcpuStats {
        let mut total = VcpuStats::default();
        for h in &self.handles {
            total.add(&h.stats());
        }
        total
    }

    /// Stops the VM if needed, waits for its threads, reports, and tears
    /// everything down (memory unmapped, fds closed) as `self` goes.
    pub fn finish(mut self, default: VmOutcome) -> VmReport {
        self.shared.request_stop(default);
        self.command(VcpuCommand::Stop);
        let mut exits = VcpuStats::default();
        let mut cpu_ns = 0;
        for mut h in std::mem::take(&mut self.handles) {
            exits.add(&h.join());
            cpu_ns += h.cpu_ns();
        }
        if let Some(t) = &mut self.device_thread {
            cpu_ns += t.cpu_ns();
            t.stop();
        }
        if crate::process::lingering() {
            // The process exits next: its exit unmaps guest memory once
            // every VM is gone, with no VM left to notify (see `linger`).
            std::mem::forget(self._mem.clone());
        }
        VmReport {
            cpu_ns,
            throttle_events: 0,
            name: self.name.clone(),
            outcome: self
                .shared
                .outcome()
                .unwrap_or_else(|| VmOutcome::Error("no outcome recorded".into())),
            seconds: self
                .started
                .map(|s| s.elapsed().as_secs_f64())
                .unwrap_or(0.0),
            exits,
            unclaimed_pio: self.pio.unclaimed(),
            unclaimed_mmio: self.mmio.unclaimed(),
            acl: self.verifier.stats(),
            net: self.devices.net.iter().map(|n| n.stats()).collect(),
            vsock: self.devices.vsock.as_ref().map(|v| v.stats()),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // A VM dropped without `finish` (an error elsewhere) must not leave
        // its vCPU threads running.
        if !self.handles.is_empty() {
            self.shared
                .request_stop(VmOutcome::Stopped("monitor shutting down".into()));
            self.command(VcpuCommand::Stop);
            for h in &mut self.handles {
                h.join();
            }
        }
    }
}
