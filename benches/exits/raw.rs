//! The raw floor: a bare kvm-ioctls loop, no Hearth code (the `floor/*`
//! group of benches/exits.rs).

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

use super::*;

/// A one-vCPU VM with `mem_size` bytes of memory at guest address `base`.
pub(super) struct RawVm {
    _vm: VmFd,
    pub(super) vcpu: VcpuFd,
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

pub(super) fn raw_vm(kvm: &Kvm, base: u64, mem_size: usize, fill: impl FnOnce(&mut [u8])) -> RawVm {
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
pub(super) fn raw_real(kvm: &Kvm) -> RawVm {
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
pub(super) fn raw_long(kvm: &Kvm, code: &[u8]) -> RawVm {
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
pub(super) fn raw_exits(vcpu: &mut VcpuFd, n: u64) {
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

pub(super) fn floor(c: &mut Criterion) {
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
