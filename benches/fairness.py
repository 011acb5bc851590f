#!/usr/bin/python3
"""Proportional-share benchmark: three VMs running the test guest's `spin`
scenario with CPU weights 1:2:5 (100, 200, 500), every vCPU confined to one
host CPU, for 10 s. Hearth rewrites its statistics file every second; this
script reads it once per window and reports, per 1 s window, each VM's share
against its entitlement w_i / sum(w), the relative error, Jain's fairness
index over the normalised shares, and the scheduler's own CPU cost. It writes
docs/scheduler-shares.png (share over time) and prints a Markdown table.

    cargo build --release && benches/fairness.py [--seconds 10] [--compare]   (Debian python3 + python3-matplotlib)
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
    args = ap.parse_args()

    hearth = os.path.join(ROOT, "target/release/hearth")
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
