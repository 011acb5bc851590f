//! 16550A UART on COM1, emulated by vm-superio.

use std::io::{self, Write};

use vm_superio::{serial::NoEvents, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Standard COM1 port base and IRQ.
pub const COM1_BASE: u64 = 0x3f8;
pub const COM1_LEN: u64 = 8;
pub const COM1_IRQ: u32 = 4;

/// An interrupt line backed by an eventfd registered as a KVM irqfd.
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where a serial port's output goes.
pub type SerialOut = Box<dyn Write + Send>;

/// A UART as a bus device. Generic over the interrupt trigger so tests can
/// count interrupts without KVM.
pub struct SerialDevice<T: Trigger> {
    uart: Serial<T, NoEvents, SerialOut>,
}

impl<T: Trigger> SerialDevice<T> {
    pub fn new(irq: T, out: SerialOut) -> Self {
        SerialDevice {
            uart: Serial::new(irq, out),
        }
    }

    /// Queues console input for the guest; returns how many bytes fitted
    /// in the receive FIFO (the rest must be offered again later).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity().min(bytes.len());
        if room == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&bytes[..room]) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("serial: input lost: {e:?}");
                0
            }
        }
    }

    /// Room left in the receive FIFO.
    pub fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }
}

impl<T: Trigger + Send> BusDevice for SerialDevice<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The UART has byte-wide registers; wider reads see the register
        // in the low byte and zeroes above.
        data.fill(0);
        if let (Some(first), Ok(reg)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(reg);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&value), Ok(reg)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.uart.write(reg, value) {
                log::warn!("serial: write to register {reg} failed: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Counter(Arc<AtomicUsize>);
    impl Trigger for Counter {
        type E = ();
        fn trigger(&self) -> Result<(), ()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn guest_output_reaches_the_writer() {
        let sink = Sink::default();
        let mut dev = SerialDevice::new(Counter::default(), Box::new(sink.clone()));
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
        // LSR: transmitter empty.
        let mut lsr = [0u8; 1];
        dev.read(5, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60);
    }

    #[test]
    fn input_is_readable_and_raises_an_interrupt() {
        let irq = Counter::default();
        let mut dev = SerialDevice::new(irq.clone(), Box::new(io::sink()));
        dev.write(1, &[0x01]); // IER: received-data interrupt on
        assert_eq!(dev.enqueue_input(b"ok"), 2);
        assert!(irq.0.load(Ordering::SeqCst) >= 1);
        let mut rbr = [0u8; 1];
        dev.read(0, &mut rbr);
        assert_eq!(rbr[0], b'o');
        let mut wide = [0xaau8; 4];
        dev.read(0, &mut wide);
        assert_eq!(wide, [b'k', 0, 0, 0]);
    }

    #[test]
    fn input_beyond_the_fifo_is_refused_not_lost() {
        let mut dev = SerialDevice::new(Counter::default(), Box::new(io::sink()));
        let big = vec![b'x'; 1000];
        let taken = dev.enqueue_input(&big);
        assert!(taken > 0 && taken < big.len());
        assert_eq!(dev.input_room(), 0);
        assert_eq!(dev.enqueue_input(b"y"), 0);
    }
}
