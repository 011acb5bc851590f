//! The control API: a Unix stream socket speaking one JSON request and one
//! JSON reply per line (`docs/api.md`), with every request checked against
//! the client's grants in `host.api.acl`.
//!
//! - [`protocol`]: the requests and replies;
//! - [`acl`]: peer credentials against the access list;
//! - [`limits`]: rate limiter changes (`set-net`);
//! - [`ops`]: what each request does, through the [`ops::Control`] trait
//!   the monitor implements (the wiring points for the memory allocator
//!   and the device-access verifier are its two default methods);
//! - [`server`]: the socket in the event loop;
//! - [`client`]: `hearth ctl`.

pub mod acl;
pub mod client;
pub mod limits;
pub mod ops;
pub mod protocol;
pub mod server;

pub use ops::{Control, STOPPED_BY_API};
pub use server::{ApiError, ApiServer, Listener};
