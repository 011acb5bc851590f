#!/usr/bin/python3
"""Network and vsock throughput of the test guest: Hearth beside QEMU
microvm, on the same kind of tap, in one run.

    benches/net_side_by_side.py [--runs 3] [--frames 5000] [--out target/net-bench]

Run as root: it re-executes itself in a network and mount namespace of its
own (`unshare -n -m`, /sys mounted anew), where it creates tap0 (Hearth) and
tap1 (QEMU); no packet leaves that namespace, and it vanishes with the run.

1. TX: the guest's `net-bench` scenario (hearth.dir=tx) sends --frames
   frames of 1500 payload bytes (1514-byte frames) through virtio-net to the
   tap; the host times the NET-BENCH-START and NET-BENCH-END lines.
2. RX: `net-bench` with hearth.dir=rx; the host writes 1514-byte 0x88b5
   frames into the tap through an AF_PACKET socket (bursts of 32, a 0.5 ms
   pause between bursts, the same for both VMMs) until END.
3. vsock (Hearth only: QEMU's vsock needs the host's vhost-vsock, which this
   machine lacks): the guest's `vsock-echo`; the host connects through
   uds_path with `CONNECT 5000`, measures 200 round trips of 64 bytes
   (median and 90th percentile) and then echoes 2 MiB (MiB/s).

QEMU: `-M microvm,acpi=off -cpu host,-arch-capabilities`, virtio-net-device
on `-netdev tap` (vhost off: there is no /dev/vhost-net here), modern
virtio-mmio. Hearth: target/release/hearth (the script builds it).
Writes OUT/results.json and OUT/table.md and prints the table.
"""

import argparse
import glob
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAC = {"hearth": "06:00:ac:10:00:02", "qemu": "06:00:ac:10:00:03"}
TAP = {"hearth": "tap0", "qemu": "tap1"}
PEER = bytes.fromhex("020000000009")


def log(msg):
    print(f"net-bench: {msg}", file=sys.stderr, flush=True)


def sh(*args):
    subprocess.run(args, check=True)


def setup_namespace():
    sh("mount", "--make-rprivate", "/")
    sh("mount", "-t", "sysfs", "sysfs", "/sys")
    for conf in ("default", "all"):
        try:
            with open(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6", "w") as f:
                f.write("1")
        except OSError:
            pass
    for tap in TAP.values():
        sh("ip", "tuntap", "add", tap, "mode", "tap")
        sh("ip", "link", "set", tap, "up")


def guest_elf():
    cands = glob.glob(os.path.join(ROOT, "target/release/build/hearth-*/out/hearth-guest.elf"))
    if not cands:
        sys.exit("net-bench: no target/release/build/hearth-*/out/hearth-guest.elf")
    return max(cands, key=os.path.getmtime)


class Vmm:
    """A VMM running the test guest; its serial lines timed as they come."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self.lines = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self.cond.notify_all()
        with self.cond:
            self.lines.append((time.monotonic(), None))
            self.cond.notify_all()

    def wait_for(self, needle, timeout=300):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, line in self.lines:
                    if line is None:
                        raise RuntimeError(f"VMM exited before {needle!r}: {self.output()}")
                    if needle in line:
                        return t, line[line.index(needle):]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"no {needle!r} within {timeout}s: {self.output()}")
                self.cond.wait(left)

    def output(self):
        return "\n".join(line for _, line in self.lines if line)

    def stop(self):
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def hearth_vm(elf, append, tmp, vsock=None):
    vm = {"name": "vm0", "kernel": {"path": elf, "cmdline": append},
          "memory": {"size_mib": 64}, "serial": {"output": "stdout", "stdin": False}}
    if vsock:
        vm["vsock"] = {"guest_cid": 3, "uds_path": vsock}
    else:
        vm["net"] = [{"id": "eth0", "tap": TAP["hearth"], "mac": MAC["hearth"]}]
    path = os.path.join(tmp, "vm.json")
    with open(path, "w") as f:
        json.dump(vm, f)
    return Vmm([os.path.join(ROOT, "target/release/hearth"), "run", "--config", path])


def qemu_vm(elf, append):
    return Vmm(["qemu-system-x86_64", "-M", "microvm,acpi=off", "-enable-kvm",
                "-cpu", "host,-arch-capabilities", "-nodefaults", "-no-reboot", "-nographic",
                "-serial", "stdio", "-device", "i8042", "-m", "64", "-smp", "1",
                "-kernel", elf, "-append", append,
                "-global", "virtio-mmio.force-legacy=false",
                "-netdev", f"tap,id=n0,ifname={TAP['qemu']},script=no,downscript=no,vhost=off",
                "-device", f"virtio-net-device,netdev=n0,mac={MAC['qemu']}"])


def writer(tap, stop):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((tap, 0))
    frame = b"\xff" * 6 + PEER + b"\x88\xb5" + bytes(range(256)) * 5 + bytes(220)
    assert len(frame) == 1514
    while not stop.is_set():
        for _ in range(32):
            try:
                s.send(frame)
            except OSError:
                pass
        time.sleep(0.0005)


def net_run(vmm, elf, direction, frames, tmp):
    append = f"hearth.scenario=net-bench hearth.dir={direction} hearth.count={frames}"
    v = hearth_vm(elf, append, tmp) if vmm == "hearth" else qemu_vm(elf, append)
    stop = threading.Event()
    try:
        t0, _ = v.wait_for("NET-BENCH-START")
        if direction == "rx":
            threading.Thread(target=writer, args=(TAP[vmm], stop), daemon=True).start()
        t1, end = v.wait_for("NET-BENCH-END")
    finally:
        stop.set()
        v.stop()
    fields = dict(tok.split("=") for tok in end.split()[1:])
    n, nbytes, dt = int(fields["frames"]), int(fields["bytes"]), t1 - t0
    return {"frames_per_s": n / dt, "mib_per_s": nbytes / dt / (1 << 20), "seconds": dt}


def vsock_run(elf, tmp):
    uds = os.path.join(tmp, "v.sock")
    v = hearth_vm(elf, "hearth.scenario=vsock-echo hearth.port=5000", tmp, vsock=uds)
    try:
        v.wait_for("VSOCK-LISTEN")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(uds)
        s.sendall(b"CONNECT 5000\n")
        f = s.makefile("rb")
        ok = f.readline()
        assert ok.startswith(b"OK "), ok
        rtts = []
        msg = bytes(range(64))
        for _ in range(200):
            t = time.monotonic()
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                got += f.read1(len(msg) - len(got))
            rtts.append(time.monotonic() - t)
        n = 2 << 20
        data = bytes(range(256)) * (n // 256)
        t = time.monotonic()
        wt = threading.Thread(target=s.sendall, args=(data,))
        wt.start()
        got = 0
        while got < n:
            chunk = f.read1(1 << 16)
            if not chunk:
                break
            got += len(chunk)
        dt = time.monotonic() - t
        wt.join()
        s.shutdown(socket.SHUT_WR)
        s.close()
        v.wait_for("VSOCK-ECHO")
    finally:
        v.stop()
    rtts.sort()
    return {"rtt_us_median": statistics.median(rtts) * 1e6,
            "rtt_us_p90": rtts[int(len(rtts) * 0.9)] * 1e6,
            "echo_mib_per_s": got / dt / (1 << 20), "echo_bytes": got}


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--frames", type=int, default=5000)
    ap.add_argument("--out", default=os.path.join(ROOT, "target/net-bench"))
    ap.add_argument("--in-namespace", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.in_namespace:
        sh("cargo", "build", "--release", "--quiet", "--manifest-path", os.path.join(ROOT, "Cargo.toml"))
        os.execvp("unshare", ["unshare", "-n", "-m", sys.executable, os.path.abspath(__file__),
                              "--in-namespace"] + sys.argv[1:])
    setup_namespace()
    elf = guest_elf()
    results = {"frames": args.frames, "runs": args.runs,
               "qemu": subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                                      text=True).stdout.splitlines()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        # Alternated run by run, so that load drifting on a shared machine
        # falls on both VMMs alike.
        runs = {(vmm, d): [] for vmm in ("hearth", "qemu") for d in ("tx", "rx")}
        for i in range(args.runs):
            for direction in ("tx", "rx"):
                for vmm in ("hearth", "qemu"):
                    r = net_run(vmm, elf, direction, args.frames, tmp)
                    log(f"{vmm} {direction} run {i + 1}: {r['frames_per_s']:.0f} frames/s, {r['mib_per_s']:.2f} MiB/s")
                    runs[(vmm, direction)].append(r)
        for (vmm, direction), rs in runs.items():
            results[f"{vmm}_{direction}"] = {
                "frames_per_s": summary([r["frames_per_s"] for r in rs]),
                "mib_per_s": summary([r["mib_per_s"] for r in rs]),
                "ratio_to_qemu": None}
        for d in ("tx", "rx"):
            ratios = [h["frames_per_s"] / q["frames_per_s"]
                      for h, q in zip(runs[("hearth", d)], runs[("qemu", d)])]
            results[f"hearth_{d}"]["ratio_to_qemu"] = summary(ratios)
        runs = []
        for i in range(args.runs):
            r = vsock_run(elf, tmp)
            log(f"hearth vsock run {i + 1}: rtt {r['rtt_us_median']:.0f} us, {r['echo_mib_per_s']:.2f} MiB/s")
            runs.append(r)
        results["hearth_vsock"] = {k: summary([r[k] for r in runs])
                                   for k in ("rtt_us_median", "rtt_us_p90", "echo_mib_per_s")}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    fmt = lambda s, p=0: f"{s['median']:.{p}f} ({s['min']:.{p}f}-{s['max']:.{p}f})"
    rows = ["| what | Hearth | QEMU microvm |", "|---|---|---|"]
    for d in ("tx", "rx"):
        rows.append(f"| {d.upper()} frames/s | {fmt(results['hearth_' + d]['frames_per_s'])} | {fmt(results['qemu_' + d]['frames_per_s'])} |")
        rows.append(f"| {d.upper()} MiB/s | {fmt(results['hearth_' + d]['mib_per_s'], 2)} | {fmt(results['qemu_' + d]['mib_per_s'], 2)} |")
        rows.append(f"| {d.upper()} Hearth / QEMU, run by run | {fmt(results['hearth_' + d]['ratio_to_qemu'], 2)} | |")
    vs = results["hearth_vsock"]
    rows.append(f"| vsock echo round trip, 64 B, median (us) | {fmt(vs['rtt_us_median'])} | n/a |")
    rows.append(f"| vsock echo round trip, 64 B, p90 (us) | {fmt(vs['rtt_us_p90'])} | n/a |")
    rows.append(f"| vsock echo 2 MiB (MiB/s) | {fmt(vs['echo_mib_per_s'], 2)} | n/a |")
    table = "\n".join(rows)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
