#!/usr/bin/python3
"""Starts and stops of N VMs in one Hearth monitor, round after round: how
long each start and each stop took, and whether the event loop missed
ticks. For A/B runs of builds (or of the scheduler on and off) alternated
in the same minutes.

    benches/start_many.py [--n 200] [--rounds 6] [--scenario spin]
                          [--memory 128] [--cpus 0] [--settle 3]
                          [--variant NAME=PATH[,noscheduler] ...]

Each round starts every variant once, in turn: `hearth serve --config F
--stats-file S --api-socket A` with N test guests in F, on host CPU(s)
--cpus (the script runs on the others). It times the start from the spawn
until every VM printed its first guest line, waits --settle seconds, reads
the monitor's /proc/PID/smaps_rollup and smaps as benches/density.py does,
waits for the next statistics file, and takes from it the scheduler's
ticks, missed ticks and tick lateness; then SIGTERM, and times the stop
until the process has exited. `noscheduler` sets
`host.cpu.scheduler` to false (no ticks: no missed ticks either).

Without --variant, the one variant is this tree's release build (built
here). Prints one line per round, then per variant: the start's and the
stop's median (min–max), the starts and stops slower than 1.25 times the
median of all, and the rounds with missed ticks.
"""

import argparse
import glob
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def guest_elf():
    elfs = glob.glob(os.path.join(ROOT, "target/release/build/hearth-*/out/hearth-guest.elf"))
    if not elfs:
        sys.exit("no test guest: run `cargo build --release` first")
    return max(elfs, key=os.path.getmtime)


def start(binary, noscheduler, args, elf, tmp):
    """One round: (seconds to all up or None, seconds to stop, statistics'
    scheduler part)."""
    vms = [{"name": f"vm{i}",
            "kernel": {"path": elf, "cmdline": f"hearth.scenario={args.scenario}"},
            "memory": {"size_mib": args.memory}} for i in range(args.n)]
    cpu = {"cpus": args.cpus}
    if noscheduler:
        cpu["scheduler"] = False
    cfg, stats = os.path.join(tmp, "m.json"), os.path.join(tmp, "s.json")
    with open(cfg, "w") as f:
        json.dump({"host": {"cpu": cpu}, "vms": vms}, f)
    t0 = time.monotonic()
    p = subprocess.Popen([binary, "serve", "--config", cfg, "--stats-file", stats,
                          "--api-socket", os.path.join(tmp, "a.sock")],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         preexec_fn=lambda: os.sched_setaffinity(0, set(args.cpus)))
    up, took = set(), None
    deadline = t0 + args.timeout
    try:
        for line in p.stdout:
            m = re.match(rb"(vm\d+)\| hearth-guest:", line)
            if m:
                up.add(m.group(1))
            if len(up) == args.n:
                took = time.monotonic() - t0
                break
            if time.monotonic() > deadline:
                break
        time.sleep(args.settle)
        for name in ("smaps_rollup", "smaps"):
            with open(f"/proc/{p.pid}/{name}") as f:
                f.read()
        written = os.path.getmtime(stats) if os.path.exists(stats) else 0
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if os.path.exists(stats) and os.path.getmtime(stats) > written:
                break
        time.sleep(0.05)
        with open(stats) as f:
            sched = json.load(f)["scheduler"]
    finally:
        t1 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        p.stdout.read()
        p.wait()
        stopped = time.monotonic() - t1
    return took, stopped, sched


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--scenario", default="spin", choices=("spin", "idle"))
    ap.add_argument("--memory", type=int, default=128)
    ap.add_argument("--cpus", default="0")
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=PATH[,noscheduler]")
    args = ap.parse_args()
    args.cpus = [int(c) for c in args.cpus.split(",")]
    variants = []
    for v in args.variant:
        name, _, rest = v.partition("=")
        path, _, opt = rest.partition(",")
        variants.append((name, os.path.abspath(path), opt == "noscheduler"))
    if not variants:
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
        variants = [("hearth", os.path.join(ROOT, "target/release/hearth"), False)]
    others = [c for c in range(os.cpu_count()) if c not in args.cpus]
    if others:
        os.sched_setaffinity(0, others)
    elf = guest_elf()
    results = {name: [] for name, _, _ in variants}
    for r in range(args.rounds):
        k = r % len(variants)
        for name, path, nosched in variants[k:] + variants[:k]:
            with tempfile.TemporaryDirectory(prefix="start-many-") as tmp:
                took, stopped, sched = start(path, nosched, args, elf, tmp)
            results[name].append((took, stopped, sched))
            late = sched.get("tick_late_us") or {}
            print(f"round {r + 1} {name}: start "
                  + ("n/a" if took is None else f"{took:.3f} s")
                  + f", stop {stopped:.3f} s, missed {sched.get('missed_ticks')} of {sched.get('ticks')} ticks,"
                  f" lateness max {late.get('max')} µs", flush=True)

    def summary(i, what):
        all_ = [r[i] for rs in results.values() for r in rs if r[i] is not None]
        slow = 1.25 * statistics.median(all_) if all_ else 0
        print(f"\n{what}: slow means over {slow:.3f} s (1.25 x the median of all)")
        return slow

    print(f"\n{args.n} {args.scenario} guests of {args.memory} MiB on CPU(s) {args.cpus},"
          f" {args.rounds} rounds")
    slow_start, slow_stop = summary(0, "start"), summary(1, "stop")
    print("| variant | start (s): median (min–max) | slow starts"
          " | stop (s): median (min–max) | slow stops | rounds with missed ticks |")
    print("|---|---|---|---|---|---|")
    for name, rs in results.items():
        cells = []
        for i, slow in ((0, slow_start), (1, slow_stop)):
            ts = [r[i] for r in rs if r[i] is not None]
            cells.append(f"{statistics.median(ts):.3f} ({min(ts):.3f}–{max(ts):.3f})"
                         if ts else "n/a")
            cells.append(f"{sum(1 for r in rs if r[i] is None or r[i] > slow)} of {len(rs)}")
        n_missed = sum(1 for r in rs if r[2].get("missed_ticks"))
        print(f"| {name} | " + " | ".join(cells) + f" | {n_missed} of {len(rs)} |")


if __name__ == "__main__":
    main()
