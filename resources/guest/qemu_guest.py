# SPDX-License-Identifier: Apache-2.0
"""The harness of qemu-check.py: build the test guest, run it under QEMU's
microvm machine and read its serial lines, and be its network peer."""

import os
import queue
import shlex
import socket
import struct
import subprocess
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MAC = "52:54:00:12:34:56"
SECTORS = 2048
PATTERN_K = 0x9E3779B97F4A7C15
M64 = (1 << 64) - 1
PREFIX = "hearth-guest: "


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def build_guest(out):
    """Assemble and link the guest as build.rs does; returns the ELF path."""
    objs = []
    for name in sorted(os.listdir(HERE)):
        if not name.endswith(".S"):
            continue
        obj = os.path.join(out, name[:-2] + ".o")
        subprocess.run(["gcc", "-c", "-m64", "-x", "assembler-with-cpp", "-I", HERE,
                        "-o", obj, os.path.join(HERE, name)], check=True)
        objs.append(obj)
    elf = os.path.join(out, "hearth-guest.elf")
    subprocess.run(["ld", "-nostdlib", "-static", "-z", "max-page-size=0x1000",
                    "--build-id=none", "-T", os.path.join(HERE, "guest.ld"), "-o", elf] + objs,
                   check=True, stderr=subprocess.DEVNULL)
    return elf


def payload(seq, n):
    """The guest's frame payload: seq big-endian, then (seq + i) mod 256."""
    head = seq.to_bytes(4, "big")[:n]
    return head + bytes((seq + i) & 0xFF for i in range(4, n))


def hearth_frame(dst, src, seq, n):
    return dst + src + b"\x88\xb5" + payload(seq, n)


def pattern_sector(sector, seed):
    return b"".join(struct.pack("<Q", (((sector * 512 + o) * PATTERN_K) & M64) ^ seed)
                    for o in range(0, 512, 8))


def free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class CheckFailed(Exception):
    pass


class Guest:
    """One QEMU run: its serial lines arrive on a queue as they come."""

    def __init__(self, ctx, append, extra, timeout=60, machine="microvm,acpi=off"):
        self.cmd = ["qemu-system-x86_64", "-M", machine, "-enable-kvm",
                    "-cpu", "host,-arch-capabilities", "-m", "256", "-smp", "1",
                    "-display", "none", "-serial", "stdio", "-no-reboot", "-device", "i8042",
                    "-global", "virtio-mmio.force-legacy=false",
                    "-kernel", ctx.elf, "-append", append] + extra
        ctx.guests.append(self)
        self.lines = []
        self.deadline = time.time() + timeout
        self.queue = queue.Queue()
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            self.queue.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self.queue.put(None)

    def next_line(self):
        left = self.deadline - time.time()
        if left <= 0:
            raise CheckFailed("timed out")
        try:
            line = self.queue.get(timeout=left)
        except queue.Empty:
            raise CheckFailed("timed out") from None
        if line is None:
            raise CheckFailed("QEMU exited")
        self.lines.append(line)
        return line

    def wait_for(self, needle):
        """The first guest line (after the prefix) starting with needle."""
        while True:
            line = self.next_line()
            if line.startswith(PREFIX) and line[len(PREFIX):].startswith(needle):
                return line[len(PREFIX):]

    def finish(self):
        """Collect the rest until QEMU exits (the guest resets)."""
        try:
            while True:
                self.next_line()
        except CheckFailed as e:
            if str(e) != "QEMU exited":
                raise
        self.proc.wait(timeout=10)

    def type(self, text):
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def show(self):
        print("  $ " + " ".join(shlex.quote(a) for a in self.cmd))
        for line in self.lines:
            print("  | " + line)


def fields(line):
    """key=value fields of a guest line."""
    return dict(tok.split("=", 1) for tok in line.split() if "=" in tok)


def expect(cond, what):
    if not cond:
        raise CheckFailed(what)


class Net:
    """The guest's network peer on a QEMU UDP socket backend."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.qemu_port = free_udp_port()
        port = self.sock.getsockname()[1]
        self.args = ["-netdev", f"socket,id=n0,udp=127.0.0.1:{port},localaddr=127.0.0.1:{self.qemu_port}",
                     "-device", f"virtio-net-device,netdev=n0,mac={MAC}"]

    def send(self, frame):
        self.sock.sendto(frame, ("127.0.0.1", self.qemu_port))

    def recv(self, timeout=10):
        self.sock.settimeout(timeout)
        return self.sock.recvfrom(65536)[0]




class Ctx:
    """What every check gets: the guest ELF, a scratch directory, and the
    guests and vsock backends it started (stopped after the check)."""

    def __init__(self, elf, tmp):
        self.elf = elf
        self.tmp = tmp
        self.guests = []
        self.backends = []
