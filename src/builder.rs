//! Building one VM from its validated spec: the only place KVM objects and
//! devices are created. Guest memory, boot state, the legacy devices on
//! the port bus, the virtio devices (the device plan) on the MMIO bus with
//! their irqfds and ioeventfds, the access verifier, configured vCPUs.
//! A failure part-way drops everything made so far (`Drop` of what was
//! built: fds closed, memory unmapped, the device thread stopped).

use std::sync::{Arc, Mutex, OnceLock};

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, cpu, EntryPoint};
use crate::bus::{AddressSpace, Bus, SharedDevice};
use crate::config::{DeviceKind, DevicePlan, PlannedDevice, VmSpec};
use crate::devices::cmos::{CMOS_BASE, CMOS_LEN};
use crate::devices::i8042::{I8042_BASE, I8042_LEN};
use crate::devices::serial::{SerialOut, COM1_BASE, COM1_IRQ, COM1_LEN};
use crate::devices::{Cmos, IrqLine, SerialDevice, I8042};
use crate::layout::{ram_ranges, MmioSlot, KVM_TSS_ADDR, MIB};
use crate::lifecycle::{ExitQueue, VmShared};
use crate::vcpu::Vcpu;
use crate::verifier::{DeviceRange, Op, Verifier};
use crate::virtio::mmio::{MmioTransport, REG_QUEUE_NOTIFY};
use crate::virtio::thread::DeviceThread;
use crate::virtio::{DeviceState, InterruptLine, VirtioDevice, MMIO_WINDOW};
use crate::vm::{Vm, VmDevices, VmError};

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> VmError {
    move |source| VmError::Io { what, source }
}

/// A device a caller adds to a VM beside the standard ones (benchmarks and
/// tests use this to put an instrumented device on the bus).
pub struct ExtraDevice {
    pub space: AddressSpace,
    pub name: String,
    pub base: u64,
    pub len: u64,
    pub device: SharedDevice,
}

/// How to build a VM beyond its spec.
#[derive(Default)]
pub struct BuildOptions {
    /// Where its serial output goes (default: nowhere).
    pub serial_out: Option<SerialOut>,
    /// Devices added beside the standard ones.
    pub extra: Vec<ExtraDevice>,
    /// Host CPUs its vCPU threads may run on (`None`: any).
    pub affinity: Option<Vec<usize>>,
    /// System call filters of its vCPU threads and of its device thread.
    pub vcpu_seccomp: Option<Arc<seccompiler::BpfProgram>>,
    pub device_seccomp: Option<Arc<seccompiler::BpfProgram>>,
    /// The writer of its serial log file, when it has one (the VM owns it).
    pub file_writer: Option<crate::output::OutputWriter>,
    /// Where the VM says it stops, and its id there (default: a queue of
    /// its own, for a VM driven without a monitor).
    pub exits: Option<(Arc<ExitQueue>, usize)>,
    /// More doorbells (notify address, one eventfd per queue index), set
    /// up as a virtio device's are: for benchmarks that add a device of
    /// their own in `extra`.
    pub doorbells: Vec<(u64, Vec<EventFd>)>,
}

/// What is being built, while it is.
struct Build<'a> {
    spec: &'a VmSpec,
    fd: VmFd,
    mem: GuestMemoryMmap,
    pio: Bus,
    mmio: Bus,
    devices: VmDevices,
    /// Where each virtio device's doorbell is: (notify address, eventfds).
    doorbells: Vec<(u64, Vec<EventFd>)>,
    device_thread: Option<DeviceThread>,
    device_seccomp: Option<Arc<seccompiler::BpfProgram>>,
}

/// Builds the VM of `spec`: its vCPUs exist but do not run until
/// [`Vm::start`].
pub fn build_vm(kvm: &Kvm, spec: &VmSpec, mut opts: BuildOptions) -> Result<Vm, VmError> {
    let fd = create_vm_fd(kvm)?;
    // Guest memory before the in-kernel interrupt controllers: installed
    // after them, the memory slot waits one or two timer ticks (4-8 ms at
    // HZ=250) for a grace period of the VM's SRCU, installed before, it
    // does not (docs/design.md, "Building a VM").
    let mem = create_memory(&fd, spec.memory_mib * MIB)?;
    create_irq_devices(&fd)?;
    if spec.memory.prefault {
        crate::mem::prefault(&mem)?;
    }
    let plan = spec.device_plan();
    let setup = boot::load(
        &mem,
        spec.memory_mib * MIB,
        spec.vcpus,
        &spec.kernel,
        &plan.cmdline,
    )?;
    cpu::setup_page_tables(&mem).map_err(|source| VmError::Cpu { id: 0, source })?;
    let (exits, id) = match opts.exits.take() {
        Some(e) => e,
        None => (
            ExitQueue::new().map_err(io_err("create an exit eventfd"))?,
            0,
        ),
    };
    let shared = Arc::new(VmShared::new(&spec.name, exits, id));
    let mut b = Build {
        spec,
        fd,
        mem,
        pio: Bus::new(AddressSpace::Pio),
        mmio: Bus::new(AddressSpace::Mmio),
        devices: VmDevices::default(),
        doorbells: Vec::new(),
        device_thread: None,
        device_seccomp: opts.device_seccomp.take(),
    };
    let serial = b.devices(&shared, &plan, &mut opts)?;
    let verifier = b.verifier()?;
    let (pio, mmio) = (Arc::new(b.pio), Arc::new(b.mmio));
    let vcpus = create_vcpus(kvm, &b.fd, &b.mem, spec, setup.entry, |id, fd| Vcpu {
        id,
        fd,
        vm: shared.clone(),
        pio: pio.clone(),
        mmio: mmio.clone(),
        verifier: verifier.clone(),
        mem: b.mem.clone(),
        affinity: opts.affinity.clone(),
        seccomp: opts.vcpu_seccomp.clone(),
    })?;
    log::debug!(
        "{}: built: {} vCPU(s), {} MiB, {} virtio device(s), {} entry at {:#x}",
        spec.name,
        spec.vcpus,
        spec.memory_mib,
        plan.virtio.len(),
        setup.path.name(),
        match setup.entry {
            EntryPoint::Linux64 { rip, .. } | EntryPoint::Pvh { rip, .. } => rip,
        }
    );
    Ok(Vm::new(crate::vm::Parts {
        spec: spec.clone(),
        shared,
        serial,
        boot_path: setup.path,
        verifier,
        pio,
        mmio,
        vcpus,
        devices: b.devices,
        device_thread: b.device_thread,
        file_writer: opts.file_writer,
        fd: b.fd,
        mem: b.mem,
    }))
}

fn create_vm_fd(kvm: &Kvm) -> Result<VmFd, VmError> {
    let fd = kvm.create_vm().map_err(kvm_err("create VM"))?;
    fd.set_tss_address(KVM_TSS_ADDR as usize)
        .map_err(kvm_err("set TSS address"))?;
    Ok(fd)
}

/// The in-kernel PIC, IOAPIC and local APICs, and the PIT.
fn create_irq_devices(fd: &VmFd) -> Result<(), VmError> {
    fd.create_irq_chip().map_err(kvm_err("create IRQ chip"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    fd.create_pit2(pit).map_err(kvm_err("create PIT"))?;
    Ok(())
}

impl Build<'_> {
    /// Every device on its bus: the legacy ones, the caller's extras, the
    /// plan's virtio devices. Returns the serial port (the console's).
    fn devices(
        &mut self,
        shared: &Arc<VmShared>,
        plan: &DevicePlan,
        opts: &mut BuildOptions,
    ) -> Result<Arc<Mutex<crate::vm::Serial>>, VmError> {
        let serial = self.legacy_devices(shared, opts.serial_out.take())?;
        for d in std::mem::take(&mut opts.extra) {
            let bus = match d.space {
                AddressSpace::Pio => &mut self.pio,
                AddressSpace::Mmio => &mut self.mmio,
            };
            bus.insert(&d.name, d.base, d.len, d.device)?;
        }
        self.doorbells.append(&mut opts.doorbells);
        for device in &plan.virtio {
            self.virtio_device(device)?;
        }
        Ok(serial)
    }

    /// The VM's ACL compiled over its buses, and its doorbells registered
    /// where the ACL allows them.
    fn verifier(&mut self) -> Result<Arc<Verifier>, VmError> {
        let verifier = Arc::new(Verifier::new(
            &self.spec.name,
            &self.spec.acl,
            &device_ranges(&self.pio, &self.mmio),
        )?);
        let (pio_ranges, mmio_ranges) = verifier.range_counts();
        log::debug!(
            "{}: ACL compiled to {pio_ranges} port and {mmio_ranges} MMIO ranges over {} rules",
            self.spec.name,
            verifier.rules().len()
        );
        self.register_doorbells(&verifier)?;
        Ok(verifier)
    }

    /// COM1, the i8042 (its reset line stops the VM) and the CMOS clock.
    fn legacy_devices(
        &mut self,
        shared: &Arc<VmShared>,
        out: Option<SerialOut>,
    ) -> Result<Arc<Mutex<crate::vm::Serial>>, VmError> {
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("create serial irqfd"))?;
        self.fd
            .register_irqfd(&irq, COM1_IRQ)
            .map_err(kvm_err("register serial irqfd"))?;
        let out = out.unwrap_or_else(|| Box::new(std::io::sink()));
        let serial = Arc::new(Mutex::new(SerialDevice::new(IrqLine(irq), out)));
        let kbd = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("create keyboard irqfd"))?;
        self.fd
            .register_irqfd(&kbd, crate::vm::KEYBOARD_IRQ)
            .map_err(kvm_err("register keyboard irqfd"))?;
        let i8042 = Arc::new(Mutex::new(I8042::new(crate::vm::I8042Lines {
            vm: shared.clone(),
            keyboard: kbd,
        })));
        self.devices.keyboard = Some(i8042.clone());
        self.pio
            .insert("serial0", COM1_BASE, COM1_LEN, serial.clone())?;
        self.pio.insert("i8042", I8042_BASE, I8042_LEN, i8042)?;
        self.pio.insert(
            "cmos",
            CMOS_BASE,
            CMOS_LEN,
            Arc::new(Mutex::new(Cmos::with_host_clock())),
        )?;
        Ok(serial)
    }

    /// One virtio device of the plan.
    fn virtio_device(&mut self, planned: &PlannedDevice) -> Result<(), VmError> {
        match planned.kind {
            DeviceKind::Balloon => {
                let balloon = crate::mem::new_balloon(self.spec)?;
                let dev = self.attach(&planned.name, planned.slot, balloon)?;
                self.devices.balloon = Some(crate::mem::BalloonHandle::new(dev, self.spec));
            }
            DeviceKind::Net(i) => {
                let spec = &self.spec.net[i];
                let net = crate::virtio::net::new_net(spec)?;
                let dev = self.attach(&planned.name, planned.slot, net)?;
                let dev = crate::bus::lock(&dev);
                let handle =
                    crate::virtio::net::NetHandle::new(spec, dev.device(), dev.state().clone());
                self.devices.net.push(handle);
            }
            DeviceKind::Vsock => {
                let spec = self.spec.vsock.as_ref().ok_or_else(|| {
                    VmError::Unsupported(format!("{} without a vsock section", planned.name))
                })?;
                let (vsock, handle) = crate::virtio::vsock::new_vsock(spec)?;
                let dev = self.attach(&planned.name, planned.slot, vsock)?;
                let state = crate::bus::lock(&dev).state().clone();
                self.devices.vsock = Some(handle(state));
            }
            DeviceKind::Block(i) => self.block_device(planned, i)?,
        }
        Ok(())
    }

    /// Drive `i` of the spec: its file (and io_uring) opened now, before
    /// any seccomp filter; it takes from the VM's share of `host.io`.
    fn block_device(&mut self, planned: &PlannedDevice, i: usize) -> Result<(), VmError> {
        use crate::virtio::block::{Block, DriveHandle, VmDisks};
        let spec = self
            .spec
            .drives
            .get(i)
            .ok_or_else(|| VmError::Unsupported(planned.name.clone()))?;
        let share = match &self.devices.disks {
            Some(d) => d.share.clone(),
            None => Arc::new(crate::share::SharedBucket::new()),
        };
        let block = Block::new(spec, &self.mem, share.clone())?;
        let shared = block.shared().clone();
        let dev = self.attach(&planned.name, planned.slot, block)?;
        let state = crate::bus::lock(&dev).state().clone();
        let disks = self.devices.disks.get_or_insert_with(|| VmDisks {
            share,
            drives: Vec::new(),
        });
        disks.drives.push(DriveHandle::new(&spec.id, shared, state));
        Ok(())
    }

    /// Puts `device` behind a virtio-mmio transport in `slot`, with its
    /// interrupt wired to an irqfd; its handler will run on the VM's
    /// device thread (started with the first device).
    fn attach<D: VirtioDevice + 'static>(
        &mut self,
        name: &str,
        slot: MmioSlot,
        device: D,
    ) -> Result<Arc<Mutex<MmioTransport<D>>>, VmError> {
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("create a virtio irqfd"))?;
        self.fd
            .register_irqfd(&irq, slot.irq)
            .map_err(kvm_err("register a virtio irqfd"))?;
        let state = Arc::new(DeviceState::new(name, InterruptLine::new(Box::new(irq))));
        let thread = match &self.device_thread {
            Some(t) => t.handle(),
            None => {
                let name = thread_name(&self.spec.name, "-dev");
                let t = DeviceThread::spawn(name, self.device_seccomp.clone())
                    .map_err(io_err("start the device thread"))?;
                self.device_thread.insert(t).handle()
            }
        };
        let transport = MmioTransport::new(device, self.mem.clone(), state, thread)
            .map_err(io_err("create a virtio transport"))?;
        let notify = transport
            .notify_evts()
            .iter()
            .map(EventFd::try_clone)
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(io_err("clone a queue eventfd"))?;
        self.doorbells.push((slot.base + REG_QUEUE_NOTIFY, notify));
        let dev = Arc::new(Mutex::new(transport));
        self.mmio
            .insert(name, slot.base, MMIO_WINDOW, dev.clone())?;
        Ok(dev)
    }

    /// Lets KVM signal each queue's eventfd on a doorbell write, without
    /// an exit to user space, where the VM's access control list allows
    /// that write. Where it does not, the write exits as any other and
    /// the verifier decides (docs/verifier.md, "Doorbells").
    fn register_doorbells(&mut self, verifier: &Verifier) -> Result<(), VmError> {
        for (addr, evts) in std::mem::take(&mut self.doorbells) {
            if !verifier.would_allow(AddressSpace::Mmio, addr, 4, Op::Write) {
                log::info!(
                    "{}: the ACL does not allow doorbell writes at {addr:#x}: they exit to the verifier",
                    self.spec.name
                );
                continue;
            }
            for (queue, evt) in evts.iter().enumerate() {
                self.fd
                    .register_ioevent(evt, &IoEventAddress::Mmio(addr), queue as u32)
                    .map_err(kvm_err("register a queue ioeventfd"))?;
            }
        }
        Ok(())
    }
}

/// A thread name: Linux keeps 15 bytes, so the end of the VM's name.
pub fn thread_name(vm: &str, suffix: &str) -> String {
    let full = format!("{vm}{suffix}");
    let skip = full.chars().count().saturating_sub(15);
    full.chars().skip(skip).collect()
}

/// What the host's KVM supports of CPUID, asked once per process: KVM
/// computes it from the host's own CPUID, fixed while the module is loaded,
/// and computing it runs a host `CPUID` per leaf and sub-leaf, which
/// traps to the hypervisor when the host is itself a VM (on this machine it
/// was a quarter of a build's CPU; with 200 VMs starting, that is 0.2 s of
/// the monitor's CPU spent asking one question 200 times).
fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, VmError> {
    static SUPPORTED: OnceLock<CpuId> = OnceLock::new();
    if let Some(cpuid) = SUPPORTED.get() {
        return Ok(cpuid.clone());
    }
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("get supported CPUID"))?;
    // Two builders may ask at once; both answers are the same.
    Ok(SUPPORTED.get_or_init(|| cpuid).clone())
}

/// Creates and configures the vCPUs; `make` wraps each fd into a [`Vcpu`].
fn create_vcpus(
    kvm: &Kvm,
    fd: &VmFd,
    mem: &GuestMemoryMmap,
    spec: &VmSpec,
    entry: EntryPoint,
    make: impl Fn(u8, kvm_ioctls::VcpuFd) -> Vcpu,
) -> Result<Vec<Vcpu>, VmError> {
    let supported = supported_cpuid(kvm)?;
    let mut vcpus = Vec::with_capacity(usize::from(spec.vcpus));
    for id in 0..spec.vcpus {
        let vfd = fd
            .create_vcpu(u64::from(id))
            .map_err(kvm_err("create vCPU"))?;
        let cpu_err = |source| VmError::Cpu { id, source };
        let cpuid = cpu::vcpu_cpuid(&supported, id, spec.vcpus).map_err(cpu_err)?;
        vfd.set_cpuid2(&cpuid).map_err(kvm_err("set CPUID"))?;
        cpu::setup_msrs(&vfd).map_err(cpu_err)?;
        cpu::setup_fpu(&vfd).map_err(cpu_err)?;
        cpu::setup_lapic(&vfd).map_err(cpu_err)?;
        if id == 0 {
            cpu::setup_sregs(mem, &vfd, entry).map_err(cpu_err)?;
            cpu::setup_regs(&vfd, entry).map_err(cpu_err)?;
        }
        vcpus.push(make(id, vfd));
    }
    Ok(vcpus)
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
        // by `mem`, which the VM keeps alive (and drops after its vCPUs and
        // its VM fd) for as long as KVM may access it.
        unsafe { fd.set_user_memory_region(region_desc) }
            .map_err(kvm_err("set user memory region"))?;
    }
    Ok(mem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_names_keep_the_end_of_long_vm_names() {
        assert_eq!(thread_name("web", "-dev"), "web-dev");
        assert_eq!(
            thread_name("a-very-long-vm-name", "-v12"),
            "ong-vm-name-v12"
        );
    }
}
