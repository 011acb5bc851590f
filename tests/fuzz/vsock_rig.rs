//! The vsock target's rig ([`crate::vsock`]): the device on its bench
//! with its listening socket in a scratch directory, two host listeners
//! (`<uds_path>_1000`, `_1001`), the host's clients and accepted
//! connections, the driver's view of the queues, and what the model
//! keeps per connection key ([`Key`]).

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

use hearth::virtio::vsock::{Vsock, VsockShared};

use crate::device::{Bench, Layout, REGIONS};
use crate::support::{Fifo, Writable};
use crate::vsock::TALLY;
use crate::vsock_model::*;

pub const RX: usize = 0;
pub const TX: usize = 1;
/// Where receive buffers go (the driver's other buffers are below 1 MiB).
const RX_AREA: (u64, u64) = (0x10_4000, 0x20_0000);
pub const MAX_KEYS: usize = 64;
pub const MAX_CLIENTS: usize = 32;
pub const MAX_ACCEPTED: usize = 16;
pub const MAX_BUFS: usize = 256;
/// Guest payloads the model keeps per key (for what a host client reads).
pub const MAX_STREAM: usize = 32;

/// What the model keeps of one connection key: (host port, guest port).
#[derive(Debug, Clone, Copy, Default)]
pub struct Key {
    pub host: u32,
    pub guest: u32,
    /// The credit figures of the guest's last well-formed packet on the
    /// key before this operation, and of those in it.
    pub before: Option<(u32, u32)>,
    pub cands: [(u32, u32); 8],
    pub ncands: usize,
    /// Payload bytes sent to the guest since the connection began, and
    /// what the guest got (its `fwd_cnt` when it consumes everything).
    pub sent: u32,
    pub received: u32,
    /// The guest answered the host's REQUEST: what it sends from then on
    /// goes to the host client ([`Client`]).
    pub responded: bool,
    pub stream: [(u8, u32); MAX_STREAM],
    pub nstream: usize,
}

/// A host process connected to the VM's socket.
pub struct Client {
    pub stream: UnixStream,
    pub guest_port: u32,
    pub seed: u8,
    /// Bytes written after the `CONNECT` line.
    pub written: u64,
    /// The host port its `OK` line named.
    pub host_port: Option<u32>,
    /// Bytes read after the `OK` line, and bytes the guest got from it.
    pub read: u64,
    pub delivered: u64,
    /// Not followed any more (the device was reset under it).
    pub dead: bool,
}

/// A receive buffer posted and not yet used.
#[derive(Debug, Clone, Copy, Default)]
pub struct Posted {
    pub head: u16,
    pub descs: u16,
    pub addr: u64,
    pub len: u32,
    pub bad: bool,
}

pub struct Rig {
    pub b: Bench<Vsock>,
    pub dir: PathBuf,
    pub uds: PathBuf,
    pub shared: Arc<VsockShared>,
    pub listeners: [UnixListener; LISTENING],
    pub clients: [Option<Client>; MAX_CLIENTS],
    pub crowd: Vec<UnixStream>,
    pub accepted: [Option<UnixStream>; MAX_ACCEPTED],
    pub keys: [Key; MAX_KEYS],
    pub nkeys: usize,
    /// Connections the guest was told of (REQUESTs from the host): host
    /// port, guest port.
    pub learned: [(u32, u32); 16],
    pub nlearned: usize,
    pub bufs: Fifo<Posted, MAX_BUFS>,
    pub rx_descs: u16,
    pub rx_next: u16,
    pub rx_mem: u64,
    pub seen: [u16; 2],
    /// What the driver wrote into the receive descriptor table.
    pub writable: Writable,
    /// Set up with rings of their own in RAM, no register written since:
    /// the receive queue is read as the device fills it.
    pub sane: bool,
    pub apart: bool,
    /// Connections tried: host clients and guest REQUESTs.
    pub attempts: u64,
    pub scratch: Vec<u8>,
}

/// A scratch directory for the sockets of this process's cases.
fn scratch_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fuzz-vsock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// A non-blocking connection to `path`, or none (the backlog is full).
fn connect(path: &std::path::Path) -> Option<UnixStream> {
    let bytes = path.as_os_str().as_encoded_bytes();
    // SAFETY: sockaddr_un is plain data; all zeros is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = s as libc::c_char;
    }
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: no memory is passed; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, flags, 0) };
    assert!(fd >= 0, "a socket");
    // SAFETY: `fd` was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), std::ptr::addr_of!(addr).cast(), len) };
    (rc == 0).then(|| UnixStream::from(fd))
}

impl Rig {
    pub fn new() -> Rig {
        let dir = scratch_dir();
        let uds = dir.join("v.sock");
        let listener = UnixListener::bind(&uds).expect("the VM's socket");
        listener.set_nonblocking(true).expect("non-blocking");
        let listen = |port: u32| {
            let l = UnixListener::bind(format!("{}_{port}", uds.display())).expect("a listener");
            l.set_nonblocking(true).expect("non-blocking");
            l
        };
        let listeners = [listen(LISTEN_PORTS[0]), listen(LISTEN_PORTS[1])];
        let dev = Vsock::new(CID, OwnedFd::from(listener), &uds).expect("a vsock device");
        let shared = dev.shared().clone();
        Rig {
            b: Bench::new(dev, "vsock0"),
            dir,
            uds,
            shared,
            listeners,
            clients: std::array::from_fn(|_| None),
            crowd: Vec::with_capacity(300),
            accepted: std::array::from_fn(|_| None),
            keys: [Key::default(); MAX_KEYS],
            nkeys: 0,
            learned: [(0, 0); 16],
            nlearned: 0,
            bufs: Fifo::new(),
            rx_descs: 0,
            rx_next: 0,
            rx_mem: RX_AREA.0,
            seen: [0; 2],
            writable: Writable::new(),
            sane: false,
            apart: false,
            attempts: 0,
            scratch: vec![0; 2 * MAX_PAYLOAD],
        }
    }

    pub fn used_idx(&self, q: usize) -> u16 {
        let ring = &self.b.rings[q];
        if self.apart && ring.in_ram(&REGIONS) {
            ring.used_idx(&self.b.mem)
        } else {
            self.seen[q]
        }
    }

    /// Makes `descs` available at `head` of queue `q`.
    pub fn post_at(&mut self, q: usize, head: u16, descs: &[(u64, u32, bool)]) {
        let ring = &mut self.b.rings[q];
        if descs.is_empty() || !ring.in_ram(&REGIONS) {
            return;
        }
        let writable = (q == RX).then_some(&mut self.writable);
        ring.post(&self.b.mem, head, descs, writable);
    }

    /// The driver sets the device up: every connection of the device
    /// before is gone, and the model starts again.
    pub fn init(&mut self, layout: &Layout) {
        self.b.write_status(0);
        let counts = hearth::virtio::vsock::stats::VsockCounts::read(&self.shared.counters);
        assert_eq!(counts.open, 0, "connections left open by a reset");
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
        self.nkeys = 0;
        self.nlearned = 0;
        for c in self.clients.iter_mut().flatten() {
            c.dead = true;
        }
    }

    /// Lets the device thread take what the host did: two notifications
    /// served one after the other, so that every event pending before the
    /// first (a connection, data, a close) was taken.
    pub fn settle(&mut self) {
        for _ in 0..2 {
            self.b.notify(RX as u32);
        }
    }

    /// The key `(host, guest)`, made if it is new (and there is room).
    pub fn key(&mut self, host: u32, guest: u32) -> Option<&mut Key> {
        let found = self.keys[..self.nkeys]
            .iter()
            .position(|k| (k.host, k.guest) == (host, guest));
        let i = match found {
            Some(i) => i,
            None if self.nkeys < MAX_KEYS => {
                self.keys[self.nkeys] = Key {
                    host,
                    guest,
                    ..Key::default()
                };
                self.nkeys += 1;
                self.nkeys - 1
            }
            None => return None,
        };
        Some(&mut self.keys[i])
    }

    /// A new operation: the credit figures so far become the ones before.
    pub fn begin_op(&mut self) {
        for k in &mut self.keys[..self.nkeys] {
            if k.ncands > 0 {
                k.before = Some(k.cands[k.ncands - 1]);
            }
            k.ncands = 0;
        }
    }

    /// The ports a packet goes between: mostly those of a connection
    /// (to a listener from the guest port paired with it, or the ports of
    /// a host's REQUEST).
    fn ports(&self, p: &Pkt) -> (u32, u32) {
        let (paired, dst) = match p.dst {
            255 => (GUEST_PORTS[0], p.raw_dst),
            64.. if self.nlearned > 0 => {
                let (host, guest) = self.learned[usize::from(p.dst) % self.nlearned];
                (guest, host)
            }
            i => {
                let i = usize::from(i) % LISTEN_PORTS.len();
                (GUEST_PORTS[i], LISTEN_PORTS[i])
            }
        };
        let src = match p.src {
            0..200 => paired,
            255 => p.raw_src,
            i => GUEST_PORTS[usize::from(i) % GUEST_PORTS.len()],
        };
        (src, dst)
    }

    /// The guest sends a packet.
    pub fn send(&mut self, p: &Pkt) {
        let (src, dst) = self.ports(p);
        let (n, len) = p.lengths();
        let received = self.key(dst, src).map_or(0, |k| k.received);
        let (buf_alloc, fwd_cnt) = p.credit(received);
        let wrong = p.cids >= 240;
        let hdr = Hdr {
            src_cid: if wrong && p.cids % 2 == 0 { 9 } else { CID },
            dst_cid: if wrong && p.cids % 2 == 1 {
                7
            } else {
                HOST_CID
            },
            src_port: src,
            dst_port: dst,
            len,
            type_: if p.type_ >= 240 {
                u16::from(p.type_)
            } else {
                TYPE_STREAM
            },
            op: p.op(),
            flags: p.flags(),
            buf_alloc,
            fwd_cnt,
        };
        let bytes = &mut self.scratch[..HDR + n];
        bytes[..HDR].copy_from_slice(&hdr.bytes());
        for (i, b) in bytes[HDR..].iter_mut().enumerate() {
            *b = payload_byte(p.fill, i);
        }
        let mut descs = [(0u64, 0u32, false); 3];
        let mut k = 0;
        if p.split >= 120 && n > 0 {
            let at = self.b.put(&self.scratch[..HDR]);
            let rest = self.b.put(&self.scratch[HDR..HDR + n]);
            descs[..2].copy_from_slice(&[(at, HDR as u32, false), (rest, n as u32, false)]);
            k = 2;
        } else {
            descs[0] = (
                self.b.put(&self.scratch[..HDR + n]),
                (HDR + n) as u32,
                false,
            );
            k += 1;
        }
        let writable = p.split >= 240;
        if writable {
            descs[k] = (self.b.buffer(16), 16, true);
            k += 1;
        }
        let size = self.b.rings[TX].size;
        let head = self.b.rings[TX].avail_idx.wrapping_mul(4) % size;
        self.post_at(TX, head, &descs[..k]);
        if k > usize::from(size) {
            // Its descriptors overwrote each other: the device reads some
            // other packet, which the model cannot follow.
            self.sane = false;
        }
        if hdr.op == OP_REQUEST {
            self.attempts += 1;
        }
        let well_formed = !wrong
            && !writable
            && hdr.type_ == TYPE_STREAM
            && len as usize <= MAX_PAYLOAD
            && len as usize <= n;
        if well_formed {
            self.note_sent(&hdr, p.fill);
        }
        self.b.notify(TX as u32);
    }

    /// The guest answers the `n`th REQUEST the host sent it (as a driver
    /// with a listener on that port does).
    pub fn respond(&mut self, n: u8) {
        if self.nlearned == 0 {
            return;
        }
        let p = Pkt {
            op: 112,
            raw_op: 0,
            src: 0,
            dst: 64 + n % 64,
            raw_src: 0,
            raw_dst: 0,
            cids: 0,
            type_: 0,
            payload: Payload::Small(0),
            lie: 0,
            flags: 0,
            credit: Credit::Generous,
            fill: 0,
            split: 0,
        };
        self.send(&p);
    }

    /// What a well-formed guest packet tells the model.
    fn note_sent(&mut self, hdr: &Hdr, fill: u8) {
        let Some(k) = self.key(hdr.dst_port, hdr.src_port) else {
            return;
        };
        if k.ncands < k.cands.len() {
            k.cands[k.ncands] = (hdr.buf_alloc, hdr.fwd_cnt);
            k.ncands += 1;
        } else {
            k.cands[k.ncands - 1] = (hdr.buf_alloc, hdr.fwd_cnt);
        }
        match hdr.op {
            OP_RESPONSE if k.host >= FIRST_HOST_PORT => k.responded = true,
            OP_RW if k.responded && k.nstream < MAX_STREAM => {
                k.stream[k.nstream] = (fill, hdr.len);
                k.nstream += 1;
            }
            _ => {}
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
        if !clear {
            return None;
        }
        self.rx_mem += (len + 15) & !15;
        Some(at)
    }

    /// The guest posts receive buffers: a header and `room` bytes each
    /// (from 250 on, less than a header; 249, a device-readable one).
    pub fn post(&mut self, rooms: &[u8]) {
        for &room in rooms {
            let len = match room {
                0..249 => HDR as u32 + u32::from(room) * 257,
                249 => HDR as u32,
                250.. => u32::from(room % 44),
            };
            let Some(addr) = self.rx_room(u64::from(len.max(1))) else {
                continue;
            };
            let bad = room == 249 || len < HDR as u32;
            let desc = (addr, len, room != 249);
            let size = self.b.rings[RX].size;
            if self.rx_descs + 1 > size || self.bufs.len == MAX_BUFS {
                continue;
            }
            let head = self.rx_next % size;
            self.rx_next = (self.rx_next + 1) % size;
            self.rx_descs += 1;
            self.post_at(RX, head, &[desc]);
            let posted = Posted {
                head,
                descs: 1,
                addr,
                len,
                bad,
            };
            self.bufs.push(posted);
        }
        self.b.notify(RX as u32);
    }

    /// A host process connects and writes a line.
    pub fn connect(&mut self, port: u8, line: u8, seed: u8) {
        let Some(stream) = connect(&self.uds) else {
            return;
        };
        self.attempts += 1;
        let guest_port = GUEST_PORTS[usize::from(port) % GUEST_PORTS.len()];
        let mut text = [0u8; 64];
        let mut w = &mut text[..];
        let _ = match line % 8 {
            0..4 => writeln!(w, "CONNECT {guest_port}"),
            4 => write!(w, "CONNECT {guest_port}\r\n"),
            5 => write!(w, "CONNECT {guest_port}"),
            6 => writeln!(w, "CONNECT -{guest_port}"),
            _ => w.write_all(&[b'C'; 40]),
        };
        let n = 64 - w.len();
        let _ = (&stream).write(&text[..n]);
        TALLY.add("host connects");
        let client = Client {
            stream,
            guest_port,
            seed,
            written: 0,
            host_port: None,
            read: 0,
            delivered: 0,
            // A line the device refuses or waits on: what the client
            // writes next is not data.
            dead: line % 8 >= 5,
        };
        match self.clients.iter_mut().find(|c| c.is_none()) {
            Some(slot) => *slot = Some(client),
            None => self.crowd.push(client.stream),
        }
    }

    /// Many host processes connect with good lines (past the limit).
    pub fn crowd(&mut self, n: u16) {
        for i in 0..usize::from(n % 280) {
            if self.crowd.len() == self.crowd.capacity() {
                break;
            }
            let Some(stream) = connect(&self.uds) else {
                break;
            };
            self.attempts += 1;
            let port = GUEST_PORTS[i % GUEST_PORTS.len()];
            let mut text = [0u8; 32];
            let mut w = &mut text[..];
            let _ = writeln!(w, "CONNECT {port}");
            let n = 32 - w.len();
            let _ = (&stream).write(&text[..n]);
            self.crowd.push(stream);
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
