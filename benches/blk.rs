//! The host side of one virtio-blk request alone, no KVM: the bench thread
//! plays the guest driver on a test mapping (descriptors, available ring,
//! the doorbell through the transport's registers) and Hearth's device
//! thread serves the queue (parse, checks, rate limiter and share, the
//! engine's read of a 4 KiB block of a file in the page cache, status, used
//! ring, interrupt). One iteration is one request:
//!
//! - `qd1`: post one request, ring, spin until it is used: the round trip,
//!   waking the device thread included;
//! - `qd64`: 64 requests per doorbell: the device's cost per request when
//!   it is kept busy.
//!
//! `cargo bench --bench blk`; see docs/performance.md.

use std::hint::black_box;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hearth::bus::BusDevice;
use hearth::config::{CacheMode, DriveSpec, IoEngine, RateLimiterSpec};
use hearth::share::{Grant, SharedBucket};
use hearth::virtio::block::Block;
use hearth::virtio::mmio::MmioTransport;
use hearth::virtio::thread::DeviceThread;
use hearth::virtio::{DeviceState, InterruptLine, Trigger};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

const QSIZE: u16 = 256;
const DESC: u64 = 0x10_000;
const AVAIL: u64 = DESC + 16 * QSIZE as u64;
const USED: u64 = 0x20_000;
const HDRS: u64 = 0x30_000;
const STATUS: u64 = 0x38_000;
const DATA: u64 = 0x100_000;
const IMAGE_BLOCKS: u64 = 16384; // 64 MiB of 4 KiB blocks

struct NoIrq;

impl Trigger for NoIrq {
    fn trigger(&self) -> io::Result<()> {
        Ok(())
    }
}

struct Guest {
    dev: MmioTransport<Block>,
    mem: GuestMemoryMmap,
    avail: u16,
    rng: u64,
    _thread: DeviceThread,
}

fn w32(dev: &mut MmioTransport<Block>, off: u64, v: u32) {
    dev.write(off, &v.to_le_bytes());
}

fn image() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("hearth-blk-bench-{}.img", std::process::id()));
    let block: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let all: Vec<u8> = (0..IMAGE_BLOCKS)
        .flat_map(|_| block.iter().copied())
        .collect();
    std::fs::write(&path, all).expect("write the image");
    path
}

fn write_desc(mem: &GuestMemoryMmap, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let at = GuestAddress(DESC + 16 * u64::from(i));
    mem.write_obj(addr, at).expect("desc");
    mem.write_obj(len, at.unchecked_add(8)).expect("desc");
    mem.write_obj(flags, at.unchecked_add(12)).expect("desc");
    mem.write_obj(next, at.unchecked_add(14)).expect("desc");
}

impl Guest {
    fn new(path: &std::path::Path, engine: IoEngine) -> Guest {
        let mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).expect("test memory");
        let thread = DeviceThread::spawn("bench-blk".into(), None).expect("device thread");
        let state = Arc::new(DeviceState::new(
            "blk0",
            InterruptLine::new(Box::new(NoIrq)),
        ));
        let spec = DriveSpec {
            id: "bench".into(),
            path: path.to_path_buf(),
            read_only: true,
            root: false,
            partuuid: None,
            cache: CacheMode::Unsafe,
            engine,
            rate_limiter: RateLimiterSpec::default(),
        };
        let share = Arc::new(SharedBucket::new());
        share.fill(&Grant {
            vm: 0,
            bytes_milli: None,
            ops_milli: None,
        });
        let block = Block::new(&spec, &mem, share).expect("device");
        let mut dev = MmioTransport::new(block, mem.clone(), state, thread.handle()).expect("mmio");
        w32(&mut dev, 0x70, 3);
        w32(&mut dev, 0x24, 1);
        w32(&mut dev, 0x20, 1); // VERSION_1
        w32(&mut dev, 0x70, 11);
        w32(&mut dev, 0x30, 0);
        w32(&mut dev, 0x38, u32::from(QSIZE));
        w32(&mut dev, 0x80, DESC as u32);
        w32(&mut dev, 0x90, AVAIL as u32);
        w32(&mut dev, 0xa0, USED as u32);
        w32(&mut dev, 0x44, 1);
        w32(&mut dev, 0x70, 15);
        // Request slot s: descriptors 3s..3s+2, header, 4 KiB, status.
        for s in 0..QSIZE / 3 {
            let d = s * 3;
            write_desc(&mem, d, HDRS + 16 * u64::from(s), 16, 1, d + 1);
            write_desc(&mem, d + 1, DATA + 4096 * u64::from(s), 4096, 3, d + 2);
            write_desc(&mem, d + 2, STATUS + u64::from(s), 1, 2, 0);
        }
        Guest {
            dev,
            mem,
            avail: 0,
            rng: 0x2545_f491_4f6c_dd1d,
            _thread: thread,
        }
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED + 2)).expect("used idx")
    }

    /// Posts `n` (<= 64) random 4 KiB reads, rings once, waits for them.
    fn batch(&mut self, n: u16) {
        let target = self.avail.wrapping_add(n);
        for s in 0..n {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let sector = (self.rng % IMAGE_BLOCKS) * 8;
            let hdr = HDRS + 16 * u64::from(s);
            self.mem.write_obj(0u32, GuestAddress(hdr)).expect("type");
            self.mem
                .write_obj(sector, GuestAddress(hdr + 8))
                .expect("sector");
            let slot = AVAIL + 4 + 2 * u64::from(self.avail % QSIZE);
            self.mem.write_obj(s * 3, GuestAddress(slot)).expect("slot");
            self.avail = self.avail.wrapping_add(1);
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.mem
            .write_obj(self.avail, GuestAddress(AVAIL + 2))
            .expect("avail idx");
        w32(&mut self.dev, 0x50, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.used_idx() != target {
            assert!(Instant::now() < deadline, "requests never completed");
            std::hint::spin_loop();
        }
        black_box(self.mem.read_obj::<u8>(GuestAddress(STATUS)).ok());
    }
}

fn requests(c: &mut Criterion) {
    let path = image();
    let mut group = c.benchmark_group("blk-4k-read");
    for (name, engine) in [("sync", IoEngine::Sync), ("io_uring", IoEngine::IoUring)] {
        let mut guest = Guest::new(&path, engine);
        for qd in [1u16, 64] {
            group.bench_function(BenchmarkId::new(name, format!("qd{qd}")), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    let mut left = iters;
                    while left > 0 {
                        let n = left.min(u64::from(qd)) as u16;
                        guest.batch(n);
                        left -= u64::from(n);
                    }
                    start.elapsed()
                })
            });
        }
    }
    group.finish();
    let _ = std::fs::remove_file(&path);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = requests
}
criterion_main!(benches);
