//! The test guest booted through every entry path, from flags and from
//! JSON configs, with 1 to 4 vCPUs: what a user checks is what it prints
//! and how hearth exits.

mod common;

use std::time::Duration;

use common::*;

const DEADLINE: Duration = Duration::from_secs(60);
const GUEST: &str = "hearth-guest:";

fn assert_clean_reset(run: &Run) {
    run.assert_no_panic();
    assert_eq!(
        run.code(),
        Some(0),
        "hearth should exit 0 after the guest's reset\n{}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(run.stderr.contains("guest reset"), "{}", run.stderr);
}

#[test]
fn hello_from_flags_reports_memory_and_one_cpu() {
    let run = run_hearth(
        &[
            "run",
            "--kernel",
            guest_elf(),
            "--cmdline",
            "hearth.scenario=hello",
            "--memory",
            "256",
        ],
        DEADLINE,
    );
    assert_clean_reset(&run);
    assert_eq!(
        run.field(GUEST, "entry").as_deref(),
        Some("pvh"),
        "ELF with a PVH note boots through PVH by default"
    );
    assert_eq!(
        run.field("hearth-guest: memory", "ram_kib"),
        Some(expected_ram_kib(256).to_string())
    );
    assert_eq!(
        run.field("hearth-guest: memory", "top_mib").as_deref(),
        Some("256")
    );
    assert_eq!(
        run.field("hearth-guest: cpus", "mptable").as_deref(),
        Some("1")
    );
    assert!(
        run.stdout.contains("hearth-guest: HELLO OK"),
        "{}",
        run.stdout
    );
}

#[test]
fn hello_from_config_with_two_vcpus_through_the_linux_64bit_entry() {
    let dir = scratch_dir("hello-config");
    let config = write_file(
        &dir,
        "vm.json",
        &format!(
            r#"{{
                "name": "hello",
                "kernel": {{ "path": "{}", "cmdline": "hearth.scenario=hello", "protocol": "linux" }},
                "cpu": {{ "vcpus": 2 }},
                "memory": {{ "size_mib": 128 }}
            }}"#,
            guest_elf()
        ),
    );
    let run = run_hearth(&["run", "--config", &config], DEADLINE);
    assert_clean_reset(&run);
    assert_eq!(run.field(GUEST, "entry").as_deref(), Some("linux64"));
    assert_eq!(
        run.field(GUEST, "cmdline").as_deref(),
        Some("hearth.scenario=hello")
    );
    assert_eq!(
        run.field("hearth-guest: memory", "ram_kib"),
        Some(expected_ram_kib(128).to_string())
    );
    assert_eq!(
        run.field("hearth-guest: cpus", "mptable").as_deref(),
        Some("2")
    );
    assert!(
        run.stderr.contains("hello: ran "),
        "VM name in the summary: {}",
        run.stderr
    );
}

#[test]
fn smp_from_flags_brings_up_both_vcpus() {
    let run = run_hearth(
        &[
            "run",
            "--kernel",
            guest_elf(),
            "--cmdline",
            "hearth.scenario=smp",
            "--vcpus",
            "2",
        ],
        DEADLINE,
    );
    assert_clean_reset(&run);
    assert_eq!(
        run.lines_with("hearth-guest: cpu up").count(),
        1,
        "{}",
        run.stdout
    );
    assert_eq!(
        run.field("hearth-guest: smp", "cpus_up").as_deref(),
        Some("2")
    );
    assert_eq!(
        run.field("hearth-guest: smp", "expected").as_deref(),
        Some("2")
    );
    assert!(
        run.stdout.contains("hearth-guest: SMP OK"),
        "{}",
        run.stdout
    );
}

#[test]
fn smp_from_config_with_four_vcpus_each_with_its_own_apic_id() {
    let dir = scratch_dir("smp4");
    let config = write_file(
        &dir,
        "vm.json",
        &format!(
            r#"{{ "kernel": {{ "path": "{}", "cmdline": "hearth.scenario=smp" }}, "cpu": {{ "vcpus": 4 }} }}"#,
            guest_elf()
        ),
    );
    let run = run_hearth(&["run", "--config", &config], DEADLINE);
    assert_clean_reset(&run);
    let mut apics: Vec<String> = run
        .lines_with("hearth-guest: cpu up")
        .filter_map(|l| l.split("apic=").nth(1).map(str::to_string))
        .collect();
    apics.sort();
    assert_eq!(apics, ["1", "2", "3"], "{}", run.stdout);
    assert_eq!(
        run.field("hearth-guest: smp", "cpus_up").as_deref(),
        Some("4")
    );
    assert!(run.stdout.contains("hearth-guest: SMP OK"));
}

#[test]
fn bzimage_boots_through_its_64bit_entry() {
    let run = run_hearth(
        &[
            "run",
            "--kernel",
            guest_bzimage(),
            "--cmdline",
            "hearth.scenario=hello",
            "--vcpus",
            "2",
        ],
        DEADLINE,
    );
    assert_clean_reset(&run);
    assert_eq!(run.field(GUEST, "entry").as_deref(), Some("bzimage"));
    assert_eq!(
        run.field("hearth-guest: cpus", "mptable").as_deref(),
        Some("2")
    );
}

#[test]
fn memory_above_the_mmio_gap_is_in_the_e820_map() {
    // 4 GiB of RAM: 3 GiB below the 32-bit MMIO gap, 1 GiB above 4 GiB.
    let run = run_hearth(
        &[
            "run",
            "--kernel",
            guest_elf(),
            "--cmdline",
            "hearth.scenario=hello",
            "--memory",
            "4096",
        ],
        DEADLINE,
    );
    assert_clean_reset(&run);
    assert_eq!(
        run.field("hearth-guest: memory", "ram_kib"),
        Some(expected_ram_kib(4096).to_string())
    );
    assert_eq!(
        run.field("hearth-guest: memory", "regions").as_deref(),
        Some("3")
    );
    assert_eq!(
        run.field("hearth-guest: memory", "top_mib").as_deref(),
        Some("5120")
    );
}

#[test]
fn exit_scenario_resets_and_hearth_exits_zero() {
    let run = run_hearth(
        &[
            "run",
            "--kernel",
            guest_elf(),
            "--cmdline",
            "hearth.scenario=exit",
        ],
        DEADLINE,
    );
    assert_clean_reset(&run);
    assert!(run.stdout.contains("hearth-guest: EXIT"));
}

#[test]
fn sigterm_stops_a_running_guest_in_order() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::sync::mpsc;

    let mut child = Command::new(hearth())
        .args([
            "run",
            "--kernel",
            guest_elf(),
            "--cmdline",
            "hearth.scenario=idle",
            "--vcpus",
            "2",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hearth");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let idle = rx
        .iter()
        .take_while(|_| true)
        .find(|l| l.contains("hearth-guest: IDLE"));
    if idle.is_none() {
        let _ = child.kill();
        panic!("the guest never reached its idle loop");
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("hearth did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert_eq!(status.code(), Some(128 + 15), "{stderr}");
    assert!(stderr.contains("received SIGTERM"), "{stderr}");
    assert!(
        stderr.contains("stopped: monitor received SIGTERM"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_triple_fault_stops_the_vm_with_a_clear_error() {
    let run = run_hearth(
        &[
            "run",
            "--kernel",
            guest_elf(),
            "--cmdline",
            "hearth.scenario=triple-fault",
        ],
        DEADLINE,
    );
    run.assert_no_panic();
    assert!(run.stdout.contains("hearth-guest: TRIPLE FAULT"));
    assert_eq!(run.code(), Some(3), "{}", run.stderr);
    assert!(
        run.stderr.contains("triple fault on vCPU 0 at RIP 0x"),
        "{}",
        run.stderr
    );
}

#[test]
fn executing_from_the_mmio_gap_is_an_emulation_failure_with_rip() {
    let run = run_hearth(
        &[
            "run",
            "--kernel",
            guest_elf(),
            "--cmdline",
            "hearth.scenario=wild-jump",
            "--vcpus",
            "2",
        ],
        DEADLINE,
    );
    run.assert_no_panic();
    assert!(run.stdout.contains("hearth-guest: WILD JUMP"));
    assert_eq!(run.code(), Some(3), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("KVM internal error (emulation failure) on vCPU 0 at RIP 0xd0000000"),
        "{}",
        run.stderr
    );
}
