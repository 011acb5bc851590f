//! VM exit latency: Hearth's full exit round trip beside the raw KVM floor.
//!
//! Every benchmark here measures one vCPU that loops forever in a guest
//! loop of two instructions, one of which exits. One criterion iteration
//! is one exit (for the `inkernel` ones: one batch of `BATCH` in-kernel
//! exits plus one exit to user space), so criterion's "time" is the time
//! per exit. Groups:
//!
//! - `floor/*`: a bare kvm-ioctls loop, no Hearth code: one vCPU, the bench
//!   thread calling KVM_RUN and nothing else per exit. `raw-real` is a
//!   real-mode guest doing `out %al, (%dx)` to port 0x510 in a loop (16-bit
//!   code at 0x1000 in a one-page slot); `pio-write`, `pio-read`,
//!   `mmio-write`, `mmio-read` run, in long mode set up by hand, the very
//!   loops the `hearth/*` guests run. The cost of KVM_RUN itself, per kind.
//! - `hearth/pio-write`, `pio-read`, `mmio-write`, `mmio-read`: a real
//!   Hearth VM (`build_vm`, its own vCPU thread, exit loop and bus)
//!   whose guest loops on one access to a device the bench adds (port
//!   0x510, MMIO 0xd800_0000); the device counts accesses in an AtomicU64
//!   and `iter_custom` waits for the count to advance by `iters`.
//! - `inkernel/cpuid`, `inkernel/pit-read`, `inkernel/nop`: the same VM
//!   with a guest that runs `BATCH` unrolled `cpuid` (always exits to KVM,
//!   handled in the kernel), `in $0x40` (the in-kernel PIT) or `nop` (no
//!   exit at all: the guest's own instruction cost) and then one `out` to
//!   the counting port. ns per in-kernel exit = (batch - pio-write) / BATCH;
//!   benches/side_by_side.py does that arithmetic.
//! - `inkernel/doorbell`: the same with `BATCH` MMIO writes to an address
//!   with a KVM ioeventfd registered, as a virtio queue's `QueueNotify`
//!   is: KVM signals the eventfd and resumes the guest without an exit to
//!   user space (what a guest pays per doorbell; the device thread's wake-up
//!   runs beside it on another CPU).
//!
//! The whole process (and so every vCPU thread, which inherits it) is pinned
//! to one host CPU: `HEARTH_BENCH_CPU`, default the last online CPU.
//!
//! `cargo bench --bench exits`; see docs/performance.md.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::Thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use hearth::bus::{AddressSpace, BusDevice};
use hearth::config::{
    BootProtocol, CpuSpec, KernelFormat, KernelSpec, SerialOutput, SerialSpec, VmSpec,
};
use hearth::lifecycle::VmOutcome;
use hearth::vcpu::VcpuCommand;
use hearth::vm::{build_vm, BuildOptions, ExtraDevice, Vm};
use kvm_bindings::{kvm_segment, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

/// The port the bench device claims (and the raw floor's guest writes to).
const BENCH_PORT: u16 = 0x510;
/// The MMIO address the bench device claims, in the 32-bit gap.
const BENCH_MMIO: u64 = 0xd800_0000;
/// In-kernel exits per batch in the `inkernel` benchmarks.
const BATCH: usize = 32;

// ---------------------------------------------------------------------------
// Guest code (x86-64 machine code, hand assembled; the disassembly is beside
// each byte string).

/// `mov $0x510, %dx; 1: out %al, (%dx); jmp 1b`
const LOOP_PIO_WRITE: &[u8] = &[0x66, 0xba, 0x10, 0x05, 0xee, 0xeb, 0xfd];
/// `mov $0x510, %dx; 1: in (%dx), %al; jmp 1b`
const LOOP_PIO_READ: &[u8] = &[0x66, 0xba, 0x10, 0x05, 0xec, 0xeb, 0xfd];
/// `mov $0xd8000000, %ebx; 1: mov %al, (%rbx); jmp 1b`
const LOOP_MMIO_WRITE: &[u8] = &[0xbb, 0x00, 0x00, 0x00, 0xd8, 0x88, 0x03, 0xeb, 0xfc];
/// `mov $0xd8000000, %ebx; 1: mov (%rbx), %al; jmp 1b`
const LOOP_MMIO_READ: &[u8] = &[0xbb, 0x00, 0x00, 0x00, 0xd8, 0x8a, 0x03, 0xeb, 0xfc];

/// `1: <BATCH times `insn`>; mov $0x510, %dx; out %al, (%dx); jmp 1b`
/// (a short jump, or a near one past 127 bytes)
fn batch_loop(insn: &[u8]) -> Vec<u8> {
    let mut code: Vec<u8> = insn.repeat(BATCH);
    code.extend_from_slice(&[0x66, 0xba, 0x10, 0x05, 0xee]);
    match i8::try_from(code.len() + 2) {
        // jmp rel8
        Ok(len) => code.extend_from_slice(&[0xeb, (-len) as u8]),
        // jmp rel32 (e9)
        Err(_) => {
            let back = -(i32::try_from(code.len() + 5).expect("a batch fits a near jump"));
            code.push(0xe9);
            code.extend_from_slice(&back.to_le_bytes());
        }
    }
    code
}

/// `cpuid` (0f a2): always exits to KVM, which emulates it in the kernel.
const CPUID: &[u8] = &[0x0f, 0xa2];
/// `in $0x40, %al` (e4 40): the in-kernel PIT's counter 0.
const PIT_READ: &[u8] = &[0xe4, 0x40];
/// `nop` (90): no exit; the guest's own cost per instruction.
const NOP: &[u8] = &[0x90];
/// Where the `doorbell` guest writes: an ioeventfd, no device.
const DOORBELL_MMIO: u64 = 0xd800_1000;
/// `mov $0xd8001000, %ebx` before the batch of `movl $0, (%rbx)`
/// (c7 03 00 00 00 00): queue 0's index, written as a virtio driver writes
/// QueueNotify.
const DOORBELL_SETUP: &[u8] = &[0xbb, 0x00, 0x10, 0x00, 0xd8];
const DOORBELL: &[u8] = &[0xc7, 0x03, 0x00, 0x00, 0x00, 0x00];

// ---------------------------------------------------------------------------
// Pinning.

/// Pins the calling thread (and every thread it creates later) to one CPU.
fn pin_process() {
    static PIN: Once = Once::new();
    PIN.call_once(|| {
        // SAFETY: sysconf has no memory-safety preconditions.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
        let cpu = std::env::var("HEARTH_BENCH_CPU")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(online - 1);
        // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and
        // sched_setaffinity only read and write the set we own.
        let rc = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        if rc == 0 {
            eprintln!("exits bench: pinned to CPU {cpu}");
        } else {
            eprintln!(
                "exits bench: cannot pin to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    });
}

// ---------------------------------------------------------------------------
// The raw floor: kvm-ioctls only.

/// A one-vCPU VM with `mem_size` bytes of memory at guest address `base`.
struct RawVm {
    _vm: VmFd,
    vcpu: VcpuFd,
    _mem: *mut libc::c_void,
    mem_size: usize,
}

impl Drop for RawVm {
    fn drop(&mut self) {
        // SAFETY: `_mem` is our own mapping of `mem_size` bytes; the VM
        // (and its memory slot) is dropped right after, and the vCPU does
        // not run any more.
        unsafe { libc::munmap(self._mem, self.mem_size) };
    }
}

fn raw_vm(kvm: &Kvm, base: u64, mem_size: usize, fill: impl FnOnce(&mut [u8])) -> RawVm {
    let vm = kvm.create_vm().expect("create VM");
    // SAFETY: an anonymous private mapping; the result is checked.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            mem_size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(mem, libc::MAP_FAILED, "mmap guest memory");
    // SAFETY: the mapping is `mem_size` bytes, readable and writable, ours.
    fill(unsafe { std::slice::from_raw_parts_mut(mem.cast::<u8>(), mem_size) });
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: base,
        memory_size: mem_size as u64,
        userspace_addr: mem as u64,
    };
    // SAFETY: the region is a live mapping that RawVm unmaps only when
    // the VM is dropped.
    unsafe { vm.set_user_memory_region(region) }.expect("set memory region");
    let vcpu = vm.create_vcpu(0).expect("create vCPU");
    RawVm {
        _vm: vm,
        vcpu,
        _mem: mem,
        mem_size,
    }
}

/// Real mode: 16-bit code at 0x1000 in a one-page slot,
/// `mov $0x510, %dx; 1: out %al, (%dx); jmp 1b`.
fn raw_real(kvm: &Kvm) -> RawVm {
    let code = [0xba, 0x10, 0x05, 0xee, 0xeb, 0xfd];
    let raw = raw_vm(kvm, 0x1000, 0x1000, |m| {
        m[..code.len()].copy_from_slice(&code)
    });
    let mut sregs = raw.vcpu.get_sregs().expect("get sregs");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    raw.vcpu.set_sregs(&sregs).expect("set sregs");
    let regs = kvm_bindings::kvm_regs {
        rip: 0x1000,
        rflags: 0x2,
        ..Default::default()
    };
    raw.vcpu.set_regs(&regs).expect("set regs");
    raw
}

/// Long mode set up by hand: 64 KiB at 0, identity-mapped first 2 MiB
/// (PML4 0x1000, PDPT 0x2000, PD 0x3000 with one 2 MiB page) and the 2 MiB
/// around BENCH_MMIO (PD 0x4000, unbacked: accesses exit), GDT at 0x500,
/// and `code` (one of the loops the `hearth/*` guests run) at 0x8000.
fn raw_long(kvm: &Kvm, code: &[u8]) -> RawVm {
    const PML4: u64 = 0x1000;
    const PDPT: u64 = 0x2000;
    const PD: u64 = 0x3000;
    const PD_GIB3: u64 = 0x4000;
    const GDT: u64 = 0x500;
    const CODE: u64 = 0x8000;
    let raw = raw_vm(kvm, 0, 0x10000, |m| {
        let mut put =
            |at: u64, v: u64| m[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
        put(PML4, PDPT | 3);
        put(PDPT, PD | 3);
        put(PD, 0x83); // 2 MiB page at 0, present, writable
        put(PDPT + 3 * 8, PD_GIB3 | 3);
        let mmio_page = BENCH_MMIO & !0x1f_ffff;
        put(PD_GIB3 + ((mmio_page >> 21) & 511) * 8, mmio_page | 0x9b); // + PWT, PCD
        put(GDT, 0);
        put(GDT + 8, 0x00af_9b00_0000_ffff); // 64-bit code
        put(GDT + 16, 0x00cf_9300_0000_ffff); // data
        m[CODE as usize..CODE as usize + code.len()].copy_from_slice(code);
    });
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("supported CPUID");
    raw.vcpu.set_cpuid2(&cpuid).expect("set CPUID");
    let mut sregs = raw.vcpu.get_sregs().expect("get sregs");
    let seg = |selector: u16, type_: u8, l: u8, db: u8| kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db,
        s: 1,
        l,
        g: 1,
        ..Default::default()
    };
    sregs.gdt.base = GDT;
    sregs.gdt.limit = 23;
    sregs.cs = seg(8, 0xb, 1, 0);
    let data = seg(16, 0x3, 0, 1);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.cr3 = PML4;
    sregs.cr4 |= 0x20; // PAE
    sregs.cr0 |= 0x8000_0011; // PG, ET, PE
    sregs.efer |= 0x500; // LME, LMA
    raw.vcpu.set_sregs(&sregs).expect("set sregs");
    let regs = kvm_bindings::kvm_regs {
        rip: CODE,
        rsp: 0x7000,
        rflags: 0x2,
        ..Default::default()
    };
    raw.vcpu.set_regs(&regs).expect("set regs");
    raw
}

/// Runs the vCPU until `n` accesses to BENCH_PORT or BENCH_MMIO have
/// exited (reads get 0).
fn raw_exits(vcpu: &mut VcpuFd, n: u64) {
    let mut left = n;
    while left > 0 {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, _)) if port == BENCH_PORT => left -= 1,
            Ok(VcpuExit::IoIn(port, data)) if port == BENCH_PORT => {
                data.fill(0);
                left -= 1;
            }
            Ok(VcpuExit::MmioWrite(addr, _)) if addr == BENCH_MMIO => left -= 1,
            Ok(VcpuExit::MmioRead(addr, data)) if addr == BENCH_MMIO => {
                data.fill(0);
                left -= 1;
            }
            Ok(other) => panic!("raw floor: unexpected exit {other:?}"),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => panic!("raw floor: KVM_RUN: {e}"),
        }
    }
}

fn floor(c: &mut Criterion) {
    pin_process();
    let kvm = Kvm::new().expect("open /dev/kvm");
    let mut group = c.benchmark_group("floor");
    let kinds: [(&str, &[u8]); 5] = [
        ("raw-real", &[]),
        ("pio-write", LOOP_PIO_WRITE),
        ("pio-read", LOOP_PIO_READ),
        ("mmio-write", LOOP_MMIO_WRITE),
        ("mmio-read", LOOP_MMIO_READ),
    ];
    for (name, code) in kinds {
        let mut raw = if code.is_empty() {
            raw_real(&kvm)
        } else {
            raw_long(&kvm, code)
        };
        raw_exits(&mut raw.vcpu, 100); // the guest works
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                raw_exits(&mut raw.vcpu, iters);
                start.elapsed()
            })
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// Hearth: a real VM with a counting device on its buses.

/// What the counting device shares with the bench thread.
struct Counts {
    count: AtomicU64,
    /// Wake the waiter when `count` reaches this (u64::MAX: nobody waits).
    target: AtomicU64,
    waiter: Mutex<Option<Thread>>,
}

impl Counts {
    fn new() -> Arc<Self> {
        Arc::new(Counts {
            count: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            waiter: Mutex::new(None),
        })
    }

    /// Waits until `n` more accesses than at the call have happened and
    /// returns how long that took.
    fn time(&self, n: u64) -> Duration {
        let start = Instant::now();
        let target = self.count.load(Ordering::Acquire) + n;
        *self.waiter.lock().expect("waiter lock") = Some(std::thread::current());
        self.target.store(target, Ordering::Release);
        while self.count.load(Ordering::Acquire) < target {
            std::thread::park_timeout(Duration::from_millis(5));
        }
        let elapsed = start.elapsed();
        self.target.store(u64::MAX, Ordering::Release);
        elapsed
    }
}

/// The bench device: counts every access (reads return 0).
struct Probe(Arc<Counts>);

impl Probe {
    fn hit(&self) {
        let n = self.0.count.fetch_add(1, Ordering::AcqRel) + 1;
        if n == self.0.target.load(Ordering::Acquire) {
            if let Some(t) = self.0.waiter.lock().expect("waiter lock").as_ref() {
                t.unpark();
            }
        }
    }
}

impl BusDevice for Probe {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        self.hit();
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {
        self.hit();
    }
}

/// Writes `code` as a minimal ELF64 kernel (one PT_LOAD at 0x100000, entry
/// at its start, no PVH note: Hearth enters it through the 64-bit Linux
/// boot protocol, in long mode with 0-4 GiB identity-mapped).
fn write_elf(name: &str, code: &[u8]) -> PathBuf {
    const LOAD: u64 = 0x10_0000;
    const OFFSET: u64 = 0x1000;
    let mut elf = vec![0u8; OFFSET as usize];
    let mut put = |at: usize, bytes: &[u8]| elf[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, b"\x7fELF\x02\x01\x01"); // ELF64, little-endian, version 1
    put(0x10, &2u16.to_le_bytes()); // ET_EXEC
    put(0x12, &62u16.to_le_bytes()); // EM_X86_64
    put(0x14, &1u32.to_le_bytes()); // EV_CURRENT
    put(0x18, &LOAD.to_le_bytes()); // e_entry
    put(0x20, &64u64.to_le_bytes()); // e_phoff
    put(0x34, &64u16.to_le_bytes()); // e_ehsize
    put(0x36, &56u16.to_le_bytes()); // e_phentsize
    put(0x38, &1u16.to_le_bytes()); // e_phnum
    put(0x3a, &64u16.to_le_bytes()); // e_shentsize
    let ph = 64;
    put(ph, &1u32.to_le_bytes()); // PT_LOAD
    put(ph + 4, &5u32.to_le_bytes()); // R + X
    put(ph + 8, &OFFSET.to_le_bytes()); // p_offset
    put(ph + 16, &LOAD.to_le_bytes()); // p_vaddr
    put(ph + 24, &LOAD.to_le_bytes()); // p_paddr
    put(ph + 32, &(code.len() as u64).to_le_bytes()); // p_filesz
    put(ph + 40, &(code.len() as u64).to_le_bytes()); // p_memsz
    put(ph + 48, &0x1000u64.to_le_bytes()); // p_align
    elf.extend_from_slice(code);
    let dir = std::env::temp_dir().join(format!("hearth-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create bench scratch dir");
    let path = dir.join(format!("{name}.elf"));
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(&elf))
        .expect("write bench guest");
    path
}

/// A started Hearth VM running `code`, with the counting device at
/// BENCH_PORT (8 ports) and BENCH_MMIO (4 KiB).
struct BenchVm {
    vm: Vm,
    counts: Arc<Counts>,
}

impl BenchVm {
    fn start(kvm: &Kvm, name: &str, code: &[u8]) -> BenchVm {
        Self::start_with(kvm, name, code, None)
    }

    /// As `start`, with `doorbell` as queue 0's ioeventfd of a device at
    /// DOORBELL_MMIO (registered by the builder, as a virtio device's).
    fn start_with(kvm: &Kvm, name: &str, code: &[u8], doorbell: Option<&EventFd>) -> BenchVm {
        static KICK: Once = Once::new();
        KICK.call_once(|| hearth::vcpu::install_kick_handler().expect("install kick handler"));
        let spec = VmSpec {
            name: name.to_string(),
            vcpus: 1,
            memory_mib: 32,
            memory: hearth::config::MemorySpec::defaults(32),
            kernel: KernelSpec {
                path: write_elf(name, code),
                format: KernelFormat::Elf { pvh_entry: None },
                initrd: None,
                cmdline: String::new(),
                protocol: BootProtocol::Linux,
            },
            serial: SerialSpec {
                output: SerialOutput::Off,
                stdin: false,
            },
            cpu: CpuSpec::default(),
            acl: hearth::config::AclSpec::default(),
            drives: Vec::new(),
            net: Vec::new(),
            vsock: None,
            io: hearth::config::ShareSpec::default(),
            net_share: hearth::config::ShareSpec::default(),
        };
        let counts = Counts::new();
        let probe: hearth::bus::SharedDevice = Arc::new(Mutex::new(Probe(counts.clone())));
        let mut extra = vec![
            ExtraDevice {
                space: AddressSpace::Pio,
                name: "bench-pio".into(),
                base: u64::from(BENCH_PORT),
                len: 8,
                device: probe.clone(),
            },
            ExtraDevice {
                space: AddressSpace::Mmio,
                name: "bench-mmio".into(),
                base: BENCH_MMIO,
                len: 0x1000,
                device: probe.clone(),
            },
        ];
        let mut doorbells = Vec::new();
        if let Some(evt) = doorbell {
            extra.push(ExtraDevice {
                space: AddressSpace::Mmio,
                name: "bench-doorbell".into(),
                base: DOORBELL_MMIO,
                len: 4,
                device: probe.clone(),
            });
            let evt = evt.try_clone().expect("clone the doorbell eventfd");
            doorbells.push((DOORBELL_MMIO, vec![evt]));
        }
        let opts = BuildOptions {
            extra,
            doorbells,
            ..BuildOptions::default()
        };
        let mut vm = build_vm(kvm, &spec, opts).expect("build the bench VM");
        vm.start().expect("start the bench VM");
        let bench = BenchVm { vm, counts };
        // The guest works: 100 accesses arrive within a few seconds.
        let deadline = Instant::now() + Duration::from_secs(10);
        while bench.counts.count.load(Ordering::Acquire) < 100 {
            assert!(
                Instant::now() < deadline && bench.vm.shared.outcome().is_none(),
                "bench VM {name} does not reach its device: {:?}",
                bench.vm.shared.outcome()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        bench
    }

    fn stop(self) {
        let report = self.vm.finish(VmOutcome::Stopped("bench done".into()));
        assert!(
            matches!(report.outcome, VmOutcome::Stopped(_)),
            "bench VM {}: {:?}",
            report.name,
            report.outcome
        );
        assert_eq!(
            (report.unclaimed_pio, report.unclaimed_mmio),
            (0, 0),
            "bench VM {}: unclaimed accesses",
            report.name
        );
    }
}

fn hearth_exits(c: &mut Criterion) {
    pin_process();
    let kvm = Kvm::new().expect("open /dev/kvm");
    let mut group = c.benchmark_group("hearth");
    for (name, code) in [
        ("pio-write", LOOP_PIO_WRITE),
        ("pio-read", LOOP_PIO_READ),
        ("mmio-write", LOOP_MMIO_WRITE),
        ("mmio-read", LOOP_MMIO_READ),
    ] {
        let vm = BenchVm::start(&kvm, &format!("bench-{name}"), code);
        group.bench_function(name, |b| b.iter_custom(|iters| vm.counts.time(iters)));
        vm.stop();
    }
    group.finish();

    let mut group = c.benchmark_group("inkernel");
    for (name, insn) in [("cpuid", CPUID), ("pit-read", PIT_READ), ("nop", NOP)] {
        let vm = BenchVm::start(&kvm, &format!("bench-{name}"), &batch_loop(insn));
        group.bench_function(name, |b| b.iter_custom(|iters| vm.counts.time(iters)));
        vm.stop();
    }
    let evt = EventFd::new(libc::EFD_NONBLOCK).expect("doorbell eventfd");
    let mut code = DOORBELL_SETUP.to_vec();
    code.extend(batch_loop(DOORBELL));
    let vm = BenchVm::start_with(&kvm, "bench-doorbell", &code, Some(&evt));
    group.bench_function("doorbell", |b| b.iter_custom(|iters| vm.counts.time(iters)));
    vm.stop();
    // Every doorbell reached the eventfd (the counter adds them up).
    assert!(evt.read().expect("doorbells signalled") >= BATCH as u64);
    group.finish();
}

/// Floor and Hearth alternated: for each kind, both VMs exist at once and
/// `PAIRED_ROUNDS` rounds each run `PAIRED_EXITS` raw exits (Hearth's vCPU
/// paused) then `PAIRED_EXITS` Hearth exits, so that drifting host load hits
/// both halves of a round alike; the per-round ratio Hearth / floor is the
/// figure to trust on a busy machine. Printed, and written to
/// `target/criterion/paired.json`. `HEARTH_BENCH_PAIRED=0` skips it.
fn paired(_: &mut Criterion) {
    const PAIRED_ROUNDS: usize = 25;
    const PAIRED_EXITS: u64 = 20_000;
    if std::env::var("HEARTH_BENCH_PAIRED").as_deref() == Ok("0") {
        return;
    }
    pin_process();
    let kvm = Kvm::new().expect("open /dev/kvm");
    let mut json = Vec::new();
    for (name, code) in [
        ("pio-write", LOOP_PIO_WRITE),
        ("pio-read", LOOP_PIO_READ),
        ("mmio-write", LOOP_MMIO_WRITE),
        ("mmio-read", LOOP_MMIO_READ),
    ] {
        let mut raw = raw_long(&kvm, code);
        raw_exits(&mut raw.vcpu, 100);
        let vm = BenchVm::start(&kvm, &format!("paired-{name}"), code);
        let (mut floor_ns, mut hearth_ns, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..PAIRED_ROUNDS {
            vm.vm.command(VcpuCommand::Pause);
            // Paused once the count stops moving.
            loop {
                let before = vm.counts.count.load(Ordering::Acquire);
                std::thread::sleep(Duration::from_millis(2));
                if vm.counts.count.load(Ordering::Acquire) == before {
                    break;
                }
            }
            let start = Instant::now();
            raw_exits(&mut raw.vcpu, PAIRED_EXITS);
            let f = start.elapsed().as_nanos() as f64 / PAIRED_EXITS as f64;
            vm.vm.command(VcpuCommand::Resume);
            let h = vm.counts.time(PAIRED_EXITS).as_nanos() as f64 / PAIRED_EXITS as f64;
            floor_ns.push(f);
            hearth_ns.push(h);
            ratios.push(h / f);
        }
        vm.stop();
        let median = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        println!(
            "paired/{name}: floor {:.0} ns, Hearth {:.0} ns per exit; Hearth / floor median {:.3} (min {lo:.3}, max {hi:.3}) over {PAIRED_ROUNDS} rounds of {PAIRED_EXITS} exits",
            median(&floor_ns),
            median(&hearth_ns),
            median(&ratios)
        );
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.4}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        json.push(format!(
            "\"{name}\":{{\"floor_ns\":[{}],\"hearth_ns\":[{}],\"ratio\":[{}]}}",
            list(&floor_ns),
            list(&hearth_ns),
            list(&ratios)
        ));
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/criterion");
    let _ = std::fs::create_dir_all(&dir);
    std::fs::write(dir.join("paired.json"), format!("{{{}}}\n", json.join(",")))
        .expect("write paired.json");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = floor, hearth_exits, paired
}
criterion_main!(benches);
