//! vsock end to end, Firecracker's hybrid design: the test guest's
//! virtio-vsock driver against Hearth's device, the test on the host side
//! of the VM's Unix socket (`uds_path`, `CONNECT <port>`) and of a
//! listener at `<uds_path>_<port>` for the guest's own connections.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use common::live::Live;
use common::*;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);

fn vm_config(dir: &Path, cmdline: &str, uds: &Path) -> String {
    let text = format!(
        r#"{{"name": "vm0",
            "kernel": {{"path": "{}", "cmdline": "{cmdline}"}},
            "memory": {{"size_mib": 64}},
            "serial": {{"output": "stdout", "stdin": false}},
            "vsock": {{"guest_cid": 3, "uds_path": "{}"}}}}"#,
        guest_elf(),
        uds.display()
    );
    write_file(dir, "vm.json", &text)
}

fn start(dir: &Path, cmdline: &str) -> (Live, std::path::PathBuf, String) {
    let uds = dir.join("v.sock");
    let config = vm_config(dir, cmdline, &uds);
    let stats = dir.join("stats.json").to_string_lossy().into_owned();
    let live = Live::spawn(
        &["run", "--config", &config, "--stats-file", &stats],
        DEADLINE,
    );
    (live, uds, stats)
}

fn vsock_stats(stats: &str) -> Value {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(stats).expect("stats file"))
        .expect("stats JSON");
    v["vms"][0]["vsock"].clone()
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + (i >> 12)) as u8).collect()
}

#[test]
fn a_host_process_connects_through_uds_path_and_echoes_1_mib_through_the_guest() {
    const N: usize = 1 << 20;
    let dir = scratch_dir("vsock-echo");
    let (mut g, uds, stats) = start(&dir, "hearth.scenario=vsock-echo hearth.port=5000");
    assert_eq!(g.wait_for("VSOCK-LISTEN"), "VSOCK-LISTEN cid=3 port=5000");
    let mut s = UnixStream::connect(&uds).expect("connect to uds_path");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(b"CONNECT 5000\n").expect("CONNECT");
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    let mut ok = String::new();
    reader.read_line(&mut ok).expect("the OK line");
    let host_port: u32 = ok
        .strip_prefix("OK ")
        .and_then(|p| p.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("not an OK line: {ok:?}"));
    let accept = g.wait_for("VSOCK-ACCEPT");
    assert_eq!(
        accept,
        format!("VSOCK-ACCEPT peer_cid=2 peer_port={host_port}")
    );
    let data = pattern(N);
    let writer = {
        let (mut s, data) = (s.try_clone().expect("clone"), data.clone());
        std::thread::spawn(move || {
            s.write_all(&data).expect("write 1 MiB");
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        })
    };
    let mut back = Vec::with_capacity(N);
    reader
        .read_to_end(&mut back)
        .expect("read the echo to its end");
    writer.join().expect("writer");
    assert_eq!(back.len(), N, "every byte came back");
    assert!(back == data, "and byte for byte");
    assert_eq!(
        g.wait_for("VSOCK-ECHO"),
        format!("VSOCK-ECHO bytes={N} received={N} end=shutdown violations=0 bad=0")
    );
    let (status, _, err) = g.finish(false);
    assert!(status.success(), "{err}");
    let v = vsock_stats(&stats);
    assert_eq!(v["guest_cid"], 3);
    assert_eq!(v["connections"]["from_host"], 1);
    assert_eq!(v["connections"]["refused"], 0);
    assert_eq!(v["rx"]["bytes"], N as u64);
    assert_eq!(v["tx"]["bytes"], N as u64);
    assert_eq!(v["credit_violations"], 0);
    assert!(!uds.exists(), "the socket file goes with the VM");
}

#[test]
fn the_guest_connects_out_to_a_listener_at_uds_path_and_port() {
    let dir = scratch_dir("vsock-connect");
    let listener = UnixListener::bind(dir.join("v.sock_5000")).expect("host listener");
    let (mut g, _uds, stats) = start(&dir, "hearth.scenario=vsock-connect hearth.port=5000");
    g.wait_for("VSOCK-CONNECTING");
    let (s, _) = listener.accept().expect("the guest's connection");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut line = String::new();
    BufReader::new(s.try_clone().expect("clone"))
        .read_line(&mut line)
        .expect("the guest's line");
    assert_eq!(line, "hello from hearth-guest\n");
    (&s).write_all(b"hello from the host\n").expect("reply");
    assert_eq!(
        g.wait_for("VSOCK-CONNECT "),
        "VSOCK-CONNECT reply=hello from the host"
    );
    // The guest closes; the host sees the end of the stream.
    let mut rest = Vec::new();
    (&s).read_to_end(&mut rest).expect("end of stream");
    assert!(rest.is_empty());
    let (status, _, err) = g.finish(false);
    assert!(status.success(), "{err}");
    let v = vsock_stats(&stats);
    assert_eq!(v["connections"]["from_guest"], 1);
    assert_eq!(v["connections"]["open"], 0);
}

#[test]
fn a_connect_to_a_port_nobody_listens_on_is_reset_and_counted() {
    let dir = scratch_dir("vsock-refused");
    let (mut g, _uds, stats) = start(&dir, "hearth.scenario=vsock-connect hearth.port=5001");
    assert_eq!(g.wait_for("VSOCK-CONNECT "), "VSOCK-CONNECT error=reset");
    let (status, _, err) = g.finish(false);
    assert!(status.success(), "{err}");
    assert_eq!(vsock_stats(&stats)["connections"]["refused"], 1);
}
