# SPDX-License-Identifier: Apache-2.0
"""A virtio-vsock device for QEMU's vhost-user-vsock-device, in Python, so
that qemu-check.py can try the test guest's vsock driver where the kernel
has no vhost-vsock.

QEMU keeps the transport (virtio-mmio registers, the event queue) and hands
this backend, over a vhost-user socket, the guest's memory (a shared memfd)
and the rx (0) and tx (1) rings. The backend polls the rings (interrupts
are off in the guest, so it never signals) and plays the host, CID 2: its
`app` gets every packet from the guest and sends packets to it.

vhost-user: https://qemu-project.gitlab.io/qemu/interop/vhost-user.html
"""

import mmap
import os
import select
import socket
import struct
import threading
import time

VHOST_USER_GET_FEATURES = 1
VHOST_USER_SET_FEATURES = 2
VHOST_USER_SET_OWNER = 3
VHOST_USER_RESET_OWNER = 4
VHOST_USER_SET_MEM_TABLE = 5
VHOST_USER_SET_VRING_NUM = 8
VHOST_USER_SET_VRING_ADDR = 9
VHOST_USER_SET_VRING_BASE = 10
VHOST_USER_GET_VRING_BASE = 11
VHOST_USER_SET_VRING_KICK = 12
VHOST_USER_SET_VRING_CALL = 13
VHOST_USER_SET_VRING_ERR = 14
VHOST_USER_GET_PROTOCOL_FEATURES = 15
VHOST_USER_SET_PROTOCOL_FEATURES = 16
VHOST_USER_GET_QUEUE_NUM = 17
VHOST_USER_SET_VRING_ENABLE = 18
VHOST_USER_GET_CONFIG = 24

VHOST_USER_F_PROTOCOL_FEATURES = 1 << 30
VIRTIO_F_VERSION_1 = 1 << 32
VHOST_USER_PROTOCOL_F_CONFIG = 1 << 9

HDR = struct.Struct("<QQIIIHHIII")  # struct virtio_vsock_hdr, 44 bytes
HOST_CID = 2
TYPE_STREAM = 1
OP_REQUEST, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST = range(1, 8)
SHUTDOWN_RCV, SHUTDOWN_SEND = 1, 2


class Packet:
    def __init__(self, src_cid, dst_cid, src_port, dst_port, op, flags=0, buf_alloc=0, fwd_cnt=0,
                 payload=b"", type_=TYPE_STREAM):
        self.src_cid, self.dst_cid = src_cid, dst_cid
        self.src_port, self.dst_port = src_port, dst_port
        self.op, self.flags, self.type = op, flags, type_
        self.buf_alloc, self.fwd_cnt = buf_alloc, fwd_cnt
        self.payload = payload

    @classmethod
    def parse(cls, data):
        (src_cid, dst_cid, src_port, dst_port, length, type_, op, flags, buf_alloc,
         fwd_cnt) = HDR.unpack_from(data)
        return cls(src_cid, dst_cid, src_port, dst_port, op, flags, buf_alloc, fwd_cnt,
                   data[HDR.size:HDR.size + length], type_), length

    def pack(self):
        return HDR.pack(self.src_cid, self.dst_cid, self.src_port, self.dst_port, len(self.payload),
                        self.type, self.op, self.flags, self.buf_alloc, self.fwd_cnt) + self.payload

    def __repr__(self):
        return (f"<{self.src_cid}:{self.src_port}->{self.dst_cid}:{self.dst_port} op={self.op} "
                f"flags={self.flags} len={len(self.payload)} buf_alloc={self.buf_alloc} "
                f"fwd_cnt={self.fwd_cnt}>")


class Ring:
    def __init__(self):
        self.num = 0
        self.desc = self.avail = self.used = None  # QEMU's virtual addresses
        self.last_avail = 0
        self.kicked = False


class Backend:
    """The vhost-user server: QEMU connects to `path`; `app(backend, packet)`
    is called (on the backend's thread) for every packet the guest sends."""

    def __init__(self, path, guest_cid, app):
        self.path, self.guest_cid, self.app = path, guest_cid, app
        self.regions = []  # (guest_phys, size, user_addr, mmap)
        self.rings = [Ring(), Ring()]
        self.to_guest = []  # packets waiting for rx buffers
        self.lock = threading.Lock()
        self.errors = []
        self.stop = False
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    # -- guest memory ---------------------------------------------------
    def _find(self, addr, n, user):
        for gpa, size, uva, mm in self.regions:
            base = uva if user else gpa
            if base <= addr and addr + n <= base + size:
                return mm, addr - base
        raise ValueError(f"address {addr:#x}+{n} is in no memory region")

    def read(self, addr, n, user=False):
        mm, off = self._find(addr, n, user)
        return mm[off:off + n]

    def write(self, addr, data, user=False):
        mm, off = self._find(addr, len(data), user)
        mm[off:off + len(data)] = data

    # -- split rings ------------------------------------------------------
    def _pop(self, ring):
        """(head, [(addr, len, writable)]) of the next available chain, or None."""
        idx = struct.unpack("<H", self.read(ring.avail + 2, 2, True))[0]
        if idx == ring.last_avail & 0xFFFF:
            return None
        slot = ring.last_avail % ring.num
        head = struct.unpack("<H", self.read(ring.avail + 4 + 2 * slot, 2, True))[0]
        ring.last_avail += 1
        bufs, i = [], head
        for _ in range(ring.num):
            addr, length, flags, nxt = struct.unpack("<QIHH", self.read(ring.desc + 16 * i, 16, True))
            if flags & 4:
                raise ValueError("an indirect descriptor (not negotiated)")
            bufs.append((addr, length, bool(flags & 2)))
            if not flags & 1:
                return head, bufs
            i = nxt
        raise ValueError("a descriptor chain longer than the queue")

    def _push(self, ring, head, length):
        used_idx = struct.unpack("<H", self.read(ring.used + 2, 2, True))[0]
        self.write(ring.used + 4 + 8 * (used_idx % ring.num), struct.pack("<II", head, length), True)
        self.write(ring.used + 2, struct.pack("<H", (used_idx + 1) & 0xFFFF), True)

    def _ready(self, ring):
        return ring.kicked and ring.num and ring.avail is not None and self.regions

    def _service(self):
        tx, rx = self.rings[1], self.rings[0]
        if self._ready(tx):
            while (chain := self._pop(tx)) is not None:
                head, bufs = chain
                if any(w for _, _, w in bufs):
                    raise ValueError("a device-writable buffer on the tx queue")
                data = b"".join(self.read(a, n) for a, n, _ in bufs)
                pkt, length = Packet.parse(data)
                if length != len(data) - HDR.size:
                    raise ValueError(f"tx packet len {length} but {len(data) - HDR.size} payload bytes")
                self._push(tx, head, 0)
                self.app(self, pkt)
        if self._ready(rx):
            with self.lock:
                while self.to_guest:
                    chain = self._pop(rx)
                    if chain is None:
                        break
                    head, bufs = chain
                    data = self.to_guest.pop(0).pack()
                    room = sum(n for _, n, w in bufs if w)
                    if not all(w for _, _, w in bufs) or room < len(data):
                        raise ValueError(f"an rx buffer of {room} writable bytes for a {len(data)}-byte packet")
                    done = 0
                    for a, n, _ in bufs:
                        part = data[done:done + n]
                        self.write(a, part)
                        done += len(part)
                    self._push(rx, head, len(data))

    def send(self, pkt):
        """Queue a packet for the guest (from any thread)."""
        pkt.src_cid, pkt.dst_cid = HOST_CID, self.guest_cid
        with self.lock:
            self.to_guest.append(pkt)

    # -- vhost-user messages ------------------------------------------------
    def _reply(self, conn, req, payload):
        conn.sendall(struct.pack("<III", req, 0x5, len(payload)) + payload)

    def _handle(self, conn, req, payload, fds):
        u64 = lambda: struct.unpack_from("<Q", payload)[0]  # noqa: E731
        if req == VHOST_USER_GET_FEATURES:
            self._reply(conn, req, struct.pack("<Q", VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES))
        elif req == VHOST_USER_GET_PROTOCOL_FEATURES:
            self._reply(conn, req, struct.pack("<Q", VHOST_USER_PROTOCOL_F_CONFIG))
        elif req == VHOST_USER_GET_QUEUE_NUM:
            self._reply(conn, req, struct.pack("<Q", 2))
        elif req == VHOST_USER_GET_CONFIG:
            offset, size, flags = struct.unpack_from("<III", payload)
            cfg = struct.pack("<Q", self.guest_cid).ljust(256, b"\0")[offset:offset + size]
            self._reply(conn, req, struct.pack("<III", offset, size, flags) + cfg)
        elif req == VHOST_USER_SET_MEM_TABLE:
            for _, _, _, mm in self.regions:
                mm.close()
            self.regions = []
            (count,) = struct.unpack_from("<I", payload)
            for i in range(count):
                gpa, size, uva, off = struct.unpack_from("<QQQQ", payload, 8 + 32 * i)
                mm = mmap.mmap(fds[i], size + off, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                self.regions.append((gpa, size, uva, memoryview(mm)[off:off + size]))
                os.close(fds[i])
        elif req == VHOST_USER_SET_VRING_NUM:
            i, num = struct.unpack_from("<II", payload)
            self.rings[i].num = num
        elif req == VHOST_USER_SET_VRING_BASE:
            i, num = struct.unpack_from("<II", payload)
            self.rings[i].last_avail = num
        elif req == VHOST_USER_SET_VRING_ADDR:
            i, _flags, desc, used, avail, _log = struct.unpack_from("<IIQQQQ", payload)
            ring = self.rings[i]
            ring.desc, ring.used, ring.avail = desc, used, avail
        elif req == VHOST_USER_GET_VRING_BASE:
            i, _ = struct.unpack_from("<II", payload)
            ring = self.rings[i]
            self._reply(conn, req, struct.pack("<II", i, ring.last_avail & 0xFFFF))
            ring.kicked = False
        elif req in (VHOST_USER_SET_VRING_KICK, VHOST_USER_SET_VRING_CALL, VHOST_USER_SET_VRING_ERR):
            for fd in fds:
                os.close(fd)
            if req == VHOST_USER_SET_VRING_KICK:
                self.rings[u64() & 0xFF].kicked = True
        # SET_FEATURES, SET_OWNER, RESET_OWNER, SET_PROTOCOL_FEATURES,
        # SET_VRING_ENABLE and the rest need nothing here.

    def _recv(self, conn):
        msg, anc, _, _ = conn.recvmsg(12, socket.CMSG_LEN(16 * 4))
        if len(msg) < 12:
            return None
        fds = []
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += list(struct.unpack(f"<{len(data) // 4}i", data[:len(data) // 4 * 4]))
        req, _flags, size = struct.unpack("<III", msg)
        payload = b""
        while len(payload) < size:
            chunk = conn.recv(size - len(payload))
            if not chunk:
                return None
            payload += chunk
        return req, payload, fds

    def _run(self):
        try:
            conn, _ = self.listener.accept()
            while not self.stop:
                readable, _, _ = select.select([conn], [], [], 0.001)
                if readable:
                    msg = self._recv(conn)
                    if msg is None:
                        return
                    self._handle(conn, *msg)
                self._service()
        except Exception as e:  # reported by the check that runs this backend
            self.errors.append(f"{type(e).__name__}: {e}")

    def close(self):
        self.stop = True
        self.thread.join(timeout=5)
        self.listener.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


class HostPeer:
    """The host's side of one stream connection, with credit kept as the
    spec says; `on_data(bytes)` and `on_shutdown(flags)` are the
    application's."""

    def __init__(self, backend, host_port, guest_port, buf_alloc):
        self.b, self.host_port, self.guest_port, self.buf_alloc = backend, host_port, guest_port, buf_alloc
        self.fwd_cnt = self.tx_cnt = self.rx_cnt = 0
        self.peer_buf_alloc = self.peer_fwd_cnt = 0
        self.announced = 0
        self.violations = 0
        self.state = "idle"

    def packet(self, op, flags=0, payload=b""):
        self.announced = self.fwd_cnt
        return Packet(HOST_CID, self.b.guest_cid, self.host_port, self.guest_port, op, flags,
                      self.buf_alloc, self.fwd_cnt & 0xFFFFFFFF, payload)

    def send(self, op, flags=0, payload=b""):
        self.b.send(self.packet(op, flags, payload))

    def credit(self):
        return self.peer_buf_alloc - ((self.tx_cnt - self.peer_fwd_cnt) & 0xFFFFFFFF)

    def send_data(self, data):
        """Send as much of data as the guest's credit allows; returns what was sent."""
        n = max(0, min(len(data), self.credit(), 4096))
        if n:
            self.tx_cnt += n
            self.send(OP_RW, payload=data[:n])
        return n

    def took(self, pkt):
        """Account for a packet from the guest; False if it broke our credit."""
        self.peer_buf_alloc, self.peer_fwd_cnt = pkt.buf_alloc, pkt.fwd_cnt
        if pkt.op == OP_RW:
            self.rx_cnt += len(pkt.payload)
            # The guest knows of no more free space than the last fwd_cnt we sent.
            if self.rx_cnt - self.announced > self.buf_alloc:
                self.violations += 1
            self.fwd_cnt += len(pkt.payload)  # the application reads at once
        return True


def wait_until(cond, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.002)
    return False
