//! The host-side cost of one frame alone: Hearth's virtio-net device on a
//! real tap (in a network namespace of its own), driven by an in-process
//! "guest" that writes descriptors and the available ring into a test
//! mapping and rings the doorbell through the transport. No KVM, no guest
//! code: what is measured is the device thread's CPU time per frame (the
//! chain checks, the copy, the header checks, the tap read or write and
//! the used ring) and the wall time per frame of the whole loop.
//!
//! `cargo bench --bench net_frames` (as root: it creates a network
//! namespace and a tap); prints one JSON object. See docs/performance.md.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth::bus::BusDevice;
use hearth::config::RateLimiterSpec;
use hearth::virtio::mmio::MmioTransport;
use hearth::virtio::net::{Net, NetConfig, Tap, RX_QUEUE, TX_QUEUE};
use hearth::virtio::thread::DeviceThread;
use hearth::virtio::{DeviceState, InterruptLine, Trigger};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const SIZE: u16 = 256;
const MAC: [u8; 6] = [6, 0, 0xac, 0x10, 0, 2];
const BUF: u64 = 0x10_0000;
const SLOT: u64 = 0x1_0000;

struct NoIrq(AtomicU32);
impl Trigger for NoIrq {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// One split ring in guest memory, driven from here.
struct Ring {
    base: u64,
    avail_idx: u16,
}

impl Ring {
    fn desc(&self) -> u64 {
        self.base
    }
    fn avail(&self) -> u64 {
        self.base + 16 * u64::from(SIZE)
    }
    fn used(&self) -> u64 {
        (self.avail() + 6 + 2 * u64::from(SIZE) + 0xfff) & !0xfff
    }
    fn post(&mut self, mem: &GuestMemoryMmap, i: u16, addr: u64, len: u32, write: bool) {
        let d = self.desc() + 16 * u64::from(i);
        mem.write_obj(addr, GuestAddress(d)).expect("desc");
        mem.write_obj(len, GuestAddress(d + 8)).expect("desc");
        mem.write_obj(if write { 2u16 } else { 0 }, GuestAddress(d + 12))
            .expect("desc");
        let slot = self.avail() + 4 + 2 * u64::from(self.avail_idx % SIZE);
        mem.write_obj(i, GuestAddress(slot)).expect("avail");
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }
    fn publish(&self, mem: &GuestMemoryMmap) {
        std::sync::atomic::fence(Ordering::SeqCst);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail() + 2))
            .expect("avail idx");
    }
    fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used() + 2))
            .expect("used idx")
    }
}

fn w32(dev: &mut MmioTransport<Net>, off: u64, v: u32) {
    dev.write(off, &v.to_le_bytes());
}

fn sh(args: &[&str]) {
    let ok = std::process::Command::new(args[0])
        .args(&args[1..])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{args:?} failed (the bench needs root)");
}

/// An AF_PACKET socket on the tap: what it sends, the device receives.
fn packet_socket(ifname: &str) -> OwnedFd {
    let name = std::ffi::CString::new(ifname).expect("name");
    // SAFETY: a NUL-terminated string alive for the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    // SAFETY: no memory is passed; checked below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0x0300) };
    assert!(fd >= 0 && ifindex != 0);
    // SAFETY: `fd` is fresh and ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: plain data; zeroes are valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = 0x0300;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: a valid sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0);
    fd
}

struct Rig {
    dev: MmioTransport<Net>,
    mem: GuestMemoryMmap,
    rings: [Ring; 2],
    thread: DeviceThread,
}

fn rig() -> Rig {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).expect("memory");
    let thread = DeviceThread::spawn("bench-dev".into(), None).expect("device thread");
    let state = Arc::new(DeviceState::new(
        "net0",
        InterruptLine::new(Box::new(NoIrq(AtomicU32::new(0)))),
    ));
    let tap = Tap::open("tap0").expect("tap");
    let none = RateLimiterSpec::default();
    let net = Net::new(
        NetConfig {
            mac: MAC,
            mtu: None,
        },
        Arc::new(tap),
        &none,
        &none,
    )
    .expect("net");
    let mut dev = MmioTransport::new(net, mem.clone(), state, thread.handle()).expect("transport");
    w32(&mut dev, 0x70, 1);
    w32(&mut dev, 0x70, 3);
    w32(&mut dev, 0x24, 1);
    w32(&mut dev, 0x20, 1); // VERSION_1
    w32(&mut dev, 0x70, 11);
    let rings = [
        Ring {
            base: 0x1_0000,
            avail_idx: 0,
        },
        Ring {
            base: 0x2_0000,
            avail_idx: 0,
        },
    ];
    for (i, r) in rings.iter().enumerate() {
        w32(&mut dev, 0x30, i as u32);
        w32(&mut dev, 0x38, u32::from(SIZE));
        w32(&mut dev, 0x80, r.desc() as u32);
        w32(&mut dev, 0x90, r.avail() as u32);
        w32(&mut dev, 0xa0, r.used() as u32);
        w32(&mut dev, 0x44, 1);
    }
    w32(&mut dev, 0x70, 15);
    assert!(dev.is_active());
    Rig {
        dev,
        mem,
        rings,
        thread,
    }
}

fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.resize(12 + len, 0x5a);
    f
}

fn wait_used(r: &Rig, q: usize, target: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.rings[q].used_idx(&r.mem) != target {
        assert!(Instant::now() < deadline, "queue {q} stalled");
        std::hint::spin_loop();
    }
}

/// Frames out: batches of 256 chains, one doorbell each.
fn tx(r: &mut Rig, len: usize, batches: usize) -> (f64, f64) {
    let f = frame(len);
    for i in 0..SIZE {
        r.mem
            .write_slice(&f, GuestAddress(BUF + u64::from(i) * SLOT))
            .expect("frame");
    }
    let cpu0 = r.thread.cpu_ns();
    let t0 = Instant::now();
    for _ in 0..batches {
        for i in 0..SIZE {
            r.rings[TX_QUEUE].post(&r.mem, i, BUF + u64::from(i) * SLOT, f.len() as u32, false);
        }
        r.rings[TX_QUEUE].publish(&r.mem);
        w32(&mut r.dev, 0x50, TX_QUEUE as u32);
        wait_used(r, TX_QUEUE, r.rings[TX_QUEUE].avail_idx);
    }
    let n = (batches * usize::from(SIZE)) as f64;
    (
        t0.elapsed().as_nanos() as f64 / n,
        (r.thread.cpu_ns() - cpu0) as f64 / n,
    )
}

/// Frames in: the host puts 256 frames in the tap, the guest posts 256
/// buffers, and waits for them to fill.
fn rx(r: &mut Rig, len: usize, batches: usize, wire: &OwnedFd) -> (f64, f64) {
    let f = frame(len);
    let rxbuf = BUF + 0x200_0000;
    let mut cpu = 0;
    let t0 = Instant::now();
    for _ in 0..batches {
        for _ in 0..SIZE {
            // SAFETY: `f` is valid for reads of its length.
            let n = unsafe { libc::send(wire.as_raw_fd(), f[12..].as_ptr().cast(), len, 0) };
            assert_eq!(n, len as isize);
        }
        let cpu0 = r.thread.cpu_ns();
        for i in 0..SIZE {
            r.rings[RX_QUEUE].post(&r.mem, i, rxbuf + u64::from(i) * 2048, 2048, true);
        }
        r.rings[RX_QUEUE].publish(&r.mem);
        w32(&mut r.dev, 0x50, RX_QUEUE as u32);
        wait_used(r, RX_QUEUE, r.rings[RX_QUEUE].avail_idx);
        cpu += r.thread.cpu_ns() - cpu0;
    }
    let n = (batches * usize::from(SIZE)) as f64;
    (t0.elapsed().as_nanos() as f64 / n, cpu as f64 / n)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // SAFETY: unshare(2) of this (single-threaded so far) process.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare: {} (run as root)",
        std::io::Error::last_os_error()
    );
    let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
    sh(&["ip", "tuntap", "add", "tap0", "mode", "tap"]);
    sh(&["ip", "link", "set", "tap0", "up"]);
    let mut r = rig();
    let wire = packet_socket("tap0");
    let mut out = serde_json::Map::new();
    for len in [64usize, 1514] {
        let _ = tx(&mut r, len, 4); // warm-up
        let (wall, cpu) = tx(&mut r, len, 200);
        out.insert(format!("tx_{len}_wall_ns"), wall.into());
        out.insert(format!("tx_{len}_device_cpu_ns"), cpu.into());
        let (wall, cpu) = rx(&mut r, len, 100, &wire);
        out.insert(format!("rx_{len}_wall_ns"), wall.into());
        out.insert(format!("rx_{len}_device_cpu_ns"), cpu.into());
    }
    println!("{}", serde_json::Value::Object(out));
}
