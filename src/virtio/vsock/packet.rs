//! The virtio-vsock packet header (virtio 1.2, 5.10.6): 44 bytes,
//! little-endian, in front of every packet's payload. Pure.

/// Size of the header.
pub const HDR_LEN: usize = 44;
/// The host's context id.
pub const HOST_CID: u64 = 2;
/// `type`: stream sockets (the only type offered).
pub const TYPE_STREAM: u16 = 1;
/// Most payload bytes one packet may carry (Linux sends at most 64 KiB).
pub const MAX_PAYLOAD: usize = 64 << 10;

/// Operations.
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
/// SHUTDOWN flags: the sender will receive / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// One header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
    pub fn parse(b: &[u8; HDR_LEN]) -> Hdr {
        let u64_at = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Hdr {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
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

    /// An RST answering `self` (addresses swapped).
    pub fn reset_reply(&self) -> Hdr {
        Hdr {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Hdr::default()
        }
    }
}

/// Bytes a peer can still take: what it offered (`buf_alloc`) less what
/// was sent (`tx_cnt`) and not yet consumed (`fwd_cnt`), all wrapping u32
/// counters as the spec has them; 0 if the peer shrank its buffer below
/// what is in flight.
pub fn peer_credit(buf_alloc: u32, fwd_cnt: u32, tx_cnt: u32) -> u32 {
    buf_alloc.saturating_sub(tx_cnt.wrapping_sub(fwd_cnt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_in_the_spec_layout() {
        let h = Hdr {
            src_cid: 3,
            dst_cid: 2,
            src_port: 49152,
            dst_port: 5000,
            len: 4096,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 7,
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[20..24], &5000u32.to_le_bytes());
        assert_eq!(&b[30..32], &OP_RW.to_le_bytes());
        assert_eq!(Hdr::parse(&b), h);
        let r = h.reset_reply();
        assert_eq!(
            (r.src_cid, r.dst_cid, r.src_port, r.dst_port),
            (2, 3, 5000, 49152)
        );
        assert_eq!((r.op, r.len), (OP_RST, 0));
    }

    #[test]
    fn credit_is_what_is_offered_less_what_is_in_flight_and_wraps() {
        assert_eq!(peer_credit(65536, 0, 0), 65536);
        assert_eq!(peer_credit(65536, 1000, 5000), 61536);
        assert_eq!(peer_credit(65536, 0, 65536), 0);
        // Counters wrap at 2^32.
        assert_eq!(peer_credit(65536, u32::MAX - 9, 10), 65516);
        // A peer that shrank its buffer below what is in flight: none.
        assert_eq!(peer_credit(100, 0, 5000), 0);
    }
}
