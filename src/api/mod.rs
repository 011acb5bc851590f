//! The control API: a Unix stream socket speaking one JSON request and one
//! JSON reply per line (`docs/api.md`), with every request checked against
//! the client's grants in `host.api.acl`.
//!
//! - [`protocol`]: the requests and replies;
//! - [`acl`]: peer credentials against the access list;
//! - [`ops`]: what each request does, through the [`ops::Control`] trait
//!   the monitor implements;
//! - [`deferred`]: requests answered later (a VM being built or torn down);
//! - [`server`]: the socket in the event loop;
//! - [`client`]: `hearth ctl`.

pub mod acl;
pub mod client;
pub mod deferred;
pub mod ops;
pub mod protocol;
pub mod server;

pub use deferred::{Answer, Completions, Ticket, Waiter};
pub use ops::{Control, STOPPED_BY_API};
pub use server::{ApiError, ApiServer, Listener};
