//! The virtio-net device (virtio 1.2, section 5.1) on a host tap: one
//! receive and one transmit queue, the MAC and MTU in the configuration
//! space, checksum and TCP segmentation offloads passed through to the tap.
//!
//! - the front ([`Net`]): features, configuration space, activation;
//! - the handler (`handler.rs`): frames between the queues and the tap on
//!   the VM's device thread, the per-interface rate limiters;
//! - the tap (`tap.rs`) and the header checks (`header.rs`).
//!
//! What the monitor sees of an interface is a [`NetHandle`]: its counters,
//! its rate limiters (which `set-net` on the control socket changes), and
//! whether its driver has it running.

mod handler;
pub mod header;
pub mod stats;
pub mod tap;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use super::timer::Timer;
use super::{Mailbox, QueueHandler, VirtioDevice};
use crate::bus::{lock, lock_or_try};
use crate::config::{NetSpec, RateLimiterSpec};
use crate::glimpse::Glimpse;
use crate::ratelimit::{BucketUpdate, RateLimiter, RateLimiterStats};
use crate::share::SharedBucket;
pub use stats::NetStats;
pub use tap::{NetBackend, Tap, TapError};

pub const DEVICE_TYPE: u32 = 1;
/// Feature bits (5.1.3).
pub const F_CSUM: u32 = 0;
pub const F_GUEST_CSUM: u32 = 1;
pub const F_MTU: u32 = 3;
pub const F_MAC: u32 = 5;
pub const F_GUEST_TSO4: u32 = 7;
pub const F_GUEST_TSO6: u32 = 8;
pub const F_HOST_TSO4: u32 = 11;
pub const F_HOST_TSO6: u32 = 12;
/// Queue indices.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
const QUEUE_SIZE: u16 = 256;
/// The largest chain either queue may describe. A receive chain of
/// Linux's "big packets" mode is 18 pages; anything past 256 KiB is not a
/// network buffer.
const MAX_CHAIN_BYTES: u64 = 256 << 10;

/// Options of one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    pub mac: [u8; 6],
    pub mtu: Option<u16>,
}

/// What the handler counts, for statistics. Bytes are frame bytes (the
/// virtio-net header not included).
#[derive(Debug, Default)]
pub struct NetCounters {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Host frames dropped: longer than the guest's receive buffer.
    pub rx_dropped_too_big: AtomicU64,
    /// Host frames dropped: shorter than a header and an Ethernet header.
    pub rx_dropped_short: AtomicU64,
    /// Reads from the tap that failed (other than "nothing to read").
    pub rx_tap_errors: AtomicU64,
    /// Times a frame waited in the tap because the guest had no receive
    /// buffer (the frame is not lost; the tap keeps it).
    pub rx_no_buffer: AtomicU64,
    /// Guest frames dropped, by cause.
    pub tx_dropped_malformed: AtomicU64,
    pub tx_dropped_oversized: AtomicU64,
    pub tx_dropped_bad_header: AtomicU64,
    /// Guest frames the tap refused.
    pub tx_tap_errors: AtomicU64,
}

impl NetCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// What the front, its handlers and the monitor share.
pub struct NetShared {
    pub counters: NetCounters,
    rx_limiter: Mutex<RateLimiter>,
    tx_limiter: Mutex<RateLimiter>,
    /// Wakes the handler after a limiter change.
    limits_changed: Arc<Mailbox<()>>,
    /// Wakes the handler when a limiter lets traffic go again.
    timer: Timer,
    /// Time zero of the limiters' clock.
    epoch: Instant,
    /// Whether a handler serves the queues (the driver set DRIVER_OK and
    /// has not reset the device since).
    active: AtomicBool,
    /// The VM's share of `host.net` (`net.weight`), once the monitor gives
    /// it one: every frame, either way, takes its bytes and one op from it
    /// after the interface's own limiter let it go. None: no host budget.
    share: OnceLock<Arc<SharedBucket>>,
}

impl NetShared {
    /// Puts the interface under the VM's share of the host budget (once;
    /// a second call is ignored). The share runtime must then
    /// [`NetShared::wake`] the interface when it refills a bucket that
    /// work waits on.
    pub fn set_share(&self, bucket: Arc<SharedBucket>) {
        let _ = self.share.set(bucket);
    }

    /// Wakes the handler to try what waited for tokens again (a share
    /// refill, a limit change).
    pub fn wake(&self) {
        self.limits_changed.send(());
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl crate::share::Wake for NetShared {
    fn wake(&self) {
        NetShared::wake(self);
    }
}

/// The direction a rate limiter applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Host to guest.
    Rx,
    /// Guest to host.
    Tx,
}

/// The front of one interface.
pub struct Net {
    config: NetConfig,
    backend: Arc<dyn NetBackend>,
    shared: Arc<NetShared>,
}

impl Net {
    /// An interface on `backend` (the tap), its limiters as `spec` says.
    pub fn new(
        config: NetConfig,
        backend: Arc<dyn NetBackend>,
        rx: &crate::config::RateLimiterSpec,
        tx: &crate::config::RateLimiterSpec,
    ) -> std::io::Result<Net> {
        let epoch = Instant::now();
        Ok(Net {
            config,
            backend,
            shared: Arc::new(NetShared {
                counters: NetCounters::default(),
                rx_limiter: Mutex::new(RateLimiter::new(rx, 0)),
                tx_limiter: Mutex::new(RateLimiter::new(tx, 0)),
                limits_changed: Mailbox::new()?,
                timer: Timer::new()?,
                epoch,
                active: AtomicBool::new(false),
                share: OnceLock::new(),
            }),
        })
    }

    pub fn shared(&self) -> &Arc<NetShared> {
        &self.shared
    }

    fn config_bytes(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[..6].copy_from_slice(&self.config.mac);
        // status (6..8) and max_virtqueue_pairs (8..10) are not offered.
        c[10..12].copy_from_slice(&self.config.mtu.unwrap_or(0).to_le_bytes());
        c
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        let mut f: u64 = [
            F_CSUM,
            F_GUEST_CSUM,
            F_MAC,
            F_GUEST_TSO4,
            F_GUEST_TSO6,
            F_HOST_TSO4,
            F_HOST_TSO6,
        ]
        .iter()
        .fold(0, |f, bit| f | (1 << bit));
        if self.config.mtu.is_some() {
            f |= 1 << F_MTU;
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn max_chain_bytes(&self) -> u64 {
        MAX_CHAIN_BYTES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config_bytes();
        data.fill(0);
        let start = offset as usize;
        if let Some(src) = config.get(start..start.saturating_add(data.len())) {
            data.copy_from_slice(src);
        }
    }

    /// A driver reset (not the VM's tear-down, which leaves the last
    /// figures as they were).
    fn reset(&mut self) {
        self.shared.active.store(false, Ordering::Release);
    }

    fn activate(&mut self, acked: u64) -> Result<Box<dyn QueueHandler>, String> {
        Ok(Box::new(handler::NetHandler::new(
            self.backend.clone(),
            self.shared.clone(),
            acked,
        )))
    }
}

/// One interface as the monitor sees it.
pub struct NetHandle {
    pub id: String,
    pub tap: String,
    pub mac: [u8; 6],
    pub shared: Arc<NetShared>,
    pub state: Arc<super::DeviceState>,
    /// Each direction's limiter (rx, tx) as the event loop last read its
    /// figures (the device thread holds its lock for each frame) and the
    /// buckets as the loop set them (a change included from the moment it
    /// is asked for; only the loop takes this lock).
    seen: [(Glimpse<RateLimiterStats>, Mutex<RateLimiterSpec>); 2],
}

impl NetHandle {
    /// The handle of the interface `spec` built as `net`, attached with
    /// device state `state` (its limiters are not in use yet).
    pub fn new(spec: &NetSpec, net: &Net, state: Arc<super::DeviceState>) -> Self {
        let (id, tap) = (spec.id.clone(), spec.tap.clone());
        Self::on(id, tap, spec.mac, net.shared.clone(), state)
    }

    /// The handle of an interface whose device shares `shared`.
    pub(crate) fn on(
        id: String,
        tap: String,
        mac: [u8; 6],
        shared: Arc<NetShared>,
        state: Arc<super::DeviceState>,
    ) -> Self {
        let limits = |l: &Mutex<RateLimiter>| (Glimpse::default(), Mutex::new(lock(l).spec()));
        let seen = [limits(&shared.rx_limiter), limits(&shared.tx_limiter)];
        NetHandle {
            id,
            tap,
            mac,
            shared,
            state,
            seen,
        }
    }

    /// A direction's rate limiter and the loop's view of it.
    fn limiter(
        &self,
        dir: Direction,
    ) -> (
        &Mutex<RateLimiter>,
        &(Glimpse<RateLimiterStats>, Mutex<RateLimiterSpec>),
    ) {
        match dir {
            Direction::Rx => (&self.shared.rx_limiter, &self.seen[0]),
            Direction::Tx => (&self.shared.tx_limiter, &self.seen[1]),
        }
    }

    /// A direction's limiter's figures, without waiting for the device
    /// thread (the last read's if it holds the lock).
    fn limiter_stats(&self, dir: Direction, now: u64) -> RateLimiterStats {
        let (limiter, (seen, _)) = self.limiter(dir);
        seen.read(limiter, |l| l.stats(now))
    }

    /// Changes a direction's buckets (Firecracker's PATCH of an
    /// interface): what the interface reports changes at once, and the
    /// limiter too if the device thread does not hold it (with `wait`,
    /// once it does not). False: apply it later with
    /// [`NetHandle::apply_limiter`].
    pub fn update_limiter(
        &self,
        dir: Direction,
        bandwidth: BucketUpdate,
        ops: BucketUpdate,
        wait: bool,
    ) -> bool {
        self.record_limiter(dir, bandwidth, ops);
        self.apply_limiter(dir, bandwidth, ops, wait)
    }

    /// What the interface reports from now on (the limiter unchanged).
    pub fn record_limiter(&self, dir: Direction, bandwidth: BucketUpdate, ops: BucketUpdate) {
        let mut limits = lock(&self.limiter(dir).1 .1);
        *limits = crate::ratelimit::patched(*limits, bandwidth, ops);
    }

    /// Gives a direction's limiter a recorded change, if the device
    /// thread does not hold it (with `wait`, once it does not), and wakes
    /// the handler to apply it. False: it held it.
    pub fn apply_limiter(
        &self,
        dir: Direction,
        bandwidth: BucketUpdate,
        ops: BucketUpdate,
        wait: bool,
    ) -> bool {
        let now = self.shared.now_ns();
        let (limiter, (seen, _)) = self.limiter(dir);
        let Some(mut l) = lock_or_try(limiter, wait) else {
            return false;
        };
        l.update(bandwidth, ops, now);
        seen.set(l.stats(now));
        drop(l);
        self.shared.wake();
        true
    }

    /// The buckets of a direction, as the event loop set them (for the
    /// API's reply).
    pub fn limiter_spec(&self, dir: Direction) -> RateLimiterSpec {
        *lock(&self.limiter(dir).1 .1)
    }

    /// The interface's figures now.
    pub fn stats(&self) -> NetStats {
        let now = self.shared.now_ns();
        let (failures, last_failure) = self.state.failures();
        NetStats {
            id: self.id.clone(),
            tap: self.tap.clone(),
            mac: stats::format_mac(self.mac),
            active: self.shared.active.load(Ordering::Acquire),
            needs_reset: self.state.needs_reset(),
            notifications: self.state.notifications(),
            failures,
            last_failure,
            counters: stats::NetCounts::read(&self.shared.counters),
            rx_limiter: self.limiter_stats(Direction::Rx, now),
            tx_limiter: self.limiter_stats(Direction::Tx, now),
        }
    }
}

/// The interface `spec` describes, on its tap (opened here: build time).
pub fn new_net(spec: &NetSpec) -> Result<Net, crate::vm::VmError> {
    let tap = Tap::open(&spec.tap).map_err(|e| crate::vm::VmError::Backend {
        name: spec.id.clone(),
        detail: e.to_string(),
    })?;
    let config = NetConfig {
        mac: spec.mac,
        mtu: spec.mtu,
    };
    Net::new(
        config,
        Arc::new(tap),
        &spec.rx_rate_limiter,
        &spec.tx_rate_limiter,
    )
    .map_err(|source| crate::vm::VmError::Io {
        what: "create a network interface's eventfd and timer",
        source,
    })
}

#[cfg(test)]
mod tests;
