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
use kvm_ioctls::Kvm;
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

#[path = "exits/raw.rs"]
mod raw;
use raw::{floor, raw_exits, raw_long};

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
