//! What the virtio-net target sends and posts, and what the device must
//! make of it, written from docs/network.md: frames the guest sends (a
//! virtio-net header and a frame of any length, split across descriptors),
//! frames the host sends, and the receive buffers the guest posts.

use arbitrary::Arbitrary;

/// The virtio-net header (`virtio_net_hdr_v1`) and an Ethernet header.
pub const HDR: usize = 12;
pub const ETH: usize = 14;
/// The longest frame either way: a 64 KiB IP packet behind an Ethernet
/// header and a VLAN tag (docs/network.md: "at most a header and 65553
/// bytes of frame").
pub const MAX_FRAME: usize = 65_553;
/// Feature bits (virtio 1.2, 5.1.3).
pub const F_CSUM: u32 = 0;
pub const F_GUEST_CSUM: u32 = 1;
pub const F_GUEST_TSO4: u32 = 7;
pub const F_GUEST_TSO6: u32 = 8;
pub const F_HOST_TSO4: u32 = 11;
pub const F_HOST_TSO6: u32 = 12;
/// `VIRTIO_NET_F_MRG_RXBUF`, which the device does not offer.
pub const F_MRG_RXBUF: u32 = 15;

/// A frame length.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum FrameLen {
    /// An Ethernet frame of up to 1514 bytes.
    Eth(u16),
    /// Shorter than an Ethernet header (0 included).
    Short(u8),
    /// Any length a 16-bit count gives.
    Jumbo(u16),
    /// Around the longest frame.
    Max(i8),
}

impl FrameLen {
    pub fn value(self) -> usize {
        match self {
            FrameLen::Eth(n) => ETH + usize::from(n) % 1501,
            FrameLen::Short(n) => usize::from(n) % ETH,
            FrameLen::Jumbo(n) => usize::from(n),
            FrameLen::Max(d) => MAX_FRAME.saturating_add_signed(isize::from(d % 16)),
        }
    }
}

/// The header a guest writes in front of a frame.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct TxHdr {
    /// Below 128: all zero (a plain frame) but `num_buffers`.
    pub plain: u8,
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

impl TxHdr {
    pub fn bytes(&self) -> [u8; HDR] {
        let mut b = [0u8; HDR];
        if self.plain >= 128 {
            // Mostly the flags and types a driver uses.
            b[0] = match self.flags % 8 {
                0..3 => 0,
                3..6 => 1,
                _ => self.flags,
            };
            b[1] = match self.gso_type % 8 {
                0..3 => 0,
                3 | 4 => 1,
                5 => 4,
                _ => self.gso_type,
            };
            b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
            b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
            b[6..8].copy_from_slice(&(self.csum_start % 2048).to_le_bytes());
            b[8..10].copy_from_slice(&(self.csum_offset % 64).to_le_bytes());
        }
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }
}

/// A frame the guest sends.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct TxFrame {
    pub hdr: TxHdr,
    pub len: FrameLen,
    /// The header and frame in `1 + pieces % 4` descriptors.
    pub pieces: u8,
    /// The header in a descriptor of its own.
    pub hdr_alone: bool,
    /// From 240 on, a device-writable buffer at the end (malformed).
    pub writable: u8,
    pub fill: u8,
}

/// Byte `i` of a frame filled with `fill`.
pub fn frame_byte(fill: u8, i: usize) -> u8 {
    (i.wrapping_mul(13) ^ (i >> 7)).wrapping_add(usize::from(fill)) as u8
}

/// Why a frame the guest sent does not reach the tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxFate {
    Sent,
    Malformed,
    Oversized,
    BadHeader,
}

/// The fate of a chain of `readable` bytes (`writable` device-writable)
/// whose header is `hdr`, with the features `acked`, per docs/network.md.
pub fn tx_fate(hdr: &[u8; HDR], readable: usize, writable: usize, acked: u64) -> TxFate {
    if writable > 0 || readable < HDR + ETH {
        return TxFate::Malformed;
    }
    let frame = readable - HDR;
    if frame > MAX_FRAME {
        return TxFate::Oversized;
    }
    let has = |bit: u32| acked & (1 << bit) != 0;
    let (flags, gso) = (hdr[0], hdr[1]);
    let u16_at = |i: usize| usize::from(u16::from_le_bytes([hdr[i], hdr[i + 1]]));
    let (gso_size, start, offset) = (u16_at(4), u16_at(6), u16_at(8));
    let needs_csum = flags == 1;
    let csum_ok = has(F_CSUM) && start >= ETH && start + offset + 2 <= frame;
    let gso_ok = match gso {
        0 => true,
        1 => has(F_HOST_TSO4) && needs_csum && gso_size > 0,
        4 => has(F_HOST_TSO6) && needs_csum && gso_size > 0,
        _ => false,
    };
    let flags_ok = flags == 0 || (needs_csum && csum_ok);
    if flags_ok && gso_ok {
        TxFate::Sent
    } else {
        TxFate::BadHeader
    }
}

/// A frame the host sends (the tap's datagram: a header, then the frame).
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct HostFrame {
    pub hdr: [u8; HDR],
    pub len: FrameLen,
    pub fill: u8,
}

impl HostFrame {
    /// Bytes of the datagram, header included (at most what a tap gives).
    pub fn total(&self) -> usize {
        (HDR + self.len.value()).min(HDR + MAX_FRAME)
    }

    pub fn byte(&self, i: usize) -> u8 {
        match i {
            0..HDR => self.hdr[i],
            _ => frame_byte(self.fill, i - HDR),
        }
    }
}

/// A receive buffer's size.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum RxLen {
    /// Up to 31 bytes: too small for a header and an Ethernet header.
    Tiny(u8),
    /// An MTU's worth.
    Mtu(u16),
    /// Room for the longest frame.
    Max,
    Any(u16),
}

impl RxLen {
    pub fn value(self) -> u32 {
        match self {
            RxLen::Tiny(n) => u32::from(n % 32),
            RxLen::Mtu(n) => 1526 + u32::from(n % 64) - 32,
            RxLen::Max => (HDR + MAX_FRAME) as u32,
            RxLen::Any(n) => u32::from(n),
        }
    }
}

/// A receive buffer the guest posts.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct RxBuf {
    pub len: RxLen,
    pub pieces: u8,
    /// From 240 on, a device-readable buffer first (the device then needs
    /// a reset).
    pub readable: u8,
}

/// `len` bytes in `1 + pieces % 4` pieces, none empty.
pub fn split(len: usize, pieces: u8) -> impl Iterator<Item = (usize, usize)> {
    let n = usize::from(pieces % 4) + 1;
    let per = len.div_ceil(n).max(1);
    (0..n).filter_map(move |i| {
        let from = i * per;
        (from < len).then(|| (from, per.min(len - from)))
    })
}
