//! Target `blk_request`: virtio-blk's request parser, `Request::parse`, as
//! a pure function on chains a driver (or a broken one) lays out, taken
//! through `Queues::pop` as the device takes them (`device::pop_chain`),
//! against the answers of docs/devices.md ([`blk_model`]).
//!
//! What must hold:
//! - the queue reader refuses exactly the chains with an empty buffer, a
//!   buffer outside guest RAM or a readable buffer after a writable one;
//! - the parser refuses exactly the chains without a whole header or a
//!   status byte, and says why; otherwise it answers as the table does:
//!   a read or write within the disk, whole sectors, the right way (and
//!   not to a read-only drive), a flush, GET_ID, or IOERR / UNSUPP;
//! - the status byte is the chain's last device-writable byte;
//! - a read's data is the writable bytes before it, a write's the
//!   readable bytes after the header (they read back as the driver wrote
//!   them), and a request costs its data bytes and one op when it does I/O.

use arbitrary::Arbitrary;
use hearth::virtio::block::request::{for_each_piece, Geometry, Kind, Request};
use hearth::virtio::queue::read_from;
use hearth::virtio::QueueError;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::blk_model::{Answer, Drive, Laid, Shape};
use crate::device::{pop_chain, REGIONS};
use crate::support;

/// Where segment `i` goes, unless placed otherwise.
const SEGS: u64 = 0x4_0000;
const SEG_ROOM: u64 = 0x2000;
/// The boundary of the two regions that touch, and the end of RAM.
const TOUCH: u64 = 0x10_0000;
const RAM_END: u64 = 0x31_0000;
/// The device's bound on one chain (virtio-blk's `max_chain_bytes`).
const MAX_CHAIN: u64 = (128 << 20) + 17;

/// The disk's size in sectors: a file's size is at most 2^63 - 1 bytes,
/// so a capacity is below 2^54.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Capacity {
    Small(u16),
    Huge(u64),
}

/// Where the segments go: apart, or one of them across the two regions
/// that touch (still guest RAM), or one of them past the end of RAM.
#[derive(Debug, Clone, Copy)]
pub enum Placement {
    Apart,
    Straddle(u8),
    Outside(u8),
}

impl Placement {
    /// Mostly apart (a chain outside RAM never reaches the parser).
    fn pick((kind, seg): (u8, u8)) -> Placement {
        match kind {
            0..200 => Placement::Apart,
            200..240 => Placement::Straddle(seg),
            240.. => Placement::Outside(seg),
        }
    }
}

#[derive(Debug, Clone, Arbitrary)]
pub struct Case {
    pub capacity: Capacity,
    pub read_only: bool,
    /// The [`Placement`] of [`Placement::pick`].
    pub placement: (u8, u8),
    pub shape: Shape,
    /// A header of any bytes instead of the one the shape makes.
    pub raw_header: Option<[u8; 16]>,
}

static TALLY: support::Tally<6> = support::Tally::new([
    "cases",
    "reader refused",
    "parser refused",
    "read or write",
    "flush or get-id",
    "status only",
]);

thread_local! {
    /// Guest RAM, one per test thread (the regressions run beside the target).
    static MEM: GuestMemoryMmap = support::memory(&REGIONS);
}

/// Where each segment starts, and whether one lies outside RAM.
fn place(laid: &Laid, placement: Placement) -> ([u64; 16], bool) {
    let mut at = [0u64; 16];
    let n = laid.n.max(1);
    let mut outside = false;
    for (i, (a, s)) in at.iter_mut().zip(laid.segs()).enumerate() {
        let half = u64::from(s.len / 2);
        *a = match placement {
            Placement::Straddle(k) if usize::from(k) % n == i => TOUCH - half,
            Placement::Outside(k) if usize::from(k) % n == i => {
                outside = true;
                RAM_END - half
            }
            _ => SEGS + i as u64 * SEG_ROOM,
        };
    }
    (at, outside)
}

/// Writes the readable segments' bytes where they go.
fn write_segments(mem: &GuestMemoryMmap, laid: &Laid, at: &[u64]) {
    let mut bytes = [0u8; 16 + 4700];
    for (s, &a) in laid.segs().iter().zip(at) {
        if s.write || s.len == 0 {
            continue;
        }
        let n = s.len as usize;
        for (i, b) in bytes[..n].iter_mut().enumerate() {
            *b = laid.byte(s, i as u32);
        }
        // A segment outside RAM has nothing to write.
        let _ = mem.write_slice(&bytes[..n], GuestAddress(a));
    }
}

fn as_answer(kind: Kind) -> Answer {
    match kind {
        Kind::Read { offset, len } => Answer::Read { offset, len },
        Kind::Write { offset, len } => Answer::Write { offset, len },
        Kind::Flush => Answer::Flush,
        Kind::GetId => Answer::GetId,
        Kind::Refuse(s) => Answer::Refuse(s),
    }
}

/// The data pieces lie in the chain's buffers, in order, and a write's
/// read back as the driver wrote them.
fn check_data(mem: &GuestMemoryMmap, req: &Request, laid: &Laid) {
    let (bufs, start, len, write) = match req.kind {
        Kind::Read { len, .. } => (req.chain.writable(), 0, len, false),
        Kind::Write { len, .. } => (req.chain.readable(), 16, len, true),
        _ => return,
    };
    let mut covered = 0u64;
    for_each_piece(bufs, start, u64::from(len), |addr, n| {
        let inside = bufs
            .iter()
            .any(|b| b.addr.0 <= addr.0 && addr.0 + n <= b.addr.0 + u64::from(b.len));
        assert!(
            inside,
            "a piece {:#x}+{n} outside the chain's buffers",
            addr.0
        );
        let status = req.status.0;
        assert!(
            write || !(addr.0..addr.0 + n).contains(&status),
            "a read's data covers its status byte"
        );
        covered += n;
        Ok(())
    })
    .expect("the pieces callback never fails");
    assert_eq!(covered, u64::from(len), "pieces of {:?}", req.kind);
    if write {
        let mut got = [0u8; 4700];
        let n = read_from(mem, bufs, 16, &mut got[..len as usize]).expect("readable data");
        assert_eq!(n, len as usize);
        let want = (0..u64::from(len)).map(|i| laid.readable_byte(16 + i).unwrap_or(0));
        assert!(got[..n].iter().copied().eq(want), "the data a write takes");
    }
}

/// Runs one case; panics when a property fails.
pub fn run(case: &Case) {
    TALLY.add("cases");
    let capacity = match case.capacity {
        Capacity::Small(n) => u64::from(n),
        Capacity::Huge(n) => n >> 10,
    };
    let drive = Drive {
        capacity,
        read_only: case.read_only,
    };
    let mut laid = case.shape.lay(capacity);
    if let Some(raw) = case.raw_header {
        laid.header = raw;
    }
    let mem = MEM.with(GuestMemoryMmap::clone);
    let mem = &mem;
    let (at, outside) = place(&laid, Placement::pick(case.placement));
    write_segments(mem, &laid, &at);
    let descs: Vec<(u64, u32, bool)> = laid
        .segs()
        .iter()
        .zip(at)
        .map(|(s, a)| (a, s.len, s.write))
        .collect();
    let empty = laid.segs().iter().any(|s| s.len == 0);
    let misordered = laid.segs().windows(2).any(|w| w[0].write && !w[1].write);
    let refused = empty || misordered || outside;
    let chain = match pop_chain(mem, &descs, MAX_CHAIN) {
        Err(QueueError::Chain { detail, .. }) => {
            assert!(refused, "the reader refused {laid:?}: {detail}");
            TALLY.add("reader refused");
            return;
        }
        Err(e) => panic!("not a chain error: {e}"),
        Ok(None) => panic!("the chain was published"),
        Ok(Some(chain)) => chain,
    };
    assert!(!refused, "the reader took {laid:?}");
    let (readable, writable) = laid.totals();
    assert_eq!(
        (chain.readable_len(), chain.writable_len()),
        (readable, writable)
    );
    let (ty, sector) = laid.found_header();
    let want = Answer::of_totals(ty, sector, readable, writable, drive);
    let geo = Geometry {
        capacity,
        read_only: case.read_only,
    };
    let req = match Request::parse(mem, chain, geo) {
        Err(why) => {
            assert_eq!(want, Answer::Reset, "refused: {why}");
            assert!(!why.is_empty(), "a refusal says why");
            TALLY.add("parser refused");
            return;
        }
        Ok(req) => req,
    };
    assert_eq!(as_answer(req.kind), want, "{laid:?} on {drive:?}");
    check_request(mem, &req, &laid, want);
}

/// An accepted request: its status byte, cost, direction and data.
fn check_request(mem: &GuestMemoryMmap, req: &Request, laid: &Laid, want: Answer) {
    let last = req.chain.writable().last().expect("a status byte");
    assert_eq!(
        req.status.0,
        last.addr.0 + u64::from(last.len) - 1,
        "the status byte"
    );
    let cost = match want {
        Answer::Read { len, .. } | Answer::Write { len, .. } => (u64::from(len), 1),
        Answer::Flush => (0, 1),
        _ => (0, 0),
    };
    assert_eq!(req.cost(), cost, "the cost of {want:?}");
    assert_eq!(
        req.data_in_writable(),
        matches!(want, Answer::Read { .. } | Answer::GetId)
    );
    check_data(mem, req, laid);
    TALLY.add(match want {
        Answer::Read { .. } | Answer::Write { .. } => "read or write",
        Answer::Flush | Answer::GetId => "flush or get-id",
        _ => "status only",
    });
}

#[test]
fn blk_request() {
    let _heap = support::shared();
    bolero::check!()
        .with_test_time(support::budget(3))
        .with_generator(support::input())
        .for_each(|bytes| support::decode(bytes, run));
    TALLY.report("blk_request");
}

/// Fixed inputs: the rows of docs/devices.md's table.
mod regressions {
    use super::*;
    use crate::blk_model::{Header, Len, Sector, Status, Type};

    fn shape(ty: Type, sector: Sector, len: Len, status: Status) -> Shape {
        Shape {
            ty,
            sector,
            len,
            way: 0,
            header: Header::Whole,
            status,
            pieces: 1,
            misorder: 0,
            fill: 7,
            plain: 255,
        }
    }

    fn case(shape: Shape) -> Case {
        Case {
            capacity: Capacity::Small(64),
            read_only: false,
            placement: (0, 0),
            shape,
            raw_header: None,
        }
    }

    #[test]
    fn a_read_without_its_status_descriptor_and_one_straddling_the_end() {
        let _heap = support::shared();
        // 1024 bytes and no status: 1023 bytes of data, IOERR.
        run(&case(shape(
            Type::In,
            Sector::Start(0),
            Len::Sectors(2),
            Status::Missing,
        )));
        // Sector 63 of 64, two sectors: past the end.
        run(&case(shape(
            Type::In,
            Sector::End(5),
            Len::Sectors(2),
            Status::One,
        )));
        // The sector arithmetic overflows.
        run(&case(shape(
            Type::Out,
            Sector::Raw(u64::MAX),
            Len::Sectors(1),
            Status::One,
        )));
    }

    #[test]
    fn a_split_header_a_short_one_and_one_across_two_regions() {
        let _heap = support::shared();
        let mut s = shape(
            Type::Out,
            Sector::Start(1),
            Len::Sectors(3),
            Status::Wide(9),
        );
        s.header = Header::Split(4);
        s.pieces = 3;
        run(&Case {
            placement: (200, 2),
            ..case(s)
        });
        s.header = Header::Short(15);
        run(&case(s));
        s.header = Header::WithData;
        s.misorder = 255;
        run(&case(s));
    }
}
