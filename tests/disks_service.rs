//! Drives in a monitor run as a service (`hearth serve`): VMs with a sync
//! and an io_uring drive created through the control socket, run, and
//! deleted, round after round, under a `host.io` budget; every file, ring,
//! eventfd and timer they held is gone with them.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(60);

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn call(socket: &std::path::Path, request: &Value) -> Value {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    writeln!(s, "{request}").expect("send");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("reply");
    let reply: Value = serde_json::from_str(&line).expect("JSON reply");
    assert_eq!(reply["ok"], true, "{request} -> {reply}");
    reply["result"].clone()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count()
}

/// The fewest open fds over a few samples (a request's connection closes
/// a moment after its reply).
fn settled_fds(pid: u32) -> usize {
    (0..10)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(30));
            open_fds(pid)
        })
        .min()
        .unwrap_or(0)
}

#[test]
fn vms_with_drives_come_and_go_and_leave_no_fd_behind() {
    let dir = scratch_dir("blk-serve");
    let socket = dir.join("api.sock");
    let host = json!({"io": {"bytes_per_s": 64 << 20}});
    let config = write_file(
        &dir,
        "host.json",
        &json!({"host": host, "vms": []}).to_string(),
    );
    let img = dir.join("disk.img");
    std::fs::write(&img, vec![0x5au8; 1 << 20]).expect("image");
    let child = Command::new(hearth())
        .args(["serve", "--config", &config, "--api-socket"])
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("hearth serve");
    let serve = Serve(child);
    let start = Instant::now();
    while UnixStream::connect(&socket).is_err() {
        assert!(start.elapsed() < DEADLINE, "no control socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut baseline = None;
    for round in 0..4 {
        let name = format!("vm{round}");
        let vm = json!({"name": name, "memory": {"size_mib": 32},
            "kernel": {"path": guest_elf(), "cmdline": "hearth.scenario=blk-read hearth.count=128"},
            "drives": [{"id": "a", "path": img, "read_only": true},
                       {"id": "b", "path": img, "read_only": true, "engine": "io_uring"}],
            "serial": {"output": "off"}});
        call(
            &socket,
            &json!({"op": "create", "vm": vm, "start": true,
                              "base_dir": dir.display().to_string()}),
        );
        // The guest reads, then resets: the VM stops by itself.
        let deadline = Instant::now() + DEADLINE;
        let stats = loop {
            let s = call(&socket, &json!({"op": "stats", "vm": name}));
            if s["state"] != "running" && s["state"] != "stopping" {
                break s;
            }
            assert!(Instant::now() < deadline, "{name} never stopped: {s}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(stats["io"]["drives"][0]["read_bytes"], 128 * 512, "{stats}");
        assert_eq!(stats["io"]["drives"][1]["read_bytes"], 0, "{stats}");
        call(&socket, &json!({"op": "delete", "vm": name}));
        let fds = settled_fds(serve.0.id());
        match baseline {
            None => baseline = Some(fds),
            Some(b) => assert_eq!(fds, b, "round {round}: open fds {b} -> {fds}"),
        }
    }
    call(&socket, &json!({"op": "shutdown"}));
}
