//! VM configuration: JSON files (or CLI flags) in, validated [`MonitorSpec`] out.
//!
//! Three steps, three types (see `docs/config.md` for the schema):
//! 1. [`raw`]: the JSON is parsed in layers into plain serde structs, so that
//!    every unknown key and ill-typed field of every section is reported;
//! 2. [`validate`]: each VM that parsed is checked semantically (ranges,
//!    names, files, the kernel image via [`kernel_probe`]) and cross-checked
//!    against the other VMs of a monitor file;
//! 3. the builder (elsewhere) turns the [`spec`] types into KVM objects.
//!
//! A Firecracker config file is accepted as a third form and mapped onto one
//! VM ([`firecracker`]); [`convert_file`] writes any accepted file back as
//! Hearth's own JSON.
//!
//! All problems are reported at once as [`ConfigErrors`], each naming its JSON
//! path (or CLI flag) and the bad value. Nothing here touches KVM.

mod acl;
mod api;
mod convert;
mod cpu;
mod error;
mod firecracker;
pub mod kernel_probe;
mod memory;
mod parse;
mod raw;
pub mod spec;
#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

pub use acl::{
    size_bit, AclAction, AclRuleSpec, AclSpec, AclTarget, OnViolation, ALL_SIZES,
    DEFAULT_LOG_PER_SECOND, MAX_ACL_RULES,
};
pub use api::own_uid;
pub use convert::{convert_file, spec_to_json};
pub use error::{ConfigError, ConfigErrors};
pub use firecracker::{
    FIRECRACKER_DEFAULT_BOOT_ARGS, FIRECRACKER_DEFAULT_MEM_MIB, FIRECRACKER_MAX_VCPUS,
};
pub use spec::*;

use error::{humanize_serde, Errors, ROOT};
use parse::{parse_container, parse_optional, Parsed};
use raw::{ParsedVm, RawHost, RawMonitor};
use validate::{resolve_name, validate_vm, Ctx, HostInfo, Naming};

/// Largest config file read.
const MAX_CONFIG_LEN: u64 = 16 << 20;

/// Reads and validates the config file at `path`. Relative paths inside it
/// are resolved against the file's directory. A file that cannot be read is
/// reported as one error with path `<file>`.
pub fn load_file(path: &Path) -> Result<MonitorSpec, ConfigErrors> {
    let file_error = |message: String| {
        ConfigErrors::one(ConfigError::new("<file>", format!("{path:?} {message}")))
    };
    let (file, len) =
        kernel_probe::open_regular(path, "a config file").map_err(|e| file_error(e.to_string()))?;
    if len > MAX_CONFIG_LEN {
        return Err(file_error(format!(
            "is {len} bytes, larger than the {MAX_CONFIG_LEN} bytes a config file may be"
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_LEN)
        .read_to_end(&mut bytes)
        .map_err(|e| file_error(format!("cannot be read: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        file_error(format!(
            "is not UTF-8 text (bad byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    let absolute = absolute(path, "<file>")?;
    let base_dir = absolute.parent().unwrap_or(Path::new("/"));
    parse_with(&text, base_dir, &HostInfo::probe())
}

/// Parses and validates config text; relative paths in it are resolved
/// against `base_dir` (itself made absolute against the current directory).
pub fn parse_str(text: &str, base_dir: &Path) -> Result<MonitorSpec, ConfigErrors> {
    let base_dir = absolute(base_dir, "<base_dir>")?;
    parse_with(text, &base_dir, &HostInfo::probe())
}

/// One VM described by `hearth run` flags; `None` means "use the default".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmFlags {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub vcpus: Option<u64>,
    pub memory_mib: Option<u64>,
    pub name: Option<String>,
}

/// Validates one VM given by CLI flags, with serial on stdout and stdin.
/// Errors name the flag (`--vcpus: 0 is out of range (1..=254)`); relative
/// paths are resolved against the current directory.
pub fn from_flags(flags: &VmFlags) -> Result<MonitorSpec, ConfigErrors> {
    let cwd = absolute(Path::new("."), "<cwd>")?;
    let vm = ParsedVm {
        name: flags.name.clone().map_or(Parsed::Absent, Parsed::Ok),
        kernel: Parsed::Ok(raw::RawKernel {
            path: flags.kernel.clone(),
            initrd: flags.initrd.clone(),
            cmdline: flags.cmdline.clone(),
            protocol: None,
        }),
        cpu: Parsed::Ok(raw::RawCpu {
            vcpus: flags.vcpus,
            ..Default::default()
        }),
        memory: Parsed::Ok(raw::RawMemory {
            size_mib: flags.memory_mib,
            ..Default::default()
        }),
        serial: Parsed::Absent,
        acl: Parsed::Absent,
    };
    let host = HostInfo::probe();
    let ctx = Ctx {
        base_dir: &cwd,
        host: &host,
    };
    let mut errors = Errors::default();
    let naming = Naming::Flags;
    let name = resolve_name(&vm.name, DEFAULT_VM_NAME.to_string(), &naming, &mut errors);
    let spec = validate_vm(vm, name, true, &naming, ctx, &mut errors);
    errors.finish(spec.map(|vm| MonitorSpec {
        vms: vec![vm],
        host: HostSpec::default(),
    }))
}

fn absolute(path: &Path, what: &str) -> Result<PathBuf, ConfigErrors> {
    std::path::absolute(path).map_err(|e| {
        ConfigErrors::one(ConfigError::new(
            what,
            format!("cannot make {path:?} absolute: {e}"),
        ))
    })
}

/// The three shapes a config file can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// The top-level object is one VM definition.
    SingleVm,
    /// `{"host": {...}, "vms": [...]}`.
    Monitor,
    /// A Firecracker `--config-file` JSON (`boot-source`, `machine-config`, ...).
    Firecracker,
}

/// Decides the form from the top-level keys.
fn detect_form(map: &Map<String, Value>) -> Result<Form, ConfigError> {
    let firecracker_keys: Vec<String> = map
        .keys()
        .filter(|k| firecracker::FIRECRACKER_KEYS.contains(&k.as_str()))
        .map(|k| format!("{k:?}"))
        .collect();
    if !firecracker_keys.is_empty() {
        let hearth_keys: Vec<String> = map
            .keys()
            .filter(|k| {
                raw::VM_KEYS.contains(&k.as_str()) || raw::MONITOR_KEYS.contains(&k.as_str())
            })
            .map(|k| format!("{k:?}"))
            .collect();
        if hearth_keys.is_empty() {
            return Ok(Form::Firecracker);
        }
        return Err(ConfigError::new(
            ROOT,
            format!(
                "mixes Firecracker config keys ({}) with Hearth config keys ({}); a file is \
                 either a Firecracker config file or a Hearth config, not both \
                 (`hearth convert` turns a Firecracker file into Hearth's form)",
                firecracker_keys.join(", "),
                hearth_keys.join(", "),
            ),
        ));
    }
    let monitor_keys: Vec<&str> = ["vms", "host"]
        .into_iter()
        .filter(|k| map.contains_key(*k))
        .collect();
    if monitor_keys.is_empty() {
        return Ok(Form::SingleVm);
    }
    let stray: Vec<String> = map
        .keys()
        .filter(|k| raw::VM_KEYS.contains(&k.as_str()))
        .map(|k| format!("{k:?}"))
        .collect();
    if stray.is_empty() {
        return Ok(Form::Monitor);
    }
    Err(ConfigError::new(
        ROOT,
        format!(
            "has \"{}\" (a monitor file) and also the VM-definition key(s) {} at the top level; \
             move them into an entry of \"vms\"",
            monitor_keys.join("\" and \""),
            stray.join(", "),
        ),
    ))
}

/// Parses and validates `text` with an already absolute `base_dir`.
fn parse_with(text: &str, base_dir: &Path, host: &HostInfo) -> Result<MonitorSpec, ConfigErrors> {
    let mut errors = Errors::default();
    let value = parse::parse_json(text, &mut errors).map_err(syntax_error)?;
    let Value::Object(map) = value else {
        return Err(ConfigErrors::one(ConfigError::new(
            ROOT,
            format!(
                "expected an object (a VM definition, or a monitor file with \"vms\"), found {}",
                parse::describe(&value)
            ),
        )));
    };
    let ctx = Ctx { base_dir, host };
    let spec = match detect_form(&map) {
        Err(e) => return Err(ConfigErrors::one(e)),
        Ok(Form::SingleVm) => single_vm(map, ctx, &mut errors),
        Ok(Form::Monitor) => monitor(map, ctx, &mut errors),
        Ok(Form::Firecracker) => firecracker_vm(map, ctx, &mut errors),
    };
    errors.finish(spec)
}

fn syntax_error(e: serde_json::Error) -> ConfigErrors {
    let (line, column) = (e.line(), e.column());
    let full = e.to_string();
    let suffix = format!(" at line {line} column {column}");
    let message = full.strip_suffix(&suffix).unwrap_or(&full);
    ConfigErrors::one(ConfigError::new(
        format!("line {line}, column {column}"),
        format!("invalid JSON: {}", humanize_serde(message)),
    ))
}

fn single_vm(map: Map<String, Value>, ctx: Ctx<'_>, errors: &mut Errors) -> Option<MonitorSpec> {
    let vm = ParsedVm::parse(Value::Object(map), "", errors)?;
    let naming = Naming::Json(String::new());
    let stdin = vm.explicit_stdin().unwrap_or(true);
    let name = resolve_name(&vm.name, DEFAULT_VM_NAME.to_string(), &naming, errors);
    validate_vm(vm, name, stdin, &naming, ctx, errors).map(|vm| MonitorSpec {
        vms: vec![vm],
        host: HostSpec::default(),
    })
}

/// A Firecracker file: one VM named `vm0`, serial on stdout reading stdin
/// (as Firecracker's), errors named by Firecracker's fields.
fn firecracker_vm(
    map: Map<String, Value>,
    ctx: Ctx<'_>,
    errors: &mut Errors,
) -> Option<MonitorSpec> {
    let vm = firecracker::parse_firecracker(map, errors);
    let naming = Naming::Firecracker;
    let name = Some(DEFAULT_VM_NAME.to_string());
    validate_vm(vm, name, true, &naming, ctx, errors).map(|vm| MonitorSpec {
        vms: vec![vm],
        host: HostSpec::default(),
    })
}

fn monitor(map: Map<String, Value>, ctx: Ctx<'_>, errors: &mut Errors) -> Option<MonitorSpec> {
    let had_vms = map.contains_key("vms");
    let raw: RawMonitor = parse_container(Value::Object(map), "", errors)?;
    let host: Parsed<RawHost> = parse_optional(raw.host, "host", errors);
    let host = cpu::validate_host(host, ctx.host, errors);
    let vms = monitor_vms(raw.vms, had_vms, ctx, errors);
    if let (Some(host), Some(vms)) = (&host, &vms) {
        api::check_acl_vms(host.api.as_ref(), vms, errors);
    }
    let (mut vms, host) = (vms?, host?);
    memory::check_admission(&host, &mut vms, errors);
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
        let Some(vm) = vm else {
            names.push(None);
            continue;
        };
        let naming = Naming::Json(format!("vms[{i}]"));
        let name = resolve_name(&vm.name, format!("vm{i}"), &naming, errors);
        let name = name.and_then(|name| match used.get(&name) {
            Some(&first) => {
                let how = if matches!(vm.name, Parsed::Absent) {
                    " (it is this VM's default name; give it a \"name\")"
                } else {
                    ""
                };
                errors.push(
                    naming.at("name"),
                    format!("{name:?} is already used by vms[{first}]{how}"),
                );
                None
            }
            None => {
                used.insert(name.clone(), i);
                Some(name)
            }
        });
        names.push(name);
    }

    let mut specs = Vec::with_capacity(parsed.len());
    for (i, ((vm, name), stdin)) in parsed.into_iter().zip(names).zip(stdin).enumerate() {
        let spec = vm.and_then(|vm| {
            let naming = Naming::Json(format!("vms[{i}]"));
            validate_vm(vm, name, stdin, &naming, ctx, errors)
        });
        specs.push(spec);
    }
    specs.into_iter().collect()
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
