//! Several VMs in one monitor share CPU in proportion to their weights:
//! measured from hearth's own per-VM statistics (each vCPU thread's CPU
//! clock), with the test guest's `spin` scenario as the load and every vCPU
//! confined to one host CPU so that they contend.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// How long each contention scenario runs.
const RUN: Duration = Duration::from_secs(5);
const DEADLINE: Duration = Duration::from_secs(60);

struct Vm<'a> {
    name: &'a str,
    scenario: &'a str,
    vcpus: u32,
    weight: u32,
    /// `cpu.max`, the VM's cap in host CPUs.
    max: Option<f64>,
}

fn monitor_file(dir: &Path, vms: &[Vm]) -> String {
    let vms: Vec<String> = vms
        .iter()
        .map(|v| {
            format!(
                r#"{{"name": "{}", "kernel": {{"path": "{}", "cmdline": "hearth.scenario={} hearth.spin_chunk=1000000"}},
                    "cpu": {{"vcpus": {}, "weight": {}{}}}, "memory": {{"size_mib": 32}},
                    "serial": {{"output": "off", "stdin": false}}}}"#,
                v.name,
                guest_elf(),
                v.scenario,
                v.vcpus,
                v.weight,
                v.max.map(|m| format!(r#", "max": {m}"#)).unwrap_or_default()
            )
        })
        .collect();
    write_file(
        dir,
        "monitor.json",
        &format!(
            r#"{{"host": {{"cpu": {{"cpus": [0]}}}}, "vms": [{}]}}"#,
            vms.join(",")
        ),
    )
}

/// The scenarios all pin their vCPUs to host CPU 0: run them one at a
/// time, or they would contend with each other as well.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Starts the monitor on `vms` with a statistics file, runs `during` while
/// it runs, stops it with SIGTERM and returns its final statistics.
fn run_monitor(name: &str, vms: &[Vm], during: impl FnOnce(&Path)) -> serde_json::Value {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch_dir(name);
    let config = monitor_file(&dir, vms);
    let stats = dir.join("stats.json");
    let mut child = Command::new(hearth())
        .args(["run", "--config", &config, "--stats-file"])
        .arg(&stats)
        .arg("--api-socket")
        .arg(control_socket(&stats))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hearth");
    during(&stats);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("hearth did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(143));
    read_stats(&stats).expect("the stats file is there and is JSON")
}

/// The monitor's control socket, beside its statistics file.
fn control_socket(stats: &Path) -> std::path::PathBuf {
    stats.with_file_name("api.sock")
}

/// `hearth ctl` on the monitor whose statistics file is `stats`.
fn ctl(stats: &Path, args: &[&str]) {
    let out = Command::new(hearth())
        .arg("ctl")
        .arg(control_socket(stats))
        .args(args)
        .output()
        .expect("run hearth ctl");
    assert!(out.status.success(), "hearth ctl {args:?}: {out:?}");
}

fn read_stats(path: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Runs the monitor for `RUN` and returns its final statistics:
/// `(name, cpu seconds, throttle events)` per VM.
fn run_contended(name: &str, vms: &[Vm]) -> Vec<(String, f64, u64)> {
    let v = run_monitor(name, vms, |_| std::thread::sleep(RUN));
    v["vms"]
        .as_array()
        .expect("vms array")
        .iter()
        .map(|vm| {
            (
                vm["name"].as_str().unwrap_or_default().to_string(),
                vm["cpu"]["used_ns"].as_f64().unwrap_or(0.0) / 1e9,
                vm["cpu"]["throttle_events"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// CPU time one spinning VM alone gets in `RUN` on host CPU 0: what the
/// machine offers now (it is shared), against which "did not slow" and
/// "kept the CPU busy" are judged.
fn baseline() -> f64 {
    static BASELINE: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *BASELINE.get_or_init(|| {
        let stats = run_contended(
            "baseline",
            &[Vm {
                name: "alone",
                scenario: "spin",
                vcpus: 1,
                weight: 100,
                max: None,
            }],
        );
        cpu_of(&stats, "alone")
    })
}

fn cpu_of(stats: &[(String, f64, u64)], name: &str) -> f64 {
    stats
        .iter()
        .find(|s| s.0 == name)
        .map(|s| s.1)
        .unwrap_or_else(|| panic!("no VM {name} in {stats:?}"))
}

#[test]
fn weights_100_and_300_share_one_cpu_one_to_three() {
    let stats = run_contended(
        "weights",
        &[
            Vm {
                name: "light",
                scenario: "spin",
                vcpus: 1,
                weight: 100,
                max: None,
            },
            Vm {
                name: "heavy",
                scenario: "spin",
                vcpus: 1,
                weight: 300,
                max: None,
            },
        ],
    );
    let ratio = cpu_of(&stats, "heavy") / cpu_of(&stats, "light");
    assert!(
        (ratio - 3.0).abs() <= 0.3,
        "CPU ratio {ratio:.3}, stats {stats:?}"
    );
    // Work-conserving: together they kept the one CPU as busy as one VM alone does.
    let total = cpu_of(&stats, "heavy") + cpu_of(&stats, "light");
    let alone = baseline();
    assert!(
        total >= 0.85 * alone,
        "only {total:.2} s of CPU used, {alone:.2} s alone"
    );
}

#[test]
fn four_vcpus_get_no_more_than_one_at_equal_weight() {
    let stats = run_contended(
        "vcpus",
        &[
            Vm {
                name: "wide",
                scenario: "spin",
                vcpus: 4,
                weight: 100,
                max: None,
            },
            Vm {
                name: "narrow",
                scenario: "spin",
                vcpus: 1,
                weight: 100,
                max: None,
            },
        ],
    );
    let ratio = cpu_of(&stats, "wide") / cpu_of(&stats, "narrow");
    assert!(
        (ratio - 1.0).abs() <= 0.1,
        "CPU ratio {ratio:.3}, stats {stats:?}"
    );
}

#[test]
fn an_idle_vm_with_a_large_weight_does_not_slow_a_busy_one() {
    let stats = run_contended(
        "idle",
        &[
            Vm {
                name: "busy",
                scenario: "spin",
                vcpus: 1,
                weight: 100,
                max: None,
            },
            Vm {
                name: "idle",
                scenario: "idle",
                vcpus: 2,
                weight: 10000,
                max: None,
            },
        ],
    );
    let busy = cpu_of(&stats, "busy");
    let alone = baseline();
    assert!(
        busy >= 0.85 * alone,
        "busy VM got {busy:.2} s, {alone:.2} s alone: {stats:?}"
    );
    // While the idle VM boots it does want CPU, and with its weight it gets
    // it first: the busy VM may be held back for a tick or two then, never
    // after the other VM has gone idle.
    let throttled = stats.iter().find(|s| s.0 == "busy").map_or(0, |s| s.2);
    assert!(
        throttled <= 2,
        "the busy VM was held back {throttled} times"
    );
    assert!(cpu_of(&stats, "idle") < 0.1, "{stats:?}");
}

/// Reads the statistics file (rewritten every second) for `run` and
/// returns every distinct snapshot.
fn snapshots(stats: &Path, run: Duration) -> Vec<serde_json::Value> {
    let end = Instant::now() + run;
    let mut seen: Vec<serde_json::Value> = Vec::new();
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
        let Some(s) = read_stats(stats) else { continue };
        if seen.last().is_none_or(|l| l["elapsed_s"] != s["elapsed_s"]) {
            seen.push(s);
        }
    }
    seen
}

/// `(elapsed s, CPU s)` of VM `name` in a snapshot.
fn cpu_at(snapshot: &serde_json::Value, name: &str) -> (f64, f64) {
    let vm = snapshot["vms"]
        .as_array()
        .and_then(|vms| vms.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no VM {name} in {snapshot}"));
    (
        snapshot["elapsed_s"].as_f64().unwrap_or(0.0),
        vm["cpu"]["used_ns"].as_f64().unwrap_or(0.0) / 1e9,
    )
}

/// How long the cap scenario runs: long enough for several 1 s windows.
const CAP_RUN: Duration = Duration::from_secs(9);

#[test]
fn a_cpu_cap_holds_within_5_percent() {
    // No contention (0.3 + 0.1 of one CPU): only the caps hold them back.
    let mut snaps = Vec::new();
    let vm = |name, max| Vm {
        name,
        scenario: "spin",
        vcpus: 1,
        weight: 100,
        max: Some(max),
    };
    let last = run_monitor("cap", &[vm("cap30", 0.3), vm("cap10", 0.1)], |stats| {
        snaps = snapshots(stats, CAP_RUN)
    });
    assert!(snaps.len() >= 6, "too few statistics snapshots: {snaps:?}");
    // Skip the first snapshot (boot); measure every 1 s window after it,
    // for both caps (the scheduler parks a VM the moment its quota runs
    // out, not at its next tick).
    for (name, max) in [("cap30", 0.3), ("cap10", 0.1)] {
        let windows: Vec<(f64, f64)> = snaps[1..]
            .windows(2)
            .map(|w| {
                let (t0, c0) = cpu_at(&w[0], name);
                let (t1, c1) = cpu_at(&w[1], name);
                (t1, (c1 - c0) / (t1 - t0))
            })
            .collect();
        for (t, share) in &windows {
            assert!(
                *share <= max * 1.05,
                "cap {max}: {share:.4} of a CPU in the window ending at {t:.1} s: {windows:?}"
            );
        }
    }
    // Over the whole run both caps hold within 5 %, and they are about
    // reached when the CPU is free enough (a cap is a limit, not a
    // penalty; the machine is shared, hence the slack below).
    let alone = baseline() / RUN.as_secs_f64();
    for (name, max) in [("cap30", 0.3), ("cap10", 0.1)] {
        let (t0, c0) = cpu_at(&snaps[1], name);
        let (t1, c1) = cpu_at(snaps.last().unwrap_or(&last), name);
        let share = (c1 - c0) / (t1 - t0);
        assert!(share <= max * 1.05, "{name}: {share:.4} of a CPU");
        assert!(
            share >= 0.7 * max.min(alone),
            "{name}: only {share:.4} of a CPU ({alone:.3} alone)"
        );
    }
}

/// How long the many-VM scenario runs, and from when it is measured (all
/// 80 have booted well before).
const MANY_RUN: Duration = Duration::from_secs(10);
const MANY_FROM_S: f64 = 4.0;

#[test]
fn weights_order_the_shares_of_80_vms_sharing_one_cpu() {
    // Each of 80 spinning vCPUs gets about 1/80 of the CPU, under a
    // quarter of a tick, so every tick asks each one's run state: more
    // than one tick reads (64), so the states are read in turns.
    let names: Vec<(String, u32)> = (0..80)
        .map(|i| {
            let heavy = i % 2 == 1;
            (
                format!("{}{i}", if heavy { "heavy" } else { "light" }),
                if heavy { 300 } else { 100 },
            )
        })
        .collect();
    let vms: Vec<Vm> = names
        .iter()
        .map(|(name, weight)| Vm {
            name,
            scenario: "spin",
            vcpus: 1,
            weight: *weight,
            max: None,
        })
        .collect();
    let mut snaps = Vec::new();
    run_monitor("many", &vms, |stats| snaps = snapshots(stats, MANY_RUN));
    let from = snaps
        .iter()
        .position(|s| s["elapsed_s"].as_f64().unwrap_or(0.0) >= MANY_FROM_S)
        .expect("a snapshot after the VMs booted");
    let (first, last) = (&snaps[from], snaps.last().expect("snapshots"));
    let group = |prefix: &str| -> f64 {
        names
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(n, _)| cpu_at(last, n).1 - cpu_at(first, n).1)
            .sum()
    };
    let (heavy, light) = (group("heavy"), group("light"));
    let seconds = cpu_at(last, "heavy1").0 - cpu_at(first, "heavy1").0;
    assert!(seconds >= 3.0, "measured over {seconds:.1} s only");
    // With 80 VMs on one CPU each gets a 0.75-3 ms kernel slice about
    // every 100 ms, far coarser than the 10 ms tick, and the ratio comes
    // out between 2.9 and 5.6 (docs/scheduler.md, "Many VMs on few
    // CPUs"): the weights order the shares, not to 10 % as with two VMs.
    let ratio = heavy / light;
    eprintln!("80 VMs on one CPU: heavy/light {ratio:.3} over {seconds:.1} s");
    assert!(
        (2.0..=6.0).contains(&ratio),
        "heavy VMs {heavy:.2} s, light {light:.2} s of CPU over {seconds:.1} s: ratio {ratio:.3}"
    );
    // Work-conserving: together they kept the CPU busy.
    let alone = baseline() / RUN.as_secs_f64();
    assert!(
        (heavy + light) / seconds >= 0.85 * alone,
        "only {:.3} of a CPU used ({alone:.3} alone)",
        (heavy + light) / seconds
    );
}

/// `(ticks, vCPU clocks read)` of the scheduler in a snapshot.
fn clock_reads(snapshot: &serde_json::Value) -> (f64, f64) {
    let s = &snapshot["scheduler"];
    (
        s["ticks"].as_f64().unwrap_or(0.0),
        s["clock_reads"].as_f64().unwrap_or(0.0),
    )
}

#[test]
fn idle_vcpus_have_their_clocks_read_with_their_state_not_every_tick() {
    let idle: Vec<String> = (0..10).map(|i| format!("idle{i}")).collect();
    let mut vms = vec![Vm {
        name: "busy",
        scenario: "spin",
        vcpus: 1,
        weight: 100,
        max: None,
    }];
    vms.extend(idle.iter().map(|name| Vm {
        name,
        scenario: "idle",
        vcpus: 1,
        weight: 100,
        max: None,
    }));
    let mut snaps = Vec::new();
    run_monitor("idle-clocks", &vms, |stats| snaps = snapshots(stats, RUN));
    assert!(snaps.len() >= 3, "too few statistics snapshots: {snaps:?}");
    // From the second snapshot on, the idle guests have long halted: the
    // busy vCPU's clock is read every tick, each halted one's only with
    // its run state, every 10th tick once it has stayed halted (11 clocks
    // a tick before).
    let (t0, r0) = clock_reads(&snaps[1]);
    let (t1, r1) = clock_reads(&snaps[snaps.len() - 1]);
    let (ticks, reads) = (t1 - t0, r1 - r0);
    assert!(ticks >= 100.0, "{ticks} ticks");
    let per_tick = reads / ticks;
    assert!(
        (1.0..=3.5).contains(&per_tick),
        "{per_tick:.2} clocks read per tick ({reads} in {ticks} ticks)"
    );
}

#[test]
fn a_vm_resumed_from_a_pause_gets_its_weight_again() {
    let vm = |name, weight| Vm {
        name,
        scenario: "spin",
        vcpus: 1,
        weight,
        max: None,
    };
    let mut snaps = Vec::new();
    run_monitor("resume", &[vm("light", 100), vm("heavy", 300)], |stats| {
        std::thread::sleep(Duration::from_secs(1));
        ctl(stats, &["pause", "heavy"]);
        // Paused, its vCPU is quiet: its clock is read every 10th tick.
        std::thread::sleep(Duration::from_secs(2));
        ctl(stats, &["resume", "heavy"]);
        std::thread::sleep(Duration::from_millis(300));
        snaps = snapshots(stats, Duration::from_millis(3500));
    });
    assert!(snaps.len() >= 3, "too few statistics snapshots: {snaps:?}");
    let last = &snaps[snaps.len() - 1];
    let delta = |name| {
        let (t0, c0) = cpu_at(&snaps[0], name);
        let (t1, c1) = cpu_at(last, name);
        assert!(t1 - t0 >= 1.5, "a window of {:.2} s", t1 - t0);
        c1 - c0
    };
    let ratio = delta("heavy") / delta("light");
    assert!(
        (ratio - 3.0).abs() <= 0.45,
        "CPU ratio {ratio:.3} after the resume"
    );
}
