#!/usr/bin/python3
"""Start and stop of N VMs in one `hearth run`, builds alternated.

    benches/start_stop.py [--count 200] [--rounds 10] [--memory 128]
                          [--scenario spin|idle] [--cpus 0] [--settle 0.5]
                          [--hearth NAME=PATH[,noscheduler] ...]
                          [--out target/start_stop]

Each round runs every build once (this tree's release build as "hearth",
plus every --hearth NAME=PATH), in turn, so drifting load hits them alike:

1. start: `hearth run --config F --stats-file S` with N test guests
   (`hearth.scenario=` --scenario, 1 vCPU, --memory MiB each,
   `host.cpu.cpus` = --cpus, `host.cpu.scheduler` false for a build
   given with `,noscheduler`; the process's affinity is set to --cpus
   too, the script runs on the other CPUs). From the spawn until all N
   have printed their boot line.
2. at that moment, the CPU each kind of thread has used so far
   (/proc/PID/task/*/schedstat): vCPUs, the event loop (the main thread), the
   output writer (`hearth-out`), the life-cycle workers still alive
   (`hearth-life`, those that ended are not counted).
3. after --settle s, the monitor's /proc/PID/smaps_rollup and smaps are
   read (as benches/density.py reads them), and the next statistics file
   gives the scheduler's ticks, missed ticks and tick lateness so far.
4. stop: SIGTERM until the process has exited.

Prints per build the median (min-max) of both times, how many starts and
stops took more than 1.25x the median of all (the slow starts of
performance.md, "Density"), the rounds with missed ticks and the median
CPU by thread kind; writes every round to OUT/results.json. The density
bench (density.py) compares VMMs; this one compares builds of Hearth,
with enough rounds at one N for the slow starts and stops to show.

Needs a release build (`cargo build --release`, run here).
"""

import argparse
import glob
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

import growth  # benches/growth.py: the threads' CPU by kind

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILDREN = []


def guest_elf():
    found = glob.glob(os.path.join(ROOT, "target/release/build/hearth-*/out/hearth-guest.elf"))
    if not found:
        sys.exit("start_stop: no test guest; run `cargo build --release` first")
    return max(found, key=os.path.getmtime)


def config(path, args, cpus, scheduler):
    elf = guest_elf()
    vms = [{"name": f"vm{i}",
            "kernel": {"path": elf, "cmdline": f"hearth.scenario={args.scenario}"},
            "memory": {"size_mib": args.memory}} for i in range(args.count)]
    cpu = {"cpus": cpus}
    if not scheduler:
        cpu["scheduler"] = False
    with open(path, "w") as f:
        json.dump({"host": {"cpu": cpu}, "vms": vms}, f)


def scheduler_stats(pid, path, timeout):
    """Reads the monitor's smaps as density.py does, then the scheduler's
    part of the next statistics file."""
    for name in ("smaps_rollup", "smaps"):
        with open(f"/proc/{pid}/{name}") as f:
            f.read()
    written = os.path.getmtime(path) if os.path.exists(path) else 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if os.path.exists(path) and os.path.getmtime(path) > written:
            break
    time.sleep(0.05)
    with open(path) as f:
        return json.load(f).get("scheduler", {})


def thread_cpu(pid):
    """CPU seconds used so far by each kind of thread of `pid`."""
    return growth.threads(pid)[0]


def trial(binary, cfg, count, cpus, settle, timeout):
    stats = cfg + ".stats.json"
    if os.path.exists(stats):
        os.remove(stats)
    t0 = time.monotonic()
    p = subprocess.Popen([binary, "run", "--config", cfg, "--stats-file", stats],
                         stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                         preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    CHILDREN.append(p)
    try:
        up = set()
        deadline = t0 + timeout
        for line in p.stdout:
            if b"hearth-guest:" in line:
                up.add(line.split(b"|")[0])
                if len(up) == count:
                    break
            if time.monotonic() > deadline:
                break
        start = time.monotonic() - t0
        if len(up) < count:
            raise RuntimeError(f"{binary}: {len(up)} of {count} VMs up after {timeout} s")
        cpu = thread_cpu(p.pid)
        threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
        time.sleep(settle)
        sched = scheduler_stats(p.pid, stats, timeout)
        # A blocking wait: `wait(timeout=...)` polls, in steps of up to 50 ms.
        killer = threading.Timer(timeout, p.kill)
        killer.start()
        t1 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        p.wait()
        stop = time.monotonic() - t1
        killer.cancel()
        late = sched.get("tick_late_us") or {}
        return {"start_s": start, "stop_s": stop, "cpu_s": cpu,
                "ticks": sched.get("ticks"), "missed_ticks": sched.get("missed_ticks"),
                "tick_late_max_us": late.get("max")}
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        CHILDREN.remove(p)


def summary(name, rows, slow_start, slow_stop):
    def med(xs):
        return f"{statistics.median(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})"
    starts = [r["start_s"] for r in rows]
    stops = [r["stop_s"] for r in rows]
    slow = sum(s > slow_start for s in starts)
    slow_stops = sum(s > slow_stop for s in stops)
    missed = sum(1 for r in rows if r.get("missed_ticks"))
    kinds = sorted({k for r in rows for k in r["cpu_s"]})
    cpu = ", ".join(f"{k} {statistics.median([r['cpu_s'].get(k, 0.0) for r in rows]):.3f}"
                    for k in kinds)
    return (f"{name}: start {med(starts)} s, stop {med(stops)} s, "
            f"slow starts (> {slow_start:.2f} s) {slow} of {len(rows)}, "
            f"slow stops (> {slow_stop:.3f} s) {slow_stops} of {len(rows)}, "
            f"rounds with missed ticks {missed} of {len(rows)}; "
            f"CPU at the last boot line, median s: {cpu}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--memory", type=int, default=128, help="MiB of guest RAM per VM")
    ap.add_argument("--scenario", default="spin", choices=("spin", "idle"))
    ap.add_argument("--cpus", default="0", help="host CPUs of the monitor, e.g. 0 or 0,1")
    ap.add_argument("--settle", type=float, default=0.5)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--hearth", action="append", default=[],
                    metavar="NAME=PATH[,noscheduler]")
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "start_stop"))
    args = ap.parse_args()

    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    builds = [("hearth", os.path.join(ROOT, "target/release/hearth"), True)]
    for spec in args.hearth:
        name, _, rest = spec.partition("=")
        path, _, opt = rest.partition(",")
        if not path or not os.access(path, os.X_OK) or opt not in ("", "noscheduler"):
            sys.exit(f"start_stop: --hearth {spec!r}: want NAME=PATH of an executable"
                     ", optionally followed by ,noscheduler")
        builds.append((f"hearth:{name}", path, opt != "noscheduler"))
    cpus = [int(c) for c in args.cpus.split(",")]
    others = sorted(set(range(os.cpu_count() or 1)) - set(cpus)) or cpus
    os.sched_setaffinity(0, others)
    os.makedirs(args.out, exist_ok=True)
    cfgs = {}
    for scheduler in (True, False):
        cfgs[scheduler] = os.path.join(args.out, f"monitor-{int(scheduler)}.json")
        config(cfgs[scheduler], args, cpus, scheduler)

    results = {name: [] for name, _, _ in builds}
    for r in range(args.rounds):
        order = builds[r % len(builds):] + builds[:r % len(builds)]
        for name, binary, scheduler in order:
            row = trial(binary, cfgs[scheduler], args.count, cpus, args.settle, args.timeout)
            results[name].append(row)
            print(f"start_stop: round {r + 1}/{args.rounds}, {name}: "
                  f"start {row['start_s']:.3f} s, stop {row['stop_s']:.3f} s, "
                  f"missed {row['missed_ticks']} of {row['ticks']} ticks, "
                  f"lateness max {row['tick_late_max_us']} us", flush=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"count": args.count, "memory_mib": args.memory, "scenario": args.scenario,
                   "cpus": cpus, "rounds": results}, f, indent=1)

    def limit(key):
        return 1.25 * statistics.median([row[key] for rows in results.values() for row in rows])
    print(f"\n{args.count} {args.scenario} {args.memory} MiB test guests, `hearth run` on "
          f"CPU(s) {args.cpus}, {args.rounds} rounds; median (min-max)")
    for name, rows in results.items():
        print(summary(name, rows, limit("start_s"), limit("stop_s")))


def kill_children(*_):
    for p in list(CHILDREN):
        if p.poll() is None:
            p.kill()
    sys.exit(130)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, kill_children)
    signal.signal(signal.SIGTERM, kill_children)
    main()
