//! The third form of config file: a Firecracker `--config-file` JSON, mapped
//! onto one Hearth VM definition so that Firecracker users can switch
//! without rewriting their files (see `docs/firecracker.md`).
//!
//! Every top-level key is handled by one arm of [`parse_firecracker`]'s
//! match: mapped field by field onto Hearth's sections (`boot-source`,
//! `machine-config`, `balloon`, `drives`, `network-interfaces`, `vsock`),
//! accepted when empty or default (`pmem: []`, `logger: {}`, `null`), or
//! refused as "not supported yet" naming the field. Nothing is silently
//! ignored, except `vsock.vsock_id`, which Firecracker ignores too.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::{Errors, ROOT};
use super::parse::{
    describe, parse_entries, parse_list, parse_optional, unknown_field_message, Parsed,
};
use super::raw::{
    ParsedVm, RawCache, RawCpu, RawDrive, RawEngine, RawInterface, RawKernel, RawMemory, RawNet,
    RawRateLimiter, RawVsock,
};

/// Every top-level key Firecracker accepts in a config file.
pub(crate) const FIRECRACKER_KEYS: &[&str] = &[
    "boot-source",
    "machine-config",
    "cpu-config",
    "drives",
    "network-interfaces",
    "pmem",
    "balloon",
    "vsock",
    "entropy",
    "logger",
    "metrics",
    "mmds-config",
    "memory-hotplug",
];

/// Firecracker's command line when `boot-source.boot_args` is absent
/// (`DEFAULT_KERNEL_CMDLINE` in its `vmm_config/boot_source.rs`).
pub const FIRECRACKER_DEFAULT_BOOT_ARGS: &str = "reboot=k panic=1 nomodule 8250.nr_uarts=0 \
     i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce";
/// What Firecracker appends when the VM has no PCI (its default), as Hearth's never does.
pub const FIRECRACKER_NO_PCI_ARG: &str = "pci=off";
/// Firecracker's vCPU limit (`MAX_SUPPORTED_VCPUS`).
pub const FIRECRACKER_MAX_VCPUS: u64 = 32;
/// Firecracker's defaults when `machine-config` is absent.
pub const FIRECRACKER_DEFAULT_VCPUS: u64 = 1;
pub const FIRECRACKER_DEFAULT_MEM_MIB: u64 = 128;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBootSource {
    kernel_image_path: Option<PathBuf>,
    initrd_path: Option<PathBuf>,
    boot_args: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMachineConfig {
    vcpu_count: Option<u64>,
    mem_size_mib: Option<u64>,
    smt: Option<bool>,
    track_dirty_pages: Option<bool>,
    huge_pages: Option<HugePages>,
    cpu_template: Option<CpuTemplate>,
}

/// `balloon`: Firecracker's balloon device. Its statistics are off unless
/// `stats_polling_interval_s` is given (as in Firecracker).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBalloon {
    amount_mib: Option<u64>,
    deflate_on_oom: Option<bool>,
    stats_polling_interval_s: Option<u64>,
    free_page_reporting: Option<bool>,
}

/// One entry of `drives`, as Firecracker's `BlockDeviceConfig`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FcDrive {
    drive_id: Option<String>,
    path_on_host: Option<PathBuf>,
    is_root_device: Option<bool>,
    partuuid: Option<String>,
    is_read_only: Option<bool>,
    cache_type: Option<FcCache>,
    io_engine: Option<FcEngine>,
    rate_limiter: Option<RawRateLimiter>,
    /// vhost-user-block: refused by name.
    socket: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum FcCache {
    Unsafe,
    Writeback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum FcEngine {
    Sync,
    Async,
}

/// One entry of `network-interfaces`, as Firecracker's `NetworkInterfaceConfig`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FcInterface {
    iface_id: Option<String>,
    host_dev_name: Option<String>,
    guest_mac: Option<String>,
    mtu: Option<u64>,
    rx_rate_limiter: Option<RawRateLimiter>,
    tx_rate_limiter: Option<RawRateLimiter>,
}

/// `vsock`, as Firecracker's `VsockDeviceConfig`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FcVsock {
    /// Deprecated in Firecracker, which ignores it; so does Hearth.
    #[allow(dead_code)]
    vsock_id: Option<String>,
    guest_cid: Option<u64>,
    uds_path: Option<PathBuf>,
}

/// `machine-config.huge_pages`, as Firecracker spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum HugePages {
    None,
    Transparent,
    #[serde(rename = "2M")]
    TwoM,
}

/// `machine-config.cpu_template`: Firecracker's static CPU templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum CpuTemplate {
    C3,
    T2,
    T2S,
    T2CL,
    T2A,
    V1N1,
    None,
}

/// How a Hearth field is named in a Firecracker file's errors: `kernel.path`
/// is `boot-source.kernel_image_path`, `net[1].tap` is
/// `network-interfaces[1].host_dev_name`.
pub(crate) fn field_name(field: &str) -> String {
    let fixed = match field {
        "kernel" => "boot-source",
        "kernel.path" => "boot-source.kernel_image_path",
        "kernel.initrd" => "boot-source.initrd_path",
        "kernel.cmdline" => "boot-source.boot_args",
        "cpu.vcpus" => "machine-config.vcpu_count",
        "memory.size_mib" => "machine-config.mem_size_mib",
        "memory.balloon_mib" => "balloon.amount_mib",
        "memory.deflate_on_oom" => "balloon.deflate_on_oom",
        "memory.stats_interval_s" => "balloon.stats_polling_interval_s",
        "memory.free_page_reporting" => "balloon.free_page_reporting",
        "net" => "network-interfaces",
        other => other,
    };
    // A list entry: `drives[2].read_only` -> `drives[2].is_read_only`.
    let Some((list, rest)) = fixed.split_once('[') else {
        return fixed.to_string();
    };
    let (index, sub) = rest.split_once(']').unwrap_or((rest, ""));
    let (first, more) = match sub.strip_prefix('.') {
        Some(sub) => sub.split_once('.').map_or((sub, ""), |(f, m)| (f, m)),
        None => ("", sub),
    };
    let (list, first) = match (list, first) {
        ("drives", "id") => ("drives", "drive_id"),
        ("drives", "path") => ("drives", "path_on_host"),
        ("drives", "read_only") => ("drives", "is_read_only"),
        ("drives", "root") => ("drives", "is_root_device"),
        ("drives", "cache") => ("drives", "cache_type"),
        ("drives", "engine") => ("drives", "io_engine"),
        ("net", "id") => ("network-interfaces", "iface_id"),
        ("net", "tap") => ("network-interfaces", "host_dev_name"),
        ("net", "mac") => ("network-interfaces", "guest_mac"),
        ("net", first) => ("network-interfaces", first),
        (list, first) => (list, first),
    };
    let mut out = format!("{list}[{index}]");
    for part in [first, more] {
        if !part.is_empty() {
            out.push('.');
            out.push_str(part);
        }
    }
    out
}

/// The command line Firecracker would give the guest: `boot_args` (or its
/// default) plus `pci=off`, unless the arguments already say `pci=`.
pub(crate) fn firecracker_cmdline(boot_args: Option<&str>) -> String {
    let mut cmdline = boot_args
        .unwrap_or(FIRECRACKER_DEFAULT_BOOT_ARGS)
        .trim_end()
        .to_string();
    if !cmdline.split(' ').any(|word| word.starts_with("pci=")) {
        if !cmdline.is_empty() {
            cmdline.push(' ');
        }
        cmdline.push_str(FIRECRACKER_NO_PCI_ARG);
    }
    cmdline
}

/// Maps the top-level object of a Firecracker config file onto a Hearth VM
/// definition, reporting every section Hearth cannot honour.
pub(crate) fn parse_firecracker(map: Map<String, Value>, errors: &mut Errors) -> ParsedVm {
    let mut boot = None;
    let mut machine = None;
    let mut balloon = Parsed::Absent;
    let mut drives = Parsed::Absent;
    let mut net = Parsed::Absent;
    let mut vsock = Parsed::Absent;
    for (key, value) in map {
        if value.is_null() && FIRECRACKER_KEYS.contains(&key.as_str()) {
            continue; // null is "not given", as in Firecracker
        }
        match key.as_str() {
            "boot-source" => boot = Some(value),
            "machine-config" => machine = Some(value),
            "drives" => drives = map_drives(value, errors),
            "network-interfaces" => net = map_interfaces(value, errors),
            "pmem" => refuse_each(&key, value, describe_pmem, errors),
            "balloon" => balloon = parse_optional::<RawBalloon>(Some(value), "balloon", errors),
            "vsock" => vsock = map_vsock(value, errors),
            "entropy" => refuse(&key, "an entropy device (virtio-rng)", errors),
            "mmds-config" => refuse(&key, "the microVM metadata service (MMDS)", errors),
            "memory-hotplug" => refuse(&key, "hotpluggable memory (virtio-mem)", errors),
            "cpu-config" => refuse(&key, "a custom CPU template", errors),
            "metrics" => refuse(&key, "Firecracker's metrics output", errors),
            "logger" => check_logger(value, errors),
            _ => errors.push(ROOT, unknown_field_message(&key, FIRECRACKER_KEYS)),
        }
    }
    let kernel = boot_source(boot, errors);
    let (cpu, mut memory) = machine_config(machine, errors);
    match (balloon, &mut memory) {
        (Parsed::Ok(b), Parsed::Ok(memory)) => {
            memory.balloon = Some(true);
            memory.balloon_mib = b.amount_mib;
            memory.deflate_on_oom = b.deflate_on_oom;
            memory.stats_interval_s = Some(b.stats_polling_interval_s.unwrap_or(0));
            memory.free_page_reporting = Some(b.free_page_reporting.unwrap_or(false));
        }
        (Parsed::Failed, _) => memory = Parsed::Failed,
        _ => {}
    }
    ParsedVm {
        name: Parsed::Absent,
        kernel,
        cpu,
        memory,
        serial: Parsed::Absent,
        acl: Parsed::Absent,
        drives,
        net,
        vsock,
        io: Parsed::Absent,
    }
}

/// `drives[]` onto Hearth's drives, Firecracker's rules first: `drive_id`
/// and `is_root_device` are required, a vhost-user `socket` is refused.
fn map_drives(value: Value, errors: &mut Errors) -> Parsed<Vec<RawDrive>> {
    let Parsed::Ok(drives) = parse_entries::<FcDrive>(Some(value), "drives", errors) else {
        return Parsed::Failed;
    };
    let total = drives.len();
    let mut mapped = Vec::with_capacity(total);
    for (i, drive) in drives.into_iter().enumerate() {
        let Some(d) = drive else { continue };
        let before = errors.len();
        if d.socket.is_some() {
            errors.push(
                format!("drives[{i}].socket"),
                "vhost-user block devices are not supported by Hearth; give \"path_on_host\"",
            );
        }
        if d.is_root_device.is_none() {
            let message =
                "required (Firecracker requires it): true for the root device, else false";
            errors.push(format!("drives[{i}].is_root_device"), message);
        }
        if errors.len() != before {
            continue;
        }
        mapped.push(RawDrive {
            id: d.drive_id,
            path: d.path_on_host,
            read_only: d.is_read_only,
            root: d.is_root_device,
            partuuid: d.partuuid,
            cache: d.cache_type.map(|c| match c {
                FcCache::Unsafe => RawCache::Unsafe,
                FcCache::Writeback => RawCache::Writeback,
            }),
            engine: d.io_engine.map(|e| match e {
                FcEngine::Sync => RawEngine::Sync,
                FcEngine::Async => RawEngine::IoUring,
            }),
            rate_limiter: d.rate_limiter,
        });
    }
    // Every entry mapped, or its errors are reported.
    if mapped.len() == total {
        Parsed::Ok(mapped)
    } else {
        Parsed::Failed
    }
}

/// `network-interfaces[]` onto Hearth's `net` list.
fn map_interfaces(value: Value, errors: &mut Errors) -> Parsed<RawNet> {
    let list = parse_list::<FcInterface>(Some(value), "network-interfaces", errors);
    list.map(|interfaces| RawNet {
        weight: None,
        interfaces: interfaces
            .into_iter()
            .map(|n| RawInterface {
                id: n.iface_id,
                tap: n.host_dev_name,
                mac: n.guest_mac,
                mtu: n.mtu,
                rx_rate_limiter: n.rx_rate_limiter,
                tx_rate_limiter: n.tx_rate_limiter,
            })
            .collect(),
        list: "net",
    })
}

/// `vsock` onto Hearth's (the same fields; `vsock_id` ignored, as Firecracker does).
fn map_vsock(value: Value, errors: &mut Errors) -> Parsed<RawVsock> {
    parse_optional::<FcVsock>(Some(value), "vsock", errors).map(|v| RawVsock {
        guest_cid: v.guest_cid,
        uds_path: v.uds_path,
    })
}

fn not_supported(what: &str, key: &str) -> String {
    format!("{what} is not supported by Hearth yet; remove \"{key}\" to boot without it")
}

fn refuse(key: &str, what: &str, errors: &mut Errors) {
    errors.push(key, not_supported(what, key));
}

/// Refuses every entry of the device list `key`; an empty list is fine.
fn refuse_each(key: &str, value: Value, describe_entry: fn(&Value) -> String, errors: &mut Errors) {
    let Value::Array(entries) = value else {
        errors.push(
            key,
            format!("expected an array, found {}", describe(&value)),
        );
        return;
    };
    for (i, entry) in entries.iter().enumerate() {
        errors.push(format!("{key}[{i}]"), describe_entry(entry));
    }
}

/// `"name"` or `name "x"` from an entry's string field, for messages.
fn named(entry: &Value, field: &str) -> Option<String> {
    entry
        .get(field)
        .and_then(Value::as_str)
        .map(|s| format!("{s:?}"))
}

fn describe_pmem(entry: &Value) -> String {
    let mut what = String::from("pmem device");
    if let Some(id) = named(entry, "id") {
        what.push_str(&format!(" {id}"));
    }
    if let Some(path) = named(entry, "path_on_host") {
        what.push_str(&format!(" ({path})"));
    }
    format!("{what} is not supported by Hearth yet (it has no virtio-pmem device); remove it")
}

/// A logger of only defaults (`{}`, `"show_level": false`, ...) asks for
/// nothing and is accepted; a path, level or module is refused.
fn check_logger(value: Value, errors: &mut Errors) {
    let Value::Object(map) = value else {
        errors.push(
            "logger",
            format!("expected an object, found {}", describe(&value)),
        );
        return;
    };
    let requested: Vec<String> = map
        .iter()
        .filter(|(key, value)| {
            let default_flag =
                matches!(key.as_str(), "show_level" | "show_log_origin") && **value == false;
            !default_flag
        })
        .map(|(key, _)| format!("{key:?}"))
        .collect();
    if !requested.is_empty() {
        errors.push(
            "logger",
            format!(
                "Firecracker's logger settings ({}) are not supported by Hearth yet: Hearth logs to \
                 stderr at the level of --log-level (or HEARTH_LOG); remove \"logger\"",
                requested.join(", ")
            ),
        );
    }
}

fn boot_source(value: Option<Value>, errors: &mut Errors) -> Parsed<RawKernel> {
    match parse_optional::<RawBootSource>(value, "boot-source", errors) {
        Parsed::Absent => {
            errors.push(
                "boot-source",
                "required: an object with at least \"kernel_image_path\", the kernel to boot",
            );
            Parsed::Failed
        }
        Parsed::Failed => Parsed::Failed,
        Parsed::Ok(boot) => Parsed::Ok(RawKernel {
            path: boot.kernel_image_path,
            initrd: boot.initrd_path,
            cmdline: Some(firecracker_cmdline(boot.boot_args.as_deref())),
            protocol: None,
        }),
    }
}

/// `machine-config` as Hearth's `cpu` and `memory` sections, with
/// Firecracker's own rules checked first.
fn machine_config(
    value: Option<Value>,
    errors: &mut Errors,
) -> (Parsed<RawCpu>, Parsed<RawMemory>) {
    let machine = match parse_optional::<RawMachineConfig>(value, "machine-config", errors) {
        Parsed::Ok(machine) => machine,
        Parsed::Failed => return (Parsed::Failed, Parsed::Failed),
        Parsed::Absent => RawMachineConfig {
            vcpu_count: Some(FIRECRACKER_DEFAULT_VCPUS),
            mem_size_mib: Some(FIRECRACKER_DEFAULT_MEM_MIB),
            ..Default::default()
        },
    };
    let smt = refuse_unsupported(&machine, errors);
    let cpu = match machine.vcpu_count {
        None => {
            errors.push(
                "machine-config.vcpu_count",
                "required (Firecracker requires it in machine-config)",
            );
            Parsed::Failed
        }
        Some(n) if !(1..=FIRECRACKER_MAX_VCPUS).contains(&n) => {
            errors.push(
                "machine-config.vcpu_count",
                format!("{n} is out of range (1..={FIRECRACKER_MAX_VCPUS}, Firecracker's limit)"),
            );
            Parsed::Failed
        }
        Some(n) if smt && n > 1 && n % 2 == 1 => {
            errors.push(
                "machine-config.vcpu_count",
                format!("{n} must be 1 or even when machine-config.smt is true"),
            );
            Parsed::Failed
        }
        Some(n) => Parsed::Ok(RawCpu {
            vcpus: Some(n),
            ..Default::default()
        }),
    };
    let memory = match machine.mem_size_mib {
        None => {
            errors.push(
                "machine-config.mem_size_mib",
                "required (Firecracker requires it in machine-config)",
            );
            Parsed::Failed
        }
        Some(mib) => Parsed::Ok(RawMemory {
            size_mib: Some(mib),
            ..Default::default()
        }),
    };
    (cpu, memory)
}

/// Refuses the `machine-config` settings Hearth does not support yet;
/// returns whether `smt` was asked for.
fn refuse_unsupported(machine: &RawMachineConfig, errors: &mut Errors) -> bool {
    let smt = machine.smt == Some(true);
    if smt {
        errors.push(
            "machine-config.smt",
            "true is not supported by Hearth yet: each vCPU is a core of its own (one thread \
             per core); use false or leave it out",
        );
    }
    if machine.track_dirty_pages == Some(true) {
        errors.push(
            "machine-config.track_dirty_pages",
            "true is not supported by Hearth yet (it has no snapshots); use false or leave it out",
        );
    }
    if let Some(pages @ (HugePages::TwoM | HugePages::Transparent)) = machine.huge_pages {
        let shown = if pages == HugePages::TwoM {
            "2M"
        } else {
            "Transparent"
        };
        errors.push(
            "machine-config.huge_pages",
            format!(
                "\"{shown}\" is not supported by Hearth yet (guest memory uses 4 KiB pages); use \
                 \"None\" or leave it out"
            ),
        );
    }
    if let Some(template) = machine.cpu_template.filter(|t| *t != CpuTemplate::None) {
        errors.push(
            "machine-config.cpu_template",
            format!(
                "\"{template:?}\" is not supported by Hearth yet (no CPU templates); use \"None\" \
                 or leave it out"
            ),
        );
    }

    smt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_gets_firecrackers_default_and_pci_off() {
        assert_eq!(
            firecracker_cmdline(None),
            "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd \
             swiotlb=noforce pci=off"
        );
        assert_eq!(
            firecracker_cmdline(Some("console=ttyS0 reboot=k")),
            "console=ttyS0 reboot=k pci=off"
        );
        assert_eq!(firecracker_cmdline(Some("pci=on x")), "pci=on x");
        assert_eq!(firecracker_cmdline(Some("")), "pci=off");
    }

    #[test]
    fn field_names() {
        assert_eq!(field_name("kernel.path"), "boot-source.kernel_image_path");
        assert_eq!(field_name("cpu.vcpus"), "machine-config.vcpu_count");
        assert_eq!(field_name("serial.path"), "serial.path");
        assert_eq!(field_name("drives[2].read_only"), "drives[2].is_read_only");
        assert_eq!(
            field_name("drives[0].rate_limiter.ops.size"),
            "drives[0].rate_limiter.ops.size"
        );
        assert_eq!(
            field_name("net[1].tap"),
            "network-interfaces[1].host_dev_name"
        );
        assert_eq!(field_name("net[1]"), "network-interfaces[1]");
        assert_eq!(
            field_name("net[0].rx_rate_limiter.bandwidth"),
            "network-interfaces[0].rx_rate_limiter.bandwidth"
        );
        assert_eq!(field_name("net"), "network-interfaces");
        assert_eq!(field_name("acl.rules[1].device"), "acl.rules[1].device");
    }
}
