//! Target `balloon`: the balloon device end to end through its transport,
//! with a real device thread (no KVM), driven by a guest that writes any
//! register, ring, PFN array, statistics buffer or free-page report.
//!
//! What must hold, whatever the guest does:
//! - nothing panics, and the device thread keeps serving: a notification
//!   to an active, healthy device is answered within seconds;
//! - every range the device discards lies inside one region of guest RAM;
//! - the pages the device says the balloon holds are what it inflated less
//!   what it deflated since the last reset, never more than guest RAM has;
//! - registers read what the transport promises (magic, version, device,
//!   queue sizes; a status made only of bits the driver set, and
//!   NEEDS_RESET), the configuration space the target the monitor set;
//! - the heap grows by a bounded amount while the guest acts, however much
//!   it sends, and is back where it was once the device is gone.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use hearth::bus::BusDevice;
use hearth::virtio::balloon::{Balloon, BalloonConfig, Madvise, Reclaim, F_STATS_VQ};
use hearth::virtio::mmio::MmioTransport;
use hearth::virtio::thread::DeviceThread;
use hearth::virtio::{DeviceState, InterruptLine, STATUS_NEEDS_RESET};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::balloon_driver::{r32, w32, Guest, Op, RAM_PAGES, REGIONS, REG_STATUS};
use crate::support::{self, CountingIrq, Heap, List};

/// Most the heap may grow while the guest acts on a device set up.
const OPS_HEAP: usize = 64 << 10;
/// Most the heap may keep once a device is gone (first-use allocations
/// of the thread and event machinery).
const LEAK_SLACK: usize = 4 << 10;
/// How long a healthy device may take to serve a notification.
const SERVE_DEADLINE: Duration = Duration::from_secs(5);

/// Discards outside one RAM region, as seen by [`Recorder`].
static STRAY_DISCARDS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static DISCARDED: AtomicU64 = AtomicU64::new(0);

/// Checks each discard before doing it as the monitor does.
struct Recorder;

impl Reclaim for Recorder {
    fn discard(&mut self, mem: &GuestMemoryMmap, addr: GuestAddress, len: u64) -> io::Result<()> {
        let inside = REGIONS.iter().any(|&(start, size)| {
            start <= addr.0
                && addr
                    .0
                    .checked_add(len)
                    .is_some_and(|end| end <= start + size)
        });
        if !inside || len == 0 {
            let mut stray = STRAY_DISCARDS.lock().unwrap_or_else(|e| e.into_inner());
            stray.push(format!("{:#x}+{len:#x}", addr.0));
            return Err(io::Error::other("outside guest RAM"));
        }
        DISCARDED.fetch_add(len, Ordering::Relaxed);
        Madvise.discard(mem, addr, len)
    }
}

fn recorder() -> Box<dyn Reclaim> {
    Box::new(Recorder)
}

#[derive(Debug, Clone, Arbitrary)]
pub struct Case {
    pub stats: bool,
    pub deflate_on_oom: bool,
    pub reporting: bool,
    pub ops: List<Op, 48>,
}

static TALLY: support::Tally<6> = support::Tally::new([
    "cases",
    "activations",
    "served",
    "needs reset",
    "inflated pages",
    "reported bytes",
]);

/// One device and its guest.
struct Bench {
    dev: MmioTransport<Balloon>,
    guest: Guest,
    config: BalloonConfig,
    /// Every status bit written since the last reset.
    status_written: u32,
    /// (inflated, deflated) at the last reset.
    base: (u64, u64),
    target: u32,
    // Dropped after `dev`.
    _thread: DeviceThread,
}

impl Bench {
    fn new(case: &Case) -> Self {
        let mem = support::memory(&REGIONS);
        let thread = DeviceThread::spawn("fuzz-balloon".into(), None).expect("a device thread");
        let irq = InterruptLine::new(Box::new(CountingIrq::default()));
        let state = Arc::new(DeviceState::new("balloon0", irq));
        let config = BalloonConfig {
            stats: case.stats,
            deflate_on_oom: case.deflate_on_oom,
            reporting: case.reporting,
        };
        let balloon = Balloon::new(config, recorder).expect("a balloon");
        let dev =
            MmioTransport::new(balloon, mem.clone(), state, thread.handle()).expect("a transport");
        Bench {
            dev,
            guest: Guest::new(mem),
            config,
            status_written: 0,
            base: (0, 0),
            target: 0,
            _thread: thread,
        }
    }

    fn needs_reset(&self) -> bool {
        self.dev.state().needs_reset()
    }

    /// Waits until `done` holds; a device that stops serving fails the case.
    fn wait(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + SERVE_DEADLINE;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "the device thread stopped serving ({what})"
            );
            std::thread::yield_now();
        }
    }

    fn write_status(&mut self, value: u32) {
        let was_active = self.dev.is_active();
        w32(&mut self.dev, REG_STATUS, value);
        if value == 0 {
            self.status_written = 0;
            let c = self.dev.device().counters();
            self.base = (c.inflated_pages, c.deflated_pages);
            assert_eq!(
                self.dev.device().held_pages(),
                0,
                "a reset empties the balloon"
            );
        } else {
            self.status_written |= value;
        }
        if !was_active && self.dev.is_active() {
            TALLY.add("activations");
        }
    }

    fn notify(&mut self, queue: u32) {
        let healthy = self.dev.is_active() && queue < 4;
        let before = self.dev.state().notifications();
        w32(&mut self.dev, 0x50, queue);
        if healthy {
            self.wait("a queue notification", |b| {
                b.dev.state().notifications() > before || b.needs_reset()
            });
            TALLY.add(if self.needs_reset() {
                "needs reset"
            } else {
                "served"
            });
        }
    }

    fn request_stats(&mut self) {
        let stats_acked = self.dev.acked_features() & (1 << F_STATS_VQ) != 0;
        let served = self.dev.is_active() && self.config.stats && stats_acked;
        let before = self.dev.device().stats_requests_served();
        self.dev.device().request_stats();
        if served {
            self.wait("a statistics request", |b| {
                b.dev.device().stats_requests_served() > before || b.needs_reset()
            });
        }
    }

    fn read(&mut self, offset: u64) {
        let v = r32(&mut self.dev, offset);
        match offset {
            0x00 => assert_eq!(v, 0x7472_6976, "magic"),
            0x04 => assert_eq!(v, 2, "version"),
            0x08 => assert_eq!(v, 5, "device id"),
            0x34 => assert!(v == 0 || v == 256, "queue size max {v}"),
            REG_STATUS => assert_eq!(
                v & !(self.status_written | STATUS_NEEDS_RESET),
                0,
                "status {v:#x} has bits the driver never set ({:#x})",
                self.status_written
            ),
            _ => {}
        }
    }

    fn config(&mut self, offset: u8, value: u32, len: u8, write: bool) {
        let offset = 0x100 + u64::from(offset % 24);
        let bytes = value.to_le_bytes();
        let len = usize::from(len % 5);
        if write {
            self.dev.write(offset, &bytes[..len]);
            return;
        }
        let mut out = [0u8; 4];
        self.dev.read(offset, &mut out[..len]);
        if offset == 0x100 && len == 4 {
            assert_eq!(u32::from_le_bytes(out), self.target, "num_pages");
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Init { features, queues } => {
                self.write_status(0);
                let was_active = self.dev.is_active();
                self.guest.init(&mut self.dev, *features, *queues);
                self.status_written = r32(&mut self.dev, REG_STATUS) & !STATUS_NEEDS_RESET;
                if !was_active && self.dev.is_active() {
                    TALLY.add("activations");
                }
            }
            Op::Write { reg, value } => match reg.offset() {
                REG_STATUS => self.write_status(*value),
                0x50 => self.notify(*value),
                offset => w32(&mut self.dev, offset, *value),
            },
            Op::Read { reg } => self.read(reg.offset()),
            Op::Config {
                offset,
                value,
                len,
                write,
            } => self.config(*offset, *value, *len, *write),
            Op::Pfns {
                queue,
                pages,
                odd,
                parts,
                flags,
            } => {
                self.guest.pfns(*queue, pages, *odd, *parts, flags & 7 == 7);
                self.notify(u32::from(queue % 4));
            }
            Op::Stats {
                queue,
                entries,
                trim,
            } => {
                self.guest.stats(*queue, entries, *trim);
                self.notify(u32::from(queue % 4));
            }
            Op::Report { queue, runs } => {
                self.guest.report(*queue, runs);
                self.notify(u32::from(queue % 4));
            }
            Op::Chain { queue, descs } => self.guest.chain(*queue, descs),
            Op::Notify(queue) => self.notify(u32::from(*queue % 5)),
            Op::Target(pages) => {
                self.target = *pages;
                self.dev.set_target_pages(*pages);
            }
            Op::RequestStats => self.request_stats(),
            Op::Reset => self.write_status(0),
        }
        self.check_counts();
    }

    /// The balloon holds what it inflated less what it deflated.
    fn check_counts(&self) {
        let c = self.dev.device().counters();
        let held = self.dev.device().held_pages();
        let (inflated, deflated) = (
            c.inflated_pages - self.base.0,
            c.deflated_pages - self.base.1,
        );
        assert_eq!(
            held,
            inflated - deflated,
            "held pages against the counters {c:?}"
        );
        let ram = u64::from(RAM_PAGES);
        assert!(held <= ram, "the balloon holds {held} pages of {ram}");
        assert_eq!(c.discard_errors, 0, "a discard the host refused");
    }
}

/// Runs one case; panics when a property fails.
pub fn run(case: &Case) {
    TALLY.add("cases");
    let live_before = Heap::live();
    {
        let mut bench = Bench::new(case);
        let base = Heap::reset_peak();
        for op in case.ops.iter() {
            bench.apply(op);
        }
        // Still serving, if it should be.
        bench.notify(0);
        let grown = Heap::peak().saturating_sub(base);
        assert!(
            grown <= OPS_HEAP,
            "the heap grew by {grown} bytes while the guest acted"
        );
        let c = bench.dev.device().counters();
        TALLY.add_n("inflated pages", c.inflated_pages);
        TALLY.add_n("reported bytes", c.reported_bytes);
    }
    let kept = Heap::live().saturating_sub(live_before);
    assert!(
        kept <= LEAK_SLACK,
        "{kept} bytes stayed on the heap after the device went"
    );
    let stray = std::mem::take(&mut *STRAY_DISCARDS.lock().unwrap_or_else(|e| e.into_inner()));
    assert!(stray.is_empty(), "discards outside guest RAM: {stray:?}");
}

#[test]
fn balloon() {
    // The heap counters are global: nothing else of this binary runs.
    let _heap = support::exclusive();
    bolero::check!()
        .with_test_time(support::budget(8))
        .with_generator(support::input())
        .for_each(|bytes| support::decode(bytes, run));
    TALLY.report("balloon");
}
