//! virtio-net end to end: the test guest's network driver against
//! Hearth's device on a real tap, the test at the other end of the wire
//! with an AF_PACKET socket. Every tap lives in a network namespace the
//! test creates (`common::netns::in_netns`) and vanishes with it.

mod common;

use std::path::Path;
use std::time::Duration;

use common::live::Live;
use common::netns::*;
use common::*;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);
const MAC: &str = "06:00:ac:10:00:02";
const PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x09];

/// A single-VM config: the test guest running `cmdline`, one interface on
/// tap `tap`, plus whatever `extra` JSON members say.
fn vm_config(dir: &Path, cmdline: &str, tap: &str, extra: &str) -> String {
    let text = format!(
        r#"{{"name": "vm0",
            "kernel": {{"path": "{}", "cmdline": "{cmdline}"}},
            "memory": {{"size_mib": 64}},
            "serial": {{"output": "stdout", "stdin": false}},
            "net": [{{"id": "eth0", "tap": "{tap}", "mac": "{MAC}"}}]{extra}}}"#,
        guest_elf()
    );
    write_file(dir, "vm.json", &text)
}

fn start(dir: &Path, cmdline: &str, extra: &str) -> (Live, String) {
    let config = vm_config(dir, cmdline, "tap0", extra);
    let stats = dir.join("stats.json").to_string_lossy().into_owned();
    let live = Live::spawn(
        &["run", "--config", &config, "--stats-file", &stats],
        DEADLINE,
    );
    (live, stats)
}

fn fields(line: &str) -> std::collections::HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn net_stats(stats: &str) -> Value {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(stats).expect("stats file"))
        .expect("stats JSON");
    v["vms"][0]["net"][0].clone()
}

#[test]
fn the_guest_sends_a_frame_the_test_reads_from_the_tap_byte_for_byte() {
    in_netns(|| {
        add_tap("tap0");
        let wire = PacketSocket::bind("tap0");
        let dir = scratch_dir("net-tx");
        let (mut g, stats) = start(&dir, "hearth.scenario=net-tx hearth.len=100", "");
        let info = g.wait_for("NET-INFO");
        assert_eq!(info, format!("NET-INFO mac={MAC} mtu=0"));
        let frame = wire
            .recv(Duration::from_secs(20))
            .expect("a frame on the tap");
        let want = hearth_frame([0xff; 6], mac_bytes(MAC), 0, 100);
        assert_eq!(frame, want, "byte for byte");
        let line = g.wait_for("NET-TX");
        assert_eq!(
            line,
            format!("NET-TX ok len={} fnv={:016x}", want.len(), fnv1a64(&want))
        );
        let (status, _, err) = g.finish(false);
        assert!(status.success(), "{err}");
        let s = net_stats(&stats);
        assert_eq!(s["tx"]["frames"], 1);
        assert_eq!(s["tx"]["bytes"], 114);
        assert_eq!(s["tap"], "tap0");
    });
}

#[test]
fn a_frame_written_to_the_tap_reaches_the_guest_which_prints_its_checksum() {
    in_netns(|| {
        add_tap("tap0");
        let wire = PacketSocket::bind("tap0");
        let dir = scratch_dir("net-rx");
        let (mut g, stats) = start(&dir, "hearth.scenario=net-rx hearth.count=2", "");
        g.wait_for("NET-READY");
        let mut noise = vec![0x33, 0x33, 0, 0, 0, 1];
        noise.extend_from_slice(&PEER);
        noise.extend_from_slice(&[0x86, 0xdd]);
        noise.extend_from_slice(&[0u8; 40]);
        let frames: Vec<Vec<u8>> = [50usize, 1500]
            .iter()
            .map(|&n| {
                let mut f = mac_bytes(MAC).to_vec();
                f.extend_from_slice(&PEER);
                f.extend_from_slice(&[0x88, 0xb5]);
                f.extend((0..n).map(|i| i as u8));
                f
            })
            .collect();
        wire.send(&noise);
        for f in &frames {
            wire.send(f);
        }
        g.wait_for("NET-RX-DONE");
        let lines: Vec<String> = g
            .output()
            .lines()
            .filter_map(|l| l.find("NET-RX len=").map(|i| l[i..].to_string()))
            .collect();
        let want: Vec<String> = frames
            .iter()
            .map(|f| format!("NET-RX len={} fnv={:016x}", f.len(), fnv1a64(f)))
            .collect();
        assert_eq!(lines, want);
        assert_eq!(g.wait_for("NET-RX-DONE"), "NET-RX-DONE frames=2 ignored=1");
        let (status, _, err) = g.finish(false);
        assert!(status.success(), "{err}");
        let s = net_stats(&stats);
        assert_eq!(s["rx"]["frames"], 3);
        assert_eq!(s["rx"]["bytes"], 54 + 64 + 1514);
    });
}

#[test]
fn an_arp_request_for_the_guests_address_gets_its_reply() {
    in_netns(|| {
        add_tap("tap0");
        let wire = PacketSocket::bind("tap0");
        let dir = scratch_dir("net-arp");
        let (mut g, _) = start(
            &dir,
            "hearth.scenario=net-arp hearth.ip=10.0.0.2 hearth.count=2",
            "",
        );
        g.wait_for("NET-READY");
        let mut req = vec![0xff; 6];
        req.extend_from_slice(&PEER);
        req.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        req.extend_from_slice(&PEER);
        req.extend_from_slice(&[10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
        let mut other = req.clone();
        other[41] = 3; // for 10.0.0.3: not the guest's
        wire.send(&req);
        wire.send(&other);
        wire.send(&req);
        let mac = mac_bytes(MAC);
        let mut want = PEER.to_vec();
        want.extend_from_slice(&mac);
        want.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 2]);
        want.extend_from_slice(&mac);
        want.extend_from_slice(&[10, 0, 0, 2]);
        want.extend_from_slice(&PEER);
        want.extend_from_slice(&[10, 0, 0, 1]);
        want.resize(60, 0);
        for _ in 0..2 {
            let reply = wire.recv(Duration::from_secs(20)).expect("an ARP reply");
            assert_eq!(reply, want);
        }
        assert_eq!(g.wait_for("NET-ARP"), "NET-ARP replied=2 ignored=1");
        let (status, _, err) = g.finish(false);
        assert!(status.success(), "{err}");
    });
}

#[test]
fn a_flood_each_way_arrives_complete_and_in_order_with_counters_that_match() {
    const N: u32 = 500;
    const LEN: usize = 64;
    in_netns(|| {
        add_tap("tap0");
        let wire = std::sync::Arc::new(PacketSocket::bind("tap0"));
        let dir = scratch_dir("net-flood");
        let cmdline = format!("hearth.scenario=net-flood hearth.count={N} hearth.len={LEN}");
        let (mut g, stats) = start(&dir, &cmdline, "");
        g.wait_for("NET-READY");
        let reader = {
            let wire = wire.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while got.len() < N as usize {
                    match wire.recv(Duration::from_secs(30)) {
                        Some(f) => got.push(f),
                        None => break,
                    }
                }
                got
            })
        };
        for k in 0..N {
            wire.send(&hearth_frame([0xff; 6], PEER, k, LEN));
        }
        let got = reader.join().expect("reader");
        let line = g.wait_for("NET-FLOOD");
        assert_eq!(
            line,
            format!("NET-FLOOD tx={N} rx={N} in_order=1 bad=0 ignored=0")
        );
        assert_eq!(got.len(), N as usize, "every frame the guest sent");
        for (k, f) in got.iter().enumerate() {
            assert_eq!(
                f,
                &hearth_frame([0xff; 6], mac_bytes(MAC), k as u32, LEN),
                "frame {k} in order"
            );
        }
        let (status, _, err) = g.finish(false);
        assert!(status.success(), "{err}");
        let s = net_stats(&stats);
        let frame = 14 + LEN as u64;
        assert_eq!(s["rx"]["frames"], u64::from(N));
        assert_eq!(s["tx"]["frames"], u64::from(N));
        assert_eq!(s["rx"]["bytes"], u64::from(N) * frame);
        assert_eq!(s["tx"]["bytes"], u64::from(N) * frame);
        for dir in ["rx", "tx"] {
            for (cause, n) in s[dir]["dropped"].as_object().expect("drops") {
                assert_eq!(n, 0, "{dir} dropped {cause}");
            }
        }
    });
}

/// A VM of a monitor file: the test guest on its own tap.
fn vm_member(name: &str, cmdline: &str, tap: &str, mac: &str) -> String {
    format!(
        r#"{{"name": "{name}",
            "kernel": {{"path": "{}", "cmdline": "{cmdline}"}},
            "memory": {{"size_mib": 64}},
            "serial": {{"output": "stdout", "stdin": false}},
            "net": [{{"id": "eth0", "tap": "{tap}", "mac": "{mac}"}}]}}"#,
        guest_elf()
    )
}

/// Checks the hostile VM's 18 lines: each a NEEDS_RESET, or (a writable
/// buffer on the transmit queue) a dropped frame; returns the drops.
fn check_hostile_lines(output: &str) -> usize {
    let lines: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("bad| hearth-guest: HOSTILE round="))
        .collect();
    assert_eq!(lines.len(), 18, "{output}");
    let mut dropped = 0;
    for line in &lines {
        let f = fields(line);
        assert!(!f.contains_key("setup"), "{line}");
        match (f["needs_reset"].as_str(), f["used"].as_str()) {
            ("1", "0") => {}
            ("0", "1") if f["queue"] == "1" && f["kind"] == "overlap" => dropped += 1,
            _ => panic!("neither a reset nor a dropped frame: {line}"),
        }
    }
    dropped
}

#[test]
fn malformed_chains_on_either_queue_need_a_reset_or_drop_a_frame_and_other_vms_run_on() {
    in_netns(|| {
        add_tap("tap0");
        add_tap("tap1");
        let bad_wire = std::sync::Arc::new(PacketSocket::bind("tap0"));
        let good_wire = PacketSocket::bind("tap1");
        let dir = scratch_dir("net-hostile");
        let text = format!(
            r#"{{"vms": [{}, {}]}}"#,
            vm_member(
                "bad",
                "hearth.scenario=hostile hearth.rounds=1",
                "tap0",
                MAC
            ),
            vm_member(
                "good",
                "hearth.scenario=net-rx",
                "tap1",
                "06:00:ac:10:00:03"
            ),
        );
        let config = write_file(&dir, "monitor.json", &text);
        let stats = dir.join("stats.json").to_string_lossy().into_owned();
        let mut g = Live::spawn(
            &["run", "--config", &config, "--stats-file", &stats],
            DEADLINE,
        );
        g.wait_for("good| hearth-guest: NET-READY");
        // Frames keep arriving on the hostile VM's tap, so that its receive
        // chains are looked at too.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let feeder = {
            let (wire, stop) = (bad_wire.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut k = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    wire.send(&hearth_frame(mac_bytes(MAC), PEER, k, 64));
                    k += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        let done = g.wait_for("HOSTILE-DONE");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        feeder.join().expect("feeder");
        // Two queues, nine kinds.
        assert_eq!(done, "HOSTILE-DONE rounds=1 lines=18");
        let dropped = check_hostile_lines(&g.output());
        assert_eq!(dropped, 1);
        // The other VM was never disturbed.
        let frame = hearth_frame(mac_bytes("06:00:ac:10:00:03"), PEER, 7, 100);
        good_wire.send(&frame);
        let line = g.wait_for("good| hearth-guest: NET-RX len=");
        assert_eq!(
            line,
            format!(
                "good| hearth-guest: NET-RX len=114 fnv={:016x}",
                fnv1a64(&frame)
            )
        );
        let (status, _, err) = g.finish(false);
        assert!(status.success(), "{err}");
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(&stats).expect("stats")).expect("JSON");
        let bad = &v["vms"][0]["net"][0];
        assert_eq!(bad["failures"], 17);
        assert_eq!(bad["tx"]["dropped"]["malformed"], 1);
    });
}

#[test]
fn a_firecracker_config_with_an_interface_and_a_vsock_runs_unchanged() {
    in_netns(|| {
        add_tap("tap0");
        let wire = PacketSocket::bind("tap0");
        let dir = scratch_dir("net-fc");
        let config = serde_json::json!({
            "boot-source": {
                "kernel_image_path": guest_elf(),
                "boot_args": "hearth.scenario=net-tx hearth.len=64"
            },
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
            "network-interfaces": [{
                "iface_id": "eth0",
                "host_dev_name": "tap0",
                "guest_mac": "06:00:AC:10:00:02",
                "rx_rate_limiter": {"bandwidth": {"size": 1000000, "refill_time": 100}},
                "tx_rate_limiter": {"ops": {"size": 100, "refill_time": 1000}}
            }],
            "vsock": {"vsock_id": "vsock0", "guest_cid": 3, "uds_path": "v.sock"}
        });
        let path = write_file(&dir, "vm_config.json", &config.to_string());
        let stats = dir.join("stats.json").to_string_lossy().into_owned();
        let mut g = Live::spawn(
            &["run", "--config", &path, "--stats-file", &stats],
            DEADLINE,
        );
        let frame = wire
            .recv(Duration::from_secs(20))
            .expect("a frame on the tap");
        assert_eq!(frame, hearth_frame([0xff; 6], mac_bytes(MAC), 0, 64));
        g.wait_for("NET-TX ok");
        let (status, _, err) = g.finish(false);
        assert!(status.success(), "{err}");
        assert!(
            !dir.join("v.sock").exists(),
            "the vsock socket went with the VM"
        );
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(&stats).expect("stats")).expect("JSON");
        let vm = &v["vms"][0];
        assert_eq!(vm["net"][0]["id"], "eth0");
        assert_eq!(vm["net"][0]["mac"], MAC);
        assert_eq!(vm["net"][0]["tx"]["frames"], 1);
        assert_eq!(vm["vsock"]["guest_cid"], 3);
    });
}

#[test]
fn hearth_ctl_set_net_changes_an_interfaces_limiters_at_run_time() {
    in_netns(|| {
        add_tap("tap0");
        let wire = PacketSocket::bind("tap0");
        let dir = scratch_dir("net-ctl");
        let sock = dir.join("api.sock").to_string_lossy().into_owned();
        let text = format!(
            r#"{{"host": {{"api": {{"socket": "{sock}"}}}}, "vms": [{}]}}"#,
            vm_member("vm0", "hearth.scenario=net-rx", "tap0", MAC)
        );
        let config = write_file(&dir, "monitor.json", &text);
        let mut g = Live::spawn(&["run", "--config", &config], DEADLINE);
        g.wait_for("NET-READY");
        let ctl = |args: &[&str]| {
            let mut all = vec!["ctl", sock.as_str()];
            all.extend_from_slice(args);
            let run = run_hearth(&all, Duration::from_secs(10));
            let reply: Value = serde_json::from_str(&run.stdout).expect("a JSON reply");
            (run.code(), reply)
        };
        let (code, reply) = ctl(&[
            "set-net",
            "vm0",
            "eth0",
            "--rx",
            r#"{"bandwidth": {"size": 100000, "refill_time": 100}}"#,
            "--tx",
            r#"{"ops": {"size": 10, "one_time_burst": 5, "refill_time": 1000}}"#,
        ]);
        assert_eq!(code, Some(0), "{reply}");
        let r = &reply["result"];
        assert_eq!(
            r["rx_rate_limiter"]["bandwidth"],
            serde_json::json!({"size": 100000, "one_time_burst": 0, "refill_time": 100})
        );
        assert_eq!(r["tx_rate_limiter"]["ops"]["one_time_burst"], 5);
        // null removes a bucket; the others are kept.
        let (_, reply) = ctl(&["set-net", "vm0", "eth0", "--tx", r#"{"ops": null}"#]);
        assert_eq!(reply["result"]["tx_rate_limiter"]["ops"], Value::Null);
        assert_eq!(
            reply["result"]["rx_rate_limiter"]["bandwidth"]["size"],
            100000
        );
        let (code, reply) = ctl(&["set-net", "vm0", "eth9", "--rx", "{}"]);
        assert_eq!(code, Some(1));
        assert_eq!(
            reply["error"],
            "vm vm0 has no interface \"eth9\" (its interfaces: [\"eth0\"])"
        );
        // The interface still works under its new limits.
        wire.send(&hearth_frame(mac_bytes(MAC), PEER, 1, 64));
        g.wait_for("NET-RX-DONE frames=1");
        let (status, _, err) = g.finish(false);
        assert!(status.success(), "{err}");
    });
}

/// Two VMs sending as fast as they can under one `host.net` budget with
/// `net.weight` 100:300 move bytes 1:3 (measured from the monitor's own
/// per-VM share counters over the same window).
#[test]
fn two_vms_share_host_net_by_weight() {
    in_netns(|| {
        add_tap("tapa");
        add_tap("tapb");
        let dir = scratch_dir("net-share");
        let bench = "hearth.scenario=net-bench hearth.dir=tx hearth.count=1000000 hearth.len=1500";
        let weighted = |name: &str, tap: &str, mac: &str, weight: u32| {
            let mut vm: Value =
                serde_json::from_str(&vm_member(name, bench, tap, mac)).expect("a VM definition");
            vm["net"] = serde_json::json!({"weight": weight, "interfaces": vm["net"]});
            vm
        };
        let config = serde_json::json!({
            "host": {"net": {"bytes_per_s": 2_000_000, "tick_ms": 10}},
            "vms": [weighted("light", "tapa", "06:00:00:00:00:0a", 100),
                    weighted("heavy", "tapb", "06:00:00:00:00:0b", 300)]
        });
        let path = write_file(&dir, "monitor.json", &config.to_string());
        let stats = dir.join("stats.json").to_string_lossy().into_owned();
        let mut g = Live::spawn(
            &["run", "--config", &path, "--stats-file", &stats],
            Duration::from_secs(60),
        );
        g.wait_for("light| hearth-guest: NET-BENCH-START");
        g.wait_for("heavy| hearth-guest: NET-BENCH-START");
        let bytes = |name: &str| -> f64 {
            let v: Value =
                serde_json::from_str(&std::fs::read_to_string(&stats).unwrap_or_default())
                    .unwrap_or_default();
            v["vms"]
                .as_array()
                .and_then(|vms| vms.iter().find(|v| v["name"] == name))
                .and_then(|v| v["net_share"]["bytes"].as_f64())
                .unwrap_or(0.0)
        };
        std::thread::sleep(Duration::from_secs(2));
        let (l0, h0) = (bytes("light"), bytes("heavy"));
        std::thread::sleep(Duration::from_secs(4));
        let (l1, h1) = (bytes("light"), bytes("heavy"));
        let (status, _, err) = g.finish(true);
        assert!(!err.contains("panicked"), "{err}");
        let _ = status;
        let (light, heavy) = (l1 - l0, h1 - h0);
        assert!(light > 0.0, "the light VM sent nothing: {err}");
        let ratio = heavy / light;
        assert!(
            (2.4..=3.6).contains(&ratio),
            "heavy:light = {heavy}:{light} = {ratio:.2} (wanted 3 within 20 %)"
        );
        // Together they stay within the budget (4 s at 2 MB/s, plus a tick's slack).
        assert!(
            light + heavy <= 4.0 * 2_000_000.0 * 1.1,
            "{light} + {heavy} bytes in 4 s over a budget of 2 MB/s"
        );
    });
}
