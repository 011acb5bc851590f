//! What one more VM in the process costs every change of its address
//! space. Each VM registers a KVM MMU notifier on the monitor's one
//! address space, so every `mprotect`, `munmap` or zapping `madvise` by
//! any thread (a thread's start and exit, a stack's guard page, a
//! balloon's reclaim) calls every VM's notifier. Measured: mapping three
//! pages, protecting one (as a thread's guard page is made) and unmapping
//! them, with 0, 1, 50 and 200 VMs of 128 MiB (one memory slot each) in
//! the process. No guest runs.
//!
//! `cargo bench --bench notifier`; see docs/performance.md ("What grows
//! with the number of VMs in one process").

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};

const GUEST_MIB: usize = 128;
const PAGE: usize = 4096;

/// `n` VMs, each with `GUEST_MIB` of (untouched) guest memory.
fn vms(kvm: &Kvm, n: usize) -> Vec<VmFd> {
    (0..n)
        .map(|_| {
            let vm = kvm.create_vm().expect("KVM_CREATE_VM");
            let len = GUEST_MIB << 20;
            // SAFETY: a fresh anonymous mapping; nothing else refers to it.
            let host = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            assert_ne!(host, libc::MAP_FAILED, "mmap guest memory");
            let region = kvm_userspace_memory_region {
                slot: 0,
                flags: 0,
                guest_phys_addr: 0,
                memory_size: len as u64,
                userspace_addr: host as u64,
            };
            // SAFETY: the mapping is `len` bytes and lives until the
            // process ends (the bench never unmaps it).
            unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");
            vm
        })
        .collect()
}

/// A guard page's life: map three pages, protect the first, unmap all.
fn guard_page_cycle() {
    // SAFETY: a fresh anonymous mapping, used only here.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            3 * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    // SAFETY: `p` is the start of the three pages mapped above.
    let rc = unsafe { libc::mprotect(p, PAGE, libc::PROT_NONE) };
    assert_eq!(rc, 0);
    // SAFETY: unmaps exactly what was mapped above; nothing refers to it.
    let rc = unsafe { libc::munmap(black_box(p), 3 * PAGE) };
    assert_eq!(rc, 0);
}

fn notifier(c: &mut Criterion) {
    let kvm = Kvm::new().expect("/dev/kvm");
    let mut group = c.benchmark_group("address-space-change");
    let mut held = Vec::new();
    for n in [0usize, 1, 50, 200] {
        held.extend(vms(&kvm, n - held.len()));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(guard_page_cycle)
        });
    }
    group.finish();
}

criterion_group!(benches, notifier);
criterion_main!(benches);
