//! Firecracker's REST API, spoken with `curl --unix-socket` as Firecracker's
//! getting-started guide does, against `hearth firecracker --api-sock`:
//! the guide's sequence boots the test guest, every pre- and post-boot
//! endpoint answers as Firecracker's does, and what Hearth lacks is refused
//! by name. No boot here takes more than a few seconds.

mod common;
mod fc;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::scratch_dir;
use fc::*;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);

fn firecracker(dir: &std::path::Path, extra: &[&str]) -> (Proc, std::path::PathBuf) {
    let sock = dir.join("firecracker.socket");
    let mut args = vec!["firecracker", "--api-sock", sock.to_str().expect("utf-8")];
    args.extend_from_slice(extra);
    (Proc::start(&args, &sock, DEADLINE), sock)
}

#[test]
fn the_getting_started_sequence_boots_and_post_boot_requests_drive_the_vm() {
    let dir = scratch_dir("fc-getting-started");
    let (mut fc, sock) = firecracker(&dir, &["--id", "demo"]);
    let mode = std::fs::metadata(&sock)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the API socket is its owner's alone");
    assert_eq!(get(&sock, "/")["state"], "Not started");
    assert_eq!(get(&sock, "/")["id"], "demo");
    let (log, metrics) = getting_started(&sock, &dir);

    // InstanceStart answered once the VM runs.
    assert_eq!(get(&sock, "/")["state"], "Running");
    fc.wait_line("hearth-guest: IDLE");
    let boot = fc.wait_line("hearth-guest: boot entry=");
    assert!(
        boot.starts_with("hearth-guest:"),
        "unprefixed console: {boot}"
    );
    assert!(
        boot.contains("reboot=k panic=1 hearth.scenario=idle pci=off"),
        "{boot}"
    );
    drive_post_boot(&sock);
    check_metrics_line(&sock, &metrics);

    // The guide's log file has the monitor's log (at Debug, the requests).
    let logged = std::fs::read_to_string(&log).expect("log file");
    assert!(logged.contains("API PUT /actions"), "{logged}");

    // Like Firecracker's process, the monitor ends with SIGTERM (128+15)
    // and takes its socket with it.
    let status = fc.terminate();
    assert_eq!(status.code(), Some(143), "{}", fc.stderr());
    assert!(!sock.exists(), "the socket file is removed");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The guide's calls, up to InstanceStart; the log and metrics files.
fn getting_started(sock: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    // The guide's calls, as written (its kernel and boot arguments, plus
    // the test guest's scenario).
    let log = dir.join("firecracker.log");
    put(sock, "PUT", "/logger", &format!(
        "{{\n  \"log_path\": \"{}\",\n  \"level\": \"Debug\",\n  \"show_level\": true,\n  \"show_log_origin\": true\n}}",
        log.display()
    ));
    put(sock, "PUT", "/boot-source", &format!(
        "{{\n  \"kernel_image_path\": \"{}\",\n  \"boot_args\": \"console=ttyS0 reboot=k panic=1 hearth.scenario=idle\"\n}}",
        guest()
    ));
    let metrics = dir.join("metrics.json");
    put(
        sock,
        "PUT",
        "/metrics",
        &json!({"metrics_path": metrics}).to_string(),
    );
    put(
        sock,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 64}"#,
    );
    let config = get(sock, "/vm/config");
    assert_eq!(config["boot-source"]["kernel_image_path"], guest());
    assert_eq!(config["machine-config"]["vcpu_count"], 2);
    assert_eq!(
        config["metrics"]["metrics_path"],
        metrics.to_str().expect("utf-8")
    );
    put(
        sock,
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
    );

    (log, metrics)
}

/// Pause, resume, Ctrl+Alt+Del; what may not be done after the start.
fn drive_post_boot(sock: &Path) {
    put(sock, "PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(get(sock, "/")["state"], "Paused");
    put(sock, "PATCH", "/vm", r#"{"state": "Resumed"}"#);
    assert_eq!(get(sock, "/")["state"], "Running");
    assert_eq!(get(sock, "/machine-config")["mem_size_mib"], 64);
    // Ctrl+Alt+Del waits in the i8042 (this guest has no keyboard driver).
    put(
        sock,
        "PUT",
        "/actions",
        r#"{"action_type": "SendCtrlAltDel"}"#,
    );
    assert_eq!(get(sock, "/")["state"], "Running");
    let after = fault(
        sock,
        "PUT",
        "/boot-source",
        Some(&format!("{{\"kernel_image_path\": \"{}\"}}", guest())),
    );
    assert_eq!(
        after,
        "The requested operation is not supported after starting the microVM."
    );
    let again = fault(
        sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert!(again.contains("not supported after starting"), "{again}");
    let patch = fault(
        sock,
        "PATCH",
        "/drives/rootfs",
        Some(r#"{"drive_id": "rootfs", "path_on_host": "/x"}"#),
    );
    assert!(patch.contains("not supported by Hearth yet"), "{patch}");
}

/// Metrics: a line on FlushMetrics, with the VM's exits (its console
/// output is port writes) and the requests served.
fn check_metrics_line(sock: &Path, metrics: &Path) {
    put(
        sock,
        "PUT",
        "/actions",
        r#"{"action_type": "FlushMetrics"}"#,
    );
    let text = std::fs::read_to_string(metrics).expect("metrics file");
    let line: serde_json::Value =
        serde_json::from_str(text.lines().last().expect("a line")).expect("JSON line");
    assert!(
        line["utc_timestamp_ms"].as_u64().unwrap_or(0) > 1_600_000_000_000,
        "{line}"
    );
    assert!(
        line["vcpu"]["exit_io_out"].as_u64().unwrap_or(0) > 0,
        "{line}"
    );
    assert!(
        line["uart"]["write_count"].as_u64().unwrap_or(0) > 0,
        "{line}"
    );
    // Two PUTs on /boot-source, the one after boot refused.
    assert_eq!(line["put_api_requests"]["boot_source_count"], 2, "{line}");
    assert_eq!(line["put_api_requests"]["boot_source_fails"], 1, "{line}");
    assert_eq!(line["put_api_requests"]["machine_cfg_count"], 1, "{line}");
    // InstanceStart twice, SendCtrlAltDel, FlushMetrics (this line counts itself).
    assert_eq!(line["put_api_requests"]["actions_count"], 4, "{line}");
    assert_eq!(line["put_api_requests"]["actions_fails"], 1, "{line}");
    assert!(
        line["get_api_requests"]["instance_info_count"]
            .as_u64()
            .unwrap_or(0)
            >= 4
    );
}

#[test]
fn the_process_ends_with_its_vm_and_exits_zero_on_a_guest_reset() {
    let dir = scratch_dir("fc-hello");
    let (mut fc, sock) = firecracker(&dir, &[]);
    put(
        &sock,
        "PUT",
        "/boot-source",
        &json!({"kernel_image_path": guest(),
        "boot_args": "console=ttyS0 hearth.scenario=hello"})
        .to_string(),
    );
    put(
        &sock,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 32}"#,
    );
    put(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
    );
    let status = fc.wait();
    let out = fc.stdout();
    assert!(out.contains("hearth-guest: cpus mptable=2"), "{out}");
    assert!(out.contains("hearth-guest: HELLO OK"), "{out}");
    assert_eq!(status.code(), Some(0), "{}", fc.stderr());
    assert!(
        fc.stderr().contains("ended: guest reset"),
        "{}",
        fc.stderr()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_requests_get_firecrackers_errors_naming_the_field() {
    let dir = scratch_dir("fc-errors");
    let (mut fc, sock) = firecracker(&dir, &[]);
    let msg = fault(&sock, "GET", "/nonsense", None);
    assert_eq!(msg, "Invalid request method and/or path: GET /nonsense.");
    let msg = fault(
        &sock,
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path": "/no/such/vmlinux"}"#),
    );
    assert!(
        msg.starts_with("boot-source.kernel_image_path: \"/no/such/vmlinux\""),
        "{msg}"
    );
    let msg = fault(
        &sock,
        "PUT",
        "/machine-config",
        Some(r#"{"vcpus": 2, "mem_size_mib": 64}"#),
    );
    assert!(
        msg.contains("machine-config: unknown field \"vcpus\""),
        "{msg}"
    );
    let msg = fault(
        &sock,
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 33, "mem_size_mib": 64}"#),
    );
    assert!(
        msg.contains("machine-config.vcpu_count: 33 is out of range"),
        "{msg}"
    );
    let msg = fault(&sock, "PUT", "/machine-config", Some("{not json"));
    assert!(
        msg.starts_with("An error occurred when deserializing the json body"),
        "{msg}"
    );
    let msg = fault(
        &sock,
        "PUT",
        "/drives/rootfs",
        Some(r#"{"drive_id": "other"}"#),
    );
    assert_eq!(
        msg,
        "The id from the path does not match the id from the body!"
    );
    let drive = json!({"drive_id": "rootfs", "path_on_host": dir.join("missing.ext4"),
                       "is_root_device": true, "is_read_only": false});
    let msg = fault(&sock, "PUT", "/drives/rootfs", Some(&drive.to_string()));
    assert!(msg.starts_with("drives[0].path_on_host"), "{msg}");
    let msg = fault(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert!(
        msg.starts_with("Start microvm error: boot-source: required"),
        "{msg}"
    );
    refused_before_the_boot(&sock);
    refused_by_name(&sock);
    // Nothing refused was kept.
    let config = get(&sock, "/vm/config");
    assert_eq!(config["boot-source"], serde_json::Value::Null);
    assert_eq!(config["drives"], json!([]));
    devices_before_the_boot(&sock, &dir);
    fc.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Drives, interfaces and vsock: checked and kept per entry.
fn devices_before_the_boot(sock: &Path, dir: &Path) {
    let disk = dir.join("rootfs.ext4");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk");
    let drive = json!({"drive_id": "rootfs", "path_on_host": disk,
                       "is_root_device": true, "is_read_only": false});
    put(sock, "PUT", "/drives/rootfs", &drive.to_string());
    let iface = json!({"iface_id": "net1", "guest_mac": "06:00:AC:10:00:02",
                       "host_dev_name": "hearthnotap0"});
    let msg = fault(
        sock,
        "PUT",
        "/network-interfaces/net1",
        Some(&iface.to_string()),
    );
    assert!(
        msg.starts_with("network-interfaces[0].host_dev_name: \"hearthnotap0\" does not exist"),
        "{msg}"
    );
    let vsock = json!({"guest_cid": 3, "uds_path": dir.join("v.sock")});
    put(sock, "PUT", "/vsock", &vsock.to_string());
    put(sock, "PATCH", "/machine-config", r#"{"mem_size_mib": 96}"#);
    let config = get(sock, "/vm/config");
    assert_eq!(
        config["drives"][0]["path_on_host"],
        disk.to_str().expect("utf-8")
    );
    assert_eq!(config["network-interfaces"], json!([]));
    assert_eq!(config["vsock"]["guest_cid"], 3);
    assert_eq!(config["machine-config"]["mem_size_mib"], 96);
    assert_eq!(get(sock, "/machine-config")["vcpu_count"], 1);
}

/// Post-boot requests before the boot.
fn refused_before_the_boot(sock: &Path) {
    for (method, path, body) in [
        ("PATCH", "/vm", r#"{"state": "Paused"}"#),
        ("PATCH", "/balloon", r#"{"amount_mib": 1}"#),
        ("PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#),
        (
            "PATCH",
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "path_on_host": "/x"}"#,
        ),
    ] {
        let msg = fault(sock, method, path, Some(body));
        assert_eq!(
            msg,
            "The requested operation is not supported before starting the microVM."
        );
    }
    let msg = fault(sock, "GET", "/balloon/statistics", None);
    assert!(msg.contains("before starting"), "{msg}");
    assert!(fault(sock, "GET", "/balloon", None).contains("No balloon device found"));
}

/// What Hearth lacks, by name.
fn refused_by_name(sock: &Path) {
    for (path, what) in [
        ("/snapshot/create", "snapshots"),
        ("/cpu-config", "CPU templates"),
        ("/mmds", "MMDS"),
        ("/entropy", "entropy device"),
    ] {
        let msg = fault(sock, "PUT", path, Some("{}"));
        assert!(msg.contains(what), "{path}: {msg}");
    }
    assert!(fault(
        sock,
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "T2"}"#)
    )
    .contains("CPU templates"));
}

#[test]
fn hostile_clients_cannot_stall_the_api_or_grow_it() {
    let dir = scratch_dir("fc-hostile");
    let (mut fc, sock) = firecracker(&dir, &[]);
    // A body over Firecracker's 50 KiB limit: 413, and the connection closes.
    let big = format!(
        "PUT /boot-source HTTP/1.1\r\nContent-Length: 60000\r\n\r\n{}",
        "x".repeat(60000)
    );
    let reply = raw(&sock, big.as_bytes(), Duration::from_secs(5));
    assert!(reply.starts_with("HTTP/1.1 413 "), "{reply}");
    // An endless head: 431 once it passes 8 KiB.
    let endless = format!("GET /{}", "a".repeat(20000));
    let reply = raw(&sock, endless.as_bytes(), Duration::from_secs(5));
    assert!(reply.starts_with("HTTP/1.1 431 "), "{reply}");
    // Half a request, held open, while others are served; and every
    // connection slot taken: the next is told, and served once one frees.
    let mut holders: Vec<UnixStream> = Vec::new();
    for _ in 0..16 {
        let mut s = UnixStream::connect(&sock).expect("connect");
        std::io::Write::write_all(
            &mut s,
            b"PUT /boot-source HTTP/1.1\r\nContent-Length: 10\r\n\r\n{",
        )
        .expect("write");
        holders.push(s);
    }
    let busy = raw(&sock, b"GET / HTTP/1.1\r\n\r\n", Duration::from_secs(5));
    assert!(busy.starts_with("HTTP/1.1 503 "), "{busy}");
    holders.pop();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(get(&sock, "/")["state"], "Not started");
    // Two requests on one connection (keep-alive), answered in order; and
    // a body sent after `Expect: 100-continue` is waited for.
    let two = b"GET /machine-config HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n";
    let reply = raw(&sock, two, Duration::from_secs(5));
    assert_eq!(reply.matches("HTTP/1.1 200 OK").count(), 2, "{reply}");
    assert!(
        reply.find("mem_size_mib") < reply.find("Not started"),
        "{reply}"
    );
    // A metrics FIFO nobody reads never blocks the loop: lines are dropped.
    let fifo = dir.join("metrics.fifo");
    let c = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("path");
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    put(
        &sock,
        "PUT",
        "/metrics",
        &json!({"metrics_path": fifo}).to_string(),
    );
    let start = std::time::Instant::now();
    for _ in 0..40 {
        put(
            &sock,
            "PUT",
            "/actions",
            r#"{"action_type": "FlushMetrics"}"#,
        );
    }
    assert!(start.elapsed() < Duration::from_secs(20));
    assert_eq!(get(&sock, "/")["state"], "Not started");
    start_and_hang_up(&sock);
    drop(holders);
    fc.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_config_file_boots_at_once_with_or_without_the_api() {
    let dir = scratch_dir("fc-config-file");
    // --no-api: as `hearth run --config`.
    let hello = common::write_file(
        &dir,
        "hello.json",
        &json!({
            "boot-source": {"kernel_image_path": guest(), "boot_args": "hearth.scenario=hello"},
        })
        .to_string(),
    );
    let run = common::run_hearth(
        &["firecracker", "--no-api", "--config-file", &hello],
        DEADLINE,
    );
    assert!(
        run.stdout.contains("hearth-guest: HELLO OK"),
        "{}",
        run.stdout
    );
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    // With the API: booted at once, and served after boot.
    let file = common::write_file(
        &dir,
        "vm.json",
        &json!({
            "boot-source": {"kernel_image_path": guest(), "boot_args": "hearth.scenario=idle"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
        })
        .to_string(),
    );
    let (mut fc, sock) = firecracker(&dir, &["--config-file", &file]);
    fc.wait_line("hearth-guest: IDLE");
    assert_eq!(get(&sock, "/")["state"], "Running");
    let config = get(&sock, "/vm/config");
    assert_eq!(config["boot-source"]["boot_args"], "hearth.scenario=idle");
    let msg = fault(
        &sock,
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 1, "mem_size_mib": 64}"#),
    );
    assert!(msg.contains("not supported after starting"), "{msg}");
    put(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(get(&sock, "/")["state"], "Paused");
    fc.terminate();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client that sends InstanceStart and hangs up: the VM starts all the
/// same, and the socket knows it.
fn start_and_hang_up(sock: &Path) {
    put(
        sock,
        "PUT",
        "/boot-source",
        &json!({"kernel_image_path": guest(),
        "boot_args": "hearth.scenario=idle"})
        .to_string(),
    );
    let body = r#"{"action_type": "InstanceStart"}"#;
    let start = format!(
        "PUT /actions HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    raw(sock, start.as_bytes(), Duration::from_millis(1));
    let since = std::time::Instant::now();
    while get(sock, "/")["state"] != "Running" {
        assert!(since.elapsed() < DEADLINE, "the VM never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
}
