//! Metrics for scrapers and for Firecracker's tools, both derived from the
//! statistics document (`stats::to_json`, the `--stats-file` and `hearth
//! ctl stats` figures), so the three never disagree:
//!
//! - [`firecracker`]: Firecracker's metrics JSON, one line per flush, with
//!   the fields that have a Hearth equivalent (counters as deltas since the
//!   previous line, as Firecracker writes them);
//! - [`prometheus`]: the same figures as Prometheus text (the control
//!   socket's `metrics` request, `hearth ctl SOCKET metrics`);
//! - [`sink`]: the metrics file or FIFO, written without ever blocking.

pub mod firecracker;
pub mod prometheus;
pub mod sink;

pub use firecracker::FcMetrics;
pub use prometheus::prometheus_text;
pub use sink::{MetricsSink, SinkError};
