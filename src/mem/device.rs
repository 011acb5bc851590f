//! A VM's balloon as the monitor drives it: the transport on the MMIO bus
//! (the builder puts it there; its queues are served on the VM's device
//! thread) and the balloon's options.

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::bus::lock;
use crate::config::{BalloonOptions, VmSpec};
use crate::layout::MIB;
use crate::virtio::balloon::{Balloon, BalloonConfig, Madvise, Reclaim, PAGE_SIZE};
use crate::virtio::mmio::MmioTransport;
use crate::vm::VmError;

pub type BalloonDevice = Arc<Mutex<MmioTransport<Balloon>>>;

/// A VM's balloon as the monitor drives it.
pub struct BalloonHandle {
    pub device: BalloonDevice,
    /// The guest's RAM, in MiB.
    pub size_mib: u64,
    pub options: BalloonOptions,
}

impl BalloonHandle {
    pub fn new(device: BalloonDevice, spec: &VmSpec) -> Self {
        BalloonHandle {
            device,
            size_mib: spec.memory_mib,
            options: spec.memory.balloon_options,
        }
    }

    /// Asks for a balloon of `mib` MiB.
    pub fn set_balloon_mib(&self, mib: u64) {
        lock(&self.device).set_target_pages(self.pages(mib));
    }

    /// `mib` MiB in balloon pages.
    pub fn pages(&self, mib: u64) -> u32 {
        (mib.saturating_mul(MIB) / PAGE_SIZE).min(u64::from(u32::MAX)) as u32
    }
}

fn madvise() -> Box<dyn Reclaim> {
    Box::new(Madvise)
}

/// The balloon device of the VM of `spec`.
pub fn new_balloon(spec: &VmSpec) -> Result<Balloon, VmError> {
    let options = spec.memory.balloon_options;
    let config = BalloonConfig {
        stats: options.stats_interval_s > 0,
        deflate_on_oom: options.deflate_on_oom,
        reporting: options.free_page_reporting,
    };
    Balloon::new(config, madvise).map_err(|source| VmError::Io {
        what: "create the balloon",
        source,
    })
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
