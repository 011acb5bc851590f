//! The virtio-net target's rig ([`crate::net`]): the device on its bench,
//! its tap a datagram socket pair, the driver's view of both queues, and
//! a model of what must come out of them (docs/network.md).

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use hearth::config::RateLimiterSpec;
use hearth::virtio::net::stats::NetCounts;
use hearth::virtio::net::{Net, NetBackend, NetConfig, NetShared};
use vm_memory::{Bytes, GuestAddress};

use crate::device::{made_up, Bench, Layout, RawChainDesc, REGIONS};
use crate::net::TALLY;
use crate::net_model::*;
use crate::support::{Fifo, Writable};

pub const RX: usize = 0;
pub const TX: usize = 1;
/// Where receive buffers go (the driver's other buffers are below 1 MiB).
const RX_AREA: (u64, u64) = (0x10_4000, 0x20_0000);
/// Frames the host sent that the model follows at most.
const MAX_FRAMES: usize = 128;
/// Receive buffers the model follows at most.
const MAX_BUFS: usize = 256;

/// The tap: one end of a datagram socket pair (one datagram, one frame).
pub struct FakeTap {
    sock: UnixDatagram,
    pub offload: AtomicU32,
}

impl AsRawFd for FakeTap {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl NetBackend for FakeTap {
    fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.sock.recv(buf)
    }
    fn send(&self, buf: &[u8]) -> std::io::Result<usize> {
        self.sock.send(buf)
    }
    fn set_offload(&self, flags: u32) -> std::io::Result<()> {
        self.offload.store(flags, Ordering::SeqCst);
        Ok(())
    }
}

/// A receive buffer posted and not yet used.
#[derive(Debug, Clone, Copy, Default)]
struct Pending {
    head: u16,
    descs: u16,
    addr: u64,
    len: u32,
    /// The device must need a reset when it takes it.
    bad: bool,
}

impl Default for HostFrame {
    fn default() -> Self {
        HostFrame {
            hdr: [0; HDR],
            len: FrameLen::Short(0),
            fill: 0,
        }
    }
}

pub struct Rig {
    pub b: Bench<Net>,
    host: UnixDatagram,
    tap: Arc<FakeTap>,
    shared: Arc<NetShared>,
    /// Set up with two rings of their own, in RAM, no register written
    /// since and no made-up chain: the model holds.
    pub sane: bool,
    /// The queues' rings are apart (placements below 252).
    apart: bool,
    /// Frames the host sent not yet delivered or dropped, in order.
    frames: Fifo<HostFrame, MAX_FRAMES>,
    bufs: Fifo<Pending, MAX_BUFS>,
    rx_descs: u16,
    rx_next: u16,
    rx_mem: u64,
    /// The counters the model expects (from the last set-up on).
    want: NetCounts,
    /// Used elements looked at, per queue.
    seen: [u16; 2],
    /// What the driver wrote into the receive descriptor table.
    writable: Writable,
    scratch: Vec<u8>,
}

impl Rig {
    pub fn new(mtu: Option<u16>) -> Rig {
        let (a, host) = UnixDatagram::pair().expect("a socket pair");
        a.set_nonblocking(true).expect("non-blocking");
        host.set_nonblocking(true).expect("non-blocking");
        let tap = Arc::new(FakeTap {
            sock: a,
            offload: AtomicU32::new(u32::MAX),
        });
        let config = NetConfig {
            mac: [6, 0, 0xac, 0x10, 0, 2],
            mtu,
        };
        let limits = RateLimiterSpec::default();
        let net = Net::new(config, tap.clone(), &limits, &limits).expect("a net device");
        let shared = net.shared().clone();
        Rig {
            b: Bench::new(net, "net0"),
            host,
            tap,
            shared,
            sane: false,
            apart: false,
            frames: Fifo::new(),
            bufs: Fifo::new(),
            rx_descs: 0,
            rx_next: 0,
            rx_mem: RX_AREA.0,
            want: NetCounts::default(),
            seen: [0; 2],
            writable: Writable::new(),
            scratch: vec![0; 2 * (HDR + MAX_FRAME)],
        }
    }

    fn counts(&self) -> NetCounts {
        NetCounts::read(&self.shared.counters)
    }

    fn used_idx(&self, q: usize) -> u16 {
        let ring = &self.b.rings[q];
        if self.apart && ring.in_ram(&REGIONS) {
            ring.used_idx(&self.b.mem)
        } else {
            self.seen[q]
        }
    }

    /// Makes `descs` available at `head` of queue `q`.
    fn post_at(&mut self, q: usize, head: u16, descs: &[(u64, u32, bool)]) {
        let ring = &mut self.b.rings[q];
        if descs.is_empty() || !ring.in_ram(&REGIONS) {
            return;
        }
        let writable = (q == RX).then_some(&mut self.writable);
        ring.post(&self.b.mem, head, descs, writable);
    }

    /// The driver sets the device up; frames the host sent before are
    /// taken off the tap first, and the model starts again.
    pub fn init(&mut self, layout: &Layout) {
        self.b.write_status(0);
        self.drain_tap();
        self.b.init(layout);
        let queues = layout.queues % 5;
        // The rings of queues not set up stay where they were.
        self.apart = match queues {
            0 => self.apart,
            1 => self.apart && layout.placement < 252,
            _ => layout.placement < 252,
        };
        self.sane = self.apart && queues >= 2;
        if queues > 0 {
            self.writable = Writable::new();
        }
        self.seen = [self.used_idx(RX), self.used_idx(TX)];
        (self.rx_descs, self.rx_next) = (0, 0);
        self.bufs.clear();
        self.want = self.counts();
        let acked = self.b.dev.acked_features();
        if acked & (1 << F_MRG_RXBUF) != 0 {
            assert!(
                !self.b.dev.is_active(),
                "mergeable buffers, never offered, were taken"
            );
        }
        if self.b.dev.is_active() {
            let has = |bit: u32| acked & (1 << bit) != 0;
            let mut offload = 0;
            if has(F_GUEST_CSUM) {
                offload |= libc::TUN_F_CSUM;
                if has(F_GUEST_TSO4) {
                    offload |= libc::TUN_F_TSO4;
                }
                if has(F_GUEST_TSO6) {
                    offload |= libc::TUN_F_TSO6;
                }
            }
            assert_eq!(
                self.tap.offload.load(Ordering::SeqCst),
                offload,
                "the tap's offloads"
            );
        }
    }

    /// Takes every frame off the device's end of the tap (no handler
    /// reads it: the device is reset).
    pub fn drain_tap(&mut self) {
        while self.tap.sock.recv(&mut self.scratch).is_ok() {}
        self.frames.clear();
    }

    /// The guest sends a frame.
    pub fn send(&mut self, f: &TxFrame) {
        let len = f.len.value();
        let hdr = f.hdr.bytes();
        let total = HDR + len;
        let size = self.b.rings[TX].size;
        let head = self.b.rings[TX].avail_idx.wrapping_mul(8) % size;
        let mut descs = [(0u64, 0u32, false); 6];
        let mut n = 0;
        let mut pieces = [(0usize, 0usize); 5];
        if f.hdr_alone {
            pieces[0] = (0, HDR);
            n = 1;
        }
        let body = if f.hdr_alone { HDR } else { 0 };
        for (from, size) in split(total - body, f.pieces) {
            pieces[n] = (body + from, size);
            n += 1;
        }
        for (d, &(from, size)) in descs.iter_mut().zip(&pieces[..n]) {
            for (i, b) in self.scratch[..size].iter_mut().enumerate() {
                let at = from + i;
                *b = if at < HDR {
                    hdr[at]
                } else {
                    frame_byte(f.fill, at - HDR)
                };
            }
            let addr = self.b.put(&self.scratch[..size]);
            *d = (addr, size as u32, false);
        }
        if f.writable >= 240 {
            descs[n] = (self.b.buffer(64), 64, true);
            n += 1;
        }
        let fits = n <= usize::from(size);
        let clean = self.sane && self.b.dev.is_active() && fits;
        let before = self.used_idx(TX);
        let pending = before != self.b.rings[TX].avail_idx;
        self.post_at(TX, head, &descs[..n]);
        self.b.notify(TX as u32);
        if !clean || pending {
            self.sane = false;
            return;
        }
        let writable = if f.writable >= 240 { 64 } else { 0 };
        let fate = tx_fate(&hdr, total, writable, self.b.dev.acked_features());
        self.b
            .wait("the frame sent", |b| b.rings[TX].used_idx(&b.mem) != before);
        let (id, used_len) = self.b.rings[TX].used_elem(&self.b.mem, before);
        assert_eq!(
            (id, used_len),
            (u32::from(head), 0),
            "the used element of a frame"
        );
        self.check_sent(fate, &hdr, f, len);
    }

    /// What reached the tap: the frame, its header with `num_buffers` 0.
    fn check_sent(&mut self, fate: TxFate, hdr: &[u8; HDR], f: &TxFrame, len: usize) {
        let got = self.host.recv(&mut self.scratch);
        match fate {
            TxFate::Sent => {
                let n = got.expect("the frame on the tap");
                assert_eq!(n, HDR + len, "the length of the frame on the tap");
                assert_eq!(self.scratch[..10], hdr[..10], "the header on the tap");
                assert_eq!(self.scratch[10..12], [0, 0], "num_buffers on the tap");
                let frame = (0..len).map(|i| frame_byte(f.fill, i));
                assert!(
                    self.scratch[HDR..n].iter().copied().eq(frame),
                    "the frame's bytes"
                );
                self.want.tx_frames += 1;
                self.want.tx_bytes += len as u64;
                TALLY.add("frames sent");
            }
            other => {
                assert!(got.is_err(), "a frame to drop ({other:?}) reached the tap");
                match other {
                    TxFate::Malformed => self.want.tx_dropped_malformed += 1,
                    TxFate::Oversized => self.want.tx_dropped_oversized += 1,
                    _ => self.want.tx_dropped_bad_header += 1,
                }
                TALLY.add("frames dropped");
            }
        }
    }

    /// Room for `len` bytes of receive buffer, clear of every pending one.
    fn rx_room(&mut self, len: u64) -> Option<u64> {
        if self.rx_mem + len > RX_AREA.1 {
            self.rx_mem = RX_AREA.0;
        }
        let at = self.rx_mem;
        let clear = self
            .bufs
            .iter()
            .all(|p| at + len <= p.addr || p.addr + u64::from(p.len.max(1)) <= at);
        if !clear || len > RX_AREA.1 - RX_AREA.0 {
            return None;
        }
        self.rx_mem += (len + 15) & !15;
        Some(at)
    }

    /// The guest posts receive buffers.
    pub fn post(&mut self, bufs: &[RxBuf]) {
        for buf in bufs {
            let len = buf.len.value();
            let Some(addr) = self.rx_room(u64::from(len.max(1))) else {
                continue;
            };
            let mut descs = [(0u64, 0u32, true); 5];
            let mut n = 0;
            if buf.readable >= 240 {
                descs[0] = (addr, 1, false);
                n = 1;
            }
            for (from, size) in split(len as usize, buf.pieces) {
                descs[n] = (addr + from as u64, size as u32, true);
                n += 1;
            }
            if len == 0 {
                descs[n] = (addr, 0, true);
                n += 1;
            }
            let size = self.b.rings[RX].size;
            if self.rx_descs + n as u16 > size || self.bufs.len == MAX_BUFS {
                continue;
            }
            let head = self.rx_next % size;
            self.rx_next = (self.rx_next + n as u16) % size;
            self.rx_descs += n as u16;
            self.post_at(RX, head, &descs[..n]);
            let bad = buf.readable >= 240 || len == 0;
            self.bufs.push(Pending {
                head,
                descs: n as u16,
                addr,
                len,
                bad,
            });
        }
        self.b.notify(RX as u32);
    }

    /// A chain of made-up descriptors on queue `q` (the model stops).
    pub fn made_up(&mut self, q: usize, descs: &[RawChainDesc], notify: bool) {
        let out = made_up(descs);
        let size = self.b.rings[q].size;
        let head = self.b.rings[q].avail_idx.wrapping_mul(8) % size;
        self.post_at(q, head, &out[..descs.len()]);
        self.sane = false;
        if notify {
            self.b.notify(q as u32);
        }
    }

    /// The host sends frames.
    pub fn arrive(&mut self, frames: &[HostFrame]) {
        for f in frames {
            let n = f.total();
            for (i, b) in self.scratch[..n].iter_mut().enumerate() {
                *b = f.byte(i);
            }
            if self.frames.len < MAX_FRAMES && self.host.send(&self.scratch[..n]).is_ok() {
                self.frames.push(*f);
            }
        }
    }
}

/// A frame the model expects in a receive buffer.
#[derive(Clone, Copy, Default)]
struct Delivery {
    buf: Pending,
    frame: HostFrame,
}

impl Rig {
    /// After every operation: on a device the model follows, frames go in
    /// order into buffers in order (docs/network.md, "Receive"); waits
    /// until the device got as far as the model, then checks every
    /// counter, used element and byte. Otherwise only what holds whatever
    /// the driver did.
    pub fn converge(&mut self) {
        if !self.sane || !self.b.dev.is_active() {
            self.sane = false;
            return self.general();
        }
        let mut want = self.want;
        let mut got = [Delivery::default(); MAX_FRAMES];
        let mut k = 0;
        let mut reset = false;
        while let Some(frame) = self.frames.front() {
            let n = frame.total();
            if n < HDR + ETH {
                want.rx_dropped_short += 1;
                self.frames.pop();
                continue;
            }
            let Some(buf) = self.bufs.front() else {
                break;
            };
            if buf.bad {
                reset = true;
                break;
            }
            if (buf.len as usize) < n {
                want.rx_dropped_too_big += 1;
                self.frames.pop();
                continue;
            }
            got[k] = Delivery { buf, frame };
            k += 1;
            want.rx_frames += 1;
            want.rx_bytes += (n - HDR) as u64;
            self.frames.pop();
            self.bufs.pop();
            self.rx_descs -= buf.descs;
        }
        let rx = |c: &NetCounts| (c.rx_frames, c.rx_dropped_short, c.rx_dropped_too_big);
        let target = rx(&want);
        let shared = self.shared.clone();
        // The counters move before the used ring: both are waited for.
        let used = self.seen[RX].wrapping_add(k as u16);
        self.b.wait("the frames received", |b| {
            let counted = rx(&NetCounts::read(&shared.counters)) == target;
            b.needs_reset() || (!reset && counted && b.rings[RX].used_idx(&b.mem) == used)
        });
        assert_eq!(self.b.needs_reset(), reset, "a reset, by the model");
        let mut now = self.counts();
        now.rx_no_buffer = want.rx_no_buffer;
        if !reset {
            assert_eq!(now, want, "the counters");
        }
        self.check_received(&got[..k]);
        self.want = want;
        if reset {
            TALLY.add("needs reset");
            self.sane = false;
        }
    }

    /// The used elements of the receive queue: each frame where the model
    /// put it, header first with `num_buffers` 1.
    fn check_received(&mut self, got: &[Delivery]) {
        let idx = self.used_idx(RX);
        assert_eq!(
            usize::from(idx.wrapping_sub(self.seen[RX])),
            got.len(),
            "frames received"
        );
        for (k, d) in got.iter().enumerate() {
            let at = self.seen[RX].wrapping_add(k as u16);
            let (id, len) = self.b.rings[RX].used_elem(&self.b.mem, at);
            let n = d.frame.total();
            assert_eq!(
                (id, len as usize),
                (u32::from(d.buf.head), n),
                "a used receive buffer"
            );
            // A good buffer's pieces are one after the other from its start.
            let bytes = &mut self.scratch[..n];
            let at = GuestAddress(d.buf.addr);
            self.b.mem.read_slice(bytes, at).expect("in RAM");
            let want = (0..n).map(|i| match i {
                10 => 1,
                11 => 0,
                _ => d.frame.byte(i),
            });
            assert!(bytes.iter().copied().eq(want), "a received frame's bytes");
            TALLY.add("frames received");
        }
        self.seen[RX] = idx;
    }

    /// What holds whatever the driver did: every frame on the tap between
    /// an Ethernet header's and the longest frame's length; used lengths
    /// within their chains.
    fn general(&mut self) {
        while let Ok(n) = self.host.recv(&mut self.scratch) {
            assert!(
                (HDR + ETH..=HDR + MAX_FRAME).contains(&n),
                "a frame of {n} bytes (header included) on the tap"
            );
        }
        if !self.apart {
            return;
        }
        for q in [RX, TX] {
            let idx = self.used_idx(q);
            let size = self.b.rings[q].size;
            for k in 0..idx.wrapping_sub(self.seen[q]).min(size) {
                let (id, len) =
                    self.b.rings[q].used_elem(&self.b.mem, self.seen[q].wrapping_add(k));
                assert!(id < u32::from(size), "a used element with id {id}");
                let room = if q == RX { self.writable.most } else { 0 };
                assert!(
                    u64::from(len) <= room,
                    "a used length of {len} on queue {q} (room {room})"
                );
            }
            self.seen[q] = idx;
        }
    }
}
