//! What the vsock target sends and what it holds the device to, from
//! docs/network.md ("vsock") and the virtio 1.2 spec (5.10.6): the packet
//! header, packets a guest sends (any op, addresses, lengths that lie,
//! credit figures), and per connection key what the guest announced and
//! what it was sent.

use arbitrary::Arbitrary;

/// The header's size and fields (virtio 1.2, 5.10.6).
pub const HDR: usize = 44;
pub const HOST_CID: u64 = 2;
pub const CID: u64 = 3;
pub const TYPE_STREAM: u16 = 1;
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
/// Most payload in one packet, and the buffer each connection announces.
pub const MAX_PAYLOAD: usize = 64 << 10;
pub const CONN_BUF: u32 = 64 << 10;
/// Host ports given to connections the host starts start here.
pub const FIRST_HOST_PORT: u32 = 1 << 30;
/// Guest ports, and the ports host listeners have (the last none).
pub const GUEST_PORTS: [u32; 4] = [50, 51, 52, 53];
pub const LISTEN_PORTS: [u32; 3] = [1000, 1001, 1002];
pub const LISTENING: usize = 2;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Hdr {
    pub fn bytes(&self) -> [u8; HDR] {
        let mut b = [0u8; HDR];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    pub fn read(b: &[u8; HDR]) -> Hdr {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | u64::from(u32_at(i + 4)) << 32;
        Hdr {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16::from_le_bytes([b[28], b[29]]),
            op: u16::from_le_bytes([b[30], b[31]]),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

/// Bytes a peer can take: what it offers less what is in flight (wrapping
/// counters, 5.10.6.3).
pub fn credit(buf_alloc: u32, fwd_cnt: u32, sent: u32) -> u32 {
    buf_alloc.saturating_sub(sent.wrapping_sub(fwd_cnt))
}

/// A payload length.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Payload {
    Small(u8),
    Medium(u16),
    /// Near the most one packet may carry, either side of it.
    Big(u16),
}

impl Payload {
    pub fn value(self) -> usize {
        match self {
            Payload::Small(n) => usize::from(n),
            Payload::Medium(n) => usize::from(n) % 4096,
            Payload::Big(n) => MAX_PAYLOAD - 4096 + usize::from(n) % 4200,
        }
    }
}

/// The credit figures a guest puts in a packet.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Credit {
    /// 64 KiB, and everything it was sent consumed.
    Generous,
    /// A small buffer, everything consumed.
    Small(u16),
    /// Consumed nothing of a buffer of this size.
    Stingy(u16),
    Raw(u32, u32),
}

/// A packet the guest sends.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct Pkt {
    /// Mostly RW, then each op (and no op at all); from 240 on, `raw_op`.
    pub op: u8,
    pub raw_op: u16,
    /// Below 200, the guest port paired with `dst`; else one of
    /// [`GUEST_PORTS`] (255: `raw_src`).
    pub src: u8,
    /// A listener port of [`LISTEN_PORTS`], or (from 64 on) a host port
    /// the guest was told of (255: `raw_dst`).
    pub dst: u8,
    pub raw_src: u32,
    pub raw_dst: u32,
    /// From 240 on, wrong addresses (another CID either way).
    pub cids: u8,
    /// From 240 on, a type other than stream.
    pub type_: u8,
    pub payload: Payload,
    /// From 240 on, `len` says more (or, odd, less) than the payload.
    pub lie: u8,
    pub flags: u8,
    pub credit: Credit,
    pub fill: u8,
    /// The header in a descriptor of its own; from 240 on, a writable one.
    pub split: u8,
}

impl Pkt {
    pub fn op(&self) -> u16 {
        match self.op {
            0..96 => OP_RW,
            96..112 => OP_REQUEST,
            112..128 => OP_RESPONSE,
            128..144 => OP_SHUTDOWN,
            144..160 => OP_RST,
            160..176 => OP_CREDIT_UPDATE,
            176..192 => OP_CREDIT_REQUEST,
            192..240 => u16::from(self.op % 8),
            240.. => self.raw_op,
        }
    }

    pub fn flags(&self) -> u32 {
        match self.flags % 8 {
            0..5 => u32::from(self.flags % 4),
            _ => u32::from(self.flags),
        }
    }

    /// The payload bytes and what `len` says.
    pub fn lengths(&self) -> (usize, u32) {
        let n = self.payload.value();
        let len = match self.lie {
            240.. if self.lie % 2 == 1 && n > 0 => n as u32 - 1,
            240.. => n as u32 + 1 + u32::from(self.lie - 240) * 1000,
            _ => n as u32,
        };
        (n, len)
    }

    /// The credit figures, given what the guest was sent on the key.
    pub fn credit(&self, received: u32) -> (u32, u32) {
        match self.credit {
            Credit::Generous => (CONN_BUF, received),
            Credit::Small(n) => (u32::from(n % 512), received),
            Credit::Stingy(n) => (u32::from(n), 0),
            Credit::Raw(a, f) => (a, f),
        }
    }
}

/// Payload byte `i` of a packet filled with `fill`.
pub fn payload_byte(fill: u8, i: usize) -> u8 {
    (i.wrapping_mul(7) ^ (i >> 9)).wrapping_add(usize::from(fill)) as u8
}

/// Byte `i` of what host client `seed` writes after its line.
pub fn host_byte(seed: u8, i: u64) -> u8 {
    (i.wrapping_mul(11) ^ (i >> 10)).wrapping_add(u64::from(seed) * 17) as u8
}
