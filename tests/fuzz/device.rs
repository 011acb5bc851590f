//! A virtio device on its virtio-mmio transport with a real device thread
//! (no KVM), and the guest driver that pokes it: what every device target
//! drives (the balloon today; blk, net and vsock are meant to come the
//! same way, see docs/fuzzing.md).
//!
//! The driver sets the device up properly when told to ([`Bench::init`],
//! with ring sizes and placements of its own: overlapping, straddling two
//! regions, outside RAM), and otherwise writes any register, posts chains
//! of made-up descriptors and notifies queues ([`TransportOp`]). The
//! transport-level properties are checked here, for every device: the
//! registers read what the transport promises, and a notification to an
//! active, healthy device is served within seconds (its thread lives).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use hearth::bus::BusDevice;
use hearth::virtio::mmio::MmioTransport;
use hearth::virtio::thread::DeviceThread;
use hearth::virtio::{
    Chain, DeviceState, InterruptLine, QueueError, Queues, VirtioDevice, STATUS_ACKNOWLEDGE,
    STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::support::{self, CountingIrq, RawDesc, Ring, DESC_F_NEXT, DESC_F_WRITE};

/// Guest RAM of a device bench: two regions that touch, a hole, and a
/// small third one.
pub const REGIONS: [(u64, u64); 3] = [
    (0, 0x10_0000),
    (0x10_0000, 0x10_0000),
    (0x30_0000, 0x1_0000),
];
/// Guest RAM pages.
pub const RAM_PAGES: u32 = 0x210;
/// Guest pages counting the hole (what a page number is picked from).
const SPAN_PAGES: u32 = 0x310;
/// Queue `i`'s rings are at `RINGS + i * 0x4000` (unless placed otherwise).
const RINGS: u64 = 0x1_0000;
/// Where the driver puts its buffers (reused round-robin).
const BUFFERS: u64 = 0x4_0000;
const BUFFERS_LEN: u64 = 0x4_0000;
/// Queues a bench drives at most.
pub const MAX_QUEUES: usize = 4;
/// How long a healthy device may take to serve a notification.
const SERVE_DEADLINE: Duration = Duration::from_secs(10);

/// Register offsets (virtio-mmio version 2).
pub const REG_STATUS: u64 = 0x70;
pub const REG_NOTIFY: u64 = 0x50;
const REGS: [u64; 22] = [
    0x00, 0x04, 0x08, 0x0c, 0x10, 0x14, 0x20, 0x24, 0x30, 0x34, 0x38, 0x44, 0x50, 0x60, 0x64, 0x70,
    0x80, 0x84, 0x90, 0x94, 0xa0, 0xa4,
];

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Reg {
    Known(u8),
    /// Any offset of the register window (aligned or not).
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
    pub page: Pfn,
    pub offset: u16,
    pub len: u16,
    pub write: bool,
}

/// How the driver sets the device up.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct Layout {
    /// The low word of the features it acks (the device's mask applied
    /// unless `wild_features`), VERSION_1 always.
    pub features: u32,
    pub wild_features: bool,
    /// `queues % (MAX_QUEUES + 1)` queues set up.
    pub queues: u8,
    /// Each ring of `1 << (size_log2 % 9)` entries.
    pub size_log2: u8,
    /// 0-251: apart; 252: all queues on the same rings; 253: straddling
    /// the two regions that touch; 254: ending past RAM; 255: in the hole.
    pub placement: u8,
}

/// A set-up done properly (features the device offers, every queue, the
/// rings apart in RAM): where the device targets' cases start, so that
/// most of a case reaches a working device.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct Proper {
    pub features: u32,
    pub size_log2: u8,
}

impl Proper {
    pub fn layout(self) -> Layout {
        Layout {
            features: self.features,
            wild_features: false,
            queues: MAX_QUEUES as u8,
            size_log2: self.size_log2,
            placement: 0,
        }
    }
}

/// What a calm driver does instead of `op`, if anything: it sets the
/// device up properly (with the features and ring sizes `op` asks for),
/// reads registers and notifies queues, and never writes other registers
/// or makes up chains. (A device target's cases are calm or not: the
/// calm ones go deep into a working device, the others do anything.)
pub fn calm(op: &TransportOp) -> Option<TransportOp> {
    match op {
        TransportOp::Init(l) => Some(TransportOp::Init(
            Proper {
                features: l.features,
                size_log2: l.size_log2,
            }
            .layout(),
        )),
        TransportOp::Read { .. } | TransportOp::Notify(_) => Some(op.clone()),
        _ => None,
    }
}

/// What the transport is asked, whatever the device.
#[derive(Debug, Clone, Arbitrary)]
pub enum TransportOp {
    Init(Layout),
    Write {
        reg: Reg,
        value: u32,
    },
    Read {
        reg: Reg,
    },
    /// A configuration-space access of `len % 9` bytes at `offset`.
    Config {
        offset: u8,
        value: u64,
        len: u8,
        write: bool,
    },
    /// A chain of made-up descriptors, posted, then (if `notify`) notified.
    Chain {
        queue: u8,
        descs: support::List<RawChainDesc, 6>,
        notify: bool,
    },
    Notify(u8),
    Reset,
}

/// A device on its transport, its thread, and the guest's side.
pub struct Bench<D: VirtioDevice> {
    pub dev: MmioTransport<D>,
    pub mem: GuestMemoryMmap,
    pub rings: Vec<Ring>,
    next_buffer: u64,
    /// Every status bit written since the last reset.
    status_written: u32,
    /// Called right after every reset: a target notes there what it
    /// measures from a reset on (in `marks`).
    pub on_reset: fn(&D, &mut [u64; 4]),
    pub marks: [u64; 4],
    // Dropped after `dev`.
    _thread: DeviceThread,
}

impl<D: VirtioDevice> Bench<D> {
    pub fn new(device: D, name: &str) -> Self {
        Self::build(name, |_| device)
    }

    /// A bench for the device `make` builds in the bench's guest memory
    /// (a device that keeps it, as virtio-blk's io_uring engine does).
    pub fn build(name: &str, make: impl FnOnce(&GuestMemoryMmap) -> D) -> Self {
        let mem = support::memory(&REGIONS);
        let device = make(&mem);
        let thread = DeviceThread::spawn(format!("fuzz-{name}"), None).expect("a device thread");
        let irq = InterruptLine::new(Box::new(CountingIrq::default()));
        let state = Arc::new(DeviceState::new(name, irq));
        let dev =
            MmioTransport::new(device, mem.clone(), state, thread.handle()).expect("a transport");
        Bench {
            dev,
            rings: (0..MAX_QUEUES as u64)
                .map(|i| Ring::new(RINGS + i * 0x4000, 16))
                .collect(),
            mem,
            next_buffer: 0,
            status_written: 0,
            on_reset: |_, _| {},
            marks: [0; 4],
            _thread: thread,
        }
    }

    pub fn r32(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn w32(&mut self, offset: u64, value: u32) {
        self.dev.write(offset, &value.to_le_bytes());
    }

    pub fn needs_reset(&self) -> bool {
        self.dev.state().needs_reset()
    }

    /// Waits until `done` holds; a device that stops serving fails the case.
    pub fn wait(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + SERVE_DEADLINE;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "the device thread stopped serving ({what})"
            );
            std::thread::yield_now();
        }
    }

    /// Writes the status register; `true` when it was a reset.
    pub fn write_status(&mut self, value: u32) -> bool {
        self.w32(REG_STATUS, value);
        if value == 0 {
            self.status_written = 0;
            (self.on_reset)(self.dev.device(), &mut self.marks);
        } else {
            self.status_written |= value;
        }
        value == 0
    }

    /// Notifies `queue`; waits until an active, healthy device served it.
    pub fn notify(&mut self, queue: u32) -> bool {
        let healthy = self.dev.is_active() && (queue as usize) < self.dev.notify_evts().len();
        let before = self.dev.state().notifications();
        self.w32(REG_NOTIFY, queue);
        if healthy {
            self.wait("a queue notification", |b| {
                b.dev.state().notifications() > before || b.needs_reset()
            });
        }
        healthy
    }

    /// The set-up sequence of virtio 1.x, 3.1.1.
    pub fn init(&mut self, layout: &Layout) {
        let offered = self.dev.device().features() as u32;
        let acked = if layout.wild_features {
            layout.features
        } else {
            layout.features & offered
        };
        self.write_status(0);
        self.write_status(STATUS_ACKNOWLEDGE);
        self.write_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        for (sel, value) in [(0, acked), (1, 1)] {
            self.w32(0x24, sel);
            self.w32(0x20, value);
        }
        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.write_status(s);
        let size = 1u16 << (layout.size_log2 % 9);
        let queues = usize::from(layout.queues) % (MAX_QUEUES + 1);
        for i in 0..queues {
            let base = match layout.placement {
                0..252 => RINGS + i as u64 * 0x4000,
                252 => RINGS,
                253 => 0x10_0000 - 0x800,
                254 => 0x31_0000 - 0x800,
                255 => 0x20_0000,
            };
            self.rings[i] = Ring::new(base, size);
            let ring = &self.rings[i];
            let (desc, avail, used) = (ring.desc(), ring.avail(), ring.used());
            for at in [avail, used] {
                let _ = self.mem.write_slice(&[0u8; 4], GuestAddress(at));
            }
            self.w32(0x30, i as u32);
            self.w32(0x38, u32::from(size));
            for (reg, addr) in [(0x80, desc), (0x90, avail), (0xa0, used)] {
                self.w32(reg, addr as u32);
                self.w32(reg + 4, (addr >> 32) as u32);
            }
            self.w32(0x44, 1);
        }
        self.write_status(s | STATUS_DRIVER_OK);
    }

    /// Reads a register and checks what the transport promises of it.
    pub fn read(&mut self, offset: u64) {
        let v = self.r32(offset);
        match offset {
            0x00 => assert_eq!(v, 0x7472_6976, "magic"),
            0x04 => assert_eq!(v, 2, "version"),
            0x08 => assert_eq!(v, self.dev.device().device_type(), "device id"),
            0x34 => {
                let sizes = self.dev.device().queue_max_sizes();
                assert!(v == 0 || sizes.contains(&(v as u16)), "queue size max {v}");
            }
            REG_STATUS => assert_eq!(
                v & !(self.status_written | STATUS_NEEDS_RESET),
                0,
                "status {v:#x} has bits the driver never set ({:#x})",
                self.status_written
            ),
            _ => {}
        }
    }

    /// Room for `len` bytes among the driver's buffers.
    pub fn buffer(&mut self, len: u64) -> u64 {
        if self.next_buffer + len > BUFFERS_LEN {
            self.next_buffer = 0;
        }
        let at = BUFFERS + self.next_buffer;
        self.next_buffer += (len + 15) & !15;
        at
    }

    /// Writes `bytes` into a buffer of the driver's; returns its address.
    pub fn put(&mut self, bytes: &[u8]) -> u64 {
        let at = self.buffer(bytes.len() as u64);
        self.mem
            .write_slice(bytes, GuestAddress(at))
            .expect("the driver's buffers are in guest RAM");
        at
    }

    /// Makes the chain of `descs` (address, length, device-writable)
    /// available on queue `q % MAX_QUEUES`.
    pub fn post(&mut self, q: u8, descs: &[(u64, u32, bool)]) {
        let ring = &mut self.rings[usize::from(q) % MAX_QUEUES];
        let end = ring.used() + 6 + 8 * u64::from(ring.size);
        if descs.is_empty() || !support::in_ram(&REGIONS, ring.base, end - ring.base) {
            return;
        }
        let head = (ring.avail_idx.wrapping_mul(4)) % ring.size;
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
        ring.publish(&self.mem, head);
    }

    /// Carries out a transport-level operation.
    pub fn transport(&mut self, op: &TransportOp) {
        match op {
            TransportOp::Init(layout) => self.init(layout),
            TransportOp::Write { reg, value } => match reg.offset() {
                REG_STATUS => {
                    self.write_status(*value);
                }
                REG_NOTIFY => {
                    self.notify(*value);
                }
                offset => self.w32(offset, *value),
            },
            TransportOp::Read { reg } => self.read(reg.offset()),
            TransportOp::Config {
                offset,
                value,
                len,
                write,
            } => {
                let (offset, len) = (0x100 + u64::from(*offset), usize::from(len % 9));
                let bytes = value.to_le_bytes();
                if *write {
                    self.dev.write(offset, &bytes[..len]);
                } else {
                    let mut out = [0u8; 8];
                    self.dev.read(offset, &mut out[..len]);
                }
            }
            TransportOp::Chain {
                queue,
                descs,
                notify,
            } => {
                let mut out = [(0u64, 0u32, false); 6];
                for (o, d) in out.iter_mut().zip(descs.iter()) {
                    let addr = (u64::from(d.page.value()) << 12) + u64::from(d.offset % 0x1000);
                    *o = (addr, u32::from(d.len), d.write);
                }
                self.post(*queue, &out[..descs.len()]);
                if *notify {
                    self.notify(u32::from(*queue) % MAX_QUEUES as u32);
                }
            }
            TransportOp::Notify(queue) => {
                self.notify(u32::from(*queue % 5));
            }
            TransportOp::Reset => {
                self.write_status(0);
            }
        }
    }
}

/// Where the rings of [`Bench::init`] lie: apart or all on one ring, and
/// across the two regions that touch.
const RING_AREAS: [(u64, u64); 2] = [(RINGS, RINGS + 0x1_0000), (0xf_f000, 0x10_3000)];

/// The buffers of a made-up chain (`TransportOp::Chain`: address, length,
/// device-writable), moved out of the rings: a device may write into
/// what a chain lends it, and a target that checks the rings keeps them
/// as the driver wrote them (the balloon target lets them land anywhere).
pub fn made_up(descs: &[RawChainDesc]) -> [(u64, u32, bool); 6] {
    let mut out = [(0u64, 0u32, false); 6];
    for (o, d) in out.iter_mut().zip(descs) {
        let addr = (u64::from(d.page.value()) << 12) + u64::from(d.offset % 0x1000);
        let end = addr + u64::from(d.len);
        let hits = RING_AREAS.iter().any(|&(s, e)| addr < e && end > s);
        let addr = if hits {
            BUFFERS + addr % 0x3_0000
        } else {
            addr
        };
        *o = (addr, u32::from(d.len), d.write);
    }
    out
}

/// The chain a driver makes of `descs` (address, length, device-writable),
/// taken through [`Queues::pop`] as a device would take it: what a request
/// parser target (virtio-blk's `Request::parse`, net's and vsock's headers)
/// feeds its parser. `max_bytes` is the device's bound on one chain.
pub fn pop_chain(
    mem: &GuestMemoryMmap,
    descs: &[(u64, u32, bool)],
    max_bytes: u64,
) -> Result<Option<Chain>, QueueError> {
    let mut ring = Ring::new(RINGS, 16);
    for (i, &(addr, len, write)) in descs.iter().take(16).enumerate() {
        let last = i + 1 == descs.len().min(16);
        let flags = if write { DESC_F_WRITE } else { 0 } | if last { 0 } else { DESC_F_NEXT };
        ring.set_desc(
            mem,
            i as u16,
            RawDesc {
                addr,
                len,
                flags,
                next: i as u16 + 1,
            },
        );
    }
    ring.publish(mem, 0);
    let irq = InterruptLine::new(Box::new(CountingIrq::default()));
    let state = Arc::new(DeviceState::new("parser", irq));
    let mut q = Queues::new(vec![ring.queue(256)], mem.clone(), state, 0, max_bytes);
    q.pop(0)
}

/// The hook works: a request's chain (a 16-byte header, data, a status
/// byte) comes out as a device sees it, and a bad one is refused.
#[test]
fn pop_chain_gives_a_parser_its_chain() {
    let _heap = support::shared();
    let mem = support::memory(&REGIONS);
    let descs = [
        (0x4_0000, 16, false),
        (0x5_0000, 512, true),
        (0x6_0000, 1, true),
    ];
    let chain = pop_chain(&mem, &descs, 1 << 20)
        .expect("a good chain")
        .expect("a chain");
    assert_eq!((chain.readable_len(), chain.writable_len()), (16, 513));
    let outside = [(0x20_0000, 16, false)];
    assert!(matches!(
        pop_chain(&mem, &outside, 1 << 20),
        Err(QueueError::Chain { .. })
    ));
}
