#!/usr/bin/env python3
"""One VM's start, Hearth against Firecracker, alternated.

For each round: start `hearth serve` with a monitor file of one test-guest
VM (with a statistics file and a control socket, as benches/density.py
starts it), then `firecracker --no-api --config-file` with the same guest,
or the other way round in every other round; the time is from the
process's spawn to the guest's first line on its stdout. Both are pinned
to host CPU 0 (--cpu), this script to the others. Prints the median,
quartiles, min and max of each, and writes them as JSON with --out.

    cargo build --release
    PATH=/path/to/firecracker/dir:$PATH benches/start_one.py --rounds 100

Without a `firecracker` on PATH only Hearth is timed.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The guest, its command line and Firecracker's config as the density bench makes them.
from density import BOOT_LINE, ROOT, firecracker_argv, guest_cmdline, guest_elf  # noqa: E402


def time_to_first_line(argv, cpu, timeout):
    """Seconds from spawning `argv` to the first guest line, or None."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL,
                         preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    buf, up = b"", None
    os.set_blocking(p.stdout.fileno(), True)
    deadline = t0 + timeout
    try:
        while time.monotonic() < deadline:
            data = os.read(p.stdout.fileno(), 4096)
            if not data:
                break
            buf = (buf + data)[-8192:]
            if BOOT_LINE in buf:
                up = time.monotonic() - t0
                break
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return up


def summary(values):
    v = sorted(values)
    return {"median_ms": statistics.median(v) * 1e3, "p25_ms": v[len(v) // 4] * 1e3,
            "p75_ms": v[3 * len(v) // 4] * 1e3, "min_ms": v[0] * 1e3, "max_ms": v[-1] * 1e3,
            "n": len(v)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--cpu", type=int, default=0)
    ap.add_argument("--memory", type=int, default=128, help="MiB of guest RAM")
    ap.add_argument("--hearth", default=os.path.join(ROOT, "target/release/hearth"))
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--scenario", default="spin", choices=("spin", "idle"))
    ap.add_argument("--out", help="write the figures here as JSON")
    args = ap.parse_args()
    others = [c for c in range(os.cpu_count()) if c != args.cpu]
    if others:
        os.sched_setaffinity(0, others)
    args.elf = guest_elf()
    tmp = tempfile.mkdtemp(prefix="start-one-")
    with open(os.path.join(tmp, "monitor.json"), "w") as f:
        json.dump({"host": {"cpu": {"cpus": [args.cpu]}},
                   "vms": [{"name": "vm0",
                            "kernel": {"path": args.elf, "cmdline": guest_cmdline(args)},
                            "memory": {"size_mib": args.memory}}]}, f)
    sock = os.path.join(tmp, "api.sock")
    systems = {"hearth": [args.hearth, "serve", "--config", os.path.join(tmp, "monitor.json"),
                          "--stats-file", os.path.join(tmp, "stats.json"),
                          "--api-socket", sock]}
    args.firecracker = shutil.which("firecracker")
    if args.firecracker:
        systems["firecracker"] = firecracker_argv(args, 0, tmp)
    times = {name: [] for name in systems}
    names = list(systems)
    for i in range(args.rounds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            if os.path.exists(sock):
                os.unlink(sock)
            up = time_to_first_line(systems[name], args.cpu, args.timeout)
            if up is None:
                sys.exit(f"start_one: {name} printed no guest line in {args.timeout} s")
            times[name].append(up)
            time.sleep(0.05)
    shutil.rmtree(tmp, ignore_errors=True)
    result = {name: summary(v) for name, v in times.items()}
    for name, s in result.items():
        print(f"{name}: median {s['median_ms']:.2f} ms (p25 {s['p25_ms']:.2f}, "
              f"p75 {s['p75_ms']:.2f}, min {s['min_ms']:.2f}, max {s['max_ms']:.2f}; "
              f"{s['n']} rounds)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
