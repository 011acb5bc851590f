//! Process-wide settings of the `hearth` process: how its allocator uses
//! the address space, and whether its last tear-down is left to its exit.
//! Both exist because every VM of a monitor shares one address space:
//! each change to it calls into every KVM VM (their MMU notifiers) and
//! takes the process's one `mmap_lock` for writing.

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the process may keep stopped vCPU threads until it exits
/// ([`allow_linger`]), and whether it does now ([`linger`]).
static LINGER_ALLOWED: AtomicBool = AtomicBool::new(false);
static LINGER: AtomicBool = AtomicBool::new(false);

/// The process exits once its monitor is done (the `hearth` binary, not
/// a library user that goes on): [`linger`] may take effect.
pub fn allow_linger() {
    LINGER_ALLOWED.store(true, Ordering::Release);
}

/// Every VM is stopping and the process exits after: a vCPU thread that
/// stops from now on closes its vCPU and then waits for the process's
/// exit instead of ending, and [`crate::vcpu::VcpuHandle::join`] waits
/// for the close only. A thread's end unmaps its stacks and its signal stack, and in a
/// monitor of many VMs each unmap calls into every VM still alive (KVM's
/// MMU notifiers) and queues on the process's one `mmap_lock`; the
/// process's exit takes all of that at once, after the VMs are gone
/// (docs/design.md, "The life of a VM").
pub fn linger() {
    if LINGER_ALLOWED.load(Ordering::Acquire) {
        LINGER.store(true, Ordering::Release);
    }
}

/// Whether stopped vCPU threads and guest memory are left to the
/// process's exit ([`linger`]).
pub fn lingering() -> bool {
    LINGER.load(Ordering::Acquire)
}

/// Makes every thread allocate from glibc's main arena. A thread arena's
/// first shrink makes glibc open `/proc/sys/vm/overcommit_memory`, which
/// no seccomp filter of a running monitor allows (the main arena shrinks
/// with `brk`); one arena also keeps per-thread memory down, which counts
/// with many VMs in one process. Call before any thread starts.
///
/// The heap also changes the address space rarely: it grows in steps of
/// at least [`HEAP_STEP`], is not shrunk until [`HEAP_KEEP`] is free at
/// its top, and blocks under [`HEAP_STEP`] come from it, not from a
/// mapping of their own. Each `brk`, `mmap` or `munmap` takes the
/// process's `mmap_lock` for writing, and with many VMs booting (their
/// vCPU threads take it for reading on every fault KVM takes on guest
/// memory) one writer could start a convoy that stalled every VM for
/// seconds (docs/performance.md, "Start of 200 after an earlier run"):
/// the statistics writer's buffer of 150 KiB with 200 VMs was mapped and
/// unmapped every second, and the heap grown and shrunk with it.
pub fn one_malloc_arena() {
    // SAFETY: mallopt only sets allocator parameters.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, HEAP_STEP);
        libc::mallopt(libc::M_TOP_PAD, HEAP_STEP);
        libc::mallopt(libc::M_TRIM_THRESHOLD, HEAP_KEEP);
    }
}

/// The least the heap grows by, and the largest block it serves.
const HEAP_STEP: i32 = 4 << 20;
/// Free memory at the top of the heap kept for later.
const HEAP_KEEP: i32 = 32 << 20;
