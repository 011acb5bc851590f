//! Disks end to end: the test guest's virtio-blk driver against Hearth's
//! virtio-blk on real image files, on both engines; bad requests and
//! malformed chains; a drive's token bucket and `host.io` shared by
//! `io.weight`, measured from the guests' own progress lines; run-time
//! changes through `hearth ctl`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const SECTORS: u64 = 2048;

/// The tests here run one at a time: the rate tests measure guests that
/// need CPU to issue their requests, on a host of two cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
const PATTERN_K: u64 = 0x9E37_79B9_7F4A_7C15;

fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// An image of `sectors` sectors of a known, position-dependent pattern.
fn image(dir: &Path, name: &str, sectors: u64) -> PathBuf {
    let path = dir.join(name);
    let bytes: Vec<u8> = (0..sectors * 512)
        .map(|i| (i.wrapping_mul(7) + 3 + (i >> 9)) as u8)
        .collect();
    std::fs::write(&path, bytes).expect("write image");
    path
}

/// The blk-write pattern of sector `s` (resources/guest/README.md).
fn pattern_sector(s: u64, seed: u64) -> Vec<u8> {
    (0..512u64)
        .step_by(8)
        .flat_map(|o| ((s * 512 + o).wrapping_mul(PATTERN_K) ^ seed).to_le_bytes())
        .collect()
}

fn vm(name: &str, cmdline: &str, drives: Value) -> Value {
    json!({"name": name, "kernel": {"path": guest_elf(), "cmdline": cmdline},
           "memory": {"size_mib": 32}, "drives": drives,
           "serial": {"output": "stdout", "stdin": false}})
}

/// Runs a monitor of `vms` to its end (every guest resets after its
/// scenario); the lines of VM `name`, without the prefix.
fn run_all(dir: &Path, vms: Vec<Value>, host: Value) -> (Run, impl Fn(&str) -> Vec<String>) {
    let config = json!({"host": host, "vms": vms});
    let path = write_file(dir, "monitor.json", &config.to_string());
    let run = run_hearth(&["run", "--config", &path], Duration::from_secs(60));
    run.assert_no_panic();
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    let out = run.stdout.clone();
    let lines = move |name: &str| {
        let prefix = format!("{name}| hearth-guest: ");
        out.lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(str::to_string)
            .collect()
    };
    (run, lines)
}

/// The value of `key=` in `line`.
fn field(line: &str, key: &str) -> String {
    let pat = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&pat))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .to_string()
}

/// The first line of `lines` starting with `tag`.
fn line<'a>(lines: &'a [String], tag: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.starts_with(tag))
        .unwrap_or_else(|| panic!("no {tag} line in {lines:?}"))
}

#[test]
fn guests_read_their_disks_and_the_checksums_match_the_images() {
    let _serial = serial();
    let dir = scratch_dir("blk-read");
    let img = image(&dir, "a.img", SECTORS);
    let second = image(&dir, "b.img", 64);
    let mut bytes = std::fs::read(&second).expect("second image");
    bytes[..1200].copy_from_slice(&b"second drive".repeat(100));
    std::fs::write(&second, bytes).expect("second image");
    let want = std::fs::read(&img).expect("image");
    let drives = |engine: &str| {
        json!([{"id": "HEARTH-1", "path": img, "engine": engine, "read_only": true},
               {"id": "two", "path": second, "engine": engine, "read_only": true}])
    };
    let vms = vec![
        vm("sync", "hearth.scenario=blk-read", drives("sync")),
        vm("uring", "hearth.scenario=blk-read", drives("io_uring")),
        vm(
            "range",
            "hearth.scenario=blk-read hearth.start=3 hearth.count=700 hearth.bs=4096",
            drives("io_uring"),
        ),
        vm(
            "two",
            "hearth.scenario=blk-read hearth.dev=1 hearth.count=8",
            drives("sync"),
        ),
        vm("info", "hearth.scenario=blk-info", drives("sync")),
    ];
    let (_, lines) = run_all(&dir, vms, json!({}));
    let whole = format!("{:016x}", fnv1a64(&want));
    for name in ["sync", "uring"] {
        let l = lines(name);
        let read = line(&l, "BLK-READ");
        assert_eq!(field(read, "sectors"), SECTORS.to_string(), "{name}");
        assert_eq!(field(read, "fnv"), whole, "{name}: the image's checksum");
    }
    let range = lines("range");
    let part = format!("{:016x}", fnv1a64(&want[3 * 512..703 * 512]));
    assert_eq!(field(line(&range, "BLK-READ"), "fnv"), part);
    let two = lines("two");
    let bytes = std::fs::read(&second).expect("second");
    let want_two = format!("{:016x}", fnv1a64(&bytes[..8 * 512]));
    assert_eq!(
        field(line(&two, "BLK-READ"), "fnv"),
        want_two,
        "dev=1 is the second drive"
    );
    let info = lines("info");
    assert_eq!(
        line(&info, "BLK-INFO"),
        format!("BLK-INFO dev=0 capacity={SECTORS} ro=1 blk_size=512 seg_max=254 flush=1")
    );
    assert_eq!(line(&info, "BLK-ID"), "BLK-ID dev=0 serial=HEARTH-1");
}

#[test]
fn a_guest_write_is_in_the_file_after_the_vm_exits() {
    let _serial = serial();
    let dir = scratch_dir("blk-write");
    let (a, b) = (image(&dir, "a.img", SECTORS), image(&dir, "b.img", SECTORS));
    let before = std::fs::read(&a).expect("image");
    let cmdline = "hearth.scenario=blk-write hearth.start=5 hearth.count=300 hearth.seed=0x1234";
    let vms = vec![
        vm(
            "sync",
            cmdline,
            json!([{"id": "d", "path": a, "cache": "writeback"}]),
        ),
        vm(
            "uring",
            cmdline,
            json!([{"id": "d", "path": b, "cache": "writeback", "engine": "io_uring"}]),
        ),
    ];
    let (_, lines) = run_all(&dir, vms, json!({}));
    let want: Vec<u8> = (5..305).flat_map(|s| pattern_sector(s, 0x1234)).collect();
    for (name, path) in [("sync", &a), ("uring", &b)] {
        let l = lines(name);
        assert_eq!(
            line(&l, "BLK-WRITE"),
            "BLK-WRITE dev=0 start=5 sectors=300 seed=0x1234 status=ok flush=ok",
            "{name}"
        );
        let verify = line(&l, "BLK-VERIFY");
        assert_eq!(field(verify, "bad"), "0", "{name}");
        assert_eq!(field(verify, "fnv"), format!("{:016x}", fnv1a64(&want)));
        let after = std::fs::read(path).expect("image");
        assert!(
            after[5 * 512..305 * 512] == want[..],
            "{name}: the pattern is in the file"
        );
        assert_eq!(
            after[..5 * 512],
            before[..5 * 512],
            "{name}: before untouched"
        );
        assert_eq!(
            after[305 * 512..],
            before[305 * 512..],
            "{name}: after untouched"
        );
    }
}

#[test]
fn read_only_and_out_of_range_requests_get_ioerr() {
    let _serial = serial();
    let dir = scratch_dir("blk-err");
    let img = image(&dir, "a.img", SECTORS);
    let before = std::fs::read(&img).expect("image");
    let ro = json!([{"id": "d", "path": img, "read_only": true}]);
    let cases = [
        (
            "rowrite",
            "hearth.op=write",
            "BLK-STATUS op=write status=1 start=0 sectors=1",
        ),
        (
            "pastend",
            "",
            "BLK-STATUS op=read status=1 start=2048 sectors=1",
        ),
        (
            "straddle",
            "hearth.start=2047 hearth.count=2",
            "BLK-STATUS op=read status=1 start=2047 sectors=2",
        ),
        (
            "unknown",
            "hearth.op=unknown",
            "BLK-STATUS op=unknown status=2 start=0 sectors=0",
        ),
        (
            "flush",
            "hearth.op=flush",
            "BLK-STATUS op=flush status=0 start=0 sectors=0",
        ),
    ];
    let vms = cases
        .iter()
        .map(|(name, args, _)| vm(name, &format!("hearth.scenario=blk-err {args}"), ro.clone()))
        .collect();
    let (_, lines) = run_all(&dir, vms, json!({}));
    for (name, _, want) in cases {
        assert_eq!(line(&lines(name), "BLK-STATUS"), want, "{name}");
    }
    assert_eq!(
        std::fs::read(&img).expect("image"),
        before,
        "nothing written"
    );
}

#[test]
fn malformed_chains_need_reset_while_a_neighbour_runs_on() {
    let _serial = serial();
    let dir = scratch_dir("blk-bad");
    let img = image(&dir, "a.img", SECTORS);
    // Hearth refuses every malformed chain but one: without a status
    // descriptor, the last data byte is the status (IOERR: 511 bytes of
    // data are not whole sectors).
    let kinds = [
        ("hdr-short", "1"),
        ("no-status", "0"),
        ("status-ro", "1"),
        ("data-oob", "1"),
        ("loop", "1"),
        ("indirect", "1"),
        ("huge", "1"),
    ];
    let drive = json!([{"id": "d", "path": img, "read_only": true}]);
    let mut vms: Vec<Value> = kinds
        .iter()
        .map(|(k, _)| {
            let cmd = format!("hearth.scenario=blk-bad hearth.kind={k}");
            vm(k, &cmd, drive.clone())
        })
        .collect();
    let bench = "hearth.scenario=blk-bench hearth.mode=rand hearth.qd=8 hearth.ops=20000";
    vms.push(vm("neighbour", bench, drive.clone()));
    let (run, lines) = run_all(&dir, vms, json!({}));
    for (kind, needs_reset) in kinds {
        let l = lines(kind);
        let bad = line(&l, "BLK-BAD");
        assert_eq!(field(bad, "needs_reset"), needs_reset, "{kind}: {bad}");
        if needs_reset == "1" {
            assert_eq!(field(bad, "used"), "0", "{kind}: nothing used");
        }
        assert_eq!(line(&l, "BLK-RECOVER"), "BLK-RECOVER status=ok", "{kind}");
    }
    let n = lines("neighbour");
    let end = line(&n, "BLK-BENCH-END");
    assert_eq!(end, "BLK-BENCH-END ops=20000 bytes=81920000 errors=0");
    assert!(run.stderr.contains("needs a reset"), "{}", run.stderr);
}

/// A `hearth run` in progress; its serial lines timestamped as they come.
struct Live {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    socket: PathBuf,
    /// One VM: its lines carry no name.
    single: bool,
}

impl Live {
    fn spawn(dir: &Path, vms: Vec<Value>, host: Value) -> Live {
        let socket = dir.join("api.sock");
        let mut host = host;
        host["api"] = json!({"socket": socket, "acl": [{"uid": my_uid(), "grant": "admin"}]});
        let single = vms.len() == 1;
        let config = write_file(
            dir,
            "monitor.json",
            &json!({"host": host, "vms": vms}).to_string(),
        );
        let mut child = Command::new(hearth())
            .args(["run", "--config", &config])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start hearth");
        let out = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push((Instant::now(), l));
            }
        });
        Live {
            child,
            lines,
            socket,
            single,
        }
    }

    /// The latest progress line of VM `name` (waiting up to 30 s for a
    /// first one at `min_mib` or more): when it came and its MiB.
    fn latest(&mut self, name: &str, min_mib: u64) -> (Instant, u64) {
        let prefix = match self.single {
            true => "hearth-guest: BLK-PROGRESS mib=".to_string(),
            false => format!("{name}| hearth-guest: BLK-PROGRESS mib="),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = self
                .lines
                .lock()
                .expect("lines")
                .iter()
                .rev()
                .find_map(|(t, l)| {
                    let m: u64 = l.strip_prefix(&prefix)?.parse().ok()?;
                    Some((*t, m))
                });
            if let Some(f) = found.filter(|f| f.1 >= min_mib) {
                return f;
            }
            let alive = self.child.try_wait().expect("wait").is_none();
            if Instant::now() > deadline || !alive {
                let all = self.lines.lock().expect("lines");
                let all: Vec<&str> = all.iter().map(|x| x.1.as_str()).collect();
                panic!("{name} never reached {min_mib} MiB:\n{}", all.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn ctl(&self, args: &[&str]) -> Value {
        let out = Command::new(hearth())
            .arg("ctl")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("hearth ctl");
        let reply: Value = serde_json::from_slice(&out.stdout).expect("JSON reply");
        assert_eq!(reply["ok"], true, "{args:?}: {reply}");
        reply["result"].clone()
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn my_uid() -> u32 {
    // SAFETY: getuid has no arguments and cannot fail.
    unsafe { libc::getuid() }
}

/// MiB/s of the VMs `names` over the next `secs` seconds, each measured
/// between its own progress lines.
fn rates(live: &mut Live, names: &[&str], secs: u64) -> Vec<f64> {
    let first: Vec<_> = names.iter().map(|n| live.latest(n, 1)).collect();
    std::thread::sleep(Duration::from_secs(secs));
    names
        .iter()
        .zip(first)
        .map(|(n, (t0, m0))| {
            let (t1, m1) = live.latest(n, m0 + 1);
            (m1 - m0) as f64 / (t1 - t0).as_secs_f64()
        })
        .collect()
}

#[test]
fn a_token_bucket_holds_a_vm_to_its_rate_and_ctl_changes_it() {
    let _serial = serial();
    let dir = scratch_dir("blk-bucket");
    let img = image(&dir, "a.img", 16384);
    // 10 MiB/s: a bucket of 1 MiB refilled in 100 ms.
    let limiter = json!({"bandwidth": {"size": 1 << 20, "refill_time": 100}});
    let drive = json!([{"id": "d", "path": img, "rate_limiter": limiter}]);
    let cmd = "hearth.scenario=blk-loop hearth.every_mib=1 hearth.bs=262144";
    let mut live = Live::spawn(&dir, vec![vm("a", cmd, drive)], json!({}));
    live.latest("a", 2);
    let r = rates(&mut live, &["a"], 3)[0];
    eprintln!("10 MiB/s bucket: {r:.2} MiB/s");
    assert!(
        (r - 10.0).abs() < 1.0,
        "{r:.2} MiB/s under a 10 MiB/s bucket"
    );
    let stats = live.ctl(&["stats", "a"]);
    let d = &stats["io"]["drives"][0];
    assert_eq!(d["id"], "d");
    assert!(d["read_bytes"].as_u64().expect("bytes") >= 20 << 20, "{d}");
    assert!(
        d["rate_limiter"]["throttled_ns"].as_u64().expect("ns") > 1_000_000_000,
        "{d}"
    );
    // Firecracker's PATCH: 20 MiB/s from now on.
    live.ctl(&["set-drive", "a", "d", "--bandwidth", "2097152:100"]);
    std::thread::sleep(Duration::from_millis(300));
    let r = rates(&mut live, &["a"], 3)[0];
    eprintln!("after set-drive to 20 MiB/s: {r:.2} MiB/s");
    assert!(
        (r - 20.0).abs() < 2.0,
        "{r:.2} MiB/s after set-drive to 20 MiB/s"
    );
}

#[test]
fn two_vms_share_host_io_by_weight_and_ctl_changes_the_weights() {
    let _serial = serial();
    let dir = scratch_dir("blk-share");
    let (a, b) = (image(&dir, "a.img", 16384), image(&dir, "b.img", 16384));
    let cmd = "hearth.scenario=blk-loop hearth.every_mib=1 hearth.bs=262144";
    let mut va = vm("a", cmd, json!([{"id": "d", "path": a}]));
    let mut vb = vm(
        "b",
        cmd,
        json!([{"id": "d", "path": b, "engine": "io_uring"}]),
    );
    va["io"] = json!({"weight": 100});
    vb["io"] = json!({"weight": 300});
    // 16 MiB/s, well below what either guest can do even on a busy host
    // (each needs CPU to issue its requests): 4 and 12 MiB/s by weight.
    let host = json!({"io": {"bytes_per_s": 16 << 20}});
    let mut live = Live::spawn(&dir, vec![va, vb], host);
    live.latest("a", 1);
    let r = rates(&mut live, &["a", "b"], 5);
    let ratio = r[1] / r[0];
    eprintln!(
        "host.io 16 MiB/s, weights 100:300: a {:.2} MiB/s, b {:.2} MiB/s",
        r[0], r[1]
    );
    assert!(
        (ratio - 3.0).abs() < 0.3,
        "a {:.2} MiB/s, b {:.2} MiB/s: ratio {ratio:.2}",
        r[0],
        r[1]
    );
    assert!(
        (r[0] + r[1] - 16.0).abs() < 1.6,
        "together {:.2} of 16 MiB/s",
        r[0] + r[1]
    );
    let stats = live.ctl(&["stats", "b"]);
    assert_eq!(stats["io"]["weight"], 300);
    assert!(
        stats["io"]["share"]["throttled_ns"].as_u64().expect("ns") > 0,
        "{stats}"
    );
    // Equal weights from now on: what each took from its share, as the
    // monitor counts it, over 4 s.
    live.ctl(&["set-io", "a", "300"]);
    std::thread::sleep(Duration::from_millis(300));
    let taken = |live: &Live| {
        let s = live.ctl(&["stats"]);
        ["a", "b"].map(|n| {
            let vm = s["vms"]
                .as_array()
                .and_then(|v| v.iter().find(|v| v["name"] == n));
            vm.and_then(|v| v["io"]["share"]["bytes"].as_u64())
                .expect("share bytes")
        })
    };
    let before = taken(&live);
    std::thread::sleep(Duration::from_secs(4));
    let after = taken(&live);
    let (da, db) = (after[0] - before[0], after[1] - before[1]);
    eprintln!("after set-io 300:300, 4 s: a {da} bytes, b {db} bytes");
    let ratio = db as f64 / da as f64;
    // The change took effect (the ratio went from 3 to about 1); a wider
    // margin than the 1:3 check's, as the window is shorter.
    assert!(
        (0.75..1.33).contains(&ratio),
        "a {da} bytes, b {db} bytes at 300:300"
    );
}

#[test]
fn a_host_block_device_is_a_drive() {
    let _serial = serial();
    let dir = scratch_dir("blk-loopdev");
    let img = image(&dir, "a.img", SECTORS);
    let want = std::fs::read(&img).expect("image");
    let out = Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&img)
        .output()
        .expect("losetup (util-linux)");
    assert!(out.status.success(), "losetup: {out:?}");
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let _detach = Detach(dev.clone());
    let vms = vec![
        vm(
            "dev",
            "hearth.scenario=blk-read hearth.count=256",
            json!([{"id": "d", "path": dev, "read_only": true}]),
        ),
        vm(
            "info",
            "hearth.scenario=blk-info",
            json!([{"id": "d", "path": dev, "read_only": true}]),
        ),
    ];
    let (_, lines) = run_all(&dir, vms, json!({}));
    let read = lines("dev");
    let fnv = format!("{:016x}", fnv1a64(&want[..256 * 512]));
    assert_eq!(field(line(&read, "BLK-READ"), "fnv"), fnv, "{dev}");
    let info = lines("info");
    assert_eq!(
        field(line(&info, "BLK-INFO"), "capacity"),
        SECTORS.to_string()
    );
}
