//! Several VMs in one monitor: each has its own serial output (prefixed
//! lines on the shared terminal, or its own log file), a VM that stops
//! stops alone, and the monitor exits when the last one has stopped with a
//! status and a per-VM summary saying how each ended.

mod common;

use std::time::{Duration, Instant};

use common::*;

const DEADLINE: Duration = Duration::from_secs(60);

fn vm(name: &str, cmdline: &str, vcpus: u32, serial: &str) -> String {
    format!(
        r#"{{"name": "{name}", "kernel": {{"path": "{}", "cmdline": "{cmdline}"}},
            "cpu": {{"vcpus": {vcpus}}}, "memory": {{"size_mib": 64}}, "serial": {serial}}}"#,
        guest_elf()
    )
}

const TERMINAL: &str = r#"{"output": "stdout", "stdin": false}"#;
const LONG_SPIN: &str = "hearth.scenario=spin hearth.spin_chunk=100000 hearth.spin_chunks=5";

#[test]
fn a_vm_that_resets_stops_alone_and_the_monitor_waits_for_the_last() {
    let dir = scratch_dir("multi-reset");
    let config = write_file(
        &dir,
        "monitor.json",
        &format!(
            r#"{{"host": {{}}, "vms": [{}, {}]}}"#,
            vm("quick", "hearth.scenario=exit", 1, TERMINAL),
            vm("long", LONG_SPIN, 2, TERMINAL)
        ),
    );
    let run = run_hearth(&["run", "--config", &config], DEADLINE);
    run.assert_no_panic();
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("quick| hearth-guest: EXIT"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("long| hearth-guest: SPIN DONE"),
        "{}",
        run.stdout
    );
    assert_eq!(
        run.stdout
            .lines()
            .filter(|l| l.starts_with("long| hearth-guest: spin apic="))
            .count(),
        10,
        "every line of the surviving VM arrives whole: {}",
        run.stdout
    );
    let quick = run.stderr.find("quick: ran").expect("a summary for quick");
    let long = run.stderr.find("long: ran").expect("a summary for long");
    assert!(
        quick < long,
        "the quick VM ended first, the monitor waited for the other"
    );
    assert!(run.stderr.contains("long: ran") && run.stderr.contains("ended: guest reset"));
}

#[test]
fn a_faulting_guest_does_not_stop_its_neighbour() {
    let dir = scratch_dir("multi-fault");
    let config = write_file(
        &dir,
        "monitor.json",
        &format!(
            r#"{{"host": {{}}, "vms": [{}, {}, {}]}}"#,
            vm("bad", "hearth.scenario=triple-fault", 1, TERMINAL),
            vm("wild", "hearth.scenario=wild-jump", 2, TERMINAL),
            vm("good", LONG_SPIN, 2, TERMINAL)
        ),
    );
    let run = run_hearth(&["run", "--config", &config], DEADLINE);
    run.assert_no_panic();
    assert_eq!(run.code(), Some(3), "a guest failed: {}", run.stderr);
    assert!(run.stderr.contains("bad: ran") && run.stderr.contains("triple fault on vCPU 0"));
    assert!(run
        .stderr
        .contains("emulation failure) on vCPU 0 at RIP 0xd0000000"));
    assert!(
        run.stdout.contains("good| hearth-guest: SPIN DONE"),
        "{}",
        run.stdout
    );
    let good = run
        .stderr
        .lines()
        .find(|l| l.contains("good: ran"))
        .expect("a summary for good");
    assert!(good.contains("ended: guest reset"), "{good}");
}

#[test]
fn serial_output_can_go_to_a_log_file_per_vm() {
    let dir = scratch_dir("multi-log");
    let log_a = dir.join("a.log");
    let log_b = dir.join("b.log");
    let file = |p: &std::path::Path| {
        format!(
            r#"{{"output": "file", "path": "{}", "stdin": false}}"#,
            p.display()
        )
    };
    let config = write_file(
        &dir,
        "monitor.json",
        &format!(
            r#"{{"host": {{}}, "vms": [{}, {}]}}"#,
            vm("a", "hearth.scenario=hello", 1, &file(&log_a)),
            vm("b", "hearth.scenario=smp", 2, &file(&log_b))
        ),
    );
    let run = run_hearth(&["run", "--config", &config], DEADLINE);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert!(
        !run.stdout.contains("hearth-guest"),
        "nothing on the terminal: {}",
        run.stdout
    );
    let a = std::fs::read_to_string(&log_a).expect("a.log");
    let b = std::fs::read_to_string(&log_b).expect("b.log");
    assert!(
        a.contains("hearth-guest: HELLO OK") && !a.contains("SMP"),
        "{a}"
    );
    assert!(
        b.contains("hearth-guest: SMP OK") && !b.contains("HELLO"),
        "{b}"
    );
}

/// A VM printing fast to a stdout nobody drains (a full pipe) beside a VM
/// that logs to a file: the second runs on, SIGTERM stops the monitor at
/// once, and the dropped bytes are counted.
#[test]
fn a_console_nobody_reads_blocks_neither_the_monitor_nor_its_neighbour() {
    let dir = scratch_dir("blocked-console");
    let log = dir.join("quiet.log");
    let config = write_file(
        &dir,
        "monitor.json",
        &format!(
            r#"{{"host": {{}}, "vms": [{}, {}]}}"#,
            vm(
                "loud",
                "hearth.scenario=spin hearth.spin_chunk=50",
                1,
                TERMINAL
            ),
            vm(
                "quiet",
                "hearth.scenario=spin hearth.spin_chunk=20000",
                1,
                &format!(
                    r#"{{"output": "file", "path": "{}", "stdin": false}}"#,
                    log.display()
                )
            )
        ),
    );
    let stats = dir.join("stats.json");
    let mut child = spawn_with_unread_stdout(&config, &stats);
    // Wait until the loud VM's output has filled the pipe and its ring.
    let read_stats = || -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap_or_default())
            .unwrap_or_default()
    };
    let filling = Instant::now();
    while vm_of(&read_stats(), "loud")["serial"]["dropped_bytes"].as_u64() < Some(1) {
        assert!(
            filling.elapsed() < Duration::from_secs(30),
            "the loud VM never filled its console: {}",
            vm_of(&read_stats(), "loud")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let lines = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("spin apic="))
            .count()
    };
    let before = lines(&log);
    std::thread::sleep(Duration::from_secs(2));
    let after = lines(&log);
    let doc = read_stats();
    let (status, took) = sigterm_and_wait(&mut child);
    assert!(took < Duration::from_secs(3), "SIGTERM took {took:?}");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert!(
        after > before,
        "the quiet VM runs on while the loud one's console is blocked ({before} -> {after})"
    );
    let loud = vm_of(&doc, "loud");
    assert!(
        loud["serial"]["dropped_bytes"].as_u64() > Some(0),
        "the loud VM's dropped output is counted: {loud}"
    );
}

/// A monitor whose stdout is a small (4 KiB) pipe nobody reads.
fn spawn_with_unread_stdout(config: &str, stats: &std::path::Path) -> std::process::Child {
    use std::os::fd::AsRawFd;
    use std::process::{Command, Stdio};
    let child = Command::new(hearth())
        .args(["run", "--config", config, "--stats-file"])
        .arg(stats)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hearth");
    if let Some(out) = &child.stdout {
        // SAFETY: F_SETPIPE_SZ on a pipe this test owns; no memory is passed.
        unsafe { libc::fcntl(out.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    }
    child
}

/// The statistics of VM `name` in a stats document (null if absent).
fn vm_of(doc: &serde_json::Value, name: &str) -> serde_json::Value {
    doc["vms"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == name))
        .cloned()
        .unwrap_or_default()
}

/// Sends SIGTERM and waits for the child (killing it after 10 s, which
/// fails the test): its status and how long it took.
fn sigterm_and_wait(child: &mut std::process::Child) -> (std::process::ExitStatus, Duration) {
    // SAFETY: signals the child we started; its pid is valid until we wait.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let sent = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return (s, sent.elapsed());
        }
        if sent.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("hearth still runs 10 s after SIGTERM with a blocked console");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
