//! The virtio-blk device (virtio 1.2, section 5.2): one request queue;
//! read, write, flush and get-id; `VIRTIO_BLK_F_RO`, `F_FLUSH`,
//! `F_SEG_MAX`, `F_BLK_SIZE` and indirect descriptors. A drive is a raw
//! image file or a host block device, opened when the VM is built.
//!
//! Where the I/O runs (docs/devices.md): on the VM's device thread, woken
//! by the queue's ioeventfd, never on the monitor's event loop. The sync
//! engine does each request there (`preadv`/`pwritev`), so a slow disk
//! stalls only its own VM's devices; the io_uring engine only submits and
//! reaps there, the kernel doing the I/O, and an eventfd brings the
//! completions back. Completions raise the interrupt through the irqfd.
//!
//! Each request passes the drive's rate limiter (Firecracker's token
//! buckets) and then the VM's share of the host's disk budget (a
//! [`SharedBucket`] the share runtime refills every tick), in queue order:
//! a request that must wait holds the queue until it may go.

pub mod engine;
mod handler;
pub mod request;
pub mod uring;

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::{DeviceState, QueueHandler, VirtioDevice, F_INDIRECT_DESC};
use crate::bus::{lock, lock_or_try};
use crate::config::{CacheMode, DriveSpec, IoEngine, RateLimiterSpec};
use crate::glimpse::Glimpse;
use crate::ratelimit::{BucketUpdate, RateLimiter, RateLimiterStats};
use crate::share::SharedBucket;
use engine::{Engine, SyncEngine};
use request::{ID_BYTES, SECTOR_SIZE};

pub const DEVICE_TYPE: u32 = 2;
/// Feature bits (5.2.3).
pub const F_SEG_MAX: u32 = 2;
pub const F_RO: u32 = 5;
pub const F_BLK_SIZE: u32 = 6;
pub const F_FLUSH: u32 = 9;
/// The request queue's size.
pub const QUEUE_SIZE: u16 = 256;
/// Data buffers one request may have (the queue size less the header and
/// the status, as QEMU offers).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// The most data bytes one request may carry: a longer chain is malformed.
/// Linux sends at most `max_sectors_kb` (1280 KiB unless raised).
pub const MAX_REQUEST_BYTES: u64 = 128 << 20;

/// Why a drive cannot be attached.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("drive {id}: cannot open {path}: {source}")]
    Open {
        id: String,
        path: String,
        source: io::Error,
    },
    #[error("drive {id}: {what}: {source}")]
    Setup {
        id: String,
        what: &'static str,
        source: io::Error,
    },
}

/// A drive's backing file and what the guest sees of it.
pub struct Disk {
    pub id: String,
    file: Arc<File>,
    /// Whole 512-byte sectors (a partial last sector is not visible).
    pub capacity: u64,
    pub read_only: bool,
    pub cache: CacheMode,
}

impl Disk {
    /// Opens the drive's file as it will be used.
    pub fn open(spec: &DriveSpec) -> Result<Disk, BlockError> {
        let open_err = |source| BlockError::Open {
            id: spec.id.clone(),
            path: spec.path.display().to_string(),
            source,
        };
        // O_NONBLOCK: a FIFO swapped in after validation cannot block the
        // builder (regular files and block devices ignore the flag).
        let mut file = OpenOptions::new()
            .read(true)
            .write(!spec.read_only)
            .custom_flags(libc::O_NONBLOCK)
            .open(&spec.path)
            .map_err(open_err)?;
        let kind = file.metadata().map_err(open_err)?.file_type();
        if !(kind.is_file() || kind.is_block_device()) {
            return Err(open_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "neither a regular file nor a block device",
            )));
        }
        // Blocking again: io_uring answers EAGAIN for a non-blocking file
        // instead of waiting for the disk.
        set_nonblocking(&file, false).map_err(open_err)?;
        // A block device's size is where a seek to its end lands.
        let bytes = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        if bytes % SECTOR_SIZE != 0 {
            log::warn!(
                "drive {}: {} is {bytes} bytes, not whole sectors: the last {} bytes are not visible",
                spec.id,
                spec.path.display(),
                bytes % SECTOR_SIZE
            );
        }
        Ok(Disk {
            id: spec.id.clone(),
            file: Arc::new(file),
            capacity: bytes / SECTOR_SIZE,
            read_only: spec.read_only,
            cache: spec.cache,
        })
    }

    /// The GET_ID answer: the id, NUL-padded (truncated to 20 bytes).
    fn serial(&self) -> [u8; ID_BYTES] {
        let mut id = [0u8; ID_BYTES];
        let n = self.id.len().min(ID_BYTES);
        id[..n].copy_from_slice(&self.id.as_bytes()[..n]);
        id
    }
}

/// A drive's counters, published by its handler.
#[derive(Debug, Default)]
pub struct DriveCounters {
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub flushes: AtomicU64,
    /// Requests answered IOERR or UNSUPP.
    pub errors: AtomicU64,
}

/// A snapshot of [`DriveCounters`] and the rate limiter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DriveStats {
    pub id: String,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub errors: u64,
    pub limiter: RateLimiterStats,
    pub limits: crate::config::RateLimiterSpec,
    pub needs_reset: bool,
    pub failures: u64,
    /// Doorbells its device thread took (queue notifications through
    /// ioeventfds, which the access verifier does not see).
    pub notifications: u64,
}

/// What a drive's front, its handler and the monitor share: counters, the
/// rate limiter, the wake-up eventfd (the share tick, a limit change) and
/// the limiter's timer. Made at build time, so the handler needs no
/// system call to get them.
pub struct DriveShared {
    pub counters: DriveCounters,
    limiter: Mutex<RateLimiter>,
    wake: EventFd,
    timer: Mutex<TimerFd>,
    share: Arc<SharedBucket>,
    clock: Instant,
}

impl DriveShared {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The eventfd that wakes the drive's handler (for the share runtime).
    pub fn wake_evt(&self) -> &EventFd {
        &self.wake
    }

    fn wake(&self) {
        if let Err(e) = self.wake.write(1) {
            log::warn!("virtio-blk: cannot wake a drive: {e}");
        }
    }
}

impl crate::share::Wake for DriveShared {
    fn wake(&self) {
        DriveShared::wake(self);
    }
}

/// The virtio-blk front: features and configuration space.
pub struct Block {
    disk: Arc<Disk>,
    engine: Arc<Mutex<Box<dyn Engine>>>,
    shared: Arc<DriveShared>,
}

impl Block {
    /// The device of drive `spec`, taking from the VM's share `share`.
    /// Opens the file, and for io_uring the ring (before any seccomp).
    pub fn new(
        spec: &DriveSpec,
        mem: &GuestMemoryMmap,
        share: Arc<SharedBucket>,
    ) -> Result<Block, BlockError> {
        let disk = Disk::open(spec)?;
        let setup = |what| {
            let id = spec.id.clone();
            move |source| BlockError::Setup { id, what, source }
        };
        let engine: Box<dyn Engine> = match spec.engine {
            IoEngine::Sync => Box::new(SyncEngine::new(disk.file.clone())),
            IoEngine::IoUring => Box::new(
                uring::UringEngine::new(disk.file.clone(), QUEUE_SIZE, mem.clone())
                    .map_err(setup("set up io_uring"))?,
            ),
        };
        let timer = TimerFd::new().map_err(|e| setup("create a timerfd")(e.into()))?;
        set_nonblocking(&timer, true).map_err(setup("make the timerfd non-blocking"))?;
        let clock = Instant::now();
        let shared = DriveShared {
            counters: DriveCounters::default(),
            limiter: Mutex::new(RateLimiter::new(&spec.rate_limiter, 0)),
            wake: EventFd::new(libc::EFD_NONBLOCK).map_err(setup("create an eventfd"))?,
            timer: Mutex::new(timer),
            share,
            clock,
        };
        Ok(Block {
            disk: Arc::new(disk),
            engine: Arc::new(Mutex::new(engine)),
            shared: Arc::new(shared),
        })
    }

    pub fn shared(&self) -> &Arc<DriveShared> {
        &self.shared
    }

    pub fn disk(&self) -> &Disk {
        &self.disk
    }
}

/// Sets or clears `O_NONBLOCK` on `fd`, keeping its other status flags.
fn set_nonblocking(fd: &impl AsRawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        let mut f = (1 << F_SEG_MAX) | (1 << F_BLK_SIZE) | (1 << F_FLUSH) | (1 << F_INDIRECT_DESC);
        if self.disk.read_only {
            f |= 1 << F_RO;
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn max_chain_bytes(&self) -> u64 {
        MAX_REQUEST_BYTES + 16 + 1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_blk_config up to blk_size (5.2.4).
        let mut config = [0u8; 24];
        config[0..8].copy_from_slice(&self.disk.capacity.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        data.fill(0);
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        if let Some(src) = config.get(start..start.saturating_add(data.len())) {
            data.copy_from_slice(src);
        }
    }

    fn activate(&mut self, acked: u64) -> Result<Box<dyn QueueHandler>, String> {
        let _ = acked;
        Ok(Box::new(handler::BlockHandler::new(
            self.disk.clone(),
            self.engine.clone(),
            self.shared.clone(),
        )))
    }
}

/// What the monitor keeps of one drive.
pub struct DriveHandle {
    pub id: String,
    pub shared: Arc<DriveShared>,
    pub state: Arc<DeviceState>,
    /// The rate limiter's figures as the event loop last read them (the
    /// device thread holds its lock for each request).
    limiter_seen: Glimpse<RateLimiterStats>,
    /// The buckets as the event loop set them, a change included from the
    /// moment it is asked for (it reaches the limiter when its lock is
    /// free). Only the event loop takes this lock.
    limits: Mutex<RateLimiterSpec>,
}

impl DriveHandle {
    /// The handle of a drive being built (its limiter is not in use yet).
    pub fn new(id: &str, shared: Arc<DriveShared>, state: Arc<DeviceState>) -> Self {
        let limits = lock(&shared.limiter).spec();
        DriveHandle {
            id: id.to_string(),
            shared,
            state,
            limiter_seen: Glimpse::default(),
            limits: Mutex::new(limits),
        }
    }

    /// The drive's figures now.
    pub fn stats(&self) -> DriveStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Acquire);
        let now = self.shared.now_ns();
        DriveStats {
            id: self.id.clone(),
            read_bytes: get(&c.read_bytes),
            write_bytes: get(&c.write_bytes),
            reads: get(&c.reads),
            writes: get(&c.writes),
            flushes: get(&c.flushes),
            errors: get(&c.errors),
            limiter: self
                .limiter_seen
                .read(&self.shared.limiter, |l| l.stats(now)),
            limits: *lock(&self.limits),
            needs_reset: self.state.needs_reset(),
            failures: self.state.failures().0,
            notifications: self.state.notifications(),
        }
    }

    /// Changes the drive's buckets (Firecracker's `PATCH /drives`): what
    /// the drive reports changes at once, and the limiter too if the
    /// device thread does not hold it (with `wait`, once it does not).
    /// False: apply it later with [`DriveHandle::apply_limits`].
    pub fn update_limits(&self, bandwidth: BucketUpdate, ops: BucketUpdate, wait: bool) -> bool {
        self.record_limits(bandwidth, ops);
        self.apply_limits(bandwidth, ops, wait)
    }

    /// What the drive reports from now on (the limiter unchanged).
    pub fn record_limits(&self, bandwidth: BucketUpdate, ops: BucketUpdate) {
        let mut limits = lock(&self.limits);
        *limits = crate::ratelimit::patched(*limits, bandwidth, ops);
    }

    /// Gives the limiter a recorded change, if the device thread does not
    /// hold it (with `wait`, once it does not); a request waiting for
    /// tokens is looked at again at once. False: it held it.
    pub fn apply_limits(&self, bandwidth: BucketUpdate, ops: BucketUpdate, wait: bool) -> bool {
        let now = self.shared.now_ns();
        let Some(mut limiter) = lock_or_try(&self.shared.limiter, wait) else {
            return false;
        };
        limiter.update(bandwidth, ops, now);
        self.limiter_seen.set(limiter.stats(now));
        drop(limiter);
        self.shared.wake();
        true
    }
}

/// A VM's drives and its share of the host's disk budget.
pub struct VmDisks {
    pub share: Arc<SharedBucket>,
    pub drives: Vec<DriveHandle>,
}

impl VmDisks {
    /// What wakes the VM's drives (for the share runtime).
    pub fn wakers(&self) -> Vec<Arc<dyn crate::share::Wake>> {
        self.drives
            .iter()
            .map(|d| d.shared.clone() as Arc<dyn crate::share::Wake>)
            .collect()
    }
}

fn bucket_json(b: Option<crate::config::TokenBucketSpec>) -> serde_json::Value {
    b.map_or(serde_json::Value::Null, |b| {
        serde_json::json!({
            "size": b.size,
            "one_time_burst": b.one_time_burst,
            "refill_time": b.refill_time_ms,
        })
    })
}

impl DriveStats {
    pub fn to_json(&self) -> serde_json::Value {
        let l = &self.limiter;
        serde_json::json!({
            "id": self.id,
            "read_bytes": self.read_bytes,
            "write_bytes": self.write_bytes,
            "reads": self.reads,
            "writes": self.writes,
            "flushes": self.flushes,
            "errors": self.errors,
            "needs_reset": self.needs_reset,
            "failures": self.failures,
            "notifications": self.notifications,
            "rate_limiter": {
                "bandwidth": bucket_json(self.limits.bandwidth),
                "ops": bucket_json(self.limits.ops),
                "throttled": l.throttled,
                "throttled_events": l.throttled_events,
                "throttled_ns": l.throttled_ns,
            },
        })
    }
}

impl VmDisks {
    /// The VM's disk figures: its weight, what it took from its share of
    /// `host.io` (`share`, when the runtime knows the VM) and each drive.
    pub fn to_json(
        &self,
        weight: u32,
        share: Option<crate::share::ShareStats>,
    ) -> serde_json::Value {
        let drives: Vec<serde_json::Value> =
            self.drives.iter().map(|d| d.stats().to_json()).collect();
        serde_json::json!({
            "weight": weight,
            "share": share.map(|s| serde_json::json!({
                "bytes": s.bytes,
                "ops": s.ops,
                "throttle_events": s.throttle_events,
                "throttled_ns": s.throttled_ns,
            })),
            "drives": drives,
        })
    }
}

#[cfg(test)]
mod tests;
