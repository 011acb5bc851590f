//! What the fuzz targets share: guest memory and a driver's view of a
//! split ring, a naive "does this lie in guest RAM" check to hold the
//! monitor's own against, interrupt lines that only count, a heap counter,
//! and the lock that lets one target measure the heap alone.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use hearth::virtio::Trigger;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Descriptor flags (virtio 1.x, 2.7.5).
pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
pub const DESC_F_INDIRECT: u16 = 4;

/// How long a target runs under `cargo test`: `secs`, unless
/// `BOLERO_RANDOM_TEST_TIME_MS` says otherwise (bolero lets the variable
/// win over the code, which is how the long runs in docs/fuzzing.md work).
pub fn budget(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

/// The repository's top directory (the fuzz targets also build as the
/// package in `fuzz/`, for `cargo bolero`).
pub fn repo_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    match dir.parent() {
        Some(parent) if !dir.join("resources").is_dir() => parent.to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// Most bytes one input decodes from.
pub const MAX_INPUT: usize = 4096;

/// The inputs of a target: byte strings of up to [`MAX_INPUT`] bytes,
/// decoded with [`decode`]. Random ones in one draw (bolero's own are at
/// most 64 bytes, too few for a ring and a list of operations, and built
/// a byte at a time); under a fuzzing engine, the engine's bytes as they are.
pub struct Input;

impl bolero::ValueGenerator for Input {
    type Output = Vec<u8>;

    fn generate<D: bolero::Driver>(&self, driver: &mut D) -> Option<Vec<u8>> {
        let take = |bytes: &[u8]| {
            let n = bytes.len().min(MAX_INPUT);
            Some((n, bytes[..n].to_vec()))
        };
        driver.gen_from_bytes(|| (0, Some(MAX_INPUT)), take)
    }
}

pub fn input() -> Input {
    Input
}

/// Runs `f` on the value `bytes` decode to (with `arbitrary`, as
/// cargo-fuzz targets do: every engine hands a target bytes, and a crash
/// file replays as it was found). Bytes that decode to nothing are skipped.
/// With `HEARTH_FUZZ_CASE` set, a case that fails is printed decoded.
pub fn decode<'a, T: arbitrary::Arbitrary<'a> + std::fmt::Debug>(
    bytes: &'a [u8],
    f: impl FnOnce(&T),
) {
    /// Prints the case if the target panics on it.
    struct Show<'v, T: std::fmt::Debug>(&'v T);
    impl<T: std::fmt::Debug> Drop for Show<'_, T> {
        fn drop(&mut self) {
            if std::thread::panicking() && std::env::var_os("HEARTH_FUZZ_CASE").is_some() {
                eprintln!("the failing case: {:#?}", self.0);
            }
        }
    }
    if let Ok(value) = T::arbitrary_take_rest(arbitrary::Unstructured::new(bytes)) {
        let _show = Show(&value);
        f(&value);
    }
}

/// A list of at most `MAX` values whose length is decoded first.
/// (`arbitrary`'s `Vec` decides after each element whether another
/// follows, with even odds, so random bytes make lists of one or two.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List<T, const MAX: usize>(pub Vec<T>);

impl<'a, T: arbitrary::Arbitrary<'a>, const MAX: usize> arbitrary::Arbitrary<'a> for List<T, MAX> {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let len = u.int_in_range(0..=MAX)?;
        let mut items = Vec::with_capacity(len);
        while items.len() < len && !u.is_empty() {
            items.push(T::arbitrary(u)?);
        }
        Ok(List(items))
    }
}

impl<T, const MAX: usize> std::ops::Deref for List<T, MAX> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<T, const MAX: usize> From<Vec<T>> for List<T, MAX> {
    fn from(items: Vec<T>) -> Self {
        List(items)
    }
}

// ---------------------------------------------------------------------------
// Guest memory

/// Guest RAM of `regions` (start, length), anonymous and zeroed.
pub fn memory(regions: &[(u64, u64)]) -> GuestMemoryMmap {
    let ranges: Vec<(GuestAddress, usize)> = regions
        .iter()
        .map(|&(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).expect("the fuzz layouts are valid RAM layouts")
}

/// Whether `[addr, addr + len)` lies wholly in guest RAM made of the sorted
/// `regions`: it may run from one region into the next only where they
/// touch. Written from the definition, to check the monitor's checks.
pub fn in_ram(regions: &[(u64, u64)], addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    let mut at = addr;
    loop {
        let Some(&(start, size)) = regions
            .iter()
            .find(|&&(start, size)| start <= at && at - start < size)
        else {
            return false;
        };
        let region_end = start + size;
        if end <= region_end {
            return true;
        }
        at = region_end;
    }
}

/// One descriptor as the driver wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawDesc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

/// Writes one descriptor at guest address `at` (little endian, 16 bytes).
pub fn write_desc(mem: &GuestMemoryMmap, at: u64, d: RawDesc) {
    let mut raw = [0u8; 16];
    raw[0..8].copy_from_slice(&d.addr.to_le_bytes());
    raw[8..12].copy_from_slice(&d.len.to_le_bytes());
    raw[12..14].copy_from_slice(&d.flags.to_le_bytes());
    raw[14..16].copy_from_slice(&d.next.to_le_bytes());
    mem.write_slice(&raw, GuestAddress(at))
        .expect("descriptors are written inside guest RAM");
}

/// Reads the descriptor at guest address `at` byte by byte, as the
/// specification lays it out (independent of virtio-queue's types).
pub fn read_desc(mem: &GuestMemoryMmap, at: u64) -> Option<RawDesc> {
    let mut raw = [0u8; 16];
    mem.read_slice(&mut raw, GuestAddress(at)).ok()?;
    let mut addr = [0u8; 8];
    addr.copy_from_slice(&raw[0..8]);
    Some(RawDesc {
        addr: u64::from_le_bytes(addr),
        len: u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]),
        flags: u16::from_le_bytes([raw[12], raw[13]]),
        next: u16::from_le_bytes([raw[14], raw[15]]),
    })
}

/// A driver's view of one split ring of `size` entries at `base`: the
/// descriptor table, then the available ring, then the used ring on the
/// next 4 KiB boundary.
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

    /// Whether the whole ring (through the used ring) lies in `regions`.
    pub fn in_ram(&self, regions: &[(u64, u64)]) -> bool {
        let end = self.used() + 6 + 8 * u64::from(self.size);
        in_ram(regions, self.base, end - self.base)
    }

    /// Writes `descs` (address, length, device-writable) as one chain at
    /// table entries `head`, `head + 1`, ... and makes it available;
    /// `writable` records what the driver wrote, when given.
    pub fn post(
        &mut self,
        mem: &GuestMemoryMmap,
        head: u16,
        descs: &[(u64, u32, bool)],
        mut writable: Option<&mut Writable>,
    ) {
        for (i, &(addr, len, write)) in descs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let last = i + 1 == descs.len();
            let flags = if write { DESC_F_WRITE } else { 0 } | if last { 0 } else { DESC_F_NEXT };
            let desc = RawDesc {
                addr,
                len,
                flags,
                next: (index + 1) % self.size,
            };
            self.set_desc(mem, index, desc);
            if let Some(w) = writable.as_deref_mut() {
                w.wrote(index, len, write);
            }
        }
        self.publish(mem, head);
    }

    pub fn set_desc(&self, mem: &GuestMemoryMmap, i: u16, d: RawDesc) {
        write_desc(mem, self.desc() + 16 * u64::from(i % self.size), d);
    }

    /// Puts `head` in the next slot of the available ring and publishes it.
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail() + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(slot))
            .expect("the available ring is in guest RAM");
        self.set_avail_idx(mem, self.avail_idx.wrapping_add(1));
    }

    /// Writes the available index (a hostile driver may write anything).
    pub fn set_avail_idx(&mut self, mem: &GuestMemoryMmap, idx: u16) {
        self.avail_idx = idx;
        mem.write_obj(idx, GuestAddress(self.avail() + 2))
            .expect("the available ring is in guest RAM");
    }

    /// The available index as it is in guest memory (what the device reads).
    pub fn avail_idx_in(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.avail() + 2))
            .expect("the available ring is in guest RAM")
    }

    /// The head the available ring holds at position `n`.
    pub fn avail_slot(&self, mem: &GuestMemoryMmap, n: u16) -> u16 {
        mem.read_obj(GuestAddress(
            self.avail() + 4 + 2 * u64::from(n % self.size),
        ))
        .expect("the available ring is in guest RAM")
    }

    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used() + 2))
            .expect("the used ring is in guest RAM")
    }

    /// The `n`th used element: (id, len).
    pub fn used_elem(&self, mem: &GuestMemoryMmap, n: u16) -> (u32, u32) {
        let at = self.used() + 4 + 8 * u64::from(n % self.size);
        (
            mem.read_obj(GuestAddress(at)).expect("used id"),
            mem.read_obj(GuestAddress(at + 4)).expect("used len"),
        )
    }

    /// A device-side queue of maximum size `max` on this ring, ready.
    pub fn queue(&self, max: u16) -> Queue {
        let mut q = Queue::new(max).expect("a power-of-two maximum");
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc() as u32), Some((self.desc() >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail() as u32), Some((self.avail() >> 32) as u32));
        q.set_used_ring_address(Some(self.used() as u32), Some((self.used() >> 32) as u32));
        q.set_ready(true);
        q
    }
}

/// A small ring buffer of fixed room (nothing here allocates while the
/// heap is measured).
pub struct Fifo<T: Copy + Default, const N: usize> {
    items: [T; N],
    first: usize,
    pub len: usize,
}

impl<T: Copy + Default, const N: usize> Fifo<T, N> {
    pub fn new() -> Self {
        Fifo {
            items: [T::default(); N],
            first: 0,
            len: 0,
        }
    }
    pub fn push(&mut self, t: T) -> bool {
        if self.len == N {
            return false;
        }
        self.items[(self.first + self.len) % N] = t;
        self.len += 1;
        true
    }
    pub fn front(&self) -> Option<T> {
        (self.len > 0).then(|| self.items[self.first])
    }
    pub fn pop(&mut self) {
        if self.len > 0 {
            self.first = (self.first + 1) % N;
            self.len -= 1;
        }
    }
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        (0..self.len).map(|i| self.items[(self.first + i) % N])
    }
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// What a driver wrote into one descriptor table: each descriptor's
/// device-writable length, and the most that a chain made of them (each
/// at most once) could have had at any time since the table was laid out.
/// A bound for every used length, whatever chains overwrote which
/// descriptors (a driver that posts more descriptors than its ring has).
pub struct Writable {
    lens: [u32; 256],
    pub most: u64,
}

impl Writable {
    pub const fn new() -> Self {
        Writable {
            lens: [0; 256],
            most: 0,
        }
    }

    /// Descriptor `index` now has `len` bytes, device-writable or not.
    pub fn wrote(&mut self, index: u16, len: u32, write: bool) {
        self.lens[usize::from(index) % 256] = if write { len } else { 0 };
        let now = self.lens.iter().map(|&l| u64::from(l)).sum();
        self.most = self.most.max(now);
    }
}

// ---------------------------------------------------------------------------
// Interrupt lines

/// An interrupt line that counts how often it was raised.
#[derive(Clone, Default)]
pub struct CountingIrq(pub Arc<AtomicU32>);

impl Trigger for CountingIrq {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The heap, and who may measure it

/// The global allocator of the fuzz binary: the system's, counting the
/// bytes live and the most live since [`Heap::reset_peak`].
pub struct Heap;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

impl Heap {
    pub fn live() -> usize {
        LIVE.load(Ordering::SeqCst)
    }

    /// Starts a new measurement: the peak becomes what is live now.
    pub fn reset_peak() -> usize {
        let live = Self::live();
        PEAK.store(live, Ordering::SeqCst);
        live
    }

    pub fn peak() -> usize {
        PEAK.load(Ordering::SeqCst)
    }

    fn grew(by: usize) {
        let live = LIVE.fetch_add(by, Ordering::SeqCst) + by;
        PEAK.fetch_max(live, Ordering::SeqCst);
    }

    fn shrank(by: usize) {
        LIVE.fetch_sub(by, Ordering::SeqCst);
    }
}

// SAFETY: every call is forwarded to the system allocator with the caller's
// arguments unchanged, so its guarantees are the system allocator's; the
// counting around it only touches atomics (it never allocates).
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `alloc_zeroed`'s contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is; `ptr` came from this allocator (so from
        // `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        Self::shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is; `ptr` came from `System` with `layout`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            Self::shrank(layout.size());
            Self::grew(new_size);
        }
        p
    }
}

/// Every test of the fuzz binary holds this lock: shared by most, taken
/// alone by a target that measures the heap (the counters are global).
static HEAP_LOCK: RwLock<()> = RwLock::new(());

/// For a test that does not measure the heap.
pub fn shared() -> RwLockReadGuard<'static, ()> {
    HEAP_LOCK.read().unwrap_or_else(|e| e.into_inner())
}

/// For a test that measures the heap: nothing else of this binary runs.
/// (The test harness's own thread records the test that just ended, on
/// the same heap: it is given a moment to do so first.)
pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    let guard = HEAP_LOCK.write().unwrap_or_else(|e| e.into_inner());
    std::thread::sleep(Duration::from_millis(50));
    guard
}

// ---------------------------------------------------------------------------
// How deep a target gets

/// Counts of what a target's inputs led to (chains taken, refused, ...),
/// printed at the end of the target when `HEARTH_FUZZ_STATS` is set: a
/// target whose inputs are all refused at the first check tests little.
pub struct Tally<const N: usize> {
    names: [&'static str; N],
    counts: [AtomicUsize; N],
}

impl<const N: usize> Tally<N> {
    pub const fn new(names: [&'static str; N]) -> Self {
        Tally {
            names,
            counts: [const { AtomicUsize::new(0) }; N],
        }
    }

    /// Counts one `name` (which must be one of the names given).
    pub fn add(&self, name: &str) {
        self.add_n(name, 1);
    }

    /// Counts `n` of `name`.
    pub fn add_n(&self, name: &str, n: u64) {
        if let Some(i) = self.names.iter().position(|x| *x == name) {
            self.counts[i].fetch_add(n as usize, Ordering::Relaxed);
        }
    }

    /// Prints the counts (when `HEARTH_FUZZ_STATS` is set).
    pub fn report(&self, target: &str) {
        if std::env::var_os("HEARTH_FUZZ_STATS").is_none() {
            return;
        }
        let counts: Vec<String> = self
            .names
            .iter()
            .zip(&self.counts)
            .map(|(n, c)| format!("{n} {}", c.load(Ordering::Relaxed)))
            .collect();
        eprintln!("fuzz {target}: {}", counts.join(", "));
    }
}
