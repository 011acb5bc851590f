//! One VM added to a running monitor (`parse_vm_for_monitor`): validated as
//! a VM of a monitor file, against the running VMs and the host's policy.

use std::path::Path;

use serde_json::{json, Value};

use super::super::monitor::vm_for_monitor;
use super::super::validate::Ctx;
use super::super::*;
use super::{Fixture, HOST};

impl Fixture {
    fn add(&self, vm: &Value, host: &HostSpec, running: &[VmSpec]) -> Result<VmSpec, Vec<String>> {
        let ctx = Ctx {
            base_dir: self.dir.path(),
            host: &HOST,
            budget: host.memory.is_some(),
            net_dir: Path::new("/sys/class/net"),
            serving: false,
        };
        vm_for_monitor(&vm.to_string(), ctx, host, running)
            .map_err(|e| e.iter().map(ToString::to_string).collect())
    }
}

/// Two running VMs: "web" (CID 3, a writable disk, MAC on `lo`, stdin)
/// and "db" (floor 300 MiB), under a 1000 MiB budget.
fn running(fx: &Fixture) -> (HostSpec, Vec<VmSpec>) {
    fx.dir.write("web.img", &[0u8; 512]);
    let file = json!({
        "host": {"memory": {"budget_mib": 1000}},
        "vms": [
            {"name": "web", "kernel": {"path": "vmlinux"}, "memory": {"size_mib": 512, "floor_mib": 300},
             "drives": [{"id": "root", "path": "web.img", "root": true}],
             "net": [{"id": "eth0", "tap": "lo", "mac": "02:00:00:00:00:01"}],
             "vsock": {"guest_cid": 3, "uds_path": "web.sock"}},
            {"name": "db", "kernel": {"path": "vmlinux"}, "memory": {"size_mib": 512, "floor_mib": 300}}
        ]
    });
    let spec = fx
        .parse(&file)
        .expect("the running monitor's file is valid");
    (spec.host, spec.vms)
}

#[test]
fn a_new_vm_is_admitted_beside_the_running_ones() {
    let fx = Fixture::new("add_ok");
    let (host, vms) = running(&fx);
    let vm = fx
        .add(
            &json!({"kernel": {"path": "vmlinux"}, "memory": {"size_mib": 512, "floor_mib": 400},
                     "drives": [{"id": "root", "path": "web.img", "read_only": true}]}),
            &host,
            &vms,
        )
        .expect_err("web.img is writable in web");
    assert_eq!(
        vm,
        [format!(
            "drives[0].path: \"web.img\" (resolved to {:?}) is attached read-only here and writable at VM \"web\" drive \"root\"; a file attached writable may not be attached anywhere else",
            fx.path("web.img")
        )]
    );
    let vm = fx
        .add(
            &json!({"kernel": {"path": "vmlinux"}, "memory": {"size_mib": 512, "floor_mib": 400},
                     "vsock": {"guest_cid": 4, "uds_path": "new.sock"}}),
            &host,
            &vms,
        )
        .expect("valid");
    assert_eq!(vm.name, "vm2", "the default name counts the running VMs");
    assert_eq!(
        vm.memory.balloon,
        BalloonMode::On,
        "a budget gives it a balloon"
    );
    assert!(!vm.serial.stdin, "web reads stdin");
    assert_eq!(vm.device_plan().virtio[0].name, "balloon0");
}

#[test]
fn clashes_with_running_vms_name_path_and_value() {
    let fx = Fixture::new("add_clash");
    let (host, vms) = running(&fx);
    let errors = fx
        .add(
            &json!({"name": "web", "kernel": {"path": "vmlinux"},
                     "memory": {"size_mib": 512, "floor_mib": 401, "balloon": false},
                     "serial": {"stdin": true},
                     "net": [{"id": "eth0", "tap": "lo", "mac": "02:00:00:00:00:01"}],
                     "vsock": {"guest_cid": 3, "uds_path": "web.sock"}}),
            &host,
            &vms,
        )
        .expect_err("clashes");
    let sock = fx.path("web.sock");
    assert_eq!(
        errors,
        [
            "name: \"web\" is already used by a running VM".to_string(),
            "serial.stdin: true, but VM \"web\" already reads stdin; only one VM can".into(),
            "net[0].tap: \"lo\" is already used by VM \"web\" interface \"eth0\"".into(),
            "net[0].mac: \"02:00:00:00:00:01\" is already used by VM \"web\" interface \"eth0\""
                .into(),
            "vsock.guest_cid: 3 is already used by VM \"web\"".into(),
            format!(
                "vsock.uds_path: \"web.sock\" (resolved to {sock:?}) is already used by VM \"web\""
            ),
        ]
    );
    let errors = fx
        .add(
            &json!({"kernel": {"path": "vmlinux"},
                     "memory": {"size_mib": 512, "floor_mib": 401, "balloon": false}}),
            &host,
            &vms,
        )
        .expect_err("does not fit");
    assert_eq!(
        errors,
        [
            "memory.balloon: false, but host.memory.budget_mib is set: every VM under a memory budget needs a balloon",
            "memory.floor_mib: 401 does not fit: host.memory.budget_mib is 1000 and the running VMs' floors take 600 (web 300, db 300), leaving 400",
        ]
    );
}

#[test]
fn only_a_vm_definition_is_accepted() {
    let fx = Fixture::new("add_form");
    let (host, vms) = running(&fx);
    for text in [
        json!({"vms": [{"kernel": {"path": "vmlinux"}}]}),
        json!({"boot-source": {"kernel_image_path": "vmlinux"}}),
    ] {
        let errors = fx.add(&text, &host, &vms).expect_err("not a VM definition");
        assert_eq!(
            errors,
            ["<root>: expected one VM definition (name, kernel, cpu, ...), not a monitor file or a Firecracker config file"]
        );
    }
    let errors = fx.add(
        &json!({"kernel": {"path": "vmlinux"}, "cpu": {"vcpu": 1}}),
        &host,
        &vms,
    );
    assert_eq!(
        errors.expect_err("unknown field"),
        ["cpu: unknown field \"vcpu\" (expected one of: vcpus, weight, max); did you mean \"vcpus\"?"]
    );
    let errors = fx.add(&json!([1]), &host, &vms).expect_err("not an object");
    assert_eq!(
        errors,
        ["<root>: expected an object (a VM definition), found an array"]
    );
}

#[test]
fn the_public_entry_resolves_paths_against_base_dir() {
    let fx = Fixture::new("add_public");
    let vm = parse_vm_for_monitor(
        r#"{"name": "x", "kernel": {"path": "vmlinux"}}"#,
        fx.dir.path(),
        &HostSpec::default(),
        &[],
    )
    .expect("valid");
    assert_eq!(vm.kernel.path, fx.path("vmlinux"));
    assert!(!vm.serial.stdin, "nobody reads stdin unless the VM asks");
}

#[test]
fn a_huge_definition_is_refused_before_parsing() {
    let text = format!("{{\"name\": \"{}\"}}", "x".repeat(17 << 20));
    let errors = parse_vm_for_monitor(&text, Path::new("/"), &HostSpec::default(), &[])
        .expect_err("too large");
    assert_eq!(errors.len(), 1);
    assert!(
        errors
            .to_string()
            .starts_with("<root>: is 17825804 bytes, larger than"),
        "{errors}"
    );
}
