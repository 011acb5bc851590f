#!/usr/bin/env python3
"""Reclaim throughput of the virtio-balloon: MiB per second from the inflate
request to the host RSS drop.

A VM of SIZE MiB with all its RAM backed (`memory.prefault`) runs the test
guest's `balloon` scenario against a fixed balloon of BALLOON MiB. The
request is the moment the guest reports its balloon pool (it reads the
target right after); the drop is complete when the monitor's VmRSS has
fallen by 95 % of BALLOON. Sampled every 2 ms from /proc/PID/status.

Usage (after `cargo build --release`):
    benches/reclaim.py [--runs 3] [--size 512] [--balloon 256]
"""

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find(pattern):
    hits = sorted(glob.glob(os.path.join(ROOT, pattern)), key=os.path.getmtime)
    if not hits:
        sys.exit(f"not found: {pattern} (run cargo build --release first)")
    return hits[-1]


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def run_once(hearth, guest, size, balloon):
    vm = {
        "name": "bench",
        "kernel": {"path": guest, "cmdline": "hearth.scenario=balloon"},
        "memory": {"size_mib": size, "balloon_mib": balloon, "prefault": True,
                   "free_page_reporting": False},
        "serial": {"output": "stdout", "stdin": False},
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(vm, f)
        config = f.name
    proc = subprocess.Popen([hearth, "run", "--config", config],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    events = {}

    def read():
        for line in proc.stdout:
            now = time.monotonic()
            if "balloon pool=" in line:
                events.setdefault("request", now)
            if f"actual={balloon * 256}" in line:
                events.setdefault("guest_done", now)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    peak, done, deadline = 0, None, time.monotonic() + 120
    while time.monotonic() < deadline:
        r = rss_kib(proc.pid)
        now = time.monotonic()
        if r is None:
            break
        if "request" not in events:
            peak = max(peak, r)
        elif peak - r >= 0.95 * balloon * 1024:
            done = now
            break
        time.sleep(0.002)
    proc.terminate()
    proc.wait(timeout=30)
    os.unlink(config)
    if done is None or "request" not in events:
        return None
    return balloon / (done - events["request"]), done - events["request"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--balloon", type=int, default=256)
    args = ap.parse_args()
    hearth = os.path.join(ROOT, "target/release/hearth")
    guest = find("target/release/build/hearth-*/out/hearth-guest.elf")
    results = []
    for i in range(args.runs):
        r = run_once(hearth, guest, args.size, args.balloon)
        if r is None:
            print(f"run {i + 1}: no complete drop")
            continue
        print(f"run {i + 1}: {args.balloon} MiB in {r[1] * 1000:.0f} ms = {r[0]:.0f} MiB/s")
        results.append(r[0])
    if results:
        print(f"reclaim throughput: median {statistics.median(results):.0f} MiB/s "
              f"(min {min(results):.0f}, max {max(results):.0f}, {len(results)} runs)")


if __name__ == "__main__":
    main()
