//! The VMs of one monitor: a monitor file (`{"host": ..., "vms": [...]}`),
//! or one more VM for a monitor that is already running. Either way each VM
//! is validated alone, then against the others: unique names, one reader of
//! stdin, what no two VMs may share (see `claims.rs`), memory admission.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::claims::Claims;
use super::error::{ConfigError, ConfigErrors, Errors, ROOT};
use super::parse::{parse_container, parse_json, parse_optional, Parsed};
use super::raw::{ParsedVm, RawHost, RawMonitor};
use super::spec::{HostSpec, MonitorSpec, VmSpec};
use super::validate::{resolve_name, validate_vm, Ctx, Naming};
use super::{detect_form, syntax_error, Form};

/// A monitor file: `host` first (the VMs' balloons depend on its budget),
/// then the VMs, then the rules that span both.
pub(crate) fn monitor_file(
    map: Map<String, Value>,
    ctx: Ctx<'_>,
    errors: &mut Errors,
) -> Option<MonitorSpec> {
    let had_vms = map.contains_key("vms");
    let raw: RawMonitor = parse_container(Value::Object(map), "", errors)?;
    let host: Parsed<RawHost> = parse_optional(raw.host, "host", errors);
    let host = super::host::validate_host(host, ctx.host, errors);
    let budget = host.as_ref().is_some_and(|h| h.memory.is_some());
    let vms = match (&raw.vms, ctx.serving) {
        (None, true) => Some(Vec::new()),
        (Some(v), true) if v.is_empty() => Some(Vec::new()),
        _ => monitor_vms(raw.vms, had_vms, Ctx { budget, ..ctx }, errors),
    };
    if let (Some(host), Some(vms)) = (&host, &vms) {
        super::api::check_acl_vms(host.api.as_ref(), vms, errors);
    }
    let (mut vms, host) = (vms?, host?);
    super::memory::check_admission(&host, &mut vms, errors);
    Some(MonitorSpec { vms, host })
}

/// The VMs of a monitor file: structure, cross-VM rules, then each VM.
fn monitor_vms(
    vms: Option<Vec<Value>>,
    had_vms: bool,
    ctx: Ctx<'_>,
    errors: &mut Errors,
) -> Option<Vec<VmSpec>> {
    let values = match vms {
        Some(values) if !values.is_empty() => values,
        Some(_) => {
            errors.push("vms", "must list at least one VM (it is empty)");
            return None;
        }
        None => {
            if !had_vms {
                errors.push("vms", "required: a monitor file lists its VMs in \"vms\"");
            }
            return None;
        }
    };

    // Structure of every VM first, then the cross-VM rules, then semantics.
    let parsed: Vec<Option<ParsedVm>> = values
        .into_iter()
        .enumerate()
        .map(|(i, value)| ParsedVm::parse(value, &format!("vms[{i}]"), errors))
        .collect();

    let stdin = resolve_stdin(&parsed, errors);

    let mut used: HashMap<String, usize> = HashMap::new();
    let mut names = Vec::with_capacity(parsed.len());
    for (i, vm) in parsed.iter().enumerate() {
        let name = vm.as_ref().and_then(|vm| {
            let naming = Naming::Json(format!("vms[{i}]"));
            let name = resolve_name(&vm.name, format!("vm{i}"), &naming, errors)?;
            let holder = used.get(&name).map(|first| format!("vms[{first}]"));
            used.entry(name.clone()).or_insert(i);
            unique(vm, name, holder, &naming, errors)
        });
        names.push(name);
    }

    let mut claims = Claims::default();
    let mut specs = Vec::with_capacity(parsed.len());
    for (i, ((vm, name), stdin)) in parsed.into_iter().zip(names).zip(stdin).enumerate() {
        let spec = vm.and_then(|vm| {
            let naming = Naming::Json(format!("vms[{i}]"));
            validate_vm(vm, name, stdin, &naming, ctx, &mut claims, errors)
        });
        specs.push(spec);
    }
    specs.into_iter().collect()
}

/// `name`, unless `holder` already has it (reported).
fn unique(
    vm: &ParsedVm,
    name: String,
    holder: Option<String>,
    naming: &Naming,
    errors: &mut Errors,
) -> Option<String> {
    let Some(holder) = holder else {
        return Some(name);
    };
    let how = match vm.name {
        Parsed::Absent => " (it is this VM's default name; give it a \"name\")",
        _ => "",
    };
    errors.push(
        naming.at("name"),
        format!("{name:?} is already used by {holder}{how}"),
    );
    None
}

/// Decides which VM reads the monitor's stdin: at most one may say
/// `"stdin": true`; without any, the first VM does unless it says `false`.
fn resolve_stdin(parsed: &[Option<ParsedVm>], errors: &mut Errors) -> Vec<bool> {
    let explicit: Vec<Option<bool>> = parsed
        .iter()
        .map(|vm| vm.as_ref().and_then(ParsedVm::explicit_stdin))
        .collect();
    let mut reader: Option<usize> = None;
    for (i, value) in explicit.iter().enumerate() {
        if *value != Some(true) {
            continue;
        }
        match reader {
            None => reader = Some(i),
            Some(first) => errors.push(
                format!("vms[{i}].serial.stdin"),
                format!("true, but vms[{first}] already reads stdin; only one VM can"),
            ),
        }
    }
    explicit
        .iter()
        .enumerate()
        .map(|(i, value)| match reader {
            Some(r) => r == i,
            None => i == 0 && *value != Some(false),
        })
        .collect()
}

/// One VM definition for a monitor running `existing` under `host` (see
/// `parse_vm_for_monitor`); `ctx.budget` is `host`'s.
pub(crate) fn vm_for_monitor(
    text: &str,
    ctx: Ctx<'_>,
    host: &HostSpec,
    existing: &[VmSpec],
) -> Result<VmSpec, ConfigErrors> {
    let mut errors = Errors::default();
    let value = parse_json(text, &mut errors).map_err(syntax_error)?;
    if let Value::Object(map) = &value {
        if detect_form(map) != Ok(Form::SingleVm) {
            return Err(ConfigErrors::one(ConfigError::new(
                ROOT,
                "expected one VM definition (name, kernel, cpu, ...), not a monitor file \
                 or a Firecracker config file",
            )));
        }
    }
    let Some(vm) = ParsedVm::parse(value, "", &mut errors) else {
        return errors.finish(None);
    };
    let naming = Naming::Json(String::new());
    let default = format!("vm{}", existing.len());
    let name = resolve_name(&vm.name, default, &naming, &mut errors).and_then(|name| {
        let holder = existing.iter().any(|v| v.name == name);
        let holder = holder.then(|| "a running VM".to_string());
        unique(&vm, name, holder, &naming, &mut errors)
    });
    let stdin = match (
        vm.explicit_stdin(),
        existing.iter().find(|v| v.serial.stdin),
    ) {
        (Some(true), Some(reader)) => {
            let message = format!(
                "true, but VM {:?} already reads stdin; only one VM can",
                reader.name
            );
            errors.push("serial.stdin", message);
            false
        }
        (explicit, _) => explicit.unwrap_or(false),
    };
    let mut claims = Claims::running(existing);
    let mut spec = validate_vm(vm, name, stdin, &naming, ctx, &mut claims, &mut errors);
    if let Some(spec) = &mut spec {
        super::memory::admit_one(host, spec, existing, &mut errors);
    }
    errors.finish(spec)
}
