//! Virtio devices over the virtio-mmio transport (virtio 1.x, the modern
//! register layout, version 2).
//!
//! A device has two halves (docs/design.md, "The virtio device model"):
//!
//! - the **front** ([`VirtioDevice`]): identity, features, configuration
//!   space. It lives in the [`mmio::MmioTransport`] on the MMIO bus, so
//!   vCPU threads reach it on register accesses;
//! - the **handler** ([`QueueHandler`]): what the device does with its
//!   queues and its host back end (a file, a tap, sockets). The front
//!   builds it when the driver sets DRIVER_OK; it then runs on the VM's
//!   device thread ([`thread::DeviceThread`]), which owns the queue
//!   ioeventfds, until the driver resets the device.
//!
//! Every chain a handler takes is read by the same bounded, checked reader
//! ([`queue::Queues::pop`]). Interrupts leave through an irqfd
//! ([`InterruptLine`]); a handler that meets a malformed chain marks the
//! device DEVICE_NEEDS_RESET ([`DeviceState::fail`]) and stops serving it.

pub mod balloon;
pub mod block;
pub mod mmio;
pub mod net;
pub mod queue;
#[cfg(test)]
pub(crate) mod testdrv;
pub mod thread;
pub mod timer;
pub mod vsock;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet};
use virtio_bindings::virtio_config;
use virtio_bindings::virtio_ring;
use vmm_sys_util::eventfd::EventFd;

pub use crate::layout::{cmdline_token, mmio_slot, MmioSlot, MMIO_WINDOW};
pub use queue::{Buffer, Chain, QueueError, Queues};

/// Device status bits (virtio 1.x, 2.1).
pub const STATUS_ACKNOWLEDGE: u32 = virtio_config::VIRTIO_CONFIG_S_ACKNOWLEDGE;
pub const STATUS_DRIVER: u32 = virtio_config::VIRTIO_CONFIG_S_DRIVER;
pub const STATUS_DRIVER_OK: u32 = virtio_config::VIRTIO_CONFIG_S_DRIVER_OK;
pub const STATUS_FEATURES_OK: u32 = virtio_config::VIRTIO_CONFIG_S_FEATURES_OK;
pub const STATUS_NEEDS_RESET: u32 = virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
pub const STATUS_FAILED: u32 = virtio_config::VIRTIO_CONFIG_S_FAILED;

/// `VIRTIO_F_VERSION_1`: the modern interface; the transport requires it.
pub const F_VERSION_1: u32 = virtio_config::VIRTIO_F_VERSION_1;
/// `VIRTIO_RING_F_INDIRECT_DESC`: indirect descriptor tables. Only a
/// device that offers it (and a driver that acks it) may use them.
pub const F_INDIRECT_DESC: u32 = virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;

/// Interrupt status bits.
pub const INT_USED_RING: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
pub const INT_CONFIG: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

/// How a device raises its interrupt line.
pub trait Trigger: Send + Sync {
    fn trigger(&self) -> io::Result<()>;
}

/// An eventfd registered with KVM as an irqfd on the device's GSI.
impl Trigger for EventFd {
    fn trigger(&self) -> io::Result<()> {
        self.write(1)
    }
}

/// A device's interrupt: the `InterruptStatus` bits the driver reads and
/// acknowledges (from a vCPU thread) and the line both halves raise.
pub struct InterruptLine {
    status: AtomicU32,
    line: Box<dyn Trigger>,
}

impl InterruptLine {
    pub fn new(line: Box<dyn Trigger>) -> Self {
        InterruptLine {
            status: AtomicU32::new(0),
            line,
        }
    }

    /// Buffers were returned to the driver.
    pub fn signal_used(&self) {
        self.raise(INT_USED_RING);
    }

    /// The configuration (or the device status) changed.
    pub fn signal_config(&self) {
        self.raise(INT_CONFIG);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::AcqRel);
        if let Err(e) = self.line.trigger() {
            log::warn!("virtio: cannot raise an interrupt: {e}");
        }
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    fn clear(&self) {
        self.status.store(0, Ordering::Release);
    }
}

/// What the two halves of a device share: the interrupt and its health.
pub struct DeviceState {
    /// The device's name on the bus (`balloon0`, `blk0`, ...), for messages.
    pub name: String,
    pub irq: InterruptLine,
    needs_reset: AtomicBool,
    failures: AtomicU64,
    last_failure: Mutex<Option<String>>,
    /// `last_failure` as the event loop last saw it (it does not wait for
    /// a device thread's lock).
    failure_seen: crate::glimpse::Glimpse<Option<String>>,
    /// Queue notifications the device thread has taken (doorbells that
    /// KVM served through an ioeventfd never reach the verifier; this
    /// counts them).
    notifications: AtomicU64,
}

impl DeviceState {
    pub fn new(name: &str, irq: InterruptLine) -> Self {
        DeviceState {
            name: name.to_string(),
            irq,
            needs_reset: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            last_failure: Mutex::new(None),
            failure_seen: crate::glimpse::Glimpse::default(),
            notifications: AtomicU64::new(0),
        }
    }

    /// The device thread took a queue notification.
    pub(crate) fn count_notification(&self) {
        self.notifications.fetch_add(1, Ordering::Release);
    }

    /// Queue notifications taken so far.
    pub fn notifications(&self) -> u64 {
        self.notifications.load(Ordering::Acquire)
    }

    /// Marks the device DEVICE_NEEDS_RESET for `e`: its queues are not
    /// served again until the driver resets it; the driver hears of it
    /// through a configuration-change interrupt.
    pub fn fail(&self, e: &QueueError) {
        log::warn!("{}: {e}; the device needs a reset", self.name);
        self.failures.fetch_add(1, Ordering::Relaxed);
        *crate::bus::lock(&self.last_failure) = Some(e.to_string());
        self.needs_reset.store(true, Ordering::Release);
        self.irq.signal_config();
    }

    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    /// How often the device refused its queues, and the last reason.
    pub fn failures(&self) -> (u64, Option<String>) {
        (
            self.failures.load(Ordering::Relaxed),
            self.failure_seen.read(&self.last_failure, Clone::clone),
        )
    }

    /// The driver reset the device.
    fn reset(&self) {
        self.needs_reset.store(false, Ordering::Release);
        self.irq.clear();
    }
}

/// The front of a device: identity, features and configuration space.
/// No fds, threads or KVM inside, so it is unit-tested on its own.
pub trait VirtioDevice: Send {
    /// Virtio device ID (2 block, 1 net, 5 balloon, 19 vsock).
    fn device_type(&self) -> u32;
    /// Feature bits the device offers (the transport adds VERSION_1).
    fn features(&self) -> u64;
    /// The maximum size of each queue the device may have.
    fn queue_max_sizes(&self) -> &[u16];
    /// The largest number of bytes one chain may describe (what one request
    /// of this device can need; a longer chain is malformed).
    fn max_chain_bytes(&self) -> u64;
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK with `acked` features: builds the handler
    /// that serves the queues on the device thread. An error leaves the
    /// device needing a reset.
    fn activate(&mut self, acked: u64) -> Result<Box<dyn QueueHandler>, String>;
    /// The driver reset the device (its handler is gone by now).
    fn reset(&mut self) {}
}

/// Watches `fd` (level-triggered input, or edge-triggered with `edge`) on
/// the device thread under `tag`; `what` names it in the error.
pub fn watch(
    ops: &mut EventOps,
    fd: &dyn std::os::fd::AsRawFd,
    tag: u32,
    edge: bool,
    what: &str,
) -> Result<(), QueueError> {
    let set = match edge {
        true => EventSet::IN | EventSet::EDGE_TRIGGERED,
        false => EventSet::IN,
    };
    ops.add(event_manager::Events::with_data_raw(
        fd.as_raw_fd(),
        tag,
        set,
    ))
    .map_err(|e| QueueError::Device(format!("cannot watch {what}: {e}")))
}

/// First event tag a handler may use for its own fds (queue notifications
/// use the tags below it, one per queue).
pub const HANDLER_TAG: u32 = 64;

/// The half of a device that runs on the VM's device thread and owns the
/// queues while the device is active.
pub trait QueueHandler: Send {
    /// Called once on the device thread when the device becomes active:
    /// register the handler's own fds (tags from [`HANDLER_TAG`] up) and
    /// take what the driver posted before DRIVER_OK.
    fn start(&mut self, q: &mut Queues, ops: &mut EventOps) -> Result<(), QueueError> {
        let _ = ops;
        for index in 0..q.len() {
            self.queue_ready(index, q)?;
        }
        Ok(())
    }

    /// The guest notified queue `index` (several notifications may have
    /// been coalesced: take everything available).
    fn queue_ready(&mut self, index: usize, q: &mut Queues) -> Result<(), QueueError>;

    /// What the device thread calls for a notification: `queue_ready`,
    /// unless the handler needs the event ops too (to watch or forget fds
    /// of its own, such as the sockets of a vsock device).
    fn queue_ready_ops(
        &mut self,
        index: usize,
        q: &mut Queues,
        ops: &mut EventOps,
    ) -> Result<(), QueueError> {
        let _ = ops;
        self.queue_ready(index, q)
    }

    /// An event on one of the handler's own fds.
    fn event(
        &mut self,
        tag: u32,
        events: EventSet,
        q: &mut Queues,
        ops: &mut EventOps,
    ) -> Result<(), QueueError> {
        let _ = (tag, events, q, ops);
        Ok(())
    }
}

/// A message box from the monitor to a handler: a value slot plus an
/// eventfd the handler watches. Sending never blocks, and the latest value
/// wins (for settings such as a balloon target or a rate limit).
pub struct Mailbox<T> {
    slot: Mutex<Option<T>>,
    evt: EventFd,
    /// How many times the handler has taken a value.
    served: AtomicU64,
}

impl<T> Mailbox<T> {
    pub fn new() -> io::Result<Arc<Self>> {
        Ok(Arc::new(Mailbox {
            slot: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
            served: AtomicU64::new(0),
        }))
    }

    pub fn send(&self, value: T) {
        *crate::bus::lock(&self.slot) = Some(value);
        if let Err(e) = self.evt.write(1) {
            log::warn!("virtio: cannot wake a device handler: {e}");
        }
    }

    /// The latest value sent, if any (called by the handler on its event).
    pub fn take(&self) -> Option<T> {
        let _ = self.evt.read();
        let value = crate::bus::lock(&self.slot).take();
        self.served.fetch_add(1, Ordering::Release);
        value
    }

    /// How many times the handler has looked in the box.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Acquire)
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}
