#!/usr/bin/python3
"""How the start of N VMs in one `hearth run` grows with N, and why.

    benches/growth.py [--counts 50,200] [--rounds 6] [--guest full|quick]
                      [--scenario spin|idle] [--memory 128] [--cpus 0]
                      [--hearth PATH] [--out target/growth]

Each round starts every count once, in turn (so drifting load hits them
alike): `hearth run --config F` with N test guests of --memory MiB, one
vCPU each, `host.cpu.cpus` and the process's affinity = --cpus (the
script runs on the other CPUs). A start lasts from the spawn until all N
have printed their boot line. At that moment the script reads
`/proc/PID/task/*/schedstat`: the CPU each kind of thread has used (vCPUs,
the event loop, the output writer, the life-cycle workers still alive)
and, per vCPU thread, the CPU its VM has used. With idle guests a vCPU
stops at its boot line, so that is the VM's boot; the slowest of them is
what a start of spinning guests waits for N times over
(docs/performance.md, "Where the growth beyond N comes from").

--guest full is the test guest (`hearth.scenario=` --scenario); --guest
quick is the quick guest of resources/guest-quick, which prints its boot
line with its first instructions (then spins, or halts for --scenario
idle): a boot as short as on hardware KVM, so that what grows is the
monitor's builds and starts and the host's scheduling, not this machine's
emulated boot.

Prints per count the median (min-max) start, the CPU by thread kind and
the boots (median, 95th percentile, slowest), then the growth from one
count to the next (median ratio and the ratio of each round); writes
every round to OUT/results.json. Needs a release build (run here).
"""

import argparse
import glob
import json
import os
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILDREN = []


def built(name):
    found = glob.glob(os.path.join(ROOT, f"target/release/build/hearth-*/out/{name}"))
    if not found:
        sys.exit(f"growth: no {name}; run `cargo build --release` first")
    return max(found, key=os.path.getmtime)


def config(path, n, args):
    if args.guest == "quick":
        kernel = {"path": built("hearth-quick-idle.elf" if args.scenario == "idle"
                                else "hearth-quick.elf")}
    else:
        kernel = {"path": built("hearth-guest.elf"),
                  "cmdline": f"hearth.scenario={args.scenario}"}
    vms = [{"name": f"vm{i}", "kernel": kernel, "memory": {"size_mib": args.memory}}
           for i in range(n)]
    with open(path, "w") as f:
        json.dump({"host": {"cpu": {"cpus": args.cpu_list}}, "vms": vms}, f)


def threads(pid):
    """(CPU s by thread kind, [CPU ms of each vCPU thread])."""
    kinds, vcpus = {}, []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if tid == str(pid):
            kind = "loop"
        elif comm.startswith("vm"):
            kind = "vcpu"
            vcpus.append(ns / 1e6)
        else:
            kind = comm.rstrip("0123456789")
        kinds[kind] = kinds.get(kind, 0.0) + ns / 1e9
    return kinds, vcpus


def trial(args, cfg, n):
    t0 = time.monotonic()
    p = subprocess.Popen([args.hearth, "run", "--config", cfg], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                         preexec_fn=lambda: os.sched_setaffinity(0, args.cpu_list))
    CHILDREN.append(p)
    try:
        up = set()
        deadline = t0 + args.timeout
        for line in p.stdout:
            if b"hearth-guest:" in line:
                up.add(line.split(b"|")[0])
                if len(up) == n:
                    break
            if time.monotonic() > deadline:
                break
        start = time.monotonic() - t0
        if len(up) < n:
            raise RuntimeError(f"{len(up)} of {n} VMs up after {args.timeout} s")
        kinds, vcpus = threads(p.pid)
        return {"start_s": start, "cpu_s": kinds, "vcpu_ms": sorted(vcpus)}
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        CHILDREN.remove(p)


def med(xs, fmt="{:.3f}"):
    return f"{fmt.format(statistics.median(xs))} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"


def report(args, results):
    for n, rows in results.items():
        kinds = sorted({k for r in rows for k in r["cpu_s"]})
        cpu = ", ".join(f"{k} {statistics.median([r['cpu_s'].get(k, 0.0) for r in rows]):.3f}"
                        for k in kinds)
        boots = [r["vcpu_ms"] for r in rows]
        p95 = [statistics.quantiles(b, n=20)[-1] if len(b) > 1 else b[0] for b in boots]
        print(f"N={n}: start {med([r['start_s'] for r in rows])} s; CPU at the last boot "
              f"line, median s: {cpu}")
        print(f"  vCPU CPU per VM (ms): median {med([statistics.median(b) for b in boots], '{:.2f}')},"
              f" p95 {med(p95, '{:.2f}')}, slowest {med([b[-1] for b in boots], '{:.2f}')}"
              + ("" if args.scenario == "idle" else " (spinning guests: boot and spin)"))
    counts = list(results)
    for a, b in zip(counts, counts[1:]):
        ratios = [y["start_s"] / x["start_s"] for x, y in zip(results[a], results[b])]
        whole = (statistics.median([r["start_s"] for r in results[b]])
                 / statistics.median([r["start_s"] for r in results[a]]))
        print(f"growth {a} -> {b} ({b / a:.2f}x more VMs): {whole:.2f}x by the medians; "
              f"rounds {', '.join(f'{r:.2f}' for r in ratios)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--counts", default="50,200")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--guest", default="full", choices=("full", "quick"))
    ap.add_argument("--scenario", default="spin", choices=("spin", "idle"))
    ap.add_argument("--memory", type=int, default=128, help="MiB of guest RAM per VM")
    ap.add_argument("--cpus", default="0", help="host CPUs of the monitor, e.g. 0 or 0,1")
    ap.add_argument("--hearth", default=os.path.join(ROOT, "target/release/hearth"))
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--settle", type=float, default=1.0, help="s between starts")
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "growth"))
    args = ap.parse_args()

    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    args.cpu_list = [int(c) for c in args.cpus.split(",")]
    others = sorted(set(range(os.cpu_count() or 1)) - set(args.cpu_list)) or args.cpu_list
    os.sched_setaffinity(0, others)
    os.makedirs(args.out, exist_ok=True)
    counts = [int(c) for c in args.counts.split(",")]
    cfgs = {}
    for n in counts:
        cfgs[n] = os.path.join(args.out, f"monitor-{n}.json")
        config(cfgs[n], n, args)
    results = {n: [] for n in counts}
    for r in range(args.rounds):
        for n in counts:
            row = trial(args, cfgs[n], n)
            results[n].append(row)
            print(f"growth: round {r + 1}/{args.rounds}, N={n}: start {row['start_s']:.3f} s, "
                  f"slowest vCPU {row['vcpu_ms'][-1]:.2f} ms", flush=True)
            time.sleep(args.settle)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"guest": args.guest, "scenario": args.scenario, "memory_mib": args.memory,
                   "cpus": args.cpu_list, "rounds": results}, f, indent=1)
    print(f"\n{args.guest} test guests ({args.scenario}), {args.memory} MiB, `hearth run` on "
          f"CPU(s) {args.cpus}, {args.rounds} alternated rounds; median (min-max)")
    report(args, results)


def kill_children(*_):
    for p in list(CHILDREN):
        if p.poll() is None:
            p.kill()
    sys.exit(130)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, kill_children)
    signal.signal(signal.SIGTERM, kill_children)
    main()
