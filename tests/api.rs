//! The control socket as its users see it: a monitor running the test
//! guest, driven through `hearth ctl` and raw socket connections.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(30);

/// A running monitor with a control socket; killed if the test fails.
struct Monitor {
    child: Child,
    socket: PathBuf,
    stats: PathBuf,
}

impl Monitor {
    /// Starts two VMs ("web" spinning, "db" idle) with `acl` and mode `mode`.
    fn start(name: &str, mode: &str, acl: Value) -> Monitor {
        Monitor::start_with(name, mode, acl, None)
    }

    /// The same, with a memory budget (`host.memory`) when given.
    fn start_with(name: &str, mode: &str, acl: Value, memory: Option<Value>) -> Monitor {
        let dir = scratch_dir(name);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let socket = dir.join("api.sock");
        let vm = |name: &str, scenario: &str| {
            json!({"name": name, "kernel": {"path": guest_elf(),
                   "cmdline": format!("hearth.scenario={scenario} hearth.spin_chunk=1000000")},
                   "memory": {"size_mib": 32}, "serial": {"output": "off", "stdin": false}})
        };
        let mut config = json!({
            "host": {"api": {"socket": socket, "mode": mode, "acl": acl}},
            "vms": [vm("web", "spin"), vm("db", "idle")]
        });
        if let Some(memory) = memory {
            config["host"]["memory"] = memory;
        }
        let config = write_file(&dir, "monitor.json", &config.to_string());
        let stats = dir.join("stats.json");
        let child = Command::new(hearth())
            .args(["run", "--config", &config, "--stats-file"])
            .arg(&stats)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hearth");
        let start = Instant::now();
        while UnixStream::connect(&socket).is_err() {
            assert!(
                start.elapsed() < DEADLINE,
                "the control socket never appeared"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Monitor {
            child,
            socket,
            stats,
        }
    }

    /// One request on a fresh connection.
    fn call(&self, request: Value) -> Value {
        let mut s = UnixStream::connect(&self.socket).expect("connect");
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        writeln!(s, "{request}").expect("send");
        read_reply(&mut BufReader::new(s))
    }

    /// `hearth ctl SOCKET ARGS`, as `uid` if given.
    fn ctl(&self, uid: Option<u32>, args: &[&str]) -> Output {
        let mut cmd = Command::new(hearth());
        cmd.arg("ctl").arg(&self.socket).args(args);
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        cmd.output().expect("run hearth ctl")
    }

    fn vm_stats(&self, vm: &str) -> Value {
        let reply = self.call(json!({"op": "stats", "vm": vm}));
        assert_eq!(reply["ok"], true, "{reply}");
        reply["result"].clone()
    }

    /// Waits for the monitor to exit; its status and stderr.
    fn wait(mut self) -> (Option<i32>, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(start.elapsed() < DEADLINE, "hearth did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status.code(), err)
    }

    fn shutdown(self) -> (Option<i32>, String) {
        let reply = self.call(json!({"op": "shutdown"}));
        assert_eq!(reply["ok"], true, "{reply}");
        self.wait()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_reply(r: &mut impl BufRead) -> Value {
    let mut line = String::new();
    r.read_line(&mut line).expect("read reply");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?} is not JSON: {e}"))
}

fn root_admin() -> Value {
    json!([{"uid": 0, "grant": "admin"}])
}

#[test]
fn an_admin_changes_a_weight_and_sees_it_in_the_stats() {
    let m = Monitor::start("weight", "0600", root_admin());
    let mode = std::fs::metadata(&m.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the socket is created with mode 0600");

    let out = m.ctl(None, &["set-weight", "web", "300"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(m.vm_stats("web")["cpu"]["weight"], 300);
    let out = m.ctl(None, &["set-max", "web", "0.5"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(m.vm_stats("web")["cpu"]["max"], 0.5);

    let list = m.ctl(None, &["list"]);
    let list: Value = serde_json::from_slice(&list.stdout).expect("JSON");
    assert_eq!(list["result"]["vms"][0]["name"], "web");
    assert_eq!(list["result"]["vms"][1]["state"], "running");

    // Out of range: an error reply and a non-zero exit.
    let out = m.ctl(None, &["set-weight", "web", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("weight 0 is out of range"));
    // No memory budget in this monitor: a clear answer.
    let reply = m.call(json!({"op": "set-memory", "vm": "db", "floor_mib": 16}));
    assert_eq!(
        reply["error"],
        "not supported: this monitor has no memory budget (host.memory)"
    );
    // The device access verifier's counters: the spinning guest's serial
    // output went through the implicit allow of its own serial port (once
    // it has printed: on a loaded machine that may take a moment).
    let start = Instant::now();
    let reply = loop {
        let reply = m.call(json!({"op": "access-counters", "vm": "web"}));
        assert_eq!(reply["ok"], true, "{reply}");
        let writes = reply["result"]["allowed"]["pio_write"]
            .as_u64()
            .unwrap_or(0);
        if writes > 0 || start.elapsed() > DEADLINE {
            break reply;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        reply["result"]["allowed"]["pio_write"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{reply}"
    );
    assert!(reply["result"]["rules"].is_array(), "{reply}");

    let socket = m.socket.clone();
    let (code, err) = m.shutdown();
    assert_eq!(code, Some(0), "{err}");
    assert!(!socket.exists(), "the socket file is removed at exit");
}

#[test]
fn a_client_the_acl_does_not_name_is_refused() {
    // Mode 0666 lets any user connect; the ACL is then the only gate.
    let acl =
        json!([{"uid": 0, "grant": "admin"}, {"uid": 65533, "vms": ["db"], "grant": "control"}]);
    let m = Monitor::start("refused", "0666", acl);
    let out = m.ctl(Some(65534), &["set-weight", "web", "300"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let reply: Value = serde_json::from_slice(&out.stdout).expect("JSON reply");
    assert_eq!(reply["ok"], false);
    assert_eq!(
        reply["error"],
        "permission denied: uid 65534 (gid 65534) is not in the access list"
    );
    // A user with control of db only cannot touch web, and sees only db.
    let out = m.ctl(Some(65533), &["pause", "web"]);
    let reply: Value = serde_json::from_slice(&out.stdout).expect("JSON reply");
    assert_eq!(
        reply["error"],
        "permission denied: uid 65533 has no control grant for vm web"
    );
    let out = m.ctl(Some(65533), &["list"]);
    let reply: Value = serde_json::from_slice(&out.stdout).expect("JSON reply");
    assert_eq!(
        reply["result"]["vms"],
        json!([{"name": "db", "state": "running", "vcpus": 1}])
    );
    assert_eq!(m.vm_stats("web")["cpu"]["weight"], 100, "nothing changed");
    let (code, err) = m.shutdown();
    assert_eq!(code, Some(0));
    assert!(
        err.contains("refused") && err.contains("uid 65534"),
        "refusals are logged: {err}"
    );
}

#[test]
fn garbage_oversized_and_slow_requests_do_not_stop_the_monitor() {
    let m = Monitor::start("garbage", "0600", root_admin());
    // A slow client holding half a request does not block anyone.
    let mut slow = UnixStream::connect(&m.socket).expect("connect");
    slow.write_all(b"{\"op\": \"li").expect("send");

    let mut s = UnixStream::connect(&m.socket).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    s.write_all(b"this is not json\n\xff\xfe\n{\"op\": \"pause\"}\n")
        .expect("send");
    for expected in [
        "invalid request: expected",
        "invalid request",
        "missing field `vm`",
    ] {
        let reply = read_reply(&mut r);
        assert_eq!(reply["ok"], false);
        assert!(
            reply["error"]
                .as_str()
                .unwrap_or_default()
                .contains(expected),
            "{reply}"
        );
    }
    // The same connection still works after bad requests.
    s.write_all(b"{\"op\": \"list\"}\n").expect("send");
    assert_eq!(read_reply(&mut r)["ok"], true);

    // Oversized: an error, then the connection is closed.
    let big = vec![b'x'; 100 * 1024];
    let _ = s.write_all(&big);
    let reply = read_reply(&mut r);
    assert!(
        reply["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("request too long"),
        "{reply}"
    );
    let mut rest = String::new();
    assert_eq!(
        r.read_line(&mut rest).unwrap_or(0),
        0,
        "closed after an oversized request"
    );

    // The slow client finishes its request and gets its answer.
    slow.write_all(b"st\"}\n").expect("send");
    assert_eq!(read_reply(&mut BufReader::new(&slow))["ok"], true);
    assert_eq!(
        m.call(json!({"op": "list"}))["ok"],
        true,
        "the monitor runs on"
    );
    let (code, err) = m.shutdown();
    assert_eq!(code, Some(0), "{err}");
}

fn used_ns(m: &Monitor, vm: &str) -> u64 {
    m.vm_stats(vm)["cpu"]["used_ns"].as_u64().unwrap_or(0)
}

#[test]
fn pause_holds_a_spinning_vm_and_resume_lets_it_run() {
    let m = Monitor::start("pause", "0600", root_admin());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(m.ctl(None, &["pause", "web"]).status.code(), Some(0));
    assert_eq!(m.vm_stats("web")["state"], "paused");
    std::thread::sleep(Duration::from_millis(200));
    let before = used_ns(&m, "web");
    std::thread::sleep(Duration::from_millis(500));
    let after = used_ns(&m, "web");
    assert!(
        after - before < 20_000_000,
        "a paused VM used {} ns",
        after - before
    );

    assert_eq!(m.ctl(None, &["resume", "web"]).status.code(), Some(0));
    assert_eq!(m.vm_stats("web")["state"], "running");
    // It runs again: 100 ms more of CPU, however loaded the machine is
    // (a deadline, not a speed).
    let resumed = std::time::Instant::now();
    while used_ns(&m, "web") - after < 100_000_000 {
        assert!(
            resumed.elapsed() < Duration::from_secs(20),
            "a resumed VM spins again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, err) = m.shutdown();
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn stop_ends_one_vm_and_the_monitor_runs_on() {
    let m = Monitor::start("stop", "0600", root_admin());
    let out = m.ctl(None, &["stop", "db"]);
    assert!(out.status.success(), "{out:?}");
    let start = Instant::now();
    while m.vm_stats("db")["state"] != "stopped: stopped through the control socket" {
        assert!(start.elapsed() < DEADLINE, "{}", m.vm_stats("db"));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(m.vm_stats("web")["state"], "running");
    let reply = m.call(json!({"op": "pause", "vm": "db"}));
    assert_eq!(reply["error"], "vm db has stopped");
    let out = m.ctl(None, &["stop", "web"]);
    assert!(out.status.success(), "{out:?}");
    let stats = m.stats.clone();
    let (code, err) = m.wait();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("web: ran"), "{err}");
    let stats: Value =
        serde_json::from_str(&std::fs::read_to_string(stats).expect("stats")).expect("JSON");
    assert_eq!(
        stats["vms"][0]["state"],
        "stopped: stopped through the control socket"
    );
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_refused() {
    let dir = scratch_dir("stale");
    let socket = dir.join("api.sock");
    // A socket file nobody listens on (its listener is gone).
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    let flags = |path: &Path| {
        vec![
            "run".to_string(),
            "--kernel".into(),
            guest_elf().into(),
            "--cmdline".into(),
            "hearth.scenario=hello".into(),
            "--api-socket".into(),
            path.to_string_lossy().into_owned(),
        ]
    };
    let args = flags(&socket);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_hearth(&args, DEADLINE);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains("removing stale control socket"),
        "{}",
        run.stderr
    );

    let _live = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let run = run_hearth(&args, DEADLINE);
    assert_eq!(run.code(), Some(1));
    assert!(
        run.stderr.contains("another process is listening on it"),
        "{}",
        run.stderr
    );
}

#[test]
fn set_memory_changes_weight_and_floor_within_the_budget() {
    let m = Monitor::start_with(
        "memory",
        "0600",
        root_admin(),
        Some(json!({"budget_mib": 40, "tick_ms": 100})),
    );
    let reply = m.call(json!({"op": "set-memory", "vm": "db", "weight": 300, "floor_mib": 16}));
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["result"], json!({"weight": 300, "floor_mib": 16}));
    // Floors together beyond the budget: refused, nothing changes.
    let reply = m.call(json!({"op": "set-memory", "vm": "web", "floor_mib": 32}));
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap_or("")
            .contains("does not fit"),
        "{reply}"
    );
    let (code, err) = m.shutdown();
    assert_eq!(code, Some(0), "{err}");
}

/// Set in the child that holds connections as an unlisted user.
const HOLD: &str = "HEARTH_API_HOLD_SOCKET";

/// In the child (this test binary re-run as another uid): opens 80
/// connections to the socket and keeps them open for a while.
#[test]
fn hold_connections_child() {
    let Some(socket) = std::env::var_os(HOLD) else {
        return;
    };
    let held: Vec<UnixStream> = (0..80)
        .filter_map(|_| UnixStream::connect(&socket).ok())
        .collect();
    println!("connected {}", held.len());
    std::thread::sleep(Duration::from_secs(3));
}

#[test]
fn unlisted_users_take_no_slot_and_one_user_cannot_take_them_all() {
    let m = Monitor::start("slots", "0666", root_admin());
    // 80 connections from a user no ACL entry names are refused at once...
    let holder = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "hold_connections_child", "--nocapture"])
        .env(HOLD, &m.socket)
        .uid(65534)
        .gid(65534)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the holder");
    std::thread::sleep(Duration::from_millis(500));
    // ...so the admin still gets in while they are open.
    assert_eq!(m.call(json!({"op": "list"}))["ok"], true);
    // One user may hold 16 connections; the 17th is told why.
    let mut mine: Vec<UnixStream> = (0..16)
        .map(|_| UnixStream::connect(&m.socket).expect("connect"))
        .collect();
    for s in &mut mine {
        s.write_all(b"{\"op\": \"list\"}\n").expect("send");
        let reply = read_reply(&mut BufReader::new(s.try_clone().expect("clone")));
        assert_eq!(reply["ok"], true, "{reply}");
    }
    let extra = UnixStream::connect(&m.socket).expect("connect");
    extra.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let reply = read_reply(&mut BufReader::new(extra));
    assert!(
        reply["error"]
            .as_str()
            .unwrap_or_default()
            .contains("too many connections from uid 0"),
        "{reply}"
    );
    // Unknown fields are refused on every request (asked on a connection
    // the monitor holds: a 17th would be refused before it is read).
    mine[0]
        .write_all(b"{\"op\": \"list\", \"extra\": 1}\n")
        .expect("send");
    let reply = read_reply(&mut BufReader::new(mine[0].try_clone().expect("clone")));
    assert_eq!(reply["ok"], false, "{reply}");
    drop(mine);
    let out = holder.wait_with_output().expect("holder");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("connected"),
        "the holder ran"
    );
    let (code, err) = m.shutdown();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("not in the access list"), "{err}");
}
