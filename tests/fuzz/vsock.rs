//! Target `vsock`: the vsock device end to end through its transport,
//! with a real device thread (no KVM, [`device::Bench`]), its socket and
//! two host listeners in a scratch directory. The guest sends packets of
//! any op, in any order, on connections that exist or not, with lengths
//! that lie, credit figures of any kind, wrong addresses and types; it
//! posts receive buffers with room for a header only, or not even that.
//! Host processes connect with good, broken and unfinished `CONNECT`
//! lines, in crowds past the connection limit, write, read and close.
//!
//! What must hold, whatever the guest and the host processes do (besides
//! the bench's checks):
//! - at most 256 connections are open, never more than were tried, and
//!   none once the driver resets the device;
//! - every packet to the guest is well formed (from CID 2 to the guest's,
//!   a stream, a known op, flags only on SHUTDOWN, a payload only on RW,
//!   the 64 KiB buffer announced, its length the used length less the
//!   header) and lands in the buffers in the order they were posted; a
//!   buffer with no room for a header is never used;
//! - the payload sent on a connection never exceeds the credit the guest
//!   announced (docs/network.md, "Credit");
//! - a host process reads `OK <port>` and then exactly the bytes the guest
//!   sent on that connection, and the guest gets exactly the bytes the
//!   host process wrote after its line;
//! - the heap grows by at most the handler's two packet buffers, its
//!   tables and 128 KiB per connection tried (each buffers at most the
//!   64 KiB it announced), and is back once the device is gone.

use arbitrary::Arbitrary;
use hearth::virtio::vsock::stats::VsockCounts;
use hearth::virtio::vsock::MAX_CONNECTIONS;

use crate::device::{Layout, Proper, TransportOp};
use crate::support::{self, Heap, List};
use crate::vsock_model::{Pkt, CONN_BUF, MAX_PAYLOAD};
use crate::vsock_rig::{Rig, RX, TX};

/// Most the heap may grow while the guest acts, besides connections: the
/// handler's two packet buffers, its table of connections, the RSTs owed
/// (at most 512) and its bookkeeping.
const OPS_HEAP: usize = 2 * MAX_PAYLOAD + (128 << 10);
/// What one connection may add: its buffer of at most the 64 KiB it
/// announced (a `VecDeque` grown by doubling holds less than twice that)
/// and its entries in the handler's tables.
const PER_CONN: usize = 2 * CONN_BUF as usize + (2 << 10);
/// Most the heap may keep once a device is gone.
const LEAK_SLACK: usize = 4 << 10;

#[derive(Debug, Clone, Arbitrary)]
pub enum Op {
    Init(Layout),
    /// Any transport operation (made-up chains included).
    Transport(TransportOp),
    Send(Pkt),
    /// The guest answers the `n`th REQUEST it got from the host.
    Respond(u8),
    /// Receive buffers (see `Rig::post`).
    Post(List<u8, 6>),
    Connect {
        port: u8,
        line: u8,
        seed: u8,
    },
    /// Many host processes at once (`n % 280`).
    Crowd(u16),
    HostWrite {
        conn: u8,
        len: u16,
    },
    HostRead(u8),
    HostClose {
        conn: u8,
        whole: bool,
    },
}

#[derive(Debug, Clone, Arbitrary)]
pub struct Case {
    /// A driver that sets the device up properly and writes no other
    /// register ([`crate::device::calm`]).
    pub calm: bool,
    /// The driver's first set-up, and the receive buffers it posts then.
    pub start: Proper,
    pub prime: List<u8, 8>,
    pub ops: List<Op, 32>,
}

pub static TALLY: support::Tally<8> = support::Tally::new([
    "cases",
    "host connects",
    "host connections",
    "packets to the guest",
    "bytes to the guest",
    "bytes to the host",
    "made-up chains",
    "activations",
]);

fn apply(rig: &mut Rig, op: &Op, calm: bool) {
    let was_active = rig.b.dev.is_active();
    rig.begin_op();
    let transport = match op {
        Op::Init(l) => Some(TransportOp::Init(*l)),
        Op::Transport(t) => Some(t.clone()),
        _ => None,
    };
    let calmed = match (calm, &transport) {
        (true, Some(t)) => match crate::device::calm(t) {
            Some(t) => Some(Op::Transport(t)),
            None => return rig.check(),
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
            let q = usize::from(queue % 2);
            let out = crate::device::made_up(descs);
            let size = rig.b.rings[q].size;
            let head = rig.b.rings[q].avail_idx.wrapping_mul(4) % size;
            rig.post_at(q, head, &out[..descs.len()]);
            rig.sane = false;
            if *notify {
                rig.b.notify(q as u32);
            }
        }
        Op::Transport(op) => {
            rig.b.transport(op);
            if !matches!(op, TransportOp::Read { .. }) {
                rig.sane = false;
            }
        }
        Op::Send(p) => rig.send(p),
        Op::Respond(n) => rig.respond(*n),
        Op::Post(rooms) => rig.post(rooms),
        Op::Connect { port, line, seed } => rig.connect(*port, *line, *seed),
        Op::Crowd(n) => rig.crowd(*n),
        Op::HostWrite { conn, len } => rig.host_write(*conn, *len),
        Op::HostRead(conn) => rig.host_read(*conn),
        Op::HostClose { conn, whole } => rig.host_close(*conn, *whole),
    }
    if matches!(
        op,
        Op::Connect { .. }
            | Op::Crowd(_)
            | Op::HostWrite { .. }
            | Op::HostRead(_)
            | Op::HostClose { .. }
    ) {
        rig.settle();
    }
    if !was_active && rig.b.dev.is_active() {
        TALLY.add("activations");
    }
    rig.check();
}

/// Drives a vsock device through `case`; the heap's growth meanwhile,
/// and how much it may grow.
fn exercise(case: &Case) -> (usize, usize) {
    let mut rig = Rig::new();
    let base = Heap::reset_peak();
    apply(&mut rig, &Op::Init(case.start.layout()), false);
    rig.begin_op();
    rig.post(&case.prime);
    rig.check();
    for op in case.ops.iter() {
        apply(&mut rig, op, case.calm);
    }
    // Still serving, if it should be.
    rig.b.notify(TX as u32);
    rig.b.notify(RX as u32);
    rig.begin_op();
    rig.check();
    let conns = (rig.attempts as usize).min(MAX_CONNECTIONS);
    let grown = Heap::peak().saturating_sub(base);
    // The device's connections go with its reset.
    rig.b.write_status(0);
    let open = VsockCounts::read(&rig.shared.counters).open;
    assert_eq!(open, 0, "connections open after a reset");
    (grown, OPS_HEAP + conns * PER_CONN)
}

/// Allocations made once per process are not a device's.
fn warm_up() {
    static WARM: std::sync::Once = std::sync::Once::new();
    WARM.call_once(|| {
        exercise(&regressions::echo());
    });
}

/// Runs one case; panics when a property fails.
pub fn run(case: &Case) {
    warm_up();
    TALLY.add("cases");
    let live_before = Heap::live();
    let (grown, bound) = exercise(case);
    assert!(
        grown <= bound,
        "the heap grew by {grown} bytes while the guest acted (at most {bound})"
    );
    let kept = Heap::live().saturating_sub(live_before);
    assert!(
        kept <= LEAK_SLACK,
        "{kept} bytes stayed on the heap after the device went"
    );
}

#[test]
fn vsock() {
    // The heap counters are global: nothing else of this binary runs.
    let _heap = support::exclusive();
    bolero::check!()
        .with_test_time(support::budget(4))
        .with_generator(support::input())
        .for_each(|bytes| support::decode(bytes, run));
    TALLY.report("vsock");
}

/// Fixed inputs: a whole connection each way, and crowds.
mod regressions {
    use super::*;
    use crate::vsock_model::{Credit, Payload};

    fn start() -> Proper {
        Proper {
            features: !0,
            size_log2: 8,
        }
    }

    /// A packet of `op` (a virtio op number).
    fn pkt(op: u8, src: u8, dst: u8, payload: Payload) -> Pkt {
        Pkt {
            op: 192 + op,
            raw_op: 0,
            src,
            dst,
            raw_src: 0,
            raw_dst: 0,
            cids: 0,
            type_: 0,
            payload,
            lie: 0,
            flags: 0,
            credit: Credit::Generous,
            fill: 9,
            split: 0,
        }
    }

    /// A host process connects to guest port 50, the guest answers, data
    /// both ways; the guest connects to the listener on 1000 and sends.
    pub fn echo() -> Case {
        let ops = vec![
            Op::Post(vec![20, 0, 20, 20].into()),
            Op::Connect {
                port: 0,
                line: 0,
                seed: 1,
            },
            Op::Send(pkt(2, 0, 64, Payload::Small(0))),
            Op::HostWrite { conn: 0, len: 300 },
            Op::Send(pkt(5, 0, 64, Payload::Medium(1000))),
            Op::HostRead(0),
            Op::Send(pkt(1, 1, 0, Payload::Small(0))),
            Op::Send(pkt(5, 1, 0, Payload::Small(100))),
            Op::HostRead(128),
            Op::Post(vec![0, 100].into()),
        ];
        Case {
            calm: true,
            start: start(),
            prime: vec![].into(),
            ops: ops.into(),
        }
    }

    #[test]
    fn a_connection_each_way() {
        let _heap = support::exclusive();
        run(&echo());
    }

    #[test]
    fn a_crowd_past_the_limit_and_a_guest_beyond_its_credit() {
        let _heap = support::exclusive();
        let mut big = pkt(5, 1, 0, Payload::Big(4095));
        big.credit = Credit::Stingy(0);
        let mut ops = vec![
            Op::Crowd(279),
            Op::Post(vec![0; 6].into()),
            Op::Send(pkt(1, 1, 0, Payload::Small(0))),
        ];
        ops.extend(std::iter::repeat_n(Op::Send(big), 6));
        run(&Case {
            calm: false,
            start: start(),
            prime: vec![].into(),
            ops: ops.into(),
        });
    }
}
