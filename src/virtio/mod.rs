//! Virtio devices over the virtio-mmio transport (virtio 1.x, the modern
//! register layout, version 2).
//!
//! - [`mmio`]: the transport, a [`BusDevice`](crate::bus::BusDevice) that
//!   holds the device status state machine, feature negotiation and the
//!   queues (virtio-queue's split rings);
//! - [`chain`]: checked walking of descriptor chains (every buffer inside
//!   guest RAM, the right direction, no loops);
//! - [`balloon`]: the virtio-balloon device.
//!
//! Devices are state machines: no fds, threads or KVM inside. Interrupts
//! leave through [`Interrupt`] (an irqfd in a VM, a counter in tests);
//! returning memory to the host goes through [`balloon::Reclaim`]. Register
//! accesses arrive on vCPU threads through the MMIO bus; queue
//! notifications arrive on the event-loop thread through an ioeventfd that
//! KVM signals when the guest writes the queue index to `QueueNotify`.

pub mod balloon;
pub mod chain;
pub mod mmio;

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// Device status bits (virtio 1.x, 2.1).
pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 64;
pub const STATUS_FAILED: u32 = 128;

/// `VIRTIO_F_VERSION_1`: the modern interface; the transport requires it.
pub const F_VERSION_1: u32 = 32;

/// Interrupt status bits.
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// How a device raises its interrupt line.
pub trait Interrupt: Send {
    fn trigger(&self) -> io::Result<()>;
}

/// An eventfd registered with KVM as an irqfd on the device's GSI.
pub struct IrqFd(pub EventFd);

impl Interrupt for IrqFd {
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

pub use crate::layout::{cmdline_token, mmio_slot, MmioSlot, MMIO_WINDOW};
