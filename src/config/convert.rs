//! `hearth convert`: any config file Hearth accepts (a Firecracker file in
//! particular) written back as Hearth's own JSON, every field explicit and
//! every path absolute, so that a user can move over for good. A validated
//! spec is turned back into the raw section structs and serialized.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::error::{ConfigError, ConfigErrors};
use super::net::format_mac;
use super::raw::*;
use super::spec::*;

/// Loads and validates the config file at `path` (any form) and returns the
/// equivalent Hearth config as pretty JSON: the single-VM form for one VM
/// with default host policy, else a monitor file. Loading the result gives
/// the same [`MonitorSpec`].
pub fn convert_file(path: &Path) -> Result<String, ConfigErrors> {
    let spec = super::load_file(path)?;
    let value = spec_to_json(&spec)?;
    Ok(format!("{value:#}\n"))
}

/// The Hearth JSON of a validated spec.
pub fn spec_to_json(spec: &MonitorSpec) -> Result<Value, ConfigErrors> {
    if let ([vm], true) = (spec.vms.as_slice(), spec.host == HostSpec::default()) {
        return vm_to_json(vm, "");
    }
    let mut vms = Vec::with_capacity(spec.vms.len());
    let mut errors = Vec::new();
    for (i, vm) in spec.vms.iter().enumerate() {
        match vm_to_json(vm, &format!("vms[{i}].")) {
            Ok(value) => vms.push(value),
            Err(e) => errors.extend(e),
        }
    }
    if let Some(errors) = ConfigErrors::from_vec(errors) {
        return Err(errors);
    }
    Ok(json!({ "host": host_to_json(&spec.host), "vms": vms }))
}

fn host_to_json(host: &HostSpec) -> Value {
    let share = |s: &HostShareSpec| RawHostShare {
        bytes_per_s: s.bytes_per_s,
        ops_per_s: s.ops_per_s,
        tick_ms: Some(s.tick_ms.into()),
    };
    let mut out = Map::new();
    let cpu = RawHostCpu {
        cpus: host
            .cpus
            .as_ref()
            .map(|c| c.iter().map(|&n| n as u64).collect()),
        tick_ms: Some(host.sched_tick_ms.into()),
        scheduler: Some(host.scheduler),
        realtime: Some(host.realtime_loop),
    };
    out.insert("cpu".into(), to_value(&cpu));
    out.insert("seccomp".into(), json!(host.seccomp));
    if let Some(api) = &host.api {
        out.insert("api".into(), super::api::api_to_json(api));
    }
    if let Some(m) = host.memory {
        let memory = RawHostMemory {
            budget_mib: Some(m.budget_mib),
            tick_ms: Some(m.tick_ms.into()),
        };
        out.insert("memory".into(), to_value(&memory));
    }
    for (key, limit) in [("io", &host.io), ("net", &host.net)] {
        if let Some(limit) = limit {
            out.insert(key.into(), to_value(&share(limit)));
        }
    }
    if let Some(s) = &host.sandbox {
        out.insert("sandbox".into(), json!({"uid": s.uid, "gid": s.gid}));
    }
    Value::Object(out)
}

/// A raw section as JSON, without its absent (`null`) fields.
fn to_value(section: &impl Serialize) -> Value {
    let mut value = serde_json::to_value(section).unwrap_or(Value::Null);
    strip_nulls(&mut value);
    value
}

fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// A path for JSON, which cannot hold one that is not UTF-8.
fn utf8(path: &Path, field: String, errors: &mut Vec<ConfigError>) -> PathBuf {
    if path.to_str().is_none() {
        errors.push(ConfigError::new(
            field,
            format!("{path:?} is not UTF-8, so it cannot be written in a JSON config"),
        ));
    }
    path.to_path_buf()
}

fn vm_to_json(vm: &VmSpec, prefix: &str) -> Result<Value, ConfigErrors> {
    let mut errors = Vec::new();
    let at = |field: &str| format!("{prefix}{field}");
    let kernel = RawKernel {
        path: Some(utf8(&vm.kernel.path, at("kernel.path"), &mut errors)),
        initrd: vm
            .kernel
            .initrd
            .as_ref()
            .map(|i| utf8(i, at("kernel.initrd"), &mut errors)),
        cmdline: Some(vm.kernel.cmdline.clone()),
        protocol: Some(match vm.kernel.protocol {
            BootProtocol::Auto => RawProtocol::Auto,
            BootProtocol::Linux => RawProtocol::Linux,
            BootProtocol::Pvh => RawProtocol::Pvh,
        }),
    };
    let cpu = RawCpu {
        vcpus: Some(vm.vcpus.into()),
        weight: Some(vm.cpu.weight.into()),
        max: vm.cpu.max,
    };
    let (output, path) = match &vm.serial.output {
        SerialOutput::Stdout => (RawSerialOutput::Stdout, None),
        SerialOutput::Off => (RawSerialOutput::Off, None),
        SerialOutput::File(path) => (RawSerialOutput::File, Some(path)),
    };
    let serial = RawSerial {
        output: Some(output),
        path: path.map(|p| utf8(p, at("serial.path"), &mut errors)),
        stdin: Some(vm.serial.stdin),
    };
    let drives: Vec<Value> = (vm.drives.iter().enumerate())
        .map(|(i, d)| {
            to_value(&drive(
                d,
                utf8(&d.path, at(&format!("drives[{i}].path")), &mut errors),
            ))
        })
        .collect();
    let vsock = vm.vsock.as_ref().map(|v| RawVsock {
        guest_cid: Some(v.guest_cid.into()),
        uds_path: Some(utf8(&v.uds_path, at("vsock.uds_path"), &mut errors)),
    });
    if let Some(errors) = ConfigErrors::from_vec(errors) {
        return Err(errors);
    }
    let mut out = json!({
        "name": vm.name,
        "kernel": to_value(&kernel),
        "cpu": to_value(&cpu),
        "memory": to_value(&memory(vm)),
        "serial": to_value(&serial),
    });
    let map = out
        .as_object_mut()
        .expect("json! of an object literal is an object");
    if let Some(acl) = super::acl::acl_to_json(&vm.acl) {
        map.insert("acl".into(), acl);
    }
    if !drives.is_empty() {
        map.insert("drives".into(), Value::Array(drives));
    }
    if !vm.net.is_empty() || vm.net_share != ShareSpec::default() {
        let interfaces: Vec<Value> = vm.net.iter().map(|n| to_value(&interface(n))).collect();
        let weight = vm.net_share.weight;
        map.insert(
            "net".into(),
            json!({"weight": weight, "interfaces": interfaces}),
        );
    }
    if let Some(vsock) = vsock {
        map.insert("vsock".into(), to_value(&vsock));
    }
    if vm.io != ShareSpec::default() {
        map.insert("io".into(), json!({"weight": vm.io.weight}));
    }
    Ok(out)
}

/// A VM's `memory` section: every field, so the file says what runs.
fn memory(vm: &VmSpec) -> RawMemory {
    let m = &vm.memory;
    RawMemory {
        size_mib: Some(vm.memory_mib),
        floor_mib: Some(m.floor_mib),
        ceiling_mib: Some(m.ceiling_mib),
        weight: Some(m.weight.into()),
        balloon: match m.balloon {
            BalloonMode::Auto => None,
            BalloonMode::On => Some(true),
            BalloonMode::Off => Some(false),
        },
        balloon_mib: m.balloon_options.target_mib,
        deflate_on_oom: Some(m.balloon_options.deflate_on_oom),
        stats_interval_s: Some(m.balloon_options.stats_interval_s.into()),
        prefault: m.prefault.then_some(true),
        free_page_reporting: Some(m.balloon_options.free_page_reporting),
    }
}

fn drive(d: &DriveSpec, path: PathBuf) -> RawDrive {
    RawDrive {
        id: Some(d.id.clone()),
        path: Some(path),
        read_only: Some(d.read_only),
        root: Some(d.root),
        partuuid: d.partuuid.clone(),
        cache: Some(match d.cache {
            CacheMode::Unsafe => RawCache::Unsafe,
            CacheMode::Writeback => RawCache::Writeback,
        }),
        engine: Some(match d.engine {
            IoEngine::Sync => RawEngine::Sync,
            IoEngine::IoUring => RawEngine::IoUring,
        }),
        rate_limiter: rate_limiter(&d.rate_limiter),
    }
}

fn interface(n: &NetSpec) -> RawInterface {
    RawInterface {
        id: Some(n.id.clone()),
        tap: Some(n.tap.clone()),
        mac: Some(format_mac(n.mac)),
        mtu: n.mtu.map(u64::from),
        rx_rate_limiter: rate_limiter(&n.rx_rate_limiter),
        tx_rate_limiter: rate_limiter(&n.tx_rate_limiter),
    }
}

fn rate_limiter(limiter: &RateLimiterSpec) -> Option<RawRateLimiter> {
    let bucket = |b: &TokenBucketSpec| RawBucket {
        size: Some(b.size),
        one_time_burst: Some(b.one_time_burst),
        refill_time: Some(b.refill_time_ms),
    };
    (*limiter != RateLimiterSpec::default()).then(|| RawRateLimiter {
        bandwidth: limiter.bandwidth.as_ref().map(bucket),
        ops: limiter.ops.as_ref().map(bucket),
    })
}
