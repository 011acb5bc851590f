#!/usr/bin/python3
"""Hearth beside the raw KVM floor and QEMU, on this machine, in one run.

    benches/side_by_side.py [--skip-bench] [--skip-boot] [--skip-linux]
                            [--guest-runs 5] [--linux-runs 3] [--bench-runs 3]
                            [--out target/side-by-side]

1. Exit latency (unless --skip-bench): runs `cargo bench --bench exits` and
   `--bench dispatch` --bench-runs times (criterion's JSON under
   target/criterion is read after each run) and reports ns per exit,
   median with min and max over the runs, and Hearth / raw floor ratios
   computed run by run.
2. Boot (unless --skip-boot): Hearth (target/release/hearth) and QEMU
   (microvm) booting the test guest (`hearth.scenario=hello`, through its
   PVH note in both) and the minimal Linux kit to "Run /init as init
   process": time to first KVM_RUN (Hearth's debug log), to the marker, to
   exit; peak RSS and user/sys CPU from /usr/bin/time -v; the vCPU thread's
   CPU time (sampled from /proc every 10 ms) and the guest RAM mapping's RSS
   (from /proc/PID/smaps, same sampling) to separate the VMM's own share.
3. Writes OUT/results.json, OUT/table.md and docs/perf-exits.png,
   docs/perf-boot.png (matplotlib).

Needs: a release build (the script runs `cargo build --release`),
qemu-system-x86_64, /usr/bin/time, python3-matplotlib, the kit in
/var/cache/hearth/kit (HEARTH_KIT_DIR).
"""

import argparse
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KIT = os.environ.get("HEARTH_KIT_DIR", "/var/cache/hearth/kit")
MEM_MIB = 256
EXIT_KINDS = ["pio-write", "pio-read", "mmio-write", "mmio-read"]
INKERNEL = ["cpuid", "pit-read", "nop", "doorbell"]
BATCH = 32  # benches/exits.rs: in-kernel exits per batch


def log(msg):
    print(f"side-by-side: {msg}", file=sys.stderr, flush=True)


def stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values), "all": values}


# ---------------------------------------------------------------------------
# Exit latency (criterion)

def criterion_median(group, name):
    """Median time per iteration (ns) of the last criterion run."""
    path = os.path.join(ROOT, "target", "criterion", group, name, "new", "estimates.json")
    with open(path) as f:
        return json.load(f)["median"]["point_estimate"]


def criterion_samples(group, name):
    """Per-sample time per iteration (ns) of the last criterion run."""
    path = os.path.join(ROOT, "target", "criterion", group, name, "new", "sample.json")
    with open(path) as f:
        s = json.load(f)
    return [t / n for t, n in zip(s["times"], s["iters"])]


def run_benches(runs):
    """The exits bench `runs` times (stats over the runs' medians), the
    dispatch bench once (stats over its samples: it is pure user-space
    CPU work, and criterion's 100 samples say more than a few runs)."""
    env = dict(os.environ)
    log(f"cargo bench --bench dispatch; load {os.getloadavg()}")
    subprocess.run(["cargo", "bench", "--bench", "dispatch"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    dispatch = {}
    for op in ("write", "read"):
        for n in (4, 32, 256):
            dispatch[f"dispatch/{op}/{n}"] = stats(criterion_samples("dispatch", f"{op}/{n}"))
    per_run = []
    loads = []
    paired = {}  # kind -> Hearth/floor ratio of every alternated round
    for i in range(runs):
        loads.append(os.getloadavg()[0])
        log(f"cargo bench --bench exits (run {i + 1}/{runs}); load {os.getloadavg()}")
        subprocess.run(["cargo", "bench", "--bench", "exits"], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        r = {}
        for k in ["raw-real"] + EXIT_KINDS:
            r[f"floor/{k}"] = criterion_median("floor", k)
        for k in EXIT_KINDS:
            r[f"hearth/{k}"] = criterion_median("hearth", k)
        for k in INKERNEL:
            # one iteration = BATCH in-kernel exits (or nops) + one PIO write exit
            batch = criterion_median("inkernel", k)
            r[f"inkernel/{k}"] = (batch - r["hearth/pio-write"]) / BATCH
        for k in EXIT_KINDS:
            r[f"ratio/{k}"] = r[f"hearth/{k}"] / r[f"floor/{k}"]
        r["ratio/pio-write-vs-real"] = r["hearth/pio-write"] / r["floor/raw-real"]
        with open(os.path.join(ROOT, "target", "criterion", "paired.json")) as f:
            for k, v in json.load(f).items():
                paired.setdefault(k, []).extend(v["ratio"])
        per_run.append(r)
    keys = per_run[0].keys()
    out = {k: stats([r[k] for r in per_run]) for k in keys}
    out.update(dispatch)
    for k, v in paired.items():
        out[f"paired/{k}"] = stats(v)
    out["load_1min_before_each_run"] = loads
    return out, os.getloadavg()


# ---------------------------------------------------------------------------
# Boot runs

def read_stat(pid, tid):
    """(comm, utime+stime split) of one thread, in clock ticks."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    comm = s[s.index("(") + 1:s.rindex(")")]
    fields = s[s.rindex(")") + 2:].split()
    return comm, int(fields[11]), int(fields[12])  # utime, stime


def guest_ram_rss_kib(pid, mem_mib):
    """RSS of the largest anonymous mapping at least mem_mib big (guest RAM)."""
    best = None
    try:
        with open(f"/proc/{pid}/smaps") as f:
            size = rss = None
            anon = False
            for line in f:
                if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                    if size is not None and anon and size >= mem_mib * 1024:
                        if best is None or size > best[0]:
                            best = (size, rss)
                    parts = line.split()
                    anon = len(parts) < 6 or parts[5].startswith("[anon")
                    size = rss = None
                elif line.startswith("Size:"):
                    size = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
            if size is not None and anon and size >= mem_mib * 1024:
                if best is None or size > best[0]:
                    best = (size, rss)
    except OSError:
        return None
    return best[1] if best else None


class Sampler(threading.Thread):
    """Samples the VMM (the child of /usr/bin/time) every 10 ms."""

    def __init__(self, time_pid, vcpu_re, mem_mib):
        super().__init__(daemon=True)
        self.time_pid, self.vcpu_re, self.mem_mib = time_pid, re.compile(vcpu_re), mem_mib
        self.stop = False
        self.vcpu_ticks = None  # (user, sys) summed over vCPU threads
        self.all_ticks = None
        self.guest_rss = None

    def vmm_pid(self):
        try:
            with open(f"/proc/{self.time_pid}/task/{self.time_pid}/children") as f:
                kids = f.read().split()
            return int(kids[0]) if kids else None
        except OSError:
            return None

    def run(self):
        pid = None
        threads = {}  # tid -> (comm, utime, stime): the last values seen
        while not self.stop:
            pid = pid or self.vmm_pid()
            if pid:
                try:
                    tids = os.listdir(f"/proc/{pid}/task")
                except OSError:
                    tids = []
                for tid in tids:
                    st = read_stat(pid, tid)
                    if st is not None:
                        threads[tid] = st
                # Threads that already ended keep their last sample.
                vcpu = [(u, s) for comm, u, s in threads.values() if self.vcpu_re.search(comm)]
                if threads:
                    self.vcpu_ticks = (sum(u for u, _ in vcpu), sum(s for _, s in vcpu))
                    self.all_ticks = (sum(t[1] for t in threads.values()),
                                      sum(t[2] for t in threads.values()))
                rss = guest_ram_rss_kib(pid, self.mem_mib)
                if rss is not None:
                    self.guest_rss = rss
            time.sleep(0.01)


def time_v(path):
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            for key, name in (("Maximum resident set size (kbytes)", "peak_rss_kib"),
                              ("User time (seconds)", "user_s"),
                              ("System time (seconds)", "sys_s")):
                if line.startswith(key + ":"):
                    out[name] = float(line.split(":")[1])
    return out


def boot_once(argv, marker, vcpu_re, timeout):
    tick = os.sysconf("SC_CLK_TCK")
    with tempfile.NamedTemporaryFile(prefix="hearth-time-", delete=False) as tf:
        tpath = tf.name
    full = ["/usr/bin/time", "-v", "-o", tpath] + argv
    t0 = time.monotonic()
    p = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    sampler = Sampler(p.pid, vcpu_re, MEM_MIB)
    sampler.start()
    result = {"marker_s": None, "first_kvm_run_ms": None}
    err_lines = []

    def read_err():
        for raw in p.stderr:
            line = raw.decode("utf-8", "replace")
            err_lines.append(line)
            m = re.search(r"first KVM_RUN ([0-9.]+) ms after process start", line)
            if m:
                result["first_kvm_run_ms"] = float(m.group(1))
            m = re.search(r"exits: (\d+) pio-in, (\d+) pio-out, (\d+) mmio-read, (\d+) mmio-write", line)
            if m:
                result["exits"] = sum(int(g) for g in m.groups())

    et = threading.Thread(target=read_err, daemon=True)
    et.start()
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    out_tail = []
    for raw in p.stdout:
        line = raw.decode("utf-8", "replace")
        out_tail = (out_tail + [line])[-20:]
        if result["marker_s"] is None and marker in line:
            result["marker_s"] = time.monotonic() - t0
    rc = p.wait()
    result["exit_s"] = time.monotonic() - t0
    timer.cancel()
    et.join(5)
    sampler.stop = True
    sampler.join()
    result["rc"] = rc
    result.update(time_v(tpath))
    os.unlink(tpath)
    if sampler.vcpu_ticks:
        result["vcpu_user_s"] = sampler.vcpu_ticks[0] / tick
        result["vcpu_sys_s"] = sampler.vcpu_ticks[1] / tick
        result["sampled_user_s"] = sampler.all_ticks[0] / tick
        result["sampled_sys_s"] = sampler.all_ticks[1] / tick
    result["guest_rss_kib"] = sampler.guest_rss
    if result["marker_s"] is None:
        log(f"no marker {marker!r} in {argv}: rc={rc}\n" + "".join(out_tail) + "".join(err_lines[-20:]))
    return result


def guest_elf():
    cands = glob.glob(os.path.join(ROOT, "target/release/build/hearth-*/out/hearth-guest.elf"))
    if not cands:
        sys.exit("side-by-side: no target/release/build/hearth-*/out/hearth-guest.elf")
    return max(cands, key=os.path.getmtime)


def qemu_argv(kernel, append, initrd=None):
    argv = ["qemu-system-x86_64", "-name", "qemu,debug-threads=on", "-M", "microvm,acpi=off", "-enable-kvm", "-cpu", "host",
            "-nodefaults", "-no-reboot", "-nographic", "-serial", "stdio", "-device", "i8042",
            "-m", str(MEM_MIB), "-smp", "1", "-kernel", kernel, "-append", append]
    if initrd:
        argv += ["-initrd", initrd]
    return argv


def hearth_argv(kernel, append, initrd=None):
    argv = [os.path.join(ROOT, "target/release/hearth"), "--log-level", "debug", "run",
            "--kernel", kernel, "--cmdline", append, "--memory", str(MEM_MIB), "--vcpus", "1"]
    if initrd:
        argv += ["--initrd", initrd]
    return argv


def boot_series(name, runs, kernel, append, marker, initrd, timeout):
    series = {"hearth": [], "qemu": []}
    for i in range(runs):
        # Alternate so that drifting load hits both alike.
        for vmm in ("hearth", "qemu"):
            log(f"{name}: {vmm} run {i + 1}/{runs}; load {os.getloadavg()}")
            if vmm == "hearth":
                r = boot_once(hearth_argv(kernel, append, initrd), marker, r"-v\d+$", timeout)
            else:
                r = boot_once(qemu_argv(kernel, append, initrd), marker, r"^CPU \d+/KVM", timeout)
            series[vmm].append(r)
    return series


def summarise_boot(series):
    out = {}
    for vmm, runs in series.items():
        s = {}
        for key in ("first_kvm_run_ms", "marker_s", "exit_s", "peak_rss_kib", "user_s", "sys_s",
                    "vcpu_user_s", "vcpu_sys_s", "guest_rss_kib", "exits"):
            s[key] = stats([r.get(key) for r in runs])
        s["vmm_cpu_s"] = stats([r["user_s"] + r["sys_s"] for r in runs if "user_s" in r])
        s["non_vcpu_cpu_s"] = stats([
            r["user_s"] + r["sys_s"] - r["vcpu_user_s"] - r["vcpu_sys_s"]
            for r in runs if "vcpu_user_s" in r and "user_s" in r])
        s["rss_minus_guest_kib"] = stats([
            r["peak_rss_kib"] - r["guest_rss_kib"] for r in runs
            if r.get("guest_rss_kib") is not None and "peak_rss_kib" in r])
        s["rc"] = [r["rc"] for r in runs]
        out[vmm] = s
    # Hearth/QEMU ratio pair by pair (run i of each).
    ratios = {}
    for key in ("marker_s", "exit_s", "peak_rss_kib", "user_s", "sys_s"):
        pairs = [(h.get(key), q.get(key)) for h, q in zip(series["hearth"], series["qemu"])]
        ratios[key] = stats([h / q for h, q in pairs if h is not None and q])
    pairs = [(h["user_s"] + h["sys_s"], q["user_s"] + q["sys_s"])
             for h, q in zip(series["hearth"], series["qemu"]) if "user_s" in h and "user_s" in q]
    ratios["vmm_cpu_s"] = stats([h / q for h, q in pairs if q])
    out["ratio"] = ratios
    return out


# ---------------------------------------------------------------------------
# Output

def fmt(s, scale=1.0, digits=1, unit=""):
    if s is None:
        return "n/a"
    return (f"{s['median'] * scale:.{digits}f}{unit} "
            f"({s['min'] * scale:.{digits}f}–{s['max'] * scale:.{digits}f})")


def table(results):
    lines = []
    ex = results.get("exits")
    if ex:
        lines += ["### Exit latency (ns per exit; median over runs, min–max)", "",
                  "| exit | raw KVM floor | Hearth | Hearth / floor (criterion runs) "
                  "| Hearth / floor (alternated rounds) |", "|---|---|---|---|---|"]
        for k in EXIT_KINDS:
            lines.append(f"| {k} | {fmt(ex[f'floor/{k}'], digits=0)} | {fmt(ex[f'hearth/{k}'], digits=0)} "
                         f"| {fmt(ex[f'ratio/{k}'], digits=3)} | {fmt(ex.get(f'paired/{k}'), digits=3)} |")
        lines.append(f"| raw floor, real mode `out` | {fmt(ex['floor/raw-real'], digits=0)} | | "
                     f"pio-write vs it: {fmt(ex['ratio/pio-write-vs-real'], digits=3)} | |")
        lines += ["", "| in-kernel (per exit, batch of 32 minus one PIO exit) | ns |", "|---|---|"]
        for k in INKERNEL:
            note = {"nop": " (no exit: guest instruction cost)",
                    "doorbell": " (ioeventfd: a virtio QueueNotify write)"}.get(k, "")
            lines.append(f"| {k}{note} | {fmt(ex[f'inkernel/{k}'], digits=0)} |")
        lines += ["",
                  "| bus dispatch alone (ns; median of criterion's samples, min–max) | 4 devices | 32 devices | 256 devices |", "|---|---|---|---|"]
        for op in ("write", "read"):
            lines.append(f"| {op} | " + " | ".join(fmt(ex[f"dispatch/{op}/{n}"], digits=1)
                                                 for n in (4, 32, 256)) + " |")
        lines.append("")
    for name, title in (("guest", "Test guest (`hearth.scenario=hello`, marker `HELLO OK`)"),
                        ("linux", "Linux 6.1 kit to \"Run /init as init process\"")):
        b = results.get(name)
        if not b:
            continue
        h, q, r = b["hearth"], b["qemu"], b["ratio"]
        lines += [f"### {title}; {len(b['hearth']['rc'])} runs each, median (min–max)", "",
                  "| | Hearth | QEMU | Hearth / QEMU (pairwise) |", "|---|---|---|---|",
                  f"| process start → first KVM_RUN | {fmt(h['first_kvm_run_ms'], digits=2, unit=' ms')} | n/a | |",
                  f"| → marker | {fmt(h['marker_s'], 1000, 1, ' ms') if name == 'guest' else fmt(h['marker_s'], 1, 2, ' s')} "
                  f"| {fmt(q['marker_s'], 1000, 1, ' ms') if name == 'guest' else fmt(q['marker_s'], 1, 2, ' s')} "
                  f"| {fmt(r['marker_s'], digits=3)} |",
                  f"| → exit | {fmt(h['exit_s'], 1000, 1, ' ms') if name == 'guest' else fmt(h['exit_s'], 1, 2, ' s')} "
                  f"| {fmt(q['exit_s'], 1000, 1, ' ms') if name == 'guest' else fmt(q['exit_s'], 1, 2, ' s')} "
                  f"| {fmt(r['exit_s'], digits=3)} |",
                  f"| peak RSS | {fmt(h['peak_rss_kib'], 1 / 1024, 1, ' MiB')} | {fmt(q['peak_rss_kib'], 1 / 1024, 1, ' MiB')} "
                  f"| {fmt(r['peak_rss_kib'], digits=3)} |",
                  f"| guest RAM mapping RSS (last sample) | {fmt(h['guest_rss_kib'], 1 / 1024, 1, ' MiB')} "
                  f"| {fmt(q['guest_rss_kib'], 1 / 1024, 1, ' MiB')} | |",
                  f"| peak RSS − guest RAM RSS | {fmt(h['rss_minus_guest_kib'], 1 / 1024, 2, ' MiB')} "
                  f"| {fmt(q['rss_minus_guest_kib'], 1 / 1024, 2, ' MiB')} | |",
                  f"| VMM CPU user+sys | {fmt(h['vmm_cpu_s'], digits=3, unit=' s')} | {fmt(q['vmm_cpu_s'], digits=3, unit=' s')} "
                  f"| {fmt(r['vmm_cpu_s'], digits=3)} |",
                  f"| user / sys | {fmt(h['user_s'], digits=3)} / {fmt(h['sys_s'], digits=3)} "
                  f"| {fmt(q['user_s'], digits=3)} / {fmt(q['sys_s'], digits=3)} | |",
                  f"| vCPU thread(s) user / sys (sampled) | {fmt(h['vcpu_user_s'], digits=2)} / {fmt(h['vcpu_sys_s'], digits=2)} "
                  f"| {fmt(q['vcpu_user_s'], digits=2)} / {fmt(q['vcpu_sys_s'], digits=2)} | |",
                  f"| CPU outside the vCPU thread(s) | {fmt(h['non_vcpu_cpu_s'], digits=3, unit=' s')} "
                  f"| {fmt(q['non_vcpu_cpu_s'], digits=3, unit=' s')} | |",
                  f"| exits to user space (Hearth's summary) | {fmt(h['exits'], digits=0)} | n/a | |",
                  f"| exit status | {h['rc']} | {q['rc']} | |", ""]
    return "\n".join(lines)


def charts(results, docs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ex = results.get("exits")
    if ex:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        x = range(len(EXIT_KINDS))
        w = 0.38
        for off, who, color in ((-w / 2, "floor", "#999999"), (w / 2, "hearth", "#c0392b")):
            med = [ex[f"{who}/{k}"]["median"] / 1000 for k in EXIT_KINDS]
            lo = [m - ex[f"{who}/{k}"]["min"] / 1000 for m, k in zip(med, EXIT_KINDS)]
            hi = [ex[f"{who}/{k}"]["max"] / 1000 - m for m, k in zip(med, EXIT_KINDS)]
            bars = ax.bar([i + off for i in x], med, w, yerr=[lo, hi], capsize=3, color=color,
                          label="raw kvm-ioctls floor" if who == "floor" else "Hearth (vCPU loop + bus + device)")
            if who == "hearth":
                for b, k in zip(bars, EXIT_KINDS):
                    ratio = ex.get(f"paired/{k}") or ex[f"ratio/{k}"]
                    ax.annotate(f"{ratio['median']:.3f}x", (b.get_x() + b.get_width() / 2, b.get_height()),
                                ha="center", va="bottom", fontsize=8, xytext=(0, 6), textcoords="offset points")
        for k, style in (("cpuid", ":"), ("pit-read", "--")):
            ax.axhline(ex[f"inkernel/{k}"]["median"] / 1000, color="#2c3e50", linestyle=style, linewidth=1,
                       label=f"in-kernel exit ({k}), per exit")
        ax.set_xticks(list(x), EXIT_KINDS)
        ax.set_ylabel("µs per exit (median, min–max over runs)")
        ax.set_title("Exit round trip: Hearth vs the raw KVM floor (kvm_pvm, nested)")
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        fig.savefig(os.path.join(docs, "perf-exits.png"), dpi=110)
        plt.close(fig)
    if results.get("linux") or results.get("guest"):
        fig, axes = plt.subplots(1, 2, figsize=(9, 4))
        for ax, name, unit, scale in ((axes[0], "guest", "ms", 1000), (axes[1], "linux", "s", 1)):
            b = results.get(name)
            if not b:
                ax.set_visible(False)
                continue
            labels = ["→ marker", "→ exit"]
            for off, vmm, color in ((-0.2, "hearth", "#c0392b"), (0.2, "qemu", "#999999")):
                meds = [b[vmm][k]["median"] * scale if b[vmm][k] else 0 for k in ("marker_s", "exit_s")]
                ax.bar([i + off for i in range(2)], meds, 0.4, color=color, label=vmm)
            ax.set_xticks([0, 1], labels)
            ax.set_ylabel(unit)
            ax.set_title("test guest (hello)" if name == "guest" else "Linux 6.1 to Run /init")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(docs, "perf-boot.png"), dpi=110)
        plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--skip-boot", action="store_true")
    ap.add_argument("--skip-linux", action="store_true")
    ap.add_argument("--bench-runs", type=int, default=3)
    ap.add_argument("--guest-runs", type=int, default=5)
    ap.add_argument("--linux-runs", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "side-by-side"))
    ap.add_argument("--docs", default=os.path.join(ROOT, "docs"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    res_path = os.path.join(args.out, "results.json")
    results = {}
    if os.path.exists(res_path):
        with open(res_path) as f:
            results = json.load(f)  # keep parts not rerun
    results["machine"] = {
        "cpu": subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True,
                              text=True).stdout.strip(),
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "kvm_pvm": os.path.isdir("/sys/module/kvm_pvm"),
        "qemu": subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                               text=True).stdout.splitlines()[0],
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }
    if not args.skip_bench:
        results["exits"], load = run_benches(args.bench_runs)
        results["exits_load_after"] = load
    if not args.skip_boot:
        if shutil.which("qemu-system-x86_64") is None:
            sys.exit("side-by-side: qemu-system-x86_64 not found")
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
        elf = guest_elf()
        results["load_before_boot"] = os.getloadavg()
        results["guest"] = summarise_boot(boot_series(
            "test guest", args.guest_runs, elf, "hearth.scenario=hello", "HELLO OK", None, 60))
        if not args.skip_linux:
            with open(os.path.join(ROOT, "resources/linux/cmdline.txt")) as f:
                cmdline = f.read().strip()
            results["linux"] = summarise_boot(boot_series(
                "linux", args.linux_runs, os.path.join(KIT, "vmlinux"), cmdline,
                "Run /init as init process", os.path.join(KIT, "initramfs.cpio"), 400))
        results["load_after_boot"] = os.getloadavg()
    with open(res_path, "w") as f:
        json.dump(results, f, indent=1)
    md = table(results)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(md + "\n")
    charts(results, args.docs)
    print(md)


if __name__ == "__main__":
    main()
