#!/usr/bin/python3
"""Convergence of the ballooning allocator after one demand jump.

Two VMs of SIZE MiB (floors FLOOR, weights 100) under host.memory.budget_mib
BUDGET: "idle" runs the test guest's `mem-idle`, "grow" runs `mem-grow` with
ONE step: it starts at START MiB and, after STEP_ITERS busy-loop iterations
(long enough for the allocator to have settled on the start-up state), uses
START + STEP MiB. The control socket (host.api) is polled with
{"op":"stats"} every POLL ms, recording per VM the allocator's target, ideal
and demand, the balloon target/actual and the guest's figures.

t0 is the first poll at which grow's demand (from the guest's statistics,
refreshed once per tick) has left its start-up value; the guest prints
`mem used_mib=START+STEP` when it has touched all its new pages. From t0 it reports, in ms and in
allocator ticks (the `memory.ticks` counter):
  line     the guest's `mem used_mib=` line (its growth done)
  demand   grow's demand at its final value
  (a)      grow's allocator target covers its new demand (target >= demand)
  settled  both allocator targets at their final values
  (b)      idle's balloon actual size at its final balloon target (for good)
It also checks that no target went below its floor and that, once the
targets were inside the budget (the balloons start empty), their sum never
exceeded it.

Usage (after `cargo build --release`):
    benches/converge.py [--runs 3] [--tick-ms 500 1000] [--size 512]
        [--budget 640] [--floor 64] [--start 16] [--step 384]
        [--step-iters 8000000] [--poll-ms 50]
"""

import argparse
import glob
import json
import os
import shutil
import signal
import socket
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


class Api:
    def __init__(self, path, deadline):
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"control socket {path} never answered")
                time.sleep(0.02)
        self.buf = b""

    def stats(self):
        self.sock.sendall(b'{"op":"stats"}\n')
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise RuntimeError("control socket closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"stats: {reply}")
        return reply["result"]


def vm_memory(doc, name):
    for vm in doc.get("vms", []):
        if vm.get("name") == name:
            return vm.get("memory") or {}
    return {}


def run_once(hearth, guest, args, tick_ms):
    tmp = tempfile.mkdtemp(prefix="hearth-converge-")
    sock = os.path.join(tmp, "api.sock")
    new_used = args.start + args.step

    def vm(name, cmdline):
        return {
            "name": name,
            "kernel": {"path": guest, "cmdline": cmdline},
            "memory": {"size_mib": args.size, "floor_mib": args.floor, "weight": 100},
            "serial": {"output": "stdout", "stdin": False},
        }

    config = {
        "host": {"memory": {"budget_mib": args.budget, "tick_ms": tick_ms},
                 "api": {"socket": sock}},
        "vms": [
            vm("grow", f"hearth.scenario=mem-grow hearth.mem_start_mib={args.start} "
                       f"hearth.mem_step_mib={args.step} hearth.mem_max_mib={new_used} "
                       f"hearth.mem_step_iters={args.step_iters}"),
            vm("idle", "hearth.scenario=mem-idle"),
        ],
    }
    path = os.path.join(tmp, "monitor.json")
    with open(path, "w") as f:
        json.dump(config, f)
    proc = subprocess.Popen([hearth, "run", "--config", path],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    events = {}

    def read():
        for line in proc.stdout:
            now = time.monotonic()
            if line.startswith("grow|") and f"mem used_mib={new_used}" in line:
                events.setdefault("step", now)
            if "BALLOON FAIL" in line or "exception" in line:
                events.setdefault("fail", line.strip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    start = time.monotonic()
    samples = []  # (time, ticks, grow memory, idle memory)
    try:
        api = Api(sock, start + 30)
        deadline = start + args.timeout
        after = None
        while time.monotonic() < deadline:
            if proc.poll() is not None or "fail" in events:
                raise RuntimeError(f"hearth ended or guest failed: {events.get('fail', proc.returncode)}")
            doc = api.stats()
            now = time.monotonic()
            samples.append((now, doc["memory"]["ticks"],
                            vm_memory(doc, "grow"), vm_memory(doc, "idle")))
            if "step" in events and after is None:
                after = events["step"]
            # Observe for at least HOLD ticks beyond t0 + 12 ticks.
            if after is not None and now > after + (12 + args.hold) * tick_ms / 1000:
                break
            time.sleep(args.poll_ms / 1000)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    if "step" not in events:
        raise RuntimeError("the grow VM never made its step (raise --timeout)")
    return analyse(samples, events["step"], start, args, tick_ms)


def analyse(samples, t_line, start, args, tick_ms):
    def m(s, vm, key):
        return (s[2] if vm == "grow" else s[3]).get(key)

    # t0: the first poll at which grow's demand has left its start-up value
    # (the guest touches its new pages for a while before it prints the
    # `mem used_mib=` line at t_line; stats come once per tick).
    used = args.start + 1
    plateau = min(max(used + max(used // 10, 16), args.floor), args.size) + 4
    i = max(k for k, s in enumerate(samples) if s[0] <= t_line)
    while i > 0 and (m(samples[i - 1], "grow", "demand_mib") or 0) > plateau:
        i -= 1
    if (m(samples[i], "grow", "demand_mib") or 0) <= plateau:
        i += 1
    t0 = samples[i][0]
    before, after = samples[:i], samples[i:]
    if not before or not after:
        raise RuntimeError("no samples around the step")
    ticks0 = before[-1][1]
    line = ((t_line - t0) * 1000, None)
    # Settled before the step: targets unchanged and balloons at their
    # targets over the last two ticks before t0.
    # (one tick before t0: the guest may already be growing then.)
    window = [s for s in before if ticks0 - 3 <= s[1] <= ticks0 - 1]
    settled_before = bool(window) and window[0][1] == ticks0 - 3 and all(
        m(s, v, "target_mib") == m(window[0], v, "target_mib")
        and m(s, v, "balloon_actual_mib") == m(s, v, "balloon_target_mib")
        for s in window for v in ("grow", "idle"))
    old_demand = m(before[-1], "grow", "demand_mib")
    new_demand = m(samples[-1], "grow", "demand_mib")
    if os.environ.get("CONVERGE_DEBUG"):
        for s in before[-3:] + after[:3] + after[-1:]:
            print(f"{s[0] - t0:+.3f} ticks={s[1]} grow={s[2]} idle={s[3]}", file=sys.stderr)

    def first(pred):
        for s in after:
            if pred(s):
                return (s[0] - t0) * 1000, s[1] - ticks0
        return None, None

    def first_for_good(pred):
        hit = None
        for s in after:
            if pred(s):
                hit = hit or s
            else:
                hit = None
        return ((hit[0] - t0) * 1000, hit[1] - ticks0) if hit else (None, None)

    seen = first(lambda s: m(s, "grow", "demand_mib") == new_demand)
    cover = first(lambda s: (m(s, "grow", "target_mib") or 0) >= new_demand)
    last = samples[-1]
    final = {v: m(last, v, "target_mib") for v in ("grow", "idle")}
    idle_bt = m(last, "idle", "balloon_target_mib")
    settled = first_for_good(lambda s: all(m(s, v, "target_mib") == final[v]
                                           for v in ("grow", "idle")))
    idle_done = first_for_good(lambda s: m(s, "idle", "balloon_actual_mib") == idle_bt
                               and m(s, "idle", "balloon_target_mib") == idle_bt)
    # Invariants over the whole run.
    min_target = min(m(s, v, "target_mib") for s in samples for v in ("grow", "idle")
                     if m(s, v, "target_mib") is not None)
    inside, max_sum = False, 0
    for s in samples:
        if m(s, "grow", "target_mib") is None or m(s, "idle", "target_mib") is None:
            continue
        total = m(s, "grow", "target_mib") + m(s, "idle", "target_mib")
        inside |= total <= args.budget
        if inside:
            max_sum = max(max_sum, total)
    return {
        "step_at_s": t0 - start, "line": line,
        "settled_before": settled_before,
        "demand": (old_demand, new_demand),
        "seen": seen, "cover": cover, "settled": settled, "idle_done": idle_done,
        "final": final, "idle_balloon": idle_bt,
        "min_target": min_target, "max_sum": max_sum, "inside": inside,
        "samples": len(samples),
    }


def fmt(ms, ticks):
    if ms is None:
        return "-"
    return f"{ms:.0f} ms" if ticks is None else f"{ms:.0f} ms / {ticks}"


def summary(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    return f"**{statistics.median(vals):.0f}** ({min(vals):.0f}-{max(vals):.0f})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tick-ms", type=int, nargs="+", default=[500, 1000])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--budget", type=int, default=640)
    ap.add_argument("--floor", type=int, default=64)
    ap.add_argument("--start", type=int, default=16)
    ap.add_argument("--step", type=int, default=384)
    ap.add_argument("--step-iters", type=int, default=8000000)
    ap.add_argument("--poll-ms", type=int, default=50)
    ap.add_argument("--hold", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args()
    hearth = os.path.join(ROOT, "target/release/hearth")
    if not os.access(hearth, os.X_OK):
        sys.exit(f"not found: {hearth} (run cargo build --release first)")
    guest = find("target/release/build/hearth-*/out/hearth-guest.elf")
    rows, per_tick = [], {}
    for tick in args.tick_ms:
        for i in range(args.runs):
            try:
                r = run_once(hearth, guest, args, tick)
            except RuntimeError as e:
                print(f"tick {tick} ms run {i + 1}: {e}", file=sys.stderr)
                continue
            print(f"tick {tick} ms run {i + 1}: step at {r['step_at_s']:.1f} s "
                  f"(settled before: {r['settled_before']}), demand {r['demand'][0]} -> "
                  f"{r['demand'][1]} MiB; guest line {fmt(*r['line'])}, demand final {fmt(*r['seen'])}, (a) {fmt(*r['cover'])}, "
                  f"targets settled {fmt(*r['settled'])}, (b) {fmt(*r['idle_done'])}; "
                  f"final targets {r['final']}, min target {r['min_target']}, "
                  f"max sum {r['max_sum']}", file=sys.stderr)
            rows.append((tick, i + 1, r))
            per_tick.setdefault(tick, []).append(r)
    if not rows:
        sys.exit("no run completed")
    print(f"\n{args.size} MiB x 2, budget {args.budget}, floors {args.floor}, weights 100; "
          f"grow: {args.start} -> {args.start + args.step} MiB used in one step; "
          f"times from the poll at which grow's demand jumped (ms / allocator ticks)\n")
    print("| tick | run | jump at | grow demand (MiB) | guest's used_mib line "
          "| demand at new value | (a) grow target >= new demand "
          "| targets settled | (b) idle balloon at target | final targets grow/idle "
          "| min target | max sum |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for tick, run, r in rows:
        print(f"| {tick} ms | {run} | {r['step_at_s']:.1f} s"
              f"{'' if r['settled_before'] else ' (unsettled)'} "
              f"| {r['demand'][0]} -> {r['demand'][1]} | {fmt(*r['line'])} | {fmt(*r['seen'])} | {fmt(*r['cover'])} "
              f"| {fmt(*r['settled'])} | {fmt(*r['idle_done'])} "
              f"| {r['final']['grow']} / {r['final']['idle']} | {r['min_target']} "
              f"| {r['max_sum']} |")
    print("\nmedian (min-max), ms from the demand jump:\n")
    print("| tick | runs | guest's used_mib line | demand at new value "
          "| (a) grow target >= new demand | targets settled "
          "| (b) idle balloon at target | floors kept | within budget |")
    print("|---|---|---|---|---|---|---|---|---|")
    for tick, rs in per_tick.items():
        def col(key, idx=0):
            return summary([r[key][idx] for r in rs])
        print(f"| {tick} ms | {len(rs)} | {col('line')} | {col('seen')} | {col('cover')} | {col('settled')} "
              f"| {col('idle_done')} "
              f"| {'yes' if all(r['min_target'] >= args.floor for r in rs) else 'NO'} "
              f"| {'yes' if all(r['inside'] and r['max_sum'] <= args.budget for r in rs) else 'NO'} |")


if __name__ == "__main__":
    main()
