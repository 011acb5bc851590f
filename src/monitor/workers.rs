//! The life-cycle workers: a few threads, started with the monitor, that
//! build VMs (and start them) and tear them down, so the event loop that
//! every VM's ticks share never waits on KVM mapping guest memory, on a
//! vCPU thread to join, or on memory being unmapped. Each VM starts as
//! soon as it is built; N VMs build and stop N-at-a-time-by-pool-size in
//! parallel. Results come back on a channel, with an eventfd the event
//! loop watches.

use std::io;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kvm_ioctls::Kvm;
use vmm_sys_util::eventfd::EventFd;

use super::VmId;
use crate::bus::lock;
use crate::config::VmSpec;
use crate::lifecycle::VmOutcome;
use crate::output::{OutputRing, OutputWriter, RingWriter};
use crate::vm::{build_vm, BuildOptions, Vm, VmError, VmReport};

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
        start: bool,
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

/// The pool: a job queue shared by the workers, and their results.
pub(crate) struct Workers {
    kvm: Arc<Kvm>,
    /// A filter each worker installs before its next job (the sandbox's).
    seal: Arc<Mutex<Option<Arc<seccompiler::BpfProgram>>>>,
    jobs: Option<Sender<Job>>,
    pub(crate) done: Receiver<Done>,
    pub(crate) done_evt: EventFd,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` workers sharing `kvm` (each installs the builder
    /// class's seccomp filter first, when given).
    pub(crate) fn start(
        count: usize,
        kvm: Arc<Kvm>,
        seccomp: Option<Arc<seccompiler::BpfProgram>>,
    ) -> io::Result<Workers> {
        let (jobs, queue) = channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let (tx, done) = channel();
        let done_evt = EventFd::new(libc::EFD_NONBLOCK)?;
        let seal = Arc::new(Mutex::new(None));
        let mut threads = Vec::new();
        for i in 0..count.max(1) {
            let ctx = WorkerCtx {
                queue: queue.clone(),
                tx: tx.clone(),
                evt: done_evt.try_clone()?,
                kvm: kvm.clone(),
                seal: seal.clone(),
                sealed: false,
            };
            let seccomp = seccomp.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("hearth-life{i}"))
                    .spawn(move || {
                        if let Some(filter) = &seccomp {
                            if let Err(e) = crate::seccomp::apply(filter) {
                                log::error!("life-cycle worker: cannot install its filter: {e}");
                                return;
                            }
                        }
                        ctx.run();
                    })?,
            );
        }
        Ok(Workers {
            kvm,
            seal,
            jobs: Some(jobs),
            done,
            done_evt,
            threads,
        })
    }

    pub(crate) fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// Every worker installs `filter` before its next job (they then only
    /// tear VMs down: in the sandbox nothing is built).
    pub(crate) fn seal(&self, filter: Arc<seccompiler::BpfProgram>) {
        *lock(&self.seal) = Some(filter);
    }

    /// Queues a job. `Err` gives it back when no worker is left.
    pub(crate) fn submit(&self, job: Job) -> Result<(), Box<Job>> {
        match &self.jobs {
            Some(tx) => tx.send(job).map_err(|e| Box::new(e.0)),
            None => Err(Box::new(job)),
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Closing the queue ends each worker after its current job.
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

struct WorkerCtx {
    queue: Arc<Mutex<Receiver<Job>>>,
    tx: Sender<Done>,
    evt: EventFd,
    kvm: Arc<Kvm>,
    seal: Arc<Mutex<Option<Arc<seccompiler::BpfProgram>>>>,
    sealed: bool,
}

impl WorkerCtx {
    fn run(mut self) {
        loop {
            let job = lock(&self.queue).recv();
            let Ok(job) = job else { return };
            if !self.sealed {
                if let Some(filter) = lock(&self.seal).clone() {
                    if let Err(e) = crate::seccomp::apply(&filter) {
                        log::error!("life-cycle worker: cannot seal itself: {e}");
                        return;
                    }
                    self.sealed = true;
                }
            }
            let done = run_job(&self.kvm, job);
            if self.tx.send(done).is_err() {
                return;
            }
            let _ = self.evt.write(1);
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
            start,
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
            let result = match (result, start) {
                (Ok(mut vm), true) => vm.start().map(|()| vm),
                (other, _) => other,
            };
            Done::Built {
                id,
                result,
                output: ring,
                started: start,
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
