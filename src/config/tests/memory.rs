//! The memory policy: `memory.*` of a VM, `host.memory`, admission.

use serde_json::json;

use super::super::*;
use super::{one_error, Fixture};

fn all_errors(result: Result<MonitorSpec, ConfigErrors>) -> Vec<String> {
    match result {
        Ok(spec) => panic!("expected errors, got {spec:?}"),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn defaults_and_values() {
    let fx = Fixture::new("mem-values");
    let spec = fx
        .parse(&json!({"kernel": {"path": "vmlinux"}, "memory": {"size_mib": 512}}))
        .expect("valid");
    let m = spec.vms[0].memory;
    assert_eq!((m.floor_mib, m.ceiling_mib, m.weight), (128, 512, 100));
    assert_eq!(m.balloon, BalloonMode::Auto);
    assert!(!m.has_balloon(&spec.host), "no budget, no balloon");
    let spec = fx
        .parse(&json!({"kernel": {"path": "vmlinux"}, "memory": {
            "size_mib": 512, "floor_mib": 64, "ceiling_mib": 400, "weight": 300,
            "balloon_mib": 256, "deflate_on_oom": false, "stats_interval_s": 0}}))
        .expect("valid");
    let m = spec.vms[0].memory;
    assert_eq!((m.floor_mib, m.ceiling_mib, m.weight), (64, 400, 300));
    assert_eq!(m.balloon, BalloonMode::On, "a fixed size implies a balloon");
    assert_eq!(
        m.balloon_options,
        BalloonOptions {
            target_mib: Some(256),
            deflate_on_oom: false,
            stats_interval_s: 0,
            free_page_reporting: true,
        }
    );
}

#[test]
fn vm_memory_errors_name_path_and_value() {
    let fx = Fixture::new("mem-errors");
    let cfg = |memory: serde_json::Value| json!({"host": {}, "vms": [{"kernel": {"path": "vmlinux"}}, {"kernel": {"path": "vmlinux"}, "memory": memory}]});
    for (memory, path, message) in [
        (
            json!({"size_mib": 512, "floor_mib": 900}),
            "vms[1].memory.floor_mib",
            "900 exceeds memory.ceiling_mib 512",
        ),
        (
            json!({"size_mib": 512, "ceiling_mib": 600}),
            "vms[1].memory.ceiling_mib",
            "600 exceeds memory.size_mib 512 (the guest's RAM)",
        ),
        (
            json!({"size_mib": 512, "ceiling_mib": 8}),
            "vms[1].memory.ceiling_mib",
            "8 is below the minimum of 16 MiB",
        ),
        (
            json!({"weight": 0}),
            "vms[1].memory.weight",
            "0 is out of range (1..=10000)",
        ),
        (
            json!({"size_mib": 256, "balloon_mib": 250}),
            "vms[1].memory.balloon_mib",
            "250 would leave the guest less than memory.floor_mib 64 of its 256 MiB",
        ),
        (
            json!({"balloon_mib": 10, "balloon": false}),
            "vms[1].memory.balloon_mib",
            "10 asks for a balloon but memory.balloon is false",
        ),
        (
            json!({"stats_interval_s": 5000}),
            "vms[1].memory.stats_interval_s",
            "5000 is out of range (0..=3600; 0 turns statistics off)",
        ),
    ] {
        let msg = one_error(fx.parse(&cfg(memory)), path, &[]);
        assert_eq!(msg, message);
    }
    let lines = all_errors(fx.parse(&cfg(json!({"flor_mib": 1, "weight": "x"}))));
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].contains("unknown field \"flor_mib\"")
            && lines[0].contains("did you mean \"floor_mib\"?"),
        "{lines:?}"
    );
}

#[test]
fn a_budget_gives_every_vm_a_balloon_and_the_floors_must_fit() {
    let fx = Fixture::new("mem-budget");
    let vm = |name: &str, floor: u64| json!({"name": name, "kernel": {"path": "vmlinux"}, "memory": {"size_mib": 512, "floor_mib": floor}});
    let spec = fx
        .parse(
            &json!({"host": {"memory": {"budget_mib": 600}}, "vms": [vm("a", 300), vm("b", 300)]}),
        )
        .expect("valid");
    assert_eq!(
        spec.host.memory,
        Some(HostMemorySpec {
            budget_mib: 600,
            tick_ms: 1000
        })
    );
    assert!(spec.vms.iter().all(|v| v.memory.balloon == BalloonMode::On));
    let msg = one_error(
        fx.parse(&json!({"host": {"memory": {"budget_mib": 500, "tick_ms": 100}}, "vms": [vm("a", 300), vm("b", 300)]})),
        "host.memory.budget_mib",
        &[],
    );
    assert_eq!(msg, "500 is less than the sum of the VMs' memory.floor_mib (600: a 300, b 300); raise the budget or lower the floors");
    let mut off = vm("c", 16);
    off["memory"]["balloon"] = json!(false);
    one_error(
        fx.parse(&json!({"host": {"memory": {"budget_mib": 1000}}, "vms": [vm("a", 300), off]})),
        "vms[1].memory.balloon",
        &["every VM under a memory budget needs a balloon"],
    );
    let mut fixed = vm("c", 16);
    fixed["memory"]["balloon_mib"] = json!(100);
    one_error(
        fx.parse(&json!({"host": {"memory": {"budget_mib": 1000}}, "vms": [fixed]})),
        "vms[0].memory.balloon_mib",
        &["cannot be combined with host.memory.budget_mib"],
    );
}

#[test]
fn host_memory_errors() {
    let fx = Fixture::new("mem-host");
    let cfg = |memory: serde_json::Value| json!({"host": {"memory": memory}, "vms": [{"kernel": {"path": "vmlinux"}}]});
    for (memory, path, message) in [
        (
            json!({}),
            "host.memory.budget_mib",
            "required: the MiB of host memory all the VMs together may hold",
        ),
        (
            json!({"budget_mib": 0}),
            "host.memory.budget_mib",
            "0 must be at least 1 MiB",
        ),
        (
            json!({"budget_mib": 512, "tick_ms": 5}),
            "host.memory.tick_ms",
            "5 is out of range (10..=60000)",
        ),
        (
            json!({"budget": 5}),
            "host.memory",
            "unknown field \"budget\" (expected one of: budget_mib, tick_ms)",
        ),
    ] {
        let msg = one_error(fx.parse(&cfg(memory)), path, &[]);
        assert!(msg.starts_with(message), "{msg}");
    }
}
