//! Per-thread seccomp filters: one allowlist of system calls per thread
//! class, installed by each thread on itself before it runs guest code or
//! serves requests. A call outside the list kills the whole process with
//! SIGSYS (`SECCOMP_RET_KILL_PROCESS`): a monitor thread doing something it
//! never does is treated as compromised. The lists, how they were found
//! (strace of the tests) and how to debug a kill are in `docs/security.md`.

use std::collections::BTreeMap;

use kvm_bindings::{kvm_regs, kvm_sregs, kvm_translation};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the {class} filter: {source}")]
    Build {
        class: &'static str,
        source: seccompiler::BackendError,
    },
    #[error("cannot install the filter: {0}")]
    Install(seccompiler::Error),
}

/// The kinds of thread, each with its own allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadClass {
    /// A vCPU thread: KVM_RUN and the exit handling (devices, logging).
    Vcpu,
    /// The main thread's event loop: signals, timers, the console, the
    /// control socket, statistics; and the tear-down threads it starts.
    EventLoop,
    /// A VM's device thread: its virtio devices' queues and back ends.
    Device,
    /// A serial output writer: drains VMs' output rings to stdout or a file.
    Output,
    /// A life-cycle worker: builds VMs (opens their images, creates KVM
    /// objects, maps memory, starts their threads) and tears them down.
    /// The threads it starts inherit this filter and add their own.
    Builder,
}

impl ThreadClass {
    pub fn name(self) -> &'static str {
        match self {
            ThreadClass::Vcpu => "vcpu",
            ThreadClass::EventLoop => "event-loop",
            ThreadClass::Device => "device",
            ThreadClass::Output => "output",
            ThreadClass::Builder => "builder",
        }
    }
}

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xAE << 8) | nr
}
const IOC_READ: u64 = 2;
const IOC_RW: u64 = 3;
const KVM_RUN: u64 = ioc(0, 0x80, 0);
const KVM_GET_REGS: u64 = ioc(IOC_READ, 0x81, std::mem::size_of::<kvm_regs>());
const KVM_GET_SREGS: u64 = ioc(IOC_READ, 0x83, std::mem::size_of::<kvm_sregs>());
const KVM_TRANSLATE: u64 = ioc(IOC_RW, 0x85, std::mem::size_of::<kvm_translation>());

/// Memory management and thread bookkeeping every Rust thread needs
/// (the allocator, futex-based locks and channels, its own exit).
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_write,
    libc::SYS_exit,
    // Entering the sandbox: glibc has every thread drop to the sandbox
    // user (a thread can only drop privileges with these, never gain);
    // its signal handler checks the sender with getpid first.
    libc::SYS_getpid,
    libc::SYS_setgroups,
    libc::SYS_setresgid,
    libc::SYS_setresuid,
];

/// What no thread of a sandboxed monitor may do: it opens no file and
/// looks no path up after start-up (docs/security.md).
const NOT_IN_SANDBOX: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_readlink,
    libc::SYS_rename,
    libc::SYS_unlink,
    libc::SYS_socket,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_fchmodat,
];

/// A vCPU thread: KVM_RUN and its exits. Serial output (stdout or a file),
/// irqfd and exit eventfds and log lines are all `write`; at its end the
/// thread closes its vCPU fd (`close`, after std's debug-build check that
/// the fd is open, `fcntl(F_GETFD)`).
const VCPU: &[i64] = &[libc::SYS_ioctl, libc::SYS_close, libc::SYS_fcntl];

/// The event loop, beyond COMMON.
const EVENT_LOOP: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    // The control socket.
    libc::SYS_accept4,
    libc::SYS_getsockopt,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_fcntl,
    // Statistics file (create, write, rename) and /proc reads of the
    // scheduler (thread states) and of the peak RSS.
    libc::SYS_openat,
    libc::SYS_statx,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_lseek,
    libc::SYS_rename,
    // The socket file is removed at exit.
    libc::SYS_unlink,
    // Validating a VM for `create`: a kernel's headers, its files' sizes.
    libc::SYS_pread64,
    libc::SYS_readlink,
    libc::SYS_getuid,
    // Kicking vCPU threads (pthread_kill).
    libc::SYS_tgkill,
    libc::SYS_getpid,
    libc::SYS_gettid,
    // Timers re-armed.
    libc::SYS_timerfd_settime,
    // Firecracker API sockets added at run time (`create` with
    // `api_socket`): bound, given their mode, listened on (`socket` only
    // for AF_UNIX, see `rules`).
    libc::SYS_socket,
    libc::SYS_bind,
    libc::SYS_fchmodat,
    libc::SYS_listen,
    // The terminal restored, the monitor's exit.
    libc::SYS_ioctl,
    libc::SYS_exit_group,
];

/// A life-cycle worker, beyond COMMON: building a VM, and whatever the
/// threads it starts (vCPUs, the device thread, a log writer) do before
/// they install their own filters, which are subsets of this one.
const BUILDER: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_read,
    libc::SYS_pread64,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_eventfd2,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prctl,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_setaffinity,
    // The vCPU and device threads it starts inherit the monitor's raised
    // priority and go back to the VMs' (`host::leave_monitor_priority`).
    libc::SYS_setpriority,
    // A serial log file's writer thread it starts makes itself SCHED_FIFO
    // (`host.cpu.realtime`) before it installs its own filter.
    libc::SYS_sched_setscheduler,
    libc::SYS_seccomp,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_socket,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_unlink,
    libc::SYS_getuid,
    libc::SYS_getrandom,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    // The device threads it starts serve disks under both this filter and
    // their own (filters stack): the sync engine's I/O and flushes.
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_pwrite64,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_fallocate,
    libc::SYS_exit_group,
];

/// A device thread, beyond COMMON: its epoll loop, the queue and timer
/// eventfds, and the back ends' I/O.
const DEVICE: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_timerfd_settime,
    // Disks: the sync engine, flushes, and the io_uring engine.
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_fallocate,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    // vsock's host side: Unix sockets accepted and connected.
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_exit_group,
];

fn ioctl_rule(cmds: &[u64]) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    cmds.iter()
        .map(|&cmd| {
            SeccompRule::new(vec![SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                cmd,
            )?])
        })
        .collect()
}

/// The allowlist of `class` as (syscall, rules) pairs; an empty rule list
/// allows every call of that syscall.
fn rules(class: ThreadClass) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let extra = match class {
        ThreadClass::Vcpu => VCPU,
        ThreadClass::EventLoop => EVENT_LOOP,
        ThreadClass::Device => DEVICE,
        // Its file is closed when it ends (after std's debug-build check
        // that the fd is open, `fcntl(F_GETFD)`).
        ThreadClass::Output => &[libc::SYS_close, libc::SYS_fcntl],
        ThreadClass::Builder => BUILDER,
    };
    // Filters stack: the threads a worker starts (vCPUs, device threads,
    // log writers) keep its filter under their own, so it allows all of
    // theirs.
    let started: &[&[i64]] = match class {
        ThreadClass::Builder => &[DEVICE, VCPU, &[libc::SYS_close, libc::SYS_fcntl]],
        _ => &[],
    };
    for &nr in COMMON
        .iter()
        .chain(extra)
        .chain(started.iter().copied().flatten())
    {
        map.insert(nr, Vec::new());
    }
    let ioctls: &[u64] = match class {
        ThreadClass::Vcpu => &[KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS, KVM_TRANSLATE],
        // TCGETS, TCSETS (the raw terminal restored), FIONBIO (sockets
        // made non-blocking).
        ThreadClass::EventLoop => &[libc::TCGETS, libc::TCSETS, libc::FIONBIO],
        // Sockets made non-blocking; a tap's offloads set to what the
        // guest's network driver negotiated.
        ThreadClass::Device => &[libc::FIONBIO, libc::TUNSETOFFLOAD],
        ThreadClass::Output => &[],
        ThreadClass::Builder => &[],
    };
    if class == ThreadClass::Builder {
        // KVM's, the tap's and the terminal's: the builder's callers pass
        // validated specs; the threads it starts narrow this themselves.
        map.insert(libc::SYS_ioctl, Vec::new());
    } else {
        map.insert(libc::SYS_ioctl, ioctl_rule(ioctls)?);
    }
    // Every socket Hearth makes after start-up is a Unix one (the control
    // and API sockets, vsock's host side); none of its threads may open a
    // network socket.
    if let Some(rules) = map.get_mut(&libc::SYS_socket) {
        *rules = vec![SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::AF_UNIX as u64,
        )?])?];
    }
    if matches!(class, ThreadClass::Vcpu | ThreadClass::Output) {
        map.insert(
            libc::SYS_fcntl,
            vec![SeccompRule::new(vec![SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                libc::F_GETFD as u64,
            )?])?],
        );
    }
    Ok(map)
}

/// The compiled filter of a thread class.
pub fn filter(class: ThreadClass) -> Result<BpfProgram, SeccompError> {
    compile(class, false)
}

/// The filter of a thread class in a sandboxed monitor: no `open` at all.
pub fn sandboxed(class: ThreadClass) -> Result<BpfProgram, SeccompError> {
    compile(class, true)
}

fn compile(class: ThreadClass, sandbox: bool) -> Result<BpfProgram, SeccompError> {
    let build = |source| SeccompError::Build {
        class: class.name(),
        source,
    };
    let mut rules = rules(class).map_err(build)?;
    if sandbox {
        rules.retain(|nr, _| !NOT_IN_SANDBOX.contains(nr));
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(build)?;
    BpfProgram::try_from(filter).map_err(build)
}

/// Installs `filter` on the calling thread (for good; threads it spawns
/// later inherit it).
pub fn apply(filter: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(filter).map_err(SeccompError::Install)
}

/// Builds and installs the filter of `class` on the calling thread.
pub fn install(class: ThreadClass) -> Result<(), SeccompError> {
    apply(&filter(class)?)
}

/// Builds and installs the sandboxed filter of `class` on the calling thread.
pub fn install_sandboxed(class: ThreadClass) -> Result<(), SeccompError> {
    apply(&sandboxed(class)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(KVM_RUN, 0xAE80);
        assert_eq!(KVM_GET_REGS, 0x8090_AE81);
        assert_eq!(KVM_GET_SREGS, 0x8138_AE83);
        assert_eq!(KVM_TRANSLATE, 0xC018_AE85);
    }

    #[test]
    fn every_class_compiles() {
        for class in [
            ThreadClass::Vcpu,
            ThreadClass::EventLoop,
            ThreadClass::Device,
        ] {
            assert!(!filter(class).expect("compiles").is_empty());
        }
    }
}
