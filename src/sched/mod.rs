//! The proportional vCPU scheduler: the policy (`policy.rs`, pure) driven
//! by a timerfd tick in the event loop. Each tick reads every vCPU
//! thread's CPU-time clock (which counts time inside KVM_RUN) and run
//! state, asks the policy how many vCPUs each VM may run, and parks or
//! releases vCPUs through their handles (Throttle/Unthrottle + kick).
//! The per-VM state of that (which vCPUs are parked, each one's CPU time
//! at the last tick) lives here, keyed by the monitor's VM id.

pub mod jitter;
pub mod policy;

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use vmm_sys_util::timerfd::TimerFd;

use crate::config::CpuSpec;
use crate::vcpu::{VcpuCommand, VcpuHandle};
use crate::vm::Vm;
use policy::{Policy, Sample, VmId};

/// Per-VM scheduler figures for statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VmSchedStats {
    /// Whether the VM is held back now (fairness or cap).
    pub throttled: bool,
    /// How many times it has been throttled.
    pub throttle_events: u64,
}

/// What the scheduler keeps of one VM between ticks: one entry per vCPU,
/// in one allocation (the tick walks every VM's, with a cold cache).
#[derive(Default)]
struct VmSched {
    vcpus: Vec<VcpuSched>,
    /// It has a `cpu.max`: its clocks are read every tick (see `sample`).
    capped: bool,
}

/// What the scheduler keeps of one vCPU between ticks.
#[derive(Clone, Copy)]
struct VcpuSched {
    /// Its CPU time at the last tick.
    last_cpu_ns: u64,
    /// Whether it is parked.
    parked: bool,
    /// What the last read of its run state found.
    runnable: bool,
    /// Ticks before its run state is read again, if quiet (see `sample`).
    recheck_in: u8,
    /// How many ticks apart its state is read now, while quiet.
    backoff: u8,
    /// Ticks since its clock was last read (0: read at the last tick).
    unread: u8,
}

impl Default for VcpuSched {
    fn default() -> Self {
        VcpuSched {
            last_cpu_ns: 0,
            parked: false,
            runnable: true,
            recheck_in: 0,
            backoff: 1,
            unread: 0,
        }
    }
}

/// A quiet vCPU (one that used little CPU and was not runnable) has its
/// run state (and, where KVM gives that state, its clock) read at most
/// every this many ticks: with many idle VMs the tick stays cheap, and a
/// starved or waking vCPU is still seen within this many ticks.
const MAX_BACKOFF: u8 = 10;

/// The most vCPU run states read from /proc in one tick. A read costs a
/// few microseconds (the kernel formats the whole `stat` line); with many
/// VMs sharing few CPUs, every vCPU uses less than a quarter of a tick and
/// all would be read every tick: 200 reads, half a millisecond of the
/// event loop each tick, which grows with N and delays every VM's tick.
/// Beyond this many, a vCPU due for a read keeps its last state and is
/// read first at the next tick (reads go round the VMs), so each state is
/// at most a few ticks old at N = 200 and the tick's cost stays bounded.
/// Where the kernel has KVM's `blocking` figure (src/kvmstat.rs, an 8-byte
/// read) every vCPU due for a read is read: no limit applies.
const MAX_STATE_READS: usize = 64;

pub struct CpuScheduler {
    policy: Policy,
    vms: HashMap<VmId, VmSched>,
    tick: Duration,
    timer: TimerFd,
    /// One-shot: the moment a capped VM's quota runs out (between ticks).
    cap_timer: TimerFd,
    jitter: jitter::Jitter,
    rotation: usize,
    /// The VM whose vCPUs' states are read first at the next tick.
    next_read: VmId,
    ticks: u64,
    cost_ns: u64,
    /// vCPU clocks read by the ticks.
    clock_reads: u64,
    /// Whether the cap timer may be armed.
    cap_armed: bool,
    /// The tick's samples, kept so that a tick allocates nothing: the
    /// loop shares glibc's one arena with every thread (design.md,
    /// "Threads").
    samples: Vec<(VmId, Sample)>,
}

impl CpuScheduler {
    /// A scheduler for `cpus` allowed host CPUs, ticking every `tick_ms`.
    pub fn new(cpus: usize, tick_ms: u32) -> io::Result<Self> {
        let tick = Duration::from_millis(u64::from(tick_ms.max(1)));
        Ok(CpuScheduler {
            policy: Policy::new(cpus as u32, tick.as_nanos() as u64),
            vms: HashMap::new(),
            tick,
            timer: TimerFd::new().map_err(io::Error::from)?,
            cap_timer: nonblocking(TimerFd::new().map_err(io::Error::from)?)?,
            jitter: jitter::Jitter::new(tick),
            rotation: 0,
            next_read: 0,
            ticks: 0,
            cost_ns: 0,
            clock_reads: 0,
            cap_armed: false,
            samples: Vec::new(),
        })
    }

    pub fn timer(&self) -> &TimerFd {
        &self.timer
    }

    pub fn cap_timer(&self) -> &TimerFd {
        &self.cap_timer
    }

    /// Arms the cap timer for the policy's next deadline, or disarms it
    /// (a system call only if it was armed: without caps, none per tick).
    fn arm_cap_timer(&mut self) {
        let deadline = self.policy.next_deadline_ns();
        let done = match deadline {
            Some(ns) => self.cap_timer.reset(Duration::from_nanos(ns), None),
            None if self.cap_armed => self.cap_timer.clear(),
            None => Ok(()),
        };
        match done {
            Ok(()) => self.cap_armed = deadline.is_some(),
            Err(e) => log::warn!("scheduler: cannot arm the cap timer: {e}"),
        }
    }

    /// A capped VM may have used its quota: park it now rather than at
    /// the next tick, so a cap holds within a few percent over any second.
    pub fn on_cap_timer<'a>(&mut self, vms: impl Iterator<Item = (VmId, &'a Vm)>) {
        let _ = self.cap_timer.wait();
        let vms: Vec<(VmId, &Vm)> = vms.collect();
        let used: Vec<(VmId, u64)> = vms.iter().map(|(id, vm)| (*id, vm.cpu_ns())).collect();
        for a in self.policy.check_caps(&used) {
            let found = vms.iter().find(|(id, _)| *id == a.vm);
            if let (Some((_, vm)), Some(state)) = (found, self.vms.get_mut(&a.vm)) {
                allow_vcpus(state, vm.vcpus(), a.vcpus as usize, self.rotation);
            }
        }
        self.arm_cap_timer();
    }

    /// Arms the periodic tick.
    pub fn start(&mut self) -> io::Result<()> {
        self.jitter.armed(std::time::Instant::now());
        self.timer
            .reset(self.tick, Some(self.tick))
            .map_err(io::Error::from)
    }

    /// How late the event loop served the ticks.
    pub fn jitter(&self) -> jitter::JitterStats {
        self.jitter.stats()
    }

    pub fn add_vm(&mut self, id: VmId, vm: &Vm, cpu: &CpuSpec) {
        let n = vm.vcpu_count();
        self.policy
            .add_vm(id, cpu.weight, cpu.max, n as u32, vm.cpu_ns());
        self.vms.insert(
            id,
            VmSched {
                vcpus: vec![VcpuSched::default(); n],
                capped: cpu.max.is_some(),
            },
        );
        let n = self.vms.len();
        self.samples.reserve(n.saturating_sub(self.samples.len()));
    }

    pub fn remove_vm(&mut self, id: VmId) {
        self.policy.remove_vm(id);
        self.vms.remove(&id);
    }

    /// How many of the VM's vCPUs are parked now.
    pub fn parked_vcpus(&self, id: VmId) -> usize {
        self.vms
            .get(&id)
            .map_or(0, |v| v.vcpus.iter().filter(|c| c.parked).count())
    }

    pub fn set_weight(&mut self, id: VmId, weight: u32) {
        self.policy.set_weight(id, weight);
    }

    pub fn set_max(&mut self, id: VmId, max: Option<f64>) {
        self.policy.set_max(id, max);
        if let Some(v) = self.vms.get_mut(&id) {
            v.capped = max.is_some();
        }
    }

    /// One tick over the running VMs (`(id, vm)` pairs in the order of
    /// their ids, as the monitor's map gives them). Once the buffers have
    /// grown to the number of VMs, a tick allocates nothing.
    pub fn on_tick<'a, I>(&mut self, vms: I)
    where
        I: Iterator<Item = (VmId, &'a Vm)> + Clone,
    {
        debug_assert!(
            vms.clone().zip(vms.clone().skip(1)).all(|(a, b)| a.0 < b.0),
            "on_tick takes the VMs in the order of their ids"
        );
        let start = crate::host::current_thread_cpu_ns();
        let expirations = self.timer.wait().unwrap_or(1);
        self.jitter.tick(std::time::Instant::now(), expirations);
        let tick_ns = self.tick.as_nanos() as u64;
        // State reads start at `next_read` and go round (MAX_STATE_READS).
        let next = self.next_read;
        let from_next = vms.clone().filter(|(id, _)| *id >= next);
        let before_next = vms.clone().filter(|(id, _)| *id < next);
        let mut reads = MAX_STATE_READS;
        let mut skipped = None;
        self.samples.clear();
        for (id, vm) in from_next.chain(before_next) {
            let Some(state) = self.vms.get_mut(&id) else {
                continue;
            };
            let (s, unread, clocks) = sample(state, vm, tick_ns, &mut reads);
            self.clock_reads += clocks;
            if unread {
                skipped.get_or_insert(id);
            }
            self.samples.push((id, s));
        }
        if let Some(id) = skipped {
            self.next_read = id;
        }
        self.rotation = self.rotation.wrapping_add(1);
        let allowances = self.policy.tick(&self.samples);
        // Both in the order of ids: walk them side by side.
        let mut allowances = allowances.iter().peekable();
        for (id, vm) in vms {
            while allowances.next_if(|a| a.vm < id).is_some() {}
            let Some(a) = allowances.next_if(|a| a.vm == id) else {
                continue;
            };
            if let Some(state) = self.vms.get_mut(&id) {
                allow_vcpus(state, vm.vcpus(), a.vcpus as usize, self.rotation);
            }
        }
        self.arm_cap_timer();
        self.ticks += 1;
        self.cost_ns += crate::host::current_thread_cpu_ns().saturating_sub(start);
    }

    pub fn vm_stats(&self, id: VmId) -> VmSchedStats {
        self.policy
            .throttle(id)
            .map(|(t, events)| VmSchedStats {
                throttled: t.fair || t.cap,
                throttle_events: events,
            })
            .unwrap_or_default()
    }

    /// Ticks so far and the CPU time they cost the event loop, in ns.
    pub fn cost(&self) -> (u64, u64) {
        (self.ticks, self.cost_ns)
    }

    /// vCPU clocks the ticks have read so far.
    pub fn clock_reads(&self) -> u64 {
        self.clock_reads
    }
}

/// Samples CPU use: the VM's total CPU time, and how many unparked vCPUs
/// want CPU (used at least a quarter of each tick since its clock was
/// last read, or runnable now). The run state costs a read (of KVM's
/// statistics, or of /proc), so a vCPU found quiet is read again after 1,
/// 2, 4, .. up to [`MAX_BACKOFF`] ticks; of /proc, at most `reads` more
/// are read this tick: a vCPU due for a read beyond them keeps its last
/// state. A quiet vCPU whose state comes from KVM (halted in the guest,
/// or paused) has its clock read with its state, not every tick: it uses
/// no CPU until something wakes it, and what it uses after that is
/// accounted at its next read (the clock counts all of it), at most
/// [`MAX_BACKOFF`] ticks later. A capped VM's clocks are read every tick
/// (its quota is accounted by the tick). Returns the sample, whether a
/// vCPU was left unread, and how many clocks were read.
fn sample(state: &mut VmSched, vm: &Vm, tick_ns: u64, reads: &mut usize) -> (Sample, bool, u64) {
    let mut busy = 0;
    let mut used_ns = vm.device_cpu_ns();
    let mut unread = false;
    let mut clocks = 0;
    let capped = state.capped;
    for (i, h) in vm.vcpus().iter().enumerate() {
        let Some(v) = state.vcpus.get_mut(i) else {
            used_ns += h.cpu_ns();
            continue;
        };
        if !capped && !v.parked && !v.runnable && v.recheck_in > 0 && h.runnable_is_cheap() {
            v.recheck_in -= 1;
            v.unread = v.unread.saturating_add(1);
            used_ns += v.last_cpu_ns;
            continue;
        }
        let now = h.cpu_ns();
        clocks += 1;
        used_ns += now;
        let ticks = u64::from(v.unread) + 1;
        v.unread = 0;
        let used = now.saturating_sub(v.last_cpu_ns);
        v.last_cpu_ns = now;
        if v.parked {
            continue;
        }
        if used >= ticks * tick_ns / 4 {
            busy += 1;
            (v.recheck_in, v.backoff) = (0, 1);
            continue;
        }
        if v.recheck_in > 0 {
            v.recheck_in -= 1;
            continue;
        }
        if !h.runnable_is_cheap() {
            if *reads == 0 {
                // Due, but this tick's reads are spent: its last state stands.
                unread = true;
                busy += u32::from(v.runnable);
                continue;
            }
            *reads -= 1;
        }
        v.runnable = h.runnable();
        if v.runnable {
            busy += 1;
            v.backoff = 1;
        } else {
            v.recheck_in = v.backoff;
            v.backoff = (v.backoff * 2).min(MAX_BACKOFF);
        }
    }
    let sample = Sample {
        used_ns,
        busy_vcpus: busy,
    };
    (sample, unread, clocks)
}

/// Lets `allowed` vCPUs run and parks the rest. Which ones are parked
/// rotates with `rotation`, so every vCPU makes progress (a guest whose
/// parked vCPU holds a lock is not stuck behind it for long).
fn allow_vcpus(state: &mut VmSched, vcpus: &[VcpuHandle], allowed: usize, rotation: usize) {
    let n = vcpus.len();
    if n == 0 {
        return;
    }
    for (i, h) in vcpus.iter().enumerate() {
        let slot = (i + n - rotation % n) % n;
        let park = slot >= allowed;
        if let Some(VcpuSched { parked, .. }) = state.vcpus.get_mut(i) {
            if park != *parked {
                *parked = park;
                h.command(if park {
                    VcpuCommand::Throttle
                } else {
                    VcpuCommand::Unthrottle
                });
            }
        }
    }
}

/// Makes a timerfd's read non-blocking: a one-shot timer re-armed between
/// epoll reporting it and the read would otherwise block the read forever.
fn nonblocking(timer: TimerFd) -> io::Result<TimerFd> {
    use std::os::fd::AsRawFd;
    let fd = timer.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor this function owns (through
    // `timer`); no memory is passed.
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if ok {
        Ok(timer)
    } else {
        Err(io::Error::last_os_error())
    }
}
