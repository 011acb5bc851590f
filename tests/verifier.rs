//! The device access verifier, as a tenant sees it: a `probe` guest that
//! touches ports and MMIO across the whole space runs beside a `spin`
//! guest. Every access outside the probe's ACL is refused and counted (the
//! counters in the stats file match what the guest says it tried), its own
//! devices keep working (its serial output arrives), and the neighbour runs
//! on; with `stop-vm-after 100` the probe VM is stopped and the neighbour
//! is not.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(90);
const SPIN: &str = "hearth.scenario=spin hearth.spin_chunk=100000 hearth.spin_chunks=4";
const TERMINAL: &str = r#"{"output": "stdout", "stdin": false}"#;

/// The probe VM's ACL: everything outside its devices is a violation,
/// except a quiet deny over the PCI config ports; CMOS writes are refused
/// (a rule over a device), 1-byte writes to port 0x80 are allowed.
fn probe_acl(on_violation: &str) -> String {
    format!(
        r#"{{"default": "deny-and-log", "on_violation": "{on_violation}", "log_per_second": 5,
            "rules": [
              {{"device": "cmos", "access": ["write"], "action": "deny-and-log"}},
              {{"ports": "0x80", "access": ["write"], "sizes": [1], "action": "allow"}},
              {{"ports": "0xcf8-0xcff", "action": "deny"}}
            ]}}"#
    )
}

fn monitor_file(dir: &std::path::Path, on_violation: &str) -> String {
    let elf = guest_elf();
    write_file(
        dir,
        "monitor.json",
        &format!(
            r#"{{"host": {{}}, "vms": [
              {{"name": "probe", "kernel": {{"path": "{elf}", "cmdline": "hearth.scenario=probe"}},
                "memory": {{"size_mib": 64}}, "serial": {TERMINAL}, "acl": {}}},
              {{"name": "spin", "kernel": {{"path": "{elf}", "cmdline": "{SPIN}"}},
                "cpu": {{"vcpus": 2}}, "memory": {{"size_mib": 64}}, "serial": {TERMINAL}}}
            ]}}"#,
            probe_acl(on_violation)
        ),
    )
}

/// How the verifier decides one access under [`probe_acl`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Allow,
    /// Refused quietly (`deny`).
    Deny,
    /// Refused, a violation (`deny-and-log`).
    Violation,
}

/// One port's decision (the last matching rule wins).
fn port_decision(port: u64, size: u64, write: bool) -> Decision {
    if (0xcf8..=0xcff).contains(&port) {
        Decision::Deny
    } else if port == 0x80 && write && size == 1 {
        Decision::Allow
    } else if (0x70..=0x71).contains(&port) && write {
        Decision::Violation
    } else if (0x3f8..=0x3ff).contains(&port)
        || (0x60..=0x64).contains(&port)
        || (0x70..=0x71).contains(&port)
    {
        Decision::Allow
    } else {
        Decision::Violation
    }
}

/// An access is allowed only if every port it touches is; otherwise the
/// first refusing port decides.
fn access_decision(port: u64, size: u64, write: bool) -> Decision {
    (port..port + size)
        .map(|p| port_decision(p, size, write))
        .find(|d| *d != Decision::Allow)
        .unwrap_or(Decision::Allow)
}

/// What the probe scenario does (resources/guest/probe.S) and how the ACL
/// decides it: counts by class (pio read, pio write, mmio read, mmio
/// write) of all accesses, of denials, and the number of violations.
#[derive(Debug, Default)]
struct Expected {
    accesses: [u64; 4],
    denied: [u64; 4],
    violations: u64,
}

fn expected(port_stride: u64, mmio_stride: u64) -> Expected {
    let overlaps = |p: u64, size: u64, table: &[(u64, u64)]| {
        table
            .iter()
            .any(|&(first, last)| p <= last && first < p + size)
    };
    let in_kernel = [
        (0x20, 0x21),
        (0x40, 0x43),
        (0x61, 0x61),
        (0xa0, 0xa1),
        (0x4d0, 0x4d1),
    ];
    let no_write = [(0x3f8, 0x3ff), (0x60, 0x64)];
    let listed = [
        0x3f8, 0x3f9, 0x3fa, 0x3fb, 0x3fc, 0x3fd, 0x3fe, 0x3ff, 0x60, 0x64, 0x70, 0x71, 0x80,
        0xcf8, 0xcfc, 0x3e8, 0x2f8,
    ];
    let mut e = Expected::default();
    let ports = (0..=0xffffu64).step_by(port_stride as usize).chain(listed);
    for p in ports {
        for size in [1u64, 2, 4] {
            if p + size - 1 > 0xffff || overlaps(p, size, &in_kernel) {
                continue;
            }
            let mut count = |class: usize, write: bool| {
                e.accesses[class] += 1;
                match access_decision(p, size, write) {
                    Decision::Allow => {}
                    Decision::Deny => e.denied[class] += 1,
                    Decision::Violation => {
                        e.denied[class] += 1;
                        e.violations += 1;
                    }
                }
            };
            count(0, false);
            if !overlaps(p, size, &no_write) {
                count(1, true);
            }
        }
    }
    // MMIO: nothing of the probe VM's is there, so every access is a violation.
    let mut addr = 0xc000_0800u64;
    while addr + 8 <= 0xfec0_0000 {
        e.accesses[2] += 4;
        e.accesses[3] += 4;
        addr += mmio_stride;
    }
    e.denied[2] = e.accesses[2];
    e.denied[3] = e.accesses[3];
    e.violations += e.accesses[2] + e.accesses[3];
    e
}

fn field(run: &Run, key: &str) -> u64 {
    run.field("probe| hearth-guest: probe ports=", key)
        .unwrap_or_else(|| panic!("no {key}= in the probe's report:\n{}", run.stdout))
        .parse()
        .unwrap_or_else(|e| panic!("{key}: {e}"))
}

fn vm_stats<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["vms"]
        .as_array()
        .expect("vms")
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no VM {name} in {stats}"))
}

fn run_with_stats(name: &str, on_violation: &str) -> (Run, Value) {
    let dir = scratch_dir(name);
    let config = monitor_file(&dir, on_violation);
    let stats = dir.join("stats.json");
    let stats_arg = stats.to_string_lossy().into_owned();
    let run = run_hearth(
        &["run", "--config", &config, "--stats-file", &stats_arg],
        DEADLINE,
    );
    run.assert_no_panic();
    let text = std::fs::read_to_string(&stats).expect("the stats file is written at the end");
    (
        run,
        serde_json::from_str(&text).expect("the stats file is JSON"),
    )
}

#[test]
fn every_access_outside_the_acl_is_refused_and_counted() {
    let (run, stats) = run_with_stats("verifier-count", "log");
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);

    // Its own devices work: the serial port carried the whole report.
    assert!(
        run.stdout.contains("probe| hearth-guest: PROBE DONE"),
        "{}",
        run.stdout
    );
    // The neighbour ran on.
    assert!(
        run.stdout.contains("spin| hearth-guest: SPIN DONE"),
        "{}",
        run.stdout
    );

    let e = expected(257, 0x100_0000);
    // The model is what the guest did...
    assert_eq!(field(&run, "port_reads"), e.accesses[0]);
    assert_eq!(field(&run, "port_writes"), e.accesses[1]);
    assert_eq!(field(&run, "mmio_reads"), e.accesses[2]);
    assert_eq!(field(&run, "mmio_writes"), e.accesses[3]);
    // ...every refused read returned all ones...
    assert!(
        field(&run, "reads_all_ones") >= e.denied[0] + e.denied[2],
        "{e:?}\n{}",
        run.stdout
    );
    assert_eq!(field(&run, "mmio_all_ones"), e.accesses[2]);

    // ...and the verifier counted exactly what the ACL refuses.
    let acl = &vm_stats(&stats, "probe")["acl"];
    let denied = [
        acl["denied"]["pio_read"].as_u64(),
        acl["denied"]["pio_write"].as_u64(),
        acl["denied"]["mmio_read"].as_u64(),
        acl["denied"]["mmio_write"].as_u64(),
    ];
    assert_eq!(denied, e.denied.map(Some), "{acl:#}");
    assert_eq!(acl["violations"].as_u64(), Some(e.violations), "{acl:#}");
    let rule = |label: &str| {
        acl["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .find(|r| r["rule"] == label)
            .unwrap_or_else(|| panic!("no rule {label} in {acl:#}"))
            .clone()
    };
    // 1-byte writes to 0x80 (walk + list) passed; PCI config was refused quietly.
    assert_eq!(rule("rules[1]")["pio_write"], 1);
    assert_eq!(rule("rules[2]")["pio_read"], 6);
    assert_eq!(rule("rules[2]")["pio_write"], 6);
    assert!(rule("device serial0")["pio_write"].as_u64() > Some(100));
    // The neighbour has the default ACL and touched only its devices.
    let spin = &vm_stats(&stats, "spin")["acl"];
    assert_eq!(spin["denied_total"], 0, "{spin:#}");

    // The end-of-run summary says it too, and the log was rate-limited.
    let summary = run
        .stderr
        .lines()
        .find(|l| l.contains("probe: ran"))
        .expect("a summary for the probe VM");
    assert!(
        summary.contains(&format!(
            "acl denied: {} pio-in, {} pio-out, {} mmio-read, {} mmio-write, {} violations",
            e.denied[0], e.denied[1], e.denied[2], e.denied[3], e.violations
        )),
        "{summary}"
    );
    let logged = run
        .stderr
        .lines()
        .filter(|l| l.contains("probe: access violation #"))
        .count() as u64;
    assert!(logged >= 5 && logged < e.violations / 2, "{logged} lines");
    assert!(acl["log_suppressed"].as_u64() >= Some(e.violations - logged));
}

#[test]
fn stop_vm_after_100_violations_stops_the_probe_vm_alone() {
    let (run, stats) = run_with_stats("verifier-stop", "stop-vm-after 100");
    assert_eq!(run.code(), Some(3), "a guest failed: {}", run.stderr);
    assert!(
        !run.stdout.contains("probe| hearth-guest: PROBE DONE"),
        "{}",
        run.stdout
    );
    let summary = run
        .stderr
        .lines()
        .find(|l| l.contains("probe: ran"))
        .expect("a summary for the probe VM");
    assert!(
        summary.contains("stopped by the access verifier after 100 violation(s); the last: "),
        "{summary}"
    );
    let acl = &vm_stats(&stats, "probe")["acl"];
    assert_eq!(acl["violations"], 100, "{acl:#}");

    assert!(
        run.stdout.contains("spin| hearth-guest: SPIN DONE"),
        "{}",
        run.stdout
    );
    let spin = run
        .stderr
        .lines()
        .find(|l| l.contains("spin: ran"))
        .expect("a summary for spin");
    assert!(spin.contains("ended: guest reset"), "{spin}");
}

/// A virtio queue's doorbell is served by an ioeventfd, which the verifier
/// never sees: so it is registered only where the ACL allows the write.
/// A VM whose ACL denies writes to its disk's QueueNotify register has
/// every doorbell exit to the verifier, refused and counted, and the disk
/// is never served; the same VM without that rule writes its disk through
/// the ioeventfd, and its device counts the notifications.
#[test]
fn a_doorbell_the_acl_denies_exits_to_the_verifier() {
    let dir = scratch_dir("verifier-doorbell");
    let elf = guest_elf();
    let mut vms = Vec::new();
    for (name, rules) in [
        ("open", "[]"),
        // blk0 is the first virtio-mmio window (no balloon): QueueNotify
        // at its base + 0x50.
        (
            "shut",
            r#"[{"mmio": "0xd0000050-0xd0000053", "access": ["write"], "action": "deny"}]"#,
        ),
    ] {
        let disk = dir.join(format!("{name}.img"));
        std::fs::File::create(&disk)
            .and_then(|f| f.set_len(1 << 20))
            .expect("disk image");
        vms.push(format!(
            r#"{{"name": "{name}", "kernel": {{"path": "{elf}", "cmdline": "hearth.scenario=blk-write"}},
                "memory": {{"size_mib": 64}}, "serial": {TERMINAL},
                "drives": [{{"id": "d", "path": "{}"}}],
                "acl": {{"rules": {rules}}}}}"#,
            disk.display()
        ));
    }
    let config = write_file(
        &dir,
        "monitor.json",
        &format!(r#"{{"host": {{}}, "vms": [{}]}}"#, vms.join(",")),
    );
    let stats = dir.join("stats.json");
    let stats_arg = stats.to_string_lossy().into_owned();
    let run = run_hearth(
        &["run", "--config", &config, "--stats-file", &stats_arg],
        DEADLINE,
    );
    run.assert_no_panic();
    let stats: Value = serde_json::from_str(
        &std::fs::read_to_string(&stats).expect("the stats file is written at the end"),
    )
    .expect("the stats file is JSON");
    let out = &run.stdout;
    assert!(
        out.contains("open| hearth-guest: BLK-WRITE dev=0 start=0 sectors=8 seed=0x0 status=ok"),
        "{out}\n{}",
        run.stderr
    );
    assert!(
        out.contains("shut| hearth-guest: BLK-WRITE")
            && !out.contains(
                "shut| hearth-guest: BLK-WRITE dev=0 start=0 sectors=8 seed=0x0 status=ok"
            ),
        "the shut VM's disk was served:\n{out}"
    );
    let drive = |vm: &str| vm_stats(&stats, vm)["io"]["drives"][0].clone();
    let (open, shut) = (drive("open"), drive("shut"));
    assert!(open["notifications"].as_u64() >= Some(1), "{open}");
    assert!(open["write_bytes"].as_u64() >= Some(4096), "{open}");
    assert_eq!(shut["notifications"], 0, "{shut}");
    assert_eq!(shut["write_bytes"], 0, "{shut}");
    let rule = vm_stats(&stats, "shut")["acl"]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| r["rule"] == "rules[0]")
        .cloned()
        .expect("the doorbell rule's counters");
    assert!(rule["mmio_write"].as_u64() >= Some(1), "{rule}");
}
