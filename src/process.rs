//! Process-wide settings of the `hearth` process: how its allocator uses
//! the address space, how many files it may hold, and whether its last
//! tear-down is left to its exit. They exist because every VM of a
//! monitor shares one process: each change to its address space calls
//! into every KVM VM (their MMU notifiers) and takes its one `mmap_lock`
//! for writing, and every VM's descriptors are in its one file table.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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

/// Open files a monitor is sized for up front: this many VMs at
/// [`FDS_PER_VM`] each (more if its file has more VMs).
const RESERVED_VMS: usize = 256;
/// File descriptors per VM: its KVM VM and vCPUs, eventfds and timers of
/// its devices, its disks and taps (a test-guest VM holds 5; one with a
/// disk and vsock 18). The table for 256 such VMs is 8192 entries, 64 KiB
/// of kernel memory.
const FDS_PER_VM: usize = 16;
/// The highest soft limit on open files the monitor raises itself to.
const MAX_NOFILE: u64 = 1 << 20;

/// Lets the process hold the files of many VMs, and sizes its file table
/// for them now. Call while the process has one thread.
///
/// The soft limit on open files is raised to the hard limit (a test-guest
/// VM holds 5 descriptors; Debian's default soft limit of 1024 would end
/// a monitor near 200 VMs). And the file table, which the kernel doubles
/// as it fills, is grown once here: in a process with more than one
/// thread each doubling waits for an RCU grace period, and every thread
/// that opens a file meanwhile waits with it. Under 200 booting VMs on
/// one CPU one such wait held a starting vCPU for 1.4 s (the grace period
/// waits for CPUs that run guests). Returns the table's size now.
pub fn reserve_fds(file_vms: usize, any: &impl AsRawFd) -> io::Result<usize> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, which lives here.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let want = lim.rlim_max.min(MAX_NOFILE).max(lim.rlim_cur);
    if want > lim.rlim_cur {
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = want;
        }
    }
    let table = (64 + FDS_PER_VM * file_vms.max(RESERVED_VMS)).next_power_of_two();
    let table = table.min(usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX));
    let highest = libc::c_int::try_from(table.saturating_sub(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor (the lowest free one
    // from `highest` on) for `any`'s open file, which is closed right after.
    let fd = unsafe { libc::fcntl(any.as_raw_fd(), libc::F_DUPFD_CLOEXEC, highest) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just made here and nothing else refers to it.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd_size() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("FDSize:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// The table is grown for at least 256 VMs, the descriptor made to
    /// grow it is gone, and the soft limit is the hard one (up to 2^20).
    #[test]
    fn the_file_table_is_sized_and_the_limit_raised() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let table = reserve_fds(1000, &file).unwrap();
        assert!(table >= 4096, "{table}");
        assert!(fd_size() >= table, "FDSize {} < {table}", fd_size());
        // SAFETY: F_GETFD only reads the flags of the descriptor, if any.
        let open = unsafe { libc::fcntl(i32::try_from(table - 1).unwrap(), libc::F_GETFD) };
        assert_eq!(open, -1, "the descriptor that grew the table is still open");
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert!(
            lim.rlim_cur >= lim.rlim_max.min(MAX_NOFILE),
            "{}",
            lim.rlim_cur
        );
        // 1000 VMs of 16 descriptors: 16064, rounded up (or the limit).
        let soft = usize::try_from(lim.rlim_cur).unwrap();
        assert_eq!(table, 16384.min(soft));
    }
}
