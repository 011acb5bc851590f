//! Fuzz targets for everything a guest or a client controls. See
//! docs/fuzzing.md: under `cargo test` each target runs for a few seconds
//! on random inputs; `cargo bolero test` runs one for as long as you like,
//! coverage-guided.

mod support;

mod acl;
mod api_fake;
mod api_ops;
mod api_server;
mod api_sockets;
mod balloon;
mod blk;
mod blk_answers;
mod blk_model;
mod blk_request;
mod blk_rig;
mod config;
mod device;
mod fcapi;
mod fcapi_gen;
mod net;
mod net_model;
mod net_rig;
mod queue;
mod queue_model;
mod vsock;
mod vsock_check;
mod vsock_model;
mod vsock_rig;

#[global_allocator]
static HEAP: support::Heap = support::Heap;
