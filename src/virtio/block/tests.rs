//! The transport and virtio-blk driven as a guest driver would, on guest
//! memory in a test mapping, with a real device thread and a real file
//! (no KVM), on both engines.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::request::{S_IOERR, S_OK, S_UNSUPP, T_FLUSH, T_GET_ID, T_IN, T_OUT};
use super::*;
use crate::bus::BusDevice;
use crate::config::{RateLimiterSpec, TokenBucketSpec};
use crate::share::{Grant, SharedBucket};
use crate::virtio::mmio::MmioTransport;
use crate::virtio::queue::testing::*;
use crate::virtio::thread::DeviceThread;
use crate::virtio::*;

#[derive(Clone, Default)]
struct Counter(Arc<AtomicU32>);

impl Trigger for Counter {
    fn trigger(&self) -> io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

const SECTORS: u64 = 64;
const HDR: u64 = 0x40_000;
const DATA: u64 = 0x50_000;
const STATUS: u64 = 0x48_000;

fn image(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("hearth-blk-{}-{name}", std::process::id()));
    let bytes: Vec<u8> = (0..SECTORS * 512).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&path, bytes).expect("write image");
    path
}

fn spec(path: &std::path::Path, engine: IoEngine) -> DriveSpec {
    DriveSpec {
        id: "disk-id".into(),
        path: path.to_path_buf(),
        read_only: false,
        root: false,
        partuuid: None,
        cache: CacheMode::Writeback,
        engine,
        rate_limiter: RateLimiterSpec::default(),
    }
}

fn unlimited() -> Arc<SharedBucket> {
    let b = Arc::new(SharedBucket::new());
    b.fill(&Grant {
        vm: 0,
        bytes_milli: None,
        ops_milli: None,
    });
    b
}

struct Driver {
    dev: MmioTransport<Block>,
    mem: GuestMemoryMmap,
    ring: Ring,
    shared: Arc<DriveShared>,
    path: PathBuf,
    _thread: DeviceThread,
}

fn r32(dev: &mut MmioTransport<Block>, off: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn w32(dev: &mut MmioTransport<Block>, off: u64, v: u32) {
    dev.write(off, &v.to_le_bytes());
}

fn driver_with(spec: DriveSpec, share: Arc<SharedBucket>) -> Driver {
    let mem = memory(8);
    let thread = DeviceThread::spawn("test-blk".into(), None).expect("device thread");
    let state = Arc::new(DeviceState::new(
        "blk0",
        InterruptLine::new(Box::new(Counter::default())),
    ));
    let block = Block::new(&spec, &mem, share).expect("block device");
    let shared = block.shared().clone();
    let mut dev = MmioTransport::new(block, mem.clone(), state, thread.handle()).expect("mmio");
    assert_eq!(r32(&mut dev, 0x8), DEVICE_TYPE);
    w32(&mut dev, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    w32(&mut dev, 0x24, 0);
    w32(
        &mut dev,
        0x20,
        (1 << F_SEG_MAX) | (1 << F_FLUSH) | (1 << F_BLK_SIZE),
    );
    w32(&mut dev, 0x24, 1);
    w32(&mut dev, 0x20, 1);
    let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    w32(&mut dev, 0x70, s);
    assert_eq!(r32(&mut dev, 0x70), s, "features accepted");
    let ring = Ring::new(0x10_000, 16);
    w32(&mut dev, 0x30, 0);
    assert_eq!(r32(&mut dev, 0x34), u32::from(QUEUE_SIZE));
    w32(&mut dev, 0x38, 16);
    w32(&mut dev, 0x80, ring.desc() as u32);
    w32(&mut dev, 0x90, ring.avail() as u32);
    w32(&mut dev, 0xa0, ring.used() as u32);
    w32(&mut dev, 0x44, 1);
    w32(&mut dev, 0x70, s | STATUS_DRIVER_OK);
    assert!(dev.is_active());
    Driver {
        dev,
        mem,
        ring,
        shared,
        path: spec.path,
        _thread: thread,
    }
}

fn driver(name: &str, engine: IoEngine) -> Driver {
    driver_with(spec(&image(name), engine), unlimited())
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Driver {
    /// Posts one request at descriptor `base` (header, `len` data bytes
    /// at DATA + base * 0x10000 unless 0, status) without notifying.
    fn post(&mut self, base: u16, kind: u32, sector: u64, len: u32) {
        let hdr = HDR + u64::from(base) * 16;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(hdr)).expect("header");
        let status = STATUS + u64::from(base);
        self.mem
            .write_obj(0xffu8, GuestAddress(status))
            .expect("st");
        let data_flags = if kind == T_IN || kind == T_GET_ID {
            DESC_F_WRITE
        } else {
            0
        };
        let r = &self.ring;
        if len > 0 {
            r.set_desc(&self.mem, base, hdr, 16, DESC_F_NEXT, base + 1);
            let data = DATA + u64::from(base) * 0x10000;
            r.set_desc(
                &self.mem,
                base + 1,
                data,
                len,
                data_flags | DESC_F_NEXT,
                base + 2,
            );
            r.set_desc(&self.mem, base + 2, status, 1, DESC_F_WRITE, 0);
        } else {
            r.set_desc(&self.mem, base, hdr, 16, DESC_F_NEXT, base + 1);
            r.set_desc(&self.mem, base + 1, status, 1, DESC_F_WRITE, 0);
        }
        self.ring.publish(&self.mem, base);
    }

    /// Rings the doorbell and waits until `n` requests are used in all.
    fn kick_and_wait(&mut self, n: u16) {
        w32(&mut self.dev, 0x50, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.ring.used_idx(&self.mem) < n {
            assert!(!self.dev.state().needs_reset(), "device needs reset");
            assert!(Instant::now() < deadline, "request never completed");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// One request, waited for: its status byte.
    fn request(&mut self, kind: u32, sector: u64, len: u32) -> u8 {
        let n = self.ring.used_idx(&self.mem);
        self.post(0, kind, sector, len);
        self.kick_and_wait(n + 1);
        self.mem.read_obj(GuestAddress(STATUS)).expect("status")
    }

    fn data(&self, base: u16, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        let at = DATA + u64::from(base) * 0x10000;
        self.mem.read_slice(&mut v, GuestAddress(at)).expect("data");
        v
    }

    fn file(&self) -> Vec<u8> {
        std::fs::read(&self.path).expect("read image")
    }
}

fn reads_writes_and_flushes(engine: IoEngine, name: &str) {
    let mut d = driver(name, engine);
    assert_eq!(r32(&mut d.dev, 0x100), SECTORS as u32, "capacity");
    assert_eq!(r32(&mut d.dev, 0x100 + 12), SEG_MAX, "seg_max");
    assert_eq!(r32(&mut d.dev, 0x100 + 20), 512, "blk_size");
    assert_eq!(d.request(T_IN, 3, 4096), S_OK);
    assert_eq!(d.data(0, 4096), d.file()[3 * 512..3 * 512 + 4096]);
    assert_eq!(d.ring.used_elem(&d.mem, 0), (0, 4097), "data + status");
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
    d.mem
        .write_slice(&pattern, GuestAddress(DATA))
        .expect("pattern");
    assert_eq!(d.request(T_OUT, 10, 1024), S_OK);
    assert_eq!(d.request(T_FLUSH, 0, 0), S_OK);
    assert_eq!(d.file()[10 * 512..10 * 512 + 1024], pattern[..]);
    assert_eq!(d.request(T_GET_ID, 0, 20), S_OK);
    assert_eq!(&d.data(0, 8)[..], b"disk-id\0");
    let c = &d.shared.counters;
    assert_eq!(c.reads.load(Ordering::SeqCst), 1);
    assert_eq!(c.write_bytes.load(Ordering::SeqCst), 1024);
    assert_eq!(c.flushes.load(Ordering::SeqCst), 1);
}

#[test]
fn sync_engine_reads_writes_and_flushes() {
    reads_writes_and_flushes(IoEngine::Sync, "sync-rw");
}

#[test]
fn io_uring_engine_reads_writes_and_flushes() {
    reads_writes_and_flushes(IoEngine::IoUring, "uring-rw");
}

#[test]
fn requests_in_flight_together_all_complete_on_io_uring() {
    let mut d = driver("uring-qd", IoEngine::IoUring);
    for i in 0..5u16 {
        d.post(i * 3, T_IN, u64::from(i) * 8, 4096);
    }
    d.kick_and_wait(5);
    let file = d.file();
    for i in 0..5u16 {
        let at = usize::from(i) * 8 * 512;
        assert_eq!(d.data(i * 3, 4096), file[at..at + 4096], "request {i}");
    }
}

#[test]
fn bad_requests_get_a_status_and_the_device_runs_on() {
    let mut d = driver("errors", IoEngine::Sync);
    assert_eq!(d.request(T_IN, SECTORS, 512), S_IOERR, "past the end");
    assert_eq!(
        d.request(T_IN, SECTORS - 1, 1024),
        S_IOERR,
        "straddles the end"
    );
    assert_eq!(d.request(T_IN, u64::MAX, 512), S_IOERR, "sector overflows");
    assert_eq!(d.request(T_IN, 0, 100), S_IOERR, "not whole sectors");
    assert_eq!(d.request(77, 0, 0), S_UNSUPP, "unknown type");
    assert_eq!(d.request(T_IN, 0, 512), S_OK, "still serving");
    assert_eq!(d.shared.counters.errors.load(Ordering::SeqCst), 5);
}

#[test]
fn a_read_only_drive_refuses_writes() {
    let path = image("ro");
    let before = std::fs::read(&path).expect("image");
    let mut s = spec(&path, IoEngine::Sync);
    s.read_only = true;
    let mut d = driver_with(s, unlimited());
    w32(&mut d.dev, 0x14, 0);
    assert_ne!(r32(&mut d.dev, 0x10) & (1 << F_RO), 0, "RO offered");
    assert_eq!(d.request(T_OUT, 0, 512), S_IOERR);
    assert_eq!(d.request(T_IN, 0, 512), S_OK);
    assert_eq!(d.file(), before);
}

#[test]
fn malformed_chains_need_reset() {
    // A short header.
    let mut d = driver("short", IoEngine::Sync);
    d.ring.set_desc(&d.mem, 0, HDR, 8, DESC_F_NEXT, 1);
    d.ring.set_desc(&d.mem, 1, STATUS, 1, DESC_F_WRITE, 0);
    d.ring.publish(&d.mem, 0);
    w32(&mut d.dev, 0x50, 0);
    wait_needs_reset(&mut d);
    // No writable byte for the status.
    let mut d = driver("nostatus", IoEngine::Sync);
    d.ring.set_desc(&d.mem, 0, HDR, 16, 0, 0);
    d.ring.publish(&d.mem, 0);
    w32(&mut d.dev, 0x50, 0);
    wait_needs_reset(&mut d);
    // The same head twice while in flight (the io_uring engine keeps it).
    let mut d = driver("twice", IoEngine::IoUring);
    d.post(0, T_IN, 0, 512);
    d.ring.publish(&d.mem, 0);
    w32(&mut d.dev, 0x50, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.dev.state().needs_reset() && d.ring.used_idx(&d.mem) < 2 {
        assert!(Instant::now() < deadline, "neither reset nor served");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn wait_needs_reset(d: &mut Driver) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while r32(&mut d.dev, 0x70) & STATUS_NEEDS_RESET == 0 {
        assert!(Instant::now() < deadline, "NEEDS_RESET never set");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(d.ring.used_idx(&d.mem), 0, "nothing used");
    // A reset makes it usable again.
    w32(&mut d.dev, 0x70, 0);
    assert_eq!(r32(&mut d.dev, 0x70), 0);
}

#[test]
fn a_rate_limited_drive_waits_for_its_tokens() {
    let path = image("limited");
    let mut s = spec(&path, IoEngine::Sync);
    // 4 KiB per 100 ms: the first 4 KiB read goes, the next waits ~100 ms.
    s.rate_limiter.bandwidth = Some(TokenBucketSpec {
        size: 4096,
        one_time_burst: 0,
        refill_time_ms: 100,
    });
    let mut d = driver_with(s, unlimited());
    let t = Instant::now();
    assert_eq!(d.request(T_IN, 0, 4096), S_OK);
    assert!(
        t.elapsed() < Duration::from_millis(80),
        "first goes at once"
    );
    let t = Instant::now();
    assert_eq!(d.request(T_IN, 8, 4096), S_OK);
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(80), "waited {waited:?}");
    let handle = DriveHandle::new("disk-id", d.shared.clone(), d.dev.state().clone());
    let stats = handle.stats();
    assert_eq!(stats.limiter.throttled_events, 1);
    assert!(stats.limiter.throttled_ns >= 50_000_000, "{stats:?}");
    // While the device thread holds its limiter (it does for each
    // request), the statistics answer at once with the figures they read
    // last: the event loop never waits for a device thread.
    // A change of its buckets then is not applied but reported at once,
    // and goes to the limiter once the device thread lets go.
    use crate::ratelimit::BucketUpdate::{Keep, Replace};
    let wider = TokenBucketSpec {
        size: 8192,
        one_time_burst: 0,
        refill_time_ms: 100,
    };
    let handle = Arc::new(handle);
    let held = lock(&d.shared.limiter);
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn({
        let handle = handle.clone();
        move || {
            let seen = handle.stats();
            let applied = handle.update_limits(Replace(wider), Keep, false);
            tx.send((seen, applied, handle.stats().limits)).unwrap()
        }
    });
    let seen = rx.recv_timeout(Duration::from_secs(10));
    drop(held);
    reader.join().unwrap();
    let (seen, applied, limits) =
        seen.expect("the event loop's calls must not wait for the limiter");
    assert_eq!(seen.limiter, stats.limiter);
    assert_eq!(handle.limiter_seen.busy(), 2);
    assert!(!applied);
    assert_eq!(limits.bandwidth, Some(wider), "reported at once");
    assert_eq!(
        lock(&d.shared.limiter).spec().bandwidth.map(|b| b.size),
        Some(4096)
    );
    assert!(handle.apply_limits(Replace(wider), Keep, false));
    assert_eq!(lock(&d.shared.limiter).spec().bandwidth, Some(wider));
    // Lifting the limit lets the next request go at once.
    assert!(handle.update_limits(
        crate::ratelimit::BucketUpdate::Disable,
        crate::ratelimit::BucketUpdate::Keep,
        false,
    ));
    let t = Instant::now();
    assert_eq!(d.request(T_IN, 16, 4096), S_OK);
    assert!(t.elapsed() < Duration::from_millis(80));
}

#[test]
fn an_empty_share_holds_requests_until_a_fill_wakes_the_drive() {
    let share = Arc::new(SharedBucket::new());
    let mut d = driver_with(spec(&image("share"), IoEngine::Sync), share.clone());
    d.post(0, T_IN, 0, 512);
    w32(&mut d.dev, 0x50, 0);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(d.ring.used_idx(&d.mem), 0, "held back");
    assert!(share.is_waiting());
    let grant = Grant {
        vm: 0,
        bytes_milli: Some(1 << 30),
        ops_milli: None,
    };
    if share.fill(&grant) {
        d.shared.wake();
    }
    d.kick_and_wait(1);
    assert_eq!(share.stats().bytes, 512);
}

#[test]
fn a_fifo_in_place_of_the_image_is_refused_without_blocking() {
    let path = std::env::temp_dir().join(format!("hearth-blk-{}-fifo", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let c = std::ffi::CString::new(path.to_str().expect("utf-8")).expect("path");
    // SAFETY: mkfifo reads the NUL-terminated path only.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let mem = memory(1);
    let err = Block::new(&spec(&path, IoEngine::Sync), &mem, unlimited())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("neither a regular file"), "{err}");
    let _ = std::fs::remove_file(&path);
}
