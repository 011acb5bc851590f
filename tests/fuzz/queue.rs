//! Target `queue`: the one reader of descriptor chains, `Queues::pop`,
//! on descriptor tables, available rings and indirect tables a hostile
//! driver wrote, with indirect descriptors negotiated or not.
//!
//! Every chain `pop` takes is compared with a model written from the
//! rules in `src/virtio/queue.rs` (loops found by marking what was seen,
//! not by counting): both refuse it, or both return the same buffers. A
//! chain taken also holds on its own: every buffer non-empty and in guest
//! RAM (by the naive [`support::in_ram`]), readable ones first, at most a
//! queue's worth, its total within the device's bound. The used ring gets
//! what was given back; `undo_pop` hands the same chain out again.

use std::sync::Arc;

use arbitrary::Arbitrary;
use hearth::virtio::queue::Buffer;
use hearth::virtio::{Chain, DeviceState, InterruptLine, QueueError, Queues, F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;

use crate::queue_model::{check_chain, check_streams, is_indirect, model_chain, Expect, Params};
use crate::support::{self, List, RawDesc, Ring, DESC_F_INDIRECT};

/// Guest RAM: two regions with a hole between them.
pub const REGIONS: [(u64, u64); 2] = [(0, 0x1_0000), (0x2_0000, 0x1_0000)];
/// The ring under test, in the first region.
pub const RING: u64 = 0x1000;
/// Where indirect tables go (one 4 KiB slot each).
const TABLES: u64 = 0x4000;
/// Addresses near which buffers are most interesting: the ends of RAM.
const EDGES: [u64; 5] = [0, 0x1_0000, 0x2_0000, 0x3_0000, u64::MAX];

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Addr {
    /// Anywhere in the span of RAM (the hole included).
    Ram(u32),
    /// In the first region, away from its edges.
    Low(u16),
    /// Near an edge of RAM, either side.
    Edge(u8, i8),
    /// An indirect table slot.
    Table(u8),
    Raw(u64),
}

impl Addr {
    fn resolve(self) -> u64 {
        match self {
            Addr::Ram(at) => u64::from(at) % 0x3_0000,
            Addr::Low(at) => 0x8000 + u64::from(at % 0x7000),
            Addr::Edge(which, delta) => {
                EDGES[usize::from(which) % EDGES.len()].wrapping_add_signed(i64::from(delta))
            }
            Addr::Table(slot) => table_addr(slot),
            Addr::Raw(at) => at,
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Len {
    Small(u8),
    Pages(u8),
    /// `n % 33` descriptors' worth (an indirect table), or a byte more.
    Table(u8, bool),
    Raw(u32),
}

impl Len {
    fn resolve(self) -> u32 {
        match self {
            Len::Small(n) => u32::from(n),
            Len::Pages(n) => u32::from(n) << 8,
            Len::Table(n, odd) => 16 * u32::from(n % 33) + u32::from(odd),
            Len::Raw(n) => n,
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct Desc {
    pub addr: Addr,
    pub len: Len,
    /// NEXT and WRITE are its low two bits; INDIRECT when bits 2-4 are set.
    pub flags: u8,
    pub next: u16,
}

impl Desc {
    /// The descriptor as written into a table of `entries`: its `next`
    /// is an index of that table unless it is 0xf000 or more.
    fn raw(self, entries: u16) -> RawDesc {
        RawDesc {
            addr: self.addr.resolve(),
            len: self.len.resolve(),
            flags: u16::from(self.flags & 3)
                | if self.flags & 0x1c == 0x1c {
                    DESC_F_INDIRECT
                } else {
                    0
                },
            next: wild_or(self.next, entries),
        }
    }
}

/// `n` when it is 0xf000 or more (a wild index), else `n % size`.
fn wild_or(n: u16, size: u16) -> u16 {
    if n >= 0xf000 {
        n
    } else {
        n % size.max(1)
    }
}

#[derive(Debug, Clone, Arbitrary)]
pub enum Op {
    Publish(u16),
    /// Writes descriptor `at` as an indirect one over `entries % 33`
    /// entries of table `slot` and publishes it.
    PublishIndirect {
        at: u16,
        slot: u8,
        entries: u8,
    },
    /// The driver moves the available index itself (to at most a ring's
    /// worth out, or to anything at all from 0xf000 up).
    SetAvailIdx(u16),
    Patch(u16, Desc),
    /// `pop` on queue 0 (on one that does not exist for 255).
    Pop(u8),
    /// Give the oldest chain back with this length.
    Used(u32),
    /// Undo the pop just made.
    Undo,
}

#[derive(Debug, Clone, Arbitrary)]
pub struct Case {
    /// Queue maximum `1 << (max_log2 % 9)`, size at most that.
    pub max_log2: u8,
    pub size_log2: u8,
    pub ready: bool,
    pub indirect: bool,
    /// The device's bound on one chain's bytes.
    pub max_bytes: u32,
    /// The descriptor table: `first` and `table` over and over.
    pub first: Desc,
    pub table: List<Desc, 16>,
    /// Indirect tables: (slot, entries), each entry's `next` within the
    /// first 8.
    pub tables: List<(u8, List<Desc, 32>), 4>,
    /// Heads made available before anything else (modulo the size
    /// unless 0xf000 or more, as every head and `next`).
    pub heads: List<u16, 16>,
    /// Then these; then the device takes what is left, as it would.
    pub ops: List<Op, 64>,
}

/// What the pops of all cases gave.
static TALLY: support::Tally<6> = support::Tally::new([
    "cases",
    "empty",
    "ring errors",
    "refused",
    "chains",
    "indirect chains",
]);

fn table_addr(slot: u8) -> u64 {
    TABLES + u64::from(slot % 8) * 0x1000
}

/// The device's queue beside the model's view of it.
struct Sim<'a> {
    case: &'a Case,
    p: Params,
    mem: GuestMemoryMmap,
    ring: Ring,
    q: Queues,
    next_avail: u16,
    used_idx: u16,
    /// Chains taken and not given back yet, oldest first.
    taken: Vec<Chain>,
    resets: usize,
}

/// Most resets (after a refused chain) in one case.
const MAX_RESETS: usize = 4;

impl<'a> Sim<'a> {
    fn new(case: &'a Case) -> Self {
        let max = 1u16 << (case.max_log2 % 9);
        let size = (1u16 << (case.size_log2 % 9)).min(max);
        let p = Params {
            size,
            max,
            indirect: case.indirect,
            max_bytes: u64::from(case.max_bytes),
        };
        let mem = support::memory(&REGIONS);
        let ring = Ring::new(RING, size);
        // The descriptors given fill the table over and over, and each
        // indirect table given at least 16 entries the same way.
        let table = std::iter::once(&case.first).chain(case.table.iter());
        for (i, d) in table.cycle().take(usize::from(size)).enumerate() {
            ring.set_desc(&mem, i as u16, d.raw(size));
        }
        for (slot, entries) in case.tables.iter() {
            let n = entries.len().clamp(16, 256);
            for (i, d) in entries.iter().cycle().take(n).enumerate() {
                support::write_desc(&mem, table_addr(*slot) + 16 * i as u64, d.raw(8));
            }
        }
        let q = Self::queues(case, &p, &mem, &ring);
        let mut sim = Sim {
            case,
            p,
            mem,
            ring,
            q,
            next_avail: 0,
            used_idx: 0,
            taken: Vec::new(),
            resets: 0,
        };
        // A driver has at most a ring's worth out (a hostile one moves the
        // index itself: `SetAvailIdx`).
        for &h in case.heads.iter() {
            sim.publish(h);
        }
        sim
    }

    fn queues(case: &Case, p: &Params, mem: &GuestMemoryMmap, ring: &Ring) -> Queues {
        let mut queue = ring.queue(p.max);
        queue.set_ready(case.ready);
        let acked = if case.indirect {
            1 << F_INDIRECT_DESC
        } else {
            0
        };
        let irq = InterruptLine::new(Box::new(support::CountingIrq::default()));
        let state = Arc::new(DeviceState::new("fuzz0", irq));
        Queues::new(vec![queue], mem.clone(), state, acked, p.max_bytes)
    }

    /// The driver resets the device after a refusal and starts again
    /// with empty rings; `false` once the case has had its resets.
    fn reset(&mut self) -> bool {
        self.resets += 1;
        self.taken.clear();
        self.ring.set_avail_idx(&self.mem, 0);
        (self.next_avail, self.used_idx) = (0, 0);
        self.q = Self::queues(self.case, &self.p, &self.mem, &self.ring);
        self.resets <= MAX_RESETS
    }

    fn room(&self) -> bool {
        self.ring.avail_idx.wrapping_sub(self.next_avail) < self.p.size
    }

    fn publish(&mut self, h: u16) {
        if self.room() {
            self.ring.publish(&self.mem, wild_or(h, self.p.size));
        }
    }

    fn publish_indirect(&mut self, at: u16, slot: u8, entries: u8) {
        if !self.room() {
            return;
        }
        // Mostly a table the case wrote.
        let tables = &self.case.tables;
        let slot = match tables.get(usize::from(slot) % tables.len().max(1)) {
            Some((written, _)) if slot < 0xc0 => *written,
            _ => slot,
        };
        let d = RawDesc {
            addr: table_addr(slot),
            len: 16 * u32::from(entries % 33),
            flags: DESC_F_INDIRECT,
            next: 0,
        };
        self.ring.set_desc(&self.mem, at, d);
        self.ring.publish(&self.mem, at % self.p.size);
    }

    fn set_avail_idx(&mut self, idx: u16) {
        // Mostly up to a ring's worth out; from 0xf000 up, anything.
        let idx = match idx {
            0xf000.. => idx,
            _ => self.next_avail.wrapping_add(idx % (self.p.size + 1)),
        };
        self.ring.set_avail_idx(&self.mem, idx)
    }

    /// What the model says the next `pop` gives.
    fn expect(&mut self, other_queue: bool) -> Expect {
        let size = self.p.size;
        if other_queue || !self.case.ready {
            return Expect::Empty;
        }
        match self
            .ring
            .avail_idx_in(&self.mem)
            .wrapping_sub(self.next_avail)
        {
            0 => Expect::Empty,
            n if n > size => Expect::RingError,
            _ => {
                let head = self.ring.avail_slot(&self.mem, self.next_avail);
                self.next_avail = self.next_avail.wrapping_add(1);
                match model_chain(&self.mem, &self.p, head) {
                    Some((bufs, readable)) => Expect::Chain(head, bufs, readable),
                    None => Expect::Refused,
                }
            }
        }
    }

    /// One `pop` against the model; `false` when the device needs a reset.
    fn pop(&mut self, other_queue: bool) -> bool {
        let expect = self.expect(other_queue);
        TALLY.add(match &expect {
            Expect::Empty => "empty",
            Expect::RingError => "ring errors",
            Expect::Refused => "refused",
            Expect::Chain(head, ..) if is_indirect(&self.mem, *head, self.p.size) => {
                "indirect chains"
            }
            Expect::Chain(..) => "chains",
        });
        match (&expect, self.q.pop(usize::from(other_queue))) {
            (Expect::Empty, Ok(None)) => true,
            (Expect::RingError, Err(QueueError::Ring { .. })) => false,
            (Expect::Refused, Err(QueueError::Chain { detail, .. })) => {
                assert!(!detail.is_empty(), "a refusal says why");
                false
            }
            (Expect::Chain(head, bufs, readable), Ok(Some(chain))) => {
                assert_eq!(chain.head, *head);
                assert_eq!(chain.readable().len(), *readable);
                let got: Vec<Buffer> = chain
                    .readable()
                    .iter()
                    .chain(chain.writable())
                    .copied()
                    .collect();
                assert_eq!(&got, bufs, "the buffers of the chain at {head}");
                check_chain(&chain, &self.p);
                check_streams(&self.mem, &chain, u64::from(*head % 7));
                self.taken.push(chain);
                true
            }
            (expect, got) => panic!("the model says {expect:?}, pop gave {got:?}"),
        }
    }

    /// Gives the oldest chain taken back with `len` bytes written.
    fn used(&mut self, len: u32) {
        if self.taken.is_empty() {
            return;
        }
        let chain = self.taken.remove(0);
        let head = chain.head;
        self.q
            .add_used(0, chain, len)
            .expect("the used ring is in RAM");
        let at = self.used_idx;
        assert_eq!(self.ring.used_elem(&self.mem, at), (u32::from(head), len));
        self.used_idx = self.used_idx.wrapping_add(1);
        assert_eq!(self.ring.used_idx(&self.mem), self.used_idx);
    }

    /// Undoes the pop just made: the same chain comes out next.
    fn undo(&mut self) {
        let chain = self.taken.pop().expect("a chain was just popped");
        self.q.undo_pop(0, chain);
        self.next_avail = self.next_avail.wrapping_sub(1);
    }
}

/// Runs one case; panics on any disagreement.
pub fn run(case: &Case) {
    TALLY.add("cases");
    let mut sim = Sim::new(case);
    let drain = std::iter::repeat_n(Op::Pop(0), usize::from(sim.p.size) + 1);
    let mut just_popped = false;
    for op in case.ops.iter().cloned().chain(drain) {
        let popped = std::mem::take(&mut just_popped);
        match op {
            Op::Publish(h) => sim.publish(h),
            Op::PublishIndirect { at, slot, entries } => sim.publish_indirect(at, slot, entries),
            Op::SetAvailIdx(idx) => sim.set_avail_idx(idx),
            Op::Patch(i, d) => sim.ring.set_desc(&sim.mem, i, d.raw(sim.p.size)),
            Op::Pop(which) => {
                let before = sim.taken.len();
                if !sim.pop(which == u8::MAX) && !sim.reset() {
                    return;
                }
                just_popped = sim.taken.len() > before;
            }
            Op::Used(len) => sim.used(len),
            Op::Undo if popped => sim.undo(),
            Op::Undo => {}
        }
    }
}

#[test]
fn queue() {
    let _heap = support::shared();
    bolero::check!()
        .with_test_time(support::budget(6))
        .with_generator(support::input())
        .for_each(|bytes| support::decode(bytes, run));
    TALLY.report("queue");
}

/// Fixed inputs: what the fuzzer found, and chains it should keep meeting.
mod regressions {
    use super::*;

    fn desc(addr: Addr, len: Len, flags: u8, next: u16) -> Desc {
        Desc {
            addr,
            len,
            flags,
            next,
        }
    }

    fn case(indirect: bool, first: Desc, tables: Vec<(u8, Vec<Desc>)>) -> Case {
        let tables = tables
            .into_iter()
            .map(|(slot, t)| (slot, t.into()))
            .collect::<Vec<_>>();
        Case {
            max_log2: 4,
            size_log2: 4,
            ready: true,
            indirect,
            max_bytes: 1 << 20,
            first,
            table: vec![].into(),
            tables: tables.into(),
            heads: vec![0].into(),
            ops: vec![Op::Pop(0), Op::Used(3), Op::Publish(0), Op::Pop(0)].into(),
        }
    }

    #[test]
    fn a_buffer_across_the_hole_is_refused() {
        let _heap = support::shared();
        run(&case(
            false,
            desc(Addr::Edge(1, -8), Len::Small(16), 0, 0),
            vec![],
        ));
    }

    #[test]
    fn an_indirect_table_that_points_at_itself() {
        let _heap = support::shared();
        let inner = vec![
            desc(Addr::Table(0), Len::Small(8), 1, 1),
            desc(Addr::Table(0), Len::Table(2, false), 0x1c, 0),
        ];
        run(&case(
            true,
            desc(Addr::Table(0), Len::Table(2, false), 0x1c, 0),
            vec![(0, inner)],
        ));
    }

    #[test]
    fn a_loop_through_an_indirect_table() {
        let _heap = support::shared();
        let inner = vec![
            desc(Addr::Ram(0x9000), Len::Small(8), 1, 1),
            desc(Addr::Ram(0x9000), Len::Small(8), 1, 0),
        ];
        run(&case(
            true,
            desc(Addr::Table(3), Len::Table(2, false), 0x1c, 0),
            vec![(3, inner)],
        ));
    }
}
