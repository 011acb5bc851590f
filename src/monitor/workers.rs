//! The life-cycle workers: threads that build VMs (and start them) and
//! tear them down, so the event loop that every VM's ticks share never
//! waits on KVM mapping guest memory, on a vCPU thread to join, or on
//! memory being unmapped. A VM starts when it is built, or (the monitor
//! file's) is built with its vCPU threads waiting, to start with the
//! others (design.md, "Starting many VMs"). Results
//! come back in a [`Handoff`] (not a channel: the loop is real-time, see
//! [`crate::handoff`]), with an eventfd the event loop watches.
//!
//! The pool is elastic. Most of a build's or a tear-down's time is spent
//! waiting: in the kernel (an SRCU grace period when the PIT is freed or a
//! memory slot set, a kthread created for the PIT), or for a CPU that busy
//! vCPUs share. Neither goes faster with fewer threads, so a worker that
//! takes a job while more jobs wait than workers are idle starts another
//! worker (up to [`MAX_WORKERS`]): N VMs build and stop side by side, as N
//! separate VMM processes would. The workers beyond the first `base` end
//! after [`IDLE_EXIT`] without a job.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::Kvm;
use vmm_sys_util::eventfd::EventFd;

use super::VmId;
use crate::bus::lock;
use crate::config::VmSpec;
use crate::handoff::{Busy, Handoff};
use crate::lifecycle::VmOutcome;
use crate::output::{OutputRing, OutputWriter, RingWriter};
use crate::vm::{build_vm, BuildOptions, Vm, VmError, VmReport};

/// The most workers at once while builds wait.
pub(crate) const MAX_WORKERS: usize = 32;

/// The most workers at once while tear-downs wait. A tear-down is almost
/// all waiting in the kernel (SRCU grace periods in KVM's VM destruction
/// and `mmu_notifier_unregister`, the PIT's kthread stopping) and little
/// CPU (about 0.6 ms), and concurrent waits share grace periods; a build
/// is mostly CPU, which more threads than CPUs do not speed up.
pub(crate) const MAX_TEARDOWN_WORKERS: usize = 256;

/// How long a worker beyond the first `base` waits for a job before it ends.
const IDLE_EXIT: Duration = Duration::from_millis(500);

/// Where a VM's serial output goes.
pub(crate) struct OutputPlan {
    pub terminal: Arc<OutputWriter>,
    pub prefix: bool,
    pub seccomp: Option<Arc<seccompiler::BpfProgram>>,
}

/// What a worker is asked to do.
pub(crate) enum Job {
    /// Build the VM of `spec` (and start its vCPUs when `start`).
    Build {
        id: VmId,
        spec: Box<VmSpec>,
        opts: BuildOptions,
        output: OutputPlan,
        launch: Launch,
    },
    /// Start a created VM's vCPUs (threads are started off the event
    /// loop, whose seccomp filter does not let it start any).
    Start { id: VmId, vm: Box<Vm> },
    /// Stop the VM, wait for its threads, free everything it holds.
    TearDown {
        id: VmId,
        vm: Box<Vm>,
        throttle_events: u64,
    },
}

/// How far a build goes past the VM itself.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Launch {
    /// Its vCPUs start at once.
    Now,
    /// Its vCPU threads start and wait before the guest
    /// ([`Vm::spawn_paused`]), for a start that then maps nothing.
    Paused,
    /// It stays created; a later `start` makes its threads.
    Later,
}

/// What a worker did.
pub(crate) enum Done {
    Built {
        id: VmId,
        result: Result<Box<Vm>, VmError>,
        /// Its serial output's ring, when it has one.
        output: Option<Arc<OutputRing>>,
        started: bool,
    },
    TornDown {
        id: VmId,
        report: Box<VmReport>,
    },
}

/// The jobs waiting and the workers there are.
#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Workers waiting for a job.
    idle: usize,
    /// Workers started and not yet ended.
    alive: usize,
    /// Set when the monitor ends: no new job, no new worker.
    closed: bool,
    /// Workers started so far (for their names).
    started: usize,
    /// No worker starts any more (the monitor enters its sandbox, whose
    /// new PID namespace admits no new thread).
    fixed: bool,
    /// The filter each worker installs before its next job (the sandbox's).
    seal: Option<Arc<seccompiler::BpfProgram>>,
}

/// What the workers share.
struct Pool {
    queue: Mutex<Queue>,
    work: Condvar,
    done: Handoff<Done>,
    done_evt: EventFd,
    kvm: Arc<Kvm>,
    /// Workers that live as long as the monitor.
    base: usize,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// The pool as the monitor holds it, and the workers' results.
pub(crate) struct Workers {
    pool: Arc<Pool>,
    pub(crate) done_evt: EventFd,
}

impl Workers {
    /// Starts `base` workers sharing `kvm`, each installing the builder
    /// class's seccomp filter first, when given (the workers they start
    /// later inherit it).
    pub(crate) fn start(
        base: usize,
        kvm: Arc<Kvm>,
        seccomp: Option<Arc<seccompiler::BpfProgram>>,
    ) -> io::Result<Workers> {
        let done_evt = EventFd::new(libc::EFD_NONBLOCK)?;
        let base = base.clamp(1, MAX_WORKERS);
        let pool = Arc::new(Pool {
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            done: Handoff::new(),
            done_evt: done_evt.try_clone()?,
            kvm,
            base,
            threads: Mutex::new(Vec::new()),
        });
        for _ in 0..base {
            lock(&pool.queue).alive += 1;
            pool.spawn(seccomp.clone())?;
        }
        Ok(Workers { pool, done_evt })
    }

    /// A job's result, if one is ready: `Err(Busy)` while a worker is
    /// handing one in, unless `wait` (then it waits for the worker).
    pub(crate) fn try_done(&self, wait: bool) -> Result<Option<Done>, Busy> {
        match wait {
            true => Ok(self.pool.done.try_pop()),
            false => self.pool.done.try_pop_now(),
        }
    }

    /// The next job's result, waiting for it; `None` when no worker is
    /// left to do the jobs.
    pub(crate) fn wait_done(&self) -> Option<Done> {
        loop {
            if let Some(done) = self.pool.done.pop_timeout(Duration::from_millis(100)) {
                return Some(done);
            }
            if lock(&self.pool.queue).alive == 0 {
                return self.pool.done.try_pop();
            }
        }
    }

    pub(crate) fn kvm(&self) -> &Kvm {
        &self.pool.kvm
    }

    /// No worker starts from now on: the workers there are serve every
    /// later job (in the sandbox they only tear VMs down).
    pub(crate) fn stop_growing(&self) {
        lock(&self.pool.queue).fixed = true;
    }

    /// Every worker installs `filter` before its next job.
    pub(crate) fn seal(&self, filter: Arc<seccompiler::BpfProgram>) {
        lock(&self.pool.queue).seal = Some(filter);
    }

    /// Queues a job. `Err` gives it back when no worker is left.
    pub(crate) fn submit(&self, job: Job) -> Result<(), Box<Job>> {
        let mut q = lock(&self.pool.queue);
        if q.closed || q.alive == 0 {
            return Err(Box::new(job));
        }
        q.jobs.push_back(job);
        if q.idle > 0 {
            self.pool.work.notify_one();
        }
        Ok(())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Ends each worker after its current job; none starts another.
        lock(&self.pool.queue).closed = true;
        self.pool.work.notify_all();
        let threads = std::mem::take(&mut *lock(&self.pool.threads));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Pool {
    /// Starts a worker (already counted in `alive`); `seccomp` is its
    /// filter to install, `None` for one that inherits it.
    fn spawn(self: &Arc<Self>, seccomp: Option<Arc<seccompiler::BpfProgram>>) -> io::Result<()> {
        let name = {
            let mut q = lock(&self.queue);
            q.started += 1;
            format!("hearth-life{}", q.started - 1)
        };
        let pool = self.clone();
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            if let Some(filter) = &seccomp {
                if let Err(e) = crate::seccomp::apply(filter) {
                    log::error!("life-cycle worker: cannot install its filter: {e}");
                    pool.ended();
                    return;
                }
            }
            pool.work_loop();
        });
        match spawned {
            Ok(t) => {
                let mut threads = lock(&self.threads);
                // Ended workers' handles are dropped (detached: nothing to wait for).
                threads.retain(|t| !t.is_finished());
                threads.push(t);
                Ok(())
            }
            Err(e) => {
                self.ended();
                Err(e)
            }
        }
    }

    fn ended(&self) {
        let mut q = lock(&self.queue);
        q.alive = q.alive.saturating_sub(1);
    }

    fn work_loop(self: &Arc<Self>) {
        let mut sealed = false;
        while let Some((job, seal)) = self.next_job() {
            if let (false, Some(filter)) = (sealed, seal) {
                if let Err(e) = crate::seccomp::apply(&filter) {
                    log::error!("life-cycle worker: cannot seal itself: {e}");
                    self.ended();
                    return;
                }
                sealed = true;
            }
            self.grow();
            let done = run_job(&self.kvm, job);
            if self.done.push(done).is_err() {
                self.ended();
                return;
            }
            let _ = self.done_evt.write(1);
        }
    }

    /// The next job, or `None` when this worker ends (and is no longer
    /// counted): the pool is closing, or it is one of the extra workers
    /// and had nothing to do for [`IDLE_EXIT`].
    fn next_job(&self) -> Option<(Job, Option<Arc<seccompiler::BpfProgram>>)> {
        let mut q = lock(&self.queue);
        loop {
            if let Some(job) = q.jobs.pop_front() {
                return Some((job, q.seal.clone()));
            }
            if q.closed {
                q.alive -= 1;
                return None;
            }
            q.idle += 1;
            let (guard, wait) = self
                .work
                .wait_timeout(q, IDLE_EXIT)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            q = guard;
            q.idle -= 1;
            if wait.timed_out() && q.jobs.is_empty() && q.alive > self.base {
                q.alive -= 1;
                return None;
            }
        }
    }

    /// More jobs wait than workers are idle to take them: start another
    /// worker, unless there are [`MAX_WORKERS`] already ([`MAX_TEARDOWN_WORKERS`]
    /// when the next job is a tear-down).
    fn grow(self: &Arc<Self>) {
        {
            let mut q = lock(&self.queue);
            let most = match q.jobs.front() {
                Some(Job::TearDown { .. }) => MAX_TEARDOWN_WORKERS,
                _ => MAX_WORKERS,
            };
            if q.closed || q.fixed || q.jobs.len() <= q.idle || q.alive >= most {
                return;
            }
            q.alive += 1;
        }
        if let Err(e) = self.spawn(None) {
            log::warn!("life-cycle workers: cannot start another: {e}");
        }
    }
}

/// Does one job (also used inline when no worker is left).
pub(crate) fn run_job(kvm: &Kvm, job: Job) -> Done {
    match job {
        Job::Build {
            id,
            spec,
            mut opts,
            output,
            launch,
        } => {
            let (ring, result) = match crate::output::vm_output(
                &spec.serial.output,
                &spec.name,
                &output.terminal,
                output.prefix,
                output.seccomp,
            ) {
                Ok((ring, file_writer)) => {
                    opts.serial_out = ring
                        .clone()
                        .map(|r| Box::new(RingWriter(r)) as crate::devices::serial::SerialOut);
                    opts.file_writer = file_writer;
                    (ring, build_vm(kvm, &spec, opts).map(Box::new))
                }
                Err(source) => (
                    None,
                    Err(VmError::Io {
                        what: "cannot open its serial output",
                        source,
                    }),
                ),
            };
            let result = match (result, launch) {
                (Ok(mut vm), Launch::Now) => vm.start().map(|()| vm),
                (Ok(mut vm), Launch::Paused) => vm.spawn_paused().map(|()| vm),
                (other, _) => other,
            };
            Done::Built {
                id,
                result,
                output: ring,
                started: launch == Launch::Now,
            }
        }
        Job::Start { id, mut vm } => {
            let result = vm.start().map(|()| vm);
            Done::Built {
                id,
                result,
                output: None,
                started: true,
            }
        }
        Job::TearDown {
            id,
            vm,
            throttle_events,
        } => {
            // `finish` consumes the VM: its memory and fds are gone when it returns.
            let mut report = (*vm).finish(VmOutcome::Error("exit event without a reason".into()));
            report.throttle_events = throttle_events;
            Done::TornDown {
                id,
                report: Box::new(report),
            }
        }
    }
}
