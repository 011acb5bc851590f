//! Network tests' helpers: a network namespace of the test's own (every
//! tap lives and dies there; no packet leaves it), taps, an AF_PACKET
//! socket on a tap (the test's end of the wire), the test guest's frame
//! pattern, and a `hearth` run whose serial lines are read as they come.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `f` on a thread of its own inside a fresh network namespace and
/// mount namespace (with `/sys` mounted anew, so `/sys/class/net` lists
/// this namespace's interfaces). Processes `f` starts inherit both; the
/// namespaces, and every tap in them, vanish when the thread and those
/// processes are gone. A panic in `f` is the test's.
pub fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        enter_fresh_netns();
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn enter_fresh_netns() {
    // SAFETY: unshare(2) on the calling thread only (a network and a mount
    // namespace are per thread); no memory is passed.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS) };
    assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
    let mount = |src: &str, target: &str, fstype: Option<&str>, flags: libc::c_ulong| {
        let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
        let (src, target) = (c(src), c(target));
        let fstype = fstype.map(c);
        // SAFETY: NUL-terminated strings alive for the call; no data.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
                flags,
                std::ptr::null(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mount {target:?}: {}",
            std::io::Error::last_os_error()
        );
    };
    // Nothing mounted here reaches the host's mount namespace.
    mount("none", "/", None, libc::MS_REC | libc::MS_PRIVATE);
    mount("sysfs", "/sys", Some("sysfs"), 0);
    // No IPv6 chatter (router solicitations, DAD) on the taps.
    for conf in ["default", "all"] {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1");
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates tap `name` in the current namespace and brings it up.
pub fn add_tap(name: &str) {
    ip(&["tuntap", "add", name, "mode", "tap"]);
    ip(&["link", "set", name, "up"]);
}

/// An AF_PACKET socket on one interface: what it sends, the interface
/// transmits (to the VM behind a tap); what it receives is every frame
/// the interface receives (from the VM).
pub struct PacketSocket {
    fd: OwnedFd,
}

const ETH_P_ALL: u16 = 0x0003;

impl PacketSocket {
    pub fn bind(ifname: &str) -> PacketSocket {
        let name = std::ffi::CString::new(ifname).expect("no NUL");
        // SAFETY: a NUL-terminated string alive for the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(ifindex != 0, "no interface {ifname}");
        // SAFETY: no memory is passed; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ALL.to_be()),
            )
        };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fd` was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all zeros is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ALL.to_be();
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        PacketSocket { fd }
    }

    /// Sends one whole Ethernet frame out of the interface.
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: `frame` is valid for reads of its length for the call.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// The next frame the interface received (frames it sent itself are
    /// skipped), or `None` after `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536 + 64];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd alive for the call.
            if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
                continue;
            }
            // SAFETY: sockaddr_ll is plain data; all zeros is valid.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: `buf` and `from` are valid for writes of the sizes
            // given, alive for the call.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 || from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            return Some(buf[..n as usize].to_vec());
        }
    }
}

/// FNV-1a 64, as the test guest reports frames.
pub fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The test guest's frame (`net_frame_fill`): `dst`, `src`, EtherType
/// 0x88b5, then `n` payload bytes: `seq` big-endian, then (seq + i) mod 256.
pub fn hearth_frame(dst: [u8; 6], src: [u8; 6], seq: u32, n: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + n);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend(seq.to_be_bytes().iter().take(n));
    f.extend((4..n).map(|i| (seq as usize + i) as u8));
    f
}

pub fn mac_bytes(mac: &str) -> [u8; 6] {
    let mut out = [0u8; 6];
    for (o, part) in out.iter_mut().zip(mac.split(':')) {
        *o = u8::from_str_radix(part, 16).expect("hex");
    }
    out
}
