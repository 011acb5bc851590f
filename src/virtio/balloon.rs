//! The virtio-balloon device (virtio 1.x, section 5.5): inflate and
//! deflate queues, the statistics queue, deflate-on-OOM and free page
//! reporting.
//!
//! Inflated pages and reported free pages go back to the host through
//! [`Reclaim`] (`madvise(MADV_DONTNEED)` on the host mapping in a VM); a
//! deflated page needs nothing, since anonymous memory comes back, zeroed,
//! when the guest touches it. The device counts what the balloon holds
//! itself, in a bitmap of guest pages: the `actual` field the driver
//! writes is only its claim. Every page frame number is checked to lie in
//! guest RAM before anything is done; a chain with one that does not, or a
//! PFN buffer of more than 256 entries, is malformed and the device then
//! needs a reset.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::queue::read_from;
use super::{Mailbox, QueueError, QueueHandler, Queues, VirtioDevice, HANDLER_TAG};
use crate::bus::lock;

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
/// Most PFNs one inflate or deflate buffer may hold (Linux sends 256).
pub const MAX_PFNS_PER_BUFFER: usize = 256;
/// Largest statistics buffer (Linux sends 10 tags of 10 bytes).
const MAX_STATS_BYTES: usize = 1024;

/// Statistics tags (virtio 1.x, 5.5.6.3).
pub const TAG_MEMFREE: u16 = 4;
pub const TAG_MEMTOT: u16 = 5;
pub const TAG_AVAIL: u16 = 6;
const STAT_LEN: usize = 10;

/// Returns guest pages to the host.
pub trait Reclaim: Send {
    /// Discards `[addr, addr + len)`, which the caller has checked lies in
    /// one RAM region: the host frees the pages; the guest reads zeros
    /// there when it touches them again.
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

/// What the handler publishes for the monitor.
#[derive(Default)]
struct Published {
    counters: Mutex<BalloonCounters>,
    stats: Mutex<GuestStats>,
    /// Pages in the balloon, as the device counted them.
    held_pages: AtomicU64,
}

/// The balloon's front: features and configuration space (`num_pages`,
/// which the monitor sets, and `actual`, which the driver writes).
pub struct Balloon {
    config: BalloonConfig,
    /// `num_pages`: the balloon size the host asks for, in 4 KiB pages.
    target_pages: u32,
    /// `actual`: the balloon size the driver reports.
    actual_pages: u32,
    published: Arc<Published>,
    stats_request: Arc<Mailbox<()>>,
    /// Builds each activation's page reclaimer.
    reclaim: fn() -> Box<dyn Reclaim>,
}

impl Balloon {
    pub fn new(config: BalloonConfig, reclaim: fn() -> Box<dyn Reclaim>) -> io::Result<Self> {
        Ok(Balloon {
            config,
            target_pages: 0,
            actual_pages: 0,
            published: Arc::default(),
            stats_request: Mailbox::new()?,
            reclaim,
        })
    }

    pub fn target_pages(&self) -> u32 {
        self.target_pages
    }

    /// Sets `num_pages`; returns whether it changed (the transport then
    /// raises a configuration change).
    pub fn set_target_pages(&mut self, pages: u32) -> bool {
        let changed = self.target_pages != pages;
        self.target_pages = pages;
        changed
    }

    /// What the driver claims the balloon holds.
    pub fn actual_pages(&self) -> u32 {
        self.actual_pages
    }

    /// What the balloon holds as the device counted it: pages inflated and
    /// not deflated since (each page once), since the last reset.
    pub fn held_pages(&self) -> u64 {
        self.published.held_pages.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> GuestStats {
        *lock(&self.published.stats)
    }

    pub fn counters(&self) -> BalloonCounters {
        *lock(&self.published.counters)
    }

    /// How many statistics requests the handler has served.
    pub fn stats_requests_served(&self) -> u64 {
        self.stats_request.served()
    }

    /// Asks the driver for fresh statistics (the handler gives back the
    /// buffer it holds).
    pub fn request_stats(&self) {
        if self.config.stats {
            self.stats_request.send(());
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

    fn max_chain_bytes(&self) -> u64 {
        // Reported free ranges are large (Linux reports up to 32 blocks of
        // 2-4 MiB in one chain); they are only discarded, never copied.
        1 << 40
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
        if let (4, Ok(bytes)) = (offset, <[u8; 4]>::try_from(data)) {
            self.actual_pages = u32::from_le_bytes(bytes);
        }
    }

    fn activate(&mut self, acked: u64) -> Result<Box<dyn QueueHandler>, String> {
        Ok(Box::new(BalloonHandler {
            roles: roles(acked),
            reclaim: (self.reclaim)(),
            inflated: PageBitmap::default(),
            stats_head: None,
            published: self.published.clone(),
            stats_request: self.stats_request.clone(),
        }))
    }

    fn reset(&mut self) {
        self.actual_pages = 0;
        self.published.held_pages.store(0, Ordering::Release);
    }
}

/// What a queue is for, once features are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

/// Queue indices follow the queues that exist (as Linux assigns them):
/// inflate, deflate, then stats and reporting when negotiated.
fn roles(acked: u64) -> [Option<Role>; 4] {
    let mut roles = [Some(Role::Inflate), Some(Role::Deflate), None, None];
    let mut next = 2;
    for (bit, role) in [(F_STATS_VQ, Role::Stats), (F_REPORTING, Role::Reporting)] {
        if acked & (1 << bit) != 0 {
            roles[next] = Some(role);
            next += 1;
        }
    }
    roles
}

/// One bit per 4 KiB guest page: set while the page is in the balloon.
/// Grown to cover the highest page inflated (a page the reader already
/// checked lies in guest RAM, so its size is the host's choice).
#[derive(Default)]
struct PageBitmap {
    words: Vec<u64>,
    count: u64,
}

impl PageBitmap {
    /// Sets the bit of `pfn`; whether it was clear.
    fn set(&mut self, pfn: u64) -> bool {
        let (w, bit) = ((pfn / 64) as usize, 1u64 << (pfn % 64));
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let fresh = self.words[w] & bit == 0;
        self.words[w] |= bit;
        self.count += u64::from(fresh);
        fresh
    }

    /// Clears the bit of `pfn`; whether it was set.
    fn clear(&mut self, pfn: u64) -> bool {
        let (w, bit) = ((pfn / 64) as usize, 1u64 << (pfn % 64));
        let was = self.words.get(w).is_some_and(|word| word & bit != 0);
        if was {
            self.words[w] &= !bit;
            self.count -= 1;
        }
        was
    }
}

/// The balloon's queues on the device thread.
struct BalloonHandler {
    roles: [Option<Role>; 4],
    reclaim: Box<dyn Reclaim>,
    inflated: PageBitmap,
    /// The statistics buffer held until the monitor wants fresh figures.
    stats_head: Option<u16>,
    published: Arc<Published>,
    stats_request: Arc<Mailbox<()>>,
}

/// The PFNs of one buffer, sorted, each checked to lie in guest RAM.
fn read_pfns(
    mem: &GuestMemoryMmap,
    buf: &super::Buffer,
    out: &mut [u32; MAX_PFNS_PER_BUFFER],
) -> Result<usize, String> {
    let len = buf.len as usize;
    if len % 4 != 0 || len / 4 > MAX_PFNS_PER_BUFFER {
        return Err(format!(
            "a PFN buffer of {len} bytes (a multiple of 4, at most {MAX_PFNS_PER_BUFFER} PFNs)"
        ));
    }
    let mut raw = [0u8; MAX_PFNS_PER_BUFFER * 4];
    read_from(mem, std::slice::from_ref(buf), 0, &mut raw[..len])?;
    let n = len / 4;
    for (slot, bytes) in out.iter_mut().zip(raw[..len].chunks_exact(4)) {
        let pfn = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let addr = u64::from(pfn) << PAGE_SHIFT;
        if !mem.check_range(GuestAddress(addr), PAGE_SIZE as usize) {
            return Err(format!("PFN {pfn:#x} is not in guest RAM"));
        }
        *slot = pfn;
    }
    out[..n].sort_unstable();
    Ok(n)
}

impl BalloonHandler {
    fn publish(&self, f: impl FnOnce(&mut BalloonCounters)) {
        f(&mut lock(&self.published.counters));
        self.published
            .held_pages
            .store(self.inflated.count, Ordering::Release);
    }

    /// Inflate or deflate: every PFN of the chain is checked before any is
    /// acted on.
    fn pages(&mut self, inflate: bool, index: usize, q: &mut Queues) -> Result<bool, QueueError> {
        let mut used = false;
        let mut pfns = [0u32; MAX_PFNS_PER_BUFFER];
        while let Some(chain) = q.pop(index)? {
            let bad = |detail: String| QueueError::Chain {
                queue: index,
                head: chain.head,
                detail,
            };
            if !chain.writable().is_empty() {
                return Err(bad(
                    "a device-writable buffer on an inflate or deflate queue".into(),
                ));
            }
            for buf in chain.readable() {
                read_pfns(&q.mem, buf, &mut pfns).map_err(bad)?;
            }
            let (mut inflated, mut deflated) = (0, 0);
            for buf in chain.readable() {
                let n = read_pfns(&q.mem, buf, &mut pfns).map_err(bad)?;
                if inflate {
                    inflated += self.inflate(&q.mem, &pfns[..n]);
                } else {
                    deflated += pfns[..n]
                        .iter()
                        .filter(|&&p| self.inflated.clear(u64::from(p)))
                        .count() as u64;
                }
            }
            self.publish(|c| {
                c.inflated_pages += inflated;
                c.deflated_pages += deflated;
            });
            q.add_used(index, chain, 0)?;
            used = true;
        }
        Ok(used)
    }

    /// Discards the sorted pages `pfns`, merging neighbours into ranges;
    /// returns how many were not in the balloon yet.
    fn inflate(&mut self, mem: &GuestMemoryMmap, pfns: &[u32]) -> u64 {
        let mut fresh = 0;
        let mut i = 0;
        while i < pfns.len() {
            let start = u64::from(pfns[i]);
            let mut end = start;
            while i < pfns.len() && u64::from(pfns[i]) <= end {
                fresh += u64::from(self.inflated.set(u64::from(pfns[i])));
                end = u64::from(pfns[i]) + 1;
                i += 1;
            }
            self.discard(mem, start << PAGE_SHIFT, (end - start) << PAGE_SHIFT);
        }
        fresh
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
                lock(&self.published.counters).discard_errors += 1;
                log::warn!("balloon: cannot discard {at:#x}+{chunk:#x}: {e}");
            }
            at += chunk;
        }
    }

    fn stats(&mut self, index: usize, q: &mut Queues) -> Result<bool, QueueError> {
        let mut used = false;
        while let Some(chain) = q.pop(index)? {
            let len = chain.readable_len() as usize;
            if !chain.writable().is_empty() || len % STAT_LEN != 0 || len > MAX_STATS_BYTES {
                return Err(QueueError::Chain {
                    queue: index,
                    head: chain.head,
                    detail: format!(
                        "a statistics buffer of {len} bytes (readable, a multiple of 10, \
                         at most {MAX_STATS_BYTES})"
                    ),
                });
            }
            let mut raw = [0u8; MAX_STATS_BYTES];
            read_from(&q.mem, chain.readable(), 0, &mut raw[..len]).map_err(|detail| {
                QueueError::Chain {
                    queue: index,
                    head: chain.head,
                    detail,
                }
            })?;
            let mut stats = lock(&self.published.stats);
            let mut fresh = GuestStats {
                updates: stats.updates + 1,
                ..GuestStats::default()
            };
            for entry in raw[..len].chunks_exact(STAT_LEN) {
                let tag = u16::from_le_bytes([entry[0], entry[1]]);
                let mut val = [0u8; 8];
                val.copy_from_slice(&entry[2..10]);
                let val = Some(u64::from_le_bytes(val));
                match tag {
                    TAG_MEMFREE => fresh.free = val,
                    TAG_MEMTOT => fresh.total = val,
                    TAG_AVAIL => fresh.available = val,
                    _ => {}
                }
            }
            *stats = fresh;
            drop(stats);
            // Keep the newest buffer to return on the next request.
            let head = chain.head;
            q.recycle(chain);
            if let Some(old) = self.stats_head.replace(head) {
                q.add_used_head(index, old, 0)?;
                used = true;
            }
        }
        Ok(used)
    }

    fn reports(&mut self, index: usize, q: &mut Queues) -> Result<bool, QueueError> {
        let mut used = false;
        while let Some(chain) = q.pop(index)? {
            let whole_pages = chain
                .writable()
                .iter()
                .all(|b| b.addr.0 % PAGE_SIZE == 0 && u64::from(b.len) % PAGE_SIZE == 0);
            if !chain.readable().is_empty() || !whole_pages {
                return Err(QueueError::Chain {
                    queue: index,
                    head: chain.head,
                    detail: "a report that is not device-writable whole pages".into(),
                });
            }
            let mut bytes = 0;
            for buf in chain.writable() {
                self.discard(&q.mem, buf.addr.0, u64::from(buf.len));
                bytes += u64::from(buf.len);
            }
            self.publish(|c| c.reported_bytes += bytes);
            q.add_used(index, chain, 0)?;
            used = true;
        }
        Ok(used)
    }

    fn stats_index(&self) -> Option<usize> {
        self.roles.iter().position(|r| *r == Some(Role::Stats))
    }
}

impl QueueHandler for BalloonHandler {
    fn start(&mut self, q: &mut Queues, ops: &mut EventOps) -> Result<(), QueueError> {
        if self.stats_index().is_some() {
            let requests = self.stats_request.eventfd();
            super::watch(ops, requests, HANDLER_TAG, false, "statistics requests")?;
        }
        for index in 0..q.len() {
            self.queue_ready(index, q)?;
        }
        Ok(())
    }

    fn queue_ready(&mut self, index: usize, q: &mut Queues) -> Result<(), QueueError> {
        let used = match self.roles.get(index).copied().flatten() {
            Some(Role::Inflate) => self.pages(true, index, q)?,
            Some(Role::Deflate) => self.pages(false, index, q)?,
            Some(Role::Stats) => self.stats(index, q)?,
            Some(Role::Reporting) => self.reports(index, q)?,
            None => false,
        };
        if used {
            q.signal_used();
        }
        Ok(())
    }

    fn event(
        &mut self,
        _tag: u32,
        _events: EventSet,
        q: &mut Queues,
        _ops: &mut EventOps,
    ) -> Result<(), QueueError> {
        // A statistics request: give the held buffer back.
        if self.stats_request.take().is_some() {
            if let (Some(index), Some(head)) = (self.stats_index(), self.stats_head.take()) {
                q.add_used_head(index, head, 0)?;
                q.signal_used();
            }
        }
        Ok(())
    }
}

/// What the monitor does with a VM's balloon.
impl super::mmio::MmioTransport<Balloon> {
    /// Asks the guest for a balloon of `pages` 4 KiB pages (a configuration
    /// change interrupt, if it differs from the current request).
    pub fn set_target_pages(&mut self, pages: u32) {
        if self.device_mut().set_target_pages(pages) {
            self.config_changed();
        }
    }
}

#[cfg(test)]
#[path = "balloon_tests.rs"]
mod tests;
