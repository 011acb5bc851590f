//! Value and file checks: ranges, kernels, names, serial, CLI flags, files.

use std::path::Path;

use serde_json::{json, Value};

use super::super::test_util::elf;
use super::super::*;
use super::{one_error, Fixture, HOST};

#[test]
fn vcpus_out_of_range() {
    let fx = Fixture::new("vcpus");
    let cfg = |n: u64| json!({"kernel": {"path": "vmlinux"}, "cpu": {"vcpus": n}});
    let msg = one_error(fx.parse(&cfg(0)), "cpu.vcpus", &[]);
    assert_eq!(msg, "0 is out of range (1..=254)");
    one_error(
        fx.parse(&cfg(255)),
        "cpu.vcpus",
        &["255 is out of range (1..=254)"],
    );
    one_error(fx.parse(&cfg(300)), "cpu.vcpus", &["300 is out of range"]);
    assert_eq!(fx.parse(&cfg(254)).expect("valid").vms[0].vcpus, 254);
}

#[test]
fn memory_out_of_range() {
    let fx = Fixture::new("memory");
    let cfg = |n: u64| json!({"kernel": {"path": "vmlinux"}, "memory": {"size_mib": n}});
    let msg = one_error(fx.parse(&cfg(8)), "memory.size_mib", &[]);
    assert_eq!(msg, "8 is below the minimum of 16 MiB");
    let msg = one_error(fx.parse(&cfg(8192)), "memory.size_mib", &[]);
    assert_eq!(msg, "8192 MiB is more than the host's 4096 MiB of RAM");
    one_error(
        fx.parse(&cfg(u64::MAX)),
        "memory.size_mib",
        &["18446744073709551615"],
    );
    assert!(fx.parse(&cfg(4096)).is_ok());
}

#[test]
fn missing_kernel() {
    let fx = Fixture::new("missing_kernel");
    let msg = one_error(
        fx.parse(&json!({"kernel": {"cmdline": "x"}})),
        "kernel.path",
        &[],
    );
    assert_eq!(msg, "required");
    one_error(fx.parse(&json!({"name": "a"})), "kernel", &["required"]);
    one_error(
        fx.parse(&json!({"kernel": {"path": ""}})),
        "kernel.path",
        &["must not be empty"],
    );
}

#[test]
fn kernel_file_problems() {
    let fx = Fixture::new("kernel_files");
    let cfg = |p: &Path| json!({"kernel": {"path": p}});
    let msg = one_error(
        fx.parse(&cfg(Path::new("/nope/vmlinux"))),
        "kernel.path",
        &[],
    );
    assert_eq!(msg, "\"/nope/vmlinux\" does not exist");
    let msg = one_error(fx.parse(&cfg(&fx.path("subdir"))), "kernel.path", &[]);
    assert_eq!(
        msg,
        format!("{:?} is a directory, not a kernel image", fx.path("subdir"))
    );
    let msg = one_error(fx.parse(&cfg(&fx.path("notes.txt"))), "kernel.path", &[]);
    assert_eq!(
        msg,
        format!(
            "{:?} is neither an ELF64 x86_64 vmlinux nor a bzImage",
            fx.path("notes.txt")
        )
    );
    let msg = one_error(fx.parse(&cfg(&fx.path("empty"))), "kernel.path", &[]);
    assert_eq!(msg, format!("{:?} is empty", fx.path("empty")));
    // Relative paths are shown as written and as resolved.
    let msg = one_error(fx.parse(&cfg(Path::new("missing"))), "kernel.path", &[]);
    assert_eq!(
        msg,
        format!(
            "\"missing\" (resolved to {:?}) does not exist",
            fx.path("missing")
        )
    );
}

#[test]
fn initrd_problems() {
    let fx = Fixture::new("initrd");
    let cfg = |i: &str| json!({"kernel": {"path": "vmlinux", "initrd": i}});
    one_error(
        fx.parse(&cfg("nope.cpio")),
        "kernel.initrd",
        &["\"nope.cpio\"", "does not exist"],
    );
    one_error(
        fx.parse(&cfg("empty")),
        "kernel.initrd",
        &["\"empty\"", "is empty"],
    );
    one_error(
        fx.parse(&cfg("subdir")),
        "kernel.initrd",
        &["is a directory, not an initrd image"],
    );
}

#[test]
fn bad_cmdline() {
    let fx = Fixture::new("cmdline");
    let cfg = |c: &str| json!({"kernel": {"path": "vmlinux", "cmdline": c}});
    let msg = one_error(fx.parse(&cfg("console=ttS\u{7}0")), "kernel.cmdline", &[]);
    assert_eq!(msg, "contains a non-printable character (0x07) at byte 11");
    let msg = one_error(fx.parse(&cfg(&"a".repeat(3000))), "kernel.cmdline", &[]);
    assert_eq!(msg, "3000 bytes is longer than the maximum of 2047");
}

#[test]
fn pvh_needs_the_note() {
    let fx = Fixture::new("pvh");
    let cfg = |k: &str| json!({"kernel": {"path": k, "protocol": "pvh"}});
    let msg = one_error(fx.parse(&cfg("vmlinux")), "kernel.protocol", &[]);
    assert_eq!(
        msg,
        format!("\"pvh\" but {:?} has no PVH entry note", fx.path("vmlinux"))
    );
    one_error(
        fx.parse(&cfg("bzImage")),
        "kernel.protocol",
        &["\"pvh\"", "is a bzImage"],
    );
    assert!(fx.parse(&cfg("pvh-vmlinux")).is_ok());
}

#[test]
fn kernel_must_fit_in_memory() {
    let fx = Fixture::new("fit");
    let cfg = |k: &str, mib: u64| json!({"kernel": {"path": k}, "memory": {"size_mib": mib}});
    let msg = one_error(fx.parse(&cfg("bzImage", 32)), "memory.size_mib", &[]);
    assert_eq!(
        msg,
        "the kernel needs 40 MiB of guest memory to load but memory.size_mib is 32"
    );
    assert!(fx.parse(&cfg("bzImage", 40)).is_ok());
    one_error(
        fx.parse(&cfg("vmlinux", 16)),
        "memory.size_mib",
        &["needs 24 MiB", "is 16"],
    );
    let with_initrd =
        json!({"kernel": {"path": "vmlinux", "initrd": "initrd.cpio"}, "memory": {"size_mib": 24}});
    one_error(
        fx.parse(&with_initrd),
        "memory.size_mib",
        &["the kernel and initrd need 25 MiB"],
    );
    // The initrd must end below 896 MiB whatever the memory size.
    fx.dir.write(
        "at895",
        &elf(&[(0x100_0000, (896 << 20) - 0x100_1000)], None),
    );
    let near =
        json!({"kernel": {"path": "at895", "initrd": "initrd.cpio"}, "memory": {"size_mib": 2048}});
    one_error(
        fx.parse(&near),
        "kernel.initrd",
        &["need 897 MiB", "below 896 MiB"],
    );
    // A kernel that loads above 3 GiB cannot fit whatever the memory size.
    fx.dir.write("high", &elf(&[(0xc000_0000, 0x1000)], None));
    one_error(
        fx.parse(&cfg("high", 4096)),
        "kernel.path",
        &["0xc0001000", "3072 MiB"],
    );
}

#[test]
fn bad_names() {
    let fx = Fixture::new("names");
    let msg = one_error(
        fx.parse(&json!({"name": "bad name!", "kernel": {"path": "vmlinux"}})),
        "name",
        &[],
    );
    assert_eq!(msg, "\"bad name!\" must match [A-Za-z0-9_-]{1,32}");
    let k = json!({"path": "vmlinux"});
    let msg = one_error(
        fx.parse(&json!({"vms": [{"name": "a", "kernel": k}, {"name": "a", "kernel": k}]})),
        "vms[1].name",
        &[],
    );
    assert_eq!(msg, "\"a\" is already used by vms[0]");
    one_error(
        fx.parse(&json!({"vms": [{"kernel": k}, {"name": "vm0", "kernel": k}]})),
        "vms[1].name",
        &["\"vm0\" is already used by vms[0]"],
    );
    one_error(
        fx.parse(&json!({"vms": [{"name": "vm1", "kernel": k}, {"kernel": k}]})),
        "vms[1].name",
        &["\"vm1\"", "default name"],
    );
}

#[test]
fn serial_problems() {
    let fx = Fixture::new("serial");
    let cfg = |serial: Value| json!({"kernel": {"path": "vmlinux"}, "serial": serial});
    let msg = one_error(
        fx.parse(&cfg(json!({"output": "file"}))),
        "serial.path",
        &[],
    );
    assert_eq!(msg, "required when serial.output is \"file\"");
    let msg = one_error(
        fx.parse(&cfg(json!({"output": "file", "path": "/nope/out.log"}))),
        "serial.path",
        &[],
    );
    assert!(
        msg.starts_with("directory \"/nope\" does not exist"),
        "{msg}"
    );
    one_error(
        fx.parse(&cfg(json!({"output": "file", "path": "subdir"}))),
        "serial.path",
        &["\"subdir\"", "is a directory"],
    );
    one_error(
        fx.parse(&cfg(json!({"output": "off", "path": "x.log"}))),
        "serial.path",
        &["\"x.log\"", "only used when serial.output is \"file\""],
    );
    one_error(
        fx.parse(&cfg(json!({"output": "tty"}))),
        "serial.output",
        &["\"tty\""],
    );
    let spec = fx
        .parse(&cfg(json!({"output": "off", "stdin": false})))
        .expect("valid");
    assert_eq!(
        spec.vms[0].serial,
        SerialSpec {
            output: SerialOutput::Off,
            stdin: false
        }
    );
}

#[test]
fn flags_build_one_vm() {
    let fx = Fixture::new("flags");
    let spec = from_flags(&VmFlags {
        kernel: Some(fx.path("vmlinux")),
        initrd: Some(fx.path("initrd.cpio")),
        cmdline: Some("console=ttyS0".into()),
        vcpus: Some(3),
        memory_mib: Some(64),
        name: None,
    })
    .expect("valid");
    let vm = &spec.vms[0];
    assert_eq!((vm.name.as_str(), vm.vcpus, vm.memory_mib), ("vm0", 3, 64));
    assert_eq!(vm.kernel.initrd, Some(fx.path("initrd.cpio")));
    assert_eq!(
        vm.serial,
        SerialSpec {
            output: SerialOutput::Stdout,
            stdin: true
        }
    );
}

#[test]
fn flag_errors_name_the_flag() {
    let fx = Fixture::new("flag_errors");
    let errors = from_flags(&VmFlags {
        kernel: None,
        vcpus: Some(0),
        memory_mib: Some(4),
        name: Some("no way".into()),
        ..VmFlags::default()
    })
    .expect_err("invalid");
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "--name: \"no way\" must match [A-Za-z0-9_-]{1,32}",
            "--kernel: required",
            "--vcpus: 0 is out of range (1..=254)",
            "--memory: 4 is below the minimum of 16 MiB",
        ]
    );
    let errors = from_flags(&VmFlags {
        kernel: Some(fx.path("bzImage")),
        memory_mib: Some(32),
        ..VmFlags::default()
    })
    .expect_err("too small");
    assert_eq!(
        errors.to_string(),
        "--memory: the kernel needs 40 MiB of guest memory to load but --memory is 32"
    );
}

#[test]
fn load_file_resolves_paths_against_the_file() {
    let fx = Fixture::new("load");
    let config = fx.dir.write(
        "vm.json",
        json!({"kernel": {"path": "vmlinux", "initrd": "./initrd.cpio"}})
            .to_string()
            .as_bytes(),
    );
    let spec = load_file(&config).expect("valid");
    assert_eq!(spec.vms[0].kernel.path, fx.path("vmlinux"));
    assert_eq!(spec.vms[0].kernel.initrd, Some(fx.path("./initrd.cpio")));

    let missing = fx.path("missing.json");
    let msg = one_error(load_file(&missing), "<file>", &[]);
    assert_eq!(msg, format!("{missing:?} does not exist"));
    one_error(
        load_file(fx.dir.path()),
        "<file>",
        &["is a directory, not a config file"],
    );
    let binary = fx.dir.write("bin.json", b"{\"name\": \"\xff\"}");
    one_error(load_file(&binary), "<file>", &["not UTF-8"]);
}

#[test]
fn parse_str_uses_base_dir() {
    let fx = Fixture::new("parse_str");
    let spec = parse_str(r#"{"kernel": {"path": "vmlinux"}}"#, fx.dir.path()).expect("valid");
    assert_eq!(spec.vms[0].kernel.path, fx.path("vmlinux"));
}

#[test]
fn examples_in_the_repo_parse() {
    // The example files are JSON of the documented shape; their kernels may
    // be absent here, so only structural errors are ruled out.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("resources/examples");
    for name in [
        "hello.json",
        "linux.json",
        "firecracker-hello.json",
        "firecracker-linux.json",
    ] {
        let path = dir.join(name);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        if let Err(errors) = parse_with(&text, &dir, &HOST) {
            for error in &errors {
                assert!(
                    error.path.ends_with("kernel.path")
                        || error.path.ends_with("kernel.initrd")
                        || error.path.starts_with("boot-source.kernel_image_path")
                        || error.path.starts_with("boot-source.initrd_path"),
                    "{name}: unexpected {error}"
                );
            }
        }
    }
}

#[test]
fn cpu_policy_in_files() {
    let fx = Fixture::new("cpu_policy");
    let k = json!({"path": "vmlinux"});
    let spec = fx
        .parse(&json!({
            "host": {"cpu": {"cpus": [1], "tick_ms": 5}},
            "vms": [
                {"kernel": k, "cpu": {"vcpus": 2, "weight": 300, "max": 1}},
                {"kernel": k, "cpu": {"max": 0.25}}
            ]
        }))
        .expect("valid");
    assert_eq!(
        spec.host,
        HostSpec {
            cpus: Some(vec![1]),
            sched_tick_ms: 5,
            memory: None,
        }
    );
    assert_eq!(
        spec.vms[0].cpu,
        CpuSpec {
            weight: 300,
            max: Some(1.0)
        }
    );
    assert_eq!(
        spec.vms[1].cpu,
        CpuSpec {
            weight: DEFAULT_CPU_WEIGHT,
            max: Some(0.25)
        }
    );
    let errors = fx
        .parse(&json!({
            "host": {"cpu": {"cpus": [0, 7]}},
            "vms": [
                {"kernel": k, "cpu": {"vcpus": 2, "max": 3.5}},
                {"name": "b", "kernel": k, "cpu": {"weight": 0}},
                {"name": "c", "kernel": k, "cpu": {"weight": 1.5, "max": "half"}}
            ]
        }))
        .expect_err("invalid");
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "host.cpu.cpus: CPU 7 is not online (this host has 2)",
            "vms[2].cpu.max: invalid type: string \"half\", expected a number",
            "vms[2].cpu.weight: invalid type: number 1.5, expected a non-negative integer",
            "vms[0].cpu.max: 3.5 is more than cpu.vcpus (2); a VM cannot use more CPUs than it has vCPUs",
            "vms[1].cpu.weight: 0 is out of range (1..=10000)",
        ],
        "got:\n{errors}"
    );
    // A single-VM file has no host section: host policy is the default.
    let spec = fx
        .parse(&json!({"kernel": k, "cpu": {"weight": 10000}}))
        .expect("valid");
    assert_eq!(spec.host, HostSpec::default());
    assert_eq!(spec.vms[0].cpu.weight, 10_000);
}
