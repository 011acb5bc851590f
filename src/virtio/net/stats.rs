//! An interface's figures for the statistics document.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use super::NetCounters;
use crate::ratelimit::RateLimiterStats;

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounts {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub rx_dropped_too_big: u64,
    pub rx_dropped_short: u64,
    pub rx_tap_errors: u64,
    pub rx_no_buffer: u64,
    pub tx_dropped_malformed: u64,
    pub tx_dropped_oversized: u64,
    pub tx_dropped_bad_header: u64,
    pub tx_tap_errors: u64,
}

impl NetCounts {
    pub fn read(c: &NetCounters) -> NetCounts {
        let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        NetCounts {
            rx_frames: r(&c.rx_frames),
            rx_bytes: r(&c.rx_bytes),
            tx_frames: r(&c.tx_frames),
            tx_bytes: r(&c.tx_bytes),
            rx_dropped_too_big: r(&c.rx_dropped_too_big),
            rx_dropped_short: r(&c.rx_dropped_short),
            rx_tap_errors: r(&c.rx_tap_errors),
            rx_no_buffer: r(&c.rx_no_buffer),
            tx_dropped_malformed: r(&c.tx_dropped_malformed),
            tx_dropped_oversized: r(&c.tx_dropped_oversized),
            tx_dropped_bad_header: r(&c.tx_dropped_bad_header),
            tx_tap_errors: r(&c.tx_tap_errors),
        }
    }
}

/// One interface's statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct NetStats {
    pub id: String,
    pub tap: String,
    pub mac: String,
    /// Its driver has set it up (DRIVER_OK) and not reset it since.
    pub active: bool,
    pub needs_reset: bool,
    /// Doorbells its device thread took (queue notifications through
    /// ioeventfds, which the access verifier does not see).
    pub notifications: u64,
    pub failures: u64,
    pub last_failure: Option<String>,
    pub counters: NetCounts,
    pub rx_limiter: RateLimiterStats,
    pub tx_limiter: RateLimiterStats,
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    let hex: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}

fn limiter_json(l: &RateLimiterStats) -> Value {
    json!({
        "throttled": l.throttled,
        "throttled_events": l.throttled_events,
        "throttled_ns": l.throttled_ns,
    })
}

impl NetStats {
    pub fn to_json(&self) -> Value {
        let c = &self.counters;
        json!({
            "id": self.id,
            "tap": self.tap,
            "mac": self.mac,
            "active": self.active,
            "needs_reset": self.needs_reset,
            "notifications": self.notifications,
            "failures": self.failures,
            "last_failure": self.last_failure,
            "rx": {
                "frames": c.rx_frames,
                "bytes": c.rx_bytes,
                "dropped": {
                    "too_big": c.rx_dropped_too_big,
                    "short": c.rx_dropped_short,
                    "tap_error": c.rx_tap_errors,
                },
                "no_buffer_waits": c.rx_no_buffer,
                "limiter": limiter_json(&self.rx_limiter),
            },
            "tx": {
                "frames": c.tx_frames,
                "bytes": c.tx_bytes,
                "dropped": {
                    "malformed": c.tx_dropped_malformed,
                    "oversized": c.tx_dropped_oversized,
                    "bad_header": c.tx_dropped_bad_header,
                    "tap_error": c.tx_tap_errors,
                },
                "limiter": limiter_json(&self.tx_limiter),
            },
        })
    }
}
