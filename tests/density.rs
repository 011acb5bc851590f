//! Many VMs in one monitor, started and stopped together: a burst of
//! builds gets more life-cycle workers (which go away once idle), every
//! VM comes up while the earlier ones already spin on the same host CPU,
//! and a SIGTERM stops them all at once.

mod common;

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

const VMS: usize = 40;
/// Generous bounds for a loaded, nested machine; the same 40 VMs take
/// about a second to come up and a fraction of one to stop here.
const UP_DEADLINE: Duration = Duration::from_secs(60);
const STOP_DEADLINE: Duration = Duration::from_secs(20);

/// Kills the monitor if the test ends before it has been reaped (a failed
/// assertion must not leave forty spinning VMs behind).
struct KillUnlessReaped(i32, bool);

impl Drop for KillUnlessReaped {
    fn drop(&mut self) {
        if !self.1 {
            // SAFETY: kill(2) on our own child, not yet reaped (so its pid
            // is still ours).
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
}

/// Each thread's name and scheduling policy (field 41 of its stat file).
fn thread_policies(pid: u32) -> Vec<(String, u32, u32)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|t| {
        let path = t.ok()?.path();
        let stat = std::fs::read_to_string(path.join("stat")).ok()?;
        let (_, after) = stat.rsplit_once(") ")?;
        // Fields 40 and 41: rt_priority and policy (the first after ") " is 3).
        let rt_priority = after.split(' ').nth(40 - 3)?.parse().ok()?;
        let policy = after.split(' ').nth(41 - 3)?.parse().ok()?;
        let comm = std::fs::read_to_string(path.join("comm")).ok()?;
        Some((comm.trim().to_string(), policy, rt_priority))
    })
    .collect()
}

/// The names of the monitor's threads.
fn thread_names(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect()
}

/// Life-cycle workers alive: distinct `hearth-life<N>` names (a thread a
/// worker has just started carries its name until it names itself).
fn workers(pid: u32) -> usize {
    thread_names(pid)
        .into_iter()
        .filter(|n| n.starts_with("hearth-life"))
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

/// A monitor file with `VMS` spinning VMs, all on host CPU 0.
fn config() -> String {
    let dir = scratch_dir("density");
    let vms: Vec<String> = (0..VMS)
        .map(|i| {
            format!(
                r#"{{"name": "vm{i}", "kernel": {{"path": "{}", "cmdline": "hearth.scenario=spin"}},
                    "memory": {{"size_mib": 64}}}}"#,
                guest_elf()
            )
        })
        .collect();
    write_file(
        &dir,
        "monitor.json",
        &format!(
            r#"{{"host": {{"cpu": {{"cpus": [0]}}}}, "vms": [{}]}}"#,
            vms.join(",")
        ),
    )
}

/// Sends the name of each VM that prints its boot line.
fn boot_lines(out: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some((vm, _)) = line.split_once("| hearth-guest: boot ") {
                let _ = tx.send(vm.to_string());
            }
        }
    });
    rx
}

/// Waits until every VM has booted; returns the most life-cycle workers
/// seen meanwhile.
fn wait_all_up(pid: u32, rx: &mpsc::Receiver<String>) -> usize {
    let start = Instant::now();
    let mut up = std::collections::BTreeSet::new();
    let mut most_workers = 0;
    while up.len() < VMS {
        assert!(
            start.elapsed() < UP_DEADLINE,
            "only {} of {VMS} VMs up after {UP_DEADLINE:?}",
            up.len()
        );
        most_workers = most_workers.max(workers(pid));
        while let Ok(vm) = rx.try_recv() {
            up.insert(vm);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    most_workers
}

/// The event loop (the main thread, "hearth") serves the ticks ahead of
/// the spinning vCPUs, and the terminal's output writer ("hearth-out")
/// runs just below it; every other thread keeps a normal policy.
fn assert_only_the_loop_and_writer_are_realtime(pid: u32) {
    let policies = thread_policies(pid);
    let mut fifo: Vec<_> = policies
        .iter()
        .filter(|(_, p, _)| *p as i32 == libc::SCHED_FIFO)
        .map(|(name, _, prio)| (name.as_str(), *prio))
        .collect();
    fifo.sort();
    assert_eq!(fifo, [("hearth", 2), ("hearth-out", 1)], "{policies:?}");
}

#[test]
fn forty_spinning_vms_on_one_cpu_come_up_and_stop_together() {
    let mut child = spawn_hearth(&["run", "--config", &config()]);
    let pid = child.id();
    let mut guard = KillUnlessReaped(pid as i32, false);
    let rx = boot_lines(child.stdout.take().expect("piped stdout"));
    let err = child.stderr.take().expect("piped stderr");
    let stderr = std::thread::spawn(move || std::io::read_to_string(err).unwrap_or_default());

    // Every VM prints its boot line; meanwhile, count the workers.
    let most_workers = wait_all_up(pid, &rx);
    let online = std::thread::available_parallelism().map_or(1, usize::from);
    let base = online.max(2);
    assert!(
        most_workers > base,
        "a burst of {VMS} builds started more than the {base} standing workers (saw {most_workers})"
    );
    assert!(most_workers <= 32, "at most 32 workers, saw {most_workers}");
    assert_only_the_loop_and_writer_are_realtime(pid);
    // The extra workers end once idle (500 ms without a job).
    let idle = Instant::now();
    while workers(pid) > base && idle.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(workers(pid), base, "{:?}", thread_names(pid));

    // SIGTERM stops all of them at once.
    // SAFETY: kill(2) on the child we started and have not reaped.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let stopping = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for hearth") {
            guard.1 = true;
            break status;
        }
        assert!(
            stopping.elapsed() < STOP_DEADLINE,
            "hearth still running {STOP_DEADLINE:?} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let stderr = stderr.join().unwrap_or_default();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let stopped = stderr
        .lines()
        .filter(|l| l.contains(": ran ") && l.contains("ended: stopped: monitor received SIGTERM"))
        .count();
    assert_eq!(stopped, VMS, "every VM reports the SIGTERM:\n{stderr}");
}
