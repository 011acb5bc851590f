//! The statistics document as Prometheus text (exposition format 0.0.4), so
//! that a node exporter (its textfile collector) or any scraper can read
//! the same figures as `hearth ctl stats` and Firecracker's metrics lines.
//! Units are Prometheus's base units: seconds and bytes.

use std::fmt::Write as _;

use serde_json::Value;

const MIB: f64 = 1024.0 * 1024.0;

/// One metric family: its samples, written together under one HELP/TYPE.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    samples: Vec<(String, f64)>,
}

/// Per-VM families: name, help, type, where in a VM's entry, scale.
const VM_FAMILIES: &[(&str, &str, &str, &[&str], f64)] = &[
    (
        "hearth_vm_vcpus",
        "vCPUs of the VM.",
        "gauge",
        &["vcpus"],
        1.0,
    ),
    (
        "hearth_vm_cpu_seconds_total",
        "CPU time the VM's vCPUs used.",
        "counter",
        &["cpu", "used_ns"],
        1e-9,
    ),
    (
        "hearth_vm_cpu_weight",
        "The VM's CPU weight.",
        "gauge",
        &["cpu", "weight"],
        1.0,
    ),
    (
        "hearth_vm_cpu_max",
        "The VM's CPU cap in host CPUs (absent: none).",
        "gauge",
        &["cpu", "max"],
        1.0,
    ),
    (
        "hearth_vm_cpu_share",
        "The VM's fraction of the CPU time all VMs used.",
        "gauge",
        &["cpu", "share"],
        1.0,
    ),
    (
        "hearth_vm_throttle_events_total",
        "Times the CPU scheduler parked the VM.",
        "counter",
        &["cpu", "throttle_events"],
        1.0,
    ),
    (
        "hearth_vm_serial_written_bytes_total",
        "Serial output bytes written out.",
        "counter",
        &["serial", "written_bytes"],
        1.0,
    ),
    (
        "hearth_vm_serial_dropped_bytes_total",
        "Serial output bytes dropped (a destination that did not drain).",
        "counter",
        &["serial", "dropped_bytes"],
        1.0,
    ),
    (
        "hearth_vm_balloon_target_bytes",
        "The balloon size asked of the guest.",
        "gauge",
        &["memory", "balloon_target_mib"],
        MIB,
    ),
    (
        "hearth_vm_balloon_actual_bytes",
        "The balloon size the guest reports.",
        "gauge",
        &["memory", "balloon_actual_mib"],
        MIB,
    ),
    (
        "hearth_vm_guest_memory_bytes",
        "The guest's RAM less its balloon.",
        "gauge",
        &["memory", "guest_mib"],
        MIB,
    ),
    (
        "hearth_vm_guest_free_bytes",
        "Free memory the guest last reported.",
        "gauge",
        &["memory", "guest_free_mib"],
        MIB,
    ),
    (
        "hearth_vm_guest_available_bytes",
        "Available memory the guest last reported.",
        "gauge",
        &["memory", "guest_available_mib"],
        MIB,
    ),
    (
        "hearth_vm_balloon_stats_updates_total",
        "Balloon statistics updates from the guest.",
        "counter",
        &["memory", "stats_updates"],
        1.0,
    ),
];

/// The exit kinds of `exits` in a VM's entry.
const EXIT_KINDS: &[&str] = &[
    "pio_read",
    "pio_write",
    "mmio_read",
    "mmio_write",
    "interrupted",
    "other",
];

/// Monitor-wide families: name, help, type, path, scale.
const MONITOR_FAMILIES: &[(&str, &str, &str, &[&str], f64)] = &[
    (
        "hearth_uptime_seconds",
        "Seconds since the monitor started.",
        "gauge",
        &["elapsed_s"],
        1.0,
    ),
    (
        "hearth_monitor_thread_cpu_seconds_total",
        "CPU time of the event-loop thread.",
        "counter",
        &["monitor_thread_cpu_ns"],
        1e-9,
    ),
    (
        "hearth_peak_rss_bytes",
        "The monitor's peak resident memory.",
        "gauge",
        &["peak_rss_kib"],
        1024.0,
    ),
    (
        "hearth_scheduler_ticks_total",
        "CPU scheduler ticks.",
        "counter",
        &["scheduler", "ticks"],
        1.0,
    ),
    (
        "hearth_scheduler_cost_seconds_total",
        "Event-loop CPU time the scheduler ticks took.",
        "counter",
        &["scheduler", "cost_ns"],
        1e-9,
    ),
    (
        "hearth_memory_budget_bytes",
        "The memory allocator's budget (absent: none).",
        "gauge",
        &["memory", "budget_mib"],
        MIB,
    ),
];

fn lookup<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, key| v.get(key))
}

fn number(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A VM's state as a label: "running", "paused", ..., or "stopped".
fn state_label(state: &str) -> &str {
    match state {
        "building" | "created" | "running" | "paused" | "stopping" => state,
        _ => "stopped",
    }
}

/// The Prometheus text of a statistics document (`stats::to_json`).
pub fn prometheus_text(doc: &Value) -> String {
    let vms: &[Value] = doc["vms"].as_array().map_or(&[], Vec::as_slice);
    let mut families: Vec<Family> = Vec::new();
    let mut state = Family {
        name: "hearth_vm_state",
        help: "1 for the VM's life-cycle state.",
        kind: "gauge",
        samples: Vec::new(),
    };
    let mut exits = Family {
        name: "hearth_vm_exits_total",
        help: "VM exits handled in user space, by kind.",
        kind: "counter",
        samples: Vec::new(),
    };
    for vm in vms {
        let name = escape(vm["name"].as_str().unwrap_or(""));
        let st = state_label(vm["state"].as_str().unwrap_or(""));
        state
            .samples
            .push((format!("{{vm=\"{name}\",state=\"{st}\"}}"), 1.0));
        for kind in EXIT_KINDS {
            if let Some(n) = number(lookup(vm, &["exits", kind])) {
                exits
                    .samples
                    .push((format!("{{vm=\"{name}\",kind=\"{kind}\"}}"), n));
            }
        }
    }
    families.push(state);
    for (fname, help, kind, path, scale) in VM_FAMILIES {
        let samples = vms
            .iter()
            .filter_map(|vm| {
                let n = number(lookup(vm, path))?;
                let name = escape(vm["name"].as_str().unwrap_or(""));
                Some((format!("{{vm=\"{name}\"}}"), n * scale))
            })
            .collect();
        families.push(Family {
            name: fname,
            help,
            kind,
            samples,
        });
    }
    families.push(exits);
    for (fname, help, kind, path, scale) in MONITOR_FAMILIES {
        let samples = number(lookup(doc, path))
            .map(|n| vec![(String::new(), n * scale)])
            .unwrap_or_default();
        families.push(Family {
            name: fname,
            help,
            kind,
            samples,
        });
    }
    let mut out = String::new();
    for f in families.iter().filter(|f| !f.samples.is_empty()) {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for (labels, value) in &f.samples {
            let _ = writeln!(out, "{}{labels} {value}", f.name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_stats_document_becomes_prometheus_text() {
        let doc = json!({
            "elapsed_s": 2.5,
            "vms": [{"name": "web", "state": "running", "vcpus": 2,
                     "cpu": {"weight": 300, "max": null, "used_ns": 1_500_000_000u64, "share": 1.0,
                             "throttle_events": 4},
                     "exits": {"pio_read": 1, "pio_write": 7, "mmio_read": 0, "mmio_write": 0,
                               "interrupted": 2, "other": 0, "total": 10},
                     "serial": {"written_bytes": 12, "dropped_bytes": 0},
                     "memory": {"balloon_target_mib": 16, "balloon_actual_mib": 8}},
                    {"name": "db\"x", "state": "guest reset", "vcpus": 1}],
            "scheduler": {"ticks": 250, "cost_ns": 1000},
            "memory": {"budget_mib": null},
            "monitor_thread_cpu_ns": 5,
        });
        let text = prometheus_text(&doc);
        assert!(
            text.contains("# TYPE hearth_vm_cpu_seconds_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("hearth_vm_cpu_seconds_total{vm=\"web\"} 1.5\n"),
            "{text}"
        );
        assert!(text.contains("hearth_vm_exits_total{vm=\"web\",kind=\"pio_write\"} 7\n"));
        assert!(text.contains("hearth_vm_state{vm=\"web\",state=\"running\"} 1\n"));
        assert!(text.contains("hearth_vm_state{vm=\"db\\\"x\",state=\"stopped\"} 1\n"));
        assert!(text.contains("hearth_vm_balloon_target_bytes{vm=\"web\"} 16777216\n"));
        assert!(text.contains("hearth_scheduler_ticks_total 250\n"));
        // A cap that is not set and a budget that does not exist are absent.
        assert!(!text.contains("hearth_vm_cpu_max"));
        assert!(!text.contains("hearth_memory_budget_bytes"));
        // Every sample line belongs to a family announced just before.
        let mut typed = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed = rest.split(' ').next().unwrap_or("").to_string();
            } else if !line.starts_with('#') {
                assert!(line.starts_with(&typed), "{line} after TYPE {typed}");
            }
        }
    }
}
