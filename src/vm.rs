//! Building one VM from its validated spec: KVM VM, guest memory, boot
//! state, devices on their buses and configured vCPUs. Only this module
//! creates KVM objects; a failure part-way drops everything made so far.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, cpu, BootPath, EntryPoint};
use crate::bus::{AddressSpace, Bus, BusError};
use crate::config::VmSpec;
use crate::devices::cmos::{CMOS_BASE, CMOS_LEN};
use crate::devices::i8042::{I8042_BASE, I8042_LEN};
use crate::devices::serial::{SerialOut, COM1_BASE, COM1_IRQ, COM1_LEN};
use crate::devices::{Cmos, IrqLine, SerialDevice, I8042};
use crate::layout::{ram_ranges, KVM_TSS_ADDR, MIB};
use crate::lifecycle::{VmOutcome, VmShared};
use crate::vcpu::{Vcpu, VcpuCommand, VcpuHandle, VcpuStats};
use crate::verifier::{CompileError, DeviceRange, Verifier, VerifierStats};

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
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// A device a caller adds to a VM beside the standard ones (benchmarks and
/// tests use this to put an instrumented device on the bus).
pub struct ExtraDevice {
    pub space: AddressSpace,
    pub name: String,
    pub base: u64,
    pub len: u64,
    pub device: crate::bus::SharedDevice,
}

/// The serial port type used in VMs.
pub type Serial = SerialDevice<IrqLine>;

/// A built VM: its vCPUs exist but do not run until [`Vm::start`].
pub struct Vm {
    pub name: String,
    pub shared: Arc<VmShared>,
    pub serial: Arc<Mutex<Serial>>,
    pub boot_path: BootPath,
    /// The compiled access control list and its counters.
    pub verifier: Arc<Verifier>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    vcpus: Vec<Vcpu>,
    handles: Vec<VcpuHandle>,
    /// Whether each vCPU is parked by the CPU scheduler.
    parked: Vec<bool>,
    /// Each vCPU's CPU time at the last scheduler sample.
    last_cpu_ns: Vec<u64>,
    started: Option<Instant>,
    pub cpu: crate::config::CpuSpec,
    pub memory: crate::config::MemorySpec,
    /// The VM's virtio-balloon, when it has one.
    pub balloon: Option<crate::mem::BalloonHandle>,
    // Kept last so it is dropped after the vCPUs.
    _fd: VmFd,
    _mem: GuestMemoryMmap,
}

/// What a VM did, once it has stopped.
#[derive(Debug, Clone)]
pub struct VmReport {
    pub name: String,
    pub outcome: VmOutcome,
    pub seconds: f64,
    /// CPU time its vCPU threads used (guest time included), in ns.
    pub cpu_ns: u64,
    /// How often the CPU scheduler held it back.
    pub throttle_events: u64,
    pub exits: VcpuStats,
    pub unclaimed_pio: u64,
    pub unclaimed_mmio: u64,
    /// The access verifier's counters at the end.
    pub acl: VerifierStats,
}

impl Vm {
    /// Creates the VM with the standard devices.
    pub fn build(kvm: &Kvm, spec: &VmSpec, serial_out: SerialOut) -> Result<Vm, VmError> {
        Vm::build_with(kvm, spec, serial_out, Vec::new())
    }

    /// Creates the VM with the standard devices and `extra` ones.
    pub fn build_with(
        kvm: &Kvm,
        spec: &VmSpec,
        serial_out: SerialOut,
        extra: Vec<ExtraDevice>,
    ) -> Result<Vm, VmError> {
        Vm::build_full(kvm, spec, serial_out, extra, None)
    }

    /// Creates the VM with the standard devices and `extra` ones, its vCPU
    /// threads confined to the host CPUs in `affinity`.
    pub fn build_full(
        kvm: &Kvm,
        spec: &VmSpec,
        serial_out: SerialOut,
        extra: Vec<ExtraDevice>,
        affinity: Option<Vec<usize>>,
    ) -> Result<Vm, VmError> {
        let fd = kvm.create_vm().map_err(kvm_err("create VM"))?;
        fd.set_tss_address(KVM_TSS_ADDR as usize)
            .map_err(kvm_err("set TSS address"))?;
        fd.create_irq_chip().map_err(kvm_err("create IRQ chip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(kvm_err("create PIT"))?;

        let mem_bytes = spec.memory_mib * MIB;
        let mem = create_memory(&fd, mem_bytes)?;
        if spec.memory.prefault {
            crate::mem::prefault(&mem)?;
        }
        // Virtio devices are announced on the command line.
        let balloon_slot = (spec.memory.balloon == crate::config::BalloonMode::On)
            .then(|| crate::virtio::mmio_slot(0))
            .flatten();
        let cmdline = match balloon_slot {
            Some(slot) => format!(
                "{} {}",
                spec.kernel.cmdline,
                crate::virtio::cmdline_token(slot)
            ),
            None => spec.kernel.cmdline.clone(),
        };
        let setup = boot::load(&mem, mem_bytes, spec.vcpus, &spec.kernel, &cmdline)?;
        cpu::setup_page_tables(&mem).map_err(|source| VmError::Cpu { id: 0, source })?;

        let shared = Arc::new(VmShared::new(&spec.name).map_err(|source| VmError::Io {
            what: "create exit eventfd",
            source,
        })?);

        // Devices.
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VmError::Io {
            what: "create serial interrupt eventfd",
            source,
        })?;
        fd.register_irqfd(&irq, COM1_IRQ)
            .map_err(kvm_err("register serial irqfd"))?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(IrqLine(irq), serial_out)));
        let reset_vm = shared.clone();
        let i8042 = I8042::new(move || {
            reset_vm.request_stop(VmOutcome::Reset);
        });
        let mut pio = Bus::new(AddressSpace::Pio);
        pio.insert("serial0", COM1_BASE, COM1_LEN, serial.clone())?;
        pio.insert("i8042", I8042_BASE, I8042_LEN, Arc::new(Mutex::new(i8042)))?;
        pio.insert(
            "cmos",
            CMOS_BASE,
            CMOS_LEN,
            Arc::new(Mutex::new(Cmos::with_host_clock())),
        )?;
        let mut mmio = Bus::new(AddressSpace::Mmio);
        for d in extra {
            let bus = match d.space {
                AddressSpace::Pio => &mut pio,
                AddressSpace::Mmio => &mut mmio,
            };
            bus.insert(&d.name, d.base, d.len, d.device)?;
        }
        let balloon = match balloon_slot {
            Some(slot) => Some(crate::mem::attach_balloon(
                &fd,
                &mem,
                &mut mmio,
                slot,
                spec.memory_mib,
                spec.memory.balloon_options,
            )?),
            None => None,
        };
        let verifier = Arc::new(Verifier::new(
            &spec.name,
            &spec.acl,
            &device_ranges(&pio, &mmio),
        )?);
        let (pio_ranges, mmio_ranges) = verifier.range_counts();
        log::debug!(
            "{}: ACL compiled to {pio_ranges} port and {mmio_ranges} MMIO ranges over {} rules",
            spec.name,
            verifier.rules().len()
        );
        let pio = Arc::new(pio);
        let mmio = Arc::new(mmio);

        // vCPUs.
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("get supported CPUID"))?;
        let mut vcpus = Vec::with_capacity(usize::from(spec.vcpus));
        for id in 0..spec.vcpus {
            let vfd = fd
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("create vCPU"))?;
            let cpu_err = |source| VmError::Cpu { id, source };
            let cpuid = cpu::vcpu_cpuid(&supported, id, spec.vcpus).map_err(cpu_err)?;
            vfd.set_cpuid2(&cpuid).map_err(|source| VmError::Kvm {
                what: "set CPUID",
                source,
            })?;
            cpu::setup_msrs(&vfd).map_err(cpu_err)?;
            cpu::setup_fpu(&vfd).map_err(cpu_err)?;
            cpu::setup_lapic(&vfd).map_err(cpu_err)?;
            if id == 0 {
                cpu::setup_sregs(&mem, &vfd, setup.entry).map_err(cpu_err)?;
                cpu::setup_regs(&vfd, setup.entry).map_err(cpu_err)?;
            }
            vcpus.push(Vcpu {
                id,
                fd: vfd,
                vm: shared.clone(),
                pio: pio.clone(),
                mmio: mmio.clone(),
                verifier: verifier.clone(),
                mem: mem.clone(),
                affinity: affinity.clone(),
                seccomp: None,
            });
        }
        log::debug!(
            "{}: built: {} vCPU(s), {} MiB, {} entry at {:#x}",
            spec.name,
            spec.vcpus,
            spec.memory_mib,
            setup.path.name(),
            match setup.entry {
                EntryPoint::Linux64 { rip, .. } | EntryPoint::Pvh { rip, .. } => rip,
            }
        );

        Ok(Vm {
            name: spec.name.clone(),
            shared,
            serial,
            boot_path: setup.path,
            verifier,
            pio,
            mmio,
            parked: vec![false; vcpus.len()],
            last_cpu_ns: vec![0; vcpus.len()],
            vcpus,
            handles: Vec::new(),
            started: None,
            cpu: spec.cpu.clone(),
            memory: spec.memory,
            balloon,
            _fd: fd,
            _mem: mem,
        })
    }

    /// The system call filter every vCPU thread installs before its first
    /// KVM_RUN (`None`: no filter). Call before [`Vm::start`].
    pub fn set_seccomp(&mut self, filter: Option<Arc<seccompiler::BpfProgram>>) {
        for vcpu in &mut self.vcpus {
            vcpu.seccomp = filter.clone();
        }
    }

    /// Starts every vCPU thread. If one cannot start, the VM is stopped.
    pub fn start(&mut self) -> Result<(), VmError> {
        self.started = Some(Instant::now());
        let vcpus: Vec<Vcpu> = self.vcpus.drain(..).collect();
        for vcpu in vcpus {
            let name = format!("{}-v{}", self.name, vcpu.id);
            // Linux limits thread names to 15 bytes.
            let name: String = name
                .chars()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            match vcpu.spawn(name) {
                Ok(h) => self.handles.push(h),
                Err(source) => {
                    self.shared.request_stop(VmOutcome::Error(format!(
                        "cannot start a vCPU thread: {source}"
                    )));
                    self.stop();
                    return Err(VmError::Io {
                        what: "spawn vCPU thread",
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Asks every vCPU to stop (they finish their current exit first).
    pub fn stop(&self) {
        for h in &self.handles {
            h.command(VcpuCommand::Stop);
        }
    }

    /// Sends `cmd` to every vCPU.
    pub fn command(&self, cmd: VcpuCommand) {
        for h in &self.handles {
            h.command(cmd);
        }
    }

    /// Number of vCPUs (before, during and after the run).
    pub fn vcpu_count(&self) -> usize {
        self.parked.len()
    }

    /// CPU time used by all its vCPU threads so far, in ns.
    pub fn cpu_ns(&self) -> u64 {
        self.handles.iter().map(VcpuHandle::cpu_ns).sum()
    }

    /// Live exit counts, summed over the vCPUs.
    pub fn exit_stats(&self) -> VcpuStats {
        let mut total = VcpuStats::default();
        for h in &self.handles {
            total.add(&h.stats());
        }
        total
    }

    /// How many vCPUs the scheduler has parked now.
    pub fn parked_vcpus(&self) -> usize {
        self.parked.iter().filter(|p| **p).count()
    }

    /// Samples CPU use for the scheduler: the total CPU time, and how many
    /// unparked vCPUs want CPU (runnable now, or used at least a quarter of
    /// the last tick).
    pub fn sample(&mut self, tick_ns: u64) -> crate::sched::policy::Sample {
        let mut used = 0;
        let mut busy = 0;
        for (i, h) in self.handles.iter().enumerate() {
            let now = h.cpu_ns();
            let delta = now.saturating_sub(self.last_cpu_ns[i]);
            self.last_cpu_ns[i] = now;
            used += now;
            if !self.parked[i] && (delta >= tick_ns / 4 || h.runnable()) {
                busy += 1;
            }
        }
        crate::sched::policy::Sample {
            used_ns: used,
            busy_vcpus: busy,
        }
    }

    /// Lets `allowed` vCPUs run and parks the rest. Which ones are parked
    /// rotates with `rotation`, so every vCPU makes progress (a guest whose
    /// parked vCPU holds a lock is not stuck behind it for long).
    pub fn allow_vcpus(&mut self, allowed: usize, rotation: usize) {
        let n = self.handles.len();
        if n == 0 {
            return;
        }
        for (i, h) in self.handles.iter().enumerate() {
            let slot = (i + n - rotation % n) % n;
            let park = slot >= allowed;
            if park != self.parked[i] {
                self.parked[i] = park;
                h.command(if park {
                    VcpuCommand::Throttle
                } else {
                    VcpuCommand::Unthrottle
                });
            }
        }
    }

    /// Stops the VM if needed, waits for its vCPU threads and reports.
    pub fn finish(&mut self, default: VmOutcome) -> VmReport {
        self.shared.request_stop(default);
        self.stop();
        let mut exits = VcpuStats::default();
        let mut cpu_ns = 0;
        for mut h in self.handles.drain(..) {
            exits.add(&h.join());
            cpu_ns += h.cpu_ns();
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
        }
    }
}

/// Every range registered on the VM's buses, for the verifier's implicit
/// "a VM may touch its own devices" rules.
fn device_ranges(pio: &Bus, mmio: &Bus) -> Vec<DeviceRange> {
    let mut out = Vec::new();
    for bus in [pio, mmio] {
        for (name, base, len) in bus.ranges() {
            out.push(DeviceRange {
                space: bus.space(),
                name: name.to_string(),
                first: base,
                last: base + (len - 1),
            });
        }
    }
    out
}

/// Allocates guest RAM (anonymous, lazily backed) and registers it with KVM.
fn create_memory(fd: &VmFd, mem_bytes: u64) -> Result<GuestMemoryMmap, VmError> {
    let mem_err = |source| VmError::Memory {
        mib: mem_bytes / MIB,
        source,
    };
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(mem_bytes)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(mem_err)?;
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(VmError::HostAddress)?;
        let region_desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping of `memory_size` bytes owned
        // by `mem`, which the VM struct keeps alive (and drops after the
        // vCPUs) for as long as KVM may access it.
        unsafe { fd.set_user_memory_region(region_desc) }
            .map_err(kvm_err("set user memory region"))?;
    }
    Ok(mem)
}

impl Drop for Vm {
    fn drop(&mut self) {
        // A VM dropped without `finish` (an error elsewhere) must not leave
        // its vCPU threads running.
        if !self.handles.is_empty() {
            self.shared
                .request_stop(VmOutcome::Stopped("monitor shutting down".into()));
            self.stop();
            for h in &mut self.handles {
                h.join();
            }
        }
    }
}
