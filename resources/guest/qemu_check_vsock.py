# SPDX-License-Identifier: Apache-2.0
"""The vsock checks of qemu-check.py: the guest's vsock-echo and
vsock-connect against QEMU's vhost-user-vsock-device, whose device side
(the host, CID 2) is vhost_user_vsock.py."""

import os
import random
import threading

import vhost_user_vsock as vu
from qemu_guest import Guest, expect

def vsock_guest(ctx, append, app):
    """A guest with a vhost-user-vsock-device served by vhost_user_vsock.py (guest CID 3)."""
    path = os.path.join(ctx.tmp, "vsock.sock")
    if os.path.exists(path):
        os.unlink(path)
    backend = vu.Backend(path, 3, app)
    ctx.backends.append(backend)
    g = Guest(ctx, append, ["-object", "memory-backend-memfd,id=mem,size=256M,share=on",
                            "-chardev", f"socket,id=vs0,path={path}",
                            "-device", "vhost-user-vsock-device,chardev=vs0"],
              machine="microvm,acpi=off,memory-backend=mem")
    return backend, g


def check_vsock_echo(ctx):
    """100 KB to the guest's echo port and back through a 8 KiB host buffer;
    a CREDIT_REQUEST answered; a packet for no connection reset; then the
    host shuts down sending and the guest closes cleanly."""
    data = random.Random(1).randbytes(100_000)
    got, seen = bytearray(), []
    lock = threading.RLock()
    state = {"sent": 0, "shut": False, "peer": None}

    def pump():
        with lock:
            peer = state["peer"]
            while state["sent"] < len(data):
                n = peer.send_data(data[state["sent"]:])
                if n == 0:
                    break
                state["sent"] += n
            if state["sent"] == len(data) and not state["shut"]:
                state["shut"] = True
                peer.send(vu.OP_SHUTDOWN, vu.SHUTDOWN_SEND)

    def app(backend, pkt):
        with lock:
            peer = state["peer"]
            seen.append((pkt.src_port, pkt.dst_port, pkt.op))
            if peer is None or pkt.dst_port != peer.host_port:
                return
            peer.took(pkt)
            if pkt.op == vu.OP_RESPONSE:
                peer.state = "connected"
            elif pkt.op == vu.OP_RW:
                got.extend(pkt.payload)
            elif pkt.op == vu.OP_SHUTDOWN:
                peer.state = "shutdown"
                peer.send(vu.OP_RST)
            elif pkt.op == vu.OP_CREDIT_REQUEST:
                peer.send(vu.OP_CREDIT_UPDATE)
            if peer.fwd_cnt - peer.announced >= 2048:
                peer.send(vu.OP_CREDIT_UPDATE)
            if peer.state == "connected":
                pump()

    backend, g = vsock_guest(ctx, "hearth.scenario=vsock-echo hearth.port=5000", app)
    listen = g.wait_for("VSOCK-LISTEN")
    expect(listen == "VSOCK-LISTEN cid=3 port=5000", listen)
    backend.send(vu.Packet(0, 0, 999, 4444, vu.OP_RW, payload=b"stray"))
    expect(vu.wait_until(lambda: (4444, 999, vu.OP_RST) in seen, 10), f"no RST for a stray packet: {seen}")
    with lock:
        state["peer"] = vu.HostPeer(backend, 1234, 5000, 8192)
        state["peer"].send(vu.OP_REQUEST)
    accept = g.wait_for("VSOCK-ACCEPT")
    expect(accept == "VSOCK-ACCEPT peer_cid=2 peer_port=1234", accept)
    with lock:
        state["peer"].send(vu.OP_CREDIT_REQUEST)
    expect(vu.wait_until(lambda: (5000, 1234, vu.OP_CREDIT_UPDATE) in seen, 10), "no CREDIT_UPDATE")
    with lock:
        pump()
    line = g.wait_for("VSOCK-ECHO")
    g.finish()
    expect(not backend.errors, f"backend: {backend.errors}")
    expect(line == f"VSOCK-ECHO bytes={len(data)} received={len(data)} end=shutdown violations=0 bad=0", line)
    expect(bytes(got) == data, f"the host got {len(got)} bytes back, {'not ' if got != data[:len(got)] else ''}a prefix")
    expect(state["peer"].violations == 0, "the guest sent beyond the host's credit")
    g.lines.append(f"(host: {len(seen)} packets from the guest)")


def vsock_connect(ctx, listen_port, reply):
    got = bytearray()
    state = {"peer": None}

    def app(backend, pkt):
        peer = state["peer"]
        if pkt.op == vu.OP_REQUEST:
            if pkt.dst_port != listen_port:
                backend.send(vu.Packet(0, 0, pkt.dst_port, pkt.src_port, vu.OP_RST))
                return
            peer = state["peer"] = vu.HostPeer(backend, listen_port, pkt.src_port, 4096)
            peer.took(pkt)
            peer.send(vu.OP_RESPONSE)
            return
        if peer is None:
            return
        peer.took(pkt)
        if pkt.op == vu.OP_RW:
            got.extend(pkt.payload)
            if got.endswith(b"\n"):
                expect(peer.send_data(reply) == len(reply), "the guest's credit is too small for the reply")
        elif pkt.op == vu.OP_SHUTDOWN:
            peer.send(vu.OP_RST)

    backend, g = vsock_guest(ctx, "hearth.scenario=vsock-connect hearth.port=5000", app)
    line = g.wait_for("VSOCK-CONNECT ")
    g.finish()
    expect(not backend.errors, f"backend: {backend.errors}")
    return g, line, bytes(got)


def check_vsock_connect(ctx):
    g, line, got = vsock_connect(ctx, 5000, b"hi from the host\r\n")
    expect(line == "VSOCK-CONNECT reply=hi from the host", line)
    expect(got == b"hello from hearth-guest\n", f"the host got {got!r}")


def check_vsock_connect_refused(ctx):
    g, line, got = vsock_connect(ctx, 6000, b"")
    expect(line == "VSOCK-CONNECT error=reset", line)


