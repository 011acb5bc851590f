//! The io_uring engine: reads, writes and data syncs go to the kernel as
//! `READV`/`WRITEV`/`FSYNC(DATASYNC)` entries tagged with the request's
//! head; completions come back on the ring and an eventfd (registered
//! with the ring) wakes the device thread. The ring and the eventfd are
//! made when the VM is built (before any seccomp filter); the device
//! thread only submits (`io_uring_enter`) and reaps.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use io_uring::{opcode, types, IoUring};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::engine::{Completion, Engine, IoKind};

/// An io_uring with room for `entries` requests in flight.
pub struct UringEngine {
    ring: IoUring,
    evt: EventFd,
    file: Arc<File>,
    /// The iovecs of each request in flight, by tag: the kernel reads them
    /// until the request completes, so they stay put until it is reaped.
    iovs: Vec<Vec<libc::iovec>>,
    /// Tags submitted and not reaped.
    busy: Vec<bool>,
    in_flight: usize,
    /// Keeps guest RAM mapped while the kernel may still write into it.
    _mem: GuestMemoryMmap,
}

// SAFETY: the raw pointers in `iovs` point into guest RAM, which `_mem`
// keeps mapped; they are only read by the kernel and by this engine's
// owner thread. Moving the engine between threads moves no aliasing.
unsafe impl Send for UringEngine {}

impl UringEngine {
    /// A ring for up to `entries` requests (a power of two) on `file`.
    pub fn new(file: Arc<File>, entries: u16, mem: GuestMemoryMmap) -> io::Result<Self> {
        let ring = IoUring::new(u32::from(entries))?;
        let evt = EventFd::new(libc::EFD_NONBLOCK)?;
        ring.submitter().register_eventfd(evt.as_raw_fd())?;
        let n = usize::from(entries);
        Ok(UringEngine {
            ring,
            evt,
            file,
            iovs: vec![Vec::new(); n],
            busy: vec![false; n],
            in_flight: 0,
            _mem: mem,
        })
    }

    fn take_completions(&mut self, mut f: impl FnMut(Completion)) {
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            let Ok(tag) = u16::try_from(cqe.user_data()) else {
                continue;
            };
            let res = cqe.result();
            let result = if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                Ok(res as u32)
            };
            if let Some(b) = self.busy.get_mut(usize::from(tag)) {
                if *b {
                    *b = false;
                    self.in_flight -= 1;
                }
            }
            f(Completion { tag, result });
        }
    }
}

impl Engine for UringEngine {
    fn submit(
        &mut self,
        tag: u16,
        kind: IoKind,
        offset: u64,
        iovs: &[libc::iovec],
    ) -> io::Result<()> {
        let slot = usize::from(tag);
        if self.busy.get(slot).is_none_or(|b| *b) {
            return Err(io::Error::other(format!(
                "request tag {tag} is in flight or out of range"
            )));
        }
        let count = u32::try_from(iovs.len()).map_err(|_| io::Error::other("too many iovecs"))?;
        let held = &mut self.iovs[slot];
        held.clear();
        held.extend_from_slice(iovs);
        let fd = types::Fd(self.file.as_raw_fd());
        let entry = match kind {
            IoKind::Read => opcode::Readv::new(fd, held.as_ptr(), count)
                .offset(offset)
                .build(),
            IoKind::Write => opcode::Writev::new(fd, held.as_ptr(), count)
                .offset(offset)
                .build(),
            IoKind::Sync => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        }
        .user_data(u64::from(tag));
        if self.ring.submission().is_full() {
            self.ring.submit()?;
        }
        // SAFETY: the entry's iovec array lives in `self.iovs[slot]`, which
        // is not touched again until this tag's completion is reaped; the
        // buffers it names are guest RAM kept mapped by `_mem`; the file
        // is kept open by `self.file`. A drop waits for every request.
        unsafe { self.ring.submission().push(&entry) }
            .map_err(|_| io::Error::other("the submission queue is full"))?;
        self.busy[slot] = true;
        self.in_flight += 1;
        Ok(())
    }

    fn kick(&mut self) -> io::Result<()> {
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        let _ = self.evt.read();
        self.take_completions(|c| out.push(c));
    }

    fn eventfd(&self) -> Option<&EventFd> {
        Some(&self.evt)
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn drain(&mut self) {
        // Bounded: each round reaps at least one completion or gives up.
        let mut rounds = 0;
        while self.in_flight > 0 && rounds < 1_000_000 {
            rounds += 1;
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.raw_os_error() != Some(libc::EINTR) {
                    log::error!("io_uring: cannot wait for requests in flight: {e}");
                    break;
                }
            }
            self.take_completions(drop);
        }
        let _ = self.evt.read();
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        self.drain();
    }
}
