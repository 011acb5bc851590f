//! The quick guest (resources/guest-quick), which the density and growth
//! benches use as a guest that boots as fast as on hardware KVM: Hearth
//! boots it through each of its entries, in its spinning and its halting
//! build, and it prints exactly its one boot line.

mod common;

use std::time::Duration;

use common::live::Live;
use common::*;

const DEADLINE: Duration = Duration::from_secs(60);
const LINE: &str = "hearth-guest: quick";

fn boot(name: &str, elf: &str, protocol: &str) {
    let dir = scratch_dir(&format!("quick-{name}"));
    let config = write_file(
        &dir,
        "vm.json",
        &format!(
            r#"{{ "name": "{name}", "memory": {{ "size_mib": 64 }},
                  "kernel": {{ "path": "{elf}", "protocol": "{protocol}" }} }}"#
        ),
    );
    let mut live = Live::spawn(&["run", "--config", &config], DEADLINE);
    assert_eq!(live.wait_for(LINE), LINE);
    // It spins or halts for good: nothing more comes, and SIGTERM stops it.
    std::thread::sleep(Duration::from_millis(200));
    let (status, out, err) = live.finish(true);
    assert_eq!(out.trim(), LINE, "one line and nothing else");
    assert_eq!(status.code(), Some(143), "stopped by SIGTERM: {err}");
    assert!(err.contains("received SIGTERM"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn the_quick_guest_boots_through_pvh_and_the_linux_entry() {
    let spin = env!("HEARTH_QUICK_GUEST_ELF");
    let idle = env!("HEARTH_QUICK_IDLE_GUEST_ELF");
    boot("spin-pvh", spin, "pvh");
    boot("spin-linux", spin, "linux");
    boot("idle-pvh", idle, "pvh");
    boot("idle-linux", idle, "linux");
}
