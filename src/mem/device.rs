//! A VM's balloon: the virtio-balloon device on the MMIO bus, its irqfd
//! and one ioeventfd per queue (KVM signals it when the guest writes the
//! queue's index to `QueueNotify`; the event loop then runs the queue).

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{lock, Bus};
use crate::config::BalloonOptions;
use crate::layout::MIB;
use crate::virtio::balloon::{Balloon, BalloonConfig, Madvise, PAGE_SIZE};
use crate::virtio::mmio::{MmioTransport, REG_QUEUE_NOTIFY};
use crate::virtio::{IrqFd, MmioSlot, MMIO_WINDOW};
use crate::vm::VmError;

pub type BalloonDevice = Arc<Mutex<MmioTransport<Balloon>>>;

/// A VM's balloon as the monitor drives it.
pub struct BalloonHandle {
    pub device: BalloonDevice,
    /// `queue_evts[i]` is signalled when the guest notifies queue `i`.
    pub queue_evts: Vec<EventFd>,
    pub slot: MmioSlot,
    /// The guest's RAM, in MiB.
    pub size_mib: u64,
    pub options: BalloonOptions,
}

impl BalloonHandle {
    /// The guest notified queue `index`.
    pub fn on_notify(&self, index: usize) {
        if let Some(evt) = self.queue_evts.get(index) {
            // Several notifications may have been coalesced; one pass takes
            // everything available.
            let _ = evt.read();
        }
        lock(&self.device).notify(index);
    }

    /// Asks for a balloon of `mib` MiB.
    pub fn set_balloon_mib(&self, mib: u64) {
        let pages = (mib * MIB / PAGE_SIZE).min(u64::from(u32::MAX)) as u32;
        lock(&self.device).set_target_pages(pages);
    }
}

/// Touches every page of guest RAM so that the host backs it now.
pub fn prefault(mem: &GuestMemoryMmap) -> Result<(), VmError> {
    for region in mem.iter() {
        let start = region.start_addr().0;
        for page in (0..region.len()).step_by(PAGE_SIZE as usize) {
            mem.write_obj(0u8, GuestAddress(start + page))
                .map_err(VmError::HostAddress)?;
        }
    }
    Ok(())
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> VmError {
    move |source| VmError::Io { what, source }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Creates the balloon of a VM of `size_mib` in `slot`, puts it on `mmio`
/// and wires its interrupt and queue notifications through KVM.
pub fn attach_balloon(
    fd: &VmFd,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    slot: MmioSlot,
    size_mib: u64,
    options: BalloonOptions,
) -> Result<BalloonHandle, VmError> {
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("create balloon irqfd"))?;
    fd.register_irqfd(&irq, slot.irq)
        .map_err(kvm_err("register balloon irqfd"))?;
    let config = BalloonConfig {
        stats: options.stats_interval_s > 0,
        deflate_on_oom: options.deflate_on_oom,
        reporting: options.free_page_reporting,
    };
    let transport = MmioTransport::new(
        Balloon::new(config, Box::new(Madvise)),
        mem.clone(),
        Box::new(IrqFd(irq)),
    );
    let queues = transport.queue_count();
    let device = Arc::new(Mutex::new(transport));
    mmio.insert("balloon", slot.base, MMIO_WINDOW, device.clone())?;
    let mut queue_evts = Vec::with_capacity(queues);
    for index in 0..queues {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("create balloon ioeventfd"))?;
        fd.register_ioevent(
            &evt,
            &IoEventAddress::Mmio(slot.base + REG_QUEUE_NOTIFY),
            index as u32,
        )
        .map_err(kvm_err("register balloon ioeventfd"))?;
        queue_evts.push(evt);
    }
    Ok(BalloonHandle {
        device,
        queue_evts,
        slot,
        size_mib,
        options,
    })
}
