//! The virtio-mmio transport, version 2 (virtio 1.x, section 4.2.2): the
//! register window of one device, its status state machine, feature
//! negotiation and queue configuration. The device behind it implements
//! [`VirtioDevice`].

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::chain::QueueError;
use super::*;
use crate::bus::BusDevice;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4854_4854; // "HTHT"

// Register offsets.
const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
/// `QueueNotify`: the guest writes a queue index here (an ioeventfd in a VM).
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_LEN_HIGH: u64 = 0x0b4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const REG_CONFIG: u64 = 0x100;

/// The device behind a transport: its identity, features, configuration
/// space and what it does with its queues. No fds, no KVM.
pub trait VirtioDevice: Send {
    /// Virtio device ID (5 = balloon).
    fn device_type(&self) -> u32;
    /// Feature bits the device offers (the transport adds VERSION_1).
    fn features(&self) -> u64;
    /// The maximum size of each queue the device may have.
    fn queue_max_sizes(&self) -> &[u16];
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK with these features.
    fn activate(&mut self, acked: u64);
    /// The driver reset the device.
    fn reset(&mut self);
    /// Takes the available buffers of queue `index`; `Ok(true)` when it
    /// returned some to the driver (an interrupt is then due).
    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, QueueError>;
}

/// One virtio-mmio device: registers, state and queues.
pub struct MmioTransport<D> {
    device: D,
    mem: GuestMemoryMmap,
    irq: Box<dyn Interrupt>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    interrupt_status: u32,
    config_generation: u32,
    /// Why the device last needed a reset (for the log and statistics).
    failure: Option<String>,
    failures: u64,
}

impl<D: VirtioDevice> MmioTransport<D> {
    pub fn new(device: D, mem: GuestMemoryMmap, irq: Box<dyn Interrupt>) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .filter_map(|&n| Queue::new(n).ok())
            .collect();
        MmioTransport {
            device,
            mem,
            irq,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked: 0,
            queue_sel: 0,
            queues,
            interrupt_status: 0,
            config_generation: 0,
            failure: None,
            failures: 0,
        }
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    /// The features both sides agreed on.
    pub fn acked_features(&self) -> u64 {
        self.acked
    }

    /// Whether the driver has finished setting the device up and it works.
    pub fn is_active(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0 && self.status & STATUS_NEEDS_RESET == 0
    }

    pub fn needs_reset(&self) -> bool {
        self.status & STATUS_NEEDS_RESET != 0
    }

    /// How often the device refused its queues, and the last reason.
    pub fn failures(&self) -> (u64, Option<&str>) {
        (self.failures, self.failure.as_deref())
    }

    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | (1 << F_VERSION_1)
    }

    /// The guest notified queue `index` (from the ioeventfd, or a plain
    /// write to `QueueNotify`): let the device process it.
    pub fn notify(&mut self, index: usize) {
        if !self.is_active() {
            return;
        }
        let Some(queue) = self.queues.get_mut(index) else {
            log::debug!("virtio: notify of queue {index}, which does not exist");
            return;
        };
        if !queue.ready() {
            return;
        }
        match self.device.process_queue(index, queue, &self.mem) {
            Ok(true) => self.signal_used(),
            Ok(false) => {}
            Err(e) => self.fail(e),
        }
    }

    /// Runs `f` on the device with queue `index` (if the device is active
    /// and the queue ready); signals the driver as `f` says.
    pub fn with_queue(
        &mut self,
        index: usize,
        f: impl FnOnce(&mut D, &mut Queue, &GuestMemoryMmap) -> Result<bool, QueueError>,
    ) {
        if !self.is_active() {
            return;
        }
        let Some(queue) = self.queues.get_mut(index).filter(|q| q.ready()) else {
            return;
        };
        match f(&mut self.device, queue, &self.mem) {
            Ok(true) => self.signal_used(),
            Ok(false) => {}
            Err(e) => self.fail(e),
        }
    }

    /// Marks the device DEVICE_NEEDS_RESET: its queues are not processed
    /// until the driver resets it; the driver hears of it through a
    /// configuration-change interrupt.
    pub fn fail(&mut self, e: QueueError) {
        log::warn!(
            "virtio device {}: {e}; it needs a reset",
            self.device.device_type()
        );
        self.failures += 1;
        self.failure = Some(e.to_string());
        self.status |= STATUS_NEEDS_RESET;
        self.config_changed();
    }

    /// Tells the driver the configuration space changed.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.interrupt_status |= INT_CONFIG;
        self.raise();
    }

    fn signal_used(&mut self) {
        self.interrupt_status |= INT_USED_RING;
        self.raise();
    }

    fn raise(&self) {
        if let Err(e) = self.irq.trigger() {
            log::warn!(
                "virtio device {}: cannot raise its interrupt: {e}",
                self.device.device_type()
            );
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.acked = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt_status = 0;
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may be written while the driver sets the device up,
    /// before DRIVER_OK, and only for a queue that is not ready yet.
    fn queue_writable(&mut self) -> bool {
        let setting_up =
            self.status & STATUS_FEATURES_OK != 0 && self.status & STATUS_DRIVER_OK == 0;
        setting_up && self.selected_queue().is_some_and(|q| !q.ready())
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if value & old != old {
            log::debug!(
                "virtio: status {old:#x} -> {value:#x} clears bits; ignored (only a reset clears)"
            );
            return;
        }
        let added = value & !old;
        let mut new = value;
        if added & STATUS_FEATURES_OK != 0 {
            let ok =
                self.acked & !self.offered_features() == 0 && self.acked & (1 << F_VERSION_1) != 0;
            if !ok || old & STATUS_DRIVER == 0 {
                log::debug!(
                    "virtio: features {:#x} refused (offered {:#x})",
                    self.acked,
                    self.offered_features()
                );
                new &= !STATUS_FEATURES_OK;
            }
        }
        if added & STATUS_DRIVER_OK != 0 {
            if new & STATUS_FEATURES_OK == 0 {
                log::debug!("virtio: DRIVER_OK without FEATURES_OK; ignored");
                new &= !STATUS_DRIVER_OK;
            } else {
                self.status = new;
                let bad = self
                    .queues
                    .iter()
                    .position(|q| q.ready() && !q.is_valid(&self.mem));
                if let Some(index) = bad {
                    self.fail(QueueError::Ring {
                        queue: index,
                        detail: "its rings do not lie inside guest RAM".into(),
                    });
                    return;
                }
                self.device.activate(self.acked);
                // Buffers a driver made available before DRIVER_OK (Linux
                // posts its first statistics buffer then) are taken now.
                for index in 0..self.queues.len() {
                    self.notify(index);
                }
                return;
            }
        }
        self.status = new;
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt_status,
            REG_STATUS => self.status,
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH => u32::MAX, // no shared memory regions
            REG_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES => {
                let negotiating =
                    self.status & STATUS_DRIVER != 0 && self.status & STATUS_FEATURES_OK == 0;
                if !negotiating {
                    return;
                }
                match self.driver_features_sel {
                    0 => self.acked = (self.acked & !0xffff_ffff) | u64::from(v),
                    1 => self.acked = (self.acked & 0xffff_ffff) | (u64::from(v) << 32),
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM => {
                if self.queue_writable() {
                    if let Some(q) = self.selected_queue() {
                        // virtio-queue accepts only powers of two up to the maximum.
                        let size = u16::try_from(v).ok();
                        if size.is_none_or(|n| q.try_set_size(n).is_err()) {
                            log::debug!("virtio: queue size {v} refused");
                        }
                    }
                }
            }
            REG_QUEUE_READY => {
                if self.queue_writable() || v == 0 {
                    if let Some(q) = self.selected_queue() {
                        q.set_ready(v == 1);
                    }
                }
            }
            REG_QUEUE_NOTIFY => self.notify(v as usize),
            REG_INTERRUPT_ACK => self.interrupt_status &= !v,
            REG_STATUS => self.set_status(v),
            REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH => {
                if !self.queue_writable() {
                    return;
                }
                let high = offset & 4 != 0;
                let (lo, hi) = if high {
                    (None, Some(v))
                } else {
                    (Some(v), None)
                };
                if let Some(q) = self.selected_queue() {
                    match offset & !4 {
                        REG_QUEUE_DESC_LOW => q.set_desc_table_address(lo, hi),
                        REG_QUEUE_DRIVER_LOW => q.set_avail_ring_address(lo, hi),
                        _ => q.set_used_ring_address(lo, hi),
                    }
                }
            }
            _ => log::debug!("virtio: write of {v:#x} to register {offset:#x} ignored"),
        }
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= REG_CONFIG {
            self.device.read_config(offset - REG_CONFIG, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= REG_CONFIG {
            if self.status & STATUS_DRIVER != 0 {
                self.device.write_config(offset - REG_CONFIG, data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if offset % 4 == 0 {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}
