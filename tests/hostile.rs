//! A hostile guest: malformed chains of every kind (oversized, overlapping,
//! looping, indirect without negotiation, longer than the queue, outside
//! RAM, in the MMIO gap, a wild avail index, a head beyond the table) on
//! every queue of every virtio device it has, beside a neighbour doing a
//! known amount of work. The monitor stays up with bounded memory, the
//! neighbour finishes, the hostile VM's devices need a reset each time.

mod common;

use std::io::{BufRead, BufReader};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const DEADLINE: Duration = Duration::from_secs(120);

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn a_hostile_guest_gets_needs_reset_and_hurts_neither_the_monitor_nor_its_neighbour() {
    let dir = scratch_dir("hostile");
    let vm = |name: &str, cmdline: &str, memory: &str| {
        format!(
            r#"{{"name": "{name}", "kernel": {{"path": "{}", "cmdline": "{cmdline}"}},
                "memory": {memory}, "serial": {{"output": "stdout", "stdin": false}}}}"#,
            guest_elf()
        )
    };
    let config = write_file(
        &dir,
        "monitor.json",
        &format!(
            r#"{{"host": {{}}, "vms": [{}, {}]}}"#,
            vm(
                "bad",
                "hearth.scenario=hostile hearth.rounds=3 hearth.wait_ms=100",
                r#"{"size_mib": 256, "balloon": true}"#
            ),
            vm(
                "good",
                "hearth.scenario=spin hearth.spin_chunk=100000 hearth.spin_chunks=20",
                r#"{"size_mib": 64}"#
            ),
        ),
    );
    let (status, out, err, baseline, peak) = run_watching_rss(&config);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(status.code(), Some(0), "{out}\n{err}");
    assert!(out.contains("good| hearth-guest: SPIN DONE"), "{out}");
    let attacks: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("bad| hearth-guest: HOSTILE round=") && l.contains(" kind="))
        .collect();
    // 3 rounds x 9 kinds x the balloon's 4 queues, each refused.
    assert_eq!(attacks.len(), 3 * 9 * 4, "{out}");
    for a in &attacks {
        assert!(a.contains("needs_reset=1"), "{a}");
    }
    assert!(
        out.contains("bad| hearth-guest: HOSTILE-DONE rounds=3"),
        "{out}"
    );
    assert!(
        peak < baseline + 8 * 1024,
        "the monitor's RSS grew from {baseline} KiB to {peak} KiB under attack"
    );
}

/// Runs the monitor file to its end, sampling the monitor's RSS every
/// 10 ms: its exit status, stdout, stderr, the RSS once both guests have
/// booted, and the peak RSS (KiB).
fn run_watching_rss(config: &str) -> (std::process::ExitStatus, String, String, u64, u64) {
    let mut child = spawn_hearth(&["run", "--config", config]);
    let pid = child.id();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            sink.lock().expect("lines").push(line);
        }
    });
    let start = Instant::now();
    let (mut baseline, mut peak) = (0, 0);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(start.elapsed() < DEADLINE, "the run did not end in time");
        let rss = rss_kib(pid);
        let booted = lines.lock().expect("lines").len() >= 2;
        if booted && baseline == 0 {
            baseline = rss;
        }
        peak = peak.max(rss);
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = reader.join();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let out = lines.lock().expect("lines").join("\n");
    (status, out, err, baseline, peak)
}
