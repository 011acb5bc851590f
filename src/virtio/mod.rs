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

/// Where a virtio-mmio device sits: its 4 KiB window and its IRQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    pub base: u64,
    pub irq: u32,
}

/// Size of one virtio-mmio window.
pub const MMIO_WINDOW: u64 = 0x1000;
/// First virtio-mmio window, at the start of the part of the MMIO gap
/// Hearth gives to devices (the gap starts at 3 GiB; the IOAPIC, LAPIC and
/// KVM's TSS sit near its top).
pub const MMIO_BASE: u64 = 0xd000_0000;
/// IRQs for virtio-mmio devices: ISA IRQs the MP table routes through the
/// IOAPIC (0-15), skipping the timer, the cascade, the keyboard, COM1/COM2,
/// the RTC and the PS/2 mouse.
pub const MMIO_IRQS: &[u32] = &[5, 6, 7, 9, 10, 11, 14, 15];

/// The `index`th virtio-mmio slot of a VM, if there is one.
pub fn mmio_slot(index: usize) -> Option<MmioSlot> {
    let irq = *MMIO_IRQS.get(index)?;
    Some(MmioSlot {
        base: MMIO_BASE + index as u64 * MMIO_WINDOW,
        irq,
    })
}

/// The kernel command-line token announcing a device in `slot`.
pub fn cmdline_token(slot: MmioSlot) -> String {
    format!("virtio_mmio.device=4K@{:#x}:{}", slot.base, slot.irq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_in_the_gap_with_isa_irqs() {
        let first = mmio_slot(0).expect("a first slot");
        assert_eq!(
            first,
            MmioSlot {
                base: 0xd000_0000,
                irq: 5
            }
        );
        assert_eq!(cmdline_token(first), "virtio_mmio.device=4K@0xd0000000:5");
        for i in 0..MMIO_IRQS.len() {
            let s = mmio_slot(i).expect("slot");
            assert!(s.irq < 16 && s.irq != 4 && s.irq != 8 && s.irq != 12);
            assert!(s.base >= crate::layout::MMIO_GAP_START);
            assert!(s.base + MMIO_WINDOW <= crate::layout::IOAPIC_ADDR);
        }
        assert!(mmio_slot(MMIO_IRQS.len()).is_none());
    }
}
