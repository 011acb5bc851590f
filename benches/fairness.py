#!/usr/bin/python3
"""Proportional-share benchmark: three VMs running the test guest's `spin`
scenario with CPU weights 1:2:5 (100, 200, 500), every vCPU confined to one
host CPU, for 10 s. Hearth rewrites its statistics file every second; this
script reads it once per window and reports, per 1 s window, each VM's share
against its entitlement w_i / sum(w), the relative error, Jain's fairness
index over the normalised shares, and the scheduler's own CPU cost. It writes
docs/scheduler-shares.png (share over time) and prints a Markdown table.
With --caps it measures `cpu.max` instead: one spinning VM at a time on host
CPU 0 with caps 0.1, 0.3, 0.5 and 0.8, each VM's CPU use (its vCPU threads'
CPU clocks) over the whole run and over every 1 s window.

    cargo build --release && benches/fairness.py [--seconds 10] [--compare] [--caps]   (Debian python3 + python3-matplotlib)
"""
import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTS = {"w100": 100, "w200": 200, "w500": 500}


def guest_elf():
    paths = glob.glob(os.path.join(ROOT, "target/release/build/hearth-*/out/hearth-guest.elf"))
    if not paths:
        sys.exit("build first: cargo build --release")
    return max(paths, key=os.path.getmtime)


def config(elf):
    vms = [
        {
            "name": name,
            "kernel": {"path": elf, "cmdline": "hearth.scenario=spin hearth.spin_chunk=1000000"},
            "cpu": {"vcpus": 1, "weight": w},
            "memory": {"size_mib": 32},
            "serial": {"output": "off", "stdin": False},
        }
        for name, w in WEIGHTS.items()
    ]
    return {"host": {"cpu": {"cpus": [0], "tick_ms": 10}}, "vms": vms}


def run_pair(hearth, elf, vms, scheduler, seconds):
    """Runs `vms` [(name, vcpus, weight)] on host CPU 0 for `seconds` with the
    scheduler on or off; returns each VM's CPU seconds."""
    work = tempfile.mkdtemp(prefix="hearth-pair-")
    cfg = {
        "host": {"cpu": {"cpus": [0], "scheduler": scheduler}},
        "vms": [
            {
                "name": name,
                "kernel": {"path": elf, "cmdline": "hearth.scenario=spin hearth.spin_chunk=1000000"},
                "cpu": {"vcpus": vcpus, "weight": weight},
                "memory": {"size_mib": 32},
                "serial": {"output": "off", "stdin": False},
            }
            for name, vcpus, weight in vms
        ],
    }
    path = os.path.join(work, "monitor.json")
    stats_path = os.path.join(work, "stats.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    proc = subprocess.Popen([hearth, "run", "--config", path, "--stats-file", stats_path],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    final = read_stats(stats_path)
    return {v["name"]: v["cpu"]["used_ns"] / 1e9 for v in final["vms"]}


def compare(hearth, elf, seconds):
    """The same two-VM runs with Hearth's scheduler and with the host's alone."""
    cases = [
        ("weights 100:300, 1 vCPU each", [("a", 1, 100), ("b", 1, 300)], ("b", "a"), 3.0),
        ("4 vCPUs vs 1 vCPU, weights 100:100", [("a", 4, 100), ("b", 1, 100)], ("a", "b"), 1.0),
    ]
    print("| run (one host CPU) | entitled ratio | Hearth's scheduler | host scheduler alone |")
    print("|---|---|---|---|")
    for label, vms, (num, den), want in cases:
        on = run_pair(hearth, elf, vms, True, seconds)
        off = run_pair(hearth, elf, vms, False, seconds)
        print(f"| {label} | {want:.2f} | {on[num] / on[den]:.2f} ({on[num]:.2f} s / {on[den]:.2f} s) "
              f"| {off[num] / off[den]:.2f} ({off[num]:.2f} s / {off[den]:.2f} s) |")


def snapshots(stats_path, seconds):
    """Every distinct statistics snapshot (rewritten each second) for `seconds`."""
    seen = []
    deadline = time.time() + seconds
    while time.time() < deadline:
        time.sleep(0.05)
        s = read_stats(stats_path)
        if s is not None and (not seen or seen[-1]["elapsed_s"] != s["elapsed_s"]):
            seen.append(s)
    return seen


def caps(hearth, elf, seconds):
    """One VM spinning under each cap on host CPU 0: share of a CPU over the
    whole run (after the first snapshot) and the worst 1 s window."""
    print("| cpu.max | used (whole run) | error | 1 s windows: min .. max | highest window over the cap |")
    print("|---|---|---|---|---|")
    for cap in (0.1, 0.3, 0.5, 0.8):
        work = tempfile.mkdtemp(prefix="hearth-cap-")
        cfg = {
            "host": {"cpu": {"cpus": [0]}},
            "vms": [{
                "name": "capped",
                "kernel": {"path": elf, "cmdline": "hearth.scenario=spin hearth.spin_chunk=1000000"},
                "cpu": {"vcpus": 1, "max": cap},
                "memory": {"size_mib": 32},
                "serial": {"output": "off", "stdin": False},
            }],
        }
        path = os.path.join(work, "monitor.json")
        stats_path = os.path.join(work, "stats.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        proc = subprocess.Popen([hearth, "run", "--config", path, "--stats-file", stats_path],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        snaps = snapshots(stats_path, seconds)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        points = [(s["elapsed_s"], s["vms"][0]["cpu"]["used_ns"] / 1e9) for s in snaps[1:]]
        if len(points) < 2:
            print(f"| {cap} | too few snapshots | | | |")
            continue
        windows = [(c1 - c0) / (t1 - t0) for (t0, c0), (t1, c1) in zip(points, points[1:])]
        whole = (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])
        # Windows under the cap mean the shared machine gave the VM less
        # CPU than its cap; a window over it is the cap not holding.
        over = (max(windows) - cap) / cap
        print(f"| {cap} | {whole:.3f} | {(whole - cap) / cap:+.1%} | {min(windows):.3f} .. {max(windows):.3f} "
              f"| {over:+.1%} |")


def read_stats(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def jain(xs):
    s = sum(xs)
    q = sum(x * x for x in xs)
    return (s * s) / (len(xs) * q) if q else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--png", default=os.path.join(ROOT, "docs/scheduler-shares.png"))
    ap.add_argument("--compare", action="store_true",
                    help="also run two VMs with the scheduler on and off (host.cpu.scheduler)")
    ap.add_argument("--caps", action="store_true",
                    help="only measure cpu.max caps 0.1, 0.3, 0.5 and 0.8 (--seconds each)")
    ap.add_argument("--hearth", default=os.path.join(ROOT, "target/release/hearth"),
                    help="the hearth binary to measure")
    args = ap.parse_args()

    hearth = args.hearth
    if args.caps:
        caps(hearth, guest_elf(), args.seconds)
        return
    if args.compare:
        compare(hearth, guest_elf(), 5)
        print()
    work = tempfile.mkdtemp(prefix="hearth-fairness-")
    cfg = os.path.join(work, "monitor.json")
    stats_path = os.path.join(work, "stats.json")
    with open(cfg, "w") as f:
        json.dump(config(guest_elf()), f)

    proc = subprocess.Popen([hearth, "run", "--config", cfg, "--stats-file", stats_path],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    snapshots = []
    last_elapsed = None
    deadline = time.time() + args.seconds + 5
    while time.time() < deadline:
        time.sleep(0.1)
        s = read_stats(stats_path)
        if s is None or s["elapsed_s"] == last_elapsed:
            continue
        last_elapsed = s["elapsed_s"]
        snapshots.append(s)
        if len(snapshots) > args.seconds:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    final = read_stats(stats_path)

    total_w = sum(WEIGHTS.values())
    names = list(WEIGHTS)
    rows = []
    series = {n: [] for n in names}
    times = []
    for prev, cur in zip(snapshots, snapshots[1:]):
        dt = cur["elapsed_s"] - prev["elapsed_s"]
        used = {}
        for vp, vc in zip(prev["vms"], cur["vms"]):
            used[vc["name"]] = vc["cpu"]["used_ns"] - vp["cpu"]["used_ns"]
        tot = sum(used.values())
        if tot <= 0:
            continue
        shares = {n: used[n] / tot for n in names}
        ent = {n: WEIGHTS[n] / total_w for n in names}
        errs = {n: (shares[n] - ent[n]) / ent[n] for n in names}
        norm = [shares[n] / ent[n] for n in names]
        cost = (cur["scheduler"]["cost_ns"] - prev["scheduler"]["cost_ns"]) / (dt * 1e9)
        rows.append((cur["elapsed_s"], tot / (dt * 1e9), shares, errs, jain(norm), cost))
        times.append(cur["elapsed_s"])
        for n in names:
            series[n].append(shares[n])

    print("| window end (s) | CPU busy | " + " | ".join(f"{n} share (err)" for n in names)
          + " | Jain | scheduler CPU |")
    print("|---|---|" + "---|" * len(names) + "---|---|")
    for t, busy, shares, errs, j, cost in rows:
        cells = " | ".join(f"{shares[n]:.3f} ({errs[n]:+.1%})" for n in names)
        print(f"| {t:.1f} | {busy:.1%} | {cells} | {j:.4f} | {cost:.3%} |")
    if rows:
        worst = max(abs(r[3][n]) for r in rows for n in names)
        jmin = min(r[4] for r in rows)
        cost = sum(r[5] for r in rows) / len(rows)
        print(f"\nentitlements: " + ", ".join(f"{n} {WEIGHTS[n] / total_w:.3f}" for n in names))
        print(f"worst per-window error {worst:.2%}; lowest Jain index {jmin:.4f}; "
              f"scheduler cost {cost:.3%} of one CPU on average")
    if final:
        sched = final["scheduler"]
        print(f"scheduler: {sched['ticks']} ticks, {sched['cost_ns'] / max(sched['ticks'], 1) / 1e3:.1f} us per tick; "
              f"throttle events: " + ", ".join(f"{v['name']} {v['cpu']['throttle_events']}" for v in final["vms"]))

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for n in names:
            ax.plot(times, series[n], marker="o", label=f"{n} (weight {WEIGHTS[n]})")
            ax.axhline(WEIGHTS[n] / total_w, linestyle="--", linewidth=0.8, color=ax.lines[-1].get_color())
        ax.set_xlabel("time (s)")
        ax.set_ylabel("share of CPU in the 1 s window")
        ax.set_ylim(0, 0.8)
        ax.set_title("Hearth: three VMs on one CPU, weights 1:2:5 (dashed: entitlement)")
        ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        fig.savefig(args.png, dpi=110)
        print(f"plot: {os.path.relpath(args.png, ROOT)}")
    except ImportError:
        print("matplotlib missing (apt-get install python3-matplotlib): no plot")


if __name__ == "__main__":
    main()
