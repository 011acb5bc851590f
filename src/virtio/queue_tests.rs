use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::testing::*;
use super::*;
use crate::virtio::{DeviceState, InterruptLine, Trigger, F_INDIRECT_DESC};

struct NoIrq;
impl Trigger for NoIrq {
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}

fn setup_with(acked: u64, max_bytes: u64) -> (GuestMemoryMmap, Ring, Queues) {
    let mem = memory(1);
    let ring = Ring::new(0x1000, 16);
    let state = Arc::new(DeviceState::new("t0", InterruptLine::new(Box::new(NoIrq))));
    let q = Queues::new(vec![ring.queue(16)], mem.clone(), state, acked, max_bytes);
    (mem, ring, q)
}

fn setup() -> (GuestMemoryMmap, Ring, Queues) {
    setup_with(0, 1 << 20)
}

fn refused(q: &mut Queues) -> String {
    match q.pop(0) {
        Err(QueueError::Chain {
            head: 0, detail, ..
        }) => detail,
        other => panic!("expected a refused chain, got {other:?}"),
    }
}

#[test]
fn a_good_chain_is_returned_whole_with_its_directions() {
    let (mem, mut ring, mut q) = setup();
    ring.set_desc(&mem, 0, 0x8000, 8, DESC_F_NEXT, 1);
    ring.set_desc(&mem, 1, 0x9000, 4, DESC_F_NEXT | DESC_F_WRITE, 2);
    ring.set_desc(&mem, 2, 0xa000, 1, DESC_F_WRITE, 0);
    ring.publish(&mem, 0);
    let chain = q.pop(0).expect("valid").expect("a chain");
    assert_eq!(chain.head, 0);
    assert_eq!(chain.readable().len(), 1);
    assert_eq!(chain.writable().len(), 2);
    assert_eq!((chain.readable_len(), chain.writable_len()), (8, 5));
    assert_eq!(
        chain.writable()[0],
        Buffer {
            addr: GuestAddress(0x9000),
            len: 4
        }
    );
    assert_eq!(q.pop(0), Ok(None));
    q.add_used(0, chain, 5).expect("used");
    assert_eq!(ring.used_idx(&mem), 1);
    assert_eq!(ring.used_elem(&mem, 0), (0, 5));
}

#[test]
fn malformed_chains_are_refused() {
    type Setup = fn(&GuestMemoryMmap, &Ring);
    let cases: [(&str, Setup, &str); 7] = [
        (
            "outside guest RAM",
            |m, r| r.set_desc(m, 0, 0xff000, 0x2000, 0, 0),
            "not inside guest RAM",
        ),
        (
            "address far away",
            |m, r| r.set_desc(m, 0, u64::MAX - 8, 4, 0, 0),
            "not inside guest RAM",
        ),
        (
            "loop",
            |m, r| {
                r.set_desc(m, 0, 0x8000, 4, DESC_F_NEXT, 1);
                r.set_desc(m, 1, 0x8000, 4, DESC_F_NEXT, 0);
            },
            "loops",
        ),
        (
            "next out of range",
            |m, r| r.set_desc(m, 0, 0x8000, 4, DESC_F_NEXT, 99),
            "out of range",
        ),
        (
            "readable after writable",
            |m, r| {
                r.set_desc(m, 0, 0x8000, 4, DESC_F_NEXT | DESC_F_WRITE, 1);
                r.set_desc(m, 1, 0x9000, 4, 0, 0);
            },
            "after a device-writable",
        ),
        (
            "empty",
            |m, r| r.set_desc(m, 0, 0x8000, 0, DESC_F_WRITE, 0),
            "empty",
        ),
        (
            "indirect, not negotiated",
            |m, r| r.set_desc(m, 0, 0x8000, 32, DESC_F_INDIRECT, 0),
            "not negotiated",
        ),
    ];
    for (what, set, expect) in cases {
        let (mem, mut ring, mut q) = setup();
        set(&mem, &ring);
        ring.publish(&mem, 0);
        let detail = refused(&mut q);
        assert!(detail.contains(expect), "{what}: {detail}");
    }
}

#[test]
fn chains_longer_than_the_device_allows_are_refused() {
    let (mem, mut ring, mut q) = setup_with(0, 4096);
    ring.set_desc(&mem, 0, 0x8000, 4096, DESC_F_NEXT, 1);
    ring.set_desc(&mem, 1, 0x9000, 1, 0, 0);
    ring.publish(&mem, 0);
    assert!(refused(&mut q).contains("4096 bytes"));
    // A single 4 GiB buffer is refused for its size before anything else.
    let (mem, mut ring, mut q) = setup_with(0, 4096);
    ring.set_desc(&mem, 0, 0x8000, u32::MAX, 0, 0);
    ring.publish(&mem, 0);
    assert!(refused(&mut q).contains("not inside guest RAM"));
}

#[test]
fn negotiated_indirect_tables_are_followed_and_checked() {
    let acked = 1u64 << F_INDIRECT_DESC;
    let (mem, mut ring, mut q) = setup_with(acked, 1 << 20);
    write_desc(&mem, 0x20000, 0x8000, 8, DESC_F_NEXT, 1);
    write_desc(&mem, 0x20010, 0x9000, 1, DESC_F_WRITE, 0);
    ring.set_desc(&mem, 0, 0x20000, 32, DESC_F_INDIRECT, 0);
    ring.publish(&mem, 0);
    let chain = q.pop(0).expect("valid").expect("chain");
    assert_eq!((chain.readable().len(), chain.writable().len()), (1, 1));

    // Nested indirect tables and tables of odd sizes are refused.
    for (len, inner_flags) in [(32u32, DESC_F_INDIRECT), (24, 0), (16 * 17, 0)] {
        let (mem, mut ring, mut q) = setup_with(acked, 1 << 20);
        write_desc(&mem, 0x20000, 0x20000, 16, inner_flags, 0);
        ring.set_desc(&mem, 0, 0x20000, len, DESC_F_INDIRECT, 0);
        ring.publish(&mem, 0);
        let detail = refused(&mut q);
        assert!(
            detail.contains("indirect"),
            "len {len} flags {inner_flags}: {detail}"
        );
    }
}

#[test]
fn a_head_out_of_range_or_a_runaway_index_is_refused() {
    let (mem, mut ring, mut q) = setup();
    ring.publish(&mem, 40);
    assert!(matches!(q.pop(0), Err(QueueError::Chain { .. })));
    let (mem, ring, mut q) = setup();
    // The driver claims 100 new entries in a ring of 16.
    mem.write_obj(100u16, GuestAddress(ring.avail() + 2))
        .expect("write");
    assert!(matches!(q.pop(0), Err(QueueError::Ring { .. })));
}

#[test]
fn streams_span_buffers() {
    let mem = memory(1);
    let bufs = [
        Buffer {
            addr: GuestAddress(0x1000),
            len: 3,
        },
        Buffer {
            addr: GuestAddress(0x2000),
            len: 5,
        },
    ];
    assert_eq!(write_to(&mem, &bufs, 1, b"abcdefghij"), Ok(7));
    let mut out = [0u8; 6];
    assert_eq!(read_from(&mem, &bufs, 2, &mut out), Ok(6));
    assert_eq!(&out, b"bcdefg");
}
