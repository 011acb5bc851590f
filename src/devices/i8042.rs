//! A minimal i8042 keyboard controller: enough for Linux to probe it, for
//! `reboot=k` (command 0xFE, pulse the reset line) to reset the VM, and
//! for the host to press Ctrl+Alt+Del (Firecracker's `SendCtrlAltDel`: the
//! scan codes go through the output buffer, with the keyboard interrupt
//! when the guest enabled it).
//!
//! Not `vm_superio::I8042Device`: that device answers every read with 0, so
//! its output buffer never fills and a kernel built with the i8042 driver
//! (Firecracker's guest kernels are) waits out 10,000 status polls and gives
//! up on the controller; see docs/design.md, "What the kept crates do", and
//! the `linux_probe` tests below.

use std::collections::VecDeque;

use crate::bus::BusDevice;

/// Ports 0x60 (data) to 0x64 (status/command); 0x61 belongs to the in-kernel PIT.
pub const I8042_BASE: u64 = 0x60;
pub const I8042_LEN: u64 = 5;

const DATA: u64 = 0;
const COMMAND: u64 = 4;

const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;
/// The keyboard is not inhibited (without it Linux warns "Keylock active").
const STATUS_UNLOCKED: u8 = 0x10;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_RESET: u8 = 0xfe;

/// Control register: the keyboard interrupt (IRQ 1) is enabled.
const CTR_KBD_INT: u8 = 0x01;
/// Scan codes waiting for the guest, at most (Firecracker's buffer).
const KEYS_MAX: usize = 16;
/// Ctrl, Alt, Delete: the scan codes Firecracker sends (set 2 make codes).
const CTRL_ALT_DEL: [u8; 4] = [0x14, 0x11, 0xe0, 0x71];

/// What the controller does to its VM.
pub trait ResetLine: Send {
    /// The guest pulsed the CPU reset line.
    fn reset(&mut self);
    /// A scan code waits for the guest (IRQ 1); nothing by default.
    fn keyboard_interrupt(&mut self) {}
}

impl<F: FnMut() + Send> ResetLine for F {
    fn reset(&mut self) {
        self()
    }
}

pub struct I8042<R: ResetLine> {
    reset: R,
    status: u8,
    control: u8,
    output: Option<u8>,
    expecting_ctr: bool,
    /// Scan codes the host pressed, not yet read.
    keys: VecDeque<u8>,
}

/// The keyboard's buffer has no room for the whole key sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the i8042 keyboard buffer is full (the guest does not read its keyboard)")]
pub struct KeyboardFull;

impl<R: ResetLine> I8042<R> {
    pub fn new(reset: R) -> Self {
        I8042 {
            reset,
            status: STATUS_SYSTEM_FLAG | STATUS_UNLOCKED,
            control: 0,
            output: None,
            expecting_ctr: false,
            keys: VecDeque::with_capacity(KEYS_MAX),
        }
    }

    /// Presses Ctrl+Alt+Del: the scan codes wait in the output buffer, and
    /// the keyboard interrupt fires if the guest enabled it.
    pub fn send_ctrl_alt_del(&mut self) -> Result<(), KeyboardFull> {
        if KEYS_MAX - self.keys.len() < CTRL_ALT_DEL.len() {
            return Err(KeyboardFull);
        }
        self.keys.extend(CTRL_ALT_DEL);
        self.key_interrupt();
        Ok(())
    }

    fn key_interrupt(&mut self) {
        if !self.keys.is_empty() && self.control & CTR_KBD_INT != 0 {
            self.reset.keyboard_interrupt();
        }
    }

    fn command(&mut self, cmd: u8) {
        self.status |= STATUS_LAST_WAS_COMMAND;
        match cmd {
            CMD_READ_CTR => self.output = Some(self.control),
            CMD_WRITE_CTR => self.expecting_ctr = true,
            CMD_SELF_TEST => self.output = Some(0x55),
            CMD_KBD_TEST => self.output = Some(0x00),
            CMD_READ_OUTPUT_PORT => self.output = Some(0x01),
            CMD_RESET => {
                log::debug!("i8042: reset requested by the guest");
                self.reset.reset();
            }
            other => log::debug!("i8042: command {other:#x} ignored"),
        }
    }
}

impl<R: ResetLine> BusDevice for I8042<R> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let value = match offset {
            DATA => match self.output.take() {
                Some(byte) => byte,
                None => {
                    let key = self.keys.pop_front().unwrap_or(0);
                    // More to read: interrupt again.
                    self.key_interrupt();
                    key
                }
            },
            COMMAND => {
                let full = if self.output.is_some() || !self.keys.is_empty() {
                    STATUS_OUTPUT_FULL
                } else {
                    0
                };
                self.status | full
            }
            _ => 0xff,
        };
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            COMMAND => self.command(value),
            DATA => {
                self.status &= !STATUS_LAST_WAS_COMMAND;
                if std::mem::take(&mut self.expecting_ctr) {
                    self.control = value;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn controller() -> (I8042<impl ResetLine>, Arc<AtomicUsize>) {
        let resets = Arc::new(AtomicUsize::new(0));
        let r = resets.clone();
        (
            I8042::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            }),
            resets,
        )
    }

    fn read(dev: &mut I8042<impl ResetLine>, offset: u64) -> u8 {
        let mut b = [0u8; 1];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn ctrl_alt_del_reaches_the_guest_with_its_interrupt() {
        struct Lines(Arc<AtomicUsize>);
        impl ResetLine for Lines {
            fn reset(&mut self) {}
            fn keyboard_interrupt(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let irqs = Arc::new(AtomicUsize::new(0));
        let mut dev = I8042::new(Lines(irqs.clone()));
        // Interrupt disabled (the guest has no keyboard driver): queued only.
        dev.send_ctrl_alt_del().unwrap();
        assert_eq!(irqs.load(Ordering::SeqCst), 0);
        assert_eq!(read(&mut dev, COMMAND) & STATUS_OUTPUT_FULL, 1);
        dev.write(COMMAND, &[CMD_WRITE_CTR]);
        dev.write(DATA, &[CTR_KBD_INT]);
        let codes: Vec<u8> = (0..4).map(|_| read(&mut dev, DATA)).collect();
        assert_eq!(codes, CTRL_ALT_DEL);
        assert_eq!(read(&mut dev, COMMAND) & STATUS_OUTPUT_FULL, 0);
        // Enabled (from the second read on): an interrupt while bytes wait.
        assert_eq!(irqs.load(Ordering::SeqCst), 3);
        dev.send_ctrl_alt_del().unwrap();
        assert_eq!(irqs.load(Ordering::SeqCst), 4);
        for _ in 0..4 {
            read(&mut dev, DATA);
        }
        assert_eq!(irqs.load(Ordering::SeqCst), 7);
        // A guest that never reads: the buffer fills and says so.
        for _ in 0..4 {
            dev.send_ctrl_alt_del().unwrap();
        }
        assert_eq!(dev.send_ctrl_alt_del(), Err(KeyboardFull));
    }

    #[test]
    fn command_0xfe_resets_the_vm() {
        let (mut dev, resets) = controller();
        dev.write(COMMAND, &[0xfe]);
        assert_eq!(resets.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn self_test_answers_0x55_through_the_output_buffer() {
        let (mut dev, resets) = controller();
        assert_eq!(read(&mut dev, COMMAND) & STATUS_OUTPUT_FULL, 0);
        dev.write(COMMAND, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut dev, COMMAND) & STATUS_OUTPUT_FULL, 1);
        assert_eq!(read(&mut dev, DATA), 0x55);
        assert_eq!(read(&mut dev, COMMAND) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(resets.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn control_register_round_trips() {
        let (mut dev, _) = controller();
        dev.write(COMMAND, &[CMD_WRITE_CTR]);
        dev.write(DATA, &[0x47]);
        dev.write(COMMAND, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, DATA), 0x47);
    }

    /// What Linux's i8042 driver does at probe time (drivers/input/serio/i8042.c,
    /// 6.1: `i8042_flush`, then `i8042_controller_init` reads the control
    /// register until two reads agree and writes it back). Every wait polls
    /// the status port at most `I8042_CTL_TIMEOUT` (10,000) times, as Linux
    /// does. Returns the control register, or `None` where Linux gives up
    /// with "Can't read CTR while initializing i8042".
    fn linux_probe(dev: &mut impl BusDevice) -> Option<u8> {
        const TIMEOUT: usize = 10_000;
        const STATUS_INPUT_FULL: u8 = 0x02;
        let status = |dev: &mut dyn BusDevice| {
            let mut b = [0u8];
            dev.read(COMMAND, &mut b);
            b[0]
        };
        let wait = |dev: &mut dyn BusDevice, ready: &dyn Fn(u8) -> bool| {
            (0..TIMEOUT).any(|_| ready(status(dev)))
        };
        let mut flushed = 0;
        while status(dev) & STATUS_OUTPUT_FULL != 0 && flushed < 16 {
            dev.read(DATA, &mut [0u8]);
            flushed += 1;
        }
        let mut ctr = [0u8; 2];
        for read in &mut ctr {
            wait(dev, &|s| s & STATUS_INPUT_FULL == 0).then_some(())?;
            dev.write(COMMAND, &[CMD_READ_CTR]);
            wait(dev, &|s| s & STATUS_OUTPUT_FULL != 0).then_some(())?;
            let mut b = [0u8];
            dev.read(DATA, &mut b);
            *read = b[0];
        }
        (ctr[0] == ctr[1]).then_some(())?;
        dev.write(COMMAND, &[CMD_WRITE_CTR]);
        dev.write(DATA, &[ctr[0] | 0x10]);
        Some(ctr[0])
    }

    #[test]
    fn linux_probe_finds_this_controller() {
        let (mut dev, resets) = controller();
        assert_ne!(
            read(&mut dev, COMMAND) & STATUS_UNLOCKED,
            0,
            "no keylock warning"
        );
        assert_eq!(linux_probe(&mut dev), Some(0));
        dev.write(COMMAND, &[CMD_READ_CTR]);
        assert_eq!(
            read(&mut dev, DATA),
            0x10,
            "the control register Linux wrote"
        );
        assert_eq!(resets.load(Ordering::SeqCst), 0);
    }

    /// vm-superio's i8042 behind the bus, as Hearth would register it.
    struct Superio(vm_superio::I8042Device<NoReset>);
    struct NoReset;
    impl vm_superio::Trigger for NoReset {
        type E = ();
        fn trigger(&self) -> Result<(), ()> {
            Ok(())
        }
    }
    impl BusDevice for Superio {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data[0] = self.0.read(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.write(offset as u8, data[0]).unwrap();
        }
    }

    /// Why Hearth keeps its own device (docs/design.md). Should a later
    /// vm-superio answer the control-register read, this test fails: switch.
    #[test]
    fn linux_probe_gives_up_on_vm_superios_i8042() {
        let mut dev = Superio(vm_superio::I8042Device::new(NoReset));
        assert_eq!(linux_probe(&mut dev), None);
    }
}
