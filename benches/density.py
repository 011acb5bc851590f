#!/usr/bin/python3
"""Density: N test-guest VMs in one Hearth monitor against N QEMU microvm
processes and N Firecracker processes, side by side in one run.

    benches/density.py [--counts 1,10,50,200] [--runs 3] [--scenario spin]
                       [--guest full|quick]
                       [--memory 128] [--cpus 0] [--settle 3]
                       [--systems hearth,qemu,firecracker]
                       [--hearth NAME=PATH ...] [--out target/density]
                       [--report-only]

For every run, every N and every system (the systems' order rotates run by
run, so drifting load on this shared machine hits all of them alike), one
trial:

1. start: Hearth is one `hearth serve --config F --stats-file S
   --api-socket A` with N VMs in F (a monitor file's VMs start as with
   `hearth run`; a serving monitor prefixes every console line with its
   VM's name); QEMU and Firecracker are N processes spawned one after another.
   "Time to start all N" runs from the (first) spawn until every VM has
   printed its first guest line (the test guest prints a boot line at
   once) on the VMM's stdout.
2. after --settle seconds with all N up: RSS and PSS of the VMM
   process(es) from /proc/PID/smaps_rollup, the share of guest RAM (the
   mappings of the guest's size in /proc/PID/smaps), threads, and for
   Hearth its statistics file (`scheduler.tick_late_us`, `missed_ticks`).
3. one more VM while the N spin: the time from asking for it (Hearth:
   `hearth ctl SOCK create` then `start` on the monitor's control socket;
   QEMU and Firecracker: one more process) until it has printed its
   first guest line, what a platform's cold start under load is; then it
   is deleted (its process stopped) again.
4. stop: SIGTERM to the monitor, or to every process one after another,
   until the (last) process has exited.

Every VMM process runs on the host CPUs of --cpus (its affinity is set
between fork and exec; Hearth's file also sets `host.cpu.cpus`), and the
script itself on the others, so that the script's own work is not charged
to the VMs' CPUs. Firecracker takes part when a `firecracker` binary is on
PATH (run as `firecracker --no-api --config-file F --log-path L`).

Several Hearth builds can take part in one run, as systems of their own:
`--hearth before=/path/to/old/hearth` adds "hearth:before" beside
"hearth" (this tree's release build), alternated with the others like
any system.

Writes OUT/results.json (every trial; a later run adds its trials beside
the earlier ones), then OUT/table.md and docs/perf-density.png through
benches/density_report.py (tables and plot from the last run).

Needs: a release build of Hearth (`cargo build --release`, run here),
qemu-system-x86_64 (Debian's qemu-system-x86), python3-matplotlib.
"""

import argparse
import glob
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEMS = ("hearth", "qemu", "firecracker")
BOOT_LINE = b"hearth-guest:"


def log(msg):
    print(f"density: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Reading the VMs' consoles

class Consoles(threading.Thread):
    """Reads every VMM's stdout until it closes; notes when each VM printed
    its first whole guest line. `key(fd, line)` names the VM a line is
    from (Hearth prefixes lines with `name| `), or None."""

    def __init__(self, n):
        super().__init__(daemon=True)
        self.sel = selectors.DefaultSelector()
        self.n = n
        self.up = {}  # VM -> time.monotonic() of its first guest line
        self.all_up = threading.Event()
        self.lock = threading.Lock()
        self.partial = {}
        self.open = 0
        self.done = threading.Event()

    def wait_for(self, vm, timeout):
        """When `vm` printed its first guest line, or None after `timeout` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if vm in self.up:
                    return self.up[vm]
            time.sleep(0.001)
        return None

    def add(self, pipe, key):
        os.set_blocking(pipe.fileno(), False)
        with self.lock:
            self.partial[pipe.fileno()] = b""
            self.open += 1
        self.sel.register(pipe, selectors.EVENT_READ, key)

    def run(self):
        while True:
            with self.lock:
                if self.open == 0 and self.done.is_set():
                    return
            for sk, _ in self.sel.select(timeout=0.05):
                fd = sk.fileobj.fileno()
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    self.sel.unregister(sk.fileobj)
                    with self.lock:
                        self.open -= 1
                    continue
                now = time.monotonic()
                buf = self.partial[fd] + data
                *lines, self.partial[fd] = buf.split(b"\n")
                self.partial[fd] = self.partial[fd][-4096:]
                for line in lines:
                    if BOOT_LINE not in line:
                        continue
                    vm = sk.data(fd, line)
                    if vm is not None and vm not in self.up:
                        self.up[vm] = now
                if len(self.up) >= self.n:
                    self.all_up.set()


# ---------------------------------------------------------------------------
# Memory and threads from /proc

def rollup(pid):
    """(Rss, Pss) in KiB from /proc/PID/smaps_rollup."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("Rss", "Pss"):
                    out[k] = int(v.split()[0])
    except OSError:
        return None
    return out.get("Rss"), out.get("Pss")


def guest_ram(pid, mem_mib):
    """(Rss, Pss) in KiB of the mappings that hold guest RAM: not backed
    by a regular file, and at least the guest's size (the kernel merges
    the adjacent guest RAM mappings of a monitor's VMs into one, together
    with any small anonymous mapping that happens to border them, so this
    can count a few KiB of the VMM's own as guest RAM). The guest size
    must stay above glibc's 64 MiB malloc arenas."""
    rss = pss = 0
    lo = mem_mib * 1024
    size = None
    keep = False
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                    parts = line.split(maxsplit=5)
                    path = parts[5].strip() if len(parts) > 5 else ""
                    keep = path == "" or path.startswith("[anon") or "memfd" in path
                elif line.startswith("Size:"):
                    size = int(line.split()[1])
                    keep = keep and size >= lo
                elif keep and line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif keep and line.startswith("Pss:"):
                    pss += int(line.split()[1])
    except OSError:
        return None
    return rss, pss


def threads(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def measure(pids, mem_mib):
    total = {"rss_kib": 0, "pss_kib": 0, "guest_rss_kib": 0, "guest_pss_kib": 0, "threads": 0}
    for pid in pids:
        r = rollup(pid)
        g = guest_ram(pid, mem_mib)
        if r is None or g is None or None in r:
            continue
        total["rss_kib"] += r[0]
        total["pss_kib"] += r[1]
        total["guest_rss_kib"] += g[0]
        total["guest_pss_kib"] += g[1]
        total["threads"] += threads(pid)
    return total


# ---------------------------------------------------------------------------
# The three systems

def pin(cpus):
    return lambda: os.sched_setaffinity(0, cpus)


# Every VMM process the bench started and has not seen exit: killed if
# the bench itself ends early (an exception, Ctrl-C, SIGTERM), so that no
# monitor of 200 spinning VMs outlives it and skews later measurements.
SPAWNED = []


def spawn(argv, cpus, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL):
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                         preexec_fn=pin(cpus), close_fds=True)
    SPAWNED.append(p)
    return p


def kill_spawned():
    for p in SPAWNED:
        if p.poll() is None:
            p.kill()
            p.wait()


def guest_cmdline(args):
    return f"hearth.scenario={args.scenario}"


def hearth_trial(binary, n, args, tmp):
    vms = [{"name": f"vm{i}", "kernel": {"path": args.elf, "cmdline": guest_cmdline(args)},
            "memory": {"size_mib": args.memory}} for i in range(n)]
    cfg = os.path.join(tmp, "monitor.json")
    stats = os.path.join(tmp, "stats.json")
    with open(cfg, "w") as f:
        json.dump({"host": {"cpu": {"cpus": args.cpus}}, "vms": vms}, f)
    sock = os.path.join(tmp, "api.sock")
    cons = Consoles(n)
    t0 = time.monotonic()
    p = spawn([binary, "serve", "--config", cfg, "--stats-file", stats, "--api-socket", sock],
              args.cpus, stderr=open(os.path.join(tmp, "hearth.log"), "w"))

    def key(_fd, line):
        m = re.match(rb"(vm\d+|extra)\| ", line)
        if not m:
            return None
        return "extra" if m.group(1) == b"extra" else int(m.group(1)[2:])

    cons.add(p.stdout, key)
    cons.start()
    r = settle_and_measure(cons, [p], t0, args)
    try:
        with open(stats) as f:
            s = json.load(f)["scheduler"]
        r["tick_late_us"] = s.get("tick_late_us")
        r["missed_ticks"] = s.get("missed_ticks")
        r["ticks"] = s.get("ticks")
        r["tick_cost_ns"] = s.get("cost_ns")
    except (OSError, ValueError, KeyError) as e:
        log(f"hearth: no statistics: {e}")
    if r.get("up") == n:
        r["one_more_s"] = hearth_one_more(binary, sock, cons, args, tmp)
    t2 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    rc = wait_all([p], args.timeout)
    r["stop_s"] = time.monotonic() - t2
    r["rc"] = rc[0]
    cons.done.set()
    return r


def hearth_one_more(binary, sock, cons, args, tmp):
    """One more VM, "extra", created and started on the control socket
    while the others run: seconds until its first guest line."""
    path = os.path.join(tmp, "extra.json")
    with open(path, "w") as f:
        json.dump({"name": "extra", "kernel": {"path": args.elf, "cmdline": guest_cmdline(args)},
                   "memory": {"size_mib": args.memory}}, f)

    def ctl(*argv):
        return subprocess.run([binary, "ctl", sock, *argv], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, timeout=args.timeout)

    t = time.monotonic()
    for argv in (("create", path), ("start", "extra")):
        done = ctl(*argv)
        if done.returncode != 0:
            log(f"hearth: ctl {argv[0]} extra failed: {done.stderr.strip()}")
            return None
    up = cons.wait_for("extra", args.timeout)
    ctl("delete", "extra")
    return None if up is None else up - t


def qemu_argv(args, _i, _tmp):
    return ["qemu-system-x86_64", "-M", "microvm,acpi=off", "-enable-kvm",
            "-cpu", "host,-arch-capabilities", "-nodefaults", "-no-reboot", "-display", "none",
            "-serial", "stdio", "-device", "i8042", "-m", str(args.memory), "-smp", "1",
            "-kernel", args.elf, "-append", guest_cmdline(args)]


def firecracker_argv(args, i, tmp):
    cfg = os.path.join(tmp, f"fc{i}.json")
    with open(cfg, "w") as f:
        json.dump({"boot-source": {"kernel_image_path": args.elf,
                                   "boot_args": guest_cmdline(args)},
                   "drives": [],
                   "machine-config": {"vcpu_count": 1, "mem_size_mib": args.memory}}, f)
    logf = os.path.join(tmp, f"fc{i}.log")
    open(logf, "w").close()
    return [args.firecracker, "--no-api", "--config-file", cfg, "--log-path", logf,
            "--level", "Warning"]


def processes_trial(system, n, args, tmp):
    make = qemu_argv if system == "qemu" else firecracker_argv
    argvs = [make(args, i, tmp) for i in range(n)]
    cons = Consoles(n)
    cons.start()
    procs = []
    t0 = time.monotonic()
    for i, argv in enumerate(argvs):
        p = spawn(argv, args.cpus)
        procs.append(p)
        cons.add(p.stdout, lambda _fd, _line, i=i: i)
    r = settle_and_measure(cons, procs, t0, args)
    if r.get("up") == n:
        argv = make(args, n, tmp)
        t = time.monotonic()
        extra = spawn(argv, args.cpus)
        cons.add(extra.stdout, lambda _fd, _line: "extra")
        up = cons.wait_for("extra", args.timeout)
        r["one_more_s"] = None if up is None else up - t
        extra.send_signal(signal.SIGTERM)
        wait_all([extra], args.timeout)
    t2 = time.monotonic()
    for p in procs:
        p.send_signal(signal.SIGTERM)
    rcs = wait_all(procs, args.timeout)
    r["stop_s"] = time.monotonic() - t2
    r["rc"] = sorted(set(rcs))
    cons.done.set()
    return r


def settle_and_measure(cons, procs, t0, args):
    """Waits until every VM is up (or a VMM process ended, or the
    timeout), lets them run --settle seconds, then measures."""
    r = {}
    deadline = time.monotonic() + args.timeout
    ok = False
    while time.monotonic() < deadline:
        if cons.all_up.wait(0.2):
            ok = True
            break
        gone = [p for p in procs if p.poll() is not None]
        if gone:
            log(f"a VMM process ended before its VM came up (exit status {gone[0].returncode})")
            break
    pids = [p.pid for p in procs]
    r["up"] = len(cons.up)
    r["start_s"] = (max(cons.up.values()) - t0) if ok else None
    if cons.up:
        ups = sorted(cons.up.values())
        r["first_up_s"] = ups[0] - t0
        r["median_up_s"] = ups[len(ups) // 2] - t0
    if not ok:
        log(f"only {len(cons.up)} VMs up")
    time.sleep(args.settle)
    r.update(measure(pids, args.memory))
    return r


def wait_all(procs, timeout):
    """Waits for every process (a blocking waitpid: Popen.wait with a
    timeout polls with sleeps growing to 50 ms, which would add up to
    50 ms to a stop time); kills what is left after `timeout` s."""
    def kill_left():
        for p in procs:
            if p.poll() is None:
                p.kill()
    timer = threading.Timer(timeout, kill_left)
    timer.start()
    try:
        return [p.wait() for p in procs]
    finally:
        timer.cancel()


# ---------------------------------------------------------------------------

def trial(system, n, args):
    with tempfile.TemporaryDirectory(prefix=f"density-{system}-") as tmp:
        load = os.getloadavg()[0]
        if system in args.hearths:
            r = hearth_trial(args.hearths[system], n, args, tmp)
        else:
            r = processes_trial(system, n, args, tmp)
    r.update(system=system, n=n, load_before=load)
    return r


def guest_elf(args):
    """The test guest, or with --guest quick the quick guest (its boot line
    first, then a spin, or a halt for --scenario idle)."""
    name = "hearth-guest.elf"
    if args.guest == "quick":
        name = "hearth-quick-idle.elf" if args.scenario == "idle" else "hearth-quick.elf"
    cands = glob.glob(os.path.join(ROOT, f"target/release/build/hearth-*/out/{name}"))
    if not cands:
        sys.exit(f"density: no target/release/build/hearth-*/out/{name} (cargo build --release)")
    return max(cands, key=os.path.getmtime)


def machine():
    cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"],
                         capture_output=True, text=True).stdout.strip()
    info = {"cpu": cpu, "cpus": os.cpu_count(), "kernel": os.uname().release,
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    for name, argv in (("qemu", ["qemu-system-x86_64", "--version"]),
                       ("firecracker", [shutil.which("firecracker") or "false", "--version"]),
                       ("hearth_commit", ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])):
        try:
            out = subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()
            info[name] = out[0] if out else None
        except OSError:
            info[name] = None
    return info


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="1,10,50,200")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scenario", default="spin", choices=("spin", "idle"))
    ap.add_argument("--guest", default="full", choices=("full", "quick"),
                    help="quick: resources/guest-quick, a boot as short as on hardware KVM")
    ap.add_argument("--memory", type=int, default=128, help="MiB of guest RAM per VM")
    ap.add_argument("--cpus", default="0", help="host CPUs of every VMM process, e.g. 0 or 0,1")
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--hearth", action="append", default=[], metavar="NAME=PATH",
                    help="another Hearth binary, as system hearth:NAME")
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "density"))
    ap.add_argument("--docs", default=os.path.join(ROOT, "docs"))
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if args.memory <= 64:
        ap.error("--memory must be above 64 MiB (glibc's malloc arenas would count as guest RAM)")
    args.counts = [int(c) for c in args.counts.split(",")]
    args.cpus = [int(c) for c in args.cpus.split(",")]
    args.systems = [s for s in args.systems.split(",") if s]
    return args


def main():
    args = parse_args()
    os.makedirs(args.out, exist_ok=True)
    res_path = os.path.join(args.out, "results.json")
    results = {"trials": []}
    if os.path.exists(res_path):
        with open(res_path) as f:
            results = json.load(f)
    if not args.report_only:
        run(args, results, res_path)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import density_report
    md = density_report.report(results, args.out, args.docs)
    print(md)


def run(args, results, res_path):
    args.hearths = {}
    if "hearth" in args.systems:
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
        args.hearths["hearth"] = os.path.join(ROOT, "target/release/hearth")
    for extra in args.hearth:
        name, _, path = extra.partition("=")
        args.hearths[f"hearth:{name}"] = os.path.abspath(path)
        args.systems.insert(len(args.hearths) - 1, f"hearth:{name}")
    args.elf = guest_elf(args)
    args.firecracker = shutil.which("firecracker")
    if "firecracker" in args.systems and args.firecracker is None:
        log("no firecracker on PATH: Firecracker left out")
        args.systems.remove("firecracker")
    info = machine()
    others = [c for c in range(os.cpu_count()) if c not in args.cpus]
    if others:
        os.sched_setaffinity(0, others)
    run_id = len(results.setdefault("runs", []))
    results["runs"].append({
        "id": run_id, "machine": info, "scenario": args.scenario, "guest": args.guest,
        "memory_mib": args.memory, "cpus": args.cpus, "settle_s": args.settle,
        "systems": args.systems, "counts": args.counts, "runs": args.runs,
        "hearths": args.hearths, "command": " ".join(sys.argv)})
    for i in range(args.runs):
        for n in args.counts:
            k = i % len(args.systems)
            for system in args.systems[k:] + args.systems[:k]:
                log(f"run {i + 1}/{args.runs}, N={n}, {system}; load {os.getloadavg()[0]:.1f}")
                r = trial(system, n, args)
                r.update(run_id=run_id, round=i)
                log("  start {} s, stop {:.3f} s, PSS {:.1f} MiB, up {}".format(
                    "n/a" if r.get("start_s") is None else f"{r['start_s']:.3f}",
                    r["stop_s"], r["pss_kib"] / 1024, r["up"]))
                results["trials"].append(r)
                with open(res_path, "w") as f:
                    json.dump(results, f, indent=1)
                time.sleep(1)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("density: terminated"))
    try:
        main()
    finally:
        kill_spawned()
