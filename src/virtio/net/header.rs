//! The `virtio_net_hdr_v1` in front of every frame (virtio 1.2, 5.1.6),
//! and the checks a frame from the guest passes before it reaches the tap.
//! Pure: unit-tested without a device.

use super::tap::VNET_HDR_LEN;
use super::{F_CSUM, F_HOST_TSO4, F_HOST_TSO6};

/// `flags`: the checksum from `csum_start` on is still to be computed.
pub const HDR_F_NEEDS_CSUM: u8 = 1;
/// `gso_type` values.
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
/// Bytes of an Ethernet header.
pub const ETH_HLEN: usize = 14;
/// The longest frame either way: a 64 KiB IP packet (what a guest with TSO
/// sends in one go) behind an Ethernet header, with room for a VLAN tag.
pub const MAX_FRAME_LEN: usize = 65_535 + ETH_HLEN + 4;
/// A header and the longest frame: the size of the handler's buffers.
pub const MAX_PACKET_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;

/// Why a frame the guest sent was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxDrop {
    /// The chain is shorter than a header and an Ethernet header, or has
    /// device-writable buffers.
    Malformed,
    /// The frame is longer than [`MAX_FRAME_LEN`].
    Oversized,
    /// The header asks for what was not negotiated, or does not fit the
    /// frame.
    BadHeader,
}

/// The header fields a check needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl NetHdr {
    pub fn parse(b: &[u8; VNET_HDR_LEN]) -> NetHdr {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        NetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        }
    }
}

/// Checks a frame of `frame_len` bytes the guest sent behind `hdr`, with
/// the features `acked`: only what was negotiated, and offsets inside the
/// frame. (The tap checks again; this keeps garbage off the host.)
pub fn check_tx(hdr: &NetHdr, frame_len: usize, acked: u64) -> Result<(), TxDrop> {
    let has = |bit: u32| acked & (1 << bit) != 0;
    if hdr.flags & !HDR_F_NEEDS_CSUM != 0 {
        return Err(TxDrop::BadHeader);
    }
    if hdr.flags & HDR_F_NEEDS_CSUM != 0 {
        let end = usize::from(hdr.csum_start) + usize::from(hdr.csum_offset) + 2;
        if !has(F_CSUM) || end > frame_len || usize::from(hdr.csum_start) < ETH_HLEN {
            return Err(TxDrop::BadHeader);
        }
    }
    let gso_feature = match hdr.gso_type {
        GSO_NONE => return Ok(()),
        GSO_TCPV4 => F_HOST_TSO4,
        GSO_TCPV6 => F_HOST_TSO6,
        _ => return Err(TxDrop::BadHeader),
    };
    // A segmented frame needs its checksum computed per segment.
    if !has(gso_feature) || hdr.flags & HDR_F_NEEDS_CSUM == 0 || hdr.gso_size == 0 {
        return Err(TxDrop::BadHeader);
    }
    Ok(())
}

/// Checks the length of a chain of `readable` bytes with `writable`
/// device-writable bytes on the transmit queue; the frame length.
pub fn tx_frame_len(readable: u64, writable: u64) -> Result<usize, TxDrop> {
    let min = (VNET_HDR_LEN + ETH_HLEN) as u64;
    if writable != 0 || readable < min {
        return Err(TxDrop::Malformed);
    }
    if readable > MAX_PACKET_LEN as u64 {
        return Err(TxDrop::Oversized);
    }
    Ok(readable as usize - VNET_HDR_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(flags: u8, gso_type: u8, gso_size: u16, start: u16, off: u16) -> NetHdr {
        NetHdr {
            flags,
            gso_type,
            hdr_len: 54,
            gso_size,
            csum_start: start,
            csum_offset: off,
        }
    }

    const ALL: u64 = (1 << F_CSUM) | (1 << F_HOST_TSO4) | (1 << F_HOST_TSO6);

    #[test]
    fn plain_frames_pass_without_any_feature() {
        assert_eq!(check_tx(&hdr(0, GSO_NONE, 0, 0, 0), 60, 0), Ok(()));
    }

    #[test]
    fn checksum_offload_needs_the_feature_and_offsets_inside_the_frame() {
        let tcp = hdr(HDR_F_NEEDS_CSUM, GSO_NONE, 0, 34, 16);
        assert_eq!(check_tx(&tcp, 100, 1 << F_CSUM), Ok(()));
        assert_eq!(check_tx(&tcp, 100, 0), Err(TxDrop::BadHeader));
        assert_eq!(check_tx(&tcp, 51, 1 << F_CSUM), Err(TxDrop::BadHeader));
        let inside_eth = hdr(HDR_F_NEEDS_CSUM, GSO_NONE, 0, 4, 0);
        assert_eq!(check_tx(&inside_eth, 100, ALL), Err(TxDrop::BadHeader));
    }

    #[test]
    fn segmentation_needs_its_feature_a_size_and_the_checksum_flag() {
        let tso4 = hdr(HDR_F_NEEDS_CSUM, GSO_TCPV4, 1448, 34, 16);
        assert_eq!(check_tx(&tso4, 65000, ALL), Ok(()));
        assert_eq!(check_tx(&tso4, 65000, 1 << F_CSUM), Err(TxDrop::BadHeader));
        let tso6 = hdr(HDR_F_NEEDS_CSUM, GSO_TCPV6, 1428, 54, 16);
        assert_eq!(check_tx(&tso6, 65000, ALL), Ok(()));
        assert_eq!(
            check_tx(&hdr(0, GSO_TCPV4, 1448, 0, 0), 65000, ALL),
            Err(TxDrop::BadHeader)
        );
        assert_eq!(
            check_tx(&hdr(HDR_F_NEEDS_CSUM, GSO_TCPV4, 0, 34, 16), 65000, ALL),
            Err(TxDrop::BadHeader)
        );
        // UDP fragmentation offload and ECN were never offered.
        for gso in [3, 0x81] {
            assert_eq!(
                check_tx(&hdr(HDR_F_NEEDS_CSUM, gso, 1400, 34, 6), 9000, ALL),
                Err(TxDrop::BadHeader)
            );
        }
    }

    #[test]
    fn unknown_flags_are_refused() {
        for flags in [2, 4, 0x80] {
            assert_eq!(
                check_tx(&hdr(flags, GSO_NONE, 0, 0, 0), 60, ALL),
                Err(TxDrop::BadHeader)
            );
        }
    }

    #[test]
    fn chain_lengths() {
        assert_eq!(tx_frame_len(12 + 60, 0), Ok(60));
        assert_eq!(tx_frame_len(12 + 13, 0), Err(TxDrop::Malformed));
        assert_eq!(tx_frame_len(12 + 60, 512), Err(TxDrop::Malformed));
        assert_eq!(tx_frame_len(MAX_PACKET_LEN as u64, 0), Ok(MAX_FRAME_LEN));
        assert_eq!(
            tx_frame_len(MAX_PACKET_LEN as u64 + 1, 0),
            Err(TxDrop::Oversized)
        );
    }

    #[test]
    fn headers_parse_little_endian() {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = 1;
        b[1] = 4;
        b[4] = 0xa8;
        b[5] = 0x05;
        b[6] = 54;
        b[8] = 16;
        let h = NetHdr::parse(&b);
        assert_eq!((h.flags, h.gso_type, h.gso_size), (1, 4, 1448));
        assert_eq!((h.csum_start, h.csum_offset), (54, 16));
    }
}
