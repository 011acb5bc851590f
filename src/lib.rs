//! Hearth: a KVM microVM monitor that hosts many VMs in one process.
//!
//! The pieces, in the order a VM meets them: [`config`] parses and
//! validates VM definitions into specs; [`vm`] builds a VM from a spec
//! (guest memory laid out by [`layout`], the kernel loaded by [`boot`],
//! devices from [`devices`] on a [`bus`]); [`vcpu`] runs one thread per vCPU;
//! [`monitor`] runs the event loop until every VM has stopped, and
//! [`lifecycle`] records how each ended.

pub mod api;
pub mod boot;
pub mod builder;
pub mod bus;
pub mod config;
pub mod console;
pub mod devices;
pub mod fcapi;
pub mod glimpse;
pub mod handoff;
pub mod host;
pub mod kvmstat;
pub mod layout;
pub mod lifecycle;
pub mod logger;
pub mod mem;
pub mod metrics;
pub mod monitor;
pub mod output;
pub mod process;
pub mod ratelimit;
pub mod sandbox;
pub mod sched;
pub mod seccomp;
pub mod share;
pub mod stats;
#[cfg(test)]
mod test_alloc;
#[cfg(test)]
mod test_hold;
pub mod vcpu;
pub mod verifier;
pub mod virtio;
pub mod vm;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static PROCESS_START: OnceLock<Instant> = OnceLock::new();

/// Marks the start of the process (call first thing in `main`).
pub fn mark_start() {
    PROCESS_START.get_or_init(Instant::now);
}

/// Time since [`mark_start`] (or since the first call to this function).
pub fn since_start() -> Duration {
    PROCESS_START.get_or_init(Instant::now).elapsed()
}
