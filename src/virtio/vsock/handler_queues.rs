//! The vsock handler's queues and events: packets from the guest (the
//! transmit queue), packets to it (the receive queue), host socket edges
//! and deadlines.

use super::*;
use crate::virtio::watch;

/// What goes into the next receive buffer.
enum Next {
    Stray,
    Conn(usize),
}

fn bad_chain(queue: usize, chain: &Chain, detail: &str) -> QueueError {
    QueueError::Chain {
        queue,
        head: chain.head,
        detail: detail.into(),
    }
}

impl VsockHandler {
    /// Every packet the guest queued. Malformed packets are dropped (and
    /// their connection, if any, reset); a chain the reader refuses needs
    /// a reset of the device.
    pub(super) fn transmit(
        &mut self,
        q: &mut Queues,
        ops: &mut EventOps,
    ) -> Result<bool, QueueError> {
        let mut used = false;
        while let Some(chain) = q.pop(TX_QUEUE)? {
            self.packet_take_guest_data(&chain, q, ops)?;
            q.add_used(TX_QUEUE, chain, 0)?;
            used = true;
        }
        Ok(used)
    }

    fn packet_take_guest_data(
        &mut self,
        chain: &Chain,
        q: &Queues,
        ops: &mut EventOps,
    ) -> Result<(), QueueError> {
        let len = chain.readable_len();
        if !chain.writable().is_empty() || len < HDR_LEN as u64 {
            bump(&self.counters().dropped, 1);
            return Ok(());
        }
        let mut raw = [0u8; HDR_LEN];
        read_from(&q.mem, chain.readable(), 0, &mut raw)
            .map_err(|d| bad_chain(TX_QUEUE, chain, &d))?;
        let hdr = Hdr::parse(&raw);
        let payload = hdr.len as usize;
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.src_cid != self.cid || hdr.dst_cid != HOST_CID {
            bump(&self.counters().dropped, 1);
            return Ok(());
        }
        if payload > MAX_PAYLOAD || len < (HDR_LEN + payload) as u64 {
            bump(&self.counters().dropped, 1);
            match self.by_key.get(&key).copied() {
                Some(slot) => self.reset(slot, "a malformed packet", ops),
                None => self.owe_rst(hdr.reset_reply()),
            }
            return Ok(());
        }
        read_from(
            &q.mem,
            chain.readable(),
            HDR_LEN as u64,
            &mut self.tx_buf[..payload],
        )
        .map_err(|d| bad_chain(TX_QUEUE, chain, &d))?;
        bump(&self.counters().tx_packets, 1);
        bump(&self.counters().tx_bytes, payload as u64);
        if hdr.type_ != TYPE_STREAM {
            if hdr.op != OP_RST {
                self.owe_rst(hdr.reset_reply());
            }
            return Ok(());
        }
        match self.by_key.get(&key).copied() {
            Some(slot) => self.on_conn_packet(slot, &hdr, payload, ops),
            None if hdr.op == OP_REQUEST => self.guest_connect(&hdr, ops),
            None if hdr.op == OP_RST => {}
            None => self.owe_rst(hdr.reset_reply()),
        }
        Ok(())
    }

    fn on_conn_packet(&mut self, slot: usize, hdr: &Hdr, payload: usize, ops: &mut EventOps) {
        let c = self.slots[slot].as_mut().expect("by_key names live slots");
        c.peer_credit_from(hdr);
        let result: Result<(), &str> = match (hdr.op, c.state) {
            (OP_RESPONSE, State::Requested { .. }) => {
                c.state = State::Established;
                c.host_readable = true;
                bump(&self.shared.counters.host_connections, 1);
                let line = format!("OK {}\n", c.local_port);
                match send(&c.fd, line.as_bytes()) {
                    Ok(n) if n == line.len() => Ok(()),
                    _ => Err("the host socket did not take the OK line"),
                }
            }
            (OP_RW, State::Established | State::Closing { .. }) => {
                match c.take_guest_data(&self.tx_buf[..payload]) {
                    Ok(()) => Ok(()),
                    Err(ConnError::CreditViolation) => {
                        bump(&self.shared.counters.credit_violations, 1);
                        Err("the guest sent beyond its credit")
                    }
                    Err(ConnError::Host(_)) => Err("the host socket failed"),
                }
            }
            (OP_CREDIT_UPDATE, _) => Ok(()),
            (OP_CREDIT_REQUEST, _) => {
                c.credit_asked();
                Ok(())
            }
            (OP_SHUTDOWN, _) => {
                c.peer_shutdown |= hdr.flags & SHUTDOWN_BOTH;
                Ok(())
            }
            (OP_RST, _) => {
                self.remove(slot, ops);
                return;
            }
            _ => Err("an unexpected packet"),
        };
        if let Err(why) = result {
            return self.reset(slot, why, ops);
        }
        self.after_guest(slot, ops);
    }

    /// What follows a guest packet or a host socket becoming writable:
    /// buffered data flushed, the host told of the guest's shutdown, a
    /// connection both sides are done with closed.
    fn after_guest(&mut self, slot: usize, ops: &mut EventOps) {
        let Some(c) = self.slots[slot].as_mut() else {
            return;
        };
        if c.flush().is_err() {
            return self.reset(slot, "the host socket failed", ops);
        }
        if c.buffered() == 0 && c.peer_shutdown & SHUTDOWN_SEND != 0 {
            // SAFETY: shutdown(2) on a socket we own; no memory is passed.
            unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_WR) };
        }
        let done = c.peer_shutdown == SHUTDOWN_BOTH
            || (c.peer_shutdown & SHUTDOWN_SEND != 0 && c.host_eof);
        if done {
            if c.buffered() == 0 {
                // Both ways are over: RST ends it (virtio 1.2, 5.10.6.6).
                return self.reset(slot, "closed", ops);
            }
            if !matches!(c.state, State::Closing { .. }) {
                let deadline = Instant::now() + CLOSE_TIMEOUT;
                c.state = State::Closing { deadline };
                self.deadline(deadline);
            }
        }
        self.enqueue(slot);
    }

    /// What goes into the next receive buffer, if anything.
    fn next(&mut self) -> Option<Next> {
        if !self.stray.is_empty() {
            return Some(Next::Stray);
        }
        while let Some(&slot) = self.ready.front() {
            match self.slots[slot].as_mut() {
                Some(c) if c.wants_rx() => return Some(Next::Conn(slot)),
                Some(c) => c.queued = false,
                None => {}
            }
            self.ready.pop_front();
        }
        None
    }

    /// Fills receive buffers while there is something for the guest.
    pub(super) fn deliver(
        &mut self,
        q: &mut Queues,
        ops: &mut EventOps,
    ) -> Result<bool, QueueError> {
        let mut used = false;
        while let Some(next) = self.next() {
            let Some(chain) = q.pop(RX_QUEUE)? else {
                break;
            };
            if !chain.readable().is_empty() || chain.writable_len() < HDR_LEN as u64 {
                return Err(bad_chain(
                    RX_QUEUE,
                    &chain,
                    "a receive buffer that is not device-writable or holds no header",
                ));
            }
            let written = match next {
                Next::Stray => {
                    let hdr = self.stray.pop_front().expect("next() saw one");
                    self.write_packet(q, &chain, &hdr, 0)?;
                    Some(HDR_LEN)
                }
                Next::Conn(slot) => self.conn_packet(slot, q, &chain, ops)?,
            };
            match written {
                Some(n) => {
                    q.add_used(RX_QUEUE, chain, n as u32)?;
                    bump(&self.counters().rx_packets, 1);
                    used = true;
                }
                None => q.undo_pop(RX_QUEUE, chain),
            }
        }
        Ok(used)
    }

    fn write_packet(
        &mut self,
        q: &Queues,
        chain: &Chain,
        hdr: &Hdr,
        data: usize,
    ) -> Result<(), QueueError> {
        let bad = |d: String| bad_chain(RX_QUEUE, chain, &d);
        write_to(&q.mem, chain.writable(), 0, &hdr.to_bytes()).map_err(bad)?;
        write_to(
            &q.mem,
            chain.writable(),
            HDR_LEN as u64,
            &self.rx_buf[..data],
        )
        .map_err(bad)?;
        Ok(())
    }

    /// Connection `slot`'s next packet into `chain`: bytes written, or
    /// `None` if it had nothing after all (the chain is put back).
    fn conn_packet(
        &mut self,
        slot: usize,
        q: &Queues,
        chain: &Chain,
        ops: &mut EventOps,
    ) -> Result<Option<usize>, QueueError> {
        let cid = self.cid;
        let c = self.slots[slot].as_mut().expect("next() names live slots");
        // Rotate: the connection goes to the back of the line.
        self.ready.pop_front();
        c.queued = false;
        if let Some((op, flags)) = c.take_owed() {
            let hdr = c.header(cid, op, flags, 0);
            self.write_packet(q, chain, &hdr, 0)?;
            self.enqueue(slot);
            return Ok(Some(HDR_LEN));
        }
        let room = (chain.writable_len() as usize - HDR_LEN)
            .min(MAX_PAYLOAD)
            .min(c.credit() as usize);
        if room == 0 {
            // A receive buffer with room for a header only: it carries a
            // credit update (always allowed), so the ring moves on and the
            // data takes the next, larger buffer.
            let hdr = c.header(cid, OP_CREDIT_UPDATE, 0, 0);
            self.write_packet(q, chain, &hdr, 0)?;
            self.enqueue(slot);
            return Ok(Some(HDR_LEN));
        }
        match recv(&c.fd, &mut self.rx_buf[..room], false) {
            Ok(0) => {
                c.host_eof = true;
                c.shutdown_flags = if c.host_hup {
                    SHUTDOWN_BOTH
                } else {
                    SHUTDOWN_SEND
                };
                c.owed |= OWE_SHUTDOWN;
                if c.peer_shutdown & SHUTDOWN_SEND != 0 || c.host_hup {
                    let deadline = Instant::now() + CLOSE_TIMEOUT;
                    c.state = State::Closing { deadline };
                    self.deadline(deadline);
                }
                self.enqueue(slot);
                Ok(None)
            }
            Ok(n) => {
                let hdr = c.header(cid, OP_RW, 0, n as u32);
                c.sent(n as u32);
                self.write_packet(q, chain, &hdr, n)?;
                bump(&self.counters().rx_bytes, n as u64);
                self.enqueue(slot);
                Ok(Some(HDR_LEN + n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.host_readable = false;
                self.enqueue(slot);
                Ok(None)
            }
            Err(_) => {
                self.reset(slot, "the host socket failed", ops);
                Ok(None)
            }
        }
    }

    /// An edge on connection `slot`'s host socket.
    fn conn_event(&mut self, slot: usize, events: EventSet, ops: &mut EventOps) {
        let Some(c) = self.slots[slot].as_mut() else {
            return;
        };
        if events.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
            c.host_readable = true;
        }
        if events.contains(EventSet::HANG_UP) {
            c.host_hup = true;
        }
        if events.contains(EventSet::ERROR) {
            return self.reset(slot, "the host socket failed", ops);
        }
        match c.state {
            State::AwaitLine { .. } => self.read_line(slot, ops),
            _ => self.after_guest(slot, ops),
        }
    }

    /// Deadlines: late lines and answers, closes that do not finish.
    fn sweep(&mut self, ops: &mut EventOps) {
        self.shared.timer.clear();
        self.timer_due = None;
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for slot in 0..self.slots.len() {
            let Some(c) = self.slots[slot].as_ref() else {
                continue;
            };
            let due = match c.state {
                State::AwaitLine { deadline }
                | State::Requested { deadline }
                | State::Closing { deadline } => deadline,
                State::Established => continue,
            };
            if due <= now {
                if matches!(c.state, State::AwaitLine { .. } | State::Requested { .. }) {
                    bump(&self.counters().refused, 1);
                }
                self.reset(slot, "timed out", ops);
            } else {
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        if let Some(due) = next {
            self.deadline(due);
        }
    }

    /// Accepts, moves packets both ways, one interrupt for all.
    fn run(&mut self, q: &mut Queues, ops: &mut EventOps) -> Result<(), QueueError> {
        if self.listener_ready {
            self.accept_all(ops);
        }
        let sent = self.transmit(q, ops)?;
        let received = self.deliver(q, ops)?;
        if sent || received {
            q.signal_used();
        }
        Ok(())
    }
}

impl QueueHandler for VsockHandler {
    fn start(&mut self, q: &mut Queues, ops: &mut EventOps) -> Result<(), QueueError> {
        watch(
            ops,
            &self.listener,
            TAG_LISTENER,
            true,
            "the listening socket",
        )?;
        watch(ops, &self.shared.timer, TAG_TIMER, false, "the timer")?;
        self.shared.active.store(true, Ordering::Release);
        self.run(q, ops)
    }

    fn queue_ready(&mut self, _index: usize, _q: &mut Queues) -> Result<(), QueueError> {
        // Never called: the device thread calls `queue_ready_ops`.
        Ok(())
    }

    fn queue_ready_ops(
        &mut self,
        _index: usize,
        q: &mut Queues,
        ops: &mut EventOps,
    ) -> Result<(), QueueError> {
        self.run(q, ops)
    }

    fn event(
        &mut self,
        tag: u32,
        events: EventSet,
        q: &mut Queues,
        ops: &mut EventOps,
    ) -> Result<(), QueueError> {
        match tag {
            TAG_LISTENER => self.listener_ready = true,
            TAG_TIMER => self.sweep(ops),
            t if t >= TAG_CONN && ((t - TAG_CONN) as usize) < self.slots.len() => {
                self.conn_event((t - TAG_CONN) as usize, events, ops)
            }
            _ => return Ok(()),
        }
        self.run(q, ops)
    }
}

impl Drop for VsockHandler {
    fn drop(&mut self) {
        let open = self.slots.iter().filter(|s| s.is_some()).count() as u64;
        self.shared.counters.open.fetch_sub(open, Ordering::Relaxed);
    }
}
