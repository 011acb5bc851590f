//! Firecracker's API on VMs that share one monitor (`create` with an
//! `api_socket` on the control socket), the balloon through the API, the
//! control socket's Prometheus metrics, and the Linux kit booted through
//! the API.

mod common;
mod fc;

use std::path::Path;
use std::time::Duration;

use common::*;
use fc::*;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(60);
/// The Linux kit's kernel takes about a minute to reach init here.
const LINUX_DEADLINE: Duration = Duration::from_secs(300);

fn ctl(socket: &Path, request: Value) -> Value {
    let reply = hearth::api::client::call(socket, &request).expect("control socket");
    assert_eq!(reply["ok"], true, "{request} -> {reply}");
    reply["result"].clone()
}

fn idle_guest(sock: &Path, mib: u64) {
    put(
        sock,
        "PUT",
        "/boot-source",
        &json!({"kernel_image_path": guest(),
        "boot_args": "console=ttyS0 hearth.scenario=idle"})
        .to_string(),
    );
    put(
        sock,
        "PUT",
        "/machine-config",
        &json!({"vcpu_count": 1, "mem_size_mib": mib}).to_string(),
    );
}

#[test]
fn one_monitor_serves_a_firecracker_api_per_vm() {
    let dir = scratch_dir("fc-per-vm");
    let control = dir.join("hearth.sock");
    let mut monitor = Proc::start(
        &["serve", "--api-socket", control.to_str().expect("utf-8")],
        &control,
        DEADLINE,
    );
    let (a, b) = (dir.join("a.sock"), dir.join("b.sock"));
    // "a" with Hearth's own policy in its template; "b" with none.
    let made = ctl(
        &control,
        json!({"op": "create", "vm": {"name": "a", "cpu": {"weight": 300}},
                                    "api_socket": a}),
    );
    assert_eq!(made["state"], "not started");
    ctl(
        &control,
        json!({"op": "create", "vm": {"name": "b"}, "api_socket": b}),
    );
    let taken = hearth::api::client::call(
        &control,
        &json!({"op": "create",
        "vm": {"name": "a"}, "api_socket": dir.join("c.sock")}),
    )
    .expect("reply");
    assert!(
        taken["error"]
            .as_str()
            .unwrap_or("")
            .contains("already used"),
        "{taken}"
    );
    for sock in [&a, &b] {
        assert_eq!(get(sock, "/")["state"], "Not started");
        idle_guest(sock, 32);
        put(
            sock,
            "PUT",
            "/actions",
            r#"{"action_type": "InstanceStart"}"#,
        );
        assert_eq!(get(sock, "/")["state"], "Running");
    }
    let list = ctl(&control, json!({"op": "list"}));
    assert_eq!(list["vms"].as_array().map(Vec::len), Some(2), "{list}");
    assert_eq!(
        ctl(&control, json!({"op": "stats", "vm": "a"}))["cpu"]["weight"],
        300
    );
    assert_eq!(
        ctl(&control, json!({"op": "stats", "vm": "b"}))["cpu"]["weight"],
        100
    );
    // A pause through one VM's API is the monitor's pause of that VM.
    put(&a, "PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(
        ctl(&control, json!({"op": "stats", "vm": "a"}))["state"],
        "paused"
    );
    assert_eq!(get(&b, "/")["state"], "Running");

    check_prometheus(&control);
    check_deletes(&control, &dir, &a);
    ctl(&control, json!({"op": "shutdown"}));
    assert_eq!(monitor.wait().code(), Some(0), "{}", monitor.stderr());
    assert!(!b.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same figures as Prometheus text, on the control socket and
/// through `hearth ctl`.
fn check_prometheus(control: &Path) {
    let text = ctl(control, json!({"op": "metrics"}));
    let text = text.as_str().expect("text");
    assert!(
        text.contains("hearth_vm_state{vm=\"a\",state=\"paused\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("hearth_vm_cpu_weight{vm=\"a\"} 300"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE hearth_vm_exits_total counter"),
        "{text}"
    );
    let out = std::process::Command::new(hearth())
        .arg("ctl")
        .arg(control)
        .arg("metrics")
        .output()
        .expect("hearth ctl");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && printed.starts_with("# HELP "),
        "{printed}"
    );
    assert!(
        printed.contains("hearth_vm_cpu_seconds_total{vm=\"b\"}"),
        "{printed}"
    );
}

/// Deleting a VM closes its API socket, as Firecracker's process ends
/// with its VM; an API never started is deleted by its name.
fn check_deletes(control: &Path, dir: &Path, a: &Path) {
    ctl(control, json!({"op": "delete", "vm": "a"}));
    let start = std::time::Instant::now();
    while a.exists() {
        assert!(start.elapsed() < DEADLINE, "a.sock stayed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let c = dir.join("c.sock");
    ctl(
        control,
        json!({"op": "create", "vm": {"name": "c"}, "api_socket": c}),
    );
    assert!(c.exists());
    assert_eq!(
        ctl(control, json!({"op": "delete", "vm": "c"}))["state"],
        "deleted"
    );
    let start = std::time::Instant::now();
    while c.exists() {
        assert!(start.elapsed() < DEADLINE, "c.sock stayed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_balloon_is_set_and_read_through_the_api() {
    let dir = scratch_dir("fc-balloon");
    let sock = dir.join("fc.sock");
    let mut fc = Proc::start(
        &["firecracker", "--api-sock", sock.to_str().expect("utf-8")],
        &sock,
        DEADLINE,
    );
    put(
        &sock,
        "PUT",
        "/boot-source",
        &json!({"kernel_image_path": guest(),
        "boot_args": "console=ttyS0 hearth.scenario=balloon"})
        .to_string(),
    );
    put(
        &sock,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
    );
    put(
        &sock,
        "PUT",
        "/balloon",
        r#"{"amount_mib": 0, "deflate_on_oom": true, "stats_polling_interval_s": 1}"#,
    );
    assert_eq!(get(&sock, "/balloon")["deflate_on_oom"], true);
    put(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
    );
    fc.wait_line("hearth-guest: balloon pool=");
    put(&sock, "PATCH", "/balloon", r#"{"amount_mib": 8}"#);
    // 8 MiB = 2048 pages, which the guest gives back.
    fc.wait_line("balloon target=2048 actual=2048");
    assert_eq!(get(&sock, "/balloon")["amount_mib"], 8);
    let start = std::time::Instant::now();
    loop {
        let stats = get(&sock, "/balloon/statistics");
        assert_eq!(stats["target_mib"], 8, "{stats}");
        assert_eq!(stats["target_pages"], 2048, "{stats}");
        if stats["actual_mib"] == 8 && stats["free_memory"].as_u64().is_some() {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "statistics never arrived: {stats}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let msg = fault(&sock, "PATCH", "/balloon", Some(r#"{"amount_mib": 65}"#));
    assert!(
        msg.starts_with("Balloon update error: Amount of pages requested is too large"),
        "{msg}"
    );
    fc.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_linux_kit_boots_through_the_api() {
    let kit = linux_kit();
    let dir = scratch_dir("fc-linux");
    let sock = dir.join("fc.sock");
    let mut fc = Proc::start(
        &["firecracker", "--api-sock", sock.to_str().expect("utf-8")],
        &sock,
        LINUX_DEADLINE,
    );
    put(
        &sock,
        "PUT",
        "/boot-source",
        &json!({
            "kernel_image_path": kit.join("vmlinux"),
            "initrd_path": kit.join("initramfs.cpio"),
            "boot_args": linux_cmdline(),
        })
        .to_string(),
    );
    put(
        &sock,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 128}"#,
    );
    put(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
    );
    assert_eq!(get(&sock, "/")["state"], "Running");
    let line = fc.wait_line("Kernel command line:");
    assert!(
        line.contains("hearth_no_int3_selftest") && line.contains("pci=off"),
        "{line}"
    );
    fc.wait_line("Run /init as init process");
    // The kit's init faults here and the kernel resets (panic=-1 reboot=k):
    // the process ends with its VM.
    let status = fc.wait();
    assert_eq!(status.code(), Some(0), "{}", fc.stderr());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_sandboxed_monitor_refuses_api_sockets_and_lives_on() {
    let dir = scratch_dir("fc-sandbox");
    let control = dir.join("hearth.sock");
    let config = write_file(
        &dir,
        "monitor.json",
        &json!({
            "host": {"api": {"socket": control}},
            "vms": [{"name": "a", "kernel": {"path": guest(), "cmdline": "hearth.scenario=idle"},
                     "memory": {"size_mib": 32}, "serial": {"output": "off", "stdin": false}}],
        })
        .to_string(),
    );
    let mut monitor = Proc::start(
        &["run", "--config", &config, "--sandbox"],
        &control,
        DEADLINE,
    );
    let api = dir.join("b.sock");
    let reply = hearth::api::client::call(
        &control,
        &json!({"op": "create",
        "vm": {"name": "b"}, "api_socket": api}),
    )
    .expect("reply");
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(
        reply["error"].as_str().unwrap_or("").contains("sandbox"),
        "{reply}"
    );
    assert!(!api.exists());
    // Still alive (a forbidden call would have killed it), and its
    // Prometheus text needs no file.
    let text = ctl(&control, json!({"op": "metrics"}));
    assert!(text
        .as_str()
        .unwrap_or("")
        .contains("hearth_vm_state{vm=\"a\",state=\"running\"} 1"));
    ctl(&control, json!({"op": "shutdown"}));
    assert_eq!(monitor.wait().code(), Some(0), "{}", monitor.stderr());
    let _ = std::fs::remove_dir_all(&dir);
}
