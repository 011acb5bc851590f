//! The test guest's `spin` scenario: every vCPU counts down chunks of a
//! tight loop and reports each one; the run ends with `SPIN DONE` after
//! `hearth.spin_chunks` chunks per CPU, or with `SPIN STOPPED` when a `q`
//! arrives on the serial console.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

const DEADLINE: Duration = Duration::from_secs(60);

fn spin(vcpus: u32, chunk: u64, chunks: u64) -> Run {
    let vcpus = vcpus.to_string();
    let cmdline =
        format!("hearth.scenario=spin hearth.spin_chunk={chunk} hearth.spin_chunks={chunks}");
    run_hearth(
        &[
            "run",
            "--kernel",
            guest_elf(),
            "--vcpus",
            &vcpus,
            "--cmdline",
            &cmdline,
        ],
        DEADLINE,
    )
}

/// The `chunks=` values CPU `apic` printed, in order.
fn chunks_of(run: &Run, apic: u32) -> Vec<u64> {
    let prefix = format!("hearth-guest: spin apic={apic} chunks=");
    run.stdout
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|n| n.parse().expect("chunks=<decimal>"))
        .collect()
}

fn assert_spin_done(run: &Run, vcpus: u32, chunk: u64, chunks: u64) {
    run.assert_no_panic();
    assert_eq!(
        run.code(),
        Some(0),
        "hearth should exit 0 after the guest's reset\n{}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l == format!("hearth-guest: spin cpus={vcpus} chunk={chunk} chunks={chunks}")),
        "{}",
        run.stdout
    );
    let expected: Vec<u64> = (1..=chunks).collect();
    for apic in 0..vcpus {
        assert_eq!(
            chunks_of(run, apic),
            expected,
            "apic {apic}:\n{}",
            run.stdout
        );
    }
    assert_eq!(
        run.lines_with("hearth-guest: spin apic=").count(),
        (vcpus as usize) * (chunks as usize),
        "{}",
        run.stdout
    );
    let last = run.lines_with("hearth-guest: ").last();
    assert_eq!(last, Some("hearth-guest: SPIN DONE"), "{}", run.stdout);
}

#[test]
fn spin_on_two_vcpus_runs_three_chunks_each_then_resets() {
    let run = spin(2, 20_000, 3);
    assert_spin_done(&run, 2, 20_000, 3);
    eprintln!("2 vCPUs x 3 chunks of 20000: {:?}", run.elapsed);
}

#[test]
fn spin_on_one_vcpu_runs_two_chunks_then_resets() {
    let run = spin(1, 20_000, 2);
    assert_spin_done(&run, 1, 20_000, 2);
    eprintln!("1 vCPU x 2 chunks of 20000: {:?}", run.elapsed);
}

/// Without a chunk limit the guest spins until a `q` arrives on COM1.
#[test]
fn spin_without_a_limit_stops_on_q_from_the_console() {
    let start = Instant::now();
    let mut child = Command::new(hearth())
        .args([
            "run",
            "--kernel",
            guest_elf(),
            "--vcpus",
            "2",
            "--cmdline",
            "hearth.scenario=spin hearth.spin_chunk=20000",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hearth");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let (rx, out_reader, err_reader) = readers(&mut child);

    // Once both CPUs have finished a chunk, tell the guest to stop.
    let mut seen = [false, false];
    while !(seen[0] && seen[1]) {
        let left = DEADLINE.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with("hearth-guest: spin apic=0 ") => seen[0] = true,
            Ok(line) if line.starts_with("hearth-guest: spin apic=1 ") => seen[1] = true,
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "no chunk lines from both CPUs ({e}):\n{}\n{}",
                    out_reader.join().unwrap_or_default(),
                    err_reader.join().unwrap_or_default()
                );
            }
        }
    }
    stdin.write_all(b"q").expect("write q to hearth's stdin");
    stdin.flush().expect("flush hearth's stdin");

    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for hearth") {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the guest did not stop on q within {DEADLINE:?}:\n{}\n{}",
                out_reader.join().unwrap_or_default(),
                err_reader.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(stdin);
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    assert!(!stderr.contains("panicked"), "hearth panicked:\n{stderr}");
    assert_eq!(status.code(), Some(0), "{stdout}\n{stderr}");
    let last = stdout.lines().rfind(|l| l.starts_with("hearth-guest: "));
    assert_eq!(last, Some("hearth-guest: SPIN STOPPED"), "{stdout}");
    assert!(!stdout.contains("SPIN DONE"), "{stdout}");
}

/// Threads reading the child's stdout (each line also sent on the channel;
/// the whole text at the end) and stderr.
#[allow(clippy::type_complexity)]
fn readers(
    child: &mut std::process::Child,
) -> (
    mpsc::Receiver<String>,
    std::thread::JoinHandle<String>,
    std::thread::JoinHandle<String>,
) {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    let out_reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    (rx, out_reader, err_reader)
}
