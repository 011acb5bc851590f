//! One vsock stream connection between a guest port and a host Unix
//! socket: its state, both credits (virtio 1.2, 5.10.6.3) and the
//! packets it owes the guest.
//!
//! Guest to host: payload goes straight to the host socket; what the socket
//! does not take waits in a buffer of at most [`CONN_BUF`] bytes, which is
//! the `buf_alloc` the guest is told, so a guest within its credit never
//! overflows it, and one that exceeds it has the connection reset.
//! `fwd_cnt` counts bytes the host socket took.
//!
//! Host to guest: the host socket is read only while the guest has credit
//! and a receive buffer; otherwise its data stays in the socket.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use super::packet::*;

/// Our receive buffer per connection: the `buf_alloc` we announce.
pub const CONN_BUF: u32 = 64 << 10;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Accepted on the VM's socket; waiting for `CONNECT <port>\n`.
    AwaitLine {
        deadline: Instant,
    },
    /// REQUEST owed or sent to the guest; waiting for its RESPONSE.
    Requested {
        deadline: Instant,
    },
    Established,
    /// SHUTDOWN sent (or both sides done); waiting for the guest's RST,
    /// or for the buffer to drain, until the deadline.
    Closing {
        deadline: Instant,
    },
}

/// Packets a connection owes the guest (a bit set; at most one of each
/// kind is ever owed, so nothing here grows).
pub const OWE_REQUEST: u8 = 1;
pub const OWE_RESPONSE: u8 = 2;
pub const OWE_CREDIT_UPDATE: u8 = 4;
pub const OWE_CREDIT_REQUEST: u8 = 8;
pub const OWE_SHUTDOWN: u8 = 16;
pub const OWE_RST: u8 = 32;

/// Why a connection must be reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnError {
    /// The guest sent beyond the credit it was given.
    CreditViolation,
    /// The host socket failed.
    Host(String),
}

pub struct Conn {
    pub fd: OwnedFd,
    /// Host-side port (ours) and guest-side port.
    pub local_port: u32,
    pub peer_port: u32,
    pub state: State,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Payload bytes sent to the guest.
    tx_cnt: u32,
    credit_requested: bool,
    /// Payload bytes received from the guest, and taken by the host socket.
    recv_cnt: u32,
    fwd_cnt: u32,
    /// `fwd_cnt` as the guest last heard it.
    announced: u32,
    buf: VecDeque<u8>,
    pub owed: u8,
    pub shutdown_flags: u32,
    /// SHUTDOWN flags the guest sent.
    pub peer_shutdown: u32,
    /// The host socket had data at its last edge and has not said "would
    /// block" since.
    pub host_readable: bool,
    /// The host socket reached its end.
    pub host_eof: bool,
    /// The host socket is fully closed (it hung up).
    pub host_hup: bool,
    /// In the handler's list of connections with packets for the guest.
    pub queued: bool,
}

fn cvt(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `send(2)` without SIGPIPE.
pub fn send(fd: &OwnedFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is valid for reads of its length for the call.
    cvt(unsafe {
        libc::send(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    })
}

/// `recv(2)`, non-blocking, optionally peeking.
pub fn recv(fd: &OwnedFd, buf: &mut [u8], peek: bool) -> io::Result<usize> {
    let flags = libc::MSG_DONTWAIT | if peek { libc::MSG_PEEK } else { 0 };
    // SAFETY: `buf` is valid for writes of its length for the call.
    cvt(unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) })
}

impl Conn {
    pub fn new(fd: OwnedFd, local_port: u32, peer_port: u32, state: State) -> Conn {
        Conn {
            fd,
            local_port,
            peer_port,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            credit_requested: false,
            recv_cnt: 0,
            fwd_cnt: 0,
            announced: 0,
            buf: VecDeque::new(),
            owed: 0,
            shutdown_flags: 0,
            peer_shutdown: 0,
            host_readable: false,
            host_eof: false,
            host_hup: false,
            queued: false,
        }
    }

    /// Takes the guest's credit figures from a packet it sent.
    pub fn peer_credit_from(&mut self, hdr: &Hdr) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
        // Ask again only once this stall is over: a guest busy sending
        // (its packets carry its credit) must not draw a request each time.
        if self.credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// Bytes the guest can take now.
    pub fn credit(&self) -> u32 {
        peer_credit(self.peer_buf_alloc, self.peer_fwd_cnt, self.tx_cnt)
    }

    /// The header of a packet to the guest (addresses, our credit), and
    /// the guest now knows our `fwd_cnt`.
    pub fn header(&mut self, guest_cid: u64, op: u16, flags: u32, len: u32) -> Hdr {
        self.announced = self.fwd_cnt;
        Hdr {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// `n` payload bytes went to the guest.
    pub fn sent(&mut self, n: u32) {
        self.tx_cnt = self.tx_cnt.wrapping_add(n);
    }

    /// Whether host data may go to the guest now (a receive buffer aside).
    pub fn can_send_data(&self) -> bool {
        self.state == State::Established
            && self.host_readable
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.credit() > 0
    }

    /// The host has data but the guest no credit: ask for it (once until
    /// the guest speaks again). Returns whether that owes a packet.
    pub fn want_credit(&mut self) -> bool {
        let stuck = self.state == State::Established
            && self.host_readable
            && !self.host_eof
            && self.credit() == 0;
        if stuck && !self.credit_requested {
            self.credit_requested = true;
            self.owed |= OWE_CREDIT_REQUEST;
            return true;
        }
        false
    }

    /// Whether the connection has a packet for the guest.
    pub fn wants_rx(&self) -> bool {
        self.owed != 0 || self.can_send_data()
    }

    /// Payload from the guest: to the host socket, the rest buffered.
    pub fn take_guest_data(&mut self, data: &[u8]) -> Result<(), ConnError> {
        if self.buf.len() + data.len() > CONN_BUF as usize {
            return Err(ConnError::CreditViolation);
        }
        self.recv_cnt = self.recv_cnt.wrapping_add(data.len() as u32);
        let mut rest = data;
        if self.buf.is_empty() {
            match send(&self.fd, data) {
                Ok(n) => {
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                    rest = &data[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(ConnError::Host(e.to_string())),
            }
        }
        self.buf.extend(rest);
        self.maybe_owe_credit_update();
        Ok(())
    }

    /// Writes buffered guest data to the host socket, as much as it takes.
    pub fn flush(&mut self) -> Result<(), ConnError> {
        while !self.buf.is_empty() {
            let (front, _) = self.buf.as_slices();
            match send(&self.fd, front) {
                Ok(n) => {
                    self.buf.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(ConnError::Host(e.to_string())),
            }
        }
        self.maybe_owe_credit_update();
        Ok(())
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Once the guest, as far as it knows, has used half of its credit and
    /// the host has taken some of it since, tell it.
    fn maybe_owe_credit_update(&mut self) {
        let in_flight_as_known = self.recv_cnt.wrapping_sub(self.announced);
        if self.fwd_cnt != self.announced && in_flight_as_known >= CONN_BUF / 2 {
            self.owed |= OWE_CREDIT_UPDATE;
        }
    }

    /// The guest asked for our credit.
    pub fn credit_asked(&mut self) {
        self.owed |= OWE_CREDIT_UPDATE;
    }

    /// The next control packet owed: (op, flags), and it is no longer owed.
    pub fn take_owed(&mut self) -> Option<(u16, u32)> {
        let order = [
            (OWE_RST, OP_RST),
            (OWE_REQUEST, OP_REQUEST),
            (OWE_RESPONSE, OP_RESPONSE),
            (OWE_CREDIT_UPDATE, OP_CREDIT_UPDATE),
            (OWE_CREDIT_REQUEST, OP_CREDIT_REQUEST),
            (OWE_SHUTDOWN, OP_SHUTDOWN),
        ];
        let (bit, op) = order.into_iter().find(|(bit, _)| self.owed & bit != 0)?;
        self.owed &= !bit;
        let flags = if op == OP_SHUTDOWN {
            self.shutdown_flags
        } else {
            0
        };
        Some((op, flags))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().expect("pair");
        a.set_nonblocking(true).expect("nonblocking");
        let c = Conn::new(OwnedFd::from(a), 1 << 30, 5000, State::Established);
        (c, b)
    }

    #[test]
    fn guest_data_beyond_the_announced_buffer_is_a_violation() {
        let (mut c, host) = pair();
        // The host reads nothing: the socket's own buffer fills first,
        // then ours, up to CONN_BUF.
        let chunk = vec![7u8; 4096];
        let mut violated = false;
        for _ in 0..10_000 {
            match c.take_guest_data(&chunk) {
                Ok(()) => {}
                Err(ConnError::CreditViolation) => {
                    violated = true;
                    break;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        assert!(violated, "a guest ignoring its credit is caught");
        assert!(c.buffered() <= CONN_BUF as usize);
        drop(host);
    }

    #[test]
    fn the_host_taking_data_frees_credit_and_owes_an_update() {
        let (mut c, mut host) = pair();
        let chunk = vec![1u8; 16 << 10];
        // The guest hears our fwd_cnt, then fills the socket and half of
        // our buffer.
        let hdr = c.header(3, OP_RW, 0, 0);
        while c.buffered() < (CONN_BUF / 2) as usize {
            c.take_guest_data(&chunk).expect("within credit");
        }
        c.owed = 0;
        assert_eq!(hdr.buf_alloc, CONN_BUF);
        let mut sink = vec![0u8; 1 << 20];
        use std::io::Read;
        host.set_nonblocking(true).expect("nonblocking");
        while host.read(&mut sink).is_ok() {}
        c.flush().expect("flush");
        assert_eq!(c.buffered(), 0);
        assert!(c.owed & OWE_CREDIT_UPDATE != 0, "the guest hears of it");
    }

    #[test]
    fn data_waits_for_credit_and_asks_for_it_once() {
        let (mut c, _host) = pair();
        c.host_readable = true;
        assert_eq!(c.credit(), 0);
        assert!(!c.can_send_data());
        assert!(c.want_credit());
        assert!(!c.want_credit(), "asked once");
        let hdr = Hdr {
            buf_alloc: 65536,
            fwd_cnt: 0,
            ..Hdr::default()
        };
        c.peer_credit_from(&hdr);
        assert!(c.can_send_data());
        c.sent(65536);
        assert_eq!(c.credit(), 0);
        assert_eq!(c.take_owed(), Some((OP_CREDIT_REQUEST, 0)));
        assert_eq!(c.take_owed(), None);
    }
}

/// The longest `CONNECT <port>\n` line a host client may send.
pub const MAX_LINE: usize = 32;

/// What the first bytes a host client sent say, as far as they go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// No newline yet (and room for more).
    Partial,
    /// `CONNECT <port>\n`, `len` bytes with the newline.
    Connect { port: u32, len: usize },
    /// Anything else.
    Bad,
}

/// Reads `CONNECT <port>\n` (Firecracker's hybrid vsock protocol) from the
/// start of `bytes`.
pub fn parse_line(bytes: &[u8]) -> Line {
    let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
        return if bytes.len() < MAX_LINE {
            Line::Partial
        } else {
            Line::Bad
        };
    };
    let text = std::str::from_utf8(&bytes[..end]).unwrap_or("");
    let port = text
        .strip_prefix("CONNECT ")
        .map(|p| p.trim_end_matches('\r'))
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse::<u32>().ok());
    match port {
        Some(port) => Line::Connect { port, len: end + 1 },
        None => Line::Bad,
    }
}

#[cfg(test)]
mod line_tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(
            parse_line(b"CONNECT 5000\n"),
            Line::Connect {
                port: 5000,
                len: 13
            }
        );
        assert_eq!(
            parse_line(b"CONNECT 52\r\nhello"),
            Line::Connect { port: 52, len: 12 }
        );
        assert_eq!(parse_line(b"CONNECT 50"), Line::Partial);
        assert_eq!(parse_line(b""), Line::Partial);
        for bad in [
            &b"connect 5000\n"[..],
            b"CONNECT\n",
            b"CONNECT -1\n",
            b"CONNECT 99999999999\n",
            b"CONNECT 5000 6000\n",
            b"GET / HTTP/1.1\n",
        ] {
            assert_eq!(
                parse_line(bad),
                Line::Bad,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_line(&[b'C'; MAX_LINE]),
            Line::Bad,
            "no newline in time"
        );
    }
}
