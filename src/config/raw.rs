//! Step one of three: plain serde data as written in the JSON file, one
//! struct per section, each deserialized on its own (see `parse.rs`).
//!
//! Every field is an `Option`: defaults are applied, and "required" is
//! reported, in validation, which knows what to say. A container (the top
//! level, a VM, `host`) keeps its sections as [`Value`]s, so that a broken
//! section does not hide the problems of the others.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::Errors;
use super::parse::{
    describe, join, parse_container, parse_list, parse_optional, parse_value, shown, Parsed,
};

/// Top level of a monitor file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMonitor {
    pub host: Option<Value>,
    pub vms: Option<Vec<Value>>,
}

/// `host`: host-wide policy, one section per resource.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHost {
    pub cpu: Option<Value>,
    /// The control socket, parsed by `config/api.rs`.
    pub api: Option<Value>,
    pub seccomp: Option<bool>,
    pub memory: Option<Value>,
    pub io: Option<Value>,
    pub net: Option<Value>,
    pub sandbox: Option<Value>,
}

/// `host.memory`: the memory budget and the allocator's tick.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHostMemory {
    pub budget_mib: Option<u64>,
    pub tick_ms: Option<u64>,
}

/// `host.cpu`: which host CPUs the vCPU threads may use, and the scheduler tick.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHostCpu {
    /// Wider than `usize` needs, so that a huge number is "not online", not a type error.
    pub cpus: Option<Vec<u64>>,
    pub tick_ms: Option<u64>,
    pub scheduler: Option<bool>,
    pub realtime: Option<bool>,
}

/// `host.io` and `host.net`: a budget the VMs share by weight.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHostShare {
    pub bytes_per_s: Option<u64>,
    pub ops_per_s: Option<u64>,
    pub tick_ms: Option<u64>,
}

/// `host.sandbox`: `{}` (the `nobody` user), `{"user": NAME}` or `{"uid", "gid"}`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSandbox {
    pub user: Option<String>,
    pub uid: Option<u64>,
    pub gid: Option<u64>,
}

/// One VM definition: the top level of a single-VM file or an entry of `vms`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVm {
    pub name: Option<Value>,
    pub kernel: Option<Value>,
    pub cpu: Option<Value>,
    pub memory: Option<Value>,
    pub serial: Option<Value>,
    pub acl: Option<Value>,
    pub drives: Option<Value>,
    pub net: Option<Value>,
    pub vsock: Option<Value>,
    pub io: Option<Value>,
}

/// The keys of a monitor file, used to recognise its form.
pub(crate) const MONITOR_KEYS: &[&str] = &["host", "vms"];

/// The keys of a VM definition, used to recognise the single-VM form.
pub(crate) const VM_KEYS: &[&str] = &[
    "name", "kernel", "cpu", "memory", "serial", "acl", "drives", "net", "vsock", "io",
];

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKernel {
    pub path: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub protocol: Option<RawProtocol>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawProtocol {
    Auto,
    Linux,
    Pvh,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCpu {
    /// Wider than the spec's `u8` so that 300 is "out of range", not a type error.
    pub vcpus: Option<u64>,
    /// Wider than the spec's `u32` for the same reason.
    pub weight: Option<u64>,
    /// In physical CPUs; an integer is accepted too.
    pub max: Option<f64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMemory {
    pub size_mib: Option<u64>,
    pub floor_mib: Option<u64>,
    pub ceiling_mib: Option<u64>,
    pub weight: Option<u64>,
    pub balloon: Option<bool>,
    pub balloon_mib: Option<u64>,
    pub deflate_on_oom: Option<bool>,
    pub stats_interval_s: Option<u64>,
    pub prefault: Option<bool>,
    pub free_page_reporting: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSerial {
    pub output: Option<RawSerialOutput>,
    pub path: Option<PathBuf>,
    pub stdin: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawSerialOutput {
    Stdout,
    File,
    Off,
}

/// One entry of `drives`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDrive {
    pub id: Option<String>,
    pub path: Option<PathBuf>,
    pub read_only: Option<bool>,
    pub root: Option<bool>,
    pub partuuid: Option<String>,
    pub cache: Option<RawCache>,
    pub engine: Option<RawEngine>,
    pub rate_limiter: Option<RawRateLimiter>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawCache {
    Unsafe,
    Writeback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawEngine {
    Sync,
    IoUring,
}

/// A rate limiter, with Firecracker's field names (in both file forms).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
pub(crate) struct RawRateLimiter {
    pub bandwidth: Option<RawBucket>,
    pub ops: Option<RawBucket>,
}

/// A token bucket: `refill_time` in ms.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "an object")]
pub(crate) struct RawBucket {
    pub size: Option<u64>,
    pub one_time_burst: Option<u64>,
    pub refill_time: Option<u64>,
}

/// `net` as an object: the interfaces and the VM's share of `host.net`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNetObject {
    pub weight: Option<u64>,
    pub interfaces: Option<Value>,
}

/// One network interface.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInterface {
    pub id: Option<String>,
    pub tap: Option<String>,
    pub mac: Option<String>,
    pub mtu: Option<u64>,
    pub rx_rate_limiter: Option<RawRateLimiter>,
    pub tx_rate_limiter: Option<RawRateLimiter>,
}

/// `net` in either form, with where its interfaces were (`net` or
/// `net.interfaces`) for messages.
#[derive(Debug, Default)]
pub(crate) struct RawNet {
    pub weight: Option<u64>,
    pub interfaces: Vec<RawInterface>,
    pub list: &'static str,
}

/// `vsock`, with Firecracker's field names.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVsock {
    pub guest_cid: Option<u64>,
    pub uds_path: Option<PathBuf>,
}

/// `io`: the VM's share of `host.io`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawShare {
    pub weight: Option<u64>,
}

/// One VM definition after the structural step: each section parsed on its own.
#[derive(Debug)]
pub(crate) struct ParsedVm {
    pub name: Parsed<String>,
    pub kernel: Parsed<RawKernel>,
    pub cpu: Parsed<RawCpu>,
    pub memory: Parsed<RawMemory>,
    pub serial: Parsed<RawSerial>,
    pub acl: Parsed<super::acl::RawAcl>,
    pub drives: Parsed<Vec<RawDrive>>,
    pub net: Parsed<RawNet>,
    pub vsock: Parsed<RawVsock>,
    pub io: Parsed<RawShare>,
}

impl ParsedVm {
    /// Parses the VM definition `value` found at `path` (`""` for a single-VM
    /// file, `vms[i]` in a monitor file). `None` if it is not an object.
    pub(crate) fn parse(value: Value, path: &str, errors: &mut Errors) -> Option<Self> {
        if !value.is_object() {
            errors.push(
                shown(path),
                format!(
                    "expected an object (a VM definition), found {}",
                    describe(&value)
                ),
            );
            return None;
        }
        let raw: RawVm = parse_container(value, path, errors)?;
        let name = match raw.name {
            None | Some(Value::Null) => Parsed::Absent,
            Some(v) => match parse_value(v, &join(path, "name"), errors) {
                Some(name) => Parsed::Ok(name),
                None => Parsed::Failed,
            },
        };
        Some(Self {
            name,
            kernel: parse_optional(raw.kernel, &join(path, "kernel"), errors),
            cpu: parse_optional(raw.cpu, &join(path, "cpu"), errors),
            memory: parse_optional(raw.memory, &join(path, "memory"), errors),
            serial: parse_optional(raw.serial, &join(path, "serial"), errors),
            acl: parse_optional(raw.acl, &join(path, "acl"), errors),
            drives: parse_list(raw.drives, &join(path, "drives"), errors),
            net: parse_net(raw.net, path, errors),
            vsock: parse_optional(raw.vsock, &join(path, "vsock"), errors),
            io: parse_optional(raw.io, &join(path, "io"), errors),
        })
    }

    /// `serial.stdin` if it was given explicitly.
    pub(crate) fn explicit_stdin(&self) -> Option<bool> {
        match &self.serial {
            Parsed::Ok(serial) => serial.stdin,
            _ => None,
        }
    }
}

/// `net`: a list of interfaces, or `{"weight": N, "interfaces": [...]}`.
fn parse_net(value: Option<Value>, vm: &str, errors: &mut Errors) -> Parsed<RawNet> {
    let path = join(vm, "net");
    if let Some(Value::Array(_)) = value {
        return parse_list(value, &path, errors).map(|interfaces| RawNet {
            weight: None,
            interfaces,
            list: "net",
        });
    }
    parse_optional::<RawNetObject>(value, &path, errors).and_then(|object| {
        let list = join(&path, "interfaces");
        let interfaces = parse_list(object.interfaces, &list, errors).or_default();
        interfaces.map_or(Parsed::Failed, |interfaces| {
            Parsed::Ok(RawNet {
                weight: object.weight,
                interfaces,
                list: "net.interfaces",
            })
        })
    })
}
