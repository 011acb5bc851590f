//! Test support: a guest driver's side of any virtio-mmio device, on guest
//! memory in a test mapping, with a real device thread (no KVM).

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;

use super::mmio::MmioTransport;
use super::queue::testing::*;
use super::thread::DeviceThread;
use super::*;
use crate::bus::BusDevice;

/// Counts interrupts.
#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicU32>);

impl Trigger for Counter {
    fn trigger(&self) -> io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl Counter {
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

pub struct Driver<D: VirtioDevice + 'static> {
    pub dev: MmioTransport<D>,
    pub mem: GuestMemoryMmap,
    pub irq: Counter,
    pub rings: Vec<Ring>,
    // Dropped after `dev`.
    _thread: DeviceThread,
}

pub fn r32<D: VirtioDevice + 'static>(dev: &mut MmioTransport<D>, off: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.read(off, &mut b);
    u32::from_le_bytes(b)
}

pub fn w32<D: VirtioDevice + 'static>(dev: &mut MmioTransport<D>, off: u64, v: u32) {
    dev.write(off, &v.to_le_bytes());
}

/// Ring `i` lives at 0x10000 + i * 0x4000, with `size` entries; buffers
/// go from 0x100000 up.
pub const BUF_BASE: u64 = 0x10_0000;

impl<D: VirtioDevice + 'static> Driver<D> {
    /// `device` on a transport in `mib` MiB of test memory, `features`
    /// acked (VERSION_1 added), every queue set up with `size` entries,
    /// DRIVER_OK.
    pub fn new(device: D, name: &str, mib: usize, features: u64, size: u16) -> Driver<D> {
        let mem = memory(mib);
        let irq = Counter::default();
        let thread = DeviceThread::spawn("test-dev".into(), None).expect("device thread");
        let state = Arc::new(DeviceState::new(
            name,
            InterruptLine::new(Box::new(irq.clone())),
        ));
        let queues = device.queue_max_sizes().len();
        let mut dev =
            MmioTransport::new(device, mem.clone(), state, thread.handle()).expect("transport");
        assert_eq!(r32(&mut dev, 0x0), 0x7472_6976);
        w32(&mut dev, 0x70, STATUS_ACKNOWLEDGE);
        w32(&mut dev, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let features = features | (1 << F_VERSION_1);
        for sel in 0..2u32 {
            w32(&mut dev, 0x24, sel);
            w32(&mut dev, 0x20, (features >> (32 * sel)) as u32);
        }
        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        w32(&mut dev, 0x70, s);
        assert_eq!(r32(&mut dev, 0x70), s, "features accepted");
        let mut rings = Vec::new();
        for i in 0..queues as u32 {
            let ring = Ring::new(0x10_000 + u64::from(i) * 0x4000, size);
            w32(&mut dev, 0x30, i);
            w32(&mut dev, 0x38, u32::from(size));
            w32(&mut dev, 0x80, ring.desc() as u32);
            w32(&mut dev, 0x84, 0);
            w32(&mut dev, 0x90, ring.avail() as u32);
            w32(&mut dev, 0xa0, ring.used() as u32);
            w32(&mut dev, 0x44, 1);
            rings.push(ring);
        }
        w32(&mut dev, 0x70, s | STATUS_DRIVER_OK);
        assert!(dev.is_active());
        Driver {
            dev,
            mem,
            irq,
            rings,
            _thread: thread,
        }
    }

    /// Notifies queue `q` and waits until the device thread has served it
    /// (or the device has failed).
    pub fn notify(&mut self, q: u32) {
        let before = self.dev.state().notifications();
        w32(&mut self.dev, 0x50, q);
        self.until("the notification served", |d| {
            d.dev.state().notifications() != before || d.dev.state().needs_reset()
        });
    }

    /// Waits (up to 10 s) until `cond` holds.
    pub fn until(&mut self, what: &str, cond: impl Fn(&mut Driver<D>) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond(self) {
            assert!(Instant::now() < deadline, "{what}: timed out");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Used elements of queue `q` so far.
    pub fn used_idx(&self, q: usize) -> u16 {
        self.rings[q].used_idx(&self.mem)
    }

    /// Posts a chain of `(addr, len, device_writable)` buffers on queue
    /// `q` (descriptors from `first` on) without notifying.
    pub fn post(&mut self, q: usize, first: u16, bufs: &[(u64, u32, bool)]) {
        let ring = &mut self.rings[q];
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let idx = first + i as u16;
            let mut flags = if writable { DESC_F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= DESC_F_NEXT;
            }
            ring.set_desc(&self.mem, idx, addr, len, flags, idx + 1);
        }
        ring.publish(&self.mem, first);
    }

    /// Resets the device (status 0).
    pub fn reset(&mut self) {
        w32(&mut self.dev, 0x70, 0);
    }
}
