//! The guest side of the balloon target: a driver that sets the device up
//! properly when told to, and otherwise writes whatever registers, rings,
//! page frame numbers, statistics and free-page reports its input says.

use arbitrary::Arbitrary;
use hearth::bus::BusDevice;
use hearth::virtio::balloon::{Balloon, F_DEFLATE_ON_OOM, F_REPORTING, F_STATS_VQ};
use hearth::virtio::mmio::MmioTransport;
use hearth::virtio::{STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::support::{List, RawDesc, Ring, DESC_F_NEXT, DESC_F_WRITE};

/// Guest RAM: two regions that touch, a hole, and a small third one.
pub const REGIONS: [(u64, u64); 3] = [
    (0, 0x10_0000),
    (0x10_0000, 0x10_0000),
    (0x30_0000, 0x1_0000),
];
/// Guest pages, counting the hole (PFNs the driver picks from).
const SPAN_PAGES: u32 = 0x310;
/// Guest RAM pages.
pub const RAM_PAGES: u32 = 0x210;
/// The rings of queue `i` are at `RINGS + i * 0x4000`, 16 entries each.
const RINGS: u64 = 0x1_0000;
const RING_SIZE: u16 = 16;
/// Where the driver puts its buffers (reused round-robin).
const BUFFERS: u64 = 0x4_0000;
const BUFFERS_LEN: u64 = 0x4_0000;

/// Register offsets (virtio-mmio version 2).
pub const REG_STATUS: u64 = 0x70;
const REGS: [u64; 22] = [
    0x00, 0x04, 0x08, 0x0c, 0x10, 0x14, 0x20, 0x24, 0x30, 0x34, 0x38, 0x44, 0x50, 0x60, 0x64, 0x70,
    0x80, 0x84, 0x90, 0x94, 0xa0, 0xa4,
];

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Reg {
    Known(u8),
    /// Any offset in the register window (aligned or not).
    Raw(u16),
}

impl Reg {
    pub fn offset(self) -> u64 {
        match self {
            Reg::Known(i) => REGS[usize::from(i) % REGS.len()],
            Reg::Raw(at) => u64::from(at) % 0x100,
        }
    }
}

/// A page frame number: one of guest RAM's, one of its span (the hole
/// included), or anything.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Pfn {
    Ram(u16),
    Span(u16),
    Raw(u32),
}

impl Pfn {
    pub fn value(self) -> u32 {
        match self {
            Pfn::Ram(n) => ram_page(n),
            Pfn::Span(n) => u32::from(n) % SPAN_PAGES,
            Pfn::Raw(n) => n,
        }
    }
}

/// The `n`th page of guest RAM (modulo its size).
pub fn ram_page(n: u16) -> u32 {
    let n = u32::from(n) % RAM_PAGES;
    if n < 0x200 {
        n
    } else {
        0x300 + (n - 0x200)
    }
}

/// One descriptor of a chain the driver makes up.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct RawChainDesc {
    pub addr: Pfn,
    pub offset: u16,
    pub len: u16,
    pub write: bool,
}

#[derive(Debug, Clone, Arbitrary)]
pub enum Op {
    /// Sets the device up as a driver should: `features` (bits 1, 2 and 5
    /// of the balloon's), `queues % 5` queues, then DRIVER_OK.
    Init {
        features: u8,
        queues: u8,
    },
    Write {
        reg: Reg,
        value: u32,
    },
    Read {
        reg: Reg,
    },
    /// A configuration-space access of `len % 5` bytes at `offset % 24`.
    Config {
        offset: u8,
        value: u32,
        len: u8,
        write: bool,
    },
    /// One chain on `queue % 4`: pages of guest RAM, one of them replaced
    /// by `odd` if given, split into `parts % 4 + 1` buffers (which are
    /// device-writable when `flags & 7 == 7`).
    Pfns {
        queue: u8,
        pages: List<u16, 300>,
        odd: Option<(u16, Pfn)>,
        parts: u8,
        flags: u8,
    },
    /// A statistics buffer: (tag, value) entries, `trim % 11` bytes cut.
    Stats {
        queue: u8,
        entries: List<(u16, u64), 12>,
        trim: u8,
    },
    /// A free-page report: device-writable runs of `pages % 16 + 1` pages,
    /// misaligned when `skew` is 0xff.
    Report {
        queue: u8,
        runs: List<(Pfn, u8, u8), 6>,
    },
    /// A chain of made-up descriptors (posted, not notified: the ops
    /// above notify their queue after posting, as a driver does).
    Chain {
        queue: u8,
        descs: List<RawChainDesc, 6>,
    },
    Notify(u8),
    /// The monitor asks for a balloon of this many pages.
    Target(u32),
    /// The monitor asks for fresh statistics.
    RequestStats,
    Reset,
}

pub fn r32(dev: &mut MmioTransport<Balloon>, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.read(offset, &mut b);
    u32::from_le_bytes(b)
}

pub fn w32(dev: &mut MmioTransport<Balloon>, offset: u64, value: u32) {
    dev.write(offset, &value.to_le_bytes());
}

/// The driver's side: rings and where its next buffer goes.
pub struct Guest {
    pub mem: GuestMemoryMmap,
    pub rings: Vec<Ring>,
    next_buffer: u64,
}

impl Guest {
    pub fn new(mem: GuestMemoryMmap) -> Self {
        Guest {
            mem,
            rings: (0..4)
                .map(|i| Ring::new(RINGS + i * 0x4000, RING_SIZE))
                .collect(),
            next_buffer: 0,
        }
    }

    /// The set-up sequence of virtio 1.x, 3.1.1, with `features`.
    pub fn init(&mut self, dev: &mut MmioTransport<Balloon>, features: u8, queues: u8) {
        let acked = u32::from(features)
            & ((1 << F_STATS_VQ) | (1 << F_DEFLATE_ON_OOM) | (1 << F_REPORTING));
        w32(dev, REG_STATUS, 0);
        w32(dev, REG_STATUS, STATUS_ACKNOWLEDGE);
        w32(dev, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        for (sel, value) in [(0, acked), (1, 1)] {
            w32(dev, 0x24, sel);
            w32(dev, 0x20, value);
        }
        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        w32(dev, REG_STATUS, s);
        for (i, ring) in self
            .rings
            .iter_mut()
            .enumerate()
            .take(usize::from(queues % 5))
        {
            ring.avail_idx = 0;
            for at in [ring.avail(), ring.used()] {
                self.mem
                    .write_slice(&[0u8; 4], GuestAddress(at))
                    .expect("the rings are in guest RAM");
            }
            w32(dev, 0x30, i as u32);
            w32(dev, 0x38, u32::from(RING_SIZE));
            w32(dev, 0x80, ring.desc() as u32);
            w32(dev, 0x90, ring.avail() as u32);
            w32(dev, 0xa0, ring.used() as u32);
            w32(dev, 0x44, 1);
        }
        w32(dev, REG_STATUS, s | STATUS_DRIVER_OK);
    }

    /// Room for `len` bytes among the driver's buffers.
    fn buffer(&mut self, len: u64) -> u64 {
        if self.next_buffer + len > BUFFERS_LEN {
            self.next_buffer = 0;
        }
        let at = BUFFERS + self.next_buffer;
        self.next_buffer += (len + 15) & !15;
        at
    }

    /// Writes `bytes` into a buffer of the driver's; returns its address.
    fn put(&mut self, bytes: &[u8]) -> u64 {
        let at = self.buffer(bytes.len() as u64);
        self.mem
            .write_slice(bytes, GuestAddress(at))
            .expect("the driver's buffers are in guest RAM");
        at
    }

    /// Makes the chain of `descs` (address, length, device-writable)
    /// available on queue `q`, in the descriptors after the ring's head.
    pub fn post(&mut self, q: u8, descs: &[(u64, u32, bool)]) {
        let ring = &mut self.rings[usize::from(q % 4)];
        let head = (ring.avail_idx * 4) % ring.size;
        for (i, &(addr, len, write)) in descs.iter().enumerate() {
            let index = (head + i as u16) % ring.size;
            let last = i + 1 == descs.len();
            let flags = if write { DESC_F_WRITE } else { 0 } | if last { 0 } else { DESC_F_NEXT };
            let next = (index + 1) % ring.size;
            ring.set_desc(
                &self.mem,
                index,
                RawDesc {
                    addr,
                    len,
                    flags,
                    next,
                },
            );
        }
        if !descs.is_empty() {
            ring.publish(&self.mem, head);
        }
    }

    /// PFN buffers: the pages (one replaced by `odd`) in `parts` pieces.
    pub fn pfns(&mut self, q: u8, pages: &[u16], odd: Option<(u16, Pfn)>, parts: u8, write: bool) {
        let mut bytes = [0u8; 4 * 300];
        for (slot, &page) in bytes.chunks_exact_mut(4).zip(pages) {
            slot.copy_from_slice(&ram_page(page).to_le_bytes());
        }
        if let Some((at, pfn)) = odd.filter(|_| !pages.is_empty()) {
            let at = 4 * (usize::from(at) % pages.len());
            bytes[at..at + 4].copy_from_slice(&pfn.value().to_le_bytes());
        }
        let parts = usize::from(parts % 4 + 1);
        let per = pages.len().div_ceil(parts).max(1);
        let mut descs = [(0u64, 0u32, false); 4];
        let mut n = 0;
        for piece in bytes[..4 * pages.len()].chunks(4 * per) {
            descs[n] = (self.put(piece), piece.len() as u32, write);
            n += 1;
        }
        if pages.is_empty() {
            // An empty PFN buffer is an empty descriptor: refused.
            descs[0] = (self.buffer(4), 0, write);
            n = 1;
        }
        self.post(q, &descs[..n]);
    }

    pub fn stats(&mut self, q: u8, entries: &[(u16, u64)], trim: u8) {
        let mut bytes = [0u8; 10 * 12];
        for (slot, (tag, value)) in bytes.chunks_exact_mut(10).zip(entries) {
            slot[..2].copy_from_slice(&(tag % 12).to_le_bytes());
            slot[2..].copy_from_slice(&value.to_le_bytes());
        }
        let len = (10 * entries.len()).saturating_sub(usize::from(trim % 11));
        let at = self.put(&bytes[..len.max(1)]);
        self.post(q, &[(at, len as u32, false)]);
    }

    pub fn report(&mut self, q: u8, runs: &[(Pfn, u8, u8)]) {
        let mut descs = [(0u64, 0u32, true); 6];
        for (d, &(pfn, pages, skew)) in descs.iter_mut().zip(runs) {
            let addr = u64::from(pfn.value()) << 12;
            let len = u32::from(pages % 16 + 1) << 12;
            *d = if skew == 0xff {
                (addr + 0x800, len - 0x10, true)
            } else {
                (addr, len, true)
            };
        }
        self.post(q, &descs[..runs.len()]);
    }

    pub fn chain(&mut self, q: u8, descs: &[RawChainDesc]) {
        let mut out = [(0u64, 0u32, false); 6];
        for (o, d) in out.iter_mut().zip(descs) {
            let addr = (u64::from(d.addr.value()) << 12) + u64::from(d.offset % 0x1000);
            *o = (addr, u32::from(d.len), d.write);
        }
        self.post(q, &out[..descs.len()]);
    }
}
