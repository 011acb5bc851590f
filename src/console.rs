//! The console: the monitor's stdin fed to one VM's serial port, with a
//! QEMU-style escape (Ctrl-A x quits, Ctrl-A Ctrl-A sends a literal Ctrl-A).

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::bus::{lock, try_lock};
use crate::vm::Serial;

const ESCAPE: u8 = 0x01; // Ctrl-A
const TAG_STDIN: u32 = 0;
const TAG_RETRY: u32 = 1;
/// How soon to offer input again when the guest's receive FIFO is full.
const RETRY: Duration = Duration::from_millis(5);

/// Turns raw console bytes into guest input, watching for the escape.
#[derive(Default)]
pub struct EscapeFilter {
    after_escape: bool,
}

/// What a chunk of console input means.
#[derive(Debug, PartialEq, Eq)]
pub enum ConsoleInput {
    /// Bytes for the guest.
    Guest(Vec<u8>),
    /// The user asked to quit; bytes before the escape are for the guest.
    Quit(Vec<u8>),
}

impl EscapeFilter {
    pub fn feed(&mut self, bytes: &[u8]) -> ConsoleInput {
        let mut out = Vec::with_capacity(bytes.len());
        for &b in bytes {
            if self.after_escape {
                self.after_escape = false;
                match b {
                    b'x' | b'X' => return ConsoleInput::Quit(out),
                    ESCAPE => out.push(ESCAPE),
                    other => {
                        out.push(ESCAPE);
                        out.push(other);
                    }
                }
            } else if b == ESCAPE {
                self.after_escape = true;
            } else {
                out.push(b);
            }
        }
        ConsoleInput::Guest(out)
    }
}

/// The serial port the console feeds: set once its VM is built (input
/// that arrives before waits, as when the guest's FIFO is full).
pub type ConsoleTarget = Arc<Mutex<Option<Arc<Mutex<Serial>>>>>;

pub struct Console {
    stdin: io::Stdin,
    serial: ConsoleTarget,
    quit: EventFd,
    filter: EscapeFilter,
    pending: VecDeque<u8>,
    retry: TimerFd,
    reading: bool,
}

impl Console {
    pub fn new(serial: ConsoleTarget, quit: EventFd) -> io::Result<Self> {
        Ok(Console {
            stdin: io::stdin(),
            serial,
            quit,
            filter: EscapeFilter::default(),
            pending: VecDeque::new(),
            retry: TimerFd::new().map_err(io::Error::from)?,
            reading: true,
        })
    }

    fn stdin_events(&self) -> Events {
        Events::with_data(&self.stdin, TAG_STDIN, EventSet::IN)
    }

    /// Offers pending input to the guest; returns whether all of it fitted.
    /// A serial port whose lock a vCPU holds (it is serving an exit, or
    /// was preempted in one) takes nothing now: the real-time loop does
    /// not wait behind a vCPU thread, the retry timer comes back to it.
    fn flush(&mut self) -> bool {
        let Some(serial) = lock(&self.serial).clone() else {
            return self.pending.is_empty();
        };
        let Some(mut serial) = try_lock(&serial) else {
            return self.pending.is_empty();
        };
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            let taken = serial.enqueue_input(front);
            if taken == 0 {
                return false;
            }
            self.pending.drain(..taken);
        }
        true
    }

    fn read_stdin(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; 256];
        // SAFETY: reads at most buf.len() bytes into buf.
        let n = unsafe { libc::read(self.stdin.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            // End of input (or an error other than EINTR): stop watching stdin.
            if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                let _ = ops.remove(self.stdin_events());
                self.reading = false;
            }
            return;
        }
        let input = match self.filter.feed(&buf[..n as usize]) {
            ConsoleInput::Guest(bytes) => bytes,
            ConsoleInput::Quit(bytes) => {
                self.pending.extend(bytes);
                self.flush();
                if let Err(e) = self.quit.write(1) {
                    log::error!("console: cannot request quit: {e}");
                }
                return;
            }
        };
        self.pending.extend(input);
        if !self.flush() {
            // The guest is not draining its FIFO (or a vCPU holds the
            // port): stop reading until it takes the rest.
            let _ = ops.remove(self.stdin_events());
            self.reading = false;
            if let Err(e) = self.retry.reset(RETRY, Some(RETRY)) {
                log::error!("console: cannot arm the retry timer: {e}");
            }
        }
    }
}

impl MutEventSubscriber for Console {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(self.stdin_events()) {
            log::debug!("console: stdin cannot be watched ({e}); console input is off");
            self.reading = false;
        }
        if let Err(e) = ops.add(Events::with_data(&self.retry, TAG_RETRY, EventSet::IN)) {
            log::warn!("console: cannot watch the retry timer: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TAG_STDIN => self.read_stdin(ops),
            TAG_RETRY => {
                let _ = self.retry.wait();
                if self.flush() {
                    let _ = self.retry.clear();
                    if !self.reading && ops.add(self.stdin_events()).is_ok() {
                        self.reading = true;
                    }
                }
            }
            other => log::warn!("console: unexpected event tag {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_input_passes_through() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.feed(b"ls\r"), ConsoleInput::Guest(b"ls\r".to_vec()));
    }

    #[test]
    fn ctrl_a_x_quits_even_across_reads() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.feed(b"ab\x01"), ConsoleInput::Guest(b"ab".to_vec()));
        assert_eq!(f.feed(b"x"), ConsoleInput::Quit(vec![]));
    }

    #[test]
    fn ctrl_a_twice_sends_one_and_other_keys_are_kept() {
        let mut f = EscapeFilter::default();
        assert_eq!(
            f.feed(b"\x01\x01q\x01c"),
            ConsoleInput::Guest(b"\x01q\x01c".to_vec())
        );
    }

    #[test]
    fn keys_wait_in_the_console_while_a_vcpu_holds_the_serial_port() {
        use crate::devices::{IrqLine, SerialDevice};

        let irq = IrqLine(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let serial = Arc::new(Mutex::new(SerialDevice::new(irq, Box::new(io::sink()))));
        let target: ConsoleTarget = Arc::new(Mutex::new(Some(serial.clone())));
        let quit = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut console = Console::new(target, quit).unwrap();
        console.pending.extend(b"ls\r");

        // A "vCPU" holds the port.
        let flushed = crate::test_hold::while_held(&serial, move || {
            let fitted = console.flush();
            (fitted, console)
        });
        let (fitted, mut console) = flushed.expect("the flush must not wait for the port");
        assert!(!fitted);
        assert_eq!(console.pending.len(), 3, "nothing is lost");

        // The retry after the vCPU let go delivers all of it, in order.
        assert!(console.flush());
        assert!(console.pending.is_empty());
        let mut port = lock(&serial);
        let mut got = Vec::new();
        for _ in 0..3 {
            let mut b = [0u8];
            crate::bus::BusDevice::read(&mut *port, 0, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, b"ls\r");
    }
}
