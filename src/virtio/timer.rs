//! A one-shot, non-blocking timerfd for device handlers (rate limiters,
//! connection deadlines). Created at build time, so the device thread only
//! arms it (`timerfd_settime`) and reads it (`read`), and a read after the
//! timer was re-armed never blocks the thread.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::time::Duration;

/// The longest wait a handler arms (a limiter may compute more: it then
/// simply looks again after this).
const MAX_WAIT: Duration = Duration::from_secs(3600);

pub struct Timer(File);

impl Timer {
    pub fn new() -> io::Result<Timer> {
        // SAFETY: no memory is passed; the return value is checked.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_CLOEXEC | libc::TFD_NONBLOCK,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(Timer(unsafe { File::from_raw_fd(fd) }))
    }

    /// Fires once after `after` (at least 1 µs, at most an hour); replaces
    /// any earlier arming.
    pub fn arm(&self, after: Duration) -> io::Result<()> {
        let after = after.clamp(Duration::from_micros(1), MAX_WAIT);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(after.subsec_nanos() as i32),
            },
        };
        // SAFETY: `spec` is a valid itimerspec alive for the call; the old
        // value is not asked for (null).
        let rc =
            unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Takes the expiry count, so that a level-triggered watch rests;
    /// never blocks.
    pub fn clear(&self) {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `count`, which is 8 bytes long.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
    }
}

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_once_and_clearing_never_blocks() {
        let t = Timer::new().expect("timerfd");
        t.clear();
        t.arm(Duration::from_millis(5)).expect("arm");
        let mut fds = [libc::pollfd {
            fd: t.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd, alive for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 2000) };
        assert_eq!(n, 1, "the timer fired");
        t.clear();
        // SAFETY: as above.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 20) };
        assert_eq!(n, 0, "cleared, and one-shot");
    }
}
