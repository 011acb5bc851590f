//! Emulated legacy devices. Each is a state machine behind [`BusDevice`]:
//! no fds, threads or KVM inside; interrupts and side effects go through
//! small traits and callbacks, so every device is unit-tested without KVM.
//!
//! [`BusDevice`]: crate::bus::BusDevice

pub mod cmos;
pub mod i8042;
pub mod serial;

pub use cmos::Cmos;
pub use i8042::I8042;
pub use serial::{IrqLine, SerialDevice};
