//! Per-VM statistics: CPU time, share, throttling, exits by kind; as JSON
//! for `--stats-file` (rewritten every second) and for the final summary.

use std::io::Write;
use std::path::Path;

use serde::ser::{SerializeStruct, Serializer};
use serde::Serialize;
use serde_json::{json, Value};

use crate::mem::BalloonStats;
use crate::sched::VmSchedStats;
use crate::vcpu::VcpuStats;
use crate::verifier::VerifierStats;

/// One VM's figures at one moment.
#[derive(Debug, Clone)]
pub struct VmStats {
    pub name: std::sync::Arc<str>,
    /// "running" or how it ended.
    pub state: std::borrow::Cow<'static, str>,
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

/// The `exits` object of a VM.
#[derive(Serialize)]
struct ExitsJson {
    interrupted: u64,
    mmio_read: u64,
    mmio_write: u64,
    other: u64,
    pio_read: u64,
    pio_write: u64,
    total: u64,
}

impl ExitsJson {
    fn of(e: &VcpuStats) -> ExitsJson {
        ExitsJson {
            interrupted: e.interrupted,
            mmio_read: e.mmio_reads,
            mmio_write: e.mmio_writes,
            other: e.other,
            pio_read: e.pio_reads,
            pio_write: e.pio_writes,
            total: e.total(),
        }
    }
}

/// The `cpu` object of a VM.
#[derive(Serialize)]
struct CpuJson {
    max: Option<f64>,
    parked_vcpus: usize,
    share: f64,
    throttle_events: u64,
    throttled: bool,
    used_ns: u64,
    weight: u32,
}

#[derive(Serialize)]
struct SerialJson {
    dropped_bytes: u64,
    written_bytes: u64,
}

/// One VM's object; `total` is the CPU time of all VMs (for its share).
struct VmJson<'a> {
    vm: &'a VmStats,
    total: u64,
}

impl Serialize for VmJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let v = self.vm;
        let share = if self.total > 0 {
            v.cpu_ns as f64 / self.total as f64
        } else {
            0.0
        };
        let cpu = CpuJson {
            max: v.max,
            parked_vcpus: v.parked_vcpus,
            share,
            throttle_events: v.sched.throttle_events,
            throttled: v.sched.throttled,
            used_ns: v.cpu_ns,
            weight: v.weight,
        };
        let serial = v.serial.map(|(written, dropped)| SerialJson {
            dropped_bytes: dropped,
            written_bytes: written,
        });
        let mut s = serializer.serialize_struct("vm", 13)?;
        s.serialize_field("acl", &v.acl)?;
        s.serialize_field("cpu", &cpu)?;
        s.serialize_field("exits", &ExitsJson::of(&v.exits))?;
        s.serialize_field("io", &v.io)?;
        s.serialize_field("memory", &v.balloon.as_ref().map(balloon_json))?;
        s.serialize_field("name", &*v.name)?;
        s.serialize_field("net", &Seq(|| v.net.iter().map(|n| n.to_json())))?;
        s.serialize_field("net_share", &v.net_share)?;
        s.serialize_field("serial", &serial)?;
        s.serialize_field("state", &v.state)?;
        s.serialize_field("vcpus", &v.vcpus)?;
        s.serialize_field("vsock", &v.vsock.as_ref().map(|s| s.to_json()))?;
        s.end()
    }
}

/// A sequence serialized from an iterator made on demand.
struct Seq<F>(F);

impl<F, I> Serialize for Seq<F>
where
    F: Fn() -> I,
    I: Iterator,
    I::Item: Serialize,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq((self.0)())
    }
}

#[derive(Serialize)]
struct LatenessJson {
    max: u64,
    p50: u64,
    p99: u64,
}

#[derive(Serialize)]
struct SchedulerJson {
    clock_reads: u64,
    cost_ns: u64,
    missed_ticks: u64,
    tick_late_us: LatenessJson,
    ticks: u64,
}

#[derive(Serialize)]
struct MemoryJson {
    budget_mib: Option<u64>,
    /// Balloon reads a tick skipped because a vCPU held the balloon.
    busy_skips: u64,
    cost_ns: u64,
    host_rss_kib: Option<u64>,
    ticks: u64,
}

/// Everything the statistics file and the `stats` request show, gathered
/// on the event loop (copies of counters, no JSON) and turned into JSON
/// wherever it is written: the file's writer thread, or a control reply.
pub struct Snapshot {
    pub elapsed_s: f64,
    pub vms: Vec<VmStats>,
    pub sched_ticks: u64,
    pub sched_cost_ns: u64,
    /// vCPU clocks the scheduler's ticks read.
    pub sched_clock_reads: u64,
    /// CPU time of the event loop's thread (read on that thread).
    pub monitor_cpu_ns: u64,
    pub jitter: crate::sched::jitter::JitterStats,
    /// The memory budget (MiB), the allocator's ticks, their cost and
    /// the balloon reads they skipped.
    pub memory: (Option<u64>, u64, u64, u64),
    /// The host budgets `host.io` and `host.net`.
    pub io: ShareJson,
    pub net: ShareJson,
}

/// A host budget's figures (`io` and `net` of the statistics): plain
/// numbers, so that the loop gathers them without allocating. Fields in
/// the order of the keys a `Value` prints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ShareJson {
    pub bytes_per_s: Option<u64>,
    pub cost_ns: u64,
    pub missed_ticks: u64,
    pub ops_per_s: Option<u64>,
    pub ticks: u64,
}

impl Snapshot {
    /// As a JSON value (a control reply).
    pub fn into_json(self) -> Value {
        serde_json::to_value(&self).unwrap_or_default()
    }
}

/// The whole monitor's statistics, written straight out: building a
/// `Value` tree first cost the writer 5 ms a second with 200 VMs (about
/// 70 allocations per VM). Keys come in the order a `Value` prints them.
/// A VM's `share` is its fraction of the CPU time all VMs have used since
/// they started.
impl Serialize for Snapshot {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let total: u64 = self.vms.iter().map(|v| v.cpu_ns).sum();
        let (budget_mib, ticks, cost_ns, busy_skips) = self.memory;
        let j = self.jitter;
        let mut s = serializer.serialize_struct("stats", 8)?;
        s.serialize_field("elapsed_s", &self.elapsed_s)?;
        s.serialize_field("io", &self.io)?;
        s.serialize_field(
            "memory",
            &MemoryJson {
                budget_mib,
                busy_skips,
                cost_ns,
                host_rss_kib: crate::host::rss_kib(),
                ticks,
            },
        )?;
        s.serialize_field("monitor_thread_cpu_ns", &self.monitor_cpu_ns)?;
        s.serialize_field("net", &self.net)?;
        s.serialize_field("peak_rss_kib", &crate::host::peak_rss_kib())?;
        s.serialize_field(
            "scheduler",
            &SchedulerJson {
                clock_reads: self.sched_clock_reads,
                cost_ns: self.sched_cost_ns,
                missed_ticks: j.missed,
                tick_late_us: LatenessJson {
                    max: j.max_us,
                    p50: j.p50_us,
                    p99: j.p99_us,
                },
                ticks: self.sched_ticks,
            },
        )?;
        s.serialize_field(
            "vms",
            &Seq(|| self.vms.iter().map(|vm| VmJson { vm, total })),
        )?;
        s.end()
    }
}

/// Replaces `path` with `value` atomically (write a sibling, then rename),
/// so a reader never sees a half-written file.
pub fn write_atomically(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
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

    fn snapshot(vms: Vec<VmStats>) -> Snapshot {
        Snapshot {
            elapsed_s: 1.0,
            vms,
            sched_ticks: 100,
            sched_cost_ns: 5000,
            sched_clock_reads: 200,
            monitor_cpu_ns: 7000,
            jitter: Default::default(),
            memory: (None, 0, 0, 0),
            io: ShareJson::default(),
            net: ShareJson::default(),
        }
    }

    #[test]
    fn shares_add_up_and_exits_are_by_kind() {
        let v = snapshot(vec![vm("a", 100), vm("b", 300)]).into_json();
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
        write_atomically(&path, &snapshot(vec![vm("a", 1)])).unwrap();
        let back: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back["vms"][0]["name"], "a");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
