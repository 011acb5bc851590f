#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Boot the Hearth test guest under QEMU's microvm machine and check its
virtio-blk and virtio-net drivers against QEMU's virtio-mmio devices, an
implementation independent of Hearth's.

    resources/guest/qemu-check.py [--elf PATH] [--verbose] [CHECK ...]

Without --elf the guest is assembled and linked here from
resources/guest/*.S exactly as build.rs does (gcc, ld). CHECK names pick
checks (a prefix picks several: "blk", "net-flood"); --list lists them.
Each check prints PASS or FAIL, the QEMU command line (with --verbose or on
a failure) and the guest's lines. The exit status is 1 if any check failed.

Needs qemu-system-x86_64 (QEMU 7.2 here: apt-get install qemu-system-x86),
/dev/kvm, gcc and ld. Network checks use QEMU's "-netdev socket,udp=...":
every UDP datagram is one Ethernet frame, so this script is the guest's
network peer without a tap device or privileges. vsock checks use QEMU's
vhost-user-vsock-device with the device itself in vhost_user_vsock.py
(beside this file): this kernel has no vhost-vsock.
"""

import argparse
import os
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # nothing new in the guest's source folder
import qemu_check_vsock  # noqa: E402
from qemu_guest import (MAC, SECTORS, CheckFailed, Ctx, Guest, Net, build_guest,  # noqa: E402
                        expect, fields, fnv1a64, hearth_frame, pattern_sector)


# ---------------------------------------------------------------------------
# Checks. Each takes the context and raises CheckFailed if the guest is wrong.

def disk(ctx, name, readonly=False, serial=None):
    path = os.path.join(ctx.tmp, name)
    with open(path, "wb") as f:
        f.write(bytes((i * 7 + 3 + (i >> 9)) & 0xFF for i in range(SECTORS * 512)))
    opts = f"id={name},file={path},format=raw,if=none" + (",readonly=on" if readonly else "")
    dev = f"virtio-blk-device,drive={name}" + (f",serial={serial}" if serial else "")
    return path, ["-drive", opts, "-device", dev]


def check_blk_info(ctx):
    _, args = disk(ctx, "info.img", serial="HEARTH-QEMU-1")
    g = Guest(ctx, "hearth.scenario=blk-info", args)
    info = fields(g.wait_for("BLK-INFO"))
    expect(info == {"dev": "0", "capacity": str(SECTORS), "ro": "0", "blk_size": "512",
                    "seg_max": "254", "flush": "1"}, f"BLK-INFO {info}")
    ident = g.wait_for("BLK-ID")
    expect(ident == "BLK-ID dev=0 serial=HEARTH-QEMU-1", ident)
    g.finish()
    return g


def check_blk_info_ro(ctx):
    _, args = disk(ctx, "ro.img", readonly=True)
    g = Guest(ctx, "hearth.scenario=blk-info", args)
    expect(fields(g.wait_for("BLK-INFO"))["ro"] == "1", "ro=1")
    g.finish()
    return g


def blk_read(ctx, extra, start, count):
    path, args = disk(ctx, "read.img")
    g = Guest(ctx, "hearth.scenario=blk-read " + extra, args)
    f = fields(g.wait_for("BLK-READ"))
    with open(path, "rb") as fh:
        want = fnv1a64(fh.read()[start * 512:(start + count) * 512])
    expect(f["start"] == str(start) and f["sectors"] == str(count), str(f))
    expect(f["fnv"] == f"{want:016x}", f"fnv {f['fnv']}, the image gives {want:016x}")
    g.finish()
    return g


def check_blk_read_all(ctx):
    return blk_read(ctx, "", 0, SECTORS)


def check_blk_read_range(ctx):
    return blk_read(ctx, "hearth.start=3 hearth.count=700 hearth.bs=4096", 3, 700)


def check_blk_read_sectors(ctx):
    return blk_read(ctx, "hearth.start=100 hearth.count=37 hearth.bs=512", 100, 37)


def check_blk_write(ctx):
    path, args = disk(ctx, "write.img")
    with open(path, "rb") as fh:
        before = fh.read()
    g = Guest(ctx, "hearth.scenario=blk-write hearth.start=5 hearth.count=300 hearth.seed=0x1234", args)
    w = g.wait_for("BLK-WRITE")
    expect(w == "BLK-WRITE dev=0 start=5 sectors=300 seed=0x1234 status=ok flush=ok", w)
    v = fields(g.wait_for("BLK-VERIFY"))
    g.finish()
    with open(path, "rb") as fh:
        after = fh.read()
    want = b"".join(pattern_sector(s, 0x1234) for s in range(5, 305))
    expect(after[5 * 512:305 * 512] == want, "the image holds the documented pattern")
    expect(after[:5 * 512] == before[:5 * 512] and after[305 * 512:] == before[305 * 512:],
           "sectors outside the range are untouched")
    expect(v["bad"] == "0" and v["fnv"] == f"{fnv1a64(want):016x}", f"BLK-VERIFY {v}")
    return g


def blk_err(ctx, extra, readonly, want):
    _, args = disk(ctx, "err.img", readonly=readonly)
    g = Guest(ctx, "hearth.scenario=blk-err " + extra, args)
    line = g.wait_for("BLK-STATUS")
    expect(line == want, f"{line!r}, expected {want!r}")
    g.finish()
    return g


def check_blk_err_ro_write(ctx):
    return blk_err(ctx, "hearth.op=write", True, "BLK-STATUS op=write status=1 start=0 sectors=1")


def check_blk_err_past_end(ctx):
    return blk_err(ctx, "", False, f"BLK-STATUS op=read status=1 start={SECTORS} sectors=1")


def check_blk_err_straddle(ctx):
    return blk_err(ctx, f"hearth.start={SECTORS - 1} hearth.count=2", False,
                   f"BLK-STATUS op=read status=1 start={SECTORS - 1} sectors=2")


def check_blk_err_unknown(ctx):
    return blk_err(ctx, "hearth.op=unknown", False, "BLK-STATUS op=unknown status=2 start=0 sectors=0")


def check_blk_err_flush(ctx):
    return blk_err(ctx, "hearth.op=flush", False, "BLK-STATUS op=flush status=0 start=0 sectors=0")


# What QEMU 7.2 does with each malformed request: it marks itself
# NEEDS_RESET for some and takes the others (a stricter device refuses all).
QEMU_BAD = {"hdr-short": "1", "no-status": "0", "status-ro": "1", "data-oob": "0",
            "loop": "1", "indirect": "0", "huge": "1"}


def check_blk_bad(ctx):
    guests = []
    for kind, needs_reset in QEMU_BAD.items():
        _, args = disk(ctx, "bad.img")
        g = Guest(ctx, f"hearth.scenario=blk-bad hearth.kind={kind}", args)
        guests.append(g)
        f = fields(g.wait_for("BLK-BAD"))
        expect(f["kind"] == kind and f["needs_reset"] == needs_reset,
               f"{kind}: needs_reset={f['needs_reset']}, QEMU gives {needs_reset}")
        expect(g.wait_for("BLK-RECOVER") == "BLK-RECOVER status=ok", f"{kind}: recovery")
        g.finish()
    return guests


def blk_bench(ctx, extra, ops):
    _, args = disk(ctx, "bench.img")
    g = Guest(ctx, "hearth.scenario=blk-bench " + extra, args)
    g.wait_for("BLK-BENCH-START")
    t0 = time.time()
    end = fields(g.wait_for("BLK-BENCH-END"))
    dt = time.time() - t0
    expect(end["ops"] == str(ops) and end["errors"] == "0", str(end))
    g.finish()
    g.lines.append(f"(host: {ops / dt:.0f} requests/s, {int(end['bytes']) / dt / 2**20:.1f} MiB/s)")
    return g


def check_blk_bench_seq(ctx):
    return blk_bench(ctx, "hearth.ops=2000", 2000)


def check_blk_bench_rand_qd16(ctx):
    return blk_bench(ctx, "hearth.mode=rand hearth.qd=16 hearth.ops=4000 hearth.seed=7", 4000)


def check_blk_bench_write(ctx):
    return blk_bench(ctx, "hearth.op=write hearth.bs=65536 hearth.qd=4 hearth.ops=200", 200)


def check_blk_loop(ctx):
    _, args = disk(ctx, "loop.img")
    g = Guest(ctx, "hearth.scenario=blk-loop hearth.every_mib=2", args)
    p1 = int(fields(g.wait_for("BLK-PROGRESS"))["mib"])
    p2 = int(fields(g.wait_for("BLK-PROGRESS"))["mib"])
    expect(p2 == p1 + 2, f"progress {p1} then {p2}")
    g.type("q")
    stop = fields(g.wait_for("BLK-STOPPED"))
    expect(int(stop["mib"]) >= p2, str(stop))
    g.finish()
    return g


def check_blk_second_drive(ctx):
    path0, args0 = disk(ctx, "first.img")
    path1, args1 = disk(ctx, "second.img")
    with open(path1, "r+b") as fh:
        fh.write(b"second drive" * 100)
        fh.seek(0)
        want = fnv1a64(fh.read()[:8 * 512])
    g = Guest(ctx, "hearth.scenario=blk-read hearth.dev=1 hearth.count=8", args0 + args1)
    f = fields(g.wait_for("BLK-READ"))
    expect(f["dev"] == "1" and f["fnv"] == f"{want:016x}", str(f))
    g.finish()
    return g


def net_guest(ctx, append):
    net = Net()
    g = Guest(ctx, append, net.args)
    info = fields(g.wait_for("NET-INFO"))
    expect(info == {"mac": MAC, "mtu": "0"}, f"NET-INFO {info}")
    g.wait_for("NET-READY")
    return net, g


def mac_bytes():
    return bytes.fromhex(MAC.replace(":", ""))


def check_net_info(ctx):
    _, g = net_guest(ctx, "hearth.scenario=net-info")
    g.finish()
    return g


def check_net_tx(ctx):
    net, g = net_guest(ctx, "hearth.scenario=net-tx hearth.len=100")
    frame = net.recv()
    want = hearth_frame(b"\xff" * 6, mac_bytes(), 0, 100)
    expect(frame == want, f"frame {frame.hex()}")
    line = g.wait_for("NET-TX")
    expect(line == f"NET-TX ok len={len(want)} fnv={fnv1a64(want):016x}", line)
    g.finish()
    return g


def check_net_rx(ctx):
    net, g = net_guest(ctx, "hearth.scenario=net-rx hearth.count=2")
    noise = b"\x33\x33\x00\x00\x00\x01" + b"\x02" * 6 + b"\x86\xdd" + bytes(40)
    frames = [mac_bytes() + b"\x02\x00\x00\x00\x00\x09" + b"\x88\xb5" + bytes(i & 0xFF for i in range(n)) for n in (50, 1500)]
    net.send(noise)
    for fr in frames:
        net.send(fr)
    for fr in frames:
        line = g.wait_for("NET-RX ")
        expect(line == f"NET-RX len={len(fr)} fnv={fnv1a64(fr):016x}", line)
    done = g.wait_for("NET-RX-DONE")
    expect(done == "NET-RX-DONE frames=2 ignored=1", done)
    g.finish()
    return g


def check_net_arp(ctx):
    net, g = net_guest(ctx, "hearth.scenario=net-arp hearth.ip=10.0.0.2 hearth.count=2")
    peer = b"\x02\x00\x00\x00\x00\x09"
    req = (b"\xff" * 6 + peer + b"\x08\x06" + b"\x00\x01\x08\x00\x06\x04\x00\x01" + peer
           + bytes([10, 0, 0, 1]) + bytes(6) + bytes([10, 0, 0, 2]))
    other = req[:38] + bytes([10, 0, 0, 3])
    net.send(req)
    net.send(other)
    net.send(req)
    want = (peer + mac_bytes() + b"\x08\x06" + b"\x00\x01\x08\x00\x06\x04\x00\x02" + mac_bytes()
            + bytes([10, 0, 0, 2]) + peer + bytes([10, 0, 0, 1]))
    want += bytes(60 - len(want))
    for _ in range(2):
        reply = net.recv()
        expect(reply == want, f"reply {reply.hex()}")
    line = g.wait_for("NET-ARP")
    expect(line == "NET-ARP replied=2 ignored=1", line)
    g.finish()
    return g


def check_net_flood(ctx):
    count, n = 500, 64
    net, g = net_guest(ctx, f"hearth.scenario=net-flood hearth.count={count} hearth.len={n}")
    got = []

    def reader():
        try:
            while len(got) < count:
                got.append(net.recv())
        except OSError:
            pass

    t = threading.Thread(target=reader)
    t.start()
    for k in range(count):
        net.send(hearth_frame(b"\xff" * 6, b"\x02" * 6, k, n))
        if k % 8 == 7:
            time.sleep(0.01)  # the guest runs slowly under kvm_pvm: do not overrun its ring
    t.join()
    line = g.wait_for("NET-FLOOD")
    expect(line == f"NET-FLOOD tx={count} rx={count} in_order=1 bad=0 ignored=0", line)
    expect(got == [hearth_frame(b"\xff" * 6, mac_bytes(), k, n) for k in range(count)],
           f"the host got {len(got)} frames, not 0..{count - 1} in order")
    g.finish()
    return g


def check_net_bench_tx(ctx):
    count = 3000
    net, g = net_guest(ctx, f"hearth.scenario=net-bench hearth.count={count}")
    g.wait_for("NET-BENCH-START")
    t0 = time.time()
    end = g.wait_for("NET-BENCH-END")
    dt = time.time() - t0
    expect(end == f"NET-BENCH-END frames={count} bytes={count * 1514}", end)
    g.finish()
    g.lines.append(f"(host: {count / dt:.0f} frames/s)")
    return g


def check_net_bench_rx(ctx):
    count = 2000
    net, g = net_guest(ctx, f"hearth.scenario=net-bench hearth.dir=rx hearth.count={count}")
    g.wait_for("NET-BENCH-START")
    done = threading.Event()

    def writer():
        k = 0
        while not done.is_set():
            net.send(hearth_frame(b"\xff" * 6, b"\x02" * 6, k, 1500))
            k += 1
            if k % 16 == 0:
                time.sleep(0.001)

    t = threading.Thread(target=writer)
    t.start()
    t0 = time.time()
    try:
        end = g.wait_for("NET-BENCH-END")
    finally:
        done.set()
        t.join()
    dt = time.time() - t0
    expect(end == f"NET-BENCH-END frames={count} bytes={count * 1514}", end)
    g.finish()
    g.lines.append(f"(host: {count / dt:.0f} frames/s)")
    return g


def check_hostile(ctx):
    """Every kind on every queue of a blk, a net and a balloon device; QEMU
    must survive it and the guest must get through (the devices reset)."""
    _, args = disk(ctx, "hostile.img")
    net = Net()
    g = Guest(ctx, "hearth.scenario=hostile hearth.rounds=2", args + net.args
              + ["-device", "virtio-balloon-device"], timeout=180)
    seen = set()
    while True:
        line = g.wait_for("HOSTILE")
        if line.startswith("HOSTILE-DONE"):
            break
        f = fields(line)
        expect("setup" not in f, line)
        seen.add((f["round"], f["id"], f["queue"], f["kind"]))
    # blk: 1 queue; net: rx, tx, ctrl; balloon: inflate, deflate, stats.
    expect(line == f"HOSTILE-DONE rounds=2 lines={len(seen)}" and len(seen) == 2 * 7 * 9,
           f"{line}, {len(seen)} distinct lines")
    g.finish()



CHECKS = [(name[len("check_"):].replace("_", "-"), fn)
          for name, fn in list(globals().items()) + list(vars(qemu_check_vsock).items())
          if name.startswith("check_")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--elf", help="the guest ELF (default: build it from the sources here)")
    ap.add_argument("--verbose", "-v", action="store_true")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("checks", nargs="*")
    args = ap.parse_args()
    if args.list:
        for name, _ in CHECKS:
            print(name)
        return 0
    chosen = [(n, f) for n, f in CHECKS if not args.checks or any(n.startswith(c) for c in args.checks)]
    failed = 0
    with tempfile.TemporaryDirectory(prefix="hearth-qemu-") as tmp:
        elf = args.elf or build_guest(tmp)
        ctx = Ctx(elf, tmp)
        for name, fn in chosen:
            ctx.guests = []
            ctx.backends = []
            try:
                fn(ctx)
                print(f"PASS {name}")
                ok = True
            except (CheckFailed, OSError, KeyError) as e:
                print(f"FAIL {name}: {e}")
                failed += 1
                ok = False
            finally:
                for g in ctx.guests:
                    g.kill()
                for b in ctx.backends:
                    b.close()
            if args.verbose or not ok:
                for g in ctx.guests:
                    g.show()
            sys.stdout.flush()
    print(f"{len(chosen) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

