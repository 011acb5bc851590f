//! The vsock device's handler on the VM's device thread: the VM's
//! listening socket, one host Unix socket per connection (all registered
//! edge-triggered), packets from the transmit queue and to the receive
//! queue, and one timer for deadlines (a `CONNECT` line that never comes,
//! a guest that never answers a REQUEST or never finishes closing).
//!
//! Packets owed to the guest wait in bounded places: each connection's
//! owed bits, and a queue of RSTs for packets of no connection (at most
//! [`MAX_STRAY`]). Host data waits in the host socket until the guest has
//! credit and a receive buffer.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events};

use super::conn::*;
use super::packet::*;
use super::{bump, VsockShared, MAX_CONNECTIONS, RX_QUEUE, TX_QUEUE};
use crate::virtio::queue::{read_from, write_to, Chain};
use crate::virtio::{QueueError, QueueHandler, Queues, HANDLER_TAG};

const TAG_LISTENER: u32 = HANDLER_TAG;
const TAG_TIMER: u32 = HANDLER_TAG + 1;
const TAG_CONN: u32 = HANDLER_TAG + 8;
/// Most RSTs waiting for receive buffers.
pub const MAX_STRAY: usize = 2 * MAX_CONNECTIONS;
const LINE_TIMEOUT: Duration = Duration::from_secs(10);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Host ports given to connections the host starts.
const FIRST_HOST_PORT: u32 = 1 << 30;

fn conn_events() -> EventSet {
    EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED
}

pub(super) struct VsockHandler {
    cid: u64,
    listener: Arc<OwnedFd>,
    uds_path: PathBuf,
    listener_ready: bool,
    slots: Vec<Option<Conn>>,
    // A BTreeMap: a HashMap would seed itself with getrandom on the vCPU
    // thread that activates the device, which its seccomp filter forbids.
    by_key: BTreeMap<(u32, u32), usize>,
    /// Connections that may owe the guest a packet, in turn.
    ready: VecDeque<usize>,
    stray: VecDeque<Hdr>,
    next_port: u32,
    shared: Arc<VsockShared>,
    tx_buf: Vec<u8>,
    rx_buf: Vec<u8>,
    timer_due: Option<Instant>,
}

impl VsockHandler {
    pub(super) fn new(
        cid: u64,
        listener: Arc<OwnedFd>,
        uds_path: PathBuf,
        shared: Arc<VsockShared>,
    ) -> Self {
        VsockHandler {
            cid,
            listener,
            uds_path,
            listener_ready: true,
            slots: (0..MAX_CONNECTIONS).map(|_| None).collect(),
            by_key: BTreeMap::new(),
            ready: VecDeque::new(),
            stray: VecDeque::new(),
            next_port: FIRST_HOST_PORT,
            shared,
            tx_buf: vec![0; MAX_PAYLOAD],
            rx_buf: vec![0; MAX_PAYLOAD],
            timer_due: None,
        }
    }

    fn counters(&self) -> &super::VsockCounters {
        &self.shared.counters
    }

    /// Arms the timer for `deadline` if that is earlier than it is armed for.
    fn deadline(&mut self, deadline: Instant) {
        if self.timer_due.is_none_or(|d| deadline < d) {
            self.timer_due = Some(deadline);
            let after = deadline.saturating_duration_since(Instant::now());
            if let Err(e) = self.shared.timer.arm(after) {
                log::warn!("vsock: cannot arm its timer: {e}");
            }
        }
    }

    /// Owes the guest an RST for `hdr` (a packet of no connection, or a
    /// connection given up), if there is room.
    fn owe_rst(&mut self, rst: Hdr) {
        if self.stray.len() < MAX_STRAY {
            self.stray.push_back(rst);
        }
    }

    fn enqueue(&mut self, slot: usize) {
        if let Some(c) = self.slots[slot].as_mut() {
            c.want_credit();
            if c.wants_rx() && !c.queued {
                c.queued = true;
                self.ready.push_back(slot);
            }
        }
    }

    /// Drops connection `slot` (its host socket closed).
    fn remove(&mut self, slot: usize, ops: &mut EventOps) {
        let Some(c) = self.slots[slot].take() else {
            return;
        };
        let _ = ops.remove(Events::with_data_raw(
            c.fd.as_raw_fd(),
            TAG_CONN + slot as u32,
            conn_events(),
        ));
        if self.by_key.get(&(c.local_port, c.peer_port)) == Some(&slot) {
            self.by_key.remove(&(c.local_port, c.peer_port));
        }
        self.shared.counters.open.fetch_sub(1, Ordering::Relaxed);
        // A slot is free: the handler accepts waiting connections (if
        // any) when it is done with this event.
    }

    /// Gives up connection `slot`: RST to the guest (if it knows of it),
    /// host socket closed.
    fn reset(&mut self, slot: usize, why: &str, ops: &mut EventOps) {
        if let Some(c) = self.slots[slot].as_mut() {
            log::debug!(
                "vsock: resetting {}:{} <-> guest:{}: {why}",
                c.local_port,
                self.cid,
                c.peer_port
            );
            if !matches!(c.state, State::AwaitLine { .. }) {
                let rst = c.header(self.cid, OP_RST, 0, 0);
                self.owe_rst(rst);
                bump(&self.counters().resets, 1);
            }
        }
        self.remove(slot, ops);
    }

    fn insert(&mut self, conn: Conn, ops: &mut EventOps) -> Option<usize> {
        let slot = self.slots.iter().position(Option::is_none)?;
        let ev = Events::with_data_raw(conn.fd.as_raw_fd(), TAG_CONN + slot as u32, conn_events());
        if let Err(e) = ops.add(ev) {
            log::warn!("vsock: cannot watch a connection: {e}");
            return None;
        }
        bump(&self.counters().open, 1);
        self.slots[slot] = Some(conn);
        Some(slot)
    }

    // ---- The host starts a connection. ----

    /// Accepts connections on the VM's socket while there is room.
    fn accept_all(&mut self, ops: &mut EventOps) {
        while self.listener_ready && self.slots.iter().any(Option::is_none) {
            // SAFETY: accept4 with no address buffers; the result is checked.
            let fd = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => {}
                    io::ErrorKind::WouldBlock => self.listener_ready = false,
                    _ => {
                        // Out of fds, say: wait for the next connection.
                        log::warn!("vsock: cannot accept on {}: {e}", self.uds_path.display());
                        self.listener_ready = false;
                    }
                }
                continue;
            }
            // SAFETY: `fd` was just returned by accept4 and is owned by nobody else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let deadline = Instant::now() + LINE_TIMEOUT;
            let mut conn = Conn::new(fd, 0, 0, State::AwaitLine { deadline });
            conn.host_readable = true;
            if let Some(slot) = self.insert(conn, ops) {
                self.deadline(deadline);
                self.read_line(slot, ops);
            }
        }
    }

    /// Reads `CONNECT <port>\n` of connection `slot`, without taking any
    /// byte after it.
    fn read_line(&mut self, slot: usize, ops: &mut EventOps) {
        let Some(c) = self.slots[slot].as_mut() else {
            return;
        };
        let mut peek = [0u8; MAX_LINE];
        let line = match recv(&c.fd, &mut peek, true) {
            Ok(0) => Line::Bad,
            Ok(n) => parse_line(&peek[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => Line::Bad,
        };
        match line {
            Line::Partial => {}
            Line::Bad => {
                bump(&self.counters().refused, 1);
                self.remove(slot, ops);
            }
            Line::Connect { port, len } => {
                let _ = recv(&c.fd, &mut peek[..len], false);
                let local = self.free_port(port);
                let c = self.slots[slot].as_mut().expect("read above");
                c.local_port = local;
                c.peer_port = port;
                let deadline = Instant::now() + RESPONSE_TIMEOUT;
                c.state = State::Requested { deadline };
                c.owed |= OWE_REQUEST;
                self.by_key.insert((local, port), slot);
                self.deadline(deadline);
                self.enqueue(slot);
            }
        }
    }

    /// A host port no connection to guest port `peer` uses.
    fn free_port(&mut self, peer: u32) -> u32 {
        loop {
            let port = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_HOST_PORT);
            if !self.by_key.contains_key(&(port, peer)) {
                return port;
            }
        }
    }

    // ---- The guest starts a connection. ----

    fn guest_connect(&mut self, hdr: &Hdr, ops: &mut EventOps) {
        let path = format!("{}_{}", self.uds_path.display(), hdr.dst_port);
        let fd = match connect_unix(&path) {
            Ok(fd) => fd,
            Err(e) => {
                log::debug!("vsock: guest port {} to {path}: {e}", hdr.src_port);
                bump(&self.counters().refused, 1);
                return self.owe_rst(hdr.reset_reply());
            }
        };
        let mut conn = Conn::new(fd, hdr.dst_port, hdr.src_port, State::Established);
        conn.peer_credit_from(hdr);
        conn.owed |= OWE_RESPONSE;
        conn.host_readable = true;
        match self.insert(conn, ops) {
            Some(slot) => {
                self.by_key.insert((hdr.dst_port, hdr.src_port), slot);
                bump(&self.counters().guest_connections, 1);
                self.enqueue(slot);
            }
            None => {
                bump(&self.counters().refused, 1);
                self.owe_rst(hdr.reset_reply());
            }
        }
    }
}

/// A non-blocking connection to the Unix socket at `path`.
fn connect_unix(path: &str) -> io::Result<OwnedFd> {
    // SAFETY: sockaddr_un is plain data; all zeros is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "path too long"));
    }
    for (d, &s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = s as libc::c_char;
    }
    // SAFETY: no memory is passed; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid sockaddr_un of the size given.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

#[path = "handler_queues.rs"]
mod queues;
