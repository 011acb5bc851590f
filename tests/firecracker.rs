//! Firecracker config files run by the real binary: the test guest booted
//! from a file written as Firecracker's documentation shows (same serial
//! output as Hearth's own format), refusals with exit 1 naming the field,
//! `convert` output that validates and boots, and (when the kit is present)
//! Linux booted to init from a Firecracker-format file.

mod common;

use std::time::Duration;

use common::*;

const DEADLINE: Duration = Duration::from_secs(60);
const LINUX_DEADLINE: Duration = Duration::from_secs(300);

/// A Firecracker `--config-file` for the test guest, as in Firecracker's
/// getting-started guide (no rootfs: `"drives": []`).
fn hello_config(kernel: &str) -> String {
    format!(
        r#"{{
  "boot-source": {{
    "kernel_image_path": "{kernel}",
    "boot_args": "hearth.scenario=hello"
  }},
  "drives": [],
  "machine-config": {{
    "vcpu_count": 2,
    "mem_size_mib": 128,
    "smt": false
  }},
  "network-interfaces": []
}}
"#
    )
}

fn assert_hello(run: &Run) {
    run.assert_no_panic();
    assert_eq!(
        run.code(),
        Some(0),
        "hearth should exit 0 after the guest's reset\n{}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(
        run.stdout.contains("hearth-guest: HELLO OK"),
        "{}",
        run.stdout
    );
    assert_eq!(
        run.field("hearth-guest: cpus", "mptable").as_deref(),
        Some("2"),
        "{}",
        run.stdout
    );
    assert_eq!(
        run.field("hearth-guest: memory", "top_mib").as_deref(),
        Some("128")
    );
}

#[test]
fn firecracker_config_boots_the_test_guest_like_hearths_own_format() {
    let dir = scratch_dir("fc-hello");
    let config = write_file(&dir, "vm_config.json", &hello_config(guest_elf()));
    let run = run_hearth(&["run", "--config", &config], DEADLINE);
    assert_hello(&run);

    // The same VM in Hearth's own format prints the same guest lines.
    let hearth = write_file(
        &dir,
        "hearth.json",
        &format!(
            r#"{{"kernel": {{"path": "{}", "cmdline": "hearth.scenario=hello pci=off"}},
                "cpu": {{"vcpus": 2}}, "memory": {{"size_mib": 128}}}}"#,
            guest_elf()
        ),
    );
    let own = run_hearth(&["run", "--config", &hearth], DEADLINE);
    assert_hello(&own);
    let guest_lines = |run: &Run| -> Vec<String> {
        run.lines_with("hearth-guest:")
            .map(str::to_string)
            .collect()
    };
    assert_eq!(guest_lines(&run), guest_lines(&own));

    let validated = run_hearth(&["validate", &config], DEADLINE);
    assert_eq!(validated.code(), Some(0), "{}", validated.stderr);
    assert!(
        validated.stdout.contains("valid (1 VM: vm0)"),
        "{}",
        validated.stdout
    );
}

#[test]
fn a_rootfs_drive_is_refused_naming_drives_0() {
    let dir = scratch_dir("fc-rootfs");
    let text = hello_config(guest_elf()).replace(
        r#""drives": [],"#,
        r#""drives": [{"drive_id": "rootfs", "path_on_host": "/srv/rootfs.ext4", "is_root_device": true, "is_read_only": false}],"#,
    );
    let config = write_file(&dir, "vm_config.json", &text);
    for command in ["run", "validate"] {
        let args: Vec<&str> = if command == "run" {
            vec!["run", "--config", &config]
        } else {
            vec!["validate", &config]
        };
        let run = run_hearth(&args, DEADLINE);
        run.assert_no_panic();
        assert_eq!(run.code(), Some(1), "{command}: {}", run.stderr);
        assert!(
            run.stderr.contains(
                "hearth: error: drives[0].path_on_host: \"/srv/rootfs.ext4\" does not exist"
            ),
            "{command}: {}",
            run.stderr
        );
        assert!(
            !run.stdout.contains("hearth-guest:"),
            "nothing may boot: {}",
            run.stdout
        );
    }
}

#[test]
fn drives_interfaces_and_vsock_validate_and_convert() {
    let dir = scratch_dir("fc-devices");
    let rootfs = write_file(&dir, "rootfs.ext4", &"\0".repeat(4096));
    let text = hello_config(guest_elf()).replace(
        r#""drives": [],"#,
        &format!(
            r#""drives": [{{"drive_id": "rootfs", "path_on_host": "{rootfs}", "is_root_device": true, "is_read_only": true}}],
               "vsock": {{"vsock_id": "v", "guest_cid": 3, "uds_path": "v.sock"}},"#
        ),
    )
    .replace(
        r#""network-interfaces": []"#,
        r#""network-interfaces": [{"iface_id": "eth0", "host_dev_name": "lo", "guest_mac": "06:00:AC:10:00:02"}]"#,
    );
    let config = write_file(&dir, "vm_config.json", &text);
    let validated = run_hearth(&["validate", &config], DEADLINE);
    assert_eq!(validated.code(), Some(0), "{}", validated.stderr);
    let converted = run_hearth(&["convert", &config], DEADLINE);
    assert_eq!(converted.code(), Some(0), "{}", converted.stderr);
    let value: serde_json::Value = serde_json::from_str(&converted.stdout).expect("JSON");
    assert_eq!(value["drives"][0]["path"], rootfs.as_str());
    assert_eq!(value["drives"][0]["read_only"], true);
    assert_eq!(value["net"]["interfaces"][0]["tap"], "lo");
    assert_eq!(value["net"]["interfaces"][0]["mac"], "06:00:ac:10:00:02");
    assert_eq!(value["vsock"]["guest_cid"], 3);
    let vm = hearth::config::load_file(std::path::Path::new(&config)).expect("valid");
    let plan = vm.vms[0].device_plan();
    let names: Vec<&str> = plan.virtio.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["blk0", "net0", "vsock0"]);
    assert!(
        plan.cmdline
            .starts_with("hearth.scenario=hello pci=off root=/dev/vda ro virtio_mmio.device="),
        "{}",
        plan.cmdline
    );
}

#[test]
fn a_file_mixing_both_formats_is_refused() {
    let dir = scratch_dir("fc-mixed");
    let text = hello_config(guest_elf())
        .replace(r#""drives": [],"#, r#""drives": [], "cpu": {"vcpus": 2},"#);
    let config = write_file(&dir, "vm_config.json", &text);
    let run = run_hearth(&["run", "--config", &config], DEADLINE);
    run.assert_no_panic();
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "hearth: error: <root>: mixes Firecracker config keys (\"boot-source\", \"drives\", \"machine-config\", \"network-interfaces\") with Hearth config keys (\"cpu\")"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn converted_file_validates_and_boots() {
    let dir = scratch_dir("fc-convert");
    let config = write_file(&dir, "vm_config.json", &hello_config(guest_elf()));
    let converted = hearth::config::convert_file(std::path::Path::new(&config))
        .expect("a valid Firecracker file converts");
    let value: serde_json::Value = serde_json::from_str(&converted).expect("JSON");
    assert_eq!(value["name"], "vm0");
    assert_eq!(value["kernel"]["cmdline"], "hearth.scenario=hello pci=off");
    assert_eq!(value["memory"]["size_mib"], 128);
    let out_dir = scratch_dir("fc-convert-out");
    let out = write_file(&out_dir, "hearth.json", &converted);
    let validated = run_hearth(&["validate", &out], DEADLINE);
    assert_eq!(validated.code(), Some(0), "{}", validated.stderr);
    assert_eq!(
        hearth::config::load_file(std::path::Path::new(&out)).expect("valid"),
        hearth::config::load_file(std::path::Path::new(&config)).expect("valid"),
    );
    assert_hello(&run_hearth(&["run", "--config", &out], DEADLINE));
}

#[test]
fn firecracker_config_boots_linux_from_an_ext4_rootfs_drive() {
    let kit = linux_kit();
    let rootfs = kit.join("rootfs.ext4");
    assert!(
        rootfs.is_file(),
        "{} is missing: run resources/linux/build-kit.sh",
        rootfs.display()
    );
    let cmdline_path = concat!(env!("CARGO_MANIFEST_DIR"), "/resources/linux/cmdline.txt");
    let cmdline = std::fs::read_to_string(cmdline_path).expect("resources/linux/cmdline.txt");
    // Firecracker's usual config: a kernel, no initrd, a root drive.
    let config = serde_json::json!({
        "boot-source": {
            "kernel_image_path": kit.join("vmlinux"),
            "boot_args": cmdline.trim()
        },
        "drives": [{"drive_id": "rootfs", "path_on_host": rootfs,
                    "is_root_device": true, "is_read_only": true}],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
        "network-interfaces": []
    });
    let dir = scratch_dir("fc-linux");
    let path = write_file(&dir, "vm_config.json", &config.to_string());
    let run = run_hearth(&["run", "--config", &path], LINUX_DEADLINE);
    run.assert_no_panic();
    for milestone in [
        "root=/dev/vda ro",
        "virtio_blk virtio0: [vda] 32768 512-byte logical blocks",
        "VFS: Mounted root (ext4 filesystem) readonly on device 254:0.",
        "Run /sbin/init as init process",
    ] {
        assert!(
            run.stdout.contains(milestone),
            "no {milestone:?} in the boot log:\n{}\n{}",
            run.stdout,
            run.stderr
        );
    }
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
}
