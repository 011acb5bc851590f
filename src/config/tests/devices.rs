//! Drives, network interfaces, vsock and I/O shares: what is read, what is
//! refused (path and value), what no two places may share, and the device
//! plan with its command line.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::super::net::format_mac;
use super::super::validate::Ctx;
use super::super::*;
use super::{one_error, Fixture, HOST};

impl Fixture {
    /// A fake `/sys/class/net` listing `taps`.
    fn net_dir(&self, taps: &[&str]) -> PathBuf {
        let dir = self.path("sys-class-net");
        for tap in taps {
            std::fs::create_dir_all(dir.join(tap)).expect("mkdir tap");
        }
        dir
    }

    /// Parses with the taps `tap0`..`tap3` present.
    fn parse_dev(&self, config: &Value) -> Result<MonitorSpec, ConfigErrors> {
        let net_dir = self.net_dir(&["tap0", "tap1", "tap2", "tap3"]);
        let ctx = Ctx {
            base_dir: self.dir.path(),
            host: &HOST,
            budget: false,
            net_dir: &net_dir,
            serving: false,
        };
        parse_in(&config.to_string(), ctx)
    }

    /// A disk image of `len` bytes.
    fn disk(&self, name: &str, len: usize) -> PathBuf {
        self.dir.write(name, &vec![0u8; len])
    }
}

pub(super) fn lines(result: Result<MonitorSpec, ConfigErrors>) -> Vec<String> {
    match result {
        Ok(spec) => panic!("expected errors, got {spec:?}"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

fn vm(extra: Value) -> Value {
    let mut vm = json!({"kernel": {"path": "vmlinux", "cmdline": "console=ttyS0"}});
    if let (Value::Object(vm), Value::Object(extra)) = (&mut vm, extra) {
        vm.extend(extra);
    }
    vm
}

#[test]
fn drives_are_read_and_the_root_drive_comes_first() {
    let fx = Fixture::new("drives");
    fx.disk("data.img", 4096);
    fx.disk("root.ext4", 8192);
    let spec = fx
        .parse_dev(&vm(json!({"drives": [
            {"id": "data", "path": "data.img"},
            {"id": "rootfs", "path": "root.ext4", "root": true, "read_only": true,
             "partuuid": "0eaa91a0-01", "cache": "writeback", "engine": "io_uring",
             "rate_limiter": {"bandwidth": {"size": 1048576, "refill_time": 100},
                              "ops": {"size": 100, "one_time_burst": 50, "refill_time": 1000}}}
        ]})))
        .expect("valid");
    let drives = &spec.vms[0].drives;
    assert_eq!(drives.len(), 2);
    assert_eq!(
        drives[0],
        DriveSpec {
            id: "rootfs".into(),
            path: fx.path("root.ext4"),
            read_only: true,
            root: true,
            partuuid: Some("0eaa91a0-01".into()),
            cache: CacheMode::Writeback,
            engine: IoEngine::IoUring,
            rate_limiter: RateLimiterSpec {
                bandwidth: Some(TokenBucketSpec {
                    size: 1 << 20,
                    one_time_burst: 0,
                    refill_time_ms: 100
                }),
                ops: Some(TokenBucketSpec {
                    size: 100,
                    one_time_burst: 50,
                    refill_time_ms: 1000
                }),
            },
        }
    );
    assert_eq!(
        (drives[1].id.as_str(), drives[1].read_only, drives[1].root),
        ("data", false, false)
    );
    assert_eq!(
        (drives[1].cache, drives[1].engine),
        (CacheMode::Unsafe, IoEngine::Sync)
    );
    let plan = spec.vms[0].device_plan();
    assert_eq!(
        plan.cmdline,
        "console=ttyS0 root=PARTUUID=0eaa91a0-01 ro virtio_mmio.device=4K@0xd0000000:5 \
         virtio_mmio.device=4K@0xd0001000:6"
    );
}

#[test]
fn drive_errors_name_path_and_value() {
    let fx = Fixture::new("drive_errors");
    fx.disk("a.img", 512);
    fx.disk("b.img", 512);
    let errors = lines(fx.parse_dev(&vm(json!({"drives": [
        {"path": "a.img"},
        {"id": "bad id", "path": "a.img", "read_only": true},
        {"id": "b", "path": "missing.img", "partuuid": "abc"},
        {"id": "c", "path": "subdir", "root": true, "partuuid": "not a uuid"},
        {"id": "c", "path": "empty", "root": true, "read_only": true},
        {"id": "d", "path": "b.img",
         "rate_limiter": {"bandwidth": {"size": 0, "refill_time": 10}, "ops": {"size": 5}}}
    ]}))));
    let dir = fx.dir.path().display();
    assert_eq!(
        errors,
        [
            "drives[0].id: required: a name for the device, unique in the VM".to_string(),
            "drives[1].id: \"bad id\" must match [A-Za-z0-9_-]{1,32}".into(),
            "drives[1].path: \"a.img\" (resolved to \"{dir}/a.img\") is attached read-only here and writable at drives[0].path; a file attached writable may not be attached anywhere else".replace("{dir}", &dir.to_string()),
            "drives[2].partuuid: \"abc\" is only used by the root drive (drives[2].root true)".into(),
            format!("drives[2].path: \"missing.img\" (resolved to \"{dir}/missing.img\") does not exist"),
            "drives[3].partuuid: \"not a uuid\" is not a partition UUID (hex digits and '-', at most 36)".into(),
            format!("drives[3].path: \"subdir\" (resolved to \"{dir}/subdir\") is a directory, not a disk image"),
            "drives[4].id: \"c\" is already the id of drives[3]".into(),
            "drives[4].root: true, but drives[3] is already the root drive; a VM has at most one".into(),
            format!("drives[4].path: \"empty\" (resolved to \"{dir}/empty\") is empty"),
            "drives[5].rate_limiter.bandwidth.size: 0 must be greater than 0 (the bucket's capacity)".into(),
            "drives[5].rate_limiter.ops.refill_time: required: ms to refill an empty bucket".into(),
        ]
    );
    one_error(
        fx.parse_dev(&vm(
            json!({"drives": [{"id": "a", "path": "a.img", "cache": "none"}]}),
        )),
        "drives[0].cache",
        &["unknown variant \"none\", expected \"unsafe\" or \"writeback\""],
    );
    one_error(
        fx.parse_dev(&vm(
            json!({"drives": [{"id": "a", "path": "a.img", "rate_limiter": 5}]}),
        )),
        "drives[0].rate_limiter",
        &["invalid type: number 5, expected an object"],
    );
    one_error(
        fx.parse_dev(&vm(json!({"drives": [{"id": "a", "path": "/dev/null"}]}))),
        "drives[0].path",
        &["\"/dev/null\" is neither a regular file nor a block device"],
    );
    let many: Vec<Value> = (0..9)
        .map(|i| json!({"id": format!("d{i}"), "path": "a.img"}))
        .collect();
    one_error(
        fx.parse_dev(&vm(json!({"drives": many}))),
        "drives",
        &["has 9 entries, more than the 8 virtio devices a VM can have"],
    );
}

#[test]
fn a_file_that_cannot_be_written_must_be_read_only() {
    // sysfs refuses to open a read-only attribute for writing, even for root.
    let attribute = Path::new("/sys/class/net/lo/address");
    if !attribute.is_file() {
        return;
    }
    let fx = Fixture::new("drive_ro");
    let drive = |read_only: bool| {
        vm(json!({"drives": [{"id": "a", "path": attribute, "read_only": read_only}]}))
    };
    one_error(
        fx.parse_dev(&drive(false)),
        "drives[0].path",
        &[
            "\"/sys/class/net/lo/address\" cannot be opened for reading and writing",
            "(or set drives[0].read_only true)",
        ],
    );
    assert!(fx.parse_dev(&drive(true)).is_ok());
}

#[test]
fn a_writable_file_is_attached_once_per_monitor() {
    let fx = Fixture::new("drive_claims");
    fx.disk("a.img", 512);
    std::fs::hard_link(fx.path("a.img"), fx.path("same.img")).expect("link");
    let with = |path: &str, read_only: bool| json!({"kernel": {"path": "vmlinux"}, "drives": [{"id": "d", "path": path, "read_only": read_only}]});
    let msg = one_error(
        fx.parse_dev(&json!({"vms": [with("a.img", false), with("same.img", true)]})),
        "vms[1].drives[0].path",
        &[],
    );
    assert!(
        msg.ends_with("is attached read-only here and writable at vms[0].drives[0].path; a file attached writable may not be attached anywhere else"),
        "{msg}"
    );
    one_error(
        fx.parse_dev(&json!({"vms": [with("a.img", true), with("a.img", false)]})),
        "vms[1].drives[0].path",
        &["attached writable here and read-only at vms[0].drives[0].path"],
    );
    let spec = fx
        .parse_dev(&json!({"vms": [with("a.img", true), with("same.img", true)]}))
        .expect("a file may be attached read-only many times");
    assert_eq!(spec.vms.len(), 2);
}

#[test]
fn interfaces_in_both_forms_with_given_and_derived_macs() {
    let fx = Fixture::new("net");
    let spec = fx
        .parse_dev(&vm(json!({"name": "web", "net": [
            {"id": "eth0", "tap": "tap0", "mac": "06:00:AC:10:00:02", "mtu": 9000,
             "tx_rate_limiter": {"ops": {"size": 10, "refill_time": 1}}},
            {"id": "eth1", "tap": "tap1"}
        ]})))
        .expect("valid");
    let vm0 = &spec.vms[0];
    assert_eq!(vm0.net[0].mac, [6, 0, 0xac, 0x10, 0, 2]);
    assert_eq!(vm0.net[0].mtu, Some(9000));
    assert_eq!(vm0.net[0].tx_rate_limiter.ops.map(|b| b.size), Some(10));
    assert_eq!(
        vm0.net[1].mac[0], 0x02,
        "derived: locally administered unicast"
    );
    assert_eq!(vm0.net_share, ShareSpec::default());
    let again = fx
        .parse_dev(&vm(json!({"name": "web", "net": {"weight": 300, "interfaces": [{"id": "eth1", "tap": "tap3"}]}})))
        .expect("valid");
    assert_eq!(
        again.vms[0].net[0].mac, vm0.net[1].mac,
        "the derived MAC is stable"
    );
    assert_eq!(again.vms[0].net_share, ShareSpec { weight: 300 });
    let only_weight = fx
        .parse_dev(&vm(json!({"net": {"weight": 5}})))
        .expect("valid");
    assert!(only_weight.vms[0].net.is_empty());
}

#[test]
fn interface_errors_name_path_and_value() {
    let fx = Fixture::new("net_errors");
    let errors = lines(fx.parse_dev(&vm(json!({"net": {"weight": 0, "interfaces": [
        {"tap": "tap0", "mac": "01:00:5e:00:00:01"},
        {"id": "b", "tap": "nosuchtap", "mac": "02:00:00:00:00:0g", "mtu": 40},
        {"id": "c", "tap": "tap0", "mac": "00:00:00:00:00:00"},
        {"id": "d", "tap": "a/b"},
        {"id": "e", "tap": "tap1", "mac": "02:00:00:00:00:01"},
        {"id": "f", "tap": "tap2", "mac": "02:00:00:00:00:01"}
    ]}}))));
    let net_dir = fx.path("sys-class-net");
    assert_eq!(
        errors,
        [
            "net.weight: 0 is out of range (1..=10000)".to_string(),
            "net.interfaces[0].id: required: a name for the device, unique in the VM".into(),
            "net.interfaces[0].mac: \"01:00:5e:00:00:01\" is a multicast address; a guest's MAC must be unicast (first byte even)".into(),
            format!("net.interfaces[1].tap: \"nosuchtap\" does not exist ({:?} is missing); create the tap first, e.g. `ip tuntap add nosuchtap mode tap`", net_dir.join("nosuchtap")),
            "net.interfaces[1].mac: \"02:00:00:00:00:0g\" is not a MAC address (six hex pairs: \"02:00:00:00:00:01\")".into(),
            "net.interfaces[1].mtu: 40 is out of range (68..=65535)".into(),
            "net.interfaces[2].tap: \"tap0\" is already used by net.interfaces[0].tap".into(),
            "net.interfaces[2].mac: \"00:00:00:00:00:00\" is all zeros, which is not a usable address".into(),
            "net.interfaces[3].tap: \"a/b\" is not an interface name (1 to 15 visible characters, no '/')".into(),
            "net.interfaces[5].mac: \"02:00:00:00:00:01\" is already used by net.interfaces[4].mac".into(),
        ]
    );
    one_error(
        fx.parse_dev(&vm(json!({"net": 5}))),
        "net",
        &["expected an object, found number 5"],
    );
}

#[test]
fn macs_taps_cids_and_sockets_are_unique_across_vms() {
    let fx = Fixture::new("net_claims");
    let vm = |name: &str, tap: &str, mac: Option<&str>, cid: u64, uds: &str| {
        let mut iface = json!({"id": "eth0", "tap": tap});
        if let Some(mac) = mac {
            iface["mac"] = json!(mac);
        }
        json!({"name": name, "kernel": {"path": "vmlinux"}, "net": [iface],
               "vsock": {"guest_cid": cid, "uds_path": uds}})
    };
    let spec = fx
        .parse_dev(&json!({"vms": [vm("a", "tap0", None, 3, "a.sock"), vm("b", "tap1", None, 4, "b.sock")]}))
        .expect("valid");
    assert_ne!(spec.vms[0].net[0].mac, spec.vms[1].net[0].mac);
    assert_eq!(
        spec.vms[1].vsock,
        Some(VsockSpec {
            guest_cid: 4,
            uds_path: fx.path("b.sock")
        })
    );
    let derived = format_mac(spec.vms[0].net[0].mac);
    let errors = lines(fx.parse_dev(&json!({"vms": [
        vm("a", "tap0", None, 3, "a.sock"),
        vm("b", "tap0", Some(&derived), 3, "a.sock")
    ]})));
    assert_eq!(
        errors,
        [
            "vms[1].net[0].tap: \"tap0\" is already used by vms[0].net[0].tap".to_string(),
            format!("vms[1].net[0].mac: \"{derived}\" is already used by vms[0].net[0].mac (derived)"),
            "vms[1].vsock.guest_cid: 3 is already used by vms[0].vsock.guest_cid".into(),
            format!("vms[1].vsock.uds_path: \"a.sock\" (resolved to {:?}) is already used by vms[0].vsock.uds_path", fx.path("a.sock")),
        ]
    );
}

#[test]
fn vsock_errors_name_path_and_value() {
    let fx = Fixture::new("vsock");
    let cfg = |vsock: Value| vm(json!({"vsock": vsock}));
    let msg = one_error(
        fx.parse_dev(&cfg(json!({"guest_cid": 2, "uds_path": "v.sock"}))),
        "vsock.guest_cid",
        &[],
    );
    assert_eq!(msg, "2 is out of range (3..=4294967294)");
    one_error(
        fx.parse_dev(&cfg(json!({"uds_path": "v.sock"}))),
        "vsock.guest_cid",
        &["required"],
    );
    one_error(
        fx.parse_dev(&cfg(json!({"guest_cid": 3}))),
        "vsock.uds_path",
        &["required"],
    );
    one_error(
        fx.parse_dev(&cfg(json!({"guest_cid": 3, "uds_path": "/nope/v.sock"}))),
        "vsock.uds_path",
        &["\"/nope/v.sock\" needs directory \"/nope\", which does not exist"],
    );
    one_error(
        fx.parse_dev(&cfg(json!({"guest_cid": 3, "uds_path": "notes.txt"}))),
        "vsock.uds_path",
        &["\"notes.txt\"", "exists and is not a socket"],
    );
    let long = format!("/tmp/{}", "s".repeat(120));
    one_error(
        fx.parse_dev(&cfg(json!({"guest_cid": 3, "uds_path": long}))),
        "vsock.uds_path",
        &["is 125 bytes, longer than a Unix socket path may be (107)"],
    );
    one_error(
        fx.parse_dev(&cfg(
            json!({"guest_cid": 3, "uds_path": "v.sock", "vsock_id": "x"}),
        )),
        "vsock",
        &["unknown field \"vsock_id\""],
    );
    let io = fx
        .parse_dev(&vm(json!({"io": {"weight": 500}})))
        .expect("valid");
    assert_eq!(io.vms[0].io, ShareSpec { weight: 500 });
    one_error(
        fx.parse_dev(&vm(json!({"io": {"weight": 10001}}))),
        "io.weight",
        &["10001 is out of range (1..=10000)"],
    );
}

#[test]
fn the_device_plan_names_and_places_every_device() {
    let fx = Fixture::new("plan");
    fx.disk("a.img", 512);
    fx.disk("b.img", 512);
    let spec = fx
        .parse_dev(&json!({"host": {"memory": {"budget_mib": 1024}}, "vms": [vm(json!({
            "drives": [{"id": "a", "path": "a.img"}, {"id": "root", "path": "b.img", "root": true}],
            "net": [{"id": "eth0", "tap": "tap0"}],
            "vsock": {"guest_cid": 3, "uds_path": "v.sock"},
            "kernel": {"path": "vmlinux", "cmdline": "console=ttyS0 -- init-arg"}
        }))]}))
        .expect("valid");
    let plan = spec.vms[0].device_plan();
    let devices: Vec<(&str, DeviceKind, u64, u32)> = plan
        .virtio
        .iter()
        .map(|d| (d.name.as_str(), d.kind, d.slot.base, d.slot.irq))
        .collect();
    assert_eq!(
        devices,
        [
            ("balloon0", DeviceKind::Balloon, 0xd000_0000, 5),
            ("blk0", DeviceKind::Block(0), 0xd000_1000, 6),
            ("blk1", DeviceKind::Block(1), 0xd000_2000, 7),
            ("net0", DeviceKind::Net(0), 0xd000_3000, 9),
            ("vsock0", DeviceKind::Vsock, 0xd000_4000, 10),
        ]
    );
    assert_eq!(spec.vms[0].drives[0].id, "root");
    assert!(plan.unplaced.is_empty());
    let names: Vec<&str> = plan.names().collect();
    assert_eq!(
        names,
        ["serial0", "i8042", "cmos", "balloon0", "blk0", "blk1", "net0", "vsock0"]
    );
    assert_eq!(
        plan.cmdline,
        "console=ttyS0 root=/dev/vda rw virtio_mmio.device=4K@0xd0000000:5 \
         virtio_mmio.device=4K@0xd0001000:6 virtio_mmio.device=4K@0xd0002000:7 \
         virtio_mmio.device=4K@0xd0003000:9 virtio_mmio.device=4K@0xd0004000:10 -- init-arg"
    );
    assert_eq!(
        plan.legacy[0],
        LegacyDevice {
            name: "serial0",
            base: 0x3f8,
            len: 8
        }
    );
    // Without a budget, and without devices, the command line is the user's.
    let plain = fx.parse_dev(&vm(json!({}))).expect("valid");
    assert_eq!(plain.vms[0].device_plan().cmdline, "console=ttyS0");
    assert!(plain.vms[0].device_plan().virtio.is_empty());
}

#[test]
fn validation_refuses_what_the_builder_would() {
    let fx = Fixture::new("plan_errors");
    for i in 0..4 {
        fx.disk(&format!("d{i}.img"), 512);
    }
    // The user's 2020 bytes fit, but not with a device token.
    let long = "x".repeat(2020);
    let msg = one_error(
        fx.parse_dev(&json!({"kernel": {"path": "vmlinux", "cmdline": long},
                             "memory": {"balloon": true}})),
        "kernel.cmdline",
        &[],
    );
    assert_eq!(
        msg,
        "2020 bytes, plus the 35 bytes Hearth adds for this VM's devices (virtio_mmio.device=..., \
         root=...), is 2055: longer than the maximum of 2047"
    );
    let drives: Vec<Value> = (0..4)
        .map(|i| json!({"id": format!("d{i}"), "path": format!("d{i}.img")}))
        .collect();
    let nets: Vec<Value> = (0..4)
        .map(|i| json!({"id": format!("n{i}"), "tap": format!("tap{i}")}))
        .collect();
    let msg = one_error(
        fx.parse_dev(&vm(
            json!({"memory": {"balloon": true}, "drives": drives, "net": nets}),
        )),
        "<root>",
        &[],
    );
    assert_eq!(
        msg,
        "has 9 virtio devices (balloon0, blk0, blk1, blk2, blk3, net0, net1, net2, net3) but a VM \
         has 8 slots; net3 would have none"
    );
    let acl = |device: &str| {
        vm(
            json!({"acl": {"rules": [{"device": "cmos", "action": "deny"},
                                                         {"device": device, "action": "allow"}]}}),
        )
    };
    one_error(
        fx.parse_dev(&acl("blk0")),
        "acl.rules[1].device",
        &["\"blk0\" is not a device of this VM (it has: serial0, i8042, cmos)"],
    );
    assert!(fx.parse_dev(&acl("serial0")).is_ok());
    one_error(
        fx.parse_dev(&json!({"vms": [acl("balloon")]})),
        "vms[0].acl.rules[1].device",
        &["\"balloon\" is not a device"],
    );
}

#[test]
fn device_examples_parse() {
    // Their images and taps are the user's to make: only those may be missing.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("resources/examples");
    for name in ["devices.json", "firecracker-rootfs.json"] {
        let text = std::fs::read_to_string(dir.join(name)).expect("example");
        let Err(errors) = parse_with(&text, &dir, &HOST) else {
            continue;
        };
        for error in &errors {
            let file = [
                ".path",
                ".path_on_host",
                ".tap",
                ".host_dev_name",
                "kernel_image_path",
            ];
            assert!(
                file.iter().any(|end| error.path.ends_with(end))
                    && error.message.contains("does not exist"),
                "{name}: unexpected {error}"
            );
        }
    }
}
