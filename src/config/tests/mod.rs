//! Config tests: each bad config asserts the exact error path and that the
//! message names the bad value. No KVM; kernels are synthetic files.

use std::path::PathBuf;

use serde_json::{json, Value};

use super::test_util::{bzimage, elf, TempDir};
use super::validate::HostInfo;
use super::*;

mod devices;
mod firecracker;
mod memory;
mod running;
mod values;

/// A host with 4 GiB of RAM and 2 CPUs, so "too large" and "not online"
/// do not depend on the machine.
pub(super) const HOST: HostInfo = HostInfo {
    mem_total_mib: Some(4096),
    online_cpus: Some(2),
};

/// A temp dir holding the kernels and files the configs refer to.
pub(super) struct Fixture {
    pub(super) dir: TempDir,
}

impl Fixture {
    fn new(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        // Loads at 16 MiB, 8 MiB long: needs 24 MiB of RAM.
        dir.write("vmlinux", &elf(&[(0x100_0000, 0x80_0000)], None));
        dir.write(
            "pvh-vmlinux",
            &elf(&[(0x100_0000, 0x80_0000)], Some(0x100_0040)),
        );
        // init_size 39 MiB from 1 MiB: needs 40 MiB of RAM.
        dir.write("bzImage", &bzimage(0x20f, true, 39 << 20));
        dir.write("initrd.cpio", &[0u8; 5000]);
        dir.write("notes.txt", b"root:x:0:0:root:/root:/bin/bash\n");
        dir.write("empty", b"");
        std::fs::create_dir(dir.path().join("subdir")).expect("mkdir");
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn parse(&self, config: &Value) -> Result<MonitorSpec, ConfigErrors> {
        parse_with(&config.to_string(), self.dir.path(), &HOST)
    }

    fn parse_text(&self, text: &str) -> Result<MonitorSpec, ConfigErrors> {
        parse_with(text, self.dir.path(), &HOST)
    }
}

/// Asserts `result` failed with exactly one error, at `path`, whose message
/// contains every one of `needles`. Returns the message.
pub(super) fn one_error(
    result: Result<MonitorSpec, ConfigErrors>,
    path: &str,
    needles: &[&str],
) -> String {
    let errors = match result {
        Ok(spec) => panic!("expected an error at {path}, got {spec:?}"),
        Err(errors) => errors,
    };
    assert_eq!(errors.len(), 1, "expected one error, got:\n{errors}");
    let error = &errors.errors()[0];
    assert_eq!(error.path, path, "wrong path in: {error}");
    for needle in needles {
        assert!(
            error.message.contains(needle),
            "{needle:?} missing in: {error}"
        );
    }
    error.message.clone()
}

#[test]
fn valid_single_vm() {
    let fx = Fixture::new("single");
    let spec = fx
        .parse(&json!({
            "name": "demo",
            "kernel": {
                "path": "vmlinux",
                "initrd": "initrd.cpio",
                "cmdline": "console=ttyS0 quiet",
                "protocol": "linux"
            },
            "cpu": { "vcpus": 2 },
            "memory": { "size_mib": 128 },
            "serial": { "output": "stdout", "path": null, "stdin": true }
        }))
        .expect("valid");
    assert_eq!(
        spec,
        MonitorSpec {
            vms: vec![VmSpec {
                name: "demo".into(),
                vcpus: 2,
                memory_mib: 128,
                memory: MemorySpec::defaults(128),
                kernel: KernelSpec {
                    path: fx.path("vmlinux"),
                    format: KernelFormat::Elf { pvh_entry: None },
                    initrd: Some(fx.path("initrd.cpio")),
                    cmdline: "console=ttyS0 quiet".into(),
                    protocol: BootProtocol::Linux,
                },
                serial: SerialSpec {
                    output: SerialOutput::Stdout,
                    stdin: true,
                },
                cpu: CpuSpec::default(),
                acl: AclSpec::default(),
                drives: Vec::new(),
                net: Vec::new(),
                vsock: None,
                io: ShareSpec::default(),
                net_share: ShareSpec::default(),
            }],
            host: HostSpec::default(),
        }
    );
}

#[test]
fn minimal_single_vm_gets_defaults() {
    let fx = Fixture::new("minimal");
    let spec = fx
        .parse(&json!({"kernel": {"path": "pvh-vmlinux"}}))
        .expect("valid");
    let vm = &spec.vms[0];
    assert_eq!(vm.name, DEFAULT_VM_NAME);
    assert_eq!(vm.vcpus, DEFAULT_VCPUS);
    assert_eq!(vm.memory_mib, DEFAULT_MEMORY_MIB);
    assert_eq!(vm.kernel.cmdline, DEFAULT_CMDLINE);
    assert_eq!(vm.kernel.protocol, BootProtocol::Auto);
    assert_eq!(
        vm.kernel.format,
        KernelFormat::Elf {
            pvh_entry: Some(0x100_0040)
        }
    );
    assert_eq!(
        vm.serial,
        SerialSpec {
            output: SerialOutput::Stdout,
            stdin: true
        }
    );
}

#[test]
fn valid_monitor_file_with_two_vms() {
    let fx = Fixture::new("monitor");
    let spec = fx
        .parse(&json!({
            "host": {},
            "vms": [
                { "kernel": { "path": "bzImage" }, "memory": { "size_mib": 64 } },
                {
                    "name": "web",
                    "kernel": { "path": fx.path("pvh-vmlinux"), "protocol": "pvh" },
                    "cpu": { "vcpus": 4 },
                    "serial": { "output": "file", "path": "web.log" }
                }
            ]
        }))
        .expect("valid");
    assert_eq!(spec.vms.len(), 2);
    let (a, b) = (&spec.vms[0], &spec.vms[1]);
    assert_eq!((a.name.as_str(), a.vcpus, a.memory_mib), ("vm0", 1, 64));
    assert_eq!(a.kernel.format, KernelFormat::BzImage);
    assert!(a.serial.stdin, "the first VM reads stdin by default");
    assert_eq!((b.name.as_str(), b.vcpus, b.memory_mib), ("web", 4, 256));
    assert_eq!(b.kernel.protocol, BootProtocol::Pvh);
    assert_eq!(
        b.serial,
        SerialSpec {
            output: SerialOutput::File(fx.path("web.log")),
            stdin: false
        }
    );
}

#[test]
fn explicit_stdin_moves_the_default() {
    let fx = Fixture::new("stdin_move");
    let k = json!({"path": "vmlinux"});
    let spec = fx
        .parse(&json!({"vms": [
            {"kernel": k},
            {"kernel": k, "serial": {"stdin": true}}
        ]}))
        .expect("valid");
    assert!(!spec.vms[0].serial.stdin);
    assert!(spec.vms[1].serial.stdin);
    assert_eq!(spec.vms[1].name, "vm1");
}

#[test]
fn unknown_top_level_field() {
    let fx = Fixture::new("unknown_top");
    let msg = one_error(
        fx.parse(&json!({"kernel": {"path": "vmlinux"}, "kernal": {}})),
        "<root>",
        &[
            "unknown field \"kernal\"",
            "expected one of: name, kernel, cpu, memory, serial",
        ],
    );
    assert!(msg.ends_with("did you mean \"kernel\"?"), "{msg}");
    one_error(
        fx.parse(&json!({"vms": [{"kernel": {"path": "vmlinux"}}], "hosts": {}})),
        "<root>",
        &["unknown field \"hosts\" (expected one of: host, vms)"],
    );
}

#[test]
fn unknown_nested_field() {
    let fx = Fixture::new("unknown_nested");
    let msg = one_error(
        fx.parse(&json!({"kernel": {"path": "vmlinux"}, "cpu": {"vcpu": 2}})),
        "cpu",
        &[],
    );
    assert_eq!(
        msg,
        "unknown field \"vcpu\" (expected one of: vcpus, weight, max); did you mean \"vcpus\"?"
    );
    one_error(
        fx.parse(&json!({"host": {"cpus": {}}, "vms": [{"kernel": {"path": "vmlinux"}}]})),
        "host",
        &["unknown field \"cpus\" (expected one of: cpu, api, seccomp, memory, io, net, sandbox); did you mean \"cpu\"?"],
    );
}

#[test]
fn wrong_type() {
    let fx = Fixture::new("wrong_type");
    let msg = one_error(
        fx.parse(&json!({"vms": [
            {"kernel": {"path": "vmlinux"}},
            {"name": "b", "kernel": {"path": "vmlinux"}, "cpu": {"vcpus": "two"}}
        ]})),
        "vms[1].cpu.vcpus",
        &["\"two\""],
    );
    assert_eq!(
        msg,
        "invalid type: string \"two\", expected a non-negative integer"
    );
    one_error(
        fx.parse(&json!({"kernel": {"path": "vmlinux"}, "memory": {"size_mib": -5}})),
        "memory.size_mib",
        &["-5"],
    );
    one_error(
        fx.parse(&json!({"kernel": {"path": "vmlinux"}, "memory": 256})),
        "memory",
        &["expected an object, found number 256"],
    );
    one_error(
        fx.parse(&json!({"kernel": {"path": "vmlinux", "protocol": "efi"}})),
        "kernel.protocol",
        &["\"efi\"", "\"auto\", \"linux\", \"pvh\""],
    );
    one_error(
        fx.parse(&json!({"name": 7, "kernel": {"path": "vmlinux"}})),
        "name",
        &["7"],
    );
    one_error(fx.parse(&json!([1, 2])), "<root>", &["found an array"]);
    one_error(fx.parse(&json!({"vms": {}})), "vms", &["expected an array"]);
    one_error(
        fx.parse(&json!({"vms": ["vm"]})),
        "vms[0]",
        &["found string \"vm\""],
    );
}

#[test]
fn monitor_file_shape() {
    let fx = Fixture::new("shape");
    let msg = one_error(fx.parse(&json!({"host": {}, "vms": []})), "vms", &[]);
    assert_eq!(msg, "must list at least one VM (it is empty)");
    one_error(fx.parse(&json!({"host": {}})), "vms", &["required"]);
    let msg = one_error(
        fx.parse(&json!({"vms": [{"kernel": {"path": "vmlinux"}}], "kernel": {}, "cpu": {}})),
        "<root>",
        &["\"kernel\"", "\"cpu\""],
    );
    assert!(msg.starts_with("has \"vms\" (a monitor file)"), "{msg}");
}

#[test]
fn only_one_vm_reads_stdin() {
    let fx = Fixture::new("stdin");
    let vm = json!({"kernel": {"path": "vmlinux"}, "serial": {"stdin": true}});
    let msg = one_error(
        fx.parse(&json!({"vms": [vm, {"name": "b", "kernel": {"path": "vmlinux"}}, {"name": "c", "kernel": {"path": "vmlinux"}, "serial": {"stdin": true}}]})),
        "vms[2].serial.stdin",
        &[],
    );
    assert_eq!(msg, "true, but vms[0] already reads stdin; only one VM can");
}

#[test]
fn json_syntax_error_names_line_and_column() {
    let fx = Fixture::new("syntax");
    let text = "{\n  \"kernel\": {\"path\": \"vmlinux\"}\n  \"cpu\": {}\n}\n";
    let msg = one_error(fx.parse_text(text), "line 3, column 3", &[]);
    assert_eq!(msg, "invalid JSON: expected \",\" or \"}\"");
    one_error(fx.parse_text(""), "line 1, column 0", &["EOF"]);
}

#[test]
fn many_errors_are_reported_at_once() {
    let fx = Fixture::new("many");
    let errors = fx
        .parse(&json!({
            "host": {"budget": 1},
            "vms": [
                {
                    "name": "bad name!",
                    "kernel": {"path": "/nope/vmlinux", "cmdline": "a\u{1}b"},
                    "cpu": {"vcpus": 0},
                    "memory": {"size_mib": 8},
                    "serial": {"output": "file"}
                },
                {
                    "kernel": {"path": "vmlinux", "protocl": "pvh"},
                    "cpu": {"vcpus": "two"},
                    "memory": {"size_mib": 1.5},
                    "extra": true
                }
            ]
        }))
        .expect_err("invalid");
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let expected = [
        "host: unknown field \"budget\" (expected one of: cpu, api, seccomp, memory, io, net, sandbox)",
        "vms[1]: unknown field \"extra\" (expected one of: name, kernel, cpu, memory, serial, acl, drives, net, vsock, io)",
        "vms[1].kernel: unknown field \"protocl\" (expected one of: path, initrd, cmdline, protocol); did you mean \"protocol\"?",
        "vms[1].cpu.vcpus: invalid type: string \"two\", expected a non-negative integer",
        "vms[1].memory.size_mib: invalid type: number 1.5, expected a non-negative integer",
        "vms[0].name: \"bad name!\" must match [A-Za-z0-9_-]{1,32}",
        "vms[0].kernel.path: \"/nope/vmlinux\" does not exist",
        "vms[0].kernel.cmdline: contains a non-printable character (0x01) at byte 1",
        "vms[0].cpu.vcpus: 0 is out of range (1..=254)",
        "vms[0].memory.size_mib: 8 is below the minimum of 16 MiB",
        "vms[0].serial.path: required when vms[0].serial.output is \"file\"",
    ];
    assert_eq!(lines, expected, "got:\n{errors}");
    assert_eq!(errors.len(), 11);
    assert_eq!(errors.to_string().lines().count(), 11);
}

#[test]
fn hostile_inputs_are_errors_not_panics() {
    let fx = Fixture::new("hostile");
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    one_error(
        fx.parse_text(&deep),
        "line 1, column 128",
        &["recursion limit"],
    );
    let huge = r#"{"kernel": {"path": "vmlinux"}, "cpu": {"vcpus": 1e400}}"#;
    one_error(
        fx.parse_text(huge),
        "line 1, column 54",
        &["number out of range"],
    );
    one_error(
        fx.parse(&json!({"kernel": {"path": "a\u{0}b"}})),
        "kernel.path",
        &["\"a\\0b\"", "cannot be read"],
    );
    one_error(
        fx.parse(&json!({"kernel": {"path": "/dev/zero"}})),
        "kernel.path",
        &["\"/dev/zero\"", "character device"],
    );
    for text in [
        "null",
        "1",
        "\"x\"",
        "{\"vms\": [null]}",
        "{\"vms\": [[]]}",
        "{\"kernel\": []}",
    ] {
        assert!(fx.parse_text(text).is_err(), "{text}");
    }
}
