//! What the control-socket targets share: a fake monitor behind the
//! `Control` trait that records what it is asked to do, and requests a
//! client might send (well formed or not) rendered as JSON lines.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use arbitrary::Arbitrary;
use hearth::api::limits::LimiterPatch;
use hearth::api::{Answer, Control, Waiter};
use hearth::config::CpuSpec;
use hearth::fcapi::Registry;
use hearth::ratelimit::BucketUpdate;
use serde_json::{json, Map, Value};

use crate::support::List;

/// What the fake monitor was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Paused(usize, bool),
    Stop(usize),
    SetCpu(usize, CpuSpec),
    Shutdown,
    Create {
        start: bool,
    },
    Start(usize),
    Delete(usize),
    Restart(usize),
    SetMemory(usize, Option<u64>, Option<u64>),
    /// Which of the receive and transmit limiters it was given.
    SetNet(usize, bool, bool),
    SetIo(usize, u32),
    /// The bandwidth and ops buckets' updates.
    SetDrive(usize, BucketUpdate, BucketUpdate),
}

impl Call {
    /// The VM it acts on, if one.
    pub fn vm(&self) -> Option<usize> {
        match self {
            Call::Paused(i, _)
            | Call::Stop(i)
            | Call::SetCpu(i, _)
            | Call::Start(i)
            | Call::Delete(i)
            | Call::Restart(i)
            | Call::SetMemory(i, ..)
            | Call::SetNet(i, ..)
            | Call::SetIo(i, _)
            | Call::SetDrive(i, ..) => Some(*i),
            Call::Shutdown | Call::Create { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Arbitrary)]
pub struct FakeVm {
    pub running: bool,
    pub vcpus: u8,
    /// 255: a statistics entry of more than a megabyte (a reply over
    /// the cap).
    pub notes: u8,
}

/// How the fake answers a life-cycle request.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Outcome {
    /// Completes the waiter at once and answers later (as a worker would).
    Later(bool),
    Refused,
}

/// The fake monitor.
pub struct Fake {
    pub names: Vec<String>,
    pub vms: Vec<FakeVm>,
    pub cpus: Vec<CpuSpec>,
    pub outcome: Outcome,
    pub calls: Vec<Call>,
    /// The Firecracker API sockets it serves (`create` with `api_socket`),
    /// if it serves them.
    pub apis: Option<Arc<Registry>>,
    /// Whether the request now executed may bind its `api_socket` (a path
    /// in [`scratch_dir`]: never a socket anywhere else on the host).
    pub may_bind: bool,
}

/// The names of the fake VMs, `vm0`, `vm1`, ... (unique, as the monitor's).
pub fn vm_name(i: usize) -> String {
    format!("vm{i}")
}

impl Fake {
    pub fn new(vms: &[FakeVm], outcome: Outcome) -> Self {
        Fake {
            names: (0..vms.len()).map(vm_name).collect(),
            vms: vms.to_vec(),
            cpus: vms.iter().map(|_| CpuSpec::default()).collect(),
            outcome,
            calls: Vec::new(),
            apis: None,
            may_bind: false,
        }
    }

    /// The same, serving Firecracker API sockets.
    pub fn serving(vms: &[FakeVm], outcome: Outcome) -> Self {
        let registry = Registry::new().expect("an eventfd");
        Fake {
            apis: Some(Arc::new(registry)),
            ..Fake::new(vms, outcome)
        }
    }

    fn later(&mut self, call: Call, waiter: Waiter) -> Result<Answer, String> {
        self.calls.push(call);
        match self.outcome {
            Outcome::Later(ok) => {
                waiter.complete(if ok {
                    Ok(json!({"done": true}))
                } else {
                    Err("failed".into())
                });
                Ok(Answer::Later)
            }
            Outcome::Refused => Err("refused by the fake".into()),
        }
    }
}

impl Control for Fake {
    fn vm_names(&self) -> Vec<String> {
        self.names.clone()
    }

    fn stats_json(&self) -> Value {
        let vms: Vec<Value> = self
            .vms
            .iter()
            .enumerate()
            .map(|(i, vm)| {
                let state = if vm.running { "running" } else { "stopped" };
                let mut v = json!({"name": self.names[i], "state": state, "vcpus": vm.vcpus});
                if vm.notes == u8::MAX {
                    v["notes"] = json!("x".repeat(1_100_000));
                }
                v
            })
            .collect();
        json!({ "vms": vms })
    }

    fn is_running(&self, vm: usize) -> bool {
        self.vms[vm].running
    }

    fn vcpus(&self, vm: usize) -> usize {
        usize::from(self.vms[vm].vcpus.max(1))
    }

    fn set_paused(&mut self, vm: usize, paused: bool) {
        self.calls.push(Call::Paused(vm, paused));
    }

    fn stop(&mut self, vm: usize, _why: &str) {
        self.calls.push(Call::Stop(vm));
    }

    fn cpu(&self, vm: usize) -> CpuSpec {
        self.cpus[vm].clone()
    }

    fn set_cpu(&mut self, vm: usize, cpu: CpuSpec) {
        self.cpus[vm] = cpu.clone();
        self.calls.push(Call::SetCpu(vm, cpu));
    }

    fn shutdown(&mut self, _why: &str) {
        self.calls.push(Call::Shutdown);
    }

    fn create(
        &mut self,
        _def: Value,
        base: &Path,
        start: bool,
        w: Waiter,
    ) -> Result<Answer, String> {
        assert!(base.is_absolute(), "create's base_dir {base:?} is absolute");
        self.later(Call::Create { start }, w)
    }

    fn start(&mut self, vm: usize, waiter: Waiter) -> Result<Answer, String> {
        self.later(Call::Start(vm), waiter)
    }

    fn delete(&mut self, vm: usize, waiter: Waiter) -> Result<Answer, String> {
        self.later(Call::Delete(vm), waiter)
    }

    fn restart(&mut self, vm: usize, waiter: Waiter) -> Result<Answer, String> {
        self.later(Call::Restart(vm), waiter)
    }

    fn set_memory(&mut self, vm: usize, w: Option<u64>, f: Option<u64>) -> Result<Value, String> {
        self.calls.push(Call::SetMemory(vm, w, f));
        Ok(json!({"vm": self.names[vm]}))
    }

    fn set_net(
        &mut self,
        vm: usize,
        iface: &str,
        rx: Option<LimiterPatch>,
        tx: Option<LimiterPatch>,
    ) -> Result<Value, String> {
        self.calls
            .push(Call::SetNet(vm, rx.is_some(), tx.is_some()));
        Ok(json!({"vm": self.names[vm], "iface": iface}))
    }

    fn set_io_weight(&mut self, vm: usize, weight: u32) -> Result<Value, String> {
        self.calls.push(Call::SetIo(vm, weight));
        Ok(json!({"vm": self.names[vm], "io_weight": weight}))
    }

    fn set_drive_limits(
        &mut self,
        vm: usize,
        drive: &str,
        bandwidth: BucketUpdate,
        ops: BucketUpdate,
    ) -> Result<Value, String> {
        self.calls.push(Call::SetDrive(vm, bandwidth, ops));
        Ok(json!({"vm": self.names[vm], "id": drive}))
    }

    fn firecracker_apis(&self) -> Option<Arc<Registry>> {
        self.apis.clone().filter(|_| self.may_bind)
    }

    fn access_counters(&self, vm: usize) -> Result<Value, String> {
        Ok(json!({"vm": self.names[vm], "denied_total": 0}))
    }
}

/// Every op of the protocol (and one that is not), the grant each needs
/// (docs/api.md) and the fields it takes.
pub const OPS: [(&str, &str, &[&str]); 18] = [
    ("list", "read", &[]),
    ("stats", "read", &["vm"]),
    ("access-counters", "read", &["vm"]),
    ("pause", "control", &["vm"]),
    ("resume", "control", &["vm"]),
    ("stop", "control", &["vm"]),
    ("set-cpu", "control", &["vm", "weight", "max"]),
    ("set-memory", "control", &["vm", "weight", "floor_mib"]),
    ("start", "control", &["vm"]),
    ("delete", "control", &["vm"]),
    ("restart", "control", &["vm"]),
    ("shutdown", "admin", &[]),
    (
        "create",
        "admin",
        &["vm", "base_dir", "start", "api_socket"],
    ),
    (
        "set-net",
        "control",
        &["vm", "iface", "rx_rate_limiter", "tx_rate_limiter"],
    ),
    ("set-io", "control", &["vm", "weight"]),
    ("set-drive", "control", &["vm", "drive", "rate_limiter"]),
    ("metrics", "read", &[]),
    ("reboot", "-", &["vm"]),
];

/// A JSON value of the kinds a field might be given.
#[derive(Debug, Clone, Arbitrary)]
pub enum Val {
    Null,
    Bool(bool),
    Int(i64),
    Small(u16),
    Float(f64),
    Str(String),
    /// The name of one of the fake VMs.
    Vm(u8),
    Array(List<u8, 3>),
    Object,
}

impl Val {
    pub fn json(&self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(b) => json!(b),
            Val::Int(n) => json!(n),
            Val::Small(n) => json!(n),
            Val::Float(f) => json!(f),
            Val::Str(s) => json!(s),
            Val::Vm(i) => json!(vm_name(usize::from(*i % 6))),
            Val::Array(items) => json!(items.0),
            Val::Object => json!({"path": "/nonexistent"}),
        }
    }
}

/// One field of a request: `name` picks one the op takes (any of
/// [`FIELDS`] when `wild` is 254 or 255); its value has the type the
/// field wants unless `wild` is 255.
#[derive(Debug, Clone, Arbitrary)]
pub struct Field {
    pub name: u8,
    pub wild: u8,
    pub value: Val,
}

impl Field {
    fn name(&self, takes: &[&'static str]) -> &'static str {
        match takes.len() {
            0 => FIELDS[usize::from(self.name) % FIELDS.len()],
            _ if self.wild >= 254 => FIELDS[usize::from(self.name) % FIELDS.len()],
            n => takes[usize::from(self.name) % n],
        }
    }

    fn json(&self, op: &str, name: &str) -> Value {
        if name == "api_socket" {
            // Whatever the case says, never a socket outside the scratch
            // directory.
            return socket_path(&self.value);
        }
        if self.wild == u8::MAX {
            return self.value.json();
        }
        let n = match &self.value {
            Val::Int(n) => *n,
            Val::Small(n) => i64::from(*n),
            Val::Vm(n) => i64::from(*n),
            _ => 1,
        };
        match (name, &self.value) {
            ("vm", v) if op == "create" => template(v),
            ("iface" | "drive", Val::Str(s)) => json!(s),
            ("iface", _) => json!(["eth0", "eth1"][n.rem_euclid(2) as usize]),
            ("drive", _) => json!(["root", "data"][n.rem_euclid(2) as usize]),
            ("rx_rate_limiter" | "tx_rate_limiter" | "rate_limiter", v) => limiter(v),
            ("vm", Val::Str(s)) => json!(s),
            ("vm", _) => json!(vm_name(n.unsigned_abs() as usize % 6)),
            ("max", Val::Null) => Value::Null,
            ("max", Val::Float(f)) => json!(f),
            ("max", _) => json!(n as f64 / 4.0),
            ("base_dir", Val::Str(s)) => json!(s),
            ("base_dir", _) => json!("/tmp"),
            ("start", v) => json!(matches!(v, Val::Bool(true))),
            (_, v @ (Val::Int(_) | Val::Small(_))) => v.json(),
            (_, _) => json!(n),
        }
    }
}

/// A request as a client might write it.
#[derive(Debug, Clone, Arbitrary)]
pub struct Req {
    /// An op of [`OPS`]; none at all when `u8::MAX`.
    pub op: u8,
    pub fields: List<Field, 4>,
    /// Keep the text only up to `cut % len` (a broken line) when `cut`
    /// is under 0x1000.
    pub cut: u16,
}

/// The field names a request may carry (and one no request has).
const FIELDS: [&str; 14] = [
    "vm",
    "weight",
    "max",
    "floor_mib",
    "base_dir",
    "start",
    "vm",
    "x",
    "iface",
    "drive",
    "rx_rate_limiter",
    "tx_rate_limiter",
    "rate_limiter",
    "api_socket",
];

impl Req {
    /// The op it names, with the fields it takes, if any.
    pub fn op(&self) -> Option<(&'static str, &'static [&'static str])> {
        (self.op != u8::MAX).then(|| {
            let (name, _, takes) = OPS[usize::from(self.op) % OPS.len()];
            (name, takes)
        })
    }

    /// The request line, without its newline.
    pub fn text(&self) -> String {
        let mut map = Map::new();
        let (op, takes) = self.op().unwrap_or(("", &[]));
        if !op.is_empty() {
            map.insert("op".into(), json!(op));
        }
        for field in self.fields.iter() {
            let name = field.name(takes);
            map.insert(name.into(), field.json(op, name));
        }
        let text = Value::Object(map).to_string();
        if self.cut < 0x1000 {
            text.chars()
                .take(usize::from(self.cut) % (text.len() + 1))
                .collect()
        } else {
            text
        }
    }
}

/// Where `create` with `api_socket` may bind sockets: a scratch directory
/// of this process.
pub fn scratch_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("fuzz-api-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        dir
    })
}

/// Whether `path` lies in [`scratch_dir`] (no `..` to climb out).
pub fn in_scratch(path: &Path) -> bool {
    path.starts_with(scratch_dir()) && !path.components().any(|c| c == Component::ParentDir)
}

/// An `api_socket` value: mostly a socket in [`scratch_dir`], some
/// relative, one that climbs out of it, one absent directory.
fn socket_path(v: &Val) -> Value {
    let dir = scratch_dir();
    let path = match v {
        Val::Null => return Value::Null,
        Val::Str(s) if s.is_empty() => PathBuf::from("api.sock"),
        Val::Str(s) => {
            let name: String = s
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(16)
                .collect();
            dir.join(format!("s{name}.sock"))
        }
        Val::Small(n) => dir.join(format!("api{}.sock", n % 3)),
        Val::Int(_) => PathBuf::from("relative/api.sock"),
        Val::Vm(_) => dir.join("../escape.sock"),
        Val::Bool(_) => dir.join("absent/api.sock"),
        _ => dir.join("api0.sock"),
    };
    json!(path)
}

/// `create`'s `vm`: a template (`name`, no `kernel`) or a definition
/// (with one), with names free, taken by a VM or not valid; or no object.
fn template(v: &Val) -> Value {
    match v {
        Val::Str(s) => json!({ "name": s }),
        Val::Vm(i) => json!({ "name": vm_name(usize::from(*i % 6)) }),
        Val::Small(n) => json!({ "name": format!("fc{}", n % 3) }),
        Val::Int(n) => {
            json!({ "name": format!("fc{}", n.rem_euclid(3)), "kernel": "/absent/vmlinux" })
        }
        Val::Bool(_) => json!({}),
        Val::Null => Value::Null,
        Val::Object => json!({"path": "/nonexistent"}),
        _ => json!("vm0"),
    }
}

/// A rate limiter change (`set-net`'s and `set-drive`'s): buckets kept,
/// removed, replaced, of size or refill time 0, incomplete or of the
/// wrong type.
fn limiter(v: &Val) -> Value {
    let bucket = |size: i64, refill: i64| json!({ "size": size, "refill_time": refill });
    match v {
        Val::Null => Value::Null,
        Val::Bool(true) => json!({}),
        Val::Bool(false) => json!({ "bandwidth": null }),
        Val::Int(n) => json!({ "bandwidth": bucket(*n, 100), "ops": null }),
        Val::Small(n) => json!({ "ops": bucket(i64::from(*n), i64::from(n % 7)) }),
        Val::Float(_) => json!({ "bandwidth": { "size": 1 } }),
        Val::Str(s) => json!(s),
        Val::Vm(n) => {
            json!({ "ops": { "size": n, "one_time_burst": n, "refill_time": 0 } })
        }
        Val::Array(items) => {
            let at = |i: usize| i64::from(items.0.get(i).copied().unwrap_or(0));
            json!({
                "bandwidth": { "size": at(0) * 1000, "one_time_burst": at(2), "refill_time": at(1) },
                "ops": bucket(at(1), at(0)),
            })
        }
        Val::Object => json!({ "bandwidth": bucket(0, 5), "x": 1 }),
    }
}
