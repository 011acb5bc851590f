//! Target `blk`: virtio-blk end to end through its transport, with a real
//! device thread and a real disk file (no KVM, [`device::Bench`]), on the
//! sync engine and, where the kernel lets us set one up, on io_uring. The
//! guest posts requests laid out as [`blk_model::Shape`]s (every type,
//! sectors on both sides of the end, any lengths, data the wrong way, the
//! status descriptor missing or empty, headers split or cut short), the
//! same head twice, several at once, and chains of made-up descriptors,
//! while the driver writes registers and resets.
//!
//! What must hold, whatever the guest does (besides the bench's checks):
//! - every I/O stays inside the disk: the file never changes length, the
//!   partial sector past the capacity never changes, and a read-only
//!   drive's file is byte for byte what it was;
//! - every used element's length is within its chain's writable bytes;
//! - on a device set up properly, every request gets the answer of
//!   docs/devices.md ([`blk_model::Answer`]): its status in its last
//!   writable byte, the used length a read's data plus the status, a
//!   read's data what the file holds, a write's data in the file where it
//!   was addressed, GET_ID's serial;
//! - a malformed chain (or a head already in flight) sets NEEDS_RESET and
//!   nothing more is done: no used element and no change to the file
//!   until the driver resets the device;
//! - the heap grows by a bounded amount while the guest acts and is back
//!   where it was once the device is gone.

use arbitrary::Arbitrary;

use crate::blk_model::Shape;
use crate::blk_rig::{uring_works, Rig};
use crate::device::{Layout, Proper, TransportOp};
use crate::support::{self, Heap, List};

/// Most the heap may grow while the guest acts on a device set up: the
/// handler's table of requests in flight (one per head of the 256-entry
/// queue), the recycled buffer lists of a few chains at once, the engine's
/// iovecs and the device thread's bookkeeping of one handler.
const OPS_HEAP: usize = 64 << 10;
/// Most the heap may keep once a device is gone.
const LEAK_SLACK: usize = 4 << 10;
#[derive(Debug, Clone, Arbitrary)]
pub enum Op {
    Init(Layout),
    /// Any transport operation; made-up chains go to the request queue.
    Transport(TransportOp),
    /// One request, notified.
    Request(Shape),
    /// One request made available twice before the notification.
    Twice(Shape),
    /// Several requests, one notification.
    Batch(List<Shape, 4>),
}

#[derive(Debug, Clone, Arbitrary)]
pub struct Case {
    /// A driver that sets the device up properly and writes no other
    /// register ([`crate::device::calm`]).
    pub calm: bool,
    pub read_only: bool,
    pub uring: bool,
    pub writeback: bool,
    /// Bytes of the partial sector at the end of the file (`% 512`).
    pub tail: u16,
    /// The driver's first set-up.
    pub start: Proper,
    pub ops: List<Op, 24>,
}

pub static TALLY: support::Tally<7> = support::Tally::new([
    "cases",
    "io_uring cases",
    "requests modelled",
    "answered ok",
    "answered an error",
    "needs reset",
    "made-up chains",
]);

/// Drives a disk through `case`; the heap's growth meanwhile.
fn exercise(case: &Case) -> usize {
    let mut rig = Rig::new(case);
    if case.uring && uring_works() {
        TALLY.add("io_uring cases");
    }
    let base = Heap::reset_peak();
    rig.apply(&Op::Init(case.start.layout()), false);
    for op in case.ops.iter() {
        rig.apply(op, case.calm);
    }
    // Still serving, if it should be.
    rig.b.notify(0);
    rig.settle();
    rig.after_op();
    Heap::peak().saturating_sub(base)
}

/// Allocations made once per process are not a device's: one case on
/// each engine runs before any is measured.
fn warm_up() {
    static WARM: std::sync::Once = std::sync::Once::new();
    WARM.call_once(|| {
        for uring in [false, true] {
            let layout = Layout {
                features: !0,
                wild_features: false,
                queues: 1,
                size_log2: 8,
                placement: 0,
            };
            let mut read = regressions::shape(crate::blk_model::Type::In, 2);
            read.pieces = 2;
            let ops = vec![Op::Init(layout), Op::Request(read), Op::Twice(read)];
            exercise(&Case {
                calm: true,
                read_only: false,
                uring,
                writeback: true,
                tail: 0,
                start: Proper {
                    features: !0,
                    size_log2: 8,
                },
                ops: ops.into(),
            });
        }
    });
}

/// Runs one case; panics when a property fails.
pub fn run(case: &Case) {
    warm_up();
    TALLY.add("cases");
    let live_before = Heap::live();
    let grown = exercise(case);
    assert!(
        grown <= OPS_HEAP,
        "the heap grew by {grown} bytes while the guest acted"
    );
    let kept = Heap::live().saturating_sub(live_before);
    assert!(
        kept <= LEAK_SLACK,
        "{kept} bytes stayed on the heap after the device went"
    );
}

#[test]
fn blk() {
    // The heap counters are global: nothing else of this binary runs.
    let _heap = support::exclusive();
    bolero::check!()
        .with_test_time(support::budget(4))
        .with_generator(support::input())
        .for_each(|bytes| support::decode(bytes, run));
    TALLY.report("blk");
}

/// Fixed inputs: the rows of docs/devices.md's table, on both engines.
mod regressions {
    use super::*;
    use crate::blk_model::{Header, Len, Sector, Status, Type};

    pub fn shape(ty: Type, sectors: u8) -> Shape {
        Shape {
            ty,
            sector: Sector::Start(3),
            len: Len::Sectors(sectors),
            way: 0,
            header: Header::Whole,
            status: Status::One,
            pieces: 0,
            misorder: 0,
            fill: 1,
            plain: 255,
        }
    }

    fn init() -> Op {
        Op::Init(Layout {
            features: !0,
            wild_features: false,
            queues: 1,
            size_log2: 8,
            placement: 0,
        })
    }

    fn both_engines(read_only: bool, ops: Vec<Op>) {
        for uring in [false, true] {
            run(&Case {
                calm: false,
                read_only,
                uring,
                writeback: uring,
                tail: 100,
                start: Proper {
                    features: 0,
                    size_log2: 0,
                },
                ops: ops.clone().into(),
            });
        }
    }

    #[test]
    fn reads_writes_and_what_the_table_refuses() {
        let _heap = support::exclusive();
        let mut missing = shape(Type::In, 2);
        missing.status = Status::Missing;
        let mut past = shape(Type::Out, 4);
        past.sector = Sector::End(1);
        let mut wrong = shape(Type::Out, 1);
        wrong.way = 200;
        let get_id = shape(Type::GetId, 1);
        both_engines(
            false,
            vec![
                init(),
                Op::Request(shape(Type::Out, 3)),
                Op::Request(shape(Type::In, 3)),
                Op::Request(missing),
                Op::Request(past),
                Op::Request(wrong),
                Op::Request(get_id),
                Op::Request(shape(Type::Flush, 0)),
                Op::Request(shape(Type::Other(77), 1)),
            ],
        );
        both_engines(true, vec![init(), Op::Request(shape(Type::Out, 1))]);
    }

    #[test]
    fn the_same_head_twice_and_a_malformed_chain_in_a_batch_need_a_reset() {
        let _heap = support::exclusive();
        let mut short = shape(Type::In, 1);
        short.header = Header::Short(9);
        both_engines(
            false,
            vec![
                init(),
                Op::Twice(shape(Type::Out, 2)),
                Op::Request(shape(Type::In, 1)),
            ],
        );
        let batch = vec![shape(Type::GetId, 1), shape(Type::Out, 1), short];
        both_engines(
            false,
            vec![
                init(),
                Op::Batch(batch.into()),
                Op::Request(shape(Type::In, 1)),
                init(),
            ],
        );
    }
}
