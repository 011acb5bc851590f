//! The two I/O engines behind one interface (Firecracker's `io_engine`
//! `Sync` and `Async`): [`SyncEngine`] does each request with
//! `preadv`/`pwritev`/`fdatasync` on the device thread before it returns;
//! [`super::uring::UringEngine`] hands requests to the kernel through
//! io_uring and reports completions on an eventfd the device thread
//! watches. Both move data straight between the file and guest memory
//! (iovecs of host addresses of guest RAM): nothing is copied or
//! allocated per request.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::request::for_each_piece;
use crate::virtio::queue::Buffer;

/// What one request asks of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    Read,
    Write,
    /// `fdatasync`.
    Sync,
}

/// A finished request: its tag and the bytes moved (or the error).
#[derive(Debug)]
pub struct Completion {
    pub tag: u16,
    pub result: io::Result<u32>,
}

/// An I/O engine. Requests are tagged by the caller (the chain's head);
/// a tag is not reused before its completion was reaped.
pub trait Engine: Send {
    /// Starts a request over the host memory `iovs` (empty for `Sync`).
    fn submit(
        &mut self,
        tag: u16,
        kind: IoKind,
        offset: u64,
        iovs: &[libc::iovec],
    ) -> io::Result<()>;
    /// Pushes what was submitted to the kernel (io_uring); a no-op for sync.
    fn kick(&mut self) -> io::Result<()>;
    /// Moves finished requests into `out`.
    fn reap(&mut self, out: &mut Vec<Completion>);
    /// Signalled when completions wait (io_uring); `None`: completions are
    /// ready as soon as `submit` returns.
    fn eventfd(&self) -> Option<&EventFd>;
    /// Requests submitted and not reaped.
    fn in_flight(&self) -> usize;
    /// Waits for every request in flight and drops their completions (a
    /// device reset: guest memory must not be written behind the driver's
    /// back once it has reset the device).
    fn drain(&mut self);
}

/// Host iovecs for bytes `[start, start + len)` of the stream `bufs` (guest
/// buffers the queue reader checked lie in guest RAM), appended to `out`.
/// A buffer that crosses from one RAM region into the next is split.
pub fn iovecs(
    mem: &GuestMemoryMmap,
    bufs: &[Buffer],
    start: u64,
    len: u64,
    out: &mut Vec<libc::iovec>,
) -> Result<(), String> {
    for_each_piece(bufs, start, len, |addr, n| {
        let (mut at, mut left) = (addr, n);
        while left > 0 {
            let (region, offset) = mem
                .to_region_addr(at)
                .ok_or_else(|| format!("{:#x} is not in guest RAM", at.0))?;
            let piece = (region.len() - offset.0).min(left);
            let host = mem
                .get_host_address(at)
                .map_err(|e| format!("{:#x}: {e}", at.0))?;
            out.push(libc::iovec {
                iov_base: host.cast(),
                iov_len: piece as usize,
            });
            at = GuestAddress(at.0 + piece);
            left -= piece;
        }
        Ok(())
    })
}

/// `pread`/`pwrite` on the device thread.
pub struct SyncEngine {
    file: Arc<File>,
    done: Vec<Completion>,
    /// The iovecs of a transfer in progress (advanced on short transfers).
    scratch: Vec<libc::iovec>,
}

// SAFETY: the raw pointers in `scratch` are only used inside `submit`,
// which fills and consumes them; between calls they are dead values.
unsafe impl Send for SyncEngine {}

impl SyncEngine {
    pub fn new(file: Arc<File>) -> Self {
        SyncEngine {
            file,
            done: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Moves every byte of `iovs` (a short transfer goes on where it
    /// stopped); returns the bytes moved.
    fn transfer(&mut self, write: bool, mut offset: u64, iovs: &[libc::iovec]) -> io::Result<u32> {
        self.scratch.clear();
        self.scratch.extend_from_slice(iovs);
        let mut first = 0;
        let mut total: u64 = 0;
        let fd = self.file.as_raw_fd();
        while first < self.scratch.len() {
            let rest = &self.scratch[first..];
            let count = rest.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
            let off = libc::off_t::try_from(offset)
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            // SAFETY: every iovec points into a live mapping of guest RAM
            // (checked by the queue reader and split at region ends by
            // `iovecs`), which the caller's guest memory handle keeps
            // mapped; nothing in the monitor holds references into it.
            let n = unsafe {
                if write {
                    libc::pwritev(fd, rest.as_ptr(), count, off)
                } else {
                    libc::preadv(fd, rest.as_ptr(), count, off)
                }
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                // The file ended early (it shrank under the VM).
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            let mut n = n as usize;
            total += n as u64;
            offset += n as u64;
            while n > 0 && first < self.scratch.len() {
                let iov = &mut self.scratch[first];
                if n >= iov.iov_len {
                    n -= iov.iov_len;
                    first += 1;
                } else {
                    // SAFETY: `n < iov_len`: the new base stays inside the
                    // same buffer.
                    iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(n).cast() };
                    iov.iov_len -= n;
                    n = 0;
                }
            }
        }
        u32::try_from(total).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))
    }
}

impl Engine for SyncEngine {
    fn submit(
        &mut self,
        tag: u16,
        kind: IoKind,
        offset: u64,
        iovs: &[libc::iovec],
    ) -> io::Result<()> {
        let result = match kind {
            IoKind::Read => self.transfer(false, offset, iovs),
            IoKind::Write => self.transfer(true, offset, iovs),
            IoKind::Sync => self.file.sync_data().map(|()| 0),
        };
        self.done.push(Completion { tag, result });
        Ok(())
    }

    fn kick(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.done);
    }

    fn eventfd(&self) -> Option<&EventFd> {
        None
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }

    fn drain(&mut self) {
        self.done.clear();
    }
}
