//! Elastic memory: each VM's virtio-balloon (`device.rs`) and the
//! ballooning allocator that sizes the balloons: the policy (`policy.rs`,
//! pure) driven by a timerfd tick in the event loop (`runtime.rs`).

pub mod device;
pub mod policy;
pub mod runtime;

pub use device::{new_balloon, prefault, BalloonHandle};
pub use runtime::{BalloonStats, MemoryManager};
