//! The vsock device's figures for the statistics document.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

/// What the handler counts.
#[derive(Debug, Default)]
pub struct VsockCounters {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections made from the host (`CONNECT` answered by the guest) and
    /// from the guest (to `<uds_path>_<port>`).
    pub host_connections: AtomicU64,
    pub guest_connections: AtomicU64,
    /// Connection attempts refused: a bad or late `CONNECT` line, no guest
    /// listener, no host listener, too many connections.
    pub refused: AtomicU64,
    /// RSTs sent to the guest for errors (timeouts, host socket failures,
    /// credit violations, packets for no connection).
    pub resets: AtomicU64,
    /// Packets and payload bytes to the guest and from it.
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Guest packets dropped: malformed chains or headers, wrong addresses.
    pub dropped: AtomicU64,
    /// Guest payload beyond the credit it was given.
    pub credit_violations: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VsockCounts {
    pub open: u64,
    pub host_connections: u64,
    pub guest_connections: u64,
    pub refused: u64,
    pub resets: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub dropped: u64,
    pub credit_violations: u64,
}

impl VsockCounts {
    pub fn read(c: &VsockCounters) -> VsockCounts {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        VsockCounts {
            open: r(&c.open),
            host_connections: r(&c.host_connections),
            guest_connections: r(&c.guest_connections),
            refused: r(&c.refused),
            resets: r(&c.resets),
            rx_packets: r(&c.rx_packets),
            rx_bytes: r(&c.rx_bytes),
            tx_packets: r(&c.tx_packets),
            tx_bytes: r(&c.tx_bytes),
            dropped: r(&c.dropped),
            credit_violations: r(&c.credit_violations),
        }
    }
}

/// The vsock device's statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct VsockStats {
    pub guest_cid: u64,
    pub uds_path: String,
    pub active: bool,
    pub needs_reset: bool,
    /// Doorbells its device thread took (queue notifications through
    /// ioeventfds, which the access verifier does not see).
    pub notifications: u64,
    pub failures: u64,
    pub last_failure: Option<String>,
    pub counts: VsockCounts,
}

impl VsockStats {
    pub fn to_json(&self) -> Value {
        let c = &self.counts;
        json!({
            "guest_cid": self.guest_cid,
            "uds_path": self.uds_path,
            "active": self.active,
            "needs_reset": self.needs_reset,
            "notifications": self.notifications,
            "failures": self.failures,
            "last_failure": self.last_failure,
            "connections": {
                "open": c.open,
                "from_host": c.host_connections,
                "from_guest": c.guest_connections,
                "refused": c.refused,
                "resets": c.resets,
            },
            "rx": {"packets": c.rx_packets, "bytes": c.rx_bytes},
            "tx": {"packets": c.tx_packets, "bytes": c.tx_bytes},
            "dropped": c.dropped,
            "credit_violations": c.credit_violations,
        })
    }
}
