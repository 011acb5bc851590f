//! The transport and the balloon driven as a guest driver would, on guest
//! memory in a test mapping, with a real device thread (no KVM).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::bus::BusDevice;
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

impl Counter {
    fn get(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

const ALL: BalloonConfig = BalloonConfig {
    stats: true,
    deflate_on_oom: true,
    reporting: true,
};

fn madvise() -> Box<dyn Reclaim> {
    Box::new(Madvise)
}

struct Driver {
    dev: MmioTransport<Balloon>,
    mem: GuestMemoryMmap,
    irq: Counter,
    rings: Vec<Ring>,
    // Dropped after `dev`.
    _thread: DeviceThread,
}

fn r32(dev: &mut MmioTransport<Balloon>, off: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn w32(dev: &mut MmioTransport<Balloon>, off: u64, v: u32) {
    dev.write(off, &v.to_le_bytes());
}

fn transport(
    config: BalloonConfig,
    mem: GuestMemoryMmap,
) -> (MmioTransport<Balloon>, Counter, DeviceThread) {
    let irq = Counter::default();
    let thread = DeviceThread::spawn("test-dev".into(), None).expect("device thread");
    let state = Arc::new(DeviceState::new(
        "balloon0",
        InterruptLine::new(Box::new(irq.clone())),
    ));
    let balloon = Balloon::new(config, madvise).expect("balloon");
    let dev = MmioTransport::new(balloon, mem, state, thread.handle()).expect("transport");
    (dev, irq, thread)
}

/// A device with `features` (low word) acked and `queues` queues set up.
fn driver(config: BalloonConfig, features: u32, queues: u16) -> Driver {
    let mem = memory(8);
    let (mut dev, irq, thread) = transport(config, mem.clone());
    assert_eq!(r32(&mut dev, 0x0), 0x7472_6976);
    assert_eq!(r32(&mut dev, 0x4), 2);
    assert_eq!(r32(&mut dev, 0x8), 5);
    w32(&mut dev, 0x70, STATUS_ACKNOWLEDGE);
    w32(&mut dev, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    w32(&mut dev, 0x24, 0);
    w32(&mut dev, 0x20, features);
    w32(&mut dev, 0x24, 1);
    w32(&mut dev, 0x20, 1); // VERSION_1
    let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    w32(&mut dev, 0x70, s);
    assert_eq!(r32(&mut dev, 0x70), s, "features accepted");
    let mut rings = Vec::new();
    for i in 0..queues {
        let ring = Ring::new(0x10_000 + u64::from(i) * 0x4000, 16);
        w32(&mut dev, 0x30, u32::from(i));
        assert_eq!(r32(&mut dev, 0x34), 256);
        w32(&mut dev, 0x38, 16);
        w32(&mut dev, 0x80, ring.desc() as u32);
        w32(&mut dev, 0x84, 0);
        w32(&mut dev, 0x90, ring.avail() as u32);
        w32(&mut dev, 0xa0, ring.used() as u32);
        w32(&mut dev, 0x44, 1);
        rings.push(ring);
    }
    w32(&mut dev, 0x70, s | STATUS_DRIVER_OK);
    assert!(dev.is_active());
    Driver {
        dev,
        mem,
        irq,
        rings,
        _thread: thread,
    }
}

const BUF: u64 = 0x40_000;

impl Driver {
    /// Notifies queue `q` as the driver does, and waits until the device
    /// thread has handled it (or the device has failed).
    fn notify(&mut self, q: u32) {
        let before = self.dev.state().notifications();
        w32(&mut self.dev, 0x50, q);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.dev.state().notifications() == before && !self.dev.state().needs_reset() {
            assert!(
                std::time::Instant::now() < deadline,
                "queue {q} never served"
            );
            std::thread::yield_now();
        }
    }

    /// Waits (up to 10 s) until `cond` holds.
    fn until(&mut self, what: &str, cond: impl Fn(&mut Driver) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !cond(self) {
            assert!(std::time::Instant::now() < deadline, "{what}: timed out");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Asks for statistics and waits until the handler has served it.
    fn request_stats(&mut self) {
        let before = self.dev.device().stats_requests_served();
        self.dev.device().request_stats();
        self.until("stats request served", |d| {
            d.dev.device().stats_requests_served() > before
        });
    }

    fn needs_reset(&mut self) -> bool {
        r32(&mut self.dev, 0x70) & STATUS_NEEDS_RESET != 0
    }

    /// Posts a chain of one readable buffer holding `bytes` on queue `q`.
    fn post(&mut self, q: usize, bytes: &[u8], flags: u16) {
        let at = BUF + q as u64 * 0x1000;
        self.mem
            .write_slice(bytes, GuestAddress(at))
            .expect("write buffer");
        let ring = &mut self.rings[q];
        let head = ring.avail_idx % ring.size;
        ring.set_desc(&self.mem, head, at, bytes.len() as u32, flags, 0);
        ring.publish(&self.mem, head);
    }

    fn pfns(&mut self, q: usize, pfns: &[u32]) {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        self.post(q, &bytes, 0);
    }

    fn fill(&self, addr: u64, len: usize) {
        self.mem
            .write_slice(&vec![0xab; len], GuestAddress(addr))
            .expect("fill");
    }

    fn byte(&self, addr: u64) -> u8 {
        self.mem.read_obj(GuestAddress(addr)).expect("read")
    }
}

#[test]
fn inflated_pages_go_back_to_the_host_and_deflated_ones_are_counted() {
    let mut d = driver(ALL, 1 << F_STATS_VQ, 3);
    d.fill(0x100_000, 0x3000);
    d.fill(0x200_000, 0x1000);
    d.dev.set_target_pages(3);
    assert_eq!(d.irq.get(), 1, "config change interrupt");
    assert_eq!(r32(&mut d.dev, 0x60), INT_CONFIG);
    w32(&mut d.dev, 0x64, INT_CONFIG);
    assert_eq!(r32(&mut d.dev, 0x100), 3, "num_pages");
    d.pfns(0, &[0x100, 0x101, 0x200]);
    d.notify(0);
    assert_eq!(d.rings[0].used_idx(&d.mem), 1);
    assert_eq!(r32(&mut d.dev, 0x60), INT_USED_RING);
    assert_eq!(d.byte(0x100_000), 0, "discarded pages read as zero");
    assert_eq!(d.byte(0x101_fff), 0);
    assert_eq!(d.byte(0x102_000), 0xab, "the neighbour is untouched");
    assert_eq!(d.byte(0x200_000), 0);
    w32(&mut d.dev, 0x104, 3);
    assert_eq!(d.dev.device().actual_pages(), 3);
    d.pfns(1, &[0x100]);
    d.notify(1);
    let c = d.dev.device().counters();
    assert_eq!(
        (c.inflated_pages, c.deflated_pages, c.discard_errors),
        (3, 1, 0)
    );
    assert!(!d.needs_reset());
}

#[test]
fn a_pfn_outside_guest_ram_needs_reset_and_nothing_is_discarded() {
    let mut d = driver(ALL, 0, 2);
    d.fill(0x100_000, 0x1000);
    // 8 MiB of RAM: PFN 0x800 is the first page past its end.
    d.pfns(0, &[0x100, 0x800]);
    d.notify(0);
    assert!(d.needs_reset());
    assert_eq!(
        r32(&mut d.dev, 0x70) & STATUS_NEEDS_RESET,
        STATUS_NEEDS_RESET
    );
    assert_eq!(r32(&mut d.dev, 0x60) & INT_CONFIG, INT_CONFIG);
    assert_eq!(d.byte(0x100_000), 0xab, "a refused chain is not acted on");
    assert_eq!(d.rings[0].used_idx(&d.mem), 0);
    // The queue is not processed until a reset.
    d.pfns(0, &[0x100]);
    d.notify(0);
    assert_eq!(d.dev.device().counters().inflated_pages, 0);
    assert_eq!(d.dev.state().failures().0, 1);
    w32(&mut d.dev, 0x70, 0);
    assert_eq!(r32(&mut d.dev, 0x70), 0);
    assert!(!d.needs_reset());
}

#[test]
fn malformed_buffers_need_reset_without_panicking() {
    for (what, bytes, flags) in [
        ("a PFN array of 6 bytes", vec![0u8; 6], 0),
        ("a device-writable buffer", vec![0u8; 4], DESC_F_WRITE),
    ] {
        let mut d = driver(ALL, 0, 2);
        d.post(0, &bytes, flags);
        d.notify(0);
        assert!(d.needs_reset(), "{what}");
    }
    let mut d = driver(ALL, 0, 2);
    d.rings[0].set_desc(&d.mem, 0, 0x7f_f000, 0x2000, 0, 0);
    d.rings[0].publish(&d.mem, 0);
    d.notify(0);
    assert!(d.needs_reset(), "a buffer running past the end of RAM");
}

fn stat(tag: u16, val: u64) -> Vec<u8> {
    let mut v = tag.to_le_bytes().to_vec();
    v.extend_from_slice(&val.to_le_bytes());
    v
}

#[test]
fn statistics_are_read_and_requested_again() {
    let mut d = driver(ALL, 1 << F_STATS_VQ, 3);
    let mut s = stat(TAG_MEMFREE, 100 << 20);
    s.extend(stat(TAG_MEMTOT, 500 << 20));
    s.extend(stat(TAG_AVAIL, 300 << 20));
    s.extend(stat(1, 7)); // swap-out: ignored
    d.post(2, &s, 0);
    d.notify(2);
    let st = d.dev.device().stats();
    assert_eq!(
        (st.free, st.total, st.available, st.updates),
        (Some(100 << 20), Some(500 << 20), Some(300 << 20), 1)
    );
    assert_eq!(d.rings[2].used_idx(&d.mem), 0, "the buffer is held");
    d.request_stats();
    assert_eq!(d.rings[2].used_idx(&d.mem), 1, "given back to ask for more");
    assert_eq!(d.irq.get(), 1);
    d.request_stats();
    assert_eq!(
        d.rings[2].used_idx(&d.mem),
        1,
        "nothing held, nothing to return"
    );
    d.post(2, &stat(TAG_MEMFREE, 1)[..9], 0);
    d.notify(2);
    assert!(d.needs_reset(), "a 9-byte statistics buffer");
}

#[test]
fn reported_free_pages_are_discarded_on_the_queue_after_the_others() {
    // Without STATS_VQ the reporting queue is index 2.
    let mut d = driver(ALL, 1 << F_REPORTING, 3);
    d.fill(0x300_000, 0x2000);
    d.rings[2].set_desc(&d.mem, 0, 0x300_000, 0x2000, DESC_F_WRITE, 0);
    d.rings[2].publish(&d.mem, 0);
    d.notify(2);
    assert_eq!(d.byte(0x301_000), 0);
    assert_eq!(d.dev.device().counters().reported_bytes, 0x2000);
    assert_eq!(d.rings[2].used_idx(&d.mem), 1);
    // With it, index 3; a readable report is malformed.
    let mut d = driver(ALL, (1 << F_REPORTING) | (1 << F_STATS_VQ), 4);
    d.post(3, &[0u8; 4096], 0);
    d.notify(3);
    assert!(d.needs_reset());
}

#[test]
fn feature_negotiation_and_status_rules() {
    let config = BalloonConfig {
        stats: false,
        deflate_on_oom: true,
        reporting: false,
    };
    let (mut dev, _irq, _thread) = transport(config, memory(1));
    assert_eq!(r32(&mut dev, 0x10), 1 << F_DEFLATE_ON_OOM);
    w32(&mut dev, 0x14, 1);
    assert_eq!(r32(&mut dev, 0x10), 1, "VERSION_1 in the high word");
    let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
    w32(&mut dev, 0x70, s);
    // STATS_VQ is not offered: FEATURES_OK does not stick.
    w32(&mut dev, 0x20, 1 << F_STATS_VQ);
    w32(&mut dev, 0x24, 1);
    w32(&mut dev, 0x20, 1);
    w32(&mut dev, 0x70, s | STATUS_FEATURES_OK);
    assert_eq!(r32(&mut dev, 0x70), s);
    // Without VERSION_1 neither.
    w32(&mut dev, 0x24, 0);
    w32(&mut dev, 0x20, 1 << F_DEFLATE_ON_OOM);
    w32(&mut dev, 0x24, 1);
    w32(&mut dev, 0x20, 0);
    w32(&mut dev, 0x70, s | STATUS_FEATURES_OK);
    assert_eq!(r32(&mut dev, 0x70), s);
    // DRIVER_OK before FEATURES_OK is ignored; clearing bits needs a reset.
    w32(&mut dev, 0x70, s | STATUS_DRIVER_OK);
    assert_eq!(r32(&mut dev, 0x70), s);
    w32(&mut dev, 0x70, STATUS_ACKNOWLEDGE);
    assert_eq!(r32(&mut dev, 0x70), s);
    // Odd-sized register accesses read zero and change nothing.
    let mut b = [0xffu8; 2];
    dev.read(0x0, &mut b);
    assert_eq!(b, [0, 0]);
    assert_eq!(r32(&mut dev, 0x34), 256);
    w32(&mut dev, 0x30, 9);
    assert_eq!(r32(&mut dev, 0x34), 0, "no queue 9");
    w32(&mut dev, 0x50, 9);
}

#[test]
fn rings_outside_ram_need_reset_at_driver_ok() {
    let (mut dev, _irq, _thread) = transport(ALL, memory(1));
    w32(&mut dev, 0x70, 3);
    w32(&mut dev, 0x24, 1);
    w32(&mut dev, 0x20, 1);
    w32(&mut dev, 0x70, 11);
    w32(&mut dev, 0x30, 0);
    w32(&mut dev, 0x80, 0xf000_0000);
    w32(&mut dev, 0x90, 0x1000);
    w32(&mut dev, 0xa0, 0x2000);
    w32(&mut dev, 0x44, 1);
    w32(&mut dev, 0x70, 15);
    assert_eq!(r32(&mut dev, 0x70) & STATUS_NEEDS_RESET, STATUS_NEEDS_RESET);
}

#[test]
fn the_device_counts_what_the_balloon_holds_not_the_driver() {
    let mut d = driver(ALL, 0, 2);
    // The driver claims 1000 pages but gives none.
    w32(&mut d.dev, 0x104, 1000);
    assert_eq!(d.dev.device().actual_pages(), 1000);
    assert_eq!(d.dev.device().held_pages(), 0);
    // Inflating a page twice counts it once; deflating one never inflated counts nothing.
    d.pfns(0, &[0x100, 0x101, 0x100]);
    d.notify(0);
    d.pfns(1, &[0x300]);
    d.notify(1);
    assert_eq!(d.dev.device().held_pages(), 2);
    let c = d.dev.device().counters();
    assert_eq!((c.inflated_pages, c.deflated_pages), (2, 0));
    // A reset gives every page back to the guest.
    w32(&mut d.dev, 0x70, 0);
    assert_eq!(d.dev.device().held_pages(), 0);
}

#[test]
fn pfn_buffers_over_256_entries_and_indirect_chains_need_reset() {
    let mut d = driver(ALL, 0, 2);
    d.pfns(0, &[0x100; 257]);
    d.notify(0);
    assert!(d.needs_reset(), "257 PFNs in one buffer");
    assert_eq!(d.dev.device().counters().inflated_pages, 0);
    let mut d = driver(ALL, 0, 2);
    d.rings[0].set_desc(&d.mem, 0, 0x40_000, 16, DESC_F_INDIRECT, 0);
    d.rings[0].publish(&d.mem, 0);
    d.notify(0);
    assert!(d.needs_reset(), "an indirect chain (not negotiated)");
}

#[test]
fn buffers_posted_before_driver_ok_are_taken_on_the_device_thread() {
    let mem = memory(8);
    let (mut dev, _irq, _thread) = transport(ALL, mem.clone());
    w32(&mut dev, 0x70, 3);
    w32(&mut dev, 0x24, 1);
    w32(&mut dev, 0x20, 1);
    w32(&mut dev, 0x70, 11);
    let mut ring = Ring::new(0x10_000, 16);
    w32(&mut dev, 0x30, 0);
    w32(&mut dev, 0x38, 16);
    w32(&mut dev, 0x80, ring.desc() as u32);
    w32(&mut dev, 0x90, ring.avail() as u32);
    w32(&mut dev, 0xa0, ring.used() as u32);
    w32(&mut dev, 0x44, 1);
    mem.write_slice(&0x100u32.to_le_bytes(), GuestAddress(0x40_000))
        .expect("pfn");
    ring.set_desc(&mem, 0, 0x40_000, 4, 0, 0);
    ring.publish(&mem, 0);
    w32(&mut dev, 0x70, 15);
    // DRIVER_OK returns once the handler has started (and taken the buffer).
    assert_eq!(ring.used_idx(&mem), 1);
    assert_eq!(dev.device().held_pages(), 1);
}

/// A 64 MiB VM's balloon (floor 16) under a 32 MiB budget, ticking every
/// 10 ms.
fn budgeted_balloon(
    dev: MmioTransport<Balloon>,
) -> (crate::mem::BalloonHandle, crate::mem::MemoryManager) {
    use crate::config::{BalloonOptions, HostMemorySpec, MemorySpec};
    use crate::mem::{BalloonHandle, MemoryManager};
    use std::sync::Mutex;

    let handle = BalloonHandle {
        device: Arc::new(Mutex::new(dev)),
        size_mib: 64,
        options: BalloonOptions {
            target_mib: None,
            deflate_on_oom: true,
            stats_interval_s: 1,
            free_page_reporting: false,
        },
    };
    let mut spec = MemorySpec::defaults(64);
    (spec.floor_mib, spec.ceiling_mib) = (16, 64);
    let host = HostMemorySpec {
        budget_mib: 32,
        tick_ms: 10,
    };
    let mut mem = MemoryManager::new(Some(host)).expect("allocator");
    mem.add_vm(0, &handle, &spec);
    mem.start().expect("tick");
    (handle, mem)
}

/// The allocator counts what the device saw inflated, not the `actual` the
/// driver writes: a driver that claims its whole balloon while keeping its
/// pages still holds all its RAM in the allocator's eyes (so it is given
/// nothing for the claim) and is reported as over its target.
#[test]
fn a_driver_that_claims_its_balloon_without_inflating_is_over_its_target() {
    let Driver { dev, _thread, .. } = driver(ALL, 0, 2);
    let (handle, mut mem) = budgeted_balloon(dev);
    for _ in 0..crate::mem::runtime::LAG_TICKS + 2 {
        mem.on_tick(std::iter::once((0, &handle)));
        // The driver claims whatever it is asked for, and inflates nothing.
        let mut dev = handle.device.lock().expect("device");
        let target = dev.device().target_pages();
        w32(&mut dev, 0x104, target);
    }
    let s = mem.stats(0, &handle);
    assert_eq!(s.alloc_target_mib, Some(32), "{s:?}");
    assert_eq!(s.balloon_target_mib, 32, "{s:?}");
    assert_eq!(s.balloon_actual_mib, 32, "the driver's claim: {s:?}");
    assert_eq!(s.balloon_held_mib, 0, "{s:?}");
    assert_eq!(s.guest_mib, 64, "{s:?}");
    assert!(s.over_target, "{s:?}");
}

/// The allocator's tick runs on the real-time event loop and must not wait
/// for a balloon whose lock a vCPU holds (preempted in an MMIO access):
/// it goes on with what it knows, and sets the size it decided once the
/// lock is free.
#[test]
fn the_allocator_tick_does_not_wait_for_a_balloon_a_vcpu_holds() {
    use std::sync::mpsc;
    use std::time::Duration;

    let Driver { dev, _thread, .. } = driver(ALL, 0, 2);
    let (handle, mut mem) = budgeted_balloon(dev);
    let handle = Arc::new(handle);

    // A "vCPU" holds the balloon while the tick and a statistics read run
    // on another thread, which must come back.
    let held = handle.device.lock().expect("device");
    let (done_tx, done) = mpsc::channel();
    let ticker = {
        let handle = handle.clone();
        std::thread::spawn(move || {
            mem.on_tick(std::iter::once((0, &*handle)));
            let s = mem.stats(0, &handle);
            done_tx.send(()).expect("send");
            (mem, s)
        })
    };
    let came_back = done.recv_timeout(Duration::from_secs(10)).is_ok();
    let target_while_held = held.device().target_pages();
    drop(held);
    assert!(came_back, "the tick waited for the balloon's lock");
    let (mut mem, s) = ticker.join().expect("ticker");
    assert_eq!(target_while_held, 0);
    assert_eq!(mem.busy(), 1, "the tick skipped its read");
    assert_eq!(s, Default::default(), "no figures read yet: {s:?}");

    // The lock is free: the next tick sets the size decided meanwhile.
    mem.on_tick(std::iter::once((0, &*handle)));
    let s = mem.stats(0, &handle);
    assert_eq!(s.alloc_target_mib, Some(32), "{s:?}");
    assert_eq!(s.balloon_target_mib, 32, "{s:?}");
    assert_eq!(mem.busy(), 1);
}
