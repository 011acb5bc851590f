//! The statistics file (`--stats-file`), written off the event loop.
//!
//! Once a second the event loop gathers a [`Snapshot`] (copies of
//! counters) and hands it to the writer thread, which turns it into JSON
//! and replaces the file atomically. With hundreds of VMs that JSON takes
//! milliseconds to build, write and free; on the loop it would make every
//! scheduler tick that falls in that second's write late by as much.
//! A snapshot offered while the writer is still busy with the last one is
//! dropped (the next second's replaces it): the loop never waits, except
//! for the monitor's last figures, which are always written. A written
//! snapshot goes back to the loop, which fills it again the next second
//! (its vectors' room reused: no allocation per VM on the loop).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::handoff::{Handoff, Refused};
use crate::stats::{self, Snapshot};

/// How long the monitor's last figures may take to be written.
const LAST_WRITE: Duration = Duration::from_secs(5);

/// A snapshot, and where to say it is written (the last one).
type Job = (Snapshot, Option<Arc<Handoff<()>>>);

pub(crate) struct StatsWriter {
    jobs: Arc<Handoff<Job>>,
    /// The last snapshot written, given back for the loop to fill again.
    spares: Arc<Handoff<Snapshot>>,
    thread: Option<JoinHandle<()>>,
}

impl StatsWriter {
    /// Starts the writer thread ("hearth-stats"), which installs `seccomp`
    /// (the event loop's list: it does what the loop did) first. With
    /// `realtime` (the loop's `host.cpu.realtime`), it runs SCHED_FIFO just
    /// below the loop: both take malloc's lock, and a writer holding it
    /// behind busy vCPUs would keep the loop waiting (measured with 200
    /// spinning VMs on one CPU: 145 of 1000 ticks missed, against none).
    pub(crate) fn start(
        path: PathBuf,
        seccomp: Option<Arc<seccompiler::BpfProgram>>,
        realtime: bool,
    ) -> io::Result<StatsWriter> {
        // Holds one snapshot: one offered while the writer has not taken
        // the last is dropped. Not a channel: see crate::handoff.
        let jobs = Arc::new(Handoff::bounded(1));
        let rx = jobs.clone();
        let spares = Arc::new(Handoff::bounded(1));
        let back = spares.clone();
        let thread = std::thread::Builder::new()
            .name("hearth-stats".into())
            .spawn(move || {
                if realtime {
                    crate::host::try_realtime(
                        crate::host::WRITER_RT_PRIORITY,
                        "the statistics writer",
                    );
                }
                match seccomp.as_deref().map(crate::seccomp::apply) {
                    Some(Err(e)) => {
                        log::error!("statistics writer: cannot install its filter: {e}")
                    }
                    _ => write_loop(&path, &rx, &back),
                }
                // Gone: later snapshots are refused, not queued.
                rx.close();
            })?;
        Ok(StatsWriter {
            jobs,
            spares,
            thread: Some(thread),
        })
    }

    /// A written snapshot to fill again, if the writer has given one back
    /// (never waits: the writer may hold the hand-off's lock).
    pub(crate) fn take_spare(&self) -> Option<Snapshot> {
        self.spares.try_pop_now().ok().flatten()
    }

    /// Offers `snapshot` to the writer; with `last`, waits (at most
    /// [`LAST_WRITE`]) until it is written.
    pub(crate) fn submit(&self, snapshot: Snapshot, last: bool) {
        if !last {
            match self.jobs.push((snapshot, None)) {
                Ok(()) | Err(Refused::Full(_)) => {}
                Err(Refused::Closed(_)) => {
                    log::warn!("statistics writer is gone: the file is no longer updated")
                }
            }
            return;
        }
        // The last figures replace a snapshot still waiting.
        let written = Arc::new(Handoff::bounded(1));
        let mut job = (snapshot, Some(written.clone()));
        loop {
            match self.jobs.push(job) {
                Ok(()) => break,
                Err(Refused::Full(j)) => {
                    self.jobs.try_pop();
                    job = j;
                }
                Err(Refused::Closed(_)) => return,
            }
        }
        if written.pop_timeout(LAST_WRITE).is_none() {
            log::warn!("statistics writer: the last figures were not written in {LAST_WRITE:?}");
        }
    }
}

impl Drop for StatsWriter {
    fn drop(&mut self) {
        // Ends the thread once it has written what it holds.
        self.jobs.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_loop(path: &Path, jobs: &Handoff<Job>, spares: &Handoff<Snapshot>) {
    while let Some((snapshot, ack)) = jobs.pop() {
        if let Err(e) = stats::write_atomically(path, &snapshot) {
            log::warn!("cannot write statistics to {}: {e}", path.display());
        }
        if let Some(ack) = ack {
            let _ = ack.push(());
        }
        // Back to the loop; one already waiting there: this one is freed
        // here, off the loop.
        let _ = spares.push(snapshot);
    }
}
