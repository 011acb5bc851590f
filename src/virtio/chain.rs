//! Checked access to descriptor chains.
//!
//! virtio-queue's chain iterator stops quietly on a loop (after `queue
//! size` descriptors), on a `next` index out of range or on an unreadable
//! descriptor. A device must not act on half a chain, so [`collect`] walks
//! the whole chain first and refuses it when it was cut short, when a
//! buffer lies outside guest RAM, or when a buffer goes the wrong way;
//! only then does the device touch the buffers.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Why a queue's contents were refused. The device is then marked
/// `DEVICE_NEEDS_RESET` and the queue is not processed any further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("queue {queue}: the available ring is invalid: {detail}")]
    Ring { queue: usize, detail: String },
    #[error("queue {queue}: descriptor chain at head {head}: {detail}")]
    Chain {
        queue: usize,
        head: u16,
        detail: String,
    },
    #[error("queue {queue}: cannot write the used ring: {detail}")]
    Used { queue: usize, detail: String },
}

/// Which way the buffers of a queue go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Driver to device (the device reads them).
    Readable,
    /// Device to driver (the device writes them).
    Writable,
}

/// One buffer of a checked chain: `[addr, addr + len)` lies inside guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A chain taken from the available ring, all its buffers checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    pub buffers: Vec<Buffer>,
}

/// Takes the next available chain of `queue`, or `None` when the ring is
/// empty. The chain is checked as a whole: every descriptor readable from
/// the table, no loop, no `next` out of range, every buffer non-empty,
/// inside guest RAM and in direction `dir`.
pub fn pop(
    queue: &mut Queue,
    index: usize,
    mem: &GuestMemoryMmap,
    dir: Direction,
) -> Result<Option<Chain>, QueueError> {
    let chain = match queue.iter(mem) {
        Ok(mut it) => it.next(),
        Err(e) => {
            return Err(QueueError::Ring {
                queue: index,
                detail: e.to_string(),
            })
        }
    };
    let Some(chain) = chain else {
        return Ok(None);
    };
    collect(chain, index, mem, dir).map(Some)
}

fn collect(
    chain: DescriptorChain<&GuestMemoryMmap>,
    queue: usize,
    mem: &GuestMemoryMmap,
    dir: Direction,
) -> Result<Chain, QueueError> {
    let head = chain.head_index();
    let bad = |detail: String| QueueError::Chain {
        queue,
        head,
        detail,
    };
    let mut buffers = Vec::new();
    let mut last: Option<Descriptor> = None;
    for desc in chain {
        let writable = desc.is_write_only();
        let wanted = dir == Direction::Writable;
        if writable != wanted {
            return Err(bad(format!(
                "a {} buffer in a queue of {} buffers",
                if writable {
                    "device-writable"
                } else {
                    "device-readable"
                },
                if wanted {
                    "device-writable"
                } else {
                    "device-readable"
                },
            )));
        }
        if desc.len() == 0 {
            return Err(bad(format!("an empty buffer at {:#x}", desc.addr().0)));
        }
        if !mem.check_range(desc.addr(), desc.len() as usize) {
            return Err(bad(format!(
                "buffer {:#x}+{:#x} is not inside guest RAM",
                desc.addr().0,
                desc.len()
            )));
        }
        buffers.push(Buffer {
            addr: desc.addr(),
            len: desc.len(),
        });
        last = Some(desc);
    }
    match last {
        None => Err(bad(
            "no readable descriptor (head index out of range, an unreadable or \
             an indirect descriptor, which was not negotiated)"
                .to_string(),
        )),
        Some(desc) if desc.has_next() => Err(bad(format!(
            "the chain is cut short after {} descriptor(s): it loops, is longer than \
             the queue, or its next index {} is out of range",
            buffers.len(),
            desc.next()
        ))),
        Some(_) => Ok(Chain { head, buffers }),
    }
}

/// Returns a chain to the driver with `len` bytes written.
pub fn add_used(
    queue: &mut Queue,
    index: usize,
    mem: &GuestMemoryMmap,
    head: u16,
    len: u32,
) -> Result<(), QueueError> {
    queue
        .add_used(mem, head, len)
        .map_err(|e| QueueError::Used {
            queue: index,
            detail: e.to_string(),
        })
}

/// Test support: a split ring laid out in a test mapping by hand, as a
/// driver would.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use virtio_queue::QueueT;
    use vm_memory::Bytes;

    pub const DESC_F_NEXT: u16 = 1;
    pub const DESC_F_WRITE: u16 = 2;

    /// A driver-side view of one queue of `size` entries at `base`.
    pub struct Ring {
        pub base: u64,
        pub size: u16,
        pub avail_idx: u16,
    }

    impl Ring {
        pub fn new(base: u64, size: u16) -> Self {
            Ring {
                base,
                size,
                avail_idx: 0,
            }
        }
        pub fn desc(&self) -> u64 {
            self.base
        }
        pub fn avail(&self) -> u64 {
            self.base + 16 * u64::from(self.size)
        }
        pub fn used(&self) -> u64 {
            (self.avail() + 6 + 2 * u64::from(self.size) + 0xfff) & !0xfff
        }
        /// Writes descriptor `i`.
        pub fn set_desc(
            &self,
            mem: &GuestMemoryMmap,
            i: u16,
            addr: u64,
            len: u32,
            flags: u16,
            next: u16,
        ) {
            let at = self.desc() + 16 * u64::from(i);
            mem.write_obj(addr, GuestAddress(at)).expect("desc addr");
            mem.write_obj(len, GuestAddress(at + 8)).expect("desc len");
            mem.write_obj(flags, GuestAddress(at + 12))
                .expect("desc flags");
            mem.write_obj(next, GuestAddress(at + 14))
                .expect("desc next");
        }
        /// Makes the chain starting at `head` available.
        pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
            let slot = self.avail() + 4 + 2 * u64::from(self.avail_idx % self.size);
            mem.write_obj(head, GuestAddress(slot)).expect("avail slot");
            self.avail_idx = self.avail_idx.wrapping_add(1);
            mem.write_obj(self.avail_idx, GuestAddress(self.avail() + 2))
                .expect("avail idx");
        }
        /// The device's used index.
        pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
            mem.read_obj(GuestAddress(self.used() + 2))
                .expect("used idx")
        }
        /// A device-side queue configured to this ring, ready.
        pub fn queue(&self) -> Queue {
            let mut q = Queue::new(self.size).expect("queue");
            q.set_desc_table_address(Some(self.desc() as u32), Some((self.desc() >> 32) as u32));
            q.set_avail_ring_address(Some(self.avail() as u32), Some((self.avail() >> 32) as u32));
            q.set_used_ring_address(Some(self.used() as u32), Some((self.used() >> 32) as u32));
            q.set_ready(true);
            q
        }
    }

    pub fn memory(mib: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mib << 20)]).expect("test memory")
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use vm_memory::Bytes;

    fn setup() -> (GuestMemoryMmap, Ring, Queue) {
        let mem = memory(1);
        let ring = Ring::new(0x1000, 16);
        let q = ring.queue();
        (mem, ring, q)
    }

    #[test]
    fn a_good_chain_is_returned_whole() {
        let (mem, mut ring, mut q) = setup();
        ring.set_desc(&mem, 0, 0x8000, 8, DESC_F_NEXT, 1);
        ring.set_desc(&mem, 1, 0x9000, 4, 0, 0);
        ring.publish(&mem, 0);
        let chain = pop(&mut q, 0, &mem, Direction::Readable)
            .expect("valid")
            .expect("a chain");
        assert_eq!(chain.head, 0);
        assert_eq!(chain.buffers.len(), 2);
        assert_eq!(
            chain.buffers[1],
            Buffer {
                addr: GuestAddress(0x9000),
                len: 4
            }
        );
        assert_eq!(pop(&mut q, 0, &mem, Direction::Readable), Ok(None));
        add_used(&mut q, 0, &mem, 0, 0).expect("used");
        assert_eq!(ring.used_idx(&mem), 1);
    }

    #[test]
    fn malformed_chains_are_refused() {
        type Setup = fn(&GuestMemoryMmap, &Ring);
        let cases: [(&str, Setup, Direction); 6] = [
            (
                "outside guest RAM",
                |m, r| r.set_desc(m, 0, 0xff000, 0x2000, 0, 0),
                Direction::Readable,
            ),
            (
                "address far away",
                |m, r| r.set_desc(m, 0, u64::MAX - 8, 4, 0, 0),
                Direction::Readable,
            ),
            (
                "loop",
                |m, r| {
                    r.set_desc(m, 0, 0x8000, 4, DESC_F_NEXT, 1);
                    r.set_desc(m, 1, 0x8000, 4, DESC_F_NEXT, 0);
                },
                Direction::Readable,
            ),
            (
                "next out of range",
                |m, r| r.set_desc(m, 0, 0x8000, 4, DESC_F_NEXT, 99),
                Direction::Readable,
            ),
            (
                "wrong direction",
                |m, r| r.set_desc(m, 0, 0x8000, 4, DESC_F_WRITE, 0),
                Direction::Readable,
            ),
            (
                "empty",
                |m, r| r.set_desc(m, 0, 0x8000, 0, DESC_F_WRITE, 0),
                Direction::Writable,
            ),
        ];
        for (what, set, dir) in cases {
            let (mem, mut ring, mut q) = setup();
            set(&mem, &ring);
            ring.publish(&mem, 0);
            let r = pop(&mut q, 3, &mem, dir);
            assert!(
                matches!(
                    r,
                    Err(QueueError::Chain {
                        queue: 3,
                        head: 0,
                        ..
                    })
                ),
                "{what}: {r:?}"
            );
        }
    }

    #[test]
    fn a_head_out_of_range_or_a_runaway_index_is_refused() {
        let (mem, mut ring, mut q) = setup();
        ring.publish(&mem, 40);
        assert!(matches!(
            pop(&mut q, 0, &mem, Direction::Readable),
            Err(QueueError::Chain { .. })
        ));
        let (mem, ring, mut q) = setup();
        // The driver claims 100 new entries in a ring of 16.
        mem.write_obj(100u16, GuestAddress(ring.avail() + 2))
            .expect("write");
        assert!(matches!(
            pop(&mut q, 0, &mem, Direction::Readable),
            Err(QueueError::Ring { .. })
        ));
    }
}
