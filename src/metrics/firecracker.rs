//! Firecracker's metrics line for one VM: the groups and field names of
//! Firecracker's `FirecrackerMetrics`, filled where Hearth has the same
//! figure. Counters are deltas since the previous line (Firecracker's
//! `SharedIncMetric`s are reset on every write); gauges are values now.
//!
//! | group | fields | from |
//! |---|---|---|
//! | `vcpu` | `exit_io_in`, `exit_io_out`, `exit_mmio_read`, `exit_mmio_write` | the VM's exit counters |
//! | `uart` | `write_count`, `missed_write_count` | serial bytes written and dropped |
//! | `balloon` | `stats_updates_count`, `event_fails` | the balloon's statistics updates and failures |
//! | `get_api_requests`, `put_api_requests`, `patch_api_requests` | `*_count`, `*_fails` | the requests this API socket served |
//! | `logger` | `missed_metrics_count`, `metrics_fails` | metrics lines dropped (a reader behind) or failed |

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// The request counters Firecracker reports, by group.
const REQUEST_FIELDS: &[(&str, &[&str])] = &[
    (
        "get_api_requests",
        &[
            "instance_info_count",
            "machine_cfg_count",
            "vmm_version_count",
        ],
    ),
    (
        "put_api_requests",
        &[
            "actions_count",
            "actions_fails",
            "boot_source_count",
            "boot_source_fails",
            "drive_count",
            "drive_fails",
            "logger_count",
            "logger_fails",
            "machine_cfg_count",
            "machine_cfg_fails",
            "metrics_count",
            "metrics_fails",
            "network_count",
            "network_fails",
            "vsock_count",
            "vsock_fails",
        ],
    ),
    (
        "patch_api_requests",
        &[
            "drive_count",
            "drive_fails",
            "network_count",
            "network_fails",
            "machine_cfg_count",
            "machine_cfg_fails",
        ],
    ),
];

/// The running totals a line reports as deltas: (group, field, where in
/// a VM's statistics entry).
const DELTAS: &[(&str, &str, &[&str])] = &[
    ("vcpu", "exit_io_in", &["exits", "pio_read"]),
    ("vcpu", "exit_io_out", &["exits", "pio_write"]),
    ("vcpu", "exit_mmio_read", &["exits", "mmio_read"]),
    ("vcpu", "exit_mmio_write", &["exits", "mmio_write"]),
    ("uart", "write_count", &["serial", "written_bytes"]),
    ("uart", "missed_write_count", &["serial", "dropped_bytes"]),
    (
        "balloon",
        "stats_updates_count",
        &["memory", "stats_updates"],
    ),
    ("balloon", "event_fails", &["memory", "failures"]),
];

/// One API socket's metrics state: requests since the last line, and the
/// totals the last line reported.
#[derive(Debug, Default)]
pub struct FcMetrics {
    requests: BTreeMap<(&'static str, &'static str), u64>,
    previous: BTreeMap<&'static str, u64>,
    /// Sink totals at the last line (dropped, failed).
    previous_sink: (u64, u64),
}

fn lookup<'a>(entry: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(entry, |v, key| v.get(key))
}

impl FcMetrics {
    /// Counts one request to `group` (`"put_api_requests"`, ...) about
    /// `what` (`"drive"`, `"actions"`, ...), and whether it failed.
    pub fn count(&mut self, group: &'static str, what: &'static str, failed: bool) {
        self.bump(group, what, true, failed);
    }

    /// Counts a failure of a request already counted.
    pub fn fail(&mut self, group: &'static str, what: &'static str) {
        self.bump(group, what, false, true);
    }

    fn bump(&mut self, group: &'static str, what: &'static str, count: bool, failed: bool) {
        let Some((_, fields)) = REQUEST_FIELDS.iter().find(|(g, _)| *g == group) else {
            return;
        };
        let want = |suffix: &str| {
            fields
                .iter()
                .copied()
                .find(|f| f.strip_suffix(suffix) == Some(what))
        };
        if let Some(f) = want("_count").filter(|_| count) {
            *self.requests.entry((group, f)).or_default() += 1;
        }
        if failed {
            if let Some(f) = want("_fails") {
                *self.requests.entry((group, f)).or_default() += 1;
            }
        }
    }

    /// The next line: `vm` is the VM's entry of the statistics document
    /// (`None` before it runs), `sink` the destination's (dropped, failed)
    /// totals. Resets the request counters.
    pub fn line(&mut self, utc_ms: u64, vm: Option<&Value>, sink: (u64, u64)) -> Value {
        let mut groups: BTreeMap<&'static str, Map<String, Value>> = BTreeMap::new();
        for (name, fields) in REQUEST_FIELDS {
            let g = groups.entry(name).or_default();
            for field in *fields {
                let n = self.requests.get(&(*name, *field)).copied().unwrap_or(0);
                g.insert((*field).to_string(), json!(n));
            }
        }
        self.requests.clear();
        for (name, field, path) in DELTAS {
            let now = vm.and_then(|v| lookup(v, path)).and_then(Value::as_u64);
            let Some(now) = now else { continue };
            let before = self.previous.insert(field, now).unwrap_or(0);
            groups
                .entry(name)
                .or_default()
                .insert((*field).to_string(), json!(now.saturating_sub(before)));
        }
        let (dropped, failed) = sink;
        let logger = groups.entry("logger").or_default();
        logger.insert(
            "missed_metrics_count".into(),
            json!(dropped.saturating_sub(self.previous_sink.0)),
        );
        logger.insert(
            "metrics_fails".into(),
            json!(failed.saturating_sub(self.previous_sink.1)),
        );
        self.previous_sink = sink;
        let mut line = Map::new();
        line.insert("utc_timestamp_ms".into(), json!(utc_ms));
        line.extend(
            groups
                .into_iter()
                .map(|(k, v)| (k.to_string(), Value::Object(v))),
        );
        Value::Object(line)
    }
}

/// Milliseconds since the Unix epoch now.
pub fn utc_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(pio_out: u64, written: u64) -> Value {
        json!({"name": "vm0", "exits": {"pio_read": 1, "pio_write": pio_out, "mmio_read": 0,
               "mmio_write": 0}, "serial": {"written_bytes": written, "dropped_bytes": 0},
               "memory": null})
    }

    #[test]
    fn counters_are_deltas_since_the_last_line() {
        let mut m = FcMetrics::default();
        let first = m.line(5, Some(&vm(100, 40)), (0, 0));
        assert_eq!(first["utc_timestamp_ms"], 5);
        assert_eq!(first["vcpu"]["exit_io_out"], 100);
        assert_eq!(first["uart"]["write_count"], 40);
        let second = m.line(6, Some(&vm(130, 41)), (0, 0));
        assert_eq!(second["vcpu"]["exit_io_out"], 30);
        assert_eq!(second["vcpu"]["exit_io_in"], 0);
        assert_eq!(second["uart"]["write_count"], 1);
        // No balloon: no balloon group rather than invented zeros.
        assert!(second.get("balloon").is_none());
    }

    #[test]
    fn requests_count_once_and_reset() {
        let mut m = FcMetrics::default();
        m.count("put_api_requests", "boot_source", false);
        m.count("put_api_requests", "drive", true);
        m.count("get_api_requests", "instance_info", false);
        let line = m.line(1, None, (3, 0));
        assert_eq!(line["put_api_requests"]["boot_source_count"], 1);
        assert_eq!(line["put_api_requests"]["boot_source_fails"], 0);
        assert_eq!(line["put_api_requests"]["drive_fails"], 1);
        assert_eq!(line["get_api_requests"]["instance_info_count"], 1);
        assert_eq!(line["logger"]["missed_metrics_count"], 3);
        assert!(line.get("vcpu").is_none());
        let next = m.line(2, None, (3, 0));
        assert_eq!(next["put_api_requests"]["drive_count"], 0);
        assert_eq!(next["logger"]["missed_metrics_count"], 0);
    }
}
