//! A host tap device, attached by name the way Firecracker does it: open
//! `/dev/net/tun`, `TUNSETIFF` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`,
//! a 12-byte virtio-net header (`TUNSETVNETHDRSZ`), non-blocking. Every
//! `read` is one frame the host sent, every `write` one frame for the host,
//! each behind its `virtio_net_hdr_v1`. The offloads the guest can take
//! (`TUNSETOFFLOAD`) are set when its driver has negotiated them.
//!
//! The tap is opened at build time, before the VM's threads install their
//! seccomp filters and before the monitor drops privileges; the device
//! thread only reads, writes and sets offloads.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// The virtio-net header with VERSION_1 (`virtio_net_hdr_v1`), in bytes.
pub const VNET_HDR_LEN: usize = 12;

/// Why a tap could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(io::Error),
    #[error(
        "cannot attach to tap {name:?}: {source} (does it exist, is it a tap (not a tun), \
         and is it free: no other process attached to it?)"
    )]
    Attach { name: String, source: io::Error },
    #[error("tap {name:?}: cannot set the virtio-net header size: {source}")]
    HeaderSize { name: String, source: io::Error },
    #[error("{0:?} is not an interface name (1 to 15 bytes, no NUL)")]
    BadName(String),
}

/// What the network device's handler needs from its host side: a
/// non-blocking, frame-at-a-time fd (a tap, or a datagram socket in tests).
pub trait NetBackend: AsRawFd + Send + Sync {
    /// One frame (header first) into `buf`; `WouldBlock` when none waits.
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// One frame (header first) out.
    fn send(&self, buf: &[u8]) -> io::Result<usize>;
    /// The offloads the guest accepts (`TUN_F_*`).
    fn set_offload(&self, flags: u32) -> io::Result<()>;
}

/// `struct ifreq` as TUNSETIFF reads it: the name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An attached tap.
pub struct Tap {
    file: File,
    name: String,
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl Tap {
    /// Attaches to the existing tap `name`.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(TapError::BadName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        let attach = |source| TapError::Attach {
            name: name.to_string(),
            source,
        };
        // SAFETY: TUNSETIFF reads (and may write back) one `struct ifreq`;
        // `req` is a live, properly sized and aligned one, and `file` is an
        // open /dev/net/tun fd.
        cvt(unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) }).map_err(attach)?;
        let size: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which
        // points at `size`, alive for the call.
        cvt(unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) }).map_err(
            |source| TapError::HeaderSize {
                name: name.to_string(),
                source,
            },
        )?;
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the call.
        let n = unsafe { libc::read(self.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn send(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the call.
        let n = unsafe { libc::write(self.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is
        // passed.
        cvt(unsafe {
            libc::ioctl(
                self.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        })
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_before_any_system_call() {
        for bad in ["", "a-name-that-is-far-too-long", "nul\0"] {
            assert!(
                matches!(Tap::open(bad), Err(TapError::BadName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }
}
