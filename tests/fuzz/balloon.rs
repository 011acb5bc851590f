//! Target `balloon`: the balloon device end to end through its transport,
//! with a real device thread (no KVM, [`device::Bench`]), driven by a guest
//! that writes any register, ring, PFN array, statistics buffer or
//! free-page report, while the monitor sets targets and asks for
//! statistics.
//!
//! What must hold, whatever the guest does (besides the bench's own
//! checks of the registers and of the device thread's liveness):
//! - every range the device discards lies inside one region of guest RAM;
//! - the pages the device says the balloon holds are what it inflated less
//!   what it deflated since the last reset, never more than guest RAM has,
//!   and a reset empties it; the host never refuses a discard;
//! - the configuration space holds the target the monitor set;
//! - the heap grows by a bounded amount while the guest acts, however much
//!   it sends, and is back where it was once the device is gone.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use arbitrary::Arbitrary;
use hearth::bus::BusDevice;
use hearth::virtio::balloon::{Balloon, BalloonConfig, Madvise, Reclaim, F_STATS_VQ};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::device::{ram_page, Bench, Layout, Pfn, TransportOp, RAM_PAGES, REGIONS};
use crate::support::{self, Heap, List};

/// Most the heap may grow while the guest acts on a device set up.
const OPS_HEAP: usize = 64 << 10;
/// Most the heap may keep once a device is gone (first-use allocations
/// of the thread and event machinery).
const LEAK_SLACK: usize = 4 << 10;

/// Discards outside one RAM region, as seen by [`Recorder`].
static STRAY_DISCARDS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static DISCARDED: AtomicU64 = AtomicU64::new(0);

/// Checks each discard, then does it as the monitor does.
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
pub enum Op {
    /// The driver sets the device up (also among the transport's ops, but
    /// a case should get there often).
    Init(Layout),
    Transport(TransportOp),
    /// One chain on `queue % 4`: pages of guest RAM, one of them replaced
    /// by `odd` if given, split into `parts % 4 + 1` buffers (which are
    /// device-writable when `flags & 7 == 7`); then the queue notified.
    Pfns {
        queue: u8,
        pages: List<u16, 300>,
        odd: Option<(u16, Pfn)>,
        parts: u8,
        flags: u8,
    },
    /// A statistics buffer of (tag, value) entries, `trim % 11` bytes cut.
    Stats {
        queue: u8,
        entries: List<(u16, u64), 12>,
        trim: u8,
    },
    /// A free-page report: device-writable runs of `pages % 16 + 1` pages,
    /// misaligned when `skew` is 0xff.
    Report {
        queue: u8,
        runs: List<(Pfn, u8, u8), 6>,
    },
    /// The monitor asks for a balloon of this many pages.
    Target(u32),
    /// The monitor asks for fresh statistics.
    RequestStats,
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

/// At a reset: the counters the balloon's holdings are measured from.
fn mark_counters(balloon: &Balloon, marks: &mut [u64; 4]) {
    let c = balloon.counters();
    (marks[0], marks[1]) = (c.inflated_pages, c.deflated_pages);
    assert_eq!(balloon.held_pages(), 0, "a reset empties the balloon");
}

fn post_pfns(
    b: &mut Bench<Balloon>,
    q: u8,
    pages: &[u16],
    odd: Option<(u16, Pfn)>,
    parts: u8,
    write: bool,
) {
    let mut bytes = [0u8; 4 * 300];
    for (slot, &page) in bytes.chunks_exact_mut(4).zip(pages) {
        slot.copy_from_slice(&ram_page(page).to_le_bytes());
    }
    if let Some((at, pfn)) = odd.filter(|_| !pages.is_empty()) {
        let at = 4 * (usize::from(at) % pages.len());
        bytes[at..at + 4].copy_from_slice(&pfn.value().to_le_bytes());
    }
    let per = pages.len().div_ceil(usize::from(parts % 4 + 1)).max(1);
    let mut descs = [(0u64, 0u32, false); 4];
    let mut n = 0;
    for piece in bytes[..4 * pages.len()].chunks(4 * per) {
        descs[n] = (b.put(piece), piece.len() as u32, write);
        n += 1;
    }
    if pages.is_empty() {
        // An empty PFN buffer is an empty descriptor: refused.
        descs[0] = (b.buffer(4), 0, write);
        n = 1;
    }
    b.post(q, &descs[..n]);
}

fn post_stats(b: &mut Bench<Balloon>, q: u8, entries: &[(u16, u64)], trim: u8) {
    let mut bytes = [0u8; 10 * 12];
    for (slot, (tag, value)) in bytes.chunks_exact_mut(10).zip(entries) {
        slot[..2].copy_from_slice(&(tag % 12).to_le_bytes());
        slot[2..].copy_from_slice(&value.to_le_bytes());
    }
    let len = (10 * entries.len()).saturating_sub(usize::from(trim % 11));
    let at = b.put(&bytes[..len.max(1)]);
    b.post(q, &[(at, len as u32, false)]);
}

fn post_report(b: &mut Bench<Balloon>, q: u8, runs: &[(Pfn, u8, u8)]) {
    let mut descs = [(0u64, 0u32, true); 6];
    for (d, &(pfn, pages, skew)) in descs.iter_mut().zip(runs) {
        let addr = u64::from(pfn.value()) << 12;
        let len = u32::from(pages % 16 + 1) << 12;
        *d = if skew == 0xff {
            (addr + 0x800, len - 0x10, true)
        } else {
            (addr, len, true)
        };
    }
    b.post(q, &descs[..runs.len()]);
}

fn request_stats(b: &mut Bench<Balloon>, config: &BalloonConfig) {
    let acked = b.dev.acked_features() & (1 << F_STATS_VQ) != 0;
    let served = b.dev.is_active() && config.stats && acked;
    let before = b.dev.device().stats_requests_served();
    b.dev.device().request_stats();
    if served {
        b.wait("a statistics request", |b| {
            b.dev.device().stats_requests_served() > before || b.needs_reset()
        });
    }
}

fn notify(b: &mut Bench<Balloon>, queue: u8) {
    if b.notify(u32::from(queue % 4)) {
        TALLY.add(if b.needs_reset() {
            "needs reset"
        } else {
            "served"
        });
    }
}

/// The balloon holds what it inflated less what it deflated.
fn check_counts(b: &Bench<Balloon>) {
    let c = b.dev.device().counters();
    let held = b.dev.device().held_pages();
    let (inflated, deflated) = (c.inflated_pages - b.marks[0], c.deflated_pages - b.marks[1]);
    assert_eq!(
        held,
        inflated - deflated,
        "held pages against the counters {c:?}"
    );
    assert!(
        held <= u64::from(RAM_PAGES),
        "the balloon holds {held} pages of {RAM_PAGES}"
    );
    assert_eq!(c.discard_errors, 0, "a discard the host refused");
}

fn apply(b: &mut Bench<Balloon>, config: &BalloonConfig, target: &mut u32, op: &Op) {
    let was_active = b.dev.is_active();
    match op {
        Op::Init(layout) => b.init(layout),
        Op::Transport(op) => b.transport(op),
        Op::Pfns {
            queue,
            pages,
            odd,
            parts,
            flags,
        } => {
            post_pfns(b, *queue, pages, *odd, *parts, flags & 7 == 7);
            notify(b, *queue);
        }
        Op::Stats {
            queue,
            entries,
            trim,
        } => {
            post_stats(b, *queue, entries, *trim);
            notify(b, *queue);
        }
        Op::Report { queue, runs } => {
            post_report(b, *queue, runs);
            notify(b, *queue);
        }
        Op::Target(pages) => {
            *target = *pages;
            b.dev.set_target_pages(*pages);
        }
        Op::RequestStats => request_stats(b, config),
    }
    if !was_active && b.dev.is_active() {
        TALLY.add("activations");
    }
    let mut num_pages = [0u8; 4];
    b.dev.read(0x100, &mut num_pages);
    assert_eq!(u32::from_le_bytes(num_pages), *target, "num_pages");
    check_counts(b);
}

/// Allocations made once per process (thread-locals of the first device
/// thread, lazily built statics) are not a device's: one case runs before
/// any is measured.
fn warm_up() {
    static WARM: std::sync::Once = std::sync::Once::new();
    WARM.call_once(|| {
        let layout = Layout {
            features: !0,
            wild_features: false,
            queues: 4,
            size_log2: 4,
            placement: 0,
        };
        let pfns = Op::Pfns {
            queue: 0,
            pages: vec![1].into(),
            odd: None,
            parts: 0,
            flags: 0,
        };
        let ops = vec![Op::Init(layout), Op::RequestStats, pfns];
        let config = BalloonConfig {
            stats: true,
            deflate_on_oom: true,
            reporting: true,
        };
        exercise(&config, &ops);
    });
}

/// Drives a balloon through `ops`; the heap's growth meanwhile.
fn exercise(config: &BalloonConfig, ops: &[Op]) -> usize {
    let balloon = Balloon::new(*config, recorder).expect("a balloon");
    let mut b = Bench::new(balloon, "balloon0");
    b.on_reset = mark_counters;
    let mut target = 0;
    let base = Heap::reset_peak();
    for op in ops {
        apply(&mut b, config, &mut target, op);
    }
    // Still serving, if it should be.
    notify(&mut b, 0);
    let c = b.dev.device().counters();
    TALLY.add_n("inflated pages", c.inflated_pages);
    TALLY.add_n("reported bytes", c.reported_bytes);
    Heap::peak().saturating_sub(base)
}

/// Runs one case; panics when a property fails.
pub fn run(case: &Case) {
    warm_up();
    TALLY.add("cases");
    let config = BalloonConfig {
        stats: case.stats,
        deflate_on_oom: case.deflate_on_oom,
        reporting: case.reporting,
    };
    let live_before = Heap::live();
    let grown = exercise(&config, &case.ops);
    assert!(
        grown <= OPS_HEAP,
        "the heap grew by {grown} bytes while the guest acted"
    );
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

/// Cases worth keeping whatever the random inputs do.
mod regressions {
    use super::*;

    fn init(features: u32, queues: u8, placement: u8) -> Op {
        Op::Init(Layout {
            features,
            wild_features: false,
            queues,
            size_log2: 4,
            placement,
        })
    }

    fn case(ops: Vec<Op>) -> Case {
        Case {
            stats: true,
            deflate_on_oom: true,
            reporting: true,
            ops: ops.into(),
        }
    }

    fn pfns(queue: u8, pages: Vec<u16>) -> Op {
        Op::Pfns {
            queue,
            pages: pages.into(),
            odd: None,
            parts: 0,
            flags: 0,
        }
    }

    #[test]
    fn a_run_of_pages_across_two_regions_that_touch() {
        let _heap = support::exclusive();
        // Pages 0x1ff and 0x200 of RAM: the last of one region, the first
        // of the next: one run, discarded as two ranges.
        run(&case(vec![
            init(0, 2, 0),
            pfns(0, vec![0xff, 0x100, 0x1ff, 0x200, 0x1ff]),
        ]));
    }

    #[test]
    fn a_report_running_into_the_hole_and_all_rings_on_one_page() {
        let _heap = support::exclusive();
        let report = Op::Report {
            queue: 2,
            runs: vec![(Pfn::Span(0x1fe), 4, 0), (Pfn::Ram(0), 0, 0)].into(),
        };
        run(&case(vec![
            init(1 << 5, 3, 252),
            report.clone(),
            init(1 << 5, 3, 0),
            report,
        ]));
    }
}
