//! Elastic memory, end to end: the test guest's balloon driver against
//! Hearth's virtio-balloon (inflate, deflate, statistics, malformed
//! chains), the ballooning allocator under a budget, and Linux's own
//! virtio_balloon driver probing the device. Host memory is measured as
//! the monitor's VmRSS while it runs.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::live::Live;
use common::*;
use serde_json::Value;

const MIB_KIB: u64 = 1024;

/// Starts `hearth run --config CONFIG --stats-file STATS`.
fn spawn(config: &str, stats: &Path, deadline: Duration) -> Live {
    let stats = stats.to_str().expect("UTF-8 path");
    Live::spawn(
        &["run", "--config", config, "--stats-file", stats],
        deadline,
    )
}

fn read_stats(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn vm_stats<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["vms"]
        .as_array()
        .and_then(|vms| vms.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no VM {name} in {stats}"))
}

fn guest_vm(name: &str, cmdline: &str, memory: &str) -> String {
    format!(
        r#"{{"name": "{name}", "kernel": {{"path": "{}", "cmdline": "{cmdline}"}},
            "memory": {memory}, "serial": {{"output": "stdout", "stdin": false}}}}"#,
        guest_elf()
    )
}

#[test]
fn an_inflated_balloon_gives_its_pages_back_to_the_host_and_deflating_returns_them() {
    let dir = scratch_dir("balloon-rss");
    let stats = dir.join("stats.json");
    // All 512 MiB backed at start; a fixed balloon of 256 MiB; the guest
    // then grows its own use to 400 MiB, into the balloon, deflating it.
    let config = write_file(
        &dir,
        "vm.json",
        &guest_vm(
            "g",
            "hearth.scenario=mem-grow hearth.mem_start_mib=16 hearth.mem_step_mib=64 \
             hearth.mem_max_mib=400 hearth.mem_step_iters=2000000",
            r#"{"size_mib": 512, "balloon_mib": 256, "prefault": true, "free_page_reporting": false}"#,
        ),
    );
    let mut live = spawn(&config, &stats, Duration::from_secs(120));
    let mut peak = 0;
    let inflated = "balloon target=65536 actual=65536";
    live.wait_until(
        inflated,
        |l| l.has(inflated),
        |l| peak = peak.max(l.rss_kib().unwrap_or(0)),
    );
    let t0 = Instant::now();
    let inflate_seen = live.elapsed();
    let mut low = u64::MAX;
    live.wait_until(
        "RSS to settle after the inflation",
        |_| t0.elapsed() > Duration::from_millis(500),
        |l| low = low.min(l.rss_kib().unwrap_or(u64::MAX)),
    );
    live.wait_until("mem used_mib=400", |l| l.has("mem used_mib=400"), |_| {});
    std::thread::sleep(Duration::from_millis(300));
    let after_deflate = live.rss_kib().unwrap_or(0);
    let s = read_stats(&stats).expect("a stats file");
    let (status, out, err) = live.finish(true);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{err}");

    let drop = peak.saturating_sub(low);
    eprintln!(
        "RSS: peak {peak} KiB, after inflating 256 MiB {low} KiB: drop {drop} KiB ({:.1} % of 256 MiB), \
         inflated by {inflate_seen:?}; after the guest deflated and used them: {after_deflate} KiB",
        drop as f64 * 100.0 / (256 * MIB_KIB) as f64
    );
    assert!(
        peak >= 500 * MIB_KIB,
        "prefault backs all 512 MiB: peak {peak} KiB"
    );
    assert!(
        drop * 10 >= 256 * MIB_KIB * 9,
        "RSS fell by {drop} KiB, less than 90 % of 256 MiB\n{out}"
    );
    // Deflate: the guest took pages back from the balloon and used them.
    assert!(out.contains("balloon deflate-on-oom pages="), "{out}");
    let g = &vm_stats(&s, "g")["memory"];
    assert!(g["inflated_pages"].as_u64() >= Some(65536), "{g}");
    assert!(g["deflated_pages"].as_u64() > Some(0), "{g}");
    assert!(g["stats_updates"].as_u64() > Some(0), "{g}");
    assert_eq!(g["needs_reset"], false, "{g}");
    assert!(
        after_deflate >= low + 100 * MIB_KIB,
        "deflated pages come back when touched: {low} -> {after_deflate} KiB"
    );
}

/// Two 512 MiB VMs (floors 64) under a 640 MiB budget: "grow" grows to
/// 320 MiB in 64 MiB steps, "idle" stays idle.
fn grow_and_idle(dir: &std::path::Path) -> String {
    let memory = r#"{"size_mib": 512, "floor_mib": 64}"#;
    write_file(
        dir,
        "monitor.json",
        &format!(
            r#"{{"host": {{"memory": {{"budget_mib": 640, "tick_ms": 500}}}}, "vms": [{}, {}]}}"#,
            guest_vm(
                "grow",
                "hearth.scenario=mem-grow hearth.mem_start_mib=16 hearth.mem_step_mib=64 \
                 hearth.mem_max_mib=320 hearth.mem_step_iters=2000000",
                memory
            ),
            guest_vm("idle", "hearth.scenario=mem-idle", memory),
        ),
    )
}

#[test]
fn under_a_budget_a_growing_vm_takes_memory_from_an_idle_one() {
    let dir = scratch_dir("balloon-budget");
    let stats = dir.join("stats.json");
    let config = grow_and_idle(&dir);
    let mut live = spawn(&config, &stats, Duration::from_secs(120));
    let mut min_idle = u64::MAX;
    // Balloons start empty (1024 MiB against a budget of 640): once the
    // targets are inside the budget they must stay there.
    let mut within = false;
    let mut max_total = 0;
    let mut sample = |_: &Live| {
        if let Some(s) = read_stats(&stats) {
            let g = &vm_stats(&s, "grow")["memory"];
            let i = &vm_stats(&s, "idle")["memory"];
            if let (Some(gt), Some(it)) = (g["target_mib"].as_u64(), i["target_mib"].as_u64()) {
                within |= gt + it <= 640;
                if within {
                    max_total = max_total.max(gt + it);
                }
                min_idle = min_idle.min(it);
            }
        }
    };
    live.wait_until(
        "grow| hearth-guest: mem used_mib=320",
        |l| l.has("grow| hearth-guest: mem used_mib=320"),
        &mut sample,
    );
    let grown_at = read_stats(&stats).map_or(0, |s| s["memory"]["ticks"].as_u64().unwrap_or(0));
    // Demand = 320 + 10 % = 352 MiB: the allocator gives it at least that.
    let mut ticks = 0;
    live.wait_until(
        "the growing VM's target to reach its demand",
        |_| {
            read_stats(&stats).is_some_and(|s| {
                let g = &vm_stats(&s, "grow")["memory"];
                ticks = s["memory"]["ticks"]
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_sub(grown_at);
                g["target_mib"].as_u64() >= Some(352)
                    && g["balloon_actual_mib"].as_u64() <= Some(512 - 352)
            })
        },
        &mut sample,
    );
    let s = read_stats(&stats).expect("stats");
    let (status, out, err) = live.finish(true);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{err}");
    let g = &vm_stats(&s, "grow")["memory"];
    let i = &vm_stats(&s, "idle")["memory"];
    eprintln!("converged {ticks} ticks after the growth; grow {g}; idle {i}");
    assert!(ticks <= 6, "took {ticks} ticks of 500 ms");
    assert!(
        min_idle >= 64,
        "the idle VM went below its floor: {min_idle}"
    );
    assert!(
        within && max_total <= 640,
        "targets exceeded the budget: {max_total}"
    );
    assert!(
        i["balloon_actual_mib"].as_u64() >= Some(100),
        "the idle VM gave memory: {i}"
    );
    for vm in ["grow", "idle"] {
        assert_eq!(
            vm_stats(&s, vm)["state"],
            "running",
            "{vm} was not killed\n{out}"
        );
    }
}

#[test]
fn malformed_descriptors_need_reset_and_the_monitor_and_other_vms_run_on() {
    let dir = scratch_dir("balloon-bad");
    let stats = dir.join("stats.json");
    let memory = r#"{"size_mib": 64, "balloon": true}"#;
    let kinds = ["oob", "loop", "len", "dir"];
    let mut vms: Vec<String> = kinds
        .iter()
        .map(|k| {
            guest_vm(
                &format!("bad-{k}"),
                &format!("hearth.scenario=bad-virtio hearth.bad={k}"),
                memory,
            )
        })
        .collect();
    vms.push(guest_vm(
        "good",
        "hearth.scenario=balloon",
        r#"{"size_mib": 64, "balloon_mib": 16}"#,
    ));
    let config = write_file(
        &dir,
        "monitor.json",
        &format!(r#"{{"host": {{}}, "vms": [{}]}}"#, vms.join(",")),
    );
    let mut live = spawn(&config, &stats, Duration::from_secs(120));
    live.wait_until(
        "every bad guest to see NEEDS_RESET and the good one to fill its balloon",
        |l| {
            l.count("NEEDS_RESET seen") >= kinds.len()
                && l.has("good| hearth-guest: balloon target=4096 actual=4096")
        },
        |_| {},
    );
    std::thread::sleep(Duration::from_millis(1200));
    let s = read_stats(&stats).expect("stats");
    let (status, out, err) = live.finish(true);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{err}");
    assert!(!out.contains("NEEDS_RESET not seen"), "{out}");
    for k in kinds {
        let m = &vm_stats(&s, &format!("bad-{k}"))["memory"];
        assert_eq!(m["needs_reset"], true, "bad-{k}: {m}");
        assert_eq!(m["inflated_pages"], 0, "bad-{k}: nothing was acted on: {m}");
        assert_eq!(vm_stats(&s, &format!("bad-{k}"))["state"], "running");
    }
    let good = &vm_stats(&s, "good")["memory"];
    assert_eq!(good["needs_reset"], false, "{good}");
    assert_eq!(good["inflated_pages"], 4096, "{good}");
}

#[test]
fn linux_probes_the_balloon_inflates_it_and_sends_statistics() {
    let kit = linux_kit();
    let dir = scratch_dir("balloon-linux");
    let stats = dir.join("stats.json");
    let cmdline = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/resources/linux/cmdline.txt"
    ))
    .expect("cmdline.txt");
    let config = write_file(
        &dir,
        "vm.json",
        &format!(
            r#"{{"name": "linux", "kernel": {{"path": "{}", "initrd": "{}", "cmdline": "{}"}},
                "memory": {{"size_mib": 256, "balloon_mib": 32}}, "serial": {{"output": "stdout", "stdin": false}}}}"#,
            kit.join("vmlinux").display(),
            kit.join("initramfs.cpio").display(),
            cmdline.trim()
        ),
    );
    let run = run_hearth(
        &[
            "run",
            "--config",
            &config,
            "--stats-file",
            stats.to_str().expect("utf-8"),
        ],
        Duration::from_secs(600),
    );
    run.assert_no_panic();
    assert!(
        run.stdout.contains(
            "virtio-mmio: Registering device virtio-mmio.0 at 0xd0000000-0xd0000fff, IRQ 5."
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("Run /init as init process"),
        "{}",
        run.stdout
    );
    for bad in [
        "virtio_balloon: probe",
        "virtio-mmio: probe of",
        "Wrong magic",
        "not supported",
    ] {
        assert!(!run.stdout.contains(bad), "{bad}:\n{}", run.stdout);
    }
    let s = read_stats(&stats).expect("stats");
    let m = &vm_stats(&s, "linux")["memory"];
    eprintln!("Linux balloon: {m}");
    // The guest resets soon after "Run /init" here (its user space cannot
    // run), possibly before the balloon is full on a loaded machine.
    let actual = m["balloon_actual_mib"].as_u64().unwrap_or(0);
    assert!((8..=32).contains(&actual), "{m}");
    // The guest writes `actual` after the host has taken each batch of up
    // to 256 pages (1 MiB): a reset between the two leaves the host one
    // batch ahead (seen once in CI: 23 MiB inflated, 22 reported).
    let inflated = m["inflated_pages"].as_u64().unwrap_or(0) / 256;
    assert!(
        (actual..=actual + 1).contains(&inflated),
        "inflated {inflated} MiB against {actual} reported: {m}"
    );
    assert!(m["stats_updates"].as_u64() > Some(0), "{m}");
    assert!(m["guest_total_mib"].as_u64() > Some(200), "{m}");
    assert_eq!(m["needs_reset"], false, "{m}");
}

/// A VM stops while another grows under a budget: the stopped VM's share
/// goes to the other only once its memory is gone, so the monitor's RSS
/// stays within the budget all along.
#[test]
fn a_stopped_vms_budget_is_released_only_with_its_memory() {
    let dir = scratch_dir("balloon-release");
    let stats = dir.join("stats.json");
    let socket = dir.join("api.sock");
    const BUDGET: u64 = 448;
    let memory = r#"{"size_mib": 320, "floor_mib": 32}"#;
    let config = write_file(
        &dir,
        "monitor.json",
        &format!(
            r#"{{"host": {{"memory": {{"budget_mib": {BUDGET}, "tick_ms": 200}},
                          "api": {{"socket": "{}"}}}}, "vms": [{}, {}]}}"#,
            socket.display(),
            guest_vm(
                "holder",
                "hearth.scenario=mem-idle hearth.mem_start_mib=192",
                memory
            ),
            guest_vm(
                "grow",
                "hearth.scenario=mem-grow hearth.mem_start_mib=16 hearth.mem_step_mib=64 \
                 hearth.mem_max_mib=272 hearth.mem_step_iters=2500000",
                memory
            ),
        ),
    );
    let mut live = spawn(&config, &stats, Duration::from_secs(120));
    let mut max_rss = 0;
    let mut sample = |l: &Live| max_rss = max_rss.max(l.rss_kib().unwrap_or(0));
    live.wait_until(
        "holder to use its 192 MiB",
        |l| l.has("holder| hearth-guest: mem used_mib=192"),
        &mut sample,
    );
    let out = std::process::Command::new(hearth())
        .arg("ctl")
        .arg(&socket)
        .args(["stop", "holder"])
        .output()
        .expect("hearth ctl");
    assert!(out.status.success(), "{out:?}");
    live.wait_until(
        "grow to reach 272 MiB",
        |l| l.has("grow| hearth-guest: mem used_mib=272"),
        &mut sample,
    );
    // A few more ticks of the grown VM.
    let settle = Instant::now();
    live.wait_until(
        "a second more",
        |_| settle.elapsed() > Duration::from_secs(1),
        &mut sample,
    );
    let (status, serial, err) = live.finish(true);
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{err}");
    // Guest RAM within the budget, plus what the monitor itself holds.
    let limit = (BUDGET + 16) * 1024;
    assert!(
        max_rss <= limit,
        "the monitor's RSS reached {max_rss} KiB, over the budget of {BUDGET} MiB\n{serial}\n{err}"
    );
    assert!(
        max_rss > 272 * 1024,
        "the grown VM's memory is resident: {max_rss} KiB"
    );
}
