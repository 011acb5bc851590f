//! Firecracker config files: the mapping onto a Hearth VM, every refusal
//! (naming the field), mixed files, Firecracker's own limits, and
//! `convert_file` round trips.

use serde_json::{json, Value};

use super::super::*;
use super::{one_error, Fixture};

/// Firecracker's default command line plus the `pci=off` it appends.
fn default_cmdline() -> String {
    format!("{FIRECRACKER_DEFAULT_BOOT_ARGS} pci=off")
}

fn lines(result: Result<MonitorSpec, ConfigErrors>) -> Vec<String> {
    match result {
        Ok(spec) => panic!("expected errors, got {spec:?}"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

fn fc(extra: Value) -> Value {
    let mut config = json!({
        "boot-source": {"kernel_image_path": "vmlinux", "boot_args": "console=ttyS0"},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 64}
    });
    if let (Value::Object(config), Value::Object(extra)) = (&mut config, extra) {
        config.extend(extra);
    }
    config
}

#[test]
fn firecracker_file_maps_onto_one_vm() {
    let fx = Fixture::new("fc_map");
    let spec = fx
        .parse(&json!({
            "boot-source": {
                "kernel_image_path": "vmlinux",
                "initrd_path": "initrd.cpio",
                "boot_args": "console=ttyS0 reboot=k panic=1"
            },
            "machine-config": {
                "vcpu_count": 2,
                "mem_size_mib": 64,
                "smt": false,
                "track_dirty_pages": false,
                "huge_pages": "None",
                "cpu_template": "None"
            },
            "drives": [],
            "network-interfaces": [],
            "pmem": [],
            "logger": {"show_level": false},
            "balloon": null,
            "vsock": null
        }))
        .expect("valid");
    assert_eq!(
        spec,
        MonitorSpec {
            vms: vec![VmSpec {
                name: "vm0".into(),
                vcpus: 2,
                memory_mib: 64,
                memory: MemorySpec::defaults(64),
                kernel: KernelSpec {
                    path: fx.path("vmlinux"),
                    format: KernelFormat::Elf { pvh_entry: None },
                    initrd: Some(fx.path("initrd.cpio")),
                    cmdline: "console=ttyS0 reboot=k panic=1 pci=off".into(),
                    protocol: BootProtocol::Auto,
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
fn firecracker_defaults_boot_args_vcpus_and_memory() {
    let fx = Fixture::new("fc_defaults");
    let spec = fx
        .parse(&json!({"boot-source": {"kernel_image_path": "vmlinux"}}))
        .expect("valid");
    let vm = &spec.vms[0];
    assert_eq!(vm.kernel.cmdline, default_cmdline());
    assert_eq!(
        vm.kernel.cmdline,
        "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd \
         swiotlb=noforce pci=off"
    );
    assert_eq!((vm.vcpus, vm.memory_mib), (1, FIRECRACKER_DEFAULT_MEM_MIB));
}

#[test]
fn the_balloon_is_mapped_onto_hearths() {
    let fx = Fixture::new("fc_balloon");
    let cfg = |balloon: Value| {
        json!({
            "boot-source": {"kernel_image_path": "vmlinux"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
            "balloon": balloon
        })
    };
    let spec = fx
        .parse(&cfg(
            json!({"amount_mib": 64, "deflate_on_oom": false, "stats_polling_interval_s": 5}),
        ))
        .expect("valid");
    let m = spec.vms[0].memory;
    assert_eq!(m.balloon, BalloonMode::On);
    assert_eq!(
        m.balloon_options,
        BalloonOptions {
            target_mib: Some(64),
            deflate_on_oom: false,
            stats_interval_s: 5,
            free_page_reporting: false,
        }
    );
    let spec = fx
        .parse(&cfg(json!({"amount_mib": 0, "deflate_on_oom": true})))
        .expect("valid");
    assert_eq!(
        spec.vms[0].memory.balloon_options.stats_interval_s, 0,
        "no statistics unless asked"
    );
    one_error(
        fx.parse(&cfg(json!({"amount_mib": 250, "deflate_on_oom": true}))),
        "balloon.amount_mib",
        &["250 would leave the guest less than memory.floor_mib 64 of its 256 MiB"],
    );
    one_error(
        fx.parse(&cfg(json!({"amount_mib": 1, "free_page_hinting": true}))),
        "balloon",
        &["unknown field \"free_page_hinting\""],
    );
}

#[test]
fn every_unsupported_section_is_refused_by_name() {
    let fx = Fixture::new("fc_refused");
    let not_yet = "is not supported by Hearth yet";
    for (extra, path, needles) in [
        (
            json!({"pmem": [{"id": "p0", "path_on_host": "/img/p"}]}),
            "pmem[0]",
            vec!["pmem device \"p0\"", not_yet],
        ),
        (
            json!({"entropy": {}}),
            "entropy",
            vec!["entropy device", not_yet],
        ),
        (
            json!({"mmds-config": {"network_interfaces": ["eth0"]}}),
            "mmds-config",
            vec!["metadata service", not_yet],
        ),
        (
            json!({"memory-hotplug": {"total_size_mib": 1024}}),
            "memory-hotplug",
            vec!["virtio-mem", not_yet],
        ),
        (
            json!({"cpu-config": "/t.json"}),
            "cpu-config",
            vec!["CPU template", not_yet],
        ),
        (
            json!({"metrics": {"metrics_path": "/m.fifo"}}),
            "metrics",
            vec!["metrics", not_yet],
        ),
        (
            json!({"logger": {"log_path": "/l.fifo", "level": "Info"}}),
            "logger",
            vec![
                "\"level\", \"log_path\"",
                "are not supported by Hearth yet",
                "--log-level",
            ],
        ),
        (
            json!({"pmem": {}}),
            "pmem",
            vec!["expected an array, found an object"],
        ),
        (
            json!({"logger": "stderr"}),
            "logger",
            vec!["expected an object"],
        ),
    ] {
        one_error(fx.parse(&fc(extra)), path, &needles);
    }
}

#[test]
fn unsupported_machine_config_values_are_refused() {
    let fx = Fixture::new("fc_machine");
    let machine =
        |m: Value| json!({"boot-source": {"kernel_image_path": "vmlinux"}, "machine-config": m});
    for (m, path, needles) in [
        (
            json!({"vcpu_count": 2, "mem_size_mib": 64, "smt": true}),
            "machine-config.smt",
            vec!["true", "not supported"],
        ),
        (
            json!({"vcpu_count": 1, "mem_size_mib": 64, "track_dirty_pages": true}),
            "machine-config.track_dirty_pages",
            vec!["true", "not supported"],
        ),
        (
            json!({"vcpu_count": 1, "mem_size_mib": 64, "huge_pages": "2M"}),
            "machine-config.huge_pages",
            vec!["\"2M\"", "not supported"],
        ),
        (
            json!({"vcpu_count": 1, "mem_size_mib": 64, "huge_pages": "Transparent"}),
            "machine-config.huge_pages",
            vec!["\"Transparent\"", "not supported"],
        ),
        (
            json!({"vcpu_count": 1, "mem_size_mib": 64, "huge_pages": "1G"}),
            "machine-config.huge_pages",
            vec!["unknown variant \"1G\"", "\"2M\""],
        ),
        (
            json!({"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "T2"}),
            "machine-config.cpu_template",
            vec!["\"T2\"", "not supported"],
        ),
        (
            json!({"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "M5"}),
            "machine-config.cpu_template",
            vec!["unknown variant \"M5\""],
        ),
        (
            json!({"vcpu_count": 33, "mem_size_mib": 64}),
            "machine-config.vcpu_count",
            vec!["33 is out of range (1..=32, Firecracker's limit)"],
        ),
        (
            json!({"vcpu_count": 0, "mem_size_mib": 64}),
            "machine-config.vcpu_count",
            vec!["0 is out of range"],
        ),
        (
            json!({"mem_size_mib": 64}),
            "machine-config.vcpu_count",
            vec!["required"],
        ),
        (
            json!({"vcpu_count": 1}),
            "machine-config.mem_size_mib",
            vec!["required"],
        ),
        (
            json!({"vcpu_count": 1, "mem_size_mib": 8}),
            "machine-config.mem_size_mib",
            vec!["8 is below the minimum of 16 MiB"],
        ),
        (
            json!({"vcpu_count": 1, "mem_size_mib": 64, "ht_enabled": true}),
            "machine-config",
            vec!["unknown field \"ht_enabled\""],
        ),
    ] {
        one_error(fx.parse(&machine(m)), path, &needles);
    }
}

#[test]
fn firecrackers_vcpu_limits_hold() {
    let fx = Fixture::new("fc_machine_limits");
    let machine =
        |m: Value| json!({"boot-source": {"kernel_image_path": "vmlinux"}, "machine-config": m});
    // 32 vCPUs is Firecracker's maximum and fine for Hearth.
    let spec = fx
        .parse(&machine(json!({"vcpu_count": 32, "mem_size_mib": 64})))
        .expect("valid");
    assert_eq!(spec.vms[0].vcpus, 32);
    // SMT: refused, and Firecracker's "1 or even" rule is reported too.
    let errors = lines(fx.parse(&machine(
        json!({"vcpu_count": 3, "mem_size_mib": 64, "smt": true}),
    )));
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].starts_with("machine-config.smt: true is not supported by Hearth yet"));
    assert_eq!(
        errors[1],
        "machine-config.vcpu_count: 3 must be 1 or even when machine-config.smt is true"
    );
}

#[test]
fn boot_source_problems_use_firecracker_names() {
    let fx = Fixture::new("fc_boot");
    one_error(
        fx.parse(&json!({"machine-config": {"vcpu_count": 1, "mem_size_mib": 64}})),
        "boot-source",
        &["required", "\"kernel_image_path\""],
    );
    one_error(
        fx.parse(&json!({"boot-source": {"boot_args": "x"}})),
        "boot-source.kernel_image_path",
        &["required"],
    );
    one_error(
        fx.parse(&json!({"boot-source": {"kernel_image_path": "nope"}})),
        "boot-source.kernel_image_path",
        &["\"nope\"", "does not exist"],
    );
    one_error(
        fx.parse(&json!({"boot-source": {"kernel_image_path": "vmlinux", "initrd_path": "missing.cpio"}})),
        "boot-source.initrd_path",
        &["\"missing.cpio\"", "does not exist"],
    );
    one_error(
        fx.parse(&json!({"boot-source": {"kernel_image_path": "vmlinux", "boot_args": "a\u{7}"}})),
        "boot-source.boot_args",
        &["non-printable"],
    );
    one_error(
        fx.parse(&json!({"boot-source": {"kernel_image_path": "vmlinux", "kernel": "x"}})),
        "boot-source",
        &[
            "unknown field \"kernel\"",
            "kernel_image_path, initrd_path, boot_args",
        ],
    );
}

#[test]
fn unknown_top_level_keys_are_errors() {
    let fx = Fixture::new("fc_unknown");
    one_error(
        fx.parse(&fc(json!({"drive": []}))),
        "<root>",
        &[
            "unknown field \"drive\"",
            "boot-source",
            "did you mean \"drives\"?",
        ],
    );
    one_error(
        fx.parse(&fc(json!({"mmds": null}))),
        "<root>",
        &["unknown field \"mmds\""],
    );
}

#[test]
fn mixed_formats_are_refused() {
    let fx = Fixture::new("fc_mixed");
    let msg = one_error(
        fx.parse(&json!({
            "boot-source": {"kernel_image_path": "vmlinux"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
            "kernel": {"path": "vmlinux"},
            "cpu": {"vcpus": 1}
        })),
        "<root>",
        &[],
    );
    assert!(
        msg.starts_with(
            "mixes Firecracker config keys (\"boot-source\", \"machine-config\") with Hearth config keys (\"cpu\", \"kernel\")"
        ),
        "{msg}"
    );
    one_error(
        fx.parse(&json!({"drives": [], "vms": [{"kernel": {"path": "vmlinux"}}]})),
        "<root>",
        &["(\"drives\")", "(\"vms\")"],
    );
}

#[test]
fn a_typical_firecracker_config_reports_everything_at_once() {
    let fx = Fixture::new("fc_typical");
    let errors = lines(fx.parse(&json!({
        "boot-source": {
            "kernel_image_path": "vmlinux",
            "boot_args": "console=ttyS0 reboot=k panic=1 pci=off"
        },
        "drives": [{
            "drive_id": "rootfs",
            "path_on_host": "ubuntu-22.04.ext4",
            "is_root_device": true,
            "is_read_only": false
        }],
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 1024, "smt": false},
        "network-interfaces": [{"iface_id": "net1", "guest_mac": "06:00:AC:10:00:02", "host_dev_name": "hearthnotap0"}],
        "logger": {"log_path": "fc.log", "level": "Debug"}
    })));
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors[0].starts_with("logger: "));
    assert!(errors[1].starts_with("drives[0].path_on_host: \"ubuntu-22.04.ext4\" (resolved to "));
    assert!(errors[2]
        .starts_with("network-interfaces[0].host_dev_name: \"hearthnotap0\" does not exist"));
}

#[test]
fn convert_round_trips_through_load_file() {
    let fx = Fixture::new("fc_convert");
    let config = fc(json!({"drives": [], "logger": {}}));
    let path = fx
        .dir
        .write("vm_config.json", config.to_string().as_bytes());
    let original = load_file(&path).expect("valid Firecracker file");
    let converted = convert_file(&path).expect("converts");
    let value: Value = serde_json::from_str(&converted).expect("JSON");
    assert_eq!(value["kernel"]["path"], json!(fx.path("vmlinux")));
    assert_eq!(value["kernel"]["cmdline"], json!("console=ttyS0 pci=off"));
    assert_eq!(value["cpu"], json!({"vcpus": 2, "weight": 100}));
    assert_eq!(value["serial"], json!({"output": "stdout", "stdin": true}));
    // Written anywhere else, the converted file loads to the same spec.
    let elsewhere = super::super::test_util::TempDir::new("fc_convert_out");
    let out = elsewhere.write("hearth.json", converted.as_bytes());
    assert_eq!(load_file(&out).expect("converted file is valid"), original);
}

#[test]
fn convert_keeps_monitor_files_and_cpu_policy() {
    let fx = Fixture::new("convert_monitor");
    let config = json!({
        "host": {"cpu": {"cpus": [0], "tick_ms": 20}},
        "vms": [
            {"kernel": {"path": "vmlinux", "initrd": "initrd.cpio"}, "cpu": {"vcpus": 2, "weight": 50, "max": 1.5}},
            {"name": "b", "kernel": {"path": "bzImage"}, "serial": {"output": "file", "path": "b.log", "stdin": true}}
        ]
    });
    let path = fx.dir.write("monitor.json", config.to_string().as_bytes());
    let original = load_file(&path).expect("valid");
    let converted = convert_file(&path).expect("converts");
    let out = fx.dir.write("converted.json", converted.as_bytes());
    assert_eq!(load_file(&out).expect("valid"), original);
    one_error(
        convert_file(&fx.path("nope.json")).map(|_| original),
        "<file>",
        &["does not exist"],
    );
}

#[test]
fn drives_interfaces_and_vsock_are_mapped_field_by_field() {
    let fx = Fixture::new("fc_devices");
    fx.dir.write("rootfs.ext4", &[0u8; 4096]);
    fx.dir.write("data.img", &[0u8; 4096]);
    let config = fc(json!({
        "drives": [
            {"drive_id": "data", "path_on_host": "data.img", "is_root_device": false,
             "is_read_only": true, "cache_type": "Writeback", "io_engine": "Async",
             "rate_limiter": {"ops": {"size": 100, "refill_time": 1000}}},
            {"drive_id": "rootfs", "path_on_host": "rootfs.ext4", "is_root_device": true,
             "partuuid": null}
        ],
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "lo",
                                "guest_mac": "06:00:AC:10:00:02", "mtu": 1500}],
        "vsock": {"vsock_id": "vsock0", "guest_cid": 3, "uds_path": "v.sock"}
    }));
    let vm = fx.parse(&config).expect("valid").vms.remove(0);
    assert_eq!(
        vm.drives
            .iter()
            .map(|d| (d.id.as_str(), d.root, d.read_only, d.cache, d.engine))
            .collect::<Vec<_>>(),
        [
            ("rootfs", true, false, CacheMode::Unsafe, IoEngine::Sync),
            ("data", false, true, CacheMode::Writeback, IoEngine::IoUring),
        ]
    );
    assert_eq!(
        vm.drives[1].rate_limiter.ops.map(|b| b.refill_time_ms),
        Some(1000)
    );
    assert_eq!(
        (
            vm.net[0].id.as_str(),
            vm.net[0].tap.as_str(),
            vm.net[0].mac,
            vm.net[0].mtu
        ),
        ("eth0", "lo", [6, 0, 0xac, 0x10, 0, 2], Some(1500))
    );
    assert_eq!(
        vm.vsock,
        Some(VsockSpec {
            guest_cid: 3,
            uds_path: fx.path("v.sock")
        })
    );
    // Firecracker's boot arguments for a root drive, through the device plan.
    assert!(
        vm.device_plan()
            .cmdline
            .starts_with("console=ttyS0 pci=off root=/dev/vda rw virtio_mmio.device="),
        "{}",
        vm.device_plan().cmdline
    );

    // `hearth convert` writes them in Hearth's form, and they load the same.
    let path = fx
        .dir
        .write("vm_config.json", config.to_string().as_bytes());
    let converted = convert_file(&path).expect("converts");
    let value: Value = serde_json::from_str(&converted).expect("JSON");
    assert_eq!(value["drives"][0]["id"], "rootfs");
    assert_eq!(value["drives"][1]["engine"], "io_uring");
    assert_eq!(value["net"]["interfaces"][0]["mac"], "06:00:ac:10:00:02");
    assert_eq!(value["vsock"]["uds_path"], json!(fx.path("v.sock")));
    let out = fx.dir.write("hearth.json", converted.as_bytes());
    assert_eq!(
        load_file(&out).expect("valid"),
        load_file(&path).expect("valid")
    );
}

#[test]
fn device_errors_use_firecracker_names() {
    let fx = Fixture::new("fc_device_errors");
    fx.dir.write("a.img", &[0u8; 512]);
    let errors = lines(fx.parse(&fc(json!({
        "drives": [
            {"drive_id": "a", "socket": "/run/vhost.sock", "is_root_device": false},
            {"drive_id": "b", "path_on_host": "a.img"},
            {"drive_id": "c", "path_on_host": "a.img", "is_root_device": false, "cache_type": "None"}
        ]
    }))));
    assert_eq!(
        errors,
        [
            "drives[2].cache_type: unknown variant \"None\", expected \"Unsafe\" or \"Writeback\"",
            "drives[0].socket: vhost-user block devices are not supported by Hearth; give \"path_on_host\"",
            "drives[1].is_root_device: required (Firecracker requires it): true for the root device, else false",
        ]
    );
    let errors = lines(fx.parse(&fc(json!({
        "drives": [
            {"drive_id": "a", "path_on_host": "a.img", "is_root_device": false},
            {"drive_id": "a", "path_on_host": "a.img", "is_root_device": true, "is_read_only": true}
        ],
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "lo", "guest_mac": "01:00:00:00:00:01",
                                "rx_rate_limiter": {"bandwidth": {"size": 1, "refill_time": 0}}}],
        "vsock": {"guest_cid": 1, "uds_path": "v.sock"}
    }))));
    let a = fx.path("a.img");
    assert_eq!(
        errors,
        [
            "drives[1].drive_id: \"a\" is already the id of drives[0]".to_string(),
            format!("drives[1].path_on_host: \"a.img\" (resolved to {a:?}) is attached read-only here and writable at drives[0].path_on_host; a file attached writable may not be attached anywhere else"),
            "network-interfaces[0].guest_mac: \"01:00:00:00:00:01\" is a multicast address; a guest's MAC must be unicast (first byte even)".into(),
            "network-interfaces[0].rx_rate_limiter.bandwidth.refill_time: 0 must be greater than 0 (ms to refill an empty bucket)".into(),
            "vsock.guest_cid: 1 is out of range (3..=4294967294)".into(),
        ]
    );
}
