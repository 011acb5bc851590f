//! The virtio-mmio transport, version 2 (virtio 1.x, section 4.2.2): the
//! register window of one device, its status state machine, feature
//! negotiation and queue configuration. Register accesses arrive on vCPU
//! threads through the MMIO bus. At DRIVER_OK the transport hands the
//! queues to the device's handler on the VM's device thread; at a reset it
//! takes them back (waiting until the handler is gone).

use std::sync::Arc;

use event_manager::SubscriberId;
use virtio_bindings::virtio_mmio as reg;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::thread::{Active, DeviceThreadHandle};
use super::*;
use crate::bus::BusDevice;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4854_4854; // "HTHT"

/// `QueueNotify`: the guest writes a queue index here (an ioeventfd in a VM).
pub const REG_QUEUE_NOTIFY: u64 = reg::VIRTIO_MMIO_QUEUE_NOTIFY as u64;
const REG_CONFIG: u64 = reg::VIRTIO_MMIO_CONFIG as u64;

/// One virtio-mmio device: registers, state, and the way to its handler.
pub struct MmioTransport<D> {
    device: D,
    mem: GuestMemoryMmap,
    state: Arc<DeviceState>,
    /// `notify[i]` is signalled when the driver notifies queue `i` (by KVM
    /// through an ioeventfd in a VM, or by [`BusDevice::write`] here).
    notify: Arc<Vec<EventFd>>,
    thread: DeviceThreadHandle,
    /// The handler serving the queues while the device is active.
    active: Option<SubscriberId>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    config_generation: u32,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// A transport for `device`, whose handler will run on `thread`. Fails
    /// only when the notification eventfds cannot be created.
    pub fn new(
        device: D,
        mem: GuestMemoryMmap,
        state: Arc<DeviceState>,
        thread: DeviceThreadHandle,
    ) -> std::io::Result<Self> {
        let queues: Vec<Queue> = device
            .queue_max_sizes()
            .iter()
            .filter_map(|&n| Queue::new(n).ok())
            .collect();
        let notify = Arc::new(
            queues
                .iter()
                .map(|_| EventFd::new(libc::EFD_NONBLOCK))
                .collect::<std::io::Result<_>>()?,
        );
        Ok(MmioTransport {
            device,
            mem,
            state,
            notify,
            thread,
            active: None,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked: 0,
            queue_sel: 0,
            queues,
            config_generation: 0,
        })
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    pub fn state(&self) -> &Arc<DeviceState> {
        &self.state
    }

    /// The queue notification eventfds (to register as KVM ioeventfds).
    pub fn notify_evts(&self) -> &[EventFd] {
        &self.notify
    }

    pub fn status(&self) -> u32 {
        self.status
            | if self.state.needs_reset() {
                STATUS_NEEDS_RESET
            } else {
                0
            }
    }

    /// The features both sides agreed on.
    pub fn acked_features(&self) -> u64 {
        self.acked
    }

    /// Whether the driver has set the device up and it works.
    pub fn is_active(&self) -> bool {
        self.active.is_some() && !self.state.needs_reset()
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | (1 << F_VERSION_1)
    }

    /// Tells the driver the configuration space changed.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.state.irq.signal_config();
    }

    fn fail(&mut self, detail: String) {
        self.state.fail(&QueueError::Device(detail));
    }

    /// Takes the queues back from the handler (waiting until it is gone)
    /// and resets everything to the state after power-on.
    fn reset(&mut self) {
        if let Some(id) = self.active.take() {
            if let Err(e) = self.thread.remove(id) {
                log::error!("{}: cannot stop its handler: {e}", self.state.name);
            }
        }
        self.device.reset();
        self.state.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.acked = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
    }

    /// DRIVER_OK: checks the rings, builds the handler and starts it on
    /// the device thread. Buffers the driver posted before DRIVER_OK are
    /// taken there, by the handler's `start`.
    fn activate(&mut self) {
        if let Some(index) = self
            .queues
            .iter()
            .position(|q| q.ready() && !q.is_valid(&self.mem))
        {
            self.fail(format!(
                "queue {index}: its rings do not lie inside guest RAM"
            ));
            return;
        }
        let handler = match self.device.activate(self.acked) {
            Ok(h) => h,
            Err(e) => return self.fail(format!("cannot activate: {e}")),
        };
        // No system call on this path but the hand-over itself: it runs
        // on a vCPU thread, under that thread's seccomp filter.
        let queues = match self
            .queues
            .iter()
            .map(|q| Queue::try_from(q.state()))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(q) => q,
            Err(e) => return self.fail(format!("cannot hand over its queues: {e}")),
        };
        let queues = Queues::new(
            queues,
            self.mem.clone(),
            self.state.clone(),
            self.acked,
            self.device.max_chain_bytes(),
        );
        match self
            .thread
            .add(Box::new(Active::new(handler, queues, self.notify.clone())))
        {
            Ok(id) => self.active = Some(id),
            Err(e) => self.fail(format!("its device thread is gone: {e}")),
        }
    }

    /// Queue registers may be written while the driver sets the device up,
    /// before DRIVER_OK, and only for a queue that is not ready yet.
    fn queue_writable(&mut self) -> bool {
        let setting_up =
            self.status & STATUS_FEATURES_OK != 0 && self.status & STATUS_DRIVER_OK == 0;
        setting_up && self.selected_queue().is_some_and(|q| !q.ready())
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        if value & old != old {
            log::debug!(
                "{}: status {old:#x} -> {value:#x} clears bits; ignored (only a reset clears)",
                self.state.name
            );
            return;
        }
        let added = value & !old;
        let mut new = value & !STATUS_NEEDS_RESET;
        if added & STATUS_FEATURES_OK != 0 {
            let offered = self.offered_features();
            let ok = self.acked & !offered == 0 && self.acked & (1 << F_VERSION_1) != 0;
            if !ok || old & STATUS_DRIVER == 0 {
                log::debug!(
                    "{}: features {:#x} refused (offered {offered:#x})",
                    self.state.name,
                    self.acked
                );
                new &= !STATUS_FEATURES_OK;
            }
        }
        if added & STATUS_DRIVER_OK != 0 && new & STATUS_FEATURES_OK == 0 {
            log::debug!(
                "{}: DRIVER_OK without FEATURES_OK; ignored",
                self.state.name
            );
            new &= !STATUS_DRIVER_OK;
        }
        self.status = new;
        if new & STATUS_DRIVER_OK != 0 && self.active.is_none() && !self.state.needs_reset() {
            self.activate();
        }
    }

    fn read_register(&mut self, offset: u32) -> u32 {
        match offset {
            reg::VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            reg::VIRTIO_MMIO_VERSION => VERSION,
            reg::VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            reg::VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            reg::VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            reg::VIRTIO_MMIO_QUEUE_NUM_MAX => {
                self.selected_queue().map_or(0, |q| u32::from(q.max_size()))
            }
            reg::VIRTIO_MMIO_QUEUE_READY => {
                self.selected_queue().map_or(0, |q| u32::from(q.ready()))
            }
            reg::VIRTIO_MMIO_INTERRUPT_STATUS => self.state.irq.status(),
            reg::VIRTIO_MMIO_STATUS => self.status(),
            // No shared memory regions.
            reg::VIRTIO_MMIO_SHM_LEN_LOW | reg::VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            reg::VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u32, v: u32) {
        match offset {
            reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::VIRTIO_MMIO_DRIVER_FEATURES => {
                let negotiating =
                    self.status & STATUS_DRIVER != 0 && self.status & STATUS_FEATURES_OK == 0;
                if negotiating {
                    match self.driver_features_sel {
                        0 => self.acked = (self.acked & !0xffff_ffff) | u64::from(v),
                        1 => self.acked = (self.acked & 0xffff_ffff) | (u64::from(v) << 32),
                        _ => {}
                    }
                }
            }
            reg::VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            reg::VIRTIO_MMIO_QUEUE_NUM => {
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
            reg::VIRTIO_MMIO_QUEUE_READY => {
                if self.queue_writable() || v == 0 {
                    if let Some(q) = self.selected_queue() {
                        q.set_ready(v == 1);
                    }
                }
            }
            reg::VIRTIO_MMIO_QUEUE_NOTIFY => {
                // Without an ioeventfd (unit tests) the write lands here.
                if let Some(evt) = self.notify.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            reg::VIRTIO_MMIO_INTERRUPT_ACK => self.state.irq.ack(v),
            reg::VIRTIO_MMIO_STATUS => self.set_status(v),
            reg::VIRTIO_MMIO_QUEUE_DESC_LOW
            | reg::VIRTIO_MMIO_QUEUE_DESC_HIGH
            | reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | reg::VIRTIO_MMIO_QUEUE_USED_LOW
            | reg::VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_ring_address(offset, v),
            _ => log::debug!("virtio: write of {v:#x} to register {offset:#x} ignored"),
        }
    }

    fn write_ring_address(&mut self, offset: u32, v: u32) {
        if !self.queue_writable() {
            return;
        }
        let (lo, hi) = if offset & 4 != 0 {
            (None, Some(v))
        } else {
            (Some(v), None)
        };
        if let Some(q) = self.selected_queue() {
            match offset & !4 {
                reg::VIRTIO_MMIO_QUEUE_DESC_LOW => q.set_desc_table_address(lo, hi),
                reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW => q.set_avail_ring_address(lo, hi),
                _ => q.set_used_ring_address(lo, hi),
            }
        }
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= REG_CONFIG {
            self.device.read_config(offset - REG_CONFIG, data);
            return;
        }
        match u32::try_from(offset) {
            Ok(offset) if data.len() == 4 && offset % 4 == 0 => {
                data.copy_from_slice(&self.read_register(offset).to_le_bytes());
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= REG_CONFIG {
            if self.status & STATUS_DRIVER != 0 {
                self.device.write_config(offset - REG_CONFIG, data);
            }
            return;
        }
        let (Ok(offset), Ok(bytes)) = (u32::try_from(offset), <[u8; 4]>::try_from(data)) else {
            return;
        };
        if offset % 4 == 0 {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

impl<D> Drop for MmioTransport<D> {
    fn drop(&mut self) {
        if let Some(id) = self.active.take() {
            let _ = self.thread.remove(id);
        }
    }
}
