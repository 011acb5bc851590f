//! The model the `queue` target holds `Queues::pop` against, and what a
//! chain taken must satisfy on its own.

use hearth::virtio::queue::{read_from, total, write_to, Buffer};
use hearth::virtio::Chain;
use vm_memory::GuestMemoryMmap;

use crate::queue::{REGIONS, RING};
use crate::support::{self, in_ram, read_desc, DESC_F_INDIRECT, DESC_F_NEXT};

/// What the model says one `pop` gives.
#[derive(Debug, PartialEq, Eq)]
pub enum Expect {
    Empty,
    RingError,
    Refused,
    Chain(u16, Vec<Buffer>, usize),
}

/// The queue's parameters, for the model.
pub struct Params {
    pub size: u16,
    pub max: u16,
    pub indirect: bool,
    pub max_bytes: u64,
}

/// The chain at `head`, by the rules: every index in its table, no
/// descriptor seen twice, an indirect table only if negotiated, alone,
/// unnested, whole entries, at most a queue's worth, in RAM; every buffer
/// non-empty and in RAM, readable before writable, the total in bounds.
pub fn model_chain(mem: &GuestMemoryMmap, p: &Params, head: u16) -> Option<(Vec<Buffer>, usize)> {
    let (mut table, mut size) = (RING, p.size);
    let mut seen = vec![false; usize::from(size)];
    let (mut index, mut in_indirect) = (head, false);
    let mut buffers = Vec::new();
    let mut readable = 0;
    loop {
        if index >= size || std::mem::replace(&mut seen[usize::from(index)], true) {
            return None;
        }
        let d = read_desc(mem, table + 16 * u64::from(index))?;
        if d.flags & DESC_F_INDIRECT != 0 {
            let entries = d.len / 16;
            let alone = !in_indirect && buffers.is_empty() && d.flags & DESC_F_NEXT == 0;
            let whole = d.len != 0 && d.len % 16 == 0 && entries <= u32::from(p.max);
            if !p.indirect || !alone || !whole || !in_ram(&REGIONS, d.addr, u64::from(d.len)) {
                return None;
            }
            (table, size, in_indirect, index) = (d.addr, entries as u16, true, 0);
            seen = vec![false; usize::from(size)];
            continue;
        }
        if d.len == 0 || !in_ram(&REGIONS, d.addr, u64::from(d.len)) {
            return None;
        }
        let write = d.flags & support::DESC_F_WRITE != 0;
        if !write && readable != buffers.len() {
            return None;
        }
        readable += usize::from(!write);
        buffers.push(Buffer {
            addr: vm_memory::GuestAddress(d.addr),
            len: d.len,
        });
        if total(&buffers) > p.max_bytes {
            return None;
        }
        if d.flags & DESC_F_NEXT == 0 {
            return Some((buffers, readable));
        }
        index = d.next;
    }
}

/// Whether the descriptor at `head` of the ring's table is indirect.
pub fn is_indirect(mem: &GuestMemoryMmap, head: u16, size: u16) -> bool {
    read_desc(mem, RING + 16 * u64::from(head % size))
        .is_some_and(|d| d.flags & DESC_F_INDIRECT != 0)
}

/// What a chain taken must satisfy whatever the model says.
pub fn check_chain(chain: &Chain, p: &Params) {
    let all: Vec<&Buffer> = chain.readable().iter().chain(chain.writable()).collect();
    assert!(
        all.len() <= usize::from(p.max),
        "more buffers than a queue holds"
    );
    for b in &all {
        assert!(b.len > 0, "an empty buffer");
        assert!(
            in_ram(&REGIONS, b.addr.0, u64::from(b.len)),
            "buffer {:#x}+{:#x} is not in guest RAM",
            b.addr.0,
            b.len
        );
    }
    assert!(chain.readable_len() + chain.writable_len() <= p.max_bytes);
}

/// Writes then reads the chain's writable buffers as one stream.
pub fn check_streams(mem: &GuestMemoryMmap, chain: &Chain, offset: u64) {
    let bufs = chain.writable();
    let room = chain.writable_len().saturating_sub(offset);
    let data: Vec<u8> = (0..64u8).collect();
    let wrote = write_to(mem, bufs, offset, &data).expect("checked buffers are writable");
    assert_eq!(wrote as u64, room.min(64));
    let mut back = vec![0u8; 64];
    let read = read_from(mem, bufs, offset, &mut back).expect("checked buffers are readable");
    assert_eq!(read, wrote);
    let disjoint = bufs.iter().enumerate().all(|(i, a)| {
        bufs[i + 1..].iter().all(|b| {
            a.addr.0 + u64::from(a.len) <= b.addr.0 || b.addr.0 + u64::from(b.len) <= a.addr.0
        })
    });
    if disjoint {
        assert_eq!(
            &back[..read],
            &data[..read],
            "a stream reads back what was written"
        );
    }
}
