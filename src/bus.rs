//! The I/O bus: port-I/O and MMIO ranges mapped to devices.
//!
//! A bus is built before the vCPUs start and is immutable afterwards, so the
//! exit path needs no lock to find a device: ranges sit in a sorted vector
//! searched by binary search. Each device has its own mutex, taken only for
//! the access itself.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// A device on a bus. Offsets are relative to the start of the range it was
/// registered at; `data.len()` is the access size (1, 2, 4 or 8).
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else drives it (the console).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("range {base:#x}+{len:#x} is empty or wraps around")]
    BadRange { base: u64, len: u64 },
    #[error(
        "range {base:#x}+{len:#x} for {name} overlaps {other} at {other_base:#x}+{other_len:#x}"
    )]
    Overlap {
        base: u64,
        len: u64,
        name: String,
        other: String,
        other_base: u64,
        other_len: u64,
    },
}

struct BusRange {
    base: u64,
    len: u64,
    name: String,
    device: SharedDevice,
}

/// Which address space a bus serves (for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressSpace {
    Pio,
    Mmio,
}

impl fmt::Display for AddressSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressSpace::Pio => "port",
            AddressSpace::Mmio => "MMIO",
        })
    }
}

/// A set of non-overlapping ranges, each owned by one device.
pub struct Bus {
    space: AddressSpace,
    ranges: Vec<BusRange>,
    unclaimed: AtomicU64,
}

impl Bus {
    pub fn new(space: AddressSpace) -> Self {
        Bus {
            space,
            ranges: Vec::new(),
            unclaimed: AtomicU64::new(0),
        }
    }

    /// Registers `device` for `[base, base + len)`.
    pub fn insert(
        &mut self,
        name: &str,
        base: u64,
        len: u64,
        device: SharedDevice,
    ) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len).is_none() {
            return Err(BusError::BadRange { base, len });
        }
        let idx = self.ranges.partition_point(|r| r.base < base);
        let clash = [idx.checked_sub(1), Some(idx)]
            .into_iter()
            .flatten()
            .filter_map(|i| self.ranges.get(i))
            .find(|r| base < r.base + r.len && r.base < base + len);
        if let Some(r) = clash {
            return Err(BusError::Overlap {
                base,
                len,
                name: name.to_string(),
                other: r.name.clone(),
                other_base: r.base,
                other_len: r.len,
            });
        }
        self.ranges.insert(
            idx,
            BusRange {
                base,
                len,
                name: name.to_string(),
                device,
            },
        );
        Ok(())
    }

    /// The range holding `addr` and the offset of `addr` in it. An access
    /// must lie wholly inside one range.
    fn find(&self, addr: u64, size: usize) -> Option<(&BusRange, u64)> {
        let idx = self.ranges.partition_point(|r| r.base <= addr);
        let range = self.ranges.get(idx.checked_sub(1)?)?;
        let offset = addr - range.base;
        let end = offset.checked_add(size as u64)?;
        (end <= range.len).then_some((range, offset))
    }

    /// Reads from the device at `addr`; `false` when no device claims it,
    /// in which case `data` is filled with all ones, as on real hardware.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((range, offset)) => {
                lock(&range.device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                self.note_unclaimed(addr, data.len(), "read");
                false
            }
        }
    }

    /// Writes to the device at `addr`; `false` (and the write is dropped)
    /// when no device claims it.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((range, offset)) => {
                lock(&range.device).write(offset, data);
                true
            }
            None => {
                self.note_unclaimed(addr, data.len(), "write");
                false
            }
        }
    }

    fn note_unclaimed(&self, addr: u64, size: usize, op: &str) {
        self.unclaimed.fetch_add(1, Ordering::Relaxed);
        log::debug!("unclaimed {} {op} at {addr:#x} ({size} bytes)", self.space);
    }

    /// The address space this bus serves.
    pub fn space(&self) -> AddressSpace {
        self.space
    }

    /// How many accesses no device claimed.
    pub fn unclaimed(&self) -> u64 {
        self.unclaimed.load(Ordering::Relaxed)
    }

    /// The registered ranges, in address order: `(name, base, len)`.
    pub fn ranges(&self) -> impl Iterator<Item = (&str, u64, u64)> {
        self.ranges.iter().map(|r| (r.name.as_str(), r.base, r.len))
    }
}

/// Locks a device. A device that panicked while holding its lock is still
/// used: device state machines keep their state consistent per access.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The lock, unless another thread holds it now (a poisoned lock is
/// taken, as [`lock`] takes it). What the real-time event loop uses on a
/// lock a vCPU or device thread may hold: it must not sleep behind a
/// normal thread it may have preempted (design.md, "Threads").
pub fn try_lock<T: ?Sized>(m: &Mutex<T>) -> Option<std::sync::MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// [`lock`] when `wait`, else [`try_lock`]: how the event loop takes a
/// device's lock, waiting for it only without the scheduler's ticks to
/// come back at.
pub fn lock_or_try<T: ?Sized>(m: &Mutex<T>, wait: bool) -> Option<std::sync::MutexGuard<'_, T>> {
    if wait {
        Some(lock(m))
    } else {
        try_lock(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last write and answers reads with its offset.
    #[derive(Default)]
    struct Probe {
        last: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last = Some((offset, data.to_vec()));
        }
    }

    fn probe() -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe::default()))
    }

    #[test]
    fn accesses_reach_the_device_at_the_right_offset() {
        let mut bus = Bus::new(AddressSpace::Pio);
        let a = probe();
        let b = probe();
        bus.insert("a", 0x3f8, 8, a.clone()).unwrap();
        bus.insert("b", 0x60, 1, b.clone()).unwrap();
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [5]);
        assert!(bus.write(0x60, &[0xfe]));
        assert_eq!(lock(&b).last, Some((0, vec![0xfe])));
        assert!(lock(&a).last.is_none());
    }

    #[test]
    fn unclaimed_reads_return_all_ones_and_are_counted() {
        let mut bus = Bus::new(AddressSpace::Mmio);
        bus.insert("a", 0x1000, 0x100, probe()).unwrap();
        let mut data = [0u8; 4];
        assert!(!bus.read(0x2000, &mut data));
        assert_eq!(data, [0xff; 4]);
        assert!(!bus.write(0xfff, &[1]));
        // An access that starts inside but runs past the end is not claimed.
        assert!(!bus.read(0x10fe, &mut data));
        assert_eq!(bus.unclaimed(), 3);
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let mut bus = Bus::new(AddressSpace::Pio);
        bus.insert("a", 0x10, 0x10, probe()).unwrap();
        for (base, len) in [(0x8, 0x9), (0x1f, 1), (0x0, 0x100), (0x12, 2)] {
            let err = bus.insert("b", base, len, probe()).unwrap_err();
            assert!(
                matches!(err, BusError::Overlap { .. }),
                "{base:#x}+{len:#x}"
            );
        }
        bus.insert("c", 0x20, 1, probe()).unwrap();
        bus.insert("d", 0x0, 0x10, probe()).unwrap();
        assert_eq!(
            bus.insert("e", u64::MAX, 2, probe()),
            Err(BusError::BadRange {
                base: u64::MAX,
                len: 2
            })
        );
        let names: Vec<_> = bus.ranges().map(|r| r.0).collect();
        assert_eq!(names, ["d", "a", "c"]);
    }
}
