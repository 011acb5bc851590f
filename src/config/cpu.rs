//! CPU policy: a VM's `cpu` section (vCPU count, weight, cap) and the
//! monitor file's `host.cpu` section (host CPU set, scheduler tick).

use std::collections::HashMap;

use serde_json::Value;

use super::error::Errors;
use super::parse::{parse_optional, Parsed};
use super::raw::{RawCpu, RawHostCpu};
use super::spec::*;
use super::validate::{ranged, HostInfo, Naming};

/// A VM's validated `cpu` section.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CheckedCpu {
    pub vcpus: u8,
    pub policy: CpuSpec,
}

/// Validates `cpu.vcpus`, `cpu.weight` and `cpu.max`, reporting each problem.
pub(crate) fn validate_cpu(
    cpu: Parsed<RawCpu>,
    naming: &Naming,
    errors: &mut Errors,
) -> Option<CheckedCpu> {
    let raw = cpu.or_default()?;
    let vcpus = ranged(
        raw.vcpus,
        DEFAULT_VCPUS,
        1..=MAX_VCPUS,
        naming.at("cpu.vcpus"),
        errors,
    );
    let weight = ranged(
        raw.weight,
        DEFAULT_CPU_WEIGHT,
        MIN_CPU_WEIGHT..=MAX_CPU_WEIGHT,
        naming.at("cpu.weight"),
        errors,
    );
    let max = match raw.max {
        None => Some(None),
        Some(max) if !max.is_finite() || max <= 0.0 => {
            errors.push(
                naming.at("cpu.max"),
                format!("{max} must be greater than 0 (it is a number of physical CPUs)"),
            );
            None
        }
        Some(max) => match vcpus {
            Some(n) if max > f64::from(n) => {
                errors.push(
                    naming.at("cpu.max"),
                    format!("{max} is more than cpu.vcpus ({n}); a VM cannot use more CPUs than it has vCPUs"),
                );
                None
            }
            // With an invalid vcpus the cap is only checked for sign.
            _ => Some(Some(max)),
        },
    };
    Some(CheckedCpu {
        vcpus: vcpus?,
        policy: CpuSpec {
            weight: weight?,
            max: max?,
        },
    })
}

/// `host.cpu` as validated: the CPU set, the scheduler's tick and whether it runs.
pub(crate) struct HostCpu {
    pub cpus: Option<Vec<usize>>,
    pub tick_ms: u32,
    pub scheduler: bool,
    pub realtime: bool,
}

/// Validates `host.cpu` (still a JSON value).
pub(crate) fn validate_host_cpu(
    value: Option<Value>,
    info: &HostInfo,
    errors: &mut Errors,
) -> Option<HostCpu> {
    let cpu: RawHostCpu = parse_optional(value, "host.cpu", errors).or_default()?;
    let cpus = match cpu.cpus {
        None => Some(None),
        Some(list) => check_cpu_list(&list, info.online_cpus, errors).map(Some),
    };
    let tick = ranged(
        cpu.tick_ms,
        DEFAULT_SCHED_TICK_MS,
        MIN_SCHED_TICK_MS..=MAX_SCHED_TICK_MS,
        "host.cpu.tick_ms".into(),
        errors,
    );
    Some(HostCpu {
        cpus: cpus?,
        tick_ms: tick?,
        scheduler: cpu.scheduler.unwrap_or(true),
        realtime: cpu.realtime.unwrap_or(true),
    })
}

/// Checks `host.cpu.cpus`: non-empty, no duplicates, every CPU online
/// (numbered below `online`, when that is known).
fn check_cpu_list(list: &[u64], online: Option<usize>, errors: &mut Errors) -> Option<Vec<usize>> {
    const FIELD: &str = "host.cpu.cpus";
    if list.is_empty() {
        errors.push(
            FIELD,
            "must list at least one host CPU (it is empty); leave it out to use every CPU",
        );
        return None;
    }
    let mut ok = true;
    let mut seen: HashMap<u64, usize> = HashMap::new();
    let mut cpus = Vec::with_capacity(list.len());
    for (i, &cpu) in list.iter().enumerate() {
        if let Some(first) = seen.insert(cpu, i) {
            errors.push(
                FIELD,
                format!("CPU {cpu} is listed twice (at [{first}] and [{i}])"),
            );
            ok = false;
            continue;
        }
        let number = usize::try_from(cpu).ok();
        match (number, online) {
            (Some(n), Some(online)) if n < online => cpus.push(n),
            (Some(n), None) => cpus.push(n),
            (_, Some(online)) => {
                errors.push(
                    FIELD,
                    format!("CPU {cpu} is not online (this host has {online})"),
                );
                ok = false;
            }
            (None, None) => {
                errors.push(FIELD, format!("CPU {cpu} does not exist"));
                ok = false;
            }
        }
    }
    ok.then_some(cpus)
}

/// The number of online host CPUs: `sysconf(_SC_NPROCESSORS_ONLN)`, or
/// `available_parallelism` if that fails.
pub(crate) fn online_cpus() -> Option<usize> {
    // SAFETY: sysconf only reads a system value; it has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    match usize::try_from(n) {
        Ok(n) if n > 0 => Some(n),
        _ => std::thread::available_parallelism().ok().map(|n| n.get()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::host::validate_host;
    use super::super::raw::RawHost;
    use super::*;

    fn lines(errors: Errors) -> Vec<String> {
        match errors.finish(Some(())) {
            Err(e) => e.iter().map(ToString::to_string).collect(),
            Ok(()) => Vec::new(),
        }
    }

    fn cpu(vcpus: Option<u64>, weight: Option<u64>, max: Option<f64>) -> Parsed<RawCpu> {
        Parsed::Ok(RawCpu { vcpus, weight, max })
    }

    #[test]
    fn vm_cpu_defaults_and_values() {
        let naming = Naming::Json("vms[1]".into());
        let mut errors = Errors::default();
        let checked = validate_cpu(Parsed::Absent, &naming, &mut errors);
        assert_eq!(
            checked,
            Some(CheckedCpu {
                vcpus: DEFAULT_VCPUS,
                policy: CpuSpec {
                    weight: 100,
                    max: None
                }
            })
        );
        let checked = validate_cpu(cpu(Some(4), Some(10_000), Some(0.5)), &naming, &mut errors);
        assert_eq!(
            checked.map(|c| c.policy),
            Some(CpuSpec {
                weight: 10_000,
                max: Some(0.5)
            })
        );
        let checked = validate_cpu(cpu(Some(2), Some(1), Some(2.0)), &naming, &mut errors);
        assert_eq!(checked.map(|c| c.policy.max), Some(Some(2.0)));
        assert!(lines(errors).is_empty());
    }

    #[test]
    fn vm_cpu_errors_name_path_and_value() {
        let naming = Naming::Json("vms[1]".into());
        for (raw, expected) in [
            (
                cpu(None, Some(0), None),
                "vms[1].cpu.weight: 0 is out of range (1..=10000)",
            ),
            (
                cpu(None, Some(10_001), None),
                "vms[1].cpu.weight: 10001 is out of range (1..=10000)",
            ),
            (
                cpu(None, Some(u64::MAX), None),
                "vms[1].cpu.weight: 18446744073709551615 is out of range (1..=10000)",
            ),
            (
                cpu(Some(2), None, Some(3.5)),
                "vms[1].cpu.max: 3.5 is more than cpu.vcpus (2); a VM cannot use more CPUs than it has vCPUs",
            ),
            (
                cpu(None, None, Some(1.5)),
                "vms[1].cpu.max: 1.5 is more than cpu.vcpus (1); a VM cannot use more CPUs than it has vCPUs",
            ),
            (
                cpu(Some(2), None, Some(0.0)),
                "vms[1].cpu.max: 0 must be greater than 0 (it is a number of physical CPUs)",
            ),
            (
                cpu(Some(2), None, Some(-1.0)),
                "vms[1].cpu.max: -1 must be greater than 0 (it is a number of physical CPUs)",
            ),
        ] {
            let mut errors = Errors::default();
            assert_eq!(validate_cpu(raw, &naming, &mut errors), None);
            assert_eq!(lines(errors), [expected]);
        }
    }

    #[test]
    fn vm_cpu_reports_every_problem() {
        let mut errors = Errors::default();
        let raw = cpu(Some(0), Some(0), Some(-2.0));
        assert_eq!(
            validate_cpu(raw, &Naming::Json(String::new()), &mut errors),
            None
        );
        assert_eq!(
            lines(errors),
            [
                "cpu.vcpus: 0 is out of range (1..=254)",
                "cpu.weight: 0 is out of range (1..=10000)",
                "cpu.max: -2 must be greater than 0 (it is a number of physical CPUs)",
            ]
        );
    }

    fn host(cpu: serde_json::Value) -> Parsed<RawHost> {
        Parsed::Ok(RawHost {
            cpu: Some(cpu),
            ..RawHost::default()
        })
    }

    const TWO_CPUS: HostInfo = HostInfo {
        mem_total_mib: None,
        online_cpus: Some(2),
    };

    #[test]
    fn host_cpu_defaults_and_values() {
        let mut errors = Errors::default();
        assert_eq!(
            validate_host(Parsed::Absent, &TWO_CPUS, &mut errors),
            Some(HostSpec::default())
        );
        assert_eq!(
            validate_host(host(serde_json::json!({})), &TWO_CPUS, &mut errors),
            Some(HostSpec::default())
        );
        let spec = validate_host(
            host(
                serde_json::json!({"cpus": [1, 0], "tick_ms": 1000, "scheduler": false, "realtime": false}),
            ),
            &TWO_CPUS,
            &mut errors,
        );
        assert_eq!(
            spec,
            Some(HostSpec {
                cpus: Some(vec![1, 0]),
                sched_tick_ms: 1000,
                scheduler: false,
                realtime_loop: false,
                ..HostSpec::default()
            })
        );
        assert!(lines(errors).is_empty());
    }

    #[test]
    fn host_cpu_errors_name_path_and_value() {
        for (value, expected) in [
            (
                serde_json::json!({"cpus": [0, 7]}),
                vec!["host.cpu.cpus: CPU 7 is not online (this host has 2)"],
            ),
            (
                serde_json::json!({"cpus": []}),
                vec!["host.cpu.cpus: must list at least one host CPU (it is empty); leave it out to use every CPU"],
            ),
            (
                serde_json::json!({"cpus": [1, 0, 1, 9]}),
                vec![
                    "host.cpu.cpus: CPU 1 is listed twice (at [0] and [2])",
                    "host.cpu.cpus: CPU 9 is not online (this host has 2)",
                ],
            ),
            (
                serde_json::json!({"tick_ms": 0}),
                vec!["host.cpu.tick_ms: 0 is out of range (1..=1000)"],
            ),
            (
                serde_json::json!({"tick_ms": 1001, "cpus": [5]}),
                vec![
                    "host.cpu.cpus: CPU 5 is not online (this host has 2)",
                    "host.cpu.tick_ms: 1001 is out of range (1..=1000)",
                ],
            ),
            (
                serde_json::json!({"cpus": [-1]}),
                vec!["host.cpu.cpus: invalid value: integer -1, expected a non-negative integer"],
            ),
            (
                serde_json::json!({"tickms": 5}),
                vec!["host.cpu: unknown field \"tickms\" (expected one of: cpus, tick_ms, scheduler, realtime); did you mean \"tick_ms\"?"],
            ),
            (
                serde_json::json!([0, 1]),
                vec!["host.cpu: expected an object, found an array"],
            ),
        ] {
            let mut errors = Errors::default();
            assert_eq!(validate_host(host(value), &TWO_CPUS, &mut errors), None);
            assert_eq!(lines(errors), expected);
        }
    }

    #[test]
    fn online_cpus_is_known_here() {
        assert!(online_cpus().is_some_and(|n| n >= 1));
    }
}
