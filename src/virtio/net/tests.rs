//! The network device driven as a guest driver would, on test memory with
//! a real device thread, its tap a datagram socket pair (one datagram, one
//! frame, as a tap).

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::config::{RateLimiterSpec, TokenBucketSpec};
use crate::virtio::testdrv::{r32, Driver, BUF_BASE};

struct FakeTap {
    sock: UnixDatagram,
    offload: AtomicU32,
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

const MAC: [u8; 6] = [0x06, 0, 0xac, 0x10, 0, 2];

struct Rig {
    d: Driver<Net>,
    host: UnixDatagram,
    tap: Arc<FakeTap>,
    shared: Arc<NetShared>,
}

fn rig_with(features: u64, mtu: Option<u16>, rx: RateLimiterSpec, tx: RateLimiterSpec) -> Rig {
    let (a, b) = UnixDatagram::pair().expect("socket pair");
    a.set_nonblocking(true).expect("non-blocking");
    b.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let tap = Arc::new(FakeTap {
        sock: a,
        offload: AtomicU32::new(u32::MAX),
    });
    let net = Net::new(NetConfig { mac: MAC, mtu }, tap.clone(), &rx, &tx).expect("net");
    let shared = net.shared().clone();
    let d = Driver::new(net, "net0", 8, features, 16);
    Rig {
        d,
        host: b,
        tap,
        shared,
    }
}

fn rig() -> Rig {
    rig_with(
        0,
        None,
        RateLimiterSpec::default(),
        RateLimiterSpec::default(),
    )
}

/// A frame of `len` bytes: broadcast, from MAC, EtherType 0x88b5, pattern.
fn frame(len: usize, seq: u8) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend((0..len - 14).map(|i| (i as u8).wrapping_add(seq)));
    f
}

fn with_hdr(frame: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 12];
    p.extend_from_slice(frame);
    p
}

fn counts(r: &Rig) -> stats::NetCounts {
    stats::NetCounts::read(&r.shared.counters)
}

impl Rig {
    /// Posts `packet` (header included) as TX chain `slot` and notifies.
    fn transmit(&mut self, slot: u16, packet: &[u8]) {
        let addr = BUF_BASE + u64::from(slot) * 0x10000;
        self.d
            .mem
            .write_slice(packet, GuestAddress(addr))
            .expect("write");
        self.d
            .post(TX_QUEUE, slot, &[(addr, packet.len() as u32, false)]);
        self.d.notify(TX_QUEUE as u32);
    }

    /// Posts RX buffer `slot` of `len` bytes (descriptor `slot`).
    fn post_rx(&mut self, slot: u16, len: u32) {
        let addr = BUF_BASE + 0x80_0000 / 2 + u64::from(slot) * 0x10000;
        self.d.post(RX_QUEUE, slot, &[(addr, len, true)]);
    }

    fn rx_buf(&self, slot: u16, len: usize) -> Vec<u8> {
        let addr = BUF_BASE + 0x80_0000 / 2 + u64::from(slot) * 0x10000;
        let mut v = vec![0u8; len];
        self.d
            .mem
            .read_slice(&mut v, GuestAddress(addr))
            .expect("read");
        v
    }
}

#[test]
fn config_space_holds_the_mac_and_mtu() {
    let r = rig_with(
        1 << F_MTU,
        Some(9000),
        RateLimiterSpec::default(),
        RateLimiterSpec::default(),
    );
    let mut d = r.d;
    assert_eq!(r32(&mut d.dev, 0x8), DEVICE_TYPE);
    let mut mac = [0u8; 6];
    d.dev.device().read_config(0, &mut mac);
    assert_eq!(mac, MAC);
    let mut mtu = [0u8; 2];
    d.dev.device().read_config(10, &mut mtu);
    assert_eq!(u16::from_le_bytes(mtu), 9000);
    let f = d.dev.device().features();
    assert!(f & (1 << F_MTU) != 0 && f & (1 << F_MAC) != 0);
}

#[test]
fn a_frame_the_guest_sends_reaches_the_tap_byte_for_byte() {
    let mut r = rig();
    let packet = with_hdr(&frame(100, 7));
    r.transmit(0, &packet);
    let mut got = vec![0u8; 70000];
    let n = r.host.recv(&mut got).expect("a frame on the tap");
    assert_eq!(&got[..n], &packet[..]);
    r.d.until("used", |d| d.used_idx(TX_QUEUE) == 1);
    let c = counts(&r);
    assert_eq!((c.tx_frames, c.tx_bytes), (1, 100));
    assert!(r.d.irq.get() > 0, "the guest was interrupted");
}

#[test]
fn a_host_frame_lands_in_a_posted_buffer_with_one_buffer_in_its_header() {
    let mut r = rig();
    r.post_rx(0, 2048);
    r.d.notify(RX_QUEUE as u32);
    let packet = with_hdr(&frame(60, 1));
    r.host.send(&packet).expect("send");
    r.d.until("delivered", |d| d.used_idx(RX_QUEUE) == 1);
    let (head, len) = r.d.rings[RX_QUEUE].used_elem(&r.d.mem, 0);
    assert_eq!((head, len as usize), (0, packet.len()));
    let mut want = packet.clone();
    want[10] = 1; // num_buffers
    assert_eq!(r.rx_buf(0, packet.len()), want);
    assert_eq!(counts(&r).rx_frames, 1);
}

#[test]
fn without_buffers_frames_wait_in_the_tap_and_none_is_lost() {
    let mut r = rig();
    for seq in 0..3 {
        r.host.send(&with_hdr(&frame(64, seq))).expect("send");
    }
    // The device sees the frames but has nowhere to put them.
    let shared = r.shared.clone();
    r.d.until("a wait counted", |_| {
        shared.counters.rx_no_buffer.load(Ordering::SeqCst) > 0
    });
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(r.d.used_idx(RX_QUEUE), 0);
    let before = counts(&r);
    assert_eq!(before.rx_frames, 0);
    assert_eq!(before.rx_dropped_too_big + before.rx_dropped_short, 0);
    for slot in 0..3 {
        r.post_rx(slot, 2048);
    }
    r.d.notify(RX_QUEUE as u32);
    r.d.until("all three delivered", |d| d.used_idx(RX_QUEUE) == 3);
    for seq in 0..3u16 {
        let mut want = with_hdr(&frame(64, seq as u8));
        want[10] = 1;
        assert_eq!(r.rx_buf(seq, want.len()), want, "frame {seq} in order");
    }
    assert_eq!(counts(&r).rx_frames, 3);
}

#[test]
fn malformed_and_oversized_frames_are_dropped_and_counted() {
    let mut r = rig();
    // Shorter than a header and an Ethernet header.
    r.transmit(0, &[0u8; 20]);
    // A device-writable buffer on the transmit queue.
    let addr = BUF_BASE + 0x40000;
    r.d.post(
        TX_QUEUE,
        1,
        &[(addr, 100, false), (addr + 0x1000, 512, true)],
    );
    r.d.notify(TX_QUEUE as u32);
    // Longer than any frame.
    let huge = vec![0u8; header::MAX_PACKET_LEN + 1];
    r.transmit(3, &huge);
    // A header asking for checksum offload that was not negotiated.
    let mut bad = with_hdr(&frame(100, 0));
    bad[0] = header::HDR_F_NEEDS_CSUM;
    bad[6] = 34;
    r.transmit(5, &bad);
    r.d.until("all used", |d| d.used_idx(TX_QUEUE) == 4);
    let c = counts(&r);
    assert_eq!(c.tx_dropped_malformed, 2);
    assert_eq!(c.tx_dropped_oversized, 1);
    assert_eq!(c.tx_dropped_bad_header, 1);
    assert_eq!(c.tx_frames, 0);
    assert!(!r.d.dev.state().needs_reset(), "dropped, not fatal");
    // The interface still works.
    let good = with_hdr(&frame(60, 9));
    r.transmit(6, &good);
    let mut got = vec![0u8; 70000];
    let n = r.host.recv(&mut got).expect("the good frame");
    assert_eq!(&got[..n], &good[..]);
}

#[test]
fn a_frame_too_big_for_the_buffer_is_dropped_and_the_buffer_kept() {
    let mut r = rig();
    r.post_rx(0, 200);
    r.d.notify(RX_QUEUE as u32);
    r.host.send(&with_hdr(&frame(1500, 0))).expect("send");
    r.host.send(&with_hdr(&frame(100, 1))).expect("send");
    r.d.until("the small one delivered", |d| d.used_idx(RX_QUEUE) == 1);
    let (_, len) = r.d.rings[RX_QUEUE].used_elem(&r.d.mem, 0);
    assert_eq!(len, 112);
    assert_eq!(counts(&r).rx_dropped_too_big, 1);
}

#[test]
fn a_readable_buffer_on_the_receive_queue_needs_a_reset() {
    let mut r = rig();
    let addr = BUF_BASE;
    r.d.post(
        RX_QUEUE,
        0,
        &[(addr, 64, false), (addr + 0x1000, 2048, true)],
    );
    r.d.notify(RX_QUEUE as u32);
    r.host.send(&with_hdr(&frame(60, 0))).expect("send");
    r.d.until("needs reset", |d| d.dev.state().needs_reset());
    // A reset brings it back.
    r.d.reset();
    assert!(!r.d.dev.state().needs_reset());
}

#[test]
fn offloads_are_set_on_the_tap_as_negotiated() {
    let r = rig_with(
        (1 << F_GUEST_CSUM) | (1 << F_GUEST_TSO4) | (1 << F_CSUM),
        None,
        RateLimiterSpec::default(),
        RateLimiterSpec::default(),
    );
    assert_eq!(
        r.tap.offload.load(Ordering::SeqCst),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4
    );
    assert!(r.shared.active.load(Ordering::SeqCst));
}

fn ops_limit(per_100ms: u64) -> RateLimiterSpec {
    RateLimiterSpec {
        bandwidth: None,
        ops: Some(TokenBucketSpec {
            size: per_100ms,
            one_time_burst: 0,
            refill_time_ms: 100,
        }),
    }
}

#[test]
fn the_transmit_limiter_spaces_frames_and_counts_the_wait() {
    let mut r = rig_with(0, None, RateLimiterSpec::default(), ops_limit(1));
    let start = Instant::now();
    for slot in 0..3u16 {
        let addr = BUF_BASE + u64::from(slot) * 0x10000;
        let p = with_hdr(&frame(60, slot as u8));
        r.d.mem.write_slice(&p, GuestAddress(addr)).expect("write");
        r.d.post(TX_QUEUE, slot, &[(addr, p.len() as u32, false)]);
    }
    r.d.notify(TX_QUEUE as u32);
    let mut got = vec![0u8; 2048];
    for seq in 0..3u8 {
        let n = r.host.recv(&mut got).expect("frame");
        assert_eq!(got[12 + 14], seq, "in order");
        assert_eq!(n, 72);
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(190),
        "1 frame per 100 ms: {took:?}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    let handle_stats = lock(&r.shared.tx_limiter).stats(r.shared.now_ns());
    assert!(handle_stats.throttled_events >= 1);
    assert!(handle_stats.throttled_ns >= 150_000_000);
}

#[test]
fn lifting_a_limit_at_run_time_lets_held_frames_go() {
    let slow = RateLimiterSpec {
        bandwidth: Some(TokenBucketSpec {
            size: 100,
            one_time_burst: 0,
            refill_time_ms: 100_000,
        }),
        ops: None,
    };
    let mut r = rig_with(0, None, slow, RateLimiterSpec::default());
    r.post_rx(0, 2048);
    r.post_rx(1, 2048);
    r.d.notify(RX_QUEUE as u32);
    r.host.send(&with_hdr(&frame(100, 0))).expect("send");
    r.host.send(&with_hdr(&frame(100, 1))).expect("send");
    r.d.until("the first", |d| d.used_idx(RX_QUEUE) == 1);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(r.d.used_idx(RX_QUEUE), 1, "the second is held back");
    let state = r.d.dev.state().clone();
    let handle = NetHandle::on("eth0".into(), "tap0".into(), MAC, r.shared.clone(), state);
    assert!(handle.stats().rx_limiter.throttled);
    assert_eq!(handle.limiter_spec(Direction::Rx), slow);
    let disable = BucketUpdate::Disable;
    assert!(handle.update_limiter(Direction::Rx, disable, BucketUpdate::Keep, false));
    r.d.until("the second", |d| d.used_idx(RX_QUEUE) == 2);
    assert_eq!(
        handle.limiter_spec(Direction::Rx),
        RateLimiterSpec::default()
    );
    let s = handle.stats();
    assert_eq!(s.counters.rx_frames, 2);
    assert!(s.to_json()["rx"]["limiter"]["throttled_ns"].as_u64() > Some(0));
}

#[test]
fn the_vms_share_of_the_host_budget_holds_frames_until_a_refill_wakes_the_interface() {
    let mut r = rig();
    // An empty share: nothing goes until the first refill.
    let bucket = Arc::new(crate::share::SharedBucket::new());
    r.shared.set_share(bucket.clone());
    let p = with_hdr(&frame(60, 3));
    r.transmit(0, &p);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(r.d.used_idx(TX_QUEUE), 0, "held back by the share");
    assert!(bucket.is_waiting());
    let grant = crate::share::Grant {
        vm: 0,
        bytes_milli: None,
        ops_milli: Some(10 * crate::share::MILLI),
    };
    assert!(bucket.fill(&grant), "work was waiting");
    r.shared.wake();
    let mut got = vec![0u8; 2048];
    let n = r.host.recv(&mut got).expect("the frame, after the refill");
    assert_eq!(&got[..n], &p[..]);
    assert_eq!(bucket.stats().ops, 1);
}
