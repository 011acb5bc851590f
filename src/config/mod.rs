//! VM configuration: JSON files (or CLI flags) in, validated [`MonitorSpec`] out.
//!
//! Three steps, three types (see `docs/config.md` for the schema):
//! 1. `raw`: each section of the JSON is deserialized on its own into a
//!    typed struct (`parse`), so that every unknown key and ill-typed field
//!    of every section is reported with its path;
//! 2. `validate`: each VM that parsed is checked semantically (ranges,
//!    names, files, the kernel image via [`kernel_probe`], its devices'
//!    plan) and against the other VMs of its monitor (`monitor`, `claims`);
//! 3. the builder (elsewhere) turns the [`spec`] types into KVM objects,
//!    registering the devices of [`VmSpec::device_plan`].
//!
//! A Firecracker config file is accepted as a third form and mapped onto one
//! VM (`firecracker`); [`convert_file`] writes any accepted file back as
//! Hearth's own JSON.
//!
//! All problems are reported at once as [`ConfigErrors`], each naming its JSON
//! path (or CLI flag) and the bad value. Nothing here touches KVM.

mod acl;
mod api;
mod block;
mod claims;
mod convert;
mod cpu;
mod devices;
mod error;
mod firecracker;
mod host;
pub mod kernel_probe;
mod memory;
mod monitor;
mod net;
mod parse;
mod raw;
pub mod spec;
#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests;
mod validate;

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

pub use acl::{
    size_bit, AclAction, AclRuleSpec, AclSpec, AclTarget, OnViolation, ALL_SIZES,
    DEFAULT_LOG_PER_SECOND, MAX_ACL_RULES,
};
pub use api::own_uid;
pub use convert::{convert_file, spec_to_json};
pub use devices::{DeviceKind, DevicePlan, LegacyDevice, PlannedDevice, LEGACY_DEVICES};
pub use error::{ConfigError, ConfigErrors};
pub use firecracker::{
    FIRECRACKER_DEFAULT_BOOT_ARGS, FIRECRACKER_DEFAULT_MEM_MIB, FIRECRACKER_MAX_VCPUS,
};
pub use host::{sandbox_user, DEFAULT_SANDBOX_USER};
pub use spec::*;

use claims::Claims;
use error::{humanize_serde, Errors, ROOT};
use parse::Parsed;
use raw::ParsedVm;
use validate::{resolve_name, validate_vm, Ctx, HostInfo, Naming, NET_DIR};

/// Largest config file read.
const MAX_CONFIG_LEN: u64 = 16 << 20;

/// Reads and validates the config file at `path`. Relative paths inside it
/// are resolved against the file's directory. A file that cannot be read is
/// reported as one error with path `<file>`.
pub fn load_file(path: &Path) -> Result<MonitorSpec, ConfigErrors> {
    load(path, false)
}

/// Reads the monitor file of `hearth serve`: a monitor file whose `vms`
/// may be absent or empty (the VMs come through the control socket).
pub fn load_serve_file(path: &Path) -> Result<MonitorSpec, ConfigErrors> {
    load(path, true)
}

fn load(path: &Path, serving: bool) -> Result<MonitorSpec, ConfigErrors> {
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
    let host = HostInfo::probe();
    let ctx = Ctx {
        base_dir,
        host: &host,
        budget: false,
        net_dir: Path::new(NET_DIR),
        serving,
    };
    parse_in(&text, ctx)
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
        drives: Parsed::Absent,
        net: Parsed::Absent,
        vsock: Parsed::Absent,
        io: Parsed::Absent,
    };
    let host = HostInfo::probe();
    let ctx = Ctx {
        base_dir: &cwd,
        host: &host,
        budget: false,
        net_dir: Path::new(NET_DIR),
        serving: false,
    };
    let mut errors = Errors::default();
    let naming = Naming::Flags;
    let name = resolve_name(&vm.name, DEFAULT_VM_NAME.to_string(), &naming, &mut errors);
    let claims = &mut Claims::default();
    let spec = validate_vm(vm, name, true, &naming, ctx, claims, &mut errors);
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
pub(crate) enum Form {
    /// The top-level object is one VM definition.
    SingleVm,
    /// `{"host": {...}, "vms": [...]}`.
    Monitor,
    /// A Firecracker `--config-file` JSON (`boot-source`, `machine-config`, ...).
    Firecracker,
}

/// Decides the form from the top-level keys. `drives` and `vsock` are keys
/// of both forms: a file is Firecracker's when it has a key only
/// Firecracker has (`boot-source`, ...), or shared keys beside `vms`/`host`.
pub(crate) fn detect_form(map: &Map<String, Value>) -> Result<Form, ConfigError> {
    let keys = |pick: &dyn Fn(&str) -> bool| -> Vec<String> {
        let picked = map.keys().filter(|k| pick(k.as_str()));
        picked.map(|k| format!("{k:?}")).collect()
    };
    let firecracker = |k: &str| firecracker::FIRECRACKER_KEYS.contains(&k);
    let vm = |k: &str| raw::VM_KEYS.contains(&k);
    let monitor = |k: &str| raw::MONITOR_KEYS.contains(&k);
    let mixed = |firecracker_keys: Vec<String>, hearth_keys: Vec<String>| {
        let message = format!(
            "mixes Firecracker config keys ({}) with Hearth config keys ({}); a file is \
             either a Firecracker config file or a Hearth config, not both \
             (`hearth convert` turns a Firecracker file into Hearth's form)",
            firecracker_keys.join(", "),
            hearth_keys.join(", "),
        );
        Err(ConfigError::new(ROOT, message))
    };
    if !keys(&|k| firecracker(k) && !vm(k)).is_empty() {
        let hearth_keys = keys(&|k| (vm(k) || monitor(k)) && !firecracker(k));
        if hearth_keys.is_empty() {
            return Ok(Form::Firecracker);
        }
        return mixed(keys(&firecracker), hearth_keys);
    }
    let monitor_keys = keys(&monitor);
    let stray = keys(&vm);
    if monitor_keys.is_empty() {
        return Ok(Form::SingleVm);
    }
    if stray.is_empty() {
        return Ok(Form::Monitor);
    }
    if keys(&|k| vm(k) && !firecracker(k)).is_empty() {
        return mixed(stray, monitor_keys);
    }
    let monitor_keys: Vec<&str> = monitor_keys.iter().map(|k| k.trim_matches('"')).collect();
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

/// Validates one VM definition (Hearth's JSON, as a single-VM file) for a
/// monitor that is already running `existing` under `host`: exactly as a VM
/// of a monitor file, so its name, vsock CID and socket, MACs, taps and
/// writable files must not clash with the running VMs', and its memory
/// floor must fit `host.memory` beside theirs. Errors name JSON paths within
/// the definition (`vsock.guest_cid: 3 is already used by VM "web"`).
/// Relative paths are resolved against `base_dir`. `text` is at most 16 MiB,
/// as a config file.
pub fn parse_vm_for_monitor(
    text: &str,
    base_dir: &Path,
    host: &HostSpec,
    existing: &[VmSpec],
) -> Result<VmSpec, ConfigErrors> {
    if text.len() as u64 > MAX_CONFIG_LEN {
        let message = format!(
            "is {} bytes, larger than the {MAX_CONFIG_LEN} bytes a VM definition may be",
            text.len()
        );
        return Err(ConfigErrors::one(ConfigError::new(ROOT, message)));
    }
    let base_dir = absolute(base_dir, "<base_dir>")?;
    let ctx = Ctx {
        base_dir: &base_dir,
        host: &HostInfo::probe(),
        budget: host.memory.is_some(),
        net_dir: Path::new(NET_DIR),
        serving: false,
    };
    monitor::vm_for_monitor(text, ctx, host, existing)
}

/// Parses and validates `text` with an already absolute `base_dir`.
fn parse_with(text: &str, base_dir: &Path, host: &HostInfo) -> Result<MonitorSpec, ConfigErrors> {
    let ctx = Ctx {
        base_dir,
        host,
        budget: false,
        net_dir: Path::new(NET_DIR),
        serving: false,
    };
    parse_in(text, ctx)
}

/// Parses and validates `text` in `ctx` (its `budget` is decided here).
fn parse_in(text: &str, ctx: Ctx<'_>) -> Result<MonitorSpec, ConfigErrors> {
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
    let form = detect_form(&map);
    if ctx.serving && !matches!(form, Ok(Form::Monitor)) {
        return Err(ConfigErrors::one(ConfigError::new(
            ROOT,
            "hearth serve takes a monitor file ({\"host\": ..., \"vms\": [...]}, where \
             \"vms\" may be empty); add a VM with `hearth ctl SOCKET create VM.json`",
        )));
    }
    let spec = match form {
        Err(e) => return Err(ConfigErrors::one(e)),
        Ok(Form::SingleVm) => single_vm(map, ctx, &mut errors),
        Ok(Form::Monitor) => monitor::monitor_file(map, ctx, &mut errors),
        Ok(Form::Firecracker) => firecracker_vm(map, ctx, &mut errors),
    };
    errors.finish(spec)
}

pub(crate) fn syntax_error(e: serde_json::Error) -> ConfigErrors {
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
    let claims = &mut Claims::default();
    validate_vm(vm, name, stdin, &naming, ctx, claims, errors).map(|vm| MonitorSpec {
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
    let claims = &mut Claims::default();
    validate_vm(vm, name, true, &naming, ctx, claims, errors).map(|vm| MonitorSpec {
        vms: vec![vm],
        host: HostSpec::default(),
    })
}
