//! The jailed monitor (`--sandbox`): after start-up it runs as `nobody`,
//! with no capabilities, in an empty root and namespaces of its own, and
//! still runs its VMs and answers its control socket; a call its filters
//! forbid (an `open`) kills it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(60);

fn call(socket: &std::path::Path, request: Value) -> Value {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    writeln!(s, "{request}").expect("send");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("reply");
    serde_json::from_str(&line).expect("JSON reply")
}

fn status_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

/// Waits for the monitor to drop to nobody, then checks from outside that
/// it has no capabilities, no_new_privs, a seccomp filter, an empty root,
/// and mount, network and IPC namespaces of its own.
fn assert_jailed(child: &mut std::process::Child) {
    let pid = child.id();
    let start = Instant::now();
    while status_field(pid, "Uid:") != "65534\t65534\t65534\t65534" {
        assert!(
            start.elapsed() < DEADLINE && child.try_wait().expect("wait").is_none(),
            "the monitor never dropped to nobody"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status_field(pid, "CapEff:"), "0000000000000000");
    assert_eq!(status_field(pid, "CapPrm:"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    assert_eq!(status_field(pid, "Seccomp:"), "2");
    let root: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .expect("its root")
        .collect();
    assert!(root.is_empty(), "its root holds {root:?}");
    for ns in ["mnt", "net", "ipc"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).expect("ns");
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).expect("ns");
        assert_ne!(theirs, ours, "{ns} namespace");
    }
}

#[test]
fn a_sandboxed_monitor_runs_its_vms_as_nobody_in_an_empty_root() {
    let dir = scratch_dir("sandbox");
    let socket = dir.join("api.sock");
    let log = dir.join("b.log");
    let config = write_file(
        &dir,
        "monitor.json",
        &json!({
            "host": {"api": {"socket": socket}},
            "vms": [
                {"name": "a", "kernel": {"path": guest_elf(), "cmdline": "hearth.scenario=spin"},
                 "memory": {"size_mib": 64}, "serial": {"output": "off", "stdin": false}},
                {"name": "b", "kernel": {"path": guest_elf(), "cmdline": "hearth.scenario=mem-idle"},
                 "memory": {"size_mib": 64, "balloon": true},
                 "serial": {"output": "file", "path": log, "stdin": false}}
            ]
        })
        .to_string(),
    );
    let mut child = Command::new(hearth())
        .args(["run", "--config", &config, "--sandbox"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hearth");
    assert_jailed(&mut child);
    // Its VMs run, its control socket answers, it builds no new VM.
    let list = call(&socket, json!({"op": "list"}));
    assert_eq!(list["result"]["vms"][0]["state"], "running", "{list}");
    assert_eq!(list["result"]["vms"][1]["state"], "running", "{list}");
    let created = call(
        &socket,
        json!({"op": "create", "vm": {"kernel": {"path": guest_elf()}}}),
    );
    assert!(
        created["error"]
            .as_str()
            .unwrap_or_default()
            .contains("sandbox"),
        "{created}"
    );
    let b = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("mem used_mib=")
    {
        assert!(b.elapsed() < DEADLINE, "b's log never got its line");
        std::thread::sleep(Duration::from_millis(20));
    }
    let reply = call(&socket, json!({"op": "shutdown"}));
    assert_eq!(reply["ok"], true, "{reply}");
    let status = child.wait().expect("wait");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        err.contains("sandbox: in an empty root as uid 65534"),
        "{err}"
    );
}

/// The state of `vm` in a `list` reply.
fn state_of(list: &Value, vm: &str) -> String {
    list["result"]["vms"]
        .as_array()
        .and_then(|vms| vms.iter().find(|v| v["name"] == vm))
        .map(|v| v["state"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

/// VMs with every device a sandbox can hold (drives on both engines,
/// vsock, a balloon) are torn down inside it, as they end by themselves
/// and as they are deleted: the monitor opens and removes nothing there,
/// lives on, and exits cleanly. Their socket files are left for the next
/// start to replace.
#[test]
fn vms_with_devices_are_torn_down_inside_the_sandbox() {
    let dir = scratch_dir("sandbox-teardown");
    let socket = dir.join("api.sock");
    let (d1, d2) = (dir.join("d1.img"), dir.join("d2.img"));
    for d in [&d1, &d2] {
        std::fs::File::create(d)
            .and_then(|f| f.set_len(1 << 20))
            .expect("disk image");
    }
    let vsock = dir.join("v.sock");
    let quiet = json!({"output": "off", "stdin": false});
    let config = write_file(
        &dir,
        "monitor.json",
        &json!({
            "host": {"api": {"socket": socket}, "memory": {"budget_mib": 256}},
            "vms": [
                {"name": "sync", "kernel": {"path": guest_elf(), "cmdline": "hearth.scenario=blk-write"},
                 "memory": {"size_mib": 64}, "serial": quiet,
                 "drives": [{"id": "d", "path": d1}],
                 "vsock": {"guest_cid": 7, "uds_path": vsock}},
                {"name": "ring", "kernel": {"path": guest_elf(), "cmdline": "hearth.scenario=mem-idle"},
                 "memory": {"size_mib": 64}, "serial": quiet,
                 "drives": [{"id": "d", "path": d2, "engine": "io_uring"}]},
                {"name": "idle", "kernel": {"path": guest_elf(), "cmdline": "hearth.scenario=mem-idle"},
                 "memory": {"size_mib": 64}, "serial": quiet}
            ]
        })
        .to_string(),
    );
    let mut child = Command::new(hearth())
        .args(["serve", "--config", &config, "--sandbox"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hearth");
    let start = Instant::now();
    let mut list = Value::Null;
    // `sync` writes its disk, resets and is torn down by itself.
    while !state_of(&list, "sync").contains("reset") {
        assert!(
            start.elapsed() < DEADLINE && child.try_wait().expect("wait").is_none(),
            "sync never ended by itself: {list}"
        );
        std::thread::sleep(Duration::from_millis(50));
        list = match UnixStream::connect(&socket) {
            Ok(_) => call(&socket, json!({"op": "list"})),
            Err(_) => Value::Null,
        };
    }
    let deleted = call(&socket, json!({"op": "delete", "vm": "ring"}));
    assert_eq!(deleted["result"]["state"], "deleted", "{deleted}");
    let list = call(&socket, json!({"op": "list"}));
    assert_eq!(state_of(&list, "idle"), "running", "{list}");
    assert_eq!(state_of(&list, "ring"), "", "{list}");
    let stats = call(&socket, json!({"op": "stats", "vm": "sync"}));
    assert_eq!(stats["ok"], true, "{stats}");
    let reply = call(&socket, json!({"op": "shutdown"}));
    assert_eq!(reply["ok"], true, "{reply}");
    let status = child.wait().expect("wait");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert_eq!(status.code(), Some(0), "{status:?}\n{err}");
    assert!(err.contains("sandbox: in an empty root"), "{err}");
    // Left behind, as a sandboxed monitor removes no file.
    assert!(vsock.exists() && socket.exists());
}

/// Set in the child that enters a sandbox and then opens a file.
const CHILD: &str = "HEARTH_SANDBOX_CHILD";

#[test]
fn sandbox_child_entry() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let nobody = hearth::config::sandbox_user("nobody").expect("a nobody user");
    hearth::sandbox::unshare(true).expect("unshare");
    hearth::sandbox::enter(&nobody).expect("enter the sandbox");
    eprintln!("in the sandbox");
    hearth::seccomp::install_sandboxed(hearth::seccomp::ThreadClass::EventLoop)
        .expect("install the filter");
    eprintln!("filter installed");
    let opened = std::fs::File::open("/etc/hostname");
    eprintln!("still alive after open: {opened:?}");
}

#[test]
fn an_open_inside_the_sandbox_kills_the_monitor() {
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "sandbox_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .expect("run the child");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("filter installed"), "{err}");
    assert!(!err.contains("still alive"), "{err}");
    assert_eq!(out.status.signal(), Some(libc::SIGSYS), "{err}");
}
