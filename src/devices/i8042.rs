//! A minimal i8042 keyboard controller: enough for Linux to probe it and
//! for `reboot=k` (command 0xFE, pulse the reset line) to reset the VM.

use crate::bus::BusDevice;

/// Ports 0x60 (data) to 0x64 (status/command); 0x61 belongs to the in-kernel PIT.
pub const I8042_BASE: u64 = 0x60;
pub const I8042_LEN: u64 = 5;

const DATA: u64 = 0;
const COMMAND: u64 = 4;

const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_RESET: u8 = 0xfe;

/// What the controller does to its VM.
pub trait ResetLine: Send {
    /// The guest pulsed the CPU reset line.
    fn reset(&mut self);
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
}

impl<R: ResetLine> I8042<R> {
    pub fn new(reset: R) -> Self {
        I8042 {
            reset,
            status: STATUS_SYSTEM_FLAG,
            control: 0,
            output: None,
            expecting_ctr: false,
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
            DATA => self.output.take().unwrap_or(0),
            COMMAND => {
                let full = if self.output.is_some() {
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
}
