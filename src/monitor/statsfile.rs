//! The statistics file (`--stats-file`), written off the event loop.
//!
//! Once a second the event loop gathers a [`Snapshot`] (copies of
//! counters) and hands it to the writer thread, which turns it into JSON
//! and replaces the file atomically. With hundreds of VMs that JSON takes
//! milliseconds to build, write and free; on the loop it would make every
//! scheduler tick that falls in that second's write late by as much.
//! A snapshot offered while the writer is still busy with the last one is
//! dropped (the next second's replaces it): the loop never waits, except
//! for the monitor's last figures, which are always written.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::stats::{self, Snapshot};

/// How long the monitor's last figures may take to be written.
const LAST_WRITE: Duration = Duration::from_secs(5);

type Job = (Snapshot, Option<SyncSender<()>>);

pub(crate) struct StatsWriter {
    tx: Option<SyncSender<Job>>,
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
        let (tx, rx) = sync_channel::<Job>(1);
        let thread = std::thread::Builder::new()
            .name("hearth-stats".into())
            .spawn(move || {
                if realtime {
                    crate::host::try_realtime(
                        crate::host::WRITER_RT_PRIORITY,
                        "the statistics writer",
                    );
                }
                if let Some(filter) = &seccomp {
                    if let Err(e) = crate::seccomp::apply(filter) {
                        log::error!("statistics writer: cannot install its filter: {e}");
                        return;
                    }
                }
                write_loop(&path, &rx);
            })?;
        Ok(StatsWriter {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Offers `snapshot` to the writer; with `last`, waits (at most
    /// [`LAST_WRITE`]) until it is written.
    pub(crate) fn submit(&self, snapshot: Snapshot, last: bool) {
        let Some(tx) = &self.tx else { return };
        if !last {
            match tx.try_send((snapshot, None)) {
                Ok(()) | Err(TrySendError::Full(_)) => {}
                Err(TrySendError::Disconnected(_)) => {
                    log::warn!("statistics writer is gone: the file is no longer updated")
                }
            }
            return;
        }
        let (ack, written) = sync_channel(1);
        if tx.send((snapshot, Some(ack))).is_ok() && written.recv_timeout(LAST_WRITE).is_err() {
            log::warn!("statistics writer: the last figures were not written in {LAST_WRITE:?}");
        }
    }
}

impl Drop for StatsWriter {
    fn drop(&mut self) {
        // Ends the thread once it has written what it holds.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_loop(path: &Path, rx: &Receiver<Job>) {
    for (snapshot, ack) in rx.iter() {
        if let Err(e) = stats::write_atomically(path, &snapshot) {
            log::warn!("cannot write statistics to {}: {e}", path.display());
        }
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
    }
}
