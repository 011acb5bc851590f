//! Weighted shares of a host-wide I/O budget (`host.io` for disks,
//! `host.net` for network interfaces), divided between the VMs by their
//! `io.weight` / `net.weight`. The same shape as the CPU scheduler: a pure
//! policy ([`SharePolicy`], unit-tested on simulated time) that a runtime
//! ticks, and per VM a [`SharedBucket`] that the tick fills and the VM's
//! device thread takes from without locks. See docs/shares.md.
//!
//! The runtime's tick, every `policy.tick_ns()`:
//!
//! ```text
//! let usage: Vec<(VmId, Usage)> = buckets.iter().map(|(id, b)| (*id, b.usage(tick_ns))).collect();
//! for grant in policy.tick(&usage) {
//!     if buckets[&grant.vm].fill(&grant) { wake the VM's device thread }
//! }
//! ```

pub mod bucket;
pub mod policy;
pub mod runtime;

pub use bucket::{ShareStats, SharedBucket};
pub use policy::{water_fill, Grant, SharePolicy, Usage, VmId, MILLI};
pub use runtime::{RuntimeError, ShareRuntime, Wake};

/// Why a host budget cannot be shared as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    #[error("tick_ms: 0 is not a tick (it must be at least 1 ms)")]
    ZeroTick,
    #[error(
        "{field}: {per_s} per second is too large to share in ticks of {tick_ms} ms \
         (at most 2^62 thousandths of a token per tick)"
    )]
    BudgetTooLarge {
        field: &'static str,
        per_s: u64,
        tick_ms: u32,
    },
}

#[cfg(test)]
mod bucket_tests;
#[cfg(test)]
mod tests;
