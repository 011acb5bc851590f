//! The virtio-blk queue on the device thread: take chains in order, parse
//! each into a request, let it pass the drive's rate limiter and the VM's
//! share, hand it to the engine, and complete it (status byte, used ring,
//! interrupt) when the engine is done.

use crate::virtio::watch;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, EventSet};

use super::engine::{iovecs, Completion, Engine, IoKind};
use super::request::{write_status, Geometry, Kind, Request, S_IOERR, S_OK};
use super::{Disk, DriveShared};
use crate::bus::lock;
use crate::config::CacheMode;
use crate::virtio::queue::write_to;
use crate::virtio::{QueueError, QueueHandler, Queues, HANDLER_TAG};

const TAG_TIMER: u32 = HANDLER_TAG;
const TAG_WAKE: u32 = HANDLER_TAG + 1;
const TAG_ENGINE: u32 = HANDLER_TAG + 2;
const QUEUE: usize = 0;

pub(super) struct BlockHandler {
    disk: Arc<Disk>,
    engine: Arc<Mutex<Box<dyn Engine>>>,
    shared: Arc<DriveShared>,
    /// The request at the head of the queue, waiting for tokens.
    pending: Option<Request>,
    /// Requests the engine has, by head index.
    in_flight: Vec<Option<Request>>,
    iovs: Vec<libc::iovec>,
    done: Vec<Completion>,
}

// SAFETY: `iovs` holds raw pointers into guest RAM only between filling
// and submitting within one call on the device thread; it is scratch.
unsafe impl Send for BlockHandler {}

/// Whether a request may go now.
enum Admit {
    Go,
    Wait,
}

impl BlockHandler {
    pub(super) fn new(
        disk: Arc<Disk>,
        engine: Arc<Mutex<Box<dyn Engine>>>,
        shared: Arc<DriveShared>,
    ) -> Self {
        BlockHandler {
            disk,
            engine,
            shared,
            pending: None,
            in_flight: (0..super::QUEUE_SIZE).map(|_| None).collect(),
            iovs: Vec::new(),
            done: Vec::new(),
        }
    }

    fn geometry(&self) -> Geometry {
        Geometry {
            capacity: self.disk.capacity,
            read_only: self.disk.read_only,
        }
    }

    /// The drive's rate limiter, then the VM's share: both or neither.
    fn admit(&mut self, req: &Request) -> Admit {
        let (bytes, ops) = req.cost();
        if ops == 0 {
            return Admit::Go;
        }
        let now = self.shared.now_ns();
        let mut limiter = lock(&self.shared.limiter);
        if !limiter.is_unlimited() && !limiter.try_consume(bytes, now) {
            let wait = limiter.wait_ns(bytes, now).max(1);
            drop(limiter);
            let armed = lock(&self.shared.timer).reset(Duration::from_nanos(wait), None);
            if let Err(e) = armed {
                log::warn!("{}: cannot arm the rate limiter's timer: {e}", self.disk.id);
            }
            return Admit::Wait;
        }
        if !self.shared.share.try_take(bytes, ops) {
            // The share runtime's next tick wakes us.
            if !limiter.is_unlimited() {
                limiter.refund(bytes);
            }
            return Admit::Wait;
        }
        Admit::Go
    }

    /// Takes, admits and starts requests until the queue is empty or one
    /// must wait; then completes what the engine finished.
    fn serve(&mut self, q: &mut Queues) -> Result<(), QueueError> {
        loop {
            let req = match self.pending.take() {
                Some(r) => r,
                None => match q.pop(QUEUE)? {
                    None => break,
                    Some(chain) => {
                        let head = chain.head;
                        Request::parse(&q.mem, chain, self.geometry()).map_err(|detail| {
                            QueueError::Chain {
                                queue: QUEUE,
                                head,
                                detail,
                            }
                        })?
                    }
                },
            };
            if let Admit::Wait = self.admit(&req) {
                self.pending = Some(req);
                break;
            }
            self.start(req, q)?;
        }
        let mut engine = lock(&self.engine);
        if let Err(e) = engine.kick() {
            log::warn!("{}: cannot submit requests: {e}", self.disk.id);
        }
        engine.reap(&mut self.done);
        drop(engine);
        self.complete(q)
    }

    /// Starts one admitted request: at once if no I/O is needed, else on
    /// the engine.
    fn start(&mut self, req: Request, q: &mut Queues) -> Result<(), QueueError> {
        let head = req.chain.head;
        let slot = usize::from(head);
        if self.in_flight.get(slot).is_none_or(Option::is_some) {
            return Err(QueueError::Chain {
                queue: QUEUE,
                head,
                detail: "this head is already in flight".into(),
            });
        }
        let (kind, offset, len) = match req.kind {
            Kind::Refuse(status) => return self.finish(q, req, status, 0),
            Kind::GetId => {
                let id = self.disk.serial();
                let n = (req.chain.writable_len() - 1).min(id.len() as u64) as usize;
                let written = write_to(&q.mem, req.chain.writable(), 0, &id[..n])
                    .map_err(|d| chain_err(head, d))?;
                return self.finish(q, req, S_OK, written as u32);
            }
            Kind::Flush if self.disk.cache == CacheMode::Unsafe => {
                self.count_flush();
                return self.finish(q, req, S_OK, 0);
            }
            Kind::Flush => (IoKind::Sync, 0, 0),
            Kind::Read { offset, len } => (IoKind::Read, offset, len),
            Kind::Write { offset, len } => (IoKind::Write, offset, len),
        };
        self.iovs.clear();
        if len > 0 {
            let (bufs, start) = match kind {
                IoKind::Read => (req.chain.writable(), 0),
                _ => (req.chain.readable(), 16),
            };
            iovecs(&q.mem, bufs, start, u64::from(len), &mut self.iovs)
                .map_err(|d| chain_err(head, d))?;
        }
        let submitted = lock(&self.engine).submit(head, kind, offset, &self.iovs);
        self.iovs.clear();
        match submitted {
            Ok(()) => {
                self.in_flight[slot] = Some(req);
                Ok(())
            }
            Err(e) => {
                log::warn!("{}: cannot start a request: {e}", self.disk.id);
                self.finish(q, req, S_IOERR, 0)
            }
        }
    }

    fn count_flush(&self) {
        use std::sync::atomic::Ordering::Release;
        self.shared.counters.flushes.fetch_add(1, Release);
    }

    /// Completes what the engine finished.
    fn complete(&mut self, q: &mut Queues) -> Result<(), QueueError> {
        use std::sync::atomic::Ordering::Release;
        let done = std::mem::take(&mut self.done);
        let mut any = false;
        for c in &done {
            let Some(req) = self
                .in_flight
                .get_mut(usize::from(c.tag))
                .and_then(Option::take)
            else {
                continue;
            };
            let counters = &self.shared.counters;
            let (status, data) = match (req.kind, &c.result) {
                (Kind::Read { len, .. }, Ok(n)) if *n == len => {
                    counters.reads.fetch_add(1, Release);
                    counters.read_bytes.fetch_add(u64::from(len), Release);
                    (S_OK, len)
                }
                (Kind::Write { len, .. }, Ok(n)) if *n == len => {
                    counters.writes.fetch_add(1, Release);
                    counters.write_bytes.fetch_add(u64::from(len), Release);
                    (S_OK, 0)
                }
                (Kind::Flush, Ok(_)) => {
                    counters.flushes.fetch_add(1, Release);
                    (S_OK, 0)
                }
                (_, result) => {
                    log::warn!("{}: request failed: {result:?}", self.disk.id);
                    (S_IOERR, 0)
                }
            };
            self.finish_quiet(q, req, status, data)?;
            any = true;
        }
        self.done = done;
        self.done.clear();
        if any {
            q.signal_used();
        }
        Ok(())
    }

    /// Writes the status, returns the chain with `data` bytes written
    /// into it (plus the status byte).
    fn finish_quiet(
        &mut self,
        q: &mut Queues,
        req: Request,
        status: u8,
        data: u32,
    ) -> Result<(), QueueError> {
        use std::sync::atomic::Ordering::Release;
        if status != S_OK {
            self.shared.counters.errors.fetch_add(1, Release);
        }
        let head = req.chain.head;
        write_status(&q.mem, req.status, status).map_err(|d| chain_err(head, d))?;
        q.add_used(QUEUE, req.chain, data + 1)
    }

    /// [`Self::finish_quiet`] and the interrupt.
    fn finish(
        &mut self,
        q: &mut Queues,
        req: Request,
        status: u8,
        data: u32,
    ) -> Result<(), QueueError> {
        self.finish_quiet(q, req, status, data)?;
        q.signal_used();
        Ok(())
    }
}

fn chain_err(head: u16, detail: String) -> QueueError {
    QueueError::Chain {
        queue: QUEUE,
        head,
        detail,
    }
}

impl QueueHandler for BlockHandler {
    fn start(&mut self, q: &mut Queues, ops: &mut EventOps) -> Result<(), QueueError> {
        watch(
            ops,
            &*lock(&self.shared.timer),
            TAG_TIMER,
            false,
            "its timer",
        )?;
        watch(
            ops,
            &self.shared.wake,
            TAG_WAKE,
            false,
            "its wake-up eventfd",
        )?;
        if let Some(evt) = lock(&self.engine).eventfd() {
            watch(ops, evt, TAG_ENGINE, false, "its io_uring")?;
        }
        self.serve(q)
    }

    fn queue_ready(&mut self, _index: usize, q: &mut Queues) -> Result<(), QueueError> {
        self.serve(q)
    }

    fn event(
        &mut self,
        tag: u32,
        _events: EventSet,
        q: &mut Queues,
        _ops: &mut EventOps,
    ) -> Result<(), QueueError> {
        match tag {
            TAG_TIMER => {
                let _ = lock(&self.shared.timer).wait();
            }
            TAG_WAKE => {
                let _ = self.shared.wake.read();
            }
            _ => {}
        }
        self.serve(q)
    }
}

impl Drop for BlockHandler {
    fn drop(&mut self) {
        // The driver reset the device (or the VM ends): nothing may write
        // into guest memory for requests it no longer knows of.
        lock(&self.engine).drain();
        let _ = lock(&self.shared.timer).clear();
    }
}
