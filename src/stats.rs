//! Per-VM statistics: CPU time, share, throttling, exits by kind; as JSON
//! for `--stats-file` (rewritten every second) and for the final summary.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};

use crate::mem::BalloonStats;
use crate::sched::VmSchedStats;
use crate::vcpu::VcpuStats;
use crate::verifier::VerifierStats;

/// One VM's figures at one moment.
#[derive(Debug, Clone)]
pub struct VmStats {
    pub name: String,
    /// "running" or how it ended.
    pub state: String,
    pub vcpus: usize,
    pub weight: u32,
    pub max: Option<f64>,
    pub cpu_ns: u64,
    pub sched: VmSchedStats,
    pub parked_vcpus: usize,
    pub exits: VcpuStats,
    /// The access verifier's counters.
    pub acl: VerifierStats,
    pub balloon: Option<BalloonStats>,
    /// Serial output: bytes written out, and bytes dropped because the
    /// output ring was full (a destination that does not drain).
    pub serial: Option<(u64, u64)>,
    /// The network interfaces' figures (while the VM runs).
    pub net: Vec<crate::virtio::net::NetStats>,
    /// The vsock device's figures.
    pub vsock: Option<crate::virtio::vsock::VsockStats>,
    /// Its share of `host.net` (`net.weight`), when there is a budget.
    pub net_share: Option<Value>,
    /// The disks: `io.weight`, the share of `host.io` taken, each drive
    /// (`virtio::block::VmDisks::to_json`).
    pub io: Option<Value>,
}

fn balloon_json(b: &BalloonStats) -> Value {
    json!({
        "balloon_target_mib": b.balloon_target_mib,
        "balloon_actual_mib": b.balloon_actual_mib,
        "balloon_held_mib": b.balloon_held_mib,
        "over_target": b.over_target,
        "guest_mib": b.guest_mib,
        "target_mib": b.alloc_target_mib,
        "ideal_mib": b.alloc_ideal_mib,
        "demand_mib": b.demand_mib,
        "guest_free_mib": b.guest_free_mib,
        "guest_available_mib": b.guest_available_mib,
        "guest_total_mib": b.guest_total_mib,
        "stats_updates": b.stats_updates,
        "inflated_pages": b.inflated_pages,
        "deflated_pages": b.deflated_pages,
        "reported_mib": b.reported_mib,
        "needs_reset": b.needs_reset,
        "notifications": b.notifications,
        "failures": b.failures,
        "last_failure": b.last_failure,
    })
}

/// Adds how late the event loop served the scheduler's ticks.
pub fn add_tick_lateness(value: &mut Value, j: crate::sched::jitter::JitterStats) {
    value["scheduler"]["tick_late_us"] = json!({
        "p50": j.p50_us,
        "p99": j.p99_us,
        "max": j.max_us,
    });
    value["scheduler"]["missed_ticks"] = json!(j.missed);
}

/// Adds the memory allocator's figures (budget, ticks, cost) to `value`.
pub fn add_memory(value: &mut Value, budget_mib: Option<u64>, ticks: u64, cost_ns: u64) {
    value["memory"] = json!({
        "budget_mib": budget_mib,
        "ticks": ticks,
        "cost_ns": cost_ns,
        "host_rss_kib": crate::host::rss_kib(),
    });
}

fn exits_json(e: &VcpuStats) -> Value {
    json!({
        "pio_read": e.pio_reads,
        "pio_write": e.pio_writes,
        "mmio_read": e.mmio_reads,
        "mmio_write": e.mmio_writes,
        "interrupted": e.interrupted,
        "other": e.other,
        "total": e.total(),
    })
}

/// The whole monitor's statistics as JSON. `share` is each VM's fraction of
/// the CPU time all VMs have used since they started.
pub fn to_json(
    elapsed_s: f64,
    vms: &[VmStats],
    sched_ticks: u64,
    sched_cost_ns: u64,
    monitor_cpu_ns: u64,
) -> Value {
    let total: u64 = vms.iter().map(|v| v.cpu_ns).sum();
    let vms: Vec<Value> = vms
        .iter()
        .map(|v| {
            json!({
                "name": v.name,
                "state": v.state,
                "vcpus": v.vcpus,
                "cpu": {
                    "weight": v.weight,
                    "max": v.max,
                    "used_ns": v.cpu_ns,
                    "share": if total > 0 { v.cpu_ns as f64 / total as f64 } else { 0.0 },
                    "throttled": v.sched.throttled,
                    "throttle_events": v.sched.throttle_events,
                    "parked_vcpus": v.parked_vcpus,
                },
                "exits": exits_json(&v.exits),
                "acl": v.acl.to_json(),
                "memory": v.balloon.as_ref().map(balloon_json),
                "serial": v.serial.map(|(written, dropped)| json!({
                    "written_bytes": written,
                    "dropped_bytes": dropped,
                })),
                "net": v.net.iter().map(|n| n.to_json()).collect::<Vec<_>>(),
                "vsock": v.vsock.as_ref().map(|s| s.to_json()),
                "net_share": v.net_share,
                "io": v.io,
            })
        })
        .collect();
    json!({
        "elapsed_s": elapsed_s,
        "vms": vms,
        "scheduler": {
            "ticks": sched_ticks,
            "cost_ns": sched_cost_ns,
        },
        "monitor_thread_cpu_ns": monitor_cpu_ns,
        "peak_rss_kib": crate::host::peak_rss_kib(),
    })
}

/// Everything the statistics file and the `stats` request show, gathered
/// on the event loop (copies of counters, no JSON) and turned into JSON
/// wherever it is written: the file's writer thread, or a control reply.
pub struct Snapshot {
    pub elapsed_s: f64,
    pub vms: Vec<VmStats>,
    pub sched_ticks: u64,
    pub sched_cost_ns: u64,
    /// CPU time of the event loop's thread (read on that thread).
    pub monitor_cpu_ns: u64,
    pub jitter: crate::sched::jitter::JitterStats,
    /// The memory budget (MiB), the allocator's ticks and their cost.
    pub memory: (Option<u64>, u64, u64),
    pub io: Value,
    pub net: Value,
}

impl Snapshot {
    pub fn into_json(self) -> Value {
        let mut value = to_json(
            self.elapsed_s,
            &self.vms,
            self.sched_ticks,
            self.sched_cost_ns,
            self.monitor_cpu_ns,
        );
        add_tick_lateness(&mut value, self.jitter);
        let (budget, ticks, cost) = self.memory;
        add_memory(&mut value, budget, ticks, cost);
        value["io"] = self.io;
        value["net"] = self.net;
        value
    }
}

/// Replaces `path` with `value` atomically (write a sibling, then rename),
/// so a reader never sees a half-written file.
pub fn write_atomically(path: &Path, value: &Value) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    {
        // serde_json writes token by token: unbuffered, that is a system
        // call per token (hundreds of thousands a second with 200 VMs).
        let mut f = std::io::BufWriter::with_capacity(64 * 1024, std::fs::File::create(&tmp)?);
        serde_json::to_writer_pretty(&mut f, value)?;
        f.write_all(b"\n")?;
        f.flush()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(name: &str, cpu_ns: u64) -> VmStats {
        VmStats {
            name: name.into(),
            state: "running".into(),
            vcpus: 1,
            weight: 100,
            max: None,
            cpu_ns,
            sched: VmSchedStats::default(),
            parked_vcpus: 0,
            exits: VcpuStats {
                pio_writes: 3,
                ..Default::default()
            },
            acl: VerifierStats::default(),
            balloon: None,
            serial: None,
            net: Vec::new(),
            vsock: None,
            net_share: None,
            io: None,
        }
    }

    #[test]
    fn shares_add_up_and_exits_are_by_kind() {
        let v = to_json(1.0, &[vm("a", 100), vm("b", 300)], 100, 5000, 7000);
        assert_eq!(v["vms"][0]["cpu"]["share"], 0.25);
        assert_eq!(v["vms"][1]["cpu"]["share"], 0.75);
        assert_eq!(v["vms"][1]["exits"]["pio_write"], 3);
        assert_eq!(v["scheduler"]["ticks"], 100);
    }

    #[test]
    fn the_file_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("hearth-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stats.json");
        write_atomically(&path, &to_json(1.0, &[vm("a", 1)], 0, 0, 0)).unwrap();
        let back: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back["vms"][0]["name"], "a");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
