//! `hearth convert`: any config file Hearth accepts (a Firecracker file in
//! particular) written back as Hearth's own JSON, every field explicit and
//! every path absolute, so that a user can move over for good.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::error::{ConfigError, ConfigErrors};
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
    for (i, vm) in spec.vms.iter().enumerate() {
        vms.push(vm_to_json(vm, &format!("vms[{i}].")));
    }
    let vms: Vec<Value> = collect(vms)?;
    let mut cpu = Map::new();
    if let Some(cpus) = &spec.host.cpus {
        cpu.insert("cpus".into(), json!(cpus));
    }
    cpu.insert("tick_ms".into(), json!(spec.host.sched_tick_ms));
    cpu.insert("scheduler".into(), json!(spec.host.scheduler));
    let mut host = Map::new();
    host.insert("cpu".into(), Value::Object(cpu));
    host.insert("seccomp".into(), json!(spec.host.seccomp));
    if let Some(api) = &spec.host.api {
        host.insert("api".into(), super::api::api_to_json(api));
    }
    if let Some(m) = spec.host.memory {
        host.insert(
            "memory".into(),
            json!({"budget_mib": m.budget_mib, "tick_ms": m.tick_ms}),
        );
    }
    Ok(json!({ "host": host, "vms": vms }))
}

/// A VM's `memory` section: every field, so the file says what runs.
fn memory_to_json(vm: &VmSpec) -> Value {
    let m = &vm.memory;
    let mut memory = Map::new();
    memory.insert("size_mib".into(), json!(vm.memory_mib));
    memory.insert("floor_mib".into(), json!(m.floor_mib));
    memory.insert("ceiling_mib".into(), json!(m.ceiling_mib));
    memory.insert("weight".into(), json!(m.weight));
    match m.balloon {
        BalloonMode::Auto => {}
        BalloonMode::On => {
            memory.insert("balloon".into(), json!(true));
        }
        BalloonMode::Off => {
            memory.insert("balloon".into(), json!(false));
        }
    }
    if let Some(target) = m.balloon_options.target_mib {
        memory.insert("balloon_mib".into(), json!(target));
    }
    memory.insert(
        "deflate_on_oom".into(),
        json!(m.balloon_options.deflate_on_oom),
    );
    memory.insert(
        "stats_interval_s".into(),
        json!(m.balloon_options.stats_interval_s),
    );
    memory.insert(
        "free_page_reporting".into(),
        json!(m.balloon_options.free_page_reporting),
    );
    if m.prefault {
        memory.insert("prefault".into(), json!(true));
    }
    Value::Object(memory)
}

/// All values, or every error of the failed ones.
fn collect(results: Vec<Result<Value, ConfigErrors>>) -> Result<Vec<Value>, ConfigErrors> {
    let mut values = Vec::with_capacity(results.len());
    let mut errors = Vec::new();
    for result in results {
        match result {
            Ok(value) => values.push(value),
            Err(e) => errors.extend(e),
        }
    }
    match ConfigErrors::from_vec(errors) {
        Some(errors) => Err(errors),
        None => Ok(values),
    }
}

/// A path as a JSON string; a non-UTF-8 path cannot be written in JSON.
fn path_value(path: &Path, field: String) -> Result<Value, ConfigErrors> {
    path.to_str().map(|s| json!(s)).ok_or_else(|| {
        ConfigErrors::one(ConfigError::new(
            field,
            format!("{path:?} is not UTF-8, so it cannot be written in a JSON config"),
        ))
    })
}

fn vm_to_json(vm: &VmSpec, prefix: &str) -> Result<Value, ConfigErrors> {
    let mut kernel = Map::new();
    kernel.insert(
        "path".into(),
        path_value(&vm.kernel.path, format!("{prefix}kernel.path"))?,
    );
    if let Some(initrd) = &vm.kernel.initrd {
        kernel.insert(
            "initrd".into(),
            path_value(initrd, format!("{prefix}kernel.initrd"))?,
        );
    }
    kernel.insert("cmdline".into(), json!(vm.kernel.cmdline));
    let protocol = match vm.kernel.protocol {
        BootProtocol::Auto => "auto",
        BootProtocol::Linux => "linux",
        BootProtocol::Pvh => "pvh",
    };
    kernel.insert("protocol".into(), json!(protocol));

    let mut cpu = Map::new();
    cpu.insert("vcpus".into(), json!(vm.vcpus));
    cpu.insert("weight".into(), json!(vm.cpu.weight));
    if let Some(max) = vm.cpu.max {
        cpu.insert("max".into(), json!(max));
    }

    let mut serial = Map::new();
    match &vm.serial.output {
        SerialOutput::Stdout => {
            serial.insert("output".into(), json!("stdout"));
        }
        SerialOutput::Off => {
            serial.insert("output".into(), json!("off"));
        }
        SerialOutput::File(path) => {
            serial.insert("output".into(), json!("file"));
            serial.insert(
                "path".into(),
                path_value(path, format!("{prefix}serial.path"))?,
            );
        }
    }
    serial.insert("stdin".into(), json!(vm.serial.stdin));

    let mut out = json!({
        "name": vm.name,
        "kernel": kernel,
        "cpu": cpu,
        "memory": memory_to_json(vm),
        "serial": serial,
    });
    if let (Some(acl), Some(map)) = (super::acl::acl_to_json(&vm.acl), out.as_object_mut()) {
        map.insert("acl".into(), acl);
    }
    Ok(out)
}
