//! Bad input gets a clear error naming the field and the value, a non-zero
//! exit and no panic; nothing is created before validation passes.

mod common;

use std::time::Duration;

use common::*;

const DEADLINE: Duration = Duration::from_secs(30);

/// `hearth validate` on `json`: exit 1, and every `expected` line among the errors.
fn assert_invalid(name: &str, json: &str, expected: &[&str]) {
    let dir = scratch_dir(&format!("validate-{name}"));
    let config = write_file(&dir, "vm.json", json);
    let run = run_hearth(&["validate", &config], DEADLINE);
    run.assert_no_panic();
    assert_eq!(run.code(), Some(1), "{name}: {}", run.stderr);
    for e in expected {
        assert!(
            run.stderr.lines().any(|l| l.contains(e)),
            "{name}: expected an error containing {e:?}, got:\n{}",
            run.stderr
        );
    }
}

fn guest() -> String {
    guest_elf().to_string()
}

#[test]
fn validate_accepts_a_good_config_and_names_its_vms() {
    let dir = scratch_dir("validate-good");
    let config = write_file(
        &dir,
        "vm.json",
        &format!(
            r#"{{"name": "web", "kernel": {{"path": "{}"}}, "cpu": {{"vcpus": 2}}}}"#,
            guest()
        ),
    );
    let run = run_hearth(&["validate", &config], DEADLINE);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert!(run.stdout.contains("valid (1 VM: web)"), "{}", run.stdout);
}

#[test]
fn unknown_field_is_named_with_the_fields_that_exist() {
    let g = guest();
    assert_invalid(
        "unknown-field",
        &format!(r#"{{"kernel": {{"path": "{g}"}}, "cpu": {{"vcpu": 2}}}}"#),
        &[r#"cpu: unknown field "vcpu""#, "vcpus"],
    );
}

#[test]
fn wrong_type_names_the_path_and_value() {
    let g = guest();
    assert_invalid(
        "wrong-type",
        &format!(r#"{{"kernel": {{"path": "{g}"}}, "cpu": {{"vcpus": "two"}}}}"#),
        &[r#"cpu.vcpus: invalid type: string "two""#],
    );
}

#[test]
fn zero_vcpus() {
    let g = guest();
    assert_invalid(
        "zero-vcpus",
        &format!(r#"{{"kernel": {{"path": "{g}"}}, "cpu": {{"vcpus": 0}}}}"#),
        &["cpu.vcpus: 0 is out of range (1..=254)"],
    );
}

#[test]
fn too_many_vcpus() {
    let g = guest();
    assert_invalid(
        "many-vcpus",
        &format!(r#"{{"kernel": {{"path": "{g}"}}, "cpu": {{"vcpus": 300}}}}"#),
        &["cpu.vcpus: 300 is out of range (1..=254)"],
    );
}

#[test]
fn memory_too_small() {
    let g = guest();
    assert_invalid(
        "mem-small",
        &format!(r#"{{"kernel": {{"path": "{g}"}}, "memory": {{"size_mib": 8}}}}"#),
        &["memory.size_mib: 8 is below the minimum of 16 MiB"],
    );
}

#[test]
fn memory_too_large_for_the_host() {
    let g = guest();
    assert_invalid(
        "mem-large",
        &format!(r#"{{"kernel": {{"path": "{g}"}}, "memory": {{"size_mib": 100000000}}}}"#),
        &["memory.size_mib: 100000000"],
    );
}

#[test]
fn missing_kernel_path() {
    assert_invalid(
        "no-kernel",
        r#"{"kernel": {"cmdline": "x"}}"#,
        &["kernel.path"],
    );
}

#[test]
fn nonexistent_kernel() {
    assert_invalid(
        "missing-kernel",
        r#"{"kernel": {"path": "/nonexistent/vmlinux"}}"#,
        &[r#"kernel.path: "/nonexistent/vmlinux" does not exist"#],
    );
}

#[test]
fn unreadable_kernel_a_directory() {
    assert_invalid(
        "dir-kernel",
        r#"{"kernel": {"path": "/tmp"}}"#,
        &[r#"kernel.path: "/tmp" is a directory"#],
    );
}

#[test]
fn kernel_that_is_not_a_kernel() {
    assert_invalid(
        "not-kernel",
        r#"{"kernel": {"path": "/etc/hostname"}}"#,
        &[r#"kernel.path: "/etc/hostname" is neither an ELF64 x86_64 vmlinux nor a bzImage"#],
    );
}

#[test]
fn bad_command_line_character() {
    let g = guest();
    assert_invalid(
        "bad-cmdline",
        &format!(r#"{{"kernel": {{"path": "{g}", "cmdline": "console=ttyS0\u0007"}}}}"#),
        &["kernel.cmdline: contains a non-printable character (0x07) at byte 13"],
    );
}

#[test]
fn command_line_too_long() {
    let g = guest();
    let long = "x".repeat(3000);
    assert_invalid(
        "long-cmdline",
        &format!(r#"{{"kernel": {{"path": "{g}", "cmdline": "{long}"}}}}"#),
        &["kernel.cmdline: 3000 bytes is longer than the maximum of 2047"],
    );
}

#[test]
fn validate_refuses_a_command_line_that_the_device_tokens_make_too_long() {
    let g = guest();
    let long = "x".repeat(2040);
    assert_invalid(
        "long-with-devices",
        &format!(
            r#"{{"kernel": {{"path": "{g}", "cmdline": "{long}"}}, "memory": {{"balloon": true}}}}"#
        ),
        &["kernel.cmdline: 2040 bytes, plus the 35 bytes Hearth adds for this VM's devices"],
    );
}

#[test]
fn validate_refuses_an_acl_rule_naming_a_device_the_vm_lacks() {
    let g = guest();
    assert_invalid(
        "acl-device",
        &format!(
            r#"{{"kernel": {{"path": "{g}"}}, "acl": {{"rules": [{{"device": "balloon0", "action": "allow"}}]}}}}"#
        ),
        &[
            r#"acl.rules[0].device: "balloon0" is not a device of this VM (it has: serial0, i8042, cmos)"#,
        ],
    );
}

#[test]
fn device_errors_name_the_field_and_value() {
    let g = guest();
    assert_invalid(
        "devices",
        &format!(
            r#"{{"kernel": {{"path": "{g}"}}, "drives": [{{"id": "root", "path": "/nonexistent/rootfs.ext4", "root": true}}],
                "net": [{{"id": "eth0", "tap": "hearthnotap0"}}], "vsock": {{"guest_cid": 2, "uds_path": "/tmp/v.sock"}}}}"#
        ),
        &[
            r#"drives[0].path: "/nonexistent/rootfs.ext4" does not exist"#,
            r#"net[0].tap: "hearthnotap0" does not exist"#,
            "vsock.guest_cid: 2 is out of range (3..=4294967294)",
        ],
    );
}

#[test]
fn json_syntax_error_gives_line_and_column() {
    assert_invalid(
        "syntax",
        "{\n  \"kernel\": {\"path\": \"x\",}\n}",
        &["line 2, column"],
    );
}

#[test]
fn pvh_requested_for_a_bzimage() {
    let b = guest_bzimage();
    assert_invalid(
        "pvh-bz",
        &format!(r#"{{"kernel": {{"path": "{b}", "protocol": "pvh"}}}}"#),
        &["kernel.protocol"],
    );
}

#[test]
fn duplicate_vm_names_in_a_monitor_file() {
    let g = guest();
    assert_invalid(
        "dup-names",
        &format!(
            r#"{{"host": {{}}, "vms": [{{"name": "a", "kernel": {{"path": "{g}"}}}}, {{"name": "a", "kernel": {{"path": "{g}"}}}}]}}"#
        ),
        &[r#"vms[1].name: "a""#],
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let dir = scratch_dir("validate-many");
    let config = write_file(
        &dir,
        "vm.json",
        r#"{"name": "bad name!", "kernel": {"path": "/nonexistent"}, "cpu": {"vcpus": 0}, "memory": {"size_mib": 1}}"#,
    );
    let run = run_hearth(&["validate", &config], DEADLINE);
    assert_eq!(run.code(), Some(1));
    let errors = run.stderr.lines().filter(|l| l.contains("error:")).count();
    assert_eq!(errors, 4, "{}", run.stderr);
}

#[test]
fn run_with_a_bad_config_builds_nothing() {
    let dir = scratch_dir("run-bad");
    let serial_log = dir.join("serial.log");
    let config = write_file(
        &dir,
        "vm.json",
        &format!(
            r#"{{"kernel": {{"path": "{}"}}, "cpu": {{"vcpus": 0}}, "serial": {{"output": "file", "path": "{}"}}}}"#,
            guest(),
            serial_log.display()
        ),
    );
    let run = run_hearth(&["run", "--config", &config], DEADLINE);
    run.assert_no_panic();
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("cpu.vcpus: 0 is out of range"),
        "{}",
        run.stderr
    );
    assert!(
        !serial_log.exists(),
        "nothing may be created before validation passes"
    );
}

#[test]
fn run_with_a_missing_kernel_flag_value() {
    let run = run_hearth(
        &["run", "--kernel", "/nonexistent/vmlinux", "--vcpus", "2"],
        DEADLINE,
    );
    run.assert_no_panic();
    assert_eq!(run.code(), Some(1));
    assert!(
        run.stderr
            .contains(r#"--kernel: "/nonexistent/vmlinux" does not exist"#),
        "{}",
        run.stderr
    );
}

#[test]
fn run_with_flags_and_a_config_is_a_usage_error() {
    let run = run_hearth(&["run", "--config", "x.json", "--vcpus", "2"], DEADLINE);
    run.assert_no_panic();
    assert_eq!(run.code(), Some(2));
    assert!(run.stderr.contains("cannot be used with"), "{}", run.stderr);
}

/// `hearth convert F | head -c 1`: a reader that goes away is no error.
#[test]
fn output_to_a_closed_pipe_is_no_panic() {
    use std::process::{Command, Stdio};
    let dir = scratch_dir("closed-pipe");
    let example = write_file(
        &dir,
        "fc.json",
        &format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}},
                "machine-config": {{"vcpu_count": 1, "mem_size_mib": 64}}}}"#,
            guest_elf()
        ),
    );
    let mut child = Command::new(hearth())
        .args(["convert", &example])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hearth");
    // Close the read end before hearth writes (a converted file is
    // bigger than one byte; the pipe is gone either way).
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for hearth");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}
