//! Target `net`: virtio-net end to end through its transport, with a real
//! device thread (no KVM, [`device::Bench`]) and a datagram socket pair as
//! its tap. The guest sends frames (any header, any length from none to
//! over the longest, split across descriptors, with a device-writable
//! buffer at the end) and posts receive buffers (too small for a header,
//! an MTU's worth, room for the longest frame, with a device-readable
//! buffer first, empty); the host sends frames of any length; the driver
//! also writes registers, makes up chains and asks for features the
//! device never offered (mergeable receive buffers).
//!
//! What must hold, whatever the guest does (besides the bench's checks):
//! - every frame on the tap is between an Ethernet header's and the
//!   longest frame's length; used lengths are within their chains;
//! - on a device set up properly, docs/network.md's rules, by a model
//!   ([`net_model::tx_fate`] and the receive side in `Rig::converge`):
//!   a frame the guest sends reaches the tap exactly as sent (its header,
//!   `num_buffers` 0, and its bytes) or is dropped and counted by cause;
//!   host frames land in order in the buffers in order, header first with
//!   `num_buffers` 1, a frame too long for its buffer dropped and the
//!   buffer kept, a short one dropped; a device-readable receive buffer
//!   needs a reset; every counter is the model's;
//! - the tap's offloads are those the guest accepted, and a driver that
//!   wants mergeable buffers never gets the device running;
//! - the heap grows by no more than the handler's two frame buffers and a
//!   little while the guest acts, and is back once the device is gone.

use arbitrary::Arbitrary;

use crate::device::{Layout, Proper, TransportOp};
use crate::net_model::{HostFrame, RxBuf, TxFrame, HDR, MAX_FRAME};
use crate::net_rig::{Rig, RX, TX};
use crate::support::{self, Heap, List};

/// Most the heap may grow while the guest acts: the handler's two frame
/// buffers (allocated once at DRIVER_OK), and the bookkeeping of a handler.
const OPS_HEAP: usize = 2 * (HDR + MAX_FRAME) + (64 << 10);
/// Most the heap may keep once a device is gone.
const LEAK_SLACK: usize = 4 << 10;

#[derive(Debug, Clone, Arbitrary)]
pub enum Op {
    Init(Layout),
    /// Any transport operation (made-up chains included).
    Transport(TransportOp),
    Send(TxFrame),
    Post(List<RxBuf, 4>),
    Arrive(List<HostFrame, 4>),
}

#[derive(Debug, Clone, Arbitrary)]
pub struct Case {
    /// A driver that sets the device up properly and writes no other
    /// register ([`crate::device::calm`]).
    pub calm: bool,
    pub mtu: Option<u16>,
    /// The driver's first set-up.
    pub start: Proper,
    pub ops: List<Op, 24>,
}

pub static TALLY: support::Tally<7> = support::Tally::new([
    "cases",
    "activations",
    "frames sent",
    "frames dropped",
    "frames received",
    "needs reset",
    "made-up chains",
]);

fn apply(rig: &mut Rig, op: &Op, calm: bool) {
    let was_active = rig.b.dev.is_active();
    let transport = match op {
        Op::Init(l) => Some(TransportOp::Init(*l)),
        Op::Transport(t) => Some(t.clone()),
        _ => None,
    };
    let calmed = match (calm, &transport) {
        (true, Some(t)) => match crate::device::calm(t) {
            Some(t) => Some(Op::Transport(t)),
            None => return rig.converge(),
        },
        _ => None,
    };
    match calmed.as_ref().unwrap_or(op) {
        Op::Init(layout) | Op::Transport(TransportOp::Init(layout)) => rig.init(layout),
        Op::Transport(TransportOp::Chain {
            queue,
            descs,
            notify,
        }) => {
            TALLY.add("made-up chains");
            rig.made_up(usize::from(queue % 2), descs, *notify);
        }
        Op::Transport(op) => {
            rig.b.transport(op);
            if !matches!(op, TransportOp::Read { .. }) {
                // The driver's view of the queues is not the device's.
                rig.sane = false;
            }
        }
        Op::Send(frame) => rig.send(frame),
        Op::Post(bufs) => rig.post(bufs),
        Op::Arrive(frames) => rig.arrive(frames),
    }
    if !was_active && rig.b.dev.is_active() {
        TALLY.add("activations");
    }
    rig.converge();
}

/// Drives an interface through `case`; the heap's growth meanwhile.
fn exercise(case: &Case) -> usize {
    let mut rig = Rig::new(case.mtu);
    let base = Heap::reset_peak();
    apply(&mut rig, &Op::Init(case.start.layout()), false);
    for op in case.ops.iter() {
        apply(&mut rig, op, case.calm);
    }
    // Still serving, if it should be.
    rig.b.notify(RX as u32);
    rig.b.notify(TX as u32);
    rig.converge();
    Heap::peak().saturating_sub(base)
}

/// Allocations made once per process are not a device's.
fn warm_up() {
    static WARM: std::sync::Once = std::sync::Once::new();
    WARM.call_once(|| {
        let ops = vec![
            regressions::init(),
            Op::Post(vec![regressions::buf(1500)].into()),
            Op::Arrive(vec![regressions::host(60)].into()),
            Op::Send(regressions::frame(60)),
        ];
        exercise(&Case {
            calm: true,
            mtu: None,
            start: regressions::start(),
            ops: ops.into(),
        });
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
fn net() {
    // The heap counters are global: nothing else of this binary runs.
    let _heap = support::exclusive();
    bolero::check!()
        .with_test_time(support::budget(4))
        .with_generator(support::input())
        .for_each(|bytes| support::decode(bytes, run));
    TALLY.report("net");
}

/// Fixed inputs: frames at the limits both ways.
mod regressions {
    use super::*;
    use crate::net_model::{FrameLen, RxLen, TxHdr};

    pub fn init() -> Op {
        Op::Init(Layout {
            features: !0,
            wild_features: false,
            queues: 2,
            size_log2: 8,
            placement: 0,
        })
    }

    pub fn start() -> Proper {
        Proper {
            features: !0,
            size_log2: 8,
        }
    }

    pub fn buf(len: u16) -> RxBuf {
        RxBuf {
            len: RxLen::Any(len),
            pieces: 1,
            readable: 0,
        }
    }

    pub fn host(len: u16) -> HostFrame {
        HostFrame {
            hdr: [0; HDR],
            len: FrameLen::Jumbo(len),
            fill: 3,
        }
    }

    pub fn frame(len: u16) -> TxFrame {
        TxFrame {
            hdr: TxHdr {
                plain: 0,
                flags: 0,
                gso_type: 0,
                hdr_len: 0,
                gso_size: 0,
                csum_start: 0,
                csum_offset: 0,
                num_buffers: 7,
            },
            len: FrameLen::Jumbo(len),
            pieces: 2,
            hdr_alone: true,
            writable: 0,
            fill: 5,
        }
    }

    #[test]
    fn the_longest_frame_each_way_and_one_byte_more() {
        let _heap = support::exclusive();
        let mut over = frame(0);
        over.len = FrameLen::Max(1);
        let mut longest = frame(0);
        longest.len = FrameLen::Max(0);
        let mut big = host(0);
        big.len = FrameLen::Max(0);
        let ops = vec![
            init(),
            Op::Send(longest),
            Op::Send(over),
            Op::Send(frame(13)),
            Op::Arrive(vec![big, host(13), host(100)].into()),
            Op::Post(vec![buf(60), buf(u16::MAX)].into()),
            Op::Post(vec![buf(200)].into()),
        ];
        run(&Case {
            calm: false,
            mtu: Some(9000),
            start: start(),
            ops: ops.into(),
        });
    }

    #[test]
    fn a_receive_buffer_too_small_for_a_header_and_a_readable_one() {
        let _heap = support::exclusive();
        let mut readable = buf(2048);
        readable.readable = 255;
        let ops = vec![
            init(),
            Op::Post(vec![buf(8), readable].into()),
            Op::Arrive(vec![host(60), host(60)].into()),
            Op::Send(frame(60)),
        ];
        run(&Case {
            calm: false,
            mtu: None,
            start: start(),
            ops: ops.into(),
        });
    }
}
