#!/usr/bin/python3
"""Disk benchmarks with the test guest's virtio-blk driver (blk-bench and
blk-loop scenarios, resources/guest/README.md).

1. Throughput, Hearth against QEMU microvm's virtio-blk-device on the same
   image (a file in the page cache), in one run, alternating VMM by VMM:
   4 KiB random reads at queue depth 16 (IOPS) and 64 KiB sequential reads
   at queue depth 4 (MiB/s); Hearth with the sync and the io_uring engine,
   QEMU with aio=threads (its default) and aio=io_uring. Each figure is the
   host's time between the guest's BLK-BENCH-START and BLK-BENCH-END lines.
2. Shares (--fairness): two VMs reading as fast as they can (blk-loop)
   under one host.io budget with io.weight 100:300, then one VM under a
   10 MiB/s token bucket; throughput from the guests' own progress lines
   over 1 s windows; writes docs/io-shares.png.

    cargo build --release && benches/disks.py [--runs 3] [--fairness] [--skip-throughput]
    (Debian: qemu-system-x86, python3-matplotlib)
"""
import argparse
import glob
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEARTH = os.path.join(ROOT, "target/release/hearth")
PREFIX = "hearth-guest: "


def guest_elf():
    paths = glob.glob(os.path.join(ROOT, "target/release/build/hearth-*/out/hearth-guest.elf"))
    if not paths or not os.path.exists(HEARTH):
        sys.exit("build first: cargo build --release")
    return max(paths, key=os.path.getmtime)


def make_image(path, mib):
    with open(path, "wb") as f:
        block = bytes((i * 7 + 3) & 0xFF for i in range(1 << 20))
        for _ in range(mib):
            f.write(block)
    # Read it once so that it is in the page cache.
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass


class Lines:
    """A process whose stdout lines arrive on a queue, timestamped."""

    def __init__(self, cmd):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.q = queue.Queue()
        self.all = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.q.put((time.monotonic(), line))
        self.q.put((time.monotonic(), None))

    def wait_for(self, needle, timeout=120):
        deadline = time.monotonic() + timeout
        while True:
            t, line = self.q.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                raise RuntimeError(f"exited before {needle!r}: {self.all[-5:]}")
            self.all.append(line)
            if needle in line:
                return t, line

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def fields(line):
    return dict(w.split("=", 1) for w in line.split() if "=" in w)


def hearth_cmd(elf, img, engine, args, work):
    cfg = {"name": "bench", "kernel": {"path": elf, "cmdline": "hearth.scenario=blk-bench " + args},
           "memory": {"size_mib": 64},
           "drives": [{"id": "bench", "path": img, "engine": engine, "read_only": True}]}
    path = os.path.join(work, "bench.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    return [HEARTH, "run", "--config", path]


def qemu_cmd(elf, img, aio, args):
    return ["qemu-system-x86_64", "-M", "microvm,acpi=off", "-enable-kvm",
            "-cpu", "host,-arch-capabilities", "-m", "64", "-smp", "1", "-nodefaults",
            "-no-reboot", "-display", "none", "-serial", "stdio", "-device", "i8042",
            "-global", "virtio-mmio.force-legacy=false",
            "-drive", f"id=d,file={img},format=raw,if=none,readonly=on,aio={aio}",
            "-device", "virtio-blk-device,drive=d",
            "-kernel", elf, "-append", "hearth.scenario=blk-bench " + args]


def bench_once(cmd):
    p = Lines(cmd)
    try:
        t0, _ = p.wait_for("BLK-BENCH-START")
        t1, end = p.wait_for("BLK-BENCH-END")
    finally:
        p.stop()
    f = fields(end[end.index("BLK-BENCH-END"):])
    if f.get("errors") != "0":
        raise RuntimeError(f"errors in {end}")
    dt = t1 - t0
    return int(f["ops"]) / dt, int(f["bytes"]) / dt / 2**20


WORKLOADS = {
    "4k-rand-qd16": "hearth.mode=rand hearth.qd=16 hearth.bs=4096 hearth.ops=20000 hearth.seed=7",
    "64k-seq-qd4": "hearth.mode=seq hearth.qd=4 hearth.bs=65536 hearth.ops=4000",
}
VMMS = [("hearth sync", "hearth", "sync"), ("hearth io_uring", "hearth", "io_uring"),
        ("qemu aio=threads", "qemu", "threads"), ("qemu aio=io_uring", "qemu", "io_uring")]


def throughput(elf, work, runs):
    img = os.path.join(work, "bench.img")
    make_image(img, 64)
    results = {w: {v[0]: [] for v in VMMS} for w in WORKLOADS}
    for r in range(runs):
        for wname, args in WORKLOADS.items():
            for label, vmm, mode in VMMS:
                cmd = hearth_cmd(elf, img, mode, args, work) if vmm == "hearth" else qemu_cmd(elf, img, mode, args)
                iops, mibs = bench_once(cmd)
                results[wname][label].append((iops, mibs))
                print(f"run {r + 1} {wname:14} {label:18} {iops:9.0f} req/s {mibs:8.1f} MiB/s", flush=True)
    print("\n| workload | " + " | ".join(v[0] for v in VMMS) + " | Hearth io_uring / QEMU aio=io_uring |")
    print("|---|" + "---|" * (len(VMMS) + 1))
    for wname in WORKLOADS:
        cells = []
        med = {}
        for label, _, _ in VMMS:
            xs = results[wname][label]
            key = 0 if "rand" in wname else 1
            vals = [x[key] for x in xs]
            med[label] = statistics.median(vals)
            unit = "req/s" if key == 0 else "MiB/s"
            cells.append(f"{med[label]:.0f} {unit} ({min(vals):.0f}-{max(vals):.0f})")
        ratio = med["hearth io_uring"] / med["qemu aio=io_uring"]
        print(f"| {wname} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    with open(os.path.join(ROOT, "target", "disks-throughput.json"), "w") as f:
        json.dump(results, f, indent=1)


def loop_vm(elf, name, img, weight=None, limiter=None, bs=262144):
    vm = {"name": name, "kernel": {"path": elf,
          "cmdline": f"hearth.scenario=blk-loop hearth.every_mib=1 hearth.bs={bs}"},
          "memory": {"size_mib": 32}, "drives": [{"id": "d", "path": img}]}
    if weight:
        vm["io"] = {"weight": weight}
    if limiter:
        vm["drives"][0]["rate_limiter"] = limiter
    return vm


def progress_run(cfg, work, seconds):
    """Runs a monitor for `seconds`; each VM's progress as [(t, mib)]."""
    path = os.path.join(work, "share.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    p = Lines([HEARTH, "run", "--config", path])
    start = time.monotonic()
    series = {}
    while time.monotonic() - start < seconds:
        try:
            t, line = p.q.get(timeout=0.5)
        except queue.Empty:
            continue
        if line is None:
            break
        name, _, rest = line.partition("| ")
        if not rest:
            name, rest = cfg["vms"][0]["name"], line
        if rest.startswith(PREFIX + "BLK-PROGRESS"):
            series.setdefault(name, []).append((t - start, int(fields(rest)["mib"])))
    p.stop()
    return series


def windows(points, t0, t1):
    """MiB/s in 1 s windows between t0 and t1, by interpolating the progress line times."""
    out = []
    def at(t):
        for (ta, ma), (tb, mb) in zip(points, points[1:]):
            if ta <= t <= tb:
                return ma + (mb - ma) * (t - ta) / (tb - ta)
        return None
    t = t0
    while t + 1 <= t1:
        a, b = at(t), at(t + 1)
        if a is not None and b is not None:
            out.append((t + 0.5, b - a))
        t += 1
    return out


def fairness(elf, work, seconds):
    a, b = os.path.join(work, "a.img"), os.path.join(work, "b.img")
    make_image(a, 8)
    make_image(b, 8)
    budget = 16 << 20
    cfg = {"host": {"io": {"bytes_per_s": budget}},
           "vms": [loop_vm(elf, "w100", a, 100), loop_vm(elf, "w300", b, 300)]}
    series = progress_run(cfg, work, seconds)
    wa, wb = windows(series["w100"], 1, seconds - 0.5), windows(series["w300"], 1, seconds - 0.5)
    ra = (series["w100"][-1][1] - series["w100"][0][1]) / (series["w100"][-1][0] - series["w100"][0][0])
    rb = (series["w300"][-1][1] - series["w300"][0][1]) / (series["w300"][-1][0] - series["w300"][0][0])
    print(f"\nhost.io {budget >> 20} MiB/s, io.weight 100:300, {seconds} s:")
    print(f"| | w100 | w300 | w300 / w100 | sum |")
    print(f"|---|---|---|---|---|")
    print(f"| whole run, MiB/s | {ra:.2f} | {rb:.2f} | {rb / ra:.3f} | {ra + rb:.2f} |")
    ratios = [y / x for (_, x), (_, y) in zip(wa, wb) if x > 0]
    print(f"| 1 s windows, ratio min-max | | | {min(ratios):.2f}-{max(ratios):.2f} | |")
    limiter = {"bandwidth": {"size": 1 << 20, "refill_time": 100}}
    cfg = {"host": {}, "vms": [loop_vm(elf, "bucket", a, limiter=limiter)]}
    single = progress_run(cfg, work, seconds)["bucket"]
    wc = windows(single, 1, seconds - 0.5)
    rc = (single[-1][1] - single[1][1]) / (single[-1][0] - single[1][0])
    print(f"\n10 MiB/s token bucket (1 MiB, refill 100 ms): {rc:.2f} MiB/s over the run, "
          f"1 s windows {min(v for _, v in wc):.2f}-{max(v for _, v in wc):.2f}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no matplotlib: no chart)")
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    for label, pts, w in [("io.weight 100", wa, 4), ("io.weight 300", wb, 12), ("10 MiB/s bucket (alone)", wc, 10)]:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.axhline(w, linestyle=":", color="grey")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MiB/s read by the guest (1 s windows)")
    ax.set_title("host.io 16 MiB/s shared 100:300; a drive's 10 MiB/s token bucket")
    ax.set_ylim(0, 16)
    ax.legend()
    fig.tight_layout()
    out = os.path.join(ROOT, "docs", "io-shares.png")
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--fairness", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    elf = guest_elf()
    with tempfile.TemporaryDirectory(prefix="hearth-disks-") as work:
        if not args.skip_throughput:
            throughput(elf, work, args.runs)
        if args.fairness:
            fairness(elf, work, args.seconds)


if __name__ == "__main__":
    main()
