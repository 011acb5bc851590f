//! Elastic memory: the ballooning allocator. The policy (`policy.rs`,
//! pure) is driven by a timerfd tick in the event loop (`runtime.rs`).

pub mod policy;
