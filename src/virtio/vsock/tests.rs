//! The vsock device driven as a guest driver would (test memory, a real
//! device thread, real Unix sockets): the error paths end in RSTs and
//! counters, never in a stuck connection or an unbounded buffer.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::packet::*;
use super::*;
use crate::virtio::testdrv::{Driver, BUF_BASE};

const CID: u64 = 3;
const RX_AREA: u64 = BUF_BASE + 0x40_0000;

struct Rig {
    d: Driver<Vsock>,
    dir: PathBuf,
    uds: PathBuf,
    shared: Arc<VsockShared>,
    tx_slot: u16,
}

fn rig(name: &str) -> Rig {
    let dir = std::env::temp_dir().join(format!("hearth-vsock-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let uds = dir.join("v.sock");
    let listener = UnixListener::bind(&uds).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let dev = Vsock::new(CID, OwnedFd::from(listener), &uds).expect("vsock");
    let shared = dev.shared().clone();
    let mut d = Driver::new(dev, "vsock0", 16, 1 << F_STREAM, 16);
    // Eight receive buffers: a header and 4 KiB each.
    for slot in 0..8u16 {
        d.post(
            RX_QUEUE,
            slot,
            &[(RX_AREA + u64::from(slot) * 0x2000, 44 + 4096, true)],
        );
    }
    d.notify(RX_QUEUE as u32);
    Rig {
        d,
        dir,
        uds,
        shared,
        tx_slot: 0,
    }
}

fn counts(r: &Rig) -> stats::VsockCounts {
    stats::VsockCounts::read(&r.shared.counters)
}

impl Rig {
    fn send(&mut self, hdr: Hdr, payload: &[u8]) {
        let slot = self.tx_slot;
        self.tx_slot = (self.tx_slot + 1) % 16;
        let addr = BUF_BASE + u64::from(slot) * 0x20000;
        let mut hdr = hdr;
        hdr.len = payload.len() as u32;
        self.d
            .mem
            .write_slice(&hdr.to_bytes(), GuestAddress(addr))
            .expect("hdr");
        self.d
            .mem
            .write_slice(payload, GuestAddress(addr + 44))
            .expect("payload");
        self.d.post(
            TX_QUEUE,
            slot,
            &[(addr, (44 + payload.len()) as u32, false)],
        );
        self.d.notify(TX_QUEUE as u32);
    }

    /// The `n`th packet the device put in a receive buffer.
    fn received(&mut self, n: u16) -> Hdr {
        self.d
            .until("a packet for the guest", |d| d.used_idx(RX_QUEUE) > n);
        let (id, _) = self.d.rings[RX_QUEUE].used_elem(&self.d.mem, n);
        let mut raw = [0u8; HDR_LEN];
        self.d
            .mem
            .read_slice(&mut raw, GuestAddress(RX_AREA + u64::from(id) * 0x2000))
            .expect("read");
        Hdr::parse(&raw)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn from_guest(op: u16, src_port: u32, dst_port: u32) -> Hdr {
    Hdr {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 65536,
        ..Hdr::default()
    }
}

#[test]
fn the_configuration_space_holds_the_guest_cid() {
    let r = rig("cid");
    let mut cid = [0u8; 8];
    r.d.dev.device().read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), CID);
}

#[test]
fn a_packet_for_no_connection_gets_an_rst() {
    let mut r = rig("stray");
    r.send(from_guest(OP_RW, 1234, 77), b"hello");
    let rst = r.received(0);
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, 77, 1234));
    assert_eq!((rst.src_cid, rst.dst_cid), (HOST_CID, CID));
}

#[test]
fn a_bad_connect_line_is_refused_and_its_socket_closed() {
    let mut r = rig("badline");
    let mut s = UnixStream::connect(&r.uds).expect("connect");
    s.write_all(b"HELLO 5000\n").expect("write");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "closed without a word");
    let shared = r.shared.clone();
    r.d.until("counted", |_| {
        shared.counters.refused.load(Ordering::SeqCst) == 1
    });
}

#[test]
fn a_host_connect_becomes_a_request_and_the_response_an_ok_line() {
    let mut r = rig("connect");
    let mut s = UnixStream::connect(&r.uds).expect("connect");
    s.write_all(b"CONNECT 5000\n").expect("write");
    let req = r.received(0);
    assert_eq!((req.op, req.dst_port, req.dst_cid), (OP_REQUEST, 5000, CID));
    assert!(req.src_port >= 1 << 30);
    r.send(from_guest(OP_RESPONSE, 5000, req.src_port), &[]);
    let mut ok = [0u8; 16];
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let n = s.read(&mut ok).expect("OK line");
    assert_eq!(
        std::str::from_utf8(&ok[..n]).expect("text"),
        format!("OK {}\n", req.src_port)
    );
    // Data both ways.
    s.write_all(b"ping").expect("write");
    let rw = r.received(1);
    assert_eq!((rw.op, rw.len), (OP_RW, 4));
    r.send(from_guest(OP_RW, 5000, req.src_port), b"pong");
    let n = s.read(&mut ok).expect("pong");
    assert_eq!(&ok[..n], b"pong");
    assert_eq!(counts(&r).host_connections, 1);
}

#[test]
fn a_guest_sending_beyond_its_credit_is_reset_and_nothing_grows() {
    let mut r = rig("credit");
    let host = UnixListener::bind(format!("{}_6000", r.uds.display())).expect("listener");
    r.send(from_guest(OP_REQUEST, 40000, 6000), &[]);
    let resp = r.received(0);
    assert_eq!(resp.op, OP_RESPONSE);
    assert_eq!(resp.buf_alloc, conn::CONN_BUF);
    let (_peer, _) = host.accept().expect("the guest's connection");
    // The host never reads: the socket fills, then the 64 KiB we
    // announced, then the guest is over its credit.
    let chunk = vec![0x5au8; 4096];
    for _ in 0..1024 {
        r.send(from_guest(OP_RW, 40000, 6000), &chunk);
        if counts(&r).credit_violations > 0 {
            break;
        }
    }
    assert_eq!(counts(&r).credit_violations, 1);
    let mut n = 1;
    let rst = loop {
        let h = r.received(n);
        if h.op == OP_RST {
            break h;
        }
        n += 1;
    };
    assert_eq!((rst.src_port, rst.dst_port), (6000, 40000));
    assert_eq!(counts(&r).open, 0);
    assert_eq!(counts(&r).resets, 1);
}

#[test]
fn malformed_packets_are_dropped_and_counted() {
    let mut r = rig("malformed");
    // Shorter than a header.
    let addr = BUF_BASE + 0x100000;
    r.d.post(TX_QUEUE, 10, &[(addr, 20, false)]);
    r.d.notify(TX_QUEUE as u32);
    // A header promising more payload than the chain holds.
    let mut h = from_guest(OP_RW, 1, 2);
    h.len = 1000;
    r.d.mem
        .write_slice(&h.to_bytes(), GuestAddress(addr))
        .expect("hdr");
    r.d.post(TX_QUEUE, 11, &[(addr, 44 + 10, false)]);
    r.d.notify(TX_QUEUE as u32);
    // From another CID.
    let mut other = from_guest(OP_REQUEST, 1, 2);
    other.src_cid = 9;
    r.send(other, &[]);
    r.d.until("all used", |d| d.used_idx(TX_QUEUE) == 3);
    assert_eq!(counts(&r).dropped, 3);
    assert!(!r.d.dev.state().needs_reset());
}

#[test]
fn receive_buffers_with_room_for_a_header_only_carry_credit_updates_not_a_stall() {
    let mut r = rig("tiny");
    // Use up the eight regular buffers with RSTs for stray packets.
    for port in 0..8 {
        r.send(from_guest(OP_RW, 1000 + port, 77), b"x");
    }
    r.received(7);
    let host = UnixListener::bind(format!("{}_6001", r.uds.display())).expect("listener");
    // Header-only buffers: the RESPONSE fits, data does not.
    for slot in 8..12u16 {
        r.d.post(
            RX_QUEUE,
            slot,
            &[(RX_AREA + u64::from(slot) * 0x2000, 44, true)],
        );
    }
    r.d.notify(RX_QUEUE as u32);
    r.send(from_guest(OP_REQUEST, 40001, 6001), &[]);
    assert_eq!(r.received(8).op, OP_RESPONSE);
    let (mut peer, _) = host.accept().expect("accept");
    peer.write_all(b"data").expect("write");
    // The small buffers carry credit updates; the data waits for room.
    for n in 9..12 {
        assert_eq!(r.received(n).op, OP_CREDIT_UPDATE);
    }
    r.d.post(RX_QUEUE, 12, &[(RX_AREA + 12 * 0x2000, 44 + 4096, true)]);
    r.d.notify(RX_QUEUE as u32);
    let rw = r.received(12);
    assert_eq!((rw.op, rw.len), (OP_RW, 4));
}
