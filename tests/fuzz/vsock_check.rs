//! The vsock target's host side and checks ([`crate::vsock`]): host
//! clients writing, reading and closing, and after every operation the
//! packets the device put in receive buffers, read and held to the spec:
//! well-formed headers, payloads within the credit the guest announced,
//! host data delivered byte for byte and guest data reaching the host
//! byte for byte.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;

use hearth::virtio::vsock::stats::VsockCounts;
use hearth::virtio::vsock::MAX_CONNECTIONS;
use vm_memory::{Bytes, GuestAddress};

use crate::vsock::TALLY;
use crate::vsock_model::*;
use crate::vsock_rig::{Key, Rig, RX, TX};

/// Non-blocking `recv` with `MSG_PEEK`: the bytes waiting, 0 at the end.
fn peek(s: &std::os::unix::net::UnixStream, buf: &mut [u8]) -> std::io::Result<usize> {
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT;
    // SAFETY: `buf` is valid for writes of its length for the call.
    let n = unsafe { libc::recv(s.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Byte `at` of what the guest sent on `k` after answering the host.
fn guest_byte(k: &Key, mut at: u64) -> Option<u8> {
    for &(fill, len) in &k.stream[..k.nstream] {
        if at < u64::from(len) {
            return Some(payload_byte(fill, at as usize));
        }
        at -= u64::from(len);
    }
    None
}

impl Rig {
    /// Which host client (or, from 128 on, accepted connection) `pick`
    /// names, of those there are: its index.
    fn host_index(&self, pick: u8) -> Option<usize> {
        fn nth<T>(slots: &[Option<T>], n: usize) -> Option<usize> {
            let count = slots.iter().filter(|s| s.is_some()).count();
            let n = n.checked_rem(count)?;
            slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.is_some())
                .nth(n)
                .map(|(i, _)| i)
        }
        let n = usize::from(pick % 128);
        match pick {
            0..128 => nth(&self.clients, n),
            128.. => nth(&self.accepted, n),
        }
    }

    /// Host client (or, from 128 on, accepted connection) `pick`.
    fn host_stream(&self, pick: u8) -> Option<(&std::os::unix::net::UnixStream, Option<usize>)> {
        let i = self.host_index(pick)?;
        if pick < 128 {
            let c = self.clients[i].as_ref()?;
            Some((&c.stream, Some(i)))
        } else {
            Some((self.accepted[i].as_ref()?, None))
        }
    }

    /// The host writes `len` bytes on a connection.
    pub fn host_write(&mut self, pick: u8, len: u16) {
        let n = usize::from(len);
        let Some((_, client)) = self.host_stream(pick) else {
            return;
        };
        let seed = client.and_then(|i| self.clients[i].as_ref().map(|c| (c.seed, c.written)));
        for (i, b) in self.scratch[..n].iter_mut().enumerate() {
            *b = match seed {
                Some((seed, from)) => host_byte(seed, from + i as u64),
                None => i as u8,
            };
        }
        let Some((stream, _)) = self.host_stream(pick) else {
            return;
        };
        let wrote = (&*stream).write(&self.scratch[..n]).unwrap_or(0);
        if let Some(c) = client.and_then(|i| self.clients[i].as_mut()) {
            c.written += wrote as u64;
        }
    }

    /// The host reads what a connection has; a client's bytes are what
    /// the guest sent it.
    pub fn host_read(&mut self, pick: u8) {
        // Taken out for the read (no allocation: an empty vector).
        let mut scratch = std::mem::take(&mut self.scratch);
        self.host_read_into(pick, &mut scratch);
        self.scratch = scratch;
    }

    fn host_read_into(&mut self, pick: u8, scratch: &mut [u8]) {
        let Some((stream, client)) = self.host_stream(pick) else {
            return;
        };
        let mapped = client
            .and_then(|i| self.clients[i].as_ref())
            .filter(|c| !c.dead && c.host_port.is_some());
        if client.is_some() && mapped.is_none() {
            // Its OK line is not there yet: its data is not either.
            return;
        }
        let n = match (&*stream).read(&mut scratch[..MAX_PAYLOAD]) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
            Err(_) => 0,
        };
        let Some(c) = client.and_then(|i| self.clients[i].as_ref()) else {
            return;
        };
        let (host, guest, from) = (c.host_port.unwrap_or(0), c.guest_port, c.read);
        let key = self.keys[..self.nkeys]
            .iter()
            .find(|k| (k.host, k.guest) == (host, guest));
        if let Some(k) = key {
            for (i, &b) in scratch[..n].iter().enumerate() {
                let at = from + i as u64;
                match guest_byte(k, at) {
                    // More than the model keeps of the key: not followed.
                    None if k.nstream == k.stream.len() => break,
                    want => assert_eq!(Some(b), want, "byte {at} the host read on {host}:{guest}"),
                }
            }
            TALLY.add_n("bytes to the host", n as u64);
        }
        if let Some(c) = client.and_then(|i| self.clients[i].as_mut()) {
            c.read += n as u64;
        }
    }

    /// The host closes its end, or only its writing half.
    pub fn host_close(&mut self, pick: u8, whole: bool) {
        if whole {
            match (pick, self.host_index(pick)) {
                (0..128, Some(i)) => self.clients[i] = None,
                (128.., Some(i)) => self.accepted[i] = None,
                _ => {}
            }
        } else if let Some((s, _)) = self.host_stream(pick) {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
    }

    /// Connections the device made to the host listeners.
    fn accept_all(&mut self) {
        for l in &self.listeners {
            while let Ok((s, _)) = l.accept() {
                s.set_nonblocking(true).expect("non-blocking");
                if let Some(slot) = self.accepted.iter_mut().find(|a| a.is_none()) {
                    *slot = Some(s);
                }
            }
        }
    }

    /// Takes each waiting client's `OK <port>` line, and nothing after it.
    fn take_ok_lines(&mut self) {
        for c in self.clients.iter_mut().flatten() {
            if c.dead || c.host_port.is_some() {
                continue;
            }
            let mut line = [0u8; 32];
            let n = match peek(&c.stream, &mut line) {
                Ok(0) => {
                    c.dead = true;
                    continue;
                }
                Ok(n) => n,
                Err(_) => continue,
            };
            let text = &line[..n];
            let prefix = text.len().min(3);
            assert_eq!(
                &text[..prefix],
                &b"OK "[..prefix],
                "a host client's first bytes"
            );
            let Some(end) = text.iter().position(|&b| b == b'\n') else {
                continue;
            };
            let port = std::str::from_utf8(&text[3..end])
                .ok()
                .and_then(|p| p.parse::<u32>().ok())
                .expect("OK <port>");
            assert!(port >= FIRST_HOST_PORT, "a host port below 2^30: {port}");
            let _ = (&c.stream).read(&mut line[..=end]);
            c.host_port = Some(port);
            TALLY.add("host connections");
        }
    }

    /// After every operation.
    pub fn check(&mut self) {
        self.accept_all();
        self.take_ok_lines();
        let counts = VsockCounts::read(&self.shared.counters);
        assert!(
            counts.open <= MAX_CONNECTIONS as u64,
            "{} connections open",
            counts.open
        );
        assert!(
            counts.open <= self.attempts,
            "{} connections open of {} tried",
            counts.open,
            self.attempts
        );
        if self.sane {
            self.read_packets();
        } else {
            self.used_within(RX);
        }
        self.used_within(TX);
    }

    /// Used elements of queue `q` within their chains (none written on
    /// the transmit queue).
    fn used_within(&mut self, q: usize) {
        if !self.apart {
            return;
        }
        let idx = self.used_idx(q);
        let size = self.b.rings[q].size;
        for k in 0..idx.wrapping_sub(self.seen[q]).min(size) {
            let (id, len) = self.b.rings[q].used_elem(&self.b.mem, self.seen[q].wrapping_add(k));
            assert!(id < u32::from(size), "a used element with id {id}");
            let room = if q == RX { self.writable.most } else { 0 };
            assert!(
                u64::from(len) <= room,
                "a used length of {len} on queue {q} (room {room})"
            );
        }
        self.seen[q] = idx;
    }

    /// The packets the device put in receive buffers since the last look.
    fn read_packets(&mut self) {
        let idx = self.used_idx(RX);
        while self.seen[RX] != idx {
            let (id, len) = self.b.rings[RX].used_elem(&self.b.mem, self.seen[RX]);
            let buf = self.bufs.front().expect("a used buffer the driver posted");
            assert_eq!(id, u32::from(buf.head), "receive buffers used in order");
            assert!(!buf.bad, "a buffer with no room for a header was used");
            assert!(
                len <= buf.len && len as usize >= HDR,
                "a used length of {len} in {}",
                buf.len
            );
            let mut raw = [0u8; HDR];
            self.b
                .mem
                .read_slice(&mut raw, GuestAddress(buf.addr))
                .expect("in RAM");
            let hdr = Hdr::read(&raw);
            self.check_packet(&hdr, len, buf.addr + HDR as u64);
            self.bufs.pop();
            self.rx_descs -= buf.descs;
            self.seen[RX] = self.seen[RX].wrapping_add(1);
            TALLY.add("packets to the guest");
        }
    }

    fn check_packet(&mut self, hdr: &Hdr, used: u32, payload_at: u64) {
        assert_eq!(
            (hdr.src_cid, hdr.dst_cid, hdr.type_),
            (HOST_CID, CID, TYPE_STREAM),
            "{hdr:?}"
        );
        assert_eq!(
            used as usize,
            HDR + hdr.len as usize,
            "the used length of {hdr:?}"
        );
        assert!(
            (OP_REQUEST..=OP_CREDIT_REQUEST).contains(&hdr.op),
            "{hdr:?}"
        );
        // An RST for a packet of no connection has no buffer to announce.
        let announced = hdr.buf_alloc == CONN_BUF || (hdr.op == OP_RST && hdr.buf_alloc == 0);
        assert!(announced, "the buffer announced in {hdr:?}");
        let flags_ok = match hdr.op {
            OP_SHUTDOWN => (1..=3).contains(&hdr.flags),
            _ => hdr.flags == 0,
        };
        assert!(flags_ok, "the flags of {hdr:?}");
        assert!(hdr.op == OP_RW || hdr.len == 0, "a payload in {hdr:?}");
        let (host, guest) = (hdr.src_port, hdr.dst_port);
        match hdr.op {
            OP_REQUEST => {
                assert!(
                    host >= FIRST_HOST_PORT && GUEST_PORTS.contains(&guest),
                    "{hdr:?}"
                );
                if self.nlearned < self.learned.len() {
                    self.learned[self.nlearned] = (host, guest);
                    self.nlearned += 1;
                }
                if let Some(k) = self.key(host, guest) {
                    (k.sent, k.received, k.responded, k.nstream) = (0, 0, false, 0);
                }
            }
            OP_RESPONSE => {
                assert!(LISTEN_PORTS[..LISTENING].contains(&host), "{hdr:?}");
                if let Some(k) = self.key(host, guest) {
                    (k.sent, k.received) = (0, 0);
                }
            }
            OP_RW => self.check_data(hdr, payload_at),
            _ => {}
        }
    }

    /// Data to the guest: within its credit, and a host client's bytes.
    fn check_data(&mut self, hdr: &Hdr, at: u64) {
        let (host, guest, len) = (hdr.src_port, hdr.dst_port, hdr.len);
        assert!(len > 0 && len as usize <= MAX_PAYLOAD, "{hdr:?}");
        let Some(k) = self.key(host, guest) else {
            return;
        };
        let within = k
            .before
            .into_iter()
            .chain(k.cands[..k.ncands].iter().copied())
            .any(|(buf_alloc, fwd_cnt)| len <= credit(buf_alloc, fwd_cnt, k.sent));
        assert!(
            within,
            "{len} bytes to guest port {guest} beyond its credit: {} sent, announced {:?} then {:?}",
            k.sent,
            k.before,
            &k.cands[..k.ncands]
        );
        k.sent = k.sent.wrapping_add(len);
        k.received = k.received.wrapping_add(len);
        TALLY.add_n("bytes to the guest", u64::from(len));
        let client = self
            .clients
            .iter_mut()
            .flatten()
            .find(|c| !c.dead && c.host_port == Some(host) && c.guest_port == guest);
        let Some(c) = client else {
            return;
        };
        let n = len as usize;
        let bytes = &mut self.scratch[..n];
        self.b
            .mem
            .read_slice(bytes, GuestAddress(at))
            .expect("in RAM");
        for (i, &b) in bytes.iter().enumerate() {
            let want = host_byte(c.seed, c.delivered + i as u64);
            assert_eq!(
                b,
                want,
                "byte {} host client {host} sent",
                c.delivered + i as u64
            );
        }
        c.delivered += n as u64;
        assert!(
            c.delivered <= c.written,
            "the guest got more than the host wrote"
        );
    }
}
