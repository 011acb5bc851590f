//! The one way a device takes a chain from a queue: bounded and checked.
//!
//! virtio-queue keeps the available and used rings; the descriptors of a
//! chain are walked here, because its iterator quietly follows indirect
//! tables whether or not they were negotiated and stops quietly on a loop.
//! [`Queues::pop`] refuses a chain, as a whole and before the device acts
//! on any of it, when:
//!
//! - a descriptor cannot be read, or its `next` index is out of range;
//! - it is longer than the queue (which is also how a loop shows);
//! - it uses an indirect table that was not negotiated, or a malformed one;
//! - a buffer is empty or does not lie wholly inside guest RAM;
//! - a device-readable buffer follows a device-writable one;
//! - its buffers add up to more than the device's `max_chain_bytes`.
//!
//! The buffer list of a chain lives in a vector of capacity `queue max
//! size` that the reader recycles, so nothing here grows with what the
//! guest writes.

use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::DeviceState;

/// Why a queue's contents were refused. The device is then marked
/// `DEVICE_NEEDS_RESET` and the queue is not served any further.
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
    #[error("{0}")]
    Device(String),
}

/// One buffer of a checked chain: `[addr, addr + len)` lies inside guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A chain taken from the available ring, all its buffers checked. Give
/// it back with [`Queues::add_used`] (or [`Queues::recycle`]) so that its
/// buffer list is reused.
#[derive(Debug, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    buffers: Vec<Buffer>,
    /// How many of `buffers` (the first ones) are device-readable.
    readable: usize,
}

impl Chain {
    /// The device-readable buffers (driver to device), in order.
    pub fn readable(&self) -> &[Buffer] {
        &self.buffers[..self.readable]
    }

    /// The device-writable buffers (device to driver), in order.
    pub fn writable(&self) -> &[Buffer] {
        &self.buffers[self.readable..]
    }

    pub fn readable_len(&self) -> u64 {
        total(self.readable())
    }

    pub fn writable_len(&self) -> u64 {
        total(self.writable())
    }
}

/// The total length of `bufs`.
pub fn total(bufs: &[Buffer]) -> u64 {
    bufs.iter().map(|b| u64::from(b.len)).sum()
}

/// Copies bytes of `bufs`, seen as one stream, from `offset` into `dst`;
/// returns how many were copied (fewer when the stream ends first).
pub fn read_from(
    mem: &GuestMemoryMmap,
    bufs: &[Buffer],
    mut offset: u64,
    dst: &mut [u8],
) -> Result<usize, String> {
    let mut done = 0;
    for b in bufs {
        if done == dst.len() {
            break;
        }
        let len = u64::from(b.len);
        if offset >= len {
            offset -= len;
            continue;
        }
        let n = ((len - offset) as usize).min(dst.len() - done);
        mem.read_slice(&mut dst[done..done + n], b.addr.unchecked_add(offset))
            .map_err(|e| format!("cannot read guest memory: {e}"))?;
        done += n;
        offset = 0;
    }
    Ok(done)
}

/// Copies `src` into `bufs`, seen as one stream, from `offset`; returns
/// how many bytes fitted.
pub fn write_to(
    mem: &GuestMemoryMmap,
    bufs: &[Buffer],
    mut offset: u64,
    src: &[u8],
) -> Result<usize, String> {
    let mut done = 0;
    for b in bufs {
        if done == src.len() {
            break;
        }
        let len = u64::from(b.len);
        if offset >= len {
            offset -= len;
            continue;
        }
        let n = ((len - offset) as usize).min(src.len() - done);
        mem.write_slice(&src[done..done + n], b.addr.unchecked_add(offset))
            .map_err(|e| format!("cannot write guest memory: {e}"))?;
        done += n;
        offset = 0;
    }
    Ok(done)
}

/// The queues of an active device, the guest memory they live in and the
/// device's shared state: what a handler works with.
pub struct Queues {
    queues: Vec<Queue>,
    pub mem: GuestMemoryMmap,
    pub state: Arc<DeviceState>,
    /// The features the driver acked.
    pub acked: u64,
    max_chain_bytes: u64,
    /// Buffer lists given back, reused by the next chains.
    spare: Vec<Vec<Buffer>>,
}

impl Queues {
    pub fn new(
        queues: Vec<Queue>,
        mem: GuestMemoryMmap,
        state: Arc<DeviceState>,
        acked: u64,
        max_chain_bytes: u64,
    ) -> Self {
        Queues {
            queues,
            mem,
            state,
            acked,
            max_chain_bytes,
            spare: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.queues.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Whether the driver acked feature `bit`.
    pub fn acked(&self, bit: u32) -> bool {
        self.acked & (1 << bit) != 0
    }

    /// Whether queue `index` exists and the driver made it ready.
    pub fn ready(&self, index: usize) -> bool {
        self.queues.get(index).is_some_and(|q| q.ready())
    }

    /// Takes the next available chain of queue `index`, or `None` when the
    /// ring is empty (or the queue is not ready). The chain is checked as a
    /// whole (see the module documentation).
    pub fn pop(&mut self, index: usize) -> Result<Option<Chain>, QueueError> {
        let indirect = self.acked(super::F_INDIRECT_DESC);
        let Some(queue) = self.queues.get_mut(index).filter(|q| q.ready()) else {
            return Ok(None);
        };
        let head = match queue.iter(&self.mem) {
            Ok(mut it) => it.next().map(|c| c.head_index()),
            Err(e) => {
                return Err(QueueError::Ring {
                    queue: index,
                    detail: e.to_string(),
                })
            }
        };
        let Some(head) = head else {
            return Ok(None);
        };
        let capacity = usize::from(queue.max_size());
        let mut buffers = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(capacity));
        buffers.clear();
        let walk = Walk {
            mem: &self.mem,
            table: GuestAddress(queue.desc_table()),
            size: queue.size(),
            max_descriptors: capacity,
            max_bytes: self.max_chain_bytes,
            indirect,
        };
        match walk.collect(head, &mut buffers) {
            Ok(readable) => Ok(Some(Chain {
                head,
                buffers,
                readable,
            })),
            Err(detail) => {
                self.spare.push(buffers);
                Err(QueueError::Chain {
                    queue: index,
                    head,
                    detail,
                })
            }
        }
    }

    /// Puts the last chain taken from queue `index` back, as if it had not
    /// been taken (a device that cannot serve it yet, such as net RX
    /// without a frame).
    pub fn undo_pop(&mut self, index: usize, chain: Chain) {
        if let Some(q) = self.queues.get_mut(index) {
            q.go_to_previous_position();
        }
        self.recycle(chain);
    }

    /// Returns `chain` to the driver with `len` bytes written into it.
    pub fn add_used(&mut self, index: usize, chain: Chain, len: u32) -> Result<(), QueueError> {
        let head = chain.head;
        self.recycle(chain);
        self.add_used_head(index, head, len)
    }

    /// Returns the chain that started at `head` (one the device kept
    /// only the head of) to the driver.
    pub fn add_used_head(&mut self, index: usize, head: u16, len: u32) -> Result<(), QueueError> {
        let Some(queue) = self.queues.get_mut(index) else {
            return Err(QueueError::Used {
                queue: index,
                detail: "no such queue".into(),
            });
        };
        queue
            .add_used(&self.mem, head, len)
            .map_err(|e| QueueError::Used {
                queue: index,
                detail: e.to_string(),
            })
    }

    /// Keeps `chain`'s buffer list for the next chain.
    pub fn recycle(&mut self, chain: Chain) {
        // At most one spare list per descriptor a queue can hold in flight.
        if self.spare.len() < 256 {
            self.spare.push(chain.buffers);
        }
    }

    /// Tells the driver that used buffers are waiting.
    pub fn signal_used(&self) {
        self.state.irq.signal_used();
    }
}

/// One walk of a descriptor chain.
struct Walk<'a> {
    mem: &'a GuestMemoryMmap,
    table: GuestAddress,
    size: u16,
    max_descriptors: usize,
    max_bytes: u64,
    indirect: bool,
}

/// Descriptor flag: the buffer is an indirect descriptor table.
const F_INDIRECT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;

impl Walk<'_> {
    fn descriptor(&self, table: GuestAddress, index: u16) -> Result<Descriptor, String> {
        let at = table
            .checked_add(u64::from(index) * 16)
            .ok_or_else(|| format!("descriptor {index} is beyond the address space"))?;
        self.mem
            .read_obj::<Descriptor>(at)
            .map_err(|e| format!("descriptor {index} at {:#x} is unreadable: {e}", at.0))
    }

    /// Fills `out` with the chain's buffers; returns how many are readable.
    fn collect(&self, head: u16, out: &mut Vec<Buffer>) -> Result<usize, String> {
        let (mut table, mut size, mut in_indirect) = (self.table, self.size, false);
        let mut index = head;
        let mut bytes = 0u64;
        let mut readable = 0;
        loop {
            if index >= size {
                return Err(format!(
                    "descriptor index {index} is out of range (table of {size})"
                ));
            }
            if out.len() == self.max_descriptors {
                return Err(format!(
                    "more than {} descriptors: the chain loops or is longer than the queue",
                    self.max_descriptors
                ));
            }
            let desc = self.descriptor(table, index)?;
            if desc.flags() & F_INDIRECT != 0 {
                (table, size) = self.indirect_table(&desc, in_indirect, out.len())?;
                in_indirect = true;
                index = 0;
                continue;
            }
            let (addr, len) = (desc.addr(), desc.len());
            if len == 0 {
                return Err(format!("an empty buffer at {:#x}", addr.0));
            }
            if !self.mem.check_range(addr, len as usize) {
                return Err(format!(
                    "buffer {:#x}+{len:#x} is not inside guest RAM",
                    addr.0
                ));
            }
            bytes += u64::from(len);
            if bytes > self.max_bytes {
                return Err(format!(
                    "its buffers add up to more than the {} bytes a request of this device may have",
                    self.max_bytes
                ));
            }
            if desc.is_write_only() {
                out.push(Buffer { addr, len });
            } else if readable == out.len() {
                out.push(Buffer { addr, len });
                readable += 1;
            } else {
                return Err("a device-readable buffer after a device-writable one".into());
            }
            if !desc.has_next() {
                return Ok(readable);
            }
            index = desc.next();
        }
    }

    /// Checks an indirect descriptor and returns its table and size.
    fn indirect_table(
        &self,
        desc: &Descriptor,
        in_indirect: bool,
        taken: usize,
    ) -> Result<(GuestAddress, u16), String> {
        if !self.indirect {
            return Err(
                "an indirect descriptor, and VIRTIO_RING_F_INDIRECT_DESC was not negotiated".into(),
            );
        }
        if in_indirect || desc.has_next() || taken != 0 {
            return Err(
                "a misplaced indirect descriptor (nested, chained, or after other buffers)".into(),
            );
        }
        let len = desc.len();
        let entries = len / 16;
        if len == 0 || len % 16 != 0 || entries as usize > self.max_descriptors {
            return Err(format!("an indirect table of {len} bytes"));
        }
        if !self.mem.check_range(desc.addr(), len as usize) {
            return Err(format!(
                "indirect table {:#x}+{len:#x} is not inside guest RAM",
                desc.addr().0
            ));
        }
        Ok((desc.addr(), entries as u16))
    }
}

/// Test support: a split ring laid out in a test mapping by hand, as a
/// driver would.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use vm_memory::Bytes;

    pub const DESC_F_NEXT: u16 = 1;
    pub const DESC_F_WRITE: u16 = 2;
    pub const DESC_F_INDIRECT: u16 = 4;

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
            write_desc(mem, at, addr, len, flags, next);
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
        /// The `n`th used element: (head, len).
        pub fn used_elem(&self, mem: &GuestMemoryMmap, n: u16) -> (u32, u32) {
            let at = self.used() + 4 + 8 * u64::from(n % self.size);
            (
                mem.read_obj(GuestAddress(at)).expect("used id"),
                mem.read_obj(GuestAddress(at + 4)).expect("used len"),
            )
        }
        /// A device-side queue configured to this ring, ready.
        pub fn queue(&self, max: u16) -> Queue {
            let mut q = Queue::new(max).expect("queue");
            q.set_size(self.size);
            q.set_desc_table_address(Some(self.desc() as u32), Some((self.desc() >> 32) as u32));
            q.set_avail_ring_address(Some(self.avail() as u32), Some((self.avail() >> 32) as u32));
            q.set_used_ring_address(Some(self.used() as u32), Some((self.used() >> 32) as u32));
            q.set_ready(true);
            q
        }
    }

    /// Writes one descriptor at guest address `at`.
    pub fn write_desc(mem: &GuestMemoryMmap, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
        mem.write_obj(addr, GuestAddress(at)).expect("desc addr");
        mem.write_obj(len, GuestAddress(at + 8)).expect("desc len");
        mem.write_obj(flags, GuestAddress(at + 12))
            .expect("desc flags");
        mem.write_obj(next, GuestAddress(at + 14))
            .expect("desc next");
    }

    pub fn memory(mib: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mib << 20)]).expect("test memory")
    }
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
