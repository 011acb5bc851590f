//! Memory policy: a VM's `memory` section beyond `size_mib` (floor,
//! ceiling, weight, balloon) and the monitor file's `host.memory` (the
//! budget the ballooning allocator shares), with the admission rule that
//! the floors must fit the budget.

use serde_json::Value;

use super::error::Errors;
use super::parse::{join, parse_optional, Parsed};
use super::raw::{RawHostMemory, RawMemory};
use super::spec::*;
use super::validate::{ranged, Naming};

/// Validates the policy fields of a VM's `memory` section, for a VM of
/// `size_mib` MiB.
pub(crate) fn validate_vm_memory(
    raw: &RawMemory,
    size_mib: u64,
    naming: &Naming,
    errors: &mut Errors,
) -> Option<MemorySpec> {
    let mut spec = MemorySpec::defaults(size_mib);
    let before = errors.len();
    let mut bad = |field: &str, message: String| errors.push(naming.at(field), message);
    if let Some(ceiling) = raw.ceiling_mib {
        if ceiling > size_mib {
            bad(
                "memory.ceiling_mib",
                format!("{ceiling} exceeds memory.size_mib {size_mib} (the guest's RAM)"),
            );
        } else if ceiling < MIN_MEMORY_MIB {
            bad(
                "memory.ceiling_mib",
                format!("{ceiling} is below the minimum of {MIN_MEMORY_MIB} MiB"),
            );
        } else {
            spec.ceiling_mib = ceiling;
            spec.floor_mib = default_floor_mib(ceiling);
        }
    }
    match raw.floor_mib {
        Some(floor) if floor > spec.ceiling_mib => bad(
            "memory.floor_mib",
            format!("{floor} exceeds memory.ceiling_mib {}", spec.ceiling_mib),
        ),
        Some(floor) => spec.floor_mib = floor,
        None => {}
    }
    spec.balloon = match raw.balloon {
        None => BalloonMode::Auto,
        Some(true) => BalloonMode::On,
        Some(false) => BalloonMode::Off,
    };
    match raw.balloon_mib {
        Some(target) if raw.balloon == Some(false) => bad(
            "memory.balloon_mib",
            format!("{target} asks for a balloon but memory.balloon is false"),
        ),
        Some(target) if target > size_mib.saturating_sub(spec.floor_mib) => bad(
            "memory.balloon_mib",
            format!(
                "{target} would leave the guest less than memory.floor_mib {} of its {size_mib} MiB",
                spec.floor_mib
            ),
        ),
        Some(target) => {
            spec.balloon = BalloonMode::On;
            spec.balloon_options.target_mib = Some(target);
        }
        None => {}
    }
    match raw.stats_interval_s.map(|s| (s, u32::try_from(s))) {
        Some((_, Ok(s))) if s <= MAX_STATS_INTERVAL_S => spec.balloon_options.stats_interval_s = s,
        Some((s, _)) => bad(
            "memory.stats_interval_s",
            format!("{s} is out of range (0..={MAX_STATS_INTERVAL_S}; 0 turns statistics off)"),
        ),
        None => {}
    }
    let options = &mut spec.balloon_options;
    options.deflate_on_oom = raw.deflate_on_oom.unwrap_or(options.deflate_on_oom);
    options.free_page_reporting = raw
        .free_page_reporting
        .unwrap_or(options.free_page_reporting);
    spec.prefault = raw.prefault.unwrap_or(false);
    let weight = MIN_CPU_WEIGHT..=MAX_CPU_WEIGHT;
    spec.weight = ranged(
        raw.weight,
        spec.weight,
        weight,
        naming.at("memory.weight"),
        errors,
    )?;
    (errors.len() == before).then_some(spec)
}

/// Validates `host.memory`; `Some(None)` when it is absent.
pub(crate) fn validate_host_memory(
    value: Option<Value>,
    errors: &mut Errors,
) -> Option<Option<HostMemorySpec>> {
    let raw: RawHostMemory = match parse_optional(value, "host.memory", errors) {
        Parsed::Ok(raw) => raw,
        Parsed::Absent => return Some(None),
        Parsed::Failed => return None,
    };
    let budget = match raw.budget_mib {
        None => {
            errors.push(
                "host.memory.budget_mib",
                "required: the MiB of host memory all the VMs together may hold",
            );
            None
        }
        Some(0) => {
            errors.push("host.memory.budget_mib", "0 must be at least 1 MiB");
            None
        }
        Some(b) => Some(b),
    };
    let tick = ranged(
        raw.tick_ms,
        DEFAULT_MEMORY_TICK_MS,
        MIN_MEMORY_TICK_MS..=MAX_MEMORY_TICK_MS,
        "host.memory.tick_ms".into(),
        errors,
    );
    Some(Some(HostMemorySpec {
        budget_mib: budget?,
        tick_ms: tick?,
    }))
}

/// Under a budget every VM has a balloon: one that did not say gets one;
/// `false` and a fixed size are refused. `prefix` is the VM's JSON path.
fn admit_balloon(vm: &mut VmSpec, prefix: &str, errors: &mut Errors) {
    if vm.memory.balloon == BalloonMode::Auto {
        vm.memory.balloon = BalloonMode::On;
    }
    if vm.memory.balloon == BalloonMode::Off {
        errors.push(
            join(prefix, "memory.balloon"),
            "false, but host.memory.budget_mib is set: every VM under a memory budget needs a balloon",
        );
    }
    if vm.memory.balloon_options.target_mib.is_some() {
        errors.push(
            join(prefix, "memory.balloon_mib"),
            "a fixed balloon size cannot be combined with host.memory.budget_mib (the allocator sizes the balloons)",
        );
    }
}

/// "a 300, b 300": each VM's name and floor.
fn floors(vms: &[VmSpec]) -> String {
    let list: Vec<String> = vms
        .iter()
        .map(|v| format!("{} {}", v.name, v.memory.floor_mib))
        .collect();
    list.join(", ")
}

/// Admission of a monitor file's VMs under a budget: each has a balloon,
/// and their floors fit.
pub(crate) fn check_admission(host: &HostSpec, vms: &mut [VmSpec], errors: &mut Errors) {
    let Some(memory) = host.memory else { return };
    for (i, vm) in vms.iter_mut().enumerate() {
        admit_balloon(vm, &format!("vms[{i}]"), errors);
    }
    let sum: u64 = vms.iter().map(|v| v.memory.floor_mib).sum();
    if sum > memory.budget_mib {
        errors.push(
            "host.memory.budget_mib",
            format!(
                "{} is less than the sum of the VMs' memory.floor_mib ({sum}: {}); \
                 raise the budget or lower the floors",
                memory.budget_mib,
                floors(vms)
            ),
        );
    }
}

/// Admission of one VM beside the `running` ones: it has a balloon, and its
/// floor fits in what their floors leave of the budget.
pub(crate) fn admit_one(host: &HostSpec, vm: &mut VmSpec, running: &[VmSpec], errors: &mut Errors) {
    let Some(memory) = host.memory else { return };
    admit_balloon(vm, "", errors);
    let taken: u64 = running.iter().map(|v| v.memory.floor_mib).sum();
    let left = memory.budget_mib.saturating_sub(taken);
    if vm.memory.floor_mib > left {
        errors.push(
            "memory.floor_mib",
            format!(
                "{} does not fit: host.memory.budget_mib is {} and the running VMs' floors \
                 take {taken} ({}), leaving {left}",
                vm.memory.floor_mib,
                memory.budget_mib,
                floors(running)
            ),
        );
    }
}
