//! The minimal Linux guest (resources/linux) booted from the CLI to
//! "Run /init": what a user checks in its boot log, and that hearth exits 0
//! after the kernel resets through the i8042.
//!
//! Needs the guest kit (`resources/linux/build-kit.sh`, which the test
//! command runs first); the kit's location is HEARTH_KIT_DIR or
//! /var/cache/hearth/kit. Guest kernel code is emulated on the CI machines'
//! KVM, so a boot takes about a minute there: the deadline is generous, and a
//! hung guest still fails the test instead of hanging CI.

mod common;

use std::time::Duration;

use common::*;

const DEADLINE: Duration = Duration::from_secs(600);

/// "Memory: 240820K/261752K available": the total, in KiB.
fn linux_total_memory_kib(log: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains("] Memory: "))?;
    let total = line.split('/').nth(1)?.split('K').next()?;
    total.parse().ok()
}

#[test]
fn linux_boots_to_init_with_two_cpus_and_exits_zero_on_reset() {
    let kit = linux_kit();
    let token = format!("hearth.test_token={}", std::process::id());
    let cmdline = format!("{} {token}", linux_cmdline());
    let vmlinux = kit.join("vmlinux");
    let initrd = kit.join("initramfs.cpio");
    let run = run_hearth(
        &[
            "run",
            "--kernel",
            vmlinux.to_str().expect("utf-8 path"),
            "--initrd",
            initrd.to_str().expect("utf-8 path"),
            "--cmdline",
            &cmdline,
            "--vcpus",
            "2",
            "--memory",
            "256",
        ],
        DEADLINE,
    );
    run.assert_no_panic();
    let log = &run.stdout;
    assert!(
        log.contains("Run /init as init process"),
        "Linux did not reach init:\n{log}\n{}",
        run.stderr
    );
    assert!(
        log.contains("smp: Brought up 1 node, 2 CPUs"),
        "both CPUs should come up:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("Kernel command line:") && l.contains(&token)),
        "the command line should arrive whole:\n{log}"
    );
    // 256 MiB less the 385 KiB hole below 1 MiB and the pages Linux keeps for itself.
    let total = linux_total_memory_kib(log).expect("Linux prints its memory size");
    assert!(
        (250 * 1024..=256 * 1024).contains(&total),
        "Linux should see about 256 MiB, saw {total} KiB"
    );
    assert_eq!(
        run.code(),
        Some(0),
        "hearth should exit 0 after the guest's reset:\n{}",
        run.stderr
    );
    assert!(run.stderr.contains("ended: guest reset"), "{}", run.stderr);
}
