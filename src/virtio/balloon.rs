//! The virtio-balloon device (virtio 1.x, section 5.5): inflate and
//! deflate queues, the statistics queue, deflate-on-OOM and free page
//! reporting.
//!
//! Inflated pages and reported free pages go back to the host through
//! [`Reclaim`] (`madvise(MADV_DONTNEED)` on the host mapping in a VM); a
//! deflated page needs nothing, since anonymous memory comes back, zeroed,
//! when the guest touches it. Every page frame number is checked to lie in
//! guest RAM before anything is done; a chain with one that does not is
//! malformed, and the device then needs a reset.

use std::io;

use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::chain::{self, Direction, QueueError};
use super::mmio::{MmioTransport, VirtioDevice};

pub const DEVICE_TYPE: u32 = 5;
/// Balloon feature bits.
pub const F_MUST_TELL_HOST: u32 = 0;
pub const F_STATS_VQ: u32 = 1;
pub const F_DEFLATE_ON_OOM: u32 = 2;
pub const F_REPORTING: u32 = 5;
/// The balloon's page size, whatever the guest's.
pub const PAGE_SHIFT: u32 = 12;
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
const QUEUE_SIZE: u16 = 256;

/// Statistics tags (virtio 1.x, 5.5.6.3).
pub const TAG_MEMFREE: u16 = 4;
pub const TAG_MEMTOT: u16 = 5;
pub const TAG_AVAIL: u16 = 6;
const STAT_LEN: usize = 10;

/// Returns guest pages to the host.
pub trait Reclaim: Send {
    /// Discards `[addr, addr + len)`, which the caller has checked lies in
    /// guest RAM: the host frees the pages; the guest reads zeros there
    /// when it touches them again.
    fn discard(&mut self, mem: &GuestMemoryMmap, addr: GuestAddress, len: u64) -> io::Result<()>;
}

/// Discards with `madvise(MADV_DONTNEED)` on the host mapping of guest RAM.
pub struct Madvise;

impl Reclaim for Madvise {
    fn discard(&mut self, mem: &GuestMemoryMmap, addr: GuestAddress, len: u64) -> io::Result<()> {
        let outside = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "range is not inside one RAM region",
            )
        };
        let (region, offset) = mem.to_region_addr(addr).ok_or_else(outside)?;
        let end = offset.0.checked_add(len).ok_or_else(outside)?;
        if end > region.len() {
            return Err(outside());
        }
        let host = mem
            .get_host_address(addr)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let len = usize::try_from(len).map_err(|_| outside())?;
        // SAFETY: `[host, host + len)` lies inside one live mapping of guest
        // RAM (checked against the region above), owned by `mem`. Discarding
        // anonymous private pages cannot break Rust's invariants: nothing in
        // the monitor holds references into guest RAM, and the guest reads
        // zeros afterwards, which is what a balloon promises it.
        let rc = unsafe { libc::madvise(host.cast(), len, libc::MADV_DONTNEED) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// What the guest said in its last statistics buffer, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestStats {
    pub free: Option<u64>,
    pub total: Option<u64>,
    pub available: Option<u64>,
    /// How many statistics buffers the guest has sent.
    pub updates: u64,
}

/// Counters of what the balloon has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonCounters {
    pub inflated_pages: u64,
    pub deflated_pages: u64,
    pub reported_bytes: u64,
    /// Ranges the host could not discard (left in place; not fatal).
    pub discard_errors: u64,
}

/// Options of one balloon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalloonConfig {
    pub stats: bool,
    pub deflate_on_oom: bool,
    pub reporting: bool,
}

/// What a queue is for, once features are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

pub struct Balloon {
    config: BalloonConfig,
    reclaim: Box<dyn Reclaim>,
    /// `num_pages`: the balloon size the host asks for, in 4 KiB pages.
    target_pages: u32,
    /// `actual`: the balloon size the driver reports.
    actual_pages: u32,
    acked: u64,
    /// The statistics buffer the device holds until it wants fresh figures.
    stats_head: Option<u16>,
    stats: GuestStats,
    counters: BalloonCounters,
    scratch: Vec<u8>,
}

impl Balloon {
    pub fn new(config: BalloonConfig, reclaim: Box<dyn Reclaim>) -> Self {
        Balloon {
            config,
            reclaim,
            target_pages: 0,
            actual_pages: 0,
            acked: 0,
            stats_head: None,
            stats: GuestStats::default(),
            counters: BalloonCounters::default(),
            scratch: Vec::new(),
        }
    }

    pub fn target_pages(&self) -> u32 {
        self.target_pages
    }

    pub fn actual_pages(&self) -> u32 {
        self.actual_pages
    }

    pub fn stats(&self) -> GuestStats {
        self.stats
    }

    pub fn counters(&self) -> BalloonCounters {
        self.counters
    }

    fn acked(&self, bit: u32) -> bool {
        self.acked & (1 << bit) != 0
    }

    /// The queue index of the statistics queue, when negotiated.
    pub fn stats_queue(&self) -> Option<usize> {
        self.acked(F_STATS_VQ).then_some(2)
    }

    /// Queue indices follow the queues that exist (as Linux assigns them):
    /// inflate, deflate, then stats and reporting when negotiated.
    fn role(&self, index: usize) -> Option<Role> {
        let mut roles = [Some(Role::Inflate), Some(Role::Deflate), None, None];
        let mut next = 2;
        for (bit, role) in [(F_STATS_VQ, Role::Stats), (F_REPORTING, Role::Reporting)] {
            if self.acked(bit) {
                roles[next] = Some(role);
                next += 1;
            }
        }
        roles.get(index).copied().flatten()
    }

    /// Reads the PFN array of an inflate/deflate chain and checks each page
    /// lies in guest RAM; returns the guest addresses.
    fn pages(
        &mut self,
        chain: &chain::Chain,
        index: usize,
        mem: &GuestMemoryMmap,
    ) -> Result<Vec<u64>, QueueError> {
        let bad = |detail: String| QueueError::Chain {
            queue: index,
            head: chain.head,
            detail,
        };
        let mut pages = Vec::new();
        for buf in &chain.buffers {
            if buf.len % 4 != 0 {
                return Err(bad(format!(
                    "a PFN buffer of {} bytes, not a multiple of 4",
                    buf.len
                )));
            }
            self.scratch.resize(buf.len as usize, 0);
            mem.read_slice(&mut self.scratch, buf.addr)
                .map_err(|e| bad(format!("cannot read the PFN buffer: {e}")))?;
            for pfn in self.scratch.chunks_exact(4) {
                let pfn = u32::from_le_bytes([pfn[0], pfn[1], pfn[2], pfn[3]]);
                let addr = u64::from(pfn) << PAGE_SHIFT;
                if !mem.check_range(GuestAddress(addr), PAGE_SIZE as usize) {
                    return Err(bad(format!("PFN {pfn:#x} is not in guest RAM")));
                }
                pages.push(addr);
            }
        }
        Ok(pages)
    }

    /// Discards the pages at `addrs`, merging neighbours into ranges.
    fn discard_pages(&mut self, mem: &GuestMemoryMmap, mut addrs: Vec<u64>) {
        addrs.sort_unstable();
        addrs.dedup();
        let mut i = 0;
        while i < addrs.len() {
            let start = addrs[i];
            let mut end = start + PAGE_SIZE;
            i += 1;
            while i < addrs.len() && addrs[i] == end && mem.find_region(GuestAddress(end)).is_some()
            {
                end += PAGE_SIZE;
                i += 1;
            }
            self.discard(mem, start, end - start);
        }
    }

    fn discard(&mut self, mem: &GuestMemoryMmap, start: u64, len: u64) {
        // A run may cross from one RAM region into the next; split it.
        let mut at = start;
        while at < start + len {
            let region_end = mem
                .find_region(GuestAddress(at))
                .map_or(at + PAGE_SIZE, |r| r.start_addr().0 + r.len());
            let chunk = region_end.min(start + len) - at;
            if let Err(e) = self.reclaim.discard(mem, GuestAddress(at), chunk) {
                self.counters.discard_errors += 1;
                log::warn!("balloon: cannot discard {at:#x}+{chunk:#x}: {e}");
            }
            at += chunk;
        }
    }

    fn process_pages(
        &mut self,
        role: Role,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        let mut used = false;
        while let Some(c) = chain::pop(queue, index, mem, Direction::Readable)? {
            let pages = self.pages(&c, index, mem)?;
            let n = pages.len() as u64;
            if role == Role::Inflate {
                self.discard_pages(mem, pages);
                self.counters.inflated_pages += n;
            } else {
                self.counters.deflated_pages += n;
            }
            chain::add_used(queue, index, mem, c.head, 0)?;
            used = true;
        }
        Ok(used)
    }

    fn process_stats(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        let mut used = false;
        while let Some(c) = chain::pop(queue, index, mem, Direction::Readable)? {
            let bad = |detail: String| QueueError::Chain {
                queue: index,
                head: c.head,
                detail,
            };
            let mut stats = GuestStats {
                updates: self.stats.updates + 1,
                ..GuestStats::default()
            };
            for buf in &c.buffers {
                if buf.len as usize % STAT_LEN != 0 {
                    return Err(bad(format!(
                        "a statistics buffer of {} bytes, not a multiple of 10",
                        buf.len
                    )));
                }
                self.scratch.resize(buf.len as usize, 0);
                mem.read_slice(&mut self.scratch, buf.addr)
                    .map_err(|e| bad(format!("cannot read the statistics: {e}")))?;
                for entry in self.scratch.chunks_exact(STAT_LEN) {
                    let tag = u16::from_le_bytes([entry[0], entry[1]]);
                    let mut val = [0u8; 8];
                    val.copy_from_slice(&entry[2..10]);
                    let val = Some(u64::from_le_bytes(val));
                    match tag {
                        TAG_MEMFREE => stats.free = val,
                        TAG_MEMTOT => stats.total = val,
                        TAG_AVAIL => stats.available = val,
                        _ => {}
                    }
                }
            }
            self.stats = stats;
            // Keep the newest buffer to return on the next request.
            if let Some(old) = self.stats_head.replace(c.head) {
                chain::add_used(queue, index, mem, old, 0)?;
                used = true;
            }
        }
        Ok(used)
    }

    fn process_reports(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        let mut used = false;
        while let Some(c) = chain::pop(queue, index, mem, Direction::Writable)? {
            for buf in &c.buffers {
                if buf.addr.0 % PAGE_SIZE != 0 || u64::from(buf.len) % PAGE_SIZE != 0 {
                    return Err(QueueError::Chain {
                        queue: index,
                        head: c.head,
                        detail: format!(
                            "reported range {:#x}+{:#x} is not whole pages",
                            buf.addr.0, buf.len
                        ),
                    });
                }
            }
            for buf in &c.buffers {
                self.discard(mem, buf.addr.0, u64::from(buf.len));
                self.counters.reported_bytes += u64::from(buf.len);
            }
            chain::add_used(queue, index, mem, c.head, 0)?;
            used = true;
        }
        Ok(used)
    }

    /// Gives the held statistics buffer back, asking the driver for fresh
    /// figures. `Ok(true)` if there was one.
    fn request_stats(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        match self.stats_head.take() {
            Some(head) => chain::add_used(queue, index, mem, head, 0).map(|()| true),
            None => Ok(false),
        }
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        let mut f = 0;
        if self.config.stats {
            f |= 1 << F_STATS_VQ;
        }
        if self.config.deflate_on_oom {
            f |= 1 << F_DEFLATE_ON_OOM;
        }
        if self.config.reporting {
            f |= 1 << F_REPORTING;
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 4]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 16];
        config[0..4].copy_from_slice(&self.target_pages.to_le_bytes());
        config[4..8].copy_from_slice(&self.actual_pages.to_le_bytes());
        data.fill(0);
        let start = offset as usize;
        if let Some(src) = config.get(start..start.saturating_add(data.len())) {
            data.copy_from_slice(src);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (bytes 4..8) is the driver's to write.
        if offset == 4 && data.len() == 4 {
            self.actual_pages = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        }
    }

    fn activate(&mut self, acked: u64) {
        self.acked = acked;
    }

    fn reset(&mut self) {
        self.acked = 0;
        self.stats_head = None;
        self.actual_pages = 0;
    }

    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError> {
        match self.role(index) {
            Some(role @ (Role::Inflate | Role::Deflate)) => {
                self.process_pages(role, index, queue, mem)
            }
            Some(Role::Stats) => self.process_stats(index, queue, mem),
            Some(Role::Reporting) => self.process_reports(index, queue, mem),
            None => Ok(false),
        }
    }
}

/// What the monitor does with a VM's balloon.
impl MmioTransport<Balloon> {
    /// Asks the guest for a balloon of `pages` 4 KiB pages (a configuration
    /// change interrupt, if it differs from the current request).
    pub fn set_target_pages(&mut self, pages: u32) {
        if self.device().target_pages != pages {
            self.device_mut().target_pages = pages;
            self.config_changed();
        }
    }

    /// Asks the guest for fresh statistics (returns the buffer it posted).
    pub fn request_stats(&mut self) {
        if let Some(index) = self.device().stats_queue() {
            self.with_queue(index, |b, q, mem| b.request_stats(index, q, mem));
        }
    }
}

#[cfg(test)]
#[path = "balloon_tests.rs"]
mod tests;
