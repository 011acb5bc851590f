//! The network device's handler on the VM's device thread: frames from the
//! transmit queue to the tap, frames from the tap into receive buffers.
//!
//! Receiving is driven by the tap's fd, registered edge-triggered: an edge
//! marks the tap readable, and frames are read only while the guest has a
//! receive buffer for them. With none, the frame stays in the tap (its
//! queue holds it, or drops it when full and counts it there), the handler
//! waits for the driver to post buffers, and nothing spins.
//!
//! Both directions go through their rate limiter; a refused frame stays
//! where it is (its chain put back, or the frame read from the tap kept
//! in the one receive buffer) and a timerfd wakes the handler when the
//! limiter will let it go. A chain the queue reader refuses marks the
//! device NEEDS_RESET; a frame that is merely wrong (too short, too long,
//! a header asking for what was not negotiated) is dropped and counted.

use crate::virtio::watch;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, EventSet};

use super::header::{check_tx, tx_frame_len, NetHdr, TxDrop, MAX_PACKET_LEN};
use super::tap::{NetBackend, VNET_HDR_LEN};
use super::*;
use crate::virtio::queue::{read_from, write_to};
use crate::virtio::{QueueError, QueueHandler, Queues, HANDLER_TAG};

const TAG_TAP: u32 = HANDLER_TAG;
const TAG_TIMER: u32 = HANDLER_TAG + 1;
const TAG_LIMITS: u32 = HANDLER_TAG + 2;

/// `TUN_F_*` offloads for the guest features acked.
fn tap_offloads(acked: u64) -> u32 {
    let has = |bit: u32| acked & (1 << bit) != 0;
    let mut flags = 0;
    if has(F_GUEST_CSUM) {
        flags |= libc::TUN_F_CSUM;
        if has(F_GUEST_TSO4) {
            flags |= libc::TUN_F_TSO4;
        }
        if has(F_GUEST_TSO6) {
            flags |= libc::TUN_F_TSO6;
        }
    }
    flags
}

pub(super) struct NetHandler {
    backend: Arc<dyn NetBackend>,
    shared: Arc<NetShared>,
    acked: u64,
    /// One frame read from the tap (header first), not yet delivered.
    rx_buf: Vec<u8>,
    rx_pending: Option<usize>,
    /// The last edge said the tap has frames, and it has not said "would
    /// block" since.
    tap_readable: bool,
    tx_buf: Vec<u8>,
    /// A limiter held a direction back: it waits for the timer.
    rx_throttled: bool,
    tx_throttled: bool,
    /// When the timer fires (limiter clock, ns), if armed.
    timer_due: Option<u64>,
}

impl NetHandler {
    pub(super) fn new(backend: Arc<dyn NetBackend>, shared: Arc<NetShared>, acked: u64) -> Self {
        // Both buffers have a fixed size, whatever the guest does.
        NetHandler {
            backend,
            shared,
            acked,
            rx_buf: vec![0; MAX_PACKET_LEN],
            rx_pending: None,
            tap_readable: true,
            tx_buf: vec![0; MAX_PACKET_LEN],
            rx_throttled: false,
            tx_throttled: false,
            timer_due: None,
        }
    }

    fn count(&self, f: impl FnOnce(&NetCounters) -> &std::sync::atomic::AtomicU64, n: u64) {
        NetCounters::add(f(&self.shared.counters), n);
    }

    /// Asks `dir`'s limiter for a frame of `bytes`; when it says no, arms
    /// the timer for when it will say yes.
    fn admit(&mut self, dir: Direction, bytes: usize) -> bool {
        let now = self.shared.now_ns();
        let limiter = match dir {
            Direction::Rx => &self.shared.rx_limiter,
            Direction::Tx => &self.shared.tx_limiter,
        };
        let wait = {
            let mut l = lock(limiter);
            if l.try_consume(bytes as u64, now) {
                match self.shared.share.get() {
                    None => return true,
                    Some(share) if share.try_take(bytes as u64, 1) => return true,
                    Some(_) => {
                        // The host budget said no: the share runtime's
                        // next refill wakes the handler (`NetShared::wake`).
                        l.refund(bytes as u64);
                        drop(l);
                        self.hold(dir);
                        return false;
                    }
                }
            }
            l.wait_ns(bytes as u64, now)
        };
        self.hold(dir);
        // The timer serves both directions: keep the earlier wake-up.
        let due = now.saturating_add(wait);
        if self.timer_due.is_none_or(|d| due < d) {
            self.timer_due = Some(due);
            if let Err(e) = self.shared.timer.arm(Duration::from_nanos(wait)) {
                log::warn!("net: cannot arm the rate limiter's timer: {e}");
            }
        }
        false
    }

    fn hold(&mut self, dir: Direction) {
        match dir {
            Direction::Rx => self.rx_throttled = true,
            Direction::Tx => self.tx_throttled = true,
        }
    }

    /// Sends every frame the guest has queued (or until a limiter says
    /// wait). Returns whether chains went back to the driver.
    fn transmit(&mut self, q: &mut Queues) -> Result<bool, QueueError> {
        let mut used = false;
        while !self.tx_throttled {
            let Some(chain) = q.pop(TX_QUEUE)? else {
                break;
            };
            match tx_frame_len(chain.readable_len(), chain.writable_len()) {
                Ok(frame_len) => {
                    if !self.admit(Direction::Tx, frame_len) {
                        q.undo_pop(TX_QUEUE, chain);
                        break;
                    }
                    let n = VNET_HDR_LEN + frame_len;
                    read_from(&q.mem, chain.readable(), 0, &mut self.tx_buf[..n]).map_err(
                        |detail| QueueError::Chain {
                            queue: TX_QUEUE,
                            head: chain.head,
                            detail,
                        },
                    )?;
                    self.send_frame(n);
                }
                Err(drop) => self.count_tx_drop(drop),
            }
            q.add_used(TX_QUEUE, chain, 0)?;
            used = true;
        }
        Ok(used)
    }

    fn count_tx_drop(&self, drop: TxDrop) {
        let c = &self.shared.counters;
        let counter = match drop {
            TxDrop::Malformed => &c.tx_dropped_malformed,
            TxDrop::Oversized => &c.tx_dropped_oversized,
            TxDrop::BadHeader => &c.tx_dropped_bad_header,
        };
        NetCounters::add(counter, 1);
    }

    /// Checks the header of the frame in `tx_buf[..n]` and writes it to the tap.
    fn send_frame(&mut self, n: usize) {
        let mut hdr = [0u8; VNET_HDR_LEN];
        hdr.copy_from_slice(&self.tx_buf[..VNET_HDR_LEN]);
        let frame_len = n - VNET_HDR_LEN;
        if let Err(drop) = check_tx(&NetHdr::parse(&hdr), frame_len, self.acked) {
            return self.count_tx_drop(drop);
        }
        // num_buffers means nothing on the way out.
        self.tx_buf[10..12].fill(0);
        match self.backend.send(&self.tx_buf[..n]) {
            Ok(_) => {
                self.count(|c| &c.tx_frames, 1);
                self.count(|c| &c.tx_bytes, frame_len as u64);
            }
            Err(e) => {
                self.count(|c| &c.tx_tap_errors, 1);
                log::debug!("net: the tap refused a frame of {frame_len} bytes: {e}");
            }
        }
    }

    /// Reads the next frame from the tap into `rx_buf`, unless one is
    /// pending already. False when the tap has none.
    fn fill_rx_buf(&mut self) -> bool {
        while self.rx_pending.is_none() {
            if !self.tap_readable {
                return false;
            }
            match self.backend.recv(&mut self.rx_buf) {
                Ok(n) if n < VNET_HDR_LEN + header::ETH_HLEN => {
                    self.count(|c| &c.rx_dropped_short, 1);
                }
                Ok(n) => self.rx_pending = Some(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.tap_readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // A tap that fails keeps failing: wait for the next edge.
                    self.count(|c| &c.rx_tap_errors, 1);
                    log::warn!("net: cannot read the tap: {e}");
                    self.tap_readable = false;
                }
            }
        }
        true
    }

    /// Moves frames from the tap into receive buffers while both exist
    /// and the limiter lets them. Returns whether chains went back.
    fn receive(&mut self, q: &mut Queues) -> Result<bool, QueueError> {
        let mut used = false;
        while !self.rx_throttled && self.fill_rx_buf() {
            let n = self
                .rx_pending
                .expect("fill_rx_buf returned true: a frame is pending");
            let Some(chain) = q.pop(RX_QUEUE)? else {
                self.count(|c| &c.rx_no_buffer, 1);
                break;
            };
            if !chain.readable().is_empty() {
                return Err(QueueError::Chain {
                    queue: RX_QUEUE,
                    head: chain.head,
                    detail: "a device-readable buffer on the receive queue".into(),
                });
            }
            if chain.writable_len() < n as u64 {
                // This frame can never fit this buffer: drop the frame,
                // keep the buffer for the next one.
                self.count(|c| &c.rx_dropped_too_big, 1);
                self.rx_pending = None;
                q.undo_pop(RX_QUEUE, chain);
                continue;
            }
            let frame_len = n - VNET_HDR_LEN;
            if !self.admit(Direction::Rx, frame_len) {
                q.undo_pop(RX_QUEUE, chain);
                break;
            }
            // One buffer per frame: num_buffers is 1.
            self.rx_buf[10..12].copy_from_slice(&1u16.to_le_bytes());
            write_to(&q.mem, chain.writable(), 0, &self.rx_buf[..n]).map_err(|detail| {
                QueueError::Chain {
                    queue: RX_QUEUE,
                    head: chain.head,
                    detail,
                }
            })?;
            self.rx_pending = None;
            self.count(|c| &c.rx_frames, 1);
            self.count(|c| &c.rx_bytes, frame_len as u64);
            q.add_used(RX_QUEUE, chain, n as u32)?;
            used = true;
        }
        Ok(used)
    }

    /// Both directions, one interrupt for all.
    fn run(&mut self, q: &mut Queues) -> Result<(), QueueError> {
        let sent = self.transmit(q)?;
        let received = self.receive(q)?;
        if sent || received {
            q.signal_used();
        }
        Ok(())
    }
}

impl QueueHandler for NetHandler {
    fn start(&mut self, q: &mut Queues, ops: &mut EventOps) -> Result<(), QueueError> {
        let offloads = tap_offloads(self.acked);
        self.backend.set_offload(offloads).map_err(|e| {
            QueueError::Device(format!(
                "cannot set the tap's offloads to {offloads:#x}: {e}"
            ))
        })?;
        watch(ops, &*self.backend, TAG_TAP, true, "the tap")?;
        watch(ops, &self.shared.timer, TAG_TIMER, false, "the timer")?;
        let limits = self.shared.limits_changed.eventfd();
        watch(ops, limits, TAG_LIMITS, false, "the limiter mailbox")?;
        self.shared.active.store(true, Ordering::Release);
        self.run(q)
    }

    fn queue_ready(&mut self, _index: usize, q: &mut Queues) -> Result<(), QueueError> {
        self.run(q)
    }

    fn event(
        &mut self,
        tag: u32,
        _events: EventSet,
        q: &mut Queues,
        _ops: &mut EventOps,
    ) -> Result<(), QueueError> {
        match tag {
            TAG_TAP => self.tap_readable = true,
            TAG_TIMER => {
                self.shared.timer.clear();
                self.timer_due = None;
                self.rx_throttled = false;
                self.tx_throttled = false;
            }
            TAG_LIMITS => {
                let _ = self.shared.limits_changed.take();
                self.rx_throttled = false;
                self.tx_throttled = false;
            }
            _ => return Ok(()),
        }
        self.run(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offloads_follow_the_guest_features() {
        let f = |bits: &[u32]| bits.iter().fold(0u64, |f, b| f | (1 << b));
        assert_eq!(tap_offloads(0), 0);
        assert_eq!(tap_offloads(f(&[F_GUEST_TSO4])), 0, "TSO needs checksums");
        assert_eq!(tap_offloads(f(&[F_GUEST_CSUM])), libc::TUN_F_CSUM);
        assert_eq!(
            tap_offloads(f(&[F_GUEST_CSUM, F_GUEST_TSO4, F_GUEST_TSO6])),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        );
    }
}
