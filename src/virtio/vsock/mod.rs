//! The virtio-vsock device (virtio 1.2, section 5.10) in Firecracker's
//! hybrid design: the guest speaks virtio-vsock (`guest_cid`); the host
//! side is Unix sockets.
//!
//! - A host process connects to the VM's socket (`uds_path`) and writes
//!   `CONNECT <port>\n`; the guest's listener on that port gets the
//!   connection, and the host process reads `OK <host port>\n`.
//! - A guest connecting to the host (CID 2) on port P reaches a listener
//!   at `<uds_path>_<P>`.
//!
//! Stream sockets only, with the spec's credit flow control both ways
//! (`conn.rs`); every error resets the connection (RST to the guest, the
//! host socket closed), and nothing is buffered beyond one connection's
//! announced credit. The handler (`handler.rs`) runs on the VM's device
//! thread; the listening socket is bound at build time.

mod conn;
mod handler;
pub mod packet;
pub mod stats;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use super::timer::Timer;
use super::{DeviceState, QueueHandler, VirtioDevice};
use crate::config::VsockSpec;
use crate::sandbox::SocketFile;
pub use stats::{VsockCounters, VsockStats};

pub const DEVICE_TYPE: u32 = 19;
/// `VIRTIO_VSOCK_F_STREAM`.
pub const F_STREAM: u32 = 0;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
const QUEUE_SIZE: u16 = 256;
/// Most connections at once (each holds at most `conn::CONN_BUF` bytes).
pub const MAX_CONNECTIONS: usize = 256;

/// What the front, its handlers and the monitor share.
pub struct VsockShared {
    pub counters: VsockCounters,
    timer: Timer,
    active: AtomicBool,
}

/// The front: the guest's CID in the configuration space.
pub struct Vsock {
    cid: u64,
    listener: Arc<OwnedFd>,
    uds_path: PathBuf,
    shared: Arc<VsockShared>,
}

impl Vsock {
    /// A device for `cid` whose host side listens on `listener` (bound at
    /// `uds_path`).
    pub fn new(cid: u64, listener: OwnedFd, uds_path: &Path) -> std::io::Result<Vsock> {
        Ok(Vsock {
            cid,
            listener: Arc::new(listener),
            uds_path: uds_path.to_path_buf(),
            shared: Arc::new(VsockShared {
                counters: VsockCounters::default(),
                timer: Timer::new()?,
                active: AtomicBool::new(false),
            }),
        })
    }

    pub fn shared(&self) -> &Arc<VsockShared> {
        &self.shared
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        1 << F_STREAM
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn max_chain_bytes(&self) -> u64 {
        (packet::HDR_LEN + packet::MAX_PAYLOAD + 4096) as u64
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.cid.to_le_bytes();
        data.fill(0);
        let start = offset as usize;
        if let Some(src) = config.get(start..start.saturating_add(data.len())) {
            data.copy_from_slice(src);
        }
    }

    /// A driver reset (not the VM's tear-down, which leaves the last
    /// figures as they were).
    fn reset(&mut self) {
        self.shared
            .active
            .store(false, std::sync::atomic::Ordering::Release);
    }

    fn activate(&mut self, _acked: u64) -> Result<Box<dyn QueueHandler>, String> {
        Ok(Box::new(handler::VsockHandler::new(
            self.cid,
            self.listener.clone(),
            self.uds_path.clone(),
            self.shared.clone(),
        )))
    }
}

/// The VM's vsock device as the monitor sees it.
pub struct VsockHandle {
    pub cid: u64,
    pub uds_path: PathBuf,
    pub shared: Arc<VsockShared>,
    pub state: Arc<DeviceState>,
    /// Removes the socket file when the VM goes.
    _file: SocketFile,
}

impl VsockHandle {
    pub fn stats(&self) -> VsockStats {
        let (failures, last_failure) = self.state.failures();
        VsockStats {
            guest_cid: self.cid,
            uds_path: self.uds_path.display().to_string(),
            active: self
                .shared
                .active
                .load(std::sync::atomic::Ordering::Acquire),
            needs_reset: self.state.needs_reset(),
            notifications: self.state.notifications(),
            failures,
            last_failure,
            counts: stats::VsockCounts::read(&self.shared.counters),
        }
    }
}

/// Binds the VM's socket at `spec.uds_path` (a stale socket there is
/// replaced) and makes the device: build time, before seccomp and any
/// privilege drop.
pub fn new_vsock(
    spec: &VsockSpec,
) -> Result<(Vsock, impl FnOnce(Arc<DeviceState>) -> VsockHandle), crate::vm::VmError> {
    use std::os::unix::fs::FileTypeExt;
    let path = &spec.uds_path;
    let err = |detail: String| crate::vm::VmError::Backend {
        name: "vsock0".into(),
        detail,
    };
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(err(format!(
                "{} exists and is not a socket",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|e| {
            err(format!(
                "cannot replace the stale socket {}: {e}",
                path.display()
            ))
        })?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| err(format!("cannot listen on {}: {e}", path.display())))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| err(format!("{}: {e}", path.display())))?;
    let file = SocketFile::new(path.clone());
    let dev =
        Vsock::new(u64::from(spec.guest_cid), OwnedFd::from(listener), path).map_err(|source| {
            crate::vm::VmError::Io {
                what: "create the vsock device's timer",
                source,
            }
        })?;
    let shared = dev.shared.clone();
    let (cid, uds_path) = (dev.cid, path.clone());
    let handle = move |state| VsockHandle {
        cid,
        uds_path,
        shared,
        state,
        _file: file,
    };
    Ok((dev, handle))
}

/// Counts `n` more on a counter.
pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(test)]
mod tests;
