//! `hearth serve`: a monitor started with no VM, driven through its
//! control socket as a host service is: VMs created, started, stopped,
//! restarted and deleted while others run.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(60);

struct Service {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
}

impl Service {
    /// `hearth serve` with `host` as its monitor file's host section.
    fn start(name: &str, host: Value) -> Service {
        let dir = scratch_dir(name);
        let socket = dir.join("api.sock");
        let config = write_file(
            &dir,
            "host.json",
            &json!({"host": host, "vms": []}).to_string(),
        );
        let child = Command::new(hearth())
            .args(["serve", "--config", &config, "--api-socket"])
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hearth serve");
        let start = Instant::now();
        while UnixStream::connect(&socket).is_err() {
            assert!(
                start.elapsed() < DEADLINE,
                "the control socket never appeared"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Service { child, socket, dir }
    }

    fn call(&self, request: Value) -> Value {
        let mut s = UnixStream::connect(&self.socket).expect("connect");
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        writeln!(s, "{request}").expect("send");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("read reply");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?}: {e}"))
    }

    fn ok(&self, request: Value) -> Value {
        let reply = self.call(request.clone());
        assert_eq!(reply["ok"], true, "{request} -> {reply}");
        reply["result"].clone()
    }

    /// A VM definition of the test guest running `scenario`.
    fn guest(&self, name: &str, scenario: &str, weight: u32) -> Value {
        json!({"name": name,
               "kernel": {"path": guest_elf(), "cmdline": format!("hearth.scenario={scenario}")},
               "cpu": {"weight": weight}, "memory": {"size_mib": 32},
               "serial": {"output": "off"}})
    }

    fn create(&self, vm: Value, start: bool) -> Value {
        self.call(json!({"op": "create", "vm": vm, "start": start,
                         "base_dir": self.dir.display().to_string()}))
    }

    fn names(&self) -> Vec<String> {
        self.ok(json!({"op": "list"}))["vms"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter_map(|vm| vm["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn cpu_ns(&self, vm: &str) -> f64 {
        self.ok(json!({"op": "stats", "vm": vm}))["cpu"]["used_ns"]
            .as_f64()
            .unwrap_or(0.0)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn shutdown(mut self) -> (Option<i32>, String) {
        self.ok(json!({"op": "shutdown"}));
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(start.elapsed() < DEADLINE, "hearth serve did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        (status.code(), err)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The monitor's resident memory (KiB) and open fds.
fn footprint(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count();
    (rss, fds)
}

/// The footprint once the last request's connection is closed (the
/// server closes it a moment after its reply): the least of a few samples.
fn settled(pid: u32) -> (u64, usize) {
    let mut least = footprint(pid);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(30));
        let now = footprint(pid);
        least = (least.0.min(now.0), least.1.min(now.1));
    }
    least
}

#[test]
fn twenty_vms_come_and_go_and_leave_nothing_behind() {
    let s = Service::start("service-churn", json!({}));
    let mut baseline = None;
    for i in 0..20 {
        let name = format!("vm{i}");
        let reply = s.create(s.guest(&name, "idle", 100), false);
        assert_eq!(reply["ok"], true, "{reply}");
        assert_eq!(reply["result"]["state"], "created", "{reply}");
        assert_eq!(s.ok(json!({"op": "start", "vm": name}))["state"], "running");
        assert_eq!(s.names(), vec![name.clone()]);
        let gone = s.ok(json!({"op": "delete", "vm": name}));
        assert_eq!(gone["state"], "deleted");
        assert!(s.names().is_empty());
        // The first round warms up (worker and writer stacks, allocator
        // arenas); every later one must end where it did. (The server
        // closes the last request's connection a moment after its reply.)
        let now = settled(s.pid());
        match baseline {
            None if i == 1 => baseline = Some(now),
            Some((rss, fds)) => {
                assert_eq!(now.1, fds, "round {i}: open fds {} -> {}", fds, now.1);
                assert!(
                    now.0 <= rss + 1024,
                    "round {i}: RSS grew from {rss} KiB to {} KiB",
                    now.0
                );
            }
            None => {}
        }
    }
    let (code, err) = s.shutdown();
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_vm_created_while_another_spins_gets_its_weighted_share_at_once() {
    let s = Service::start("service-share", json!({"cpu": {"cpus": [0]}}));
    assert_eq!(s.create(s.guest("a", "spin", 100), true)["ok"], true);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.create(s.guest("b", "spin", 300), true)["ok"], true);
    // Within a second of its start, b takes three quarters of the CPU.
    std::thread::sleep(Duration::from_secs(1));
    let (a0, b0) = (s.cpu_ns("a"), s.cpu_ns("b"));
    std::thread::sleep(Duration::from_secs(2));
    let (a1, b1) = (s.cpu_ns("a"), s.cpu_ns("b"));
    let ratio = (b1 - b0) / (a1 - a0).max(1.0);
    assert!(
        (2.4..=3.6).contains(&ratio),
        "b:a = {ratio:.2} (wanted 3 within 20 %)"
    );
    let (code, err) = s.shutdown();
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_bad_create_changes_nothing_and_names_the_field() {
    let s = Service::start("service-bad", json!({}));
    assert_eq!(s.create(s.guest("keep", "idle", 100), true)["ok"], true);
    let mut bad = s.guest("x", "idle", 100);
    bad["cpu"]["vcpus"] = json!(0);
    bad["memory"]["sizemib"] = json!(64);
    let reply = s.create(bad, true);
    assert_eq!(reply["ok"], false, "{reply}");
    let error = reply["error"].as_str().unwrap_or_default();
    assert!(error.contains("cpu.vcpus: 0"), "{error}");
    assert!(error.contains("\"sizemib\""), "{error}");
    // A name already in use, and a kernel that is not there.
    let reply = s.create(s.guest("keep", "idle", 100), true);
    assert!(
        reply["error"]
            .as_str()
            .unwrap_or_default()
            .contains("\"keep\""),
        "{reply}"
    );
    let mut missing = s.guest("y", "idle", 100);
    missing["kernel"]["path"] = json!("no-such-kernel");
    let reply = s.create(missing, true);
    assert!(
        reply["error"]
            .as_str()
            .unwrap_or_default()
            .contains("kernel.path"),
        "{reply}"
    );
    assert_eq!(s.names(), vec!["keep".to_string()]);
    let (code, err) = s.shutdown();
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_vm_restarts_and_stops_and_is_deleted_when_stopped() {
    let s = Service::start("service-restart", json!({}));
    assert_eq!(s.create(s.guest("r", "spin", 100), true)["ok"], true);
    let again = s.ok(json!({"op": "restart", "vm": "r"}));
    assert_eq!(again["state"], "running", "{again}");
    // Its CPU time starts over with its new vCPUs.
    assert!(s.cpu_ns("r") < 5e9);
    assert_eq!(s.ok(json!({"op": "stop", "vm": "r"}))["state"], "stopping");
    let start = Instant::now();
    while s.ok(json!({"op": "list"}))["vms"][0]["state"] == "running"
        || s.ok(json!({"op": "list"}))["vms"][0]["state"] == "stopping"
    {
        assert!(start.elapsed() < DEADLINE, "r never stopped");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.ok(json!({"op": "delete", "vm": "r"}))["state"], "deleted");
    let (code, err) = s.shutdown();
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn serve_refuses_a_single_vm_file_and_needs_a_socket() {
    let dir = scratch_dir("service-usage");
    let vm = write_file(
        &dir,
        "vm.json",
        &json!({"kernel": {"path": guest_elf()}}).to_string(),
    );
    let run = run_hearth(
        &["serve", "--config", &vm, "--api-socket", "x.sock"],
        DEADLINE,
    );
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("hearth serve takes a monitor file"),
        "{}",
        run.stderr
    );
    let run = run_hearth(&["serve"], DEADLINE);
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("needs a control socket"),
        "{}",
        run.stderr
    );
    let _ = Path::new(&vm);
}
