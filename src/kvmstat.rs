//! Whether a vCPU sleeps in KVM (halted in the guest), read from KVM's
//! binary statistics of the vCPU (`KVM_GET_STATS_FD`, Linux 5.14 on; the
//! `blocking` figure, Linux 5.16 on).
//!
//! The CPU scheduler asks every tick whether each vCPU that used little
//! of the last tick wants the CPU. It read the thread's state letter from
//! `/proc/thread-self/stat` before, which costs a formatted line of 52
//! fields (0.9 µs here) where this costs an 8-byte `pread` (0.13 µs), and
//! which every vCPU thread had to open for itself before a sandbox hid
//! `/proc`. Kernels without the figure keep the `/proc` read.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

/// `_IO(KVMIO, 0xce)`.
const KVM_GET_STATS_FD: libc::c_ulong = 0xAECE;
/// The statistic: 1 while the vCPU waits in KVM for an interrupt.
const BLOCKING: &[u8] = b"blocking";
/// The header: flags, name_size, num_desc, id_offset, desc_offset,
/// data_offset (six `u32`).
const HEADER_LEN: usize = 24;
/// A descriptor before its name: flags (u32), exponent (i16), size (u16),
/// offset (u32), bucket_size (u32).
const DESC_FIXED: usize = 16;
/// Bounds on what the layout may claim (Linux 6.18 has 47 descriptors
/// with names of 48 bytes).
const MAX_DESCS: usize = 4096;
const MAX_NAME: usize = 1024;

/// Where `blocking` is in a vCPU's statistics, the same for every vCPU of
/// the running kernel: found once.
static BLOCKING_AT: OnceLock<u64> = OnceLock::new();

/// One vCPU's `blocking` statistic.
#[derive(Debug)]
pub struct Halted {
    file: File,
    at: u64,
}

impl Halted {
    /// Opens the statistics of the vCPU whose fd `vcpu` is; `None` where
    /// the kernel has no `blocking` figure (or no statistics).
    pub fn open(vcpu: &impl AsRawFd) -> Option<Halted> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd
        // (or -1); it changes nothing about the vCPU.
        let fd = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_GET_STATS_FD) };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` was just made for us and nothing else owns it.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let at = match BLOCKING_AT.get() {
            Some(&at) => at,
            None => {
                let at = find(&file, BLOCKING)?;
                *BLOCKING_AT.get_or_init(|| at)
            }
        };
        let halted = Halted { file, at };
        // A read that fails now would fail at every tick.
        halted.blocked().map(|_| halted)
    }

    /// Whether the vCPU waits in KVM for an interrupt right now (`None`
    /// if the statistics cannot be read).
    pub fn blocked(&self) -> Option<bool> {
        let mut value = [0u8; 8];
        self.file.read_exact_at(&mut value, self.at).ok()?;
        Some(u64::from_ne_bytes(value) != 0)
    }
}

/// The file offset of the one-value statistic `name`, from the header and
/// descriptors of a statistics file.
fn find(file: &File, name: &[u8]) -> Option<u64> {
    let mut header = [0u8; HEADER_LEN];
    file.read_exact_at(&mut header, 0).ok()?;
    let field = |i: usize| {
        let b = header.get(i * 4..i * 4 + 4)?;
        Some(u32::from_ne_bytes(b.try_into().ok()?))
    };
    let name_size = usize::try_from(field(1)?).ok()?;
    let descs = usize::try_from(field(2)?).ok()?;
    let (desc_offset, data_offset) = (field(4)?, field(5)?);
    if name_size > MAX_NAME || descs > MAX_DESCS {
        return None;
    }
    let stride = DESC_FIXED + name_size;
    let mut table = vec![0u8; stride.checked_mul(descs)?];
    file.read_exact_at(&mut table, u64::from(desc_offset))
        .ok()?;
    table.chunks_exact(stride).find_map(|d| {
        let text = d.get(DESC_FIXED..)?;
        let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
        let size = u16::from_ne_bytes(d.get(6..8)?.try_into().ok()?);
        let offset = u32::from_ne_bytes(d.get(8..12)?.try_into().ok()?);
        (text.get(..end)? == name && size == 1).then(|| u64::from(data_offset) + u64::from(offset))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_ioctls::Kvm;

    /// A vCPU that has not run is not blocked, and its figure is found
    /// (this machine's kernel, 6.18, has it).
    #[test]
    fn a_new_vcpu_is_not_blocked() {
        let kvm = Kvm::new().unwrap();
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let halted = Halted::open(&vcpu).expect("this kernel has the blocking statistic");
        assert_eq!(halted.blocked(), Some(false));
        assert!(halted.at > u64::try_from(HEADER_LEN).unwrap());
    }

    /// A file whose descriptors do not name the statistic gives `None`.
    #[test]
    fn a_missing_name_is_not_found() {
        let kvm = Kvm::new().unwrap();
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        // SAFETY: as in `Halted::open`.
        let fd = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_GET_STATS_FD) };
        assert!(fd >= 0);
        // SAFETY: the fd is new and ours.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        assert_eq!(find(&file, b"no_such_statistic"), None);
        assert!(find(&file, b"halt_exits").is_some() || find(&file, BLOCKING).is_some());
    }
}
